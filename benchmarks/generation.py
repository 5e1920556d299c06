"""Generation throughput: tfpg's compiled decode vs an eager Python loop.

For each backbone, tokens/s of `tfpg.generate` (one tf.function: prefill, then a
tf.while_loop over the cache) and of the loop the source documents write by hand
(`logits = policy(state)` on the whole sequence every step, `tf.random.categorical`,
append), on the same model in the same process. Prints a table and writes JSON.

    python benchmarks/generation.py [--batch-sizes 64] [--new-tokens 32] [--output F.json]
"""

import argparse
import json
import os
import time

import keras
import tensorflow as tf

import tfpg

VOCAB, EMBEDDING, HIDDEN, PROMPT = 512, 128, 256, 8


def eager_loop(policy, prompt_ids, new_tokens):
    """The seed documents' episode loop: full forward pass per sampled token."""
    sequence = prompt_ids
    for _ in range(new_tokens):
        logits = policy(sequence)[:, -1]
        action = tf.random.categorical(logits, 1, dtype=tf.int32)
        sequence = tf.concat([sequence, action], axis=1)
    return sequence[:, prompt_ids.shape[1]:]


def compiled(policy, prompt_ids, new_tokens):
    return tfpg.generate(policy, prompt_ids, new_tokens, sampler="sample", eos_id=None,
                         seed=0).token_ids


def tokens_per_second(fn, policy, prompt_ids, new_tokens, repeats):
    fn(policy, prompt_ids, new_tokens).numpy()                       # warm-up / trace
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn(policy, prompt_ids, new_tokens).numpy()
        best = min(best, time.perf_counter() - start)
    return prompt_ids.shape[0] * new_tokens / best


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=["lstm", "gru", "transformer"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[64])
    parser.add_argument("--new-tokens", nargs="+", type=int, default=[32])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default="benchmarks/results/generation.json")
    args = parser.parse_args()

    rows = []
    for backbone in args.backbones:
        keras.utils.set_random_seed(0)
        policy = tfpg.PolicyNetwork(VOCAB, EMBEDDING, HIDDEN, backbone=backbone,
                                    num_heads=4, max_length=512)
        for batch_size in args.batch_sizes:
            prompt_ids = tf.random.uniform([batch_size, PROMPT], 4, VOCAB, tf.int32, seed=1)
            for new_tokens in args.new_tokens:
                fast = tokens_per_second(compiled, policy, prompt_ids, new_tokens, args.repeats)
                slow = tokens_per_second(eager_loop, policy, prompt_ids, new_tokens,
                                         args.repeats)
                rows.append({"backbone": backbone, "batch_size": batch_size,
                             "new_tokens": new_tokens, "tfpg_tokens_per_s": fast,
                             "eager_tokens_per_s": slow, "speedup": fast / slow})

    print(f"{'backbone':<12}{'batch':>6}{'new':>5}{'tfpg tok/s':>13}{'eager tok/s':>13}"
          f"{'ratio':>8}")
    for row in rows:
        print(f"{row['backbone']:<12}{row['batch_size']:>6}{row['new_tokens']:>5}"
              f"{row['tfpg_tokens_per_s']:>13.0f}{row['eager_tokens_per_s']:>13.0f}"
              f"{row['speedup']:>7.1f}x")
    os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
    with open(args.output, "w") as f:
        json.dump({"model": {"vocab": VOCAB, "embedding_dim": EMBEDDING, "hidden_dim": HIDDEN,
                             "prompt_length": PROMPT},
                   "device": tf.config.list_logical_devices()[0].device_type,
                   "rows": rows}, f, indent=2)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
