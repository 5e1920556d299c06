"""Shared pieces of the benchmarks: interleaved timing, the matmul peak, FLOP counts.

Every figure a benchmark reports is a ratio to something measured in the same process,
interleaved with it: on a shared machine, load from other processes then slows both
sides alike. Times are reported as min (the least disturbed run) and median.

FLOP counts are analytic: 2 FLOPs per multiply-add of every matmul a forward pass
needs (weights, plus attention scores and weighted values over the positions a query
really sees); elementwise work (gates, softmax, sampling) is not counted. A backward
pass counts twice its forward. The peak is a float32 `tf.matmul` of two 2048 x 2048
matrices in a `tf.function`, timed between the runs of the workload it is compared to.
"""

import json
import os
import platform
import statistics
import time

import tensorflow as tf

PEAK_SIZE = 2048


class Timer:
    """Times callables interleaved with the dense-matmul peak."""

    def __init__(self):
        a = tf.random.normal([PEAK_SIZE, PEAK_SIZE], seed=0)
        b = tf.random.normal([PEAK_SIZE, PEAK_SIZE], seed=1)
        matmul = tf.function(lambda a, b: tf.reduce_sum(tf.matmul(a, b)))
        matmul(a, b).numpy()
        self._peak_fn = lambda: matmul(a, b).numpy()
        self.peak_times = []

    def peak(self):
        """One timed run of the peak matmul."""
        start = time.perf_counter()
        self._peak_fn()
        self.peak_times.append(time.perf_counter() - start)

    @property
    def peak_flops(self):
        """FLOP/s of the fastest peak run so far."""
        if not self.peak_times:
            for _ in range(3):
                self.peak()
        return 2 * PEAK_SIZE ** 3 / min(self.peak_times)

    def run(self, fns, repeats, warmup=True):
        """Times each of `fns` (name -> zero-argument callable returning tensors)
        `repeats` times, round-robin, with a peak run before each timed call.
        Returns (name -> list of seconds, the peak FLOP/s of these rounds)."""
        if warmup:
            for fn in fns.values():
                _block(fn())
        times = {name: [] for name in fns}
        first_peak = len(self.peak_times)
        for _ in range(repeats):
            for name, fn in fns.items():
                self.peak()
                start = time.perf_counter()
                _block(fn())
                times[name].append(time.perf_counter() - start)
        self.peak()
        return times, 2 * PEAK_SIZE ** 3 / min(self.peak_times[first_peak:])


def _block(result):
    """Waits for a result: tensors (or nests of them) are fetched to numpy."""
    for value in tf.nest.flatten(result):
        if hasattr(value, "numpy"):
            value.numpy()


def summary(seconds):
    return {"min_s": min(seconds), "median_s": statistics.median(seconds),
            "runs": len(seconds)}


# ------------------------------------------------------------------------- FLOPs
#
# Per token, forward, batch of one. E = embedding_dim (Transformer width), H =
# hidden_dim (recurrent state / Transformer feed-forward width), V = vocabulary,
# L = num_layers.
#   LSTM backbone:        sum over layers 2 * (in + H) * 4H   (in = E, then H)
#   GRU backbone:         sum over layers 2 * (in + H) * 3H
#   Transformer backbone: L * (2 * 4E^2 [q, k, v, output] + 2 * 2EH [feed-forward]
#                              + 4 * E * context [scores + weighted values])
#   vocabulary head:      2 * (H or E) * V;  value head: 2 * (H or E)


def backbone_flops(config, context=0):
    """Matmul FLOPs of the backbone for one token that attends to `context` positions."""
    kind, e, h, layers = config["backbone"], config["embedding_dim"], config["hidden_dim"], \
        config.get("num_layers", 1)
    if kind in ("lstm", "gru"):
        gates = 4 if kind == "lstm" else 3
        total, width = 0, e
        for _ in range(layers):
            total += 2 * (width + h) * gates * h
            width = h
        return total
    return layers * (8 * e * e + 4 * e * h + 4 * e * context)


def head_width(config):
    return config["embedding_dim"] if config["backbone"] == "transformer" else config["hidden_dim"]


def lm_head_flops(config):
    return 2 * head_width(config) * config["vocab_size"]


def sequence_flops(config, prompt_length, length, logits_positions, value_head=False):
    """Forward FLOPs of one full-sequence pass over `length` tokens (the first
    `prompt_length` of them a prompt), with the vocabulary head on `logits_positions`
    positions (the value head instead when `value_head`)."""
    total = sum(backbone_flops(config, context=t + 1) for t in range(length))
    if value_head:
        return total + length * 2 * head_width(config)
    return total + logits_positions * lm_head_flops(config)


def generation_flops(config, prompt_length, new_tokens):
    """FLOPs of `tfpg.generate` for one sequence: the prompt prefill (vocabulary head on
    its last position only), then one cached step per new token but the last."""
    total = sum(backbone_flops(config, context=t + 1) for t in range(prompt_length))
    total += lm_head_flops(config)
    for step in range(1, new_tokens):
        total += backbone_flops(config, context=prompt_length + step) + lm_head_flops(config)
    return total


def environment():
    """Where the figures were taken (they are only comparable within one file)."""
    devices = tf.config.list_logical_devices()
    return {
        "device": devices[0].device_type if devices else "CPU",
        "gpus": [d.name for d in tf.config.list_logical_devices("GPU")],
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "tensorflow": tf.__version__,
        "load_average_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
    }


def write_json(path, payload):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)
    print(f"wrote {path}")


def print_table(columns, rows):
    """columns: list of (header, key, format); rows: list of dicts (missing -> '-')."""
    widths = []
    cells = []
    for row in rows:
        line = []
        for header, key, fmt in columns:
            value = row.get(key)
            line.append("-" if value is None else (fmt.format(value) if fmt else str(value)))
        cells.append(line)
    for i, (header, _, _) in enumerate(columns):
        widths.append(max([len(header)] + [len(line[i]) for line in cells]))
    print("  ".join(h.rjust(w) for (h, _, _), w in zip(columns, widths)))
    for line in cells:
        print("  ".join(c.rjust(w) for c, w in zip(line, widths)))
