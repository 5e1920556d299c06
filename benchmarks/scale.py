"""A GRPO step at real vocabularies and completion lengths: tfpg against TRL 1.16.

Each cell of the grid (vocabulary V, completion length N, KL weight, group size) runs
in a fresh process per library, one CPU thread each: a GPT-2-architecture model of
width 64 and 2 layers (2 heads, tied embeddings, float32, random weights), so that
the vocabulary and length terms dominate; 4 prompts of 32 tokens x the group,
completions forced to the full N tokens (tfpg: no EOS; TRL: `min_new_tokens`), DAPO
token-mean loss, Adam(W) 1e-4, clip 0.2, gradient clipping 1.0, one update per
rollout, temperature 1, no top-k / top-p; the reward is the fraction of completion
tokens equal to one id. tfpg: `KerasHubPolicy` on a KerasHub `GPT2Backbone`,
`GRPO(...)` with its defaults (`jit_compile="auto"`: the decode loop in XLA, the
LM head chunked); TRL: `GRPOTrainer` on transformers' `GPT2LMHeadModel` with its
defaults (no vLLM, no gradient checkpointing, no Liger).

Memory is the peak resident set of the process above its baseline: the baseline is
the resident set once the model, trainer and optimizer are built, just before the
first step; the peak is the largest resident set seen by a sampler thread (every
20 ms) during the timed steps. The warm-up step's peak (tfpg's tracing and XLA
compiling happen there, once per process) is recorded beside it, and so is
`/usr/bin/time -v`'s maximum for the whole process. Times are the median over the
steps after the warm-up (tracing and XLA compiling excluded), and the resident set
after the last step is reported.

    python benchmarks/scale.py                          # tfpg only
    python benchmarks/scale.py --trl-python /path/to/venv-with-torch-trl/bin/python
    python benchmarks/scale.py --cells 151936:256:0.04:8 50257:1024:0.04:8
    python benchmarks/scale.py --trl-python ... --parallel   # both sides at once

Also `--gradient-checkpointing` (tfpg's `gradient_checkpointing=True`, the trunk
rematerialised per transformer block). Writes benchmarks/results/scale.json (and
a plot, scale.png, with matplotlib).
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
WIDTH, LAYERS, HEADS, PROMPTS, PROMPT_LENGTH = 64, 2, 2, 4, 32
GRID = ([(v, 256) for v in (8192, 50257, 151936, 256000)]
        + [(50257, n) for n in (64, 1024, 2048)])


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakSampler:
    """The largest resident set seen every `interval` seconds while running."""

    def __init__(self, interval=0.02):
        self.interval, self.peak, self._stop = interval, rss_bytes(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval)

    def restart(self):
        """The peak so far; sampling goes on from the present resident set."""
        peak, self.peak = self.peak, rss_bytes()
        return max(peak, self.peak)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def prompt_ids(vocab_size, seed=1):
    import numpy as np
    rng = np.random.default_rng(seed)
    return rng.integers(1, min(vocab_size - 1, 1000), (PROMPTS, PROMPT_LENGTH))


# ----------------------------------------------------------------- tfpg side


def tfpg_cell(cell, steps, warmup, gradient_checkpointing):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import keras_hub
    import numpy as np
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import tfpg

    vocab_size, new_tokens, kl_coef, group = cell
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=vocab_size, num_layers=LAYERS, num_heads=HEADS, hidden_dim=WIDTH,
        intermediate_dim=4 * WIDTH, dropout=0.0,
        max_sequence_length=PROMPT_LENGTH + new_tokens)
    policy = tfpg.KerasHubPolicy(keras_hub.models.GPT2CausalLM(backbone, preprocessor=None),
                                 eos_id=None, pad_id=vocab_size - 1)
    target = 7

    def reward(prompt_ids, completion_ids, completion_mask, batch):
        hits = tf.cast(completion_ids == target, tf.float32) * completion_mask
        return tf.reduce_sum(hits, 1) / tf.maximum(tf.reduce_sum(completion_mask, 1), 1.0)

    options = {"gradient_checkpointing": True} if gradient_checkpointing else {}
    agent = tfpg.algorithms.GRPO(policy, reward_fn=reward, group_size=group,
                                 max_new_tokens=new_tokens, kl_coef=kl_coef,
                                 loss_type="dapo", clip_epsilon=0.2, max_grad_norm=1.0,
                                 seed=0, **options)
    agent.compile(optimizer=keras.optimizers.Adam(1e-4))
    ids = prompt_ids(vocab_size).astype(np.int32)
    data = iter(tf.data.Dataset.from_tensors(
        {"prompt": ids, "prompt_mask": np.ones_like(ids)}).repeat())
    agent.make_train_function()
    step = agent.train_function

    def run():
        logs = step(data)
        return float(logs["reward"])

    return run


# ------------------------------------------------------------------ TRL side


def trl_cell(cell, steps, warmup, gradient_checkpointing):
    import datasets
    import numpy as np
    import tokenizers
    import torch
    import transformers
    import trl
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)

    vocab_size, new_tokens, kl_coef, group = cell
    eos = "<eos>"
    vocabulary = {f"t{i}": i for i in range(vocab_size - 1)}
    vocabulary[eos] = vocab_size - 1
    model = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocabulary, unk_token=eos))
    model.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=model, eos_token=eos, pad_token=eos, padding_side="left")
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=vocab_size, bos_token_id=vocab_size - 1, eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1, n_positions=PROMPT_LENGTH + new_tokens, n_embd=WIDTH,
        n_layer=LAYERS, n_head=HEADS, n_inner=4 * WIDTH, resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, tie_word_embeddings=True)
    network = transformers.GPT2LMHeadModel(config)
    ids = prompt_ids(vocab_size)
    total = warmup + steps
    texts = [" ".join(f"t{i}" for i in row) for row in ids] * total
    target = 7

    def reward(completions, completion_ids, **kwargs):
        return [sum(t == target for t in row) / max(len(row), 1) for row in completion_ids]

    times, cpu_times, marks = [], [], {}

    class Timing(transformers.TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter() - self.start[0])
            cpu_times.append(time.process_time() - self.start[1])
            if len(times) == warmup:
                marks["warmup_peak"] = marks["sampler"].restart()

    import tempfile
    with tempfile.TemporaryDirectory() as output_dir:
        # A saved model: TRL builds the reference (beta > 0) from the policy's path.
        model_dir = os.path.join(output_dir, "model")
        network.save_pretrained(model_dir)
        del network
        grpo_config = trl.GRPOConfig(
            output_dir=output_dir, per_device_train_batch_size=PROMPTS * group,
            gradient_accumulation_steps=1, num_generations=group,
            max_completion_length=new_tokens, steps_per_generation=1, num_iterations=1,
            beta=kl_coef, loss_type="dapo", epsilon=0.2, max_grad_norm=1.0,
            learning_rate=1e-4, lr_scheduler_type="constant", temperature=1.0, top_k=0,
            top_p=1.0, use_vllm=False, use_cpu=True, bf16=False, fp16=False,
            gradient_checkpointing=gradient_checkpointing, report_to=[],
            logging_steps=10 ** 6, save_strategy="no", max_steps=total, seed=0,
            shuffle_dataset=False, dataloader_num_workers=0, disable_tqdm=True,
            model_init_kwargs={"dtype": torch.float32},
            generation_kwargs={"min_new_tokens": new_tokens})
        trainer = trl.GRPOTrainer(
            model=model_dir, reward_funcs=reward, args=grpo_config,
            train_dataset=datasets.Dataset.from_dict({"prompt": texts}),
            processing_class=tokenizer, callbacks=[Timing()])
        baseline = rss_bytes()
        with PeakSampler() as sampler:
            marks["sampler"] = sampler
            trainer.train()
        return {"baseline": baseline, "peak": sampler.peak, "after": rss_bytes(),
                "warmup_peak": marks.get("warmup_peak", sampler.peak),
                "times_s": times, "cpu_s": cpu_times,
                "versions": {"torch": torch.__version__,
                                               "transformers": transformers.__version__,
                                               "trl": trl.__version__}}


def child(args):
    cell = tuple(json.loads(args.child_cell))
    if args.side == "trl":
        result = trl_cell(cell, args.steps, args.warmup, args.gradient_checkpointing)
    else:
        run = tfpg_cell(cell, args.steps, args.warmup, args.gradient_checkpointing)
        baseline = rss_bytes()
        times, cpu_times = [], []
        with PeakSampler() as sampler:
            for step in range(args.warmup + args.steps):
                start, cpu_start = time.perf_counter(), time.process_time()
                run()
                times.append(time.perf_counter() - start)
                cpu_times.append(time.process_time() - cpu_start)
                if step + 1 == args.warmup:
                    warmup_peak = sampler.restart()
        import tensorflow as tf
        result = {"baseline": baseline, "peak": sampler.peak, "after": rss_bytes(),
                  "warmup_peak": warmup_peak if args.warmup else sampler.peak,
                  "times_s": times, "cpu_s": cpu_times,
                  "versions": {"tensorflow": tf.__version__}}
    result["ru_maxrss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print("RESULT " + json.dumps(result), flush=True)


# ------------------------------------------------------------------- driver


def run_cell(python, side, cell, args):
    command = [python, os.path.abspath(__file__), "--side", side, "--child-cell",
               json.dumps(list(cell)), "--steps", str(args.steps), "--warmup",
               str(args.warmup)]
    if args.gradient_checkpointing:
        command.append("--gradient-checkpointing")
    if os.path.exists("/usr/bin/time"):
        command = ["/usr/bin/time", "-v"] + command
    environment = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="3",
                       OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    started = time.perf_counter()
    try:
        process = subprocess.run(command, capture_output=True, text=True, env=environment,
                                 timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"over {args.timeout} s"}
    lines = [line for line in process.stdout.splitlines() if line.startswith("RESULT ")]
    if process.returncode != 0 or not lines:
        tail = (process.stderr.strip().splitlines() or ["?"])[-1]
        return {"error": f"exit {process.returncode}: {tail[:200]}"}
    result = json.loads(lines[-1][len("RESULT "):])
    for line in process.stderr.splitlines():
        if "Maximum resident set size" in line:
            result["time_v_max_rss"] = int(line.split(":")[-1]) * 1024
    def median_after_warmup(values):
        values = sorted(values[args.warmup:] or values)
        middle = len(values) // 2
        return values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2

    result.update(
        median_s=median_after_warmup(result["times_s"]),
        # CPU seconds of the process (every thread): the work a step takes, which a
        # shared machine's load changes far less than the wall time.
        median_cpu_s=median_after_warmup(result["cpu_s"]) if "cpu_s" in result else None,
        peak_above_baseline_gib=(result["peak"] - result["baseline"]) / 2 ** 30,
        warmup_peak_above_baseline_gib=(result["warmup_peak"] - result["baseline"]) / 2 ** 30,
        after_above_baseline_gib=(result["after"] - result["baseline"]) / 2 ** 30,
        wall_s=time.perf_counter() - started)
    return result


def parse_cells(args):
    if args.cells:
        cells = []
        for text in args.cells:
            v, n, kl, group = text.split(":")
            cells.append((int(v), int(n), float(kl), int(group)))
        return cells
    return [(v, n, kl, group) for group in args.groups for v, n in GRID
            for kl in (0.0, 0.04)]


def bytes_per_element(rows, side):
    """Least-squares slope of peak bytes against B * N * V over a side's cells of the
    vocabulary sweep (N = 256, per KL weight: the length sweep adds attention's T^2)."""
    points = [(r["cell"][3] * PROMPTS * r["cell"][1] * r["cell"][0],
               r[side]["peak"] - r[side]["baseline"]) for r in rows
              if "peak" in r.get(side, {}) and r["cell"][1] == 256
              and r["cell"][2] == 0.04]
    if len(points) < 2:
        return None
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    variance = sum((x - mean_x) ** 2 for x, _ in points)
    return (sum((x - mean_x) * (y - mean_y) for x, y in points) / variance
            if variance else None)


def tfpg_memory_budget(cell):
    """Where tfpg's step memory goes, analytically (MiB, float32), for one cell: what
    lives through the step, and the largest transient pieces."""
    from tfpg.algorithms.token_scores import default_chunk_size
    vocab_size, new_tokens, kl_coef, group = cell
    rows, length = PROMPTS * group, PROMPT_LENGTH + new_tokens
    parameters = (vocab_size * WIDTH + length * WIDTH
                  + LAYERS * (12 * WIDTH * WIDTH + 13 * WIDTH) + 2 * WIDTH)
    chunk = default_chunk_size(vocab_size)
    mib = 4 / 2 ** 20
    return {
        "weights": parameters * mib,
        "reference copy": parameters * mib if kl_coef else 0.0,
        "gradients": parameters * mib,
        "Adam slots": 2 * parameters * mib,
        "KV cache (decode)": rows * LAYERS * 2 * length * WIDTH * mib,
        # Kept for the backward: per block the input, norms, q / k / v, the
        # feed-forward's 4x-wide hidden, and the attention probabilities [B, h, T, T].
        "trunk activations (update)": LAYERS * (rows * length * WIDTH * 12
                                                + 2 * rows * HEADS * length ** 2) * mib,
        # The chunk's logits, filtered logits, log-softmax, softmax and gradient.
        "LM head chunk (5 x [r, V])": 5 * chunk * vocab_size * mib,
        "whole-logits equivalent, one [B, N, V]": rows * new_tokens * vocab_size * mib,
    }


def add_ratios(row):
    """tfpg / TRL of peak memory, median wall and median CPU seconds, where both ran."""
    tfpg, trl = row["tfpg"], row.get("trl", {})
    if "median_s" in tfpg and "median_s" in trl:
        row["memory_ratio"] = (tfpg["peak_above_baseline_gib"]
                               / trl["peak_above_baseline_gib"])
        row["time_ratio"] = tfpg["median_s"] / trl["median_s"]
    if tfpg.get("median_cpu_s") and trl.get("median_cpu_s"):
        row["cpu_ratio"] = tfpg["median_cpu_s"] / trl["median_cpu_s"]


def markdown_table(rows):
    """The markdown table (docs/real-sizes.md) of a results file's rows."""
    lines = ["| V | N | kl | group | tfpg peak GiB | TRL peak GiB | tfpg / TRL | tfpg step s "
             "| TRL step s | tfpg / TRL | tfpg CPU s | TRL CPU s | tfpg / TRL | tfpg after GiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in sorted(rows, key=lambda r: (r["gradient_checkpointing"], r["cell"][3],
                                           r["cell"][1], r["cell"][0], r["cell"][2])):
        tfpg, trl = row["tfpg"], row.get("trl", {})

        def value(side, key, form="{:.2f}"):
            return form.format(side[key]) if key in side else "-"

        v, n, kl, group = row["cell"]
        lines.append(
            f"| {v:,} | {n:,}{' (ckpt)' if row['gradient_checkpointing'] else ''} | {kl:g} "
            f"| {group} | {value(tfpg, 'peak_above_baseline_gib')} "
            f"| {value(trl, 'peak_above_baseline_gib')} | {value(row, 'memory_ratio')} "
            f"| {value(tfpg, 'median_s', '{:.1f}')} | {value(trl, 'median_s', '{:.1f}')} "
            f"| {value(row, 'time_ratio')} | {value(tfpg, 'median_cpu_s', '{:.1f}')} "
            f"| {value(trl, 'median_cpu_s', '{:.1f}')} | {value(row, 'cpu_ratio')} "
            f"| {value(tfpg, 'after_above_baseline_gib')} |")
    return "\n".join(lines)


def plot(rows, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, (varied, fixed, label) in zip(axes, ((0, (1, 256), "vocabulary V (N = 256)"),
                                                   (1, (0, 50257), "completion N (V = 50,257)"))):
        for side, marker in (("tfpg", "o"), ("trl", "s")):
            for kl, style in ((0.0, "--"), (0.04, "-")):
                points = sorted((r["cell"][varied], r[side]["peak_above_baseline_gib"])
                                for r in rows if r["cell"][fixed[0]] == fixed[1]
                                and r["cell"][2] == kl and r["cell"][3] == 8
                                and "peak_above_baseline_gib" in r.get(side, {}))
                if points:
                    axis.plot(*zip(*points), style, marker=marker,
                              label=f"{'TRL' if side == 'trl' else 'tfpg'}, kl {kl}")
        axis.set_xscale("log")
        axis.set_xlabel(label)
        axis.set_ylabel("peak memory above baseline (GiB)")
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trl-python", help="a Python with torch, transformers and trl "
                        "(default: this one, where they import)")
    parser.add_argument("--cells", nargs="*", help="V:N:kl:group, e.g. 151936:256:0.04:8")
    parser.add_argument("--groups", nargs="*", type=int, default=[8])
    parser.add_argument("--steps", type=int, default=2, help="timed steps a cell")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--timeout", type=int, default=3600, help="seconds a process")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--no-trl", action="store_true")
    parser.add_argument("--parallel", action="store_true",
                        help="run a cell's tfpg and TRL processes at the same time (one "
                             "thread each: on 2 cores, each has one, under the same load)")
    parser.add_argument("--output", default=os.path.join(HERE, "results", "scale.json"))
    parser.add_argument("--side", help=argparse.SUPPRESS)
    parser.add_argument("--child-cell", help=argparse.SUPPRESS)
    parser.add_argument("--markdown", action="store_true",
                        help="print the table of --output as Markdown and exit")
    args = parser.parse_args()
    if args.child_cell:
        return child(args)
    if args.markdown:
        with open(args.output) as f:
            results = json.load(f)
        print(markdown_table(results["rows"]))
        plain = [r for r in results["rows"] if not r["gradient_checkpointing"]]
        print("bytes per B * N * V element (fitted on the vocabulary sweep, kl 0.04):", {
            side: None if value is None else round(value, 3)
            for side in ("tfpg", "trl") for value in [bytes_per_element(plain, side)]})
        return None

    trl_python = args.trl_python or sys.executable
    if args.no_trl:
        trl_python = None
    elif subprocess.run([trl_python, "-c", "import torch, transformers, trl"],
                        capture_output=True).returncode != 0:
        print(f"scale: TRL side skipped ({trl_python} cannot import torch, transformers, "
              "trl; pass --trl-python)")
        trl_python = None
    rows = []
    previous = {}
    if os.path.exists(args.output):     # a rerun of some cells keeps the others
        with open(args.output) as f:
            previous = {tuple(r["cell"]) + (r.get("gradient_checkpointing", False),): r
                        for r in json.load(f).get("rows", [])}
    print(f"{'V':>7} {'N':>5} {'kl':>5} {'G':>3} | {'tfpg GiB':>9} {'TRL GiB':>8} "
          f"{'ratio':>6} | {'tfpg s':>7} {'TRL s':>7} {'ratio':>6} | {'tfpg CPU':>7} {'TRL CPU':>7} "
          f"{'ratio':>6}", flush=True)
    for cell in parse_cells(args):
        row = {"cell": list(cell), "gradient_checkpointing": args.gradient_checkpointing}
        sides = {"tfpg": sys.executable, **({"trl": trl_python} if trl_python else {})}
        if args.parallel:       # both at once, one core each: the same load on both
            from concurrent.futures import ThreadPoolExecutor
            with ThreadPoolExecutor(len(sides)) as pool:
                futures = {side: pool.submit(run_cell, python, side, cell, args)
                           for side, python in sides.items()}
                row.update({side: future.result() for side, future in futures.items()})
        else:
            row.update({side: run_cell(python, side, cell, args)
                        for side, python in sides.items()})
        tfpg, trl = row["tfpg"], row.get("trl", {})
        add_ratios(row)

        def show(side, key, form):
            return form.format(side[key]) if key in side else "-"

        print(f"{cell[0]:>7} {cell[1]:>5} {cell[2]:>5} {cell[3]:>3} | "
              f"{show(tfpg, 'peak_above_baseline_gib', '{:9.2f}')} "
              f"{show(trl, 'peak_above_baseline_gib', '{:8.2f}')} "
              f"{show(row, 'memory_ratio', '{:6.2f}')} | {show(tfpg, 'median_s', '{:7.1f}')} "
              f"{show(trl, 'median_s', '{:7.1f}')} {show(row, 'time_ratio', '{:6.2f}')} | "
              f"{show(tfpg, 'median_cpu_s', '{:7.1f}')} {show(trl, 'median_cpu_s', '{:7.1f}')} "
              f"{show(row, 'cpu_ratio', '{:6.2f}')}"
              + "".join(f"  [{name}: {side['error']}]" for name, side in
                        (("tfpg", tfpg), ("TRL", trl)) if "error" in side), flush=True)
        key = tuple(cell) + (args.gradient_checkpointing,)
        if not trl_python and "trl" in previous.get(key, {}):
            # A tfpg-only rerun keeps the TRL side measured before (its memory is the
            # same; the time ratio then compares passes under different loads).
            row["trl"] = previous[key]["trl"]
            row["trl_from_earlier_pass"] = True
            add_ratios(row)
        previous[key] = row
        rows = list(previous.values())
        os.makedirs(os.path.dirname(args.output), exist_ok=True)
        with open(args.output, "w") as f:
            json.dump({"config": {"width": WIDTH, "layers": LAYERS, "heads": HEADS,
                                  "prompts": PROMPTS, "prompt_length": PROMPT_LENGTH,
                                  "steps": args.steps, "warmup": args.warmup},
                       "bytes_per_bnv_element": {
                           side: bytes_per_element([r for r in rows if not
                                                    r["gradient_checkpointing"]], side)
                           for side in ("tfpg", "trl")},
                       "rows": rows}, f, indent=1)
    plot([r for r in rows if not r["gradient_checkpointing"]],
         os.path.splitext(args.output)[0] + ".png")
    for cell in parse_cells(args)[:1] if args.cells else [(151936, 256, 0.04, 8)]:
        print(f"tfpg's step memory at V={cell[0]}, N={cell[1]}, kl {cell[2]}, group "
              f"{cell[3]} (analytic, MiB):")
        for name, value in tfpg_memory_budget(cell).items():
            print(f"  {name:<42} {value:8.1f}")


if __name__ == "__main__":
    main()
