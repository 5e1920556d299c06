"""In-graph BLEU (`tfpg.rewards.sentence_bleu` in a compiled tf.function) against a
per-sentence loop over `nltk.translate.bleu_score.sentence_bleu`.

Both score the same random batches (hypotheses and references of 8..32 tokens
from a 50-word vocabulary, 2 references each, smoothing "method1"); they are
measured in the same run, the tf.function compiled once (unknown batch size) and
warmed up at every batch size before timing. The nltk loop gets the sentences as
ready-made Python lists, so its time is nltk alone. Also checks that both give
the same scores. Timings are medians, the two measured interleaved.

    python benchmarks/rewards.py [--batch-sizes 64 256 1024] [--repeats 10]
                                 [--output benchmarks/results/rewards.json]
"""

import argparse
import json
import os
import platform
import statistics
import time
import warnings

import numpy as np
import tensorflow as tf
from nltk.translate.bleu_score import SmoothingFunction
from nltk.translate.bleu_score import sentence_bleu as nltk_sentence_bleu

from tfpg.rewards import sentence_bleu

VOCAB = 50
MIN_LEN, MAX_LEN = 8, 32
NUM_REFS = 2


def make_batch(batch_size, rng):
    """Padded ids hyp [B, 32], refs [B, 2, 32] and the same as nltk-style lists."""
    hyp = np.zeros([batch_size, MAX_LEN], np.int32)
    refs = np.zeros([batch_size, NUM_REFS, MAX_LEN], np.int32)
    hyp_lists, ref_lists = [], []
    for b in range(batch_size):
        length = rng.integers(MIN_LEN, MAX_LEN + 1)
        hyp[b, :length] = rng.integers(4, 4 + VOCAB, length)
        hyp_lists.append(hyp[b, :length].tolist())
        references = []
        for k in range(NUM_REFS):
            length = rng.integers(MIN_LEN, MAX_LEN + 1)
            # References share a prefix with the hypothesis so scores are not all ~0.
            shared = rng.integers(0, length + 1)
            tokens = np.concatenate([hyp_lists[b][:shared],
                                     rng.integers(4, 4 + VOCAB, length)])[:length]
            refs[b, k, :len(tokens)] = tokens
            references.append(tokens.tolist())
        ref_lists.append(references)
    return hyp, refs, hyp_lists, ref_lists


def median_seconds(fns, repeats):
    """Median wall time of each of `fns`, run interleaved so that load from other
    processes affects all of them alike."""
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, spent in zip(fns, times):
            start = time.perf_counter()
            fn()
            spent.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "results",
                                                         "rewards.json"))
    args = parser.parse_args()

    in_graph = tf.function(
        lambda h, r: sentence_bleu(h, r, smoothing="method1"),
        input_signature=[tf.TensorSpec([None, MAX_LEN], tf.int32),
                         tf.TensorSpec([None, NUM_REFS, MAX_LEN], tf.int32)])
    smoothing = SmoothingFunction().method1

    def nltk_loop(hyp_lists, ref_lists):
        return [nltk_sentence_bleu(r, h, smoothing_function=smoothing)
                for h, r in zip(hyp_lists, ref_lists)]

    rng = np.random.default_rng(0)
    rows = []
    for batch_size in args.batch_sizes:
        hyp, refs, hyp_lists, ref_lists = make_batch(batch_size, rng)
        hyp, refs = tf.constant(hyp), tf.constant(refs)
        for _ in range(3):  # warm-up (the first call also traces)
            ours = in_graph(hyp, refs).numpy()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = nltk_loop(hyp_lists, ref_lists)
            tf_s, nltk_s = median_seconds([lambda: in_graph(hyp, refs).numpy(),
                                           lambda: nltk_loop(hyp_lists, ref_lists)],
                                          args.repeats)
        rows.append({"batch_size": batch_size, "tf_function_ms": 1e3 * tf_s,
                     "nltk_loop_ms": 1e3 * nltk_s, "speedup": nltk_s / tf_s,
                     "max_abs_diff": float(np.max(np.abs(ours - np.array(expected)))),
                     "mean_bleu": float(np.mean(expected))})

    print(f"sentence BLEU-4 (method1), hyp/ref lengths {MIN_LEN}..{MAX_LEN}, "
          f"{NUM_REFS} refs, median of {args.repeats}")
    print(f"{'batch':>6} {'tf.function ms':>15} {'nltk loop ms':>13} {'speedup':>8} "
          f"{'max |diff|':>11}")
    for row in rows:
        print(f"{row['batch_size']:>6} {row['tf_function_ms']:>15.2f} "
              f"{row['nltk_loop_ms']:>13.2f} {row['speedup']:>7.1f}x "
              f"{row['max_abs_diff']:>11.1e}")
    assert all(row["max_abs_diff"] <= 1e-6 for row in rows), "BLEU differs from nltk"

    result = {"benchmark": "rewards.sentence_bleu", "smoothing": "method1", "max_order": 4,
              "lengths": [MIN_LEN, MAX_LEN], "num_references": NUM_REFS, "vocab": VOCAB,
              "repeats": args.repeats, "tensorflow": tf.__version__,
              "machine": platform.machine(), "cpu_count": os.cpu_count(), "rows": rows}
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
