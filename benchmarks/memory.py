"""Resident memory across epochs of a small training run: does anything leak?

Trains a small policy (LSTM, or --backbone) with an algorithm (RLOO by default, or
--algorithm) for 20 epochs on a synthetic prompt dataset, with the callbacks a real
run uses (RewardLogger, SampleLogger: a `tfpg.generate` call per epoch), and records
the process's resident set size (RSS, from /proc/self/statm; `resource` elsewhere)
after every epoch. Growth is measured from the end of epoch 2 (tracing, optimizer
slots and allocator pools are in place by then) to the end of the last epoch, as a
percentage of the epoch-2 RSS; also reported: the growth over the second half of the
run alone, and how often the train step was traced (it must be once). Prints a table;
writes JSON.

    python benchmarks/memory.py [--epochs 20] [--algorithm rloo] [--backbone lstm]
"""

import argparse
import os
import sys
import tempfile
import time

import keras
import tensorflow as tf

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

import tfpg  # noqa: E402
from tfpg.algorithms import ALGORITHMS  # noqa: E402
from tfpg.testing import count_train_step_traces  # noqa: E402


def rss_mib():
    """Current resident set size in MiB."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):   # not Linux: peak RSS is the best we have
        import resource
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / (2**20 if sys.platform == "darwin" else 2**10)


class RssRecorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.rss = []
        self.seconds = []
        self._start = None

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)
        self.rss.append(rss_mib())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--algorithm", default="rloo", choices=sorted(ALGORITHMS))
    parser.add_argument("--backbone", default="lstm", choices=["lstm", "gru", "transformer"])
    parser.add_argument("--baseline-epoch", type=int, default=2)
    parser.add_argument("--output", default="benchmarks/results/memory.json")
    args = parser.parse_args()

    words = [f"w{i}" for i in range(60)]
    tokenizer = tfpg.Tokenizer.from_texts([" ".join(words)], level="word")
    vocab = tokenizer.vocabulary_size
    keras.utils.set_random_seed(0)
    policy = tfpg.PolicyNetwork(vocab, 64, 128, backbone=args.backbone, num_heads=4,
                                max_length=64)
    options = dict(max_new_tokens=12, eos_id=tokenizer.eos_id, seed=0)
    if args.algorithm in ("a2c", "ppo"):
        options["value_model"] = tfpg.ValueNetwork(vocab, 64, 128, backbone=args.backbone,
                                                   num_heads=4, max_length=64)
    if args.algorithm in ("rloo", "grpo"):
        options["group_size"] = 4
    agent = ALGORITHMS[args.algorithm](policy, reward_fn=tfpg.rewards.BLEU(), **options)
    agent.compile(optimizer=keras.optimizers.Adam(1e-3))
    traces = count_train_step_traces(agent)

    prompts = tf.random.uniform([256, 6], 4, vocab, tf.int32, seed=1)
    prompts = tf.concat([tf.ones([256, 1], tf.int32), prompts], axis=1)
    references = tf.random.uniform([256, 10], 4, vocab, tf.int32, seed=2)
    dataset = tf.data.Dataset.from_tensor_slices(
        {"prompt": prompts, "reference": references}).shuffle(256, seed=0).batch(32)
    recorder = RssRecorder()
    with tempfile.TemporaryDirectory() as logdir:
        callbacks = [tfpg.callbacks.RewardLogger(), recorder,
                     tfpg.callbacks.SampleLogger(logdir, tokenizer=tokenizer,
                                                 prompts=["w1 w2", "w3"],
                                                 references=["w4 w5", "w6"])]
        start_rss = rss_mib()
        agent.fit(dataset, epochs=args.epochs, verbose=0, callbacks=callbacks)

    base = recorder.rss[args.baseline_epoch - 1]
    growth = 100 * (recorder.rss[-1] - base) / base
    half = len(recorder.rss) // 2
    second_half = 100 * (recorder.rss[-1] - recorder.rss[half - 1]) / recorder.rss[half - 1]
    print(f"{args.algorithm} / {args.backbone}, {args.epochs} epochs x 8 steps; "
          f"RSS before fit {start_rss:.0f} MiB")
    common.print_table([("epoch", "epoch", None), ("RSS MiB", "rss", "{:.1f}"),
                        ("epoch s", "seconds", "{:.2f}")],
                       [{"epoch": i + 1, "rss": r, "seconds": s}
                        for i, (r, s) in enumerate(zip(recorder.rss, recorder.seconds))])
    print(f"growth epoch {args.baseline_epoch} -> {args.epochs}: {growth:+.2f}%  "
          f"(second half: {second_half:+.2f}%); train_step traced {len(traces)}x")
    common.write_json(args.output, {
        "algorithm": args.algorithm, "backbone": args.backbone, "epochs": args.epochs,
        "steps_per_epoch": 8, "rss_mib_before_fit": start_rss, "rss_mib": recorder.rss,
        "epoch_seconds": recorder.seconds, "baseline_epoch": args.baseline_epoch,
        "growth_percent": growth, "second_half_growth_percent": second_half,
        "train_step_traces": len(traces), "environment": common.environment()})


if __name__ == "__main__":
    main()
