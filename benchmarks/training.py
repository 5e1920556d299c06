"""Train-step throughput per algorithm, where a step's time goes, and its MFU.

Every algorithm of `tfpg.algorithms.ALGORITHMS` trains the same policy (an LSTM LM:
vocabulary 8192, embedding 512, state 1024) on the same rollouts: 64 completions per
step (64 prompts, or 16 prompts x group_size 4 for RLOO / GRPO) of 32 new tokens after
8-token prompts, rewarded by in-graph BLEU against a reference. A2C and PPO get a
`ValueNetwork` of the same size; PPO and GRPO their default KL to a frozen reference
(PPO: 4 epochs over each rollout).

Measured in one process, interleaved with the dense matmul peak:

* the whole `train_step` (a tf.function, as `fit` runs it): samples/s = completions/s;
* its pieces, each its own tf.function on the same data: `sample` (the decode loop),
  `reward` (the reward function on sampled completions), `score` (the rest of
  `collect_rollout`: policy / reference / value forward passes for log-probs, KL and
  values), `advantages` (`compute_advantages`; SCST's greedy baseline decode is here)
  and `update` (`update`: epochs x minibatches of forward, backward, clip, apply);
* the fraction of the matmul peak the step achieves (MFU), counting the matmul
  FLOPs a step needs (benchmarks/common.py; backward = 2x forward; the vocabulary
  head counted on completion positions only, where its logits are used);
* the step with XLA: the decode loop compiled (`jit_decode`, what
  `compile(jit_compile="auto")` picks with a GPU) and the whole step compiled
  (`compile(jit_compile=True)`), each against the plain graph.

    python benchmarks/training.py             # all algorithms (~6 min on 2 cores)
    python benchmarks/training.py --quick     # reinforce and ppo, smaller model
"""

import argparse
import os
import sys
import time

import keras
import tensorflow as tf

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

import tfpg  # noqa: E402
from tfpg.algorithms import ALGORITHMS, SCST  # noqa: E402
from tfpg.rewards.base import compute_rewards  # noqa: E402

PROMPT, NEW_TOKENS, ROWS, GROUP, REFERENCE = 8, 32, 64, 4, 12


def model_config(args):
    return {"backbone": "lstm", "vocab_size": args.vocab, "embedding_dim": args.embedding,
            "hidden_dim": args.hidden, "num_layers": 1}


def make_agent(name, args, jit_compile=False):
    config = model_config(args)
    keras.utils.set_random_seed(0)
    policy = tfpg.PolicyNetwork(config["vocab_size"], config["embedding_dim"],
                                config["hidden_dim"])
    options = dict(max_new_tokens=NEW_TOKENS, eos_id=None, seed=0)
    if name in ("a2c", "ppo"):
        options["value_model"] = tfpg.ValueNetwork(config["vocab_size"],
                                                   config["embedding_dim"],
                                                   config["hidden_dim"])
    if name in ("rloo", "grpo"):
        options["group_size"] = GROUP
    agent = ALGORITHMS[name](policy, reward_fn=tfpg.rewards.BLEU(), **options)
    agent.compile(optimizer=keras.optimizers.Adam(1e-5), jit_compile=jit_compile)
    return agent


def make_batch(name, vocab):
    prompts = ROWS // GROUP if name in ("rloo", "grpo") else ROWS
    return {"prompt": tf.random.uniform([prompts, PROMPT], 4, vocab, tf.int32, seed=1),
            "reference": tf.random.uniform([prompts, REFERENCE], 4, vocab, tf.int32,
                                           seed=2)}


def step_flops(agent, config):
    """Matmul FLOPs of one train step (see the module docstring)."""
    rows, length = ROWS, PROMPT + NEW_TOKENS
    generation = common.generation_flops(config, PROMPT, NEW_TOKENS)
    policy_pass = common.sequence_flops(config, PROMPT, length, NEW_TOKENS)
    value_pass = common.sequence_flops(config, PROMPT, length, 0, value_head=True)
    flops = {"sample": rows * generation,
             "score": rows * policy_pass * (2 if agent.reference_model is not None else 1)}
    if agent.value_model is not None:
        flops["score"] += rows * value_pass
    flops["advantages"] = rows * generation if isinstance(agent, SCST) else 0
    per_update = 3 * policy_pass + (3 * value_pass if agent.value_model is not None else 0)
    flops["update"] = agent.num_epochs * rows * per_update     # minibatches cover B once
    flops["reward"] = 0
    return flops


def pieces(agent, batch):
    """tf.functions for the parts of a train step, and their inputs."""
    if agent.group_size > 1:
        grouped = {k: tf.repeat(v, agent.group_size, axis=0) for k, v in batch.items()}
    else:
        grouped = batch
    prompt_ids = grouped["prompt"]
    seed = tf.constant([0, 1])
    sample = tf.function(lambda p, s: agent.sample(p, s))
    generated = sample(prompt_ids, seed)
    reward = tf.function(lambda p, c, m, b: compute_rewards(
        agent.reward_fn, p, c, m, b, agent.on_invalid_reward).rewards)
    collect = tf.function(lambda b: agent.collect_rollout(b))

    def rollout_and_advantages(b):
        rollout, grouped_batch = agent.collect_rollout(b)
        rollout.update(agent.compute_advantages(rollout, grouped_batch))
        return rollout

    rollout = tf.function(rollout_and_advantages)(batch)
    rollout_only, _ = collect(batch)
    advantages = tf.function(lambda r, b: agent.compute_advantages(r, b))
    update = tf.function(lambda r: agent.update(r) or tf.constant(0))
    return {
        "sample": lambda: sample(prompt_ids, seed).token_ids,
        "reward": lambda: reward(prompt_ids, generated.token_ids, generated.mask, grouped),
        "collect_rollout": lambda: collect(batch)[0]["scores"],
        "advantages": lambda: advantages(rollout_only, grouped)["advantages"],
        "update": lambda: update(rollout),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--embedding", type=int, default=512)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--xla", nargs="*", default=["reinforce", "ppo"],
                        help="algorithms whose step is also timed with an XLA decode loop")
    parser.add_argument("--xla-step", nargs="*", default=["reinforce", "ppo"],
                        help="algorithms whose step is also timed compiled whole by XLA")
    parser.add_argument("--quick", action="store_true",
                        help="reinforce and ppo only, hidden 512, one repeat")
    parser.add_argument("--output", default="benchmarks/results/training.json")
    args = parser.parse_args()
    if args.quick:
        args.algorithms, args.hidden, args.repeats = ["reinforce", "ppo"], 512, 1
        args.xla = [a for a in args.xla if a in args.algorithms][:1]
        args.xla_step = [a for a in args.xla_step if a in args.algorithms][:1]

    config = model_config(args)
    timer = common.Timer()
    rows = []
    for name in args.algorithms:
        agent = make_agent(name, args)
        batch = make_batch(name, args.vocab)
        train_step = tf.function(agent.train_step)
        fns = {"train_step": lambda: train_step(batch)["reward"]}
        fns.update(pieces(agent, batch))
        start = time.perf_counter()
        times, peak = timer.run(fns, args.repeats)
        flops = step_flops(agent, config)
        best = {k: min(v) for k, v in times.items()}
        split = {"sample": best["sample"], "reward": best["reward"],
                 "score": max(best["collect_rollout"] - best["sample"] - best["reward"], 0.0),
                 "advantages": best["advantages"], "update": best["update"]}
        row = {"algorithm": name, "rows_per_step": ROWS,
               "step_s": best["train_step"],
               "samples_per_s": ROWS / best["train_step"],
               "split_s": split,
               "split_fraction": {k: v / sum(split.values()) for k, v in split.items()},
               "pieces_sum_over_step": sum(split.values()) / best["train_step"],
               "flops": flops,
               "step_gflops": sum(flops.values()) / best["train_step"] / 1e9,
               "peak_gflops": peak / 1e9,           # measured between these runs
               "mfu": sum(flops.values()) / best["train_step"] / peak,
               "update_mfu": flops["update"] / split["update"] / peak,
               "sample_mfu": flops["sample"] / split["sample"] / peak,
               "times": {k: common.summary(v) for k, v in times.items()}}
        if name in args.xla or name in args.xla_step:
            # The two XLA modes of `compile(jit_compile=...)`: the decode loop only
            # (what "auto" picks with a GPU), and the whole step (True).
            variants = {"no_xla": fns["train_step"]}
            modes = [mode for mode, names in (("xla_decode", args.xla),
                                              ("xla_step", args.xla_step)) if name in names]
            for mode in modes:
                xla_agent = make_agent(name, args, jit_compile=mode == "xla_step")
                xla_agent.jit_decode = mode == "xla_decode"
                step = tf.function(xla_agent.train_step, jit_compile=mode == "xla_step")
                try:
                    compile_start = time.perf_counter()
                    step(batch)["reward"].numpy()
                    row[f"{mode}_first_call_s"] = time.perf_counter() - compile_start
                    variants[mode] = lambda step=step: step(batch)["reward"]
                except Exception as error:     # report, do not fail the benchmark
                    row[f"{mode}_error"] = (f"{type(error).__name__}: "
                                            f"{str(error).splitlines()[0][:300]}")
            xla_times, _ = timer.run(variants, args.repeats, warmup=False)
            for mode in variants:
                row[f"{mode}_step_s"] = min(xla_times[mode])
                row[f"{mode}_over_no_xla"] = min(xla_times["no_xla"]) / min(xla_times[mode])
            row["xla_times"] = {k: common.summary(v) for k, v in xla_times.items()}
        rows.append(row)
        print(f"{name}: {row['samples_per_s']:.1f} samples/s, MFU {row['mfu']:.2f} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)

    print(f"\nTrain step, {ROWS} completions x {NEW_TOKENS} tokens, LSTM "
          f"{args.embedding}/{args.hidden}, vocabulary {args.vocab}; MFU against the "
          f"matmul peak measured between the same runs (best overall "
          f"{timer.peak_flops / 1e9:.0f} GFLOP/s)")
    table = []
    for row in rows:
        flat = {k: v for k, v in row.items() if not isinstance(v, dict)}
        flat.update({f"{k}_pct": 100 * v for k, v in row["split_fraction"].items()})
        table.append(flat)
    common.print_table([
        ("algorithm", "algorithm", None), ("step s", "step_s", "{:.2f}"),
        ("samples/s", "samples_per_s", "{:.1f}"), ("sample", "sample_pct", "{:.0f}%"),
        ("reward", "reward_pct", "{:.1f}%"), ("score", "score_pct", "{:.0f}%"),
        ("advant.", "advantages_pct", "{:.0f}%"), ("update", "update_pct", "{:.0f}%"),
        ("GFLOP/s", "step_gflops", "{:.0f}"), ("peak", "peak_gflops", "{:.0f}"),
        ("MFU", "mfu", "{:.0%}"),
        ("update MFU", "update_mfu", "{:.0%}"),
        ("XLA decode", "xla_decode_over_no_xla", "{:.2f}x"),
        ("XLA step", "xla_step_over_no_xla", "{:.2f}x")],
        table)
    print("XLA columns: speed of the step with the decode loop / the whole step compiled "
          "by XLA, relative to no XLA (same run).")
    for row in rows:
        for mode in ("xla_decode", "xla_step"):
            if f"{mode}_error" in row:
                print(f"{mode} {row['algorithm']}: {row[mode + '_error']}")
    common.write_json(args.output, {
        "model": config, "prompt_length": PROMPT, "new_tokens": NEW_TOKENS,
        "rows_per_step": ROWS, "group_size": GROUP, "environment": common.environment(),
        "peak_gflops": timer.peak_flops / 1e9, "rows": rows, "args": vars(args)})


if __name__ == "__main__":
    main()
