"""Multi-turn rollouts: throughput against single-turn generation, time in the env.

A policy (the `tfpg train` default LSTM: embedding 64, state 128, and a larger one:
embedding 512, state 1024; vocabulary 64) plays `--turns` turns of `--turn-tokens`
tokens each (EOS suppressed and no turn-end token, so every turn has exactly that
many tokens) against an env that replies `--reply-tokens` tokens after every turn
but the last. Interleaved in one process (`common.Timer`), per batch size:

* multi-turn: `tfpg.envs.multi_turn.rollout_episodes` (one compiled generation per turn,
  the whole context prefilled again each turn, the env in Python between turns);
* single-turn, same length: one `tfpg.generate` of as many new tokens as the
  trajectory has after its prompt (policy turns + replies);
* single-turn, same policy tokens: one `tfpg.generate` of the policy's tokens only.

Two envs: "constant" (returns the reply text: the rollout's own overhead) and
"tool" (a `ToolEnv` whose every turn calls `calc`, on its pool of worker threads
with a time limit). Reported: policy tokens/s, the ratios to the two single-turn runs, and the
share of the rollout's wall time spent in the env (`Episodes.env_seconds`). A
second table: one GRPO `train_step` with `env=` (rollout in Python, update in a
tf.function) and the share of its time in the env (`env_time_fraction`).

    python benchmarks/multi_turn.py            # ~4 min on 2 cores
    python benchmarks/multi_turn.py --quick    # batch 32 only, small model
"""

import argparse
import os
import sys
import time

import keras
import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

import tfpg  # noqa: E402
from tfpg.envs.multi_turn import rollout_episodes  # noqa: E402
from tfpg.text.tokenizer import SPECIAL_TOKENS
from tfpg.text import Tokenizer
from tfpg.envs.tool_env import ToolEnv, calculator  # noqa: E402
from tfpg.envs.turn_env import TurnEnv  # noqa: E402

PROMPT = 8
MODELS = {"small": dict(embedding_dim=64, hidden_dim=128),
          "large": dict(embedding_dim=512, hidden_dim=1024)}
TOKENIZER = Tokenizer(list(SPECIAL_TOKENS) + [f"w{i}" for i in range(60)], level="word")


class ConstantEnv(TurnEnv):
    """Replies the same `reply_tokens` words after every turn; never done."""

    def __init__(self, reply_tokens):
        super().__init__(TOKENIZER)
        self.reply = " ".join(["w1"] * reply_tokens)

    def respond(self, rows, completions):
        return [self.reply] * len(rows), np.zeros(len(rows)), np.zeros(len(rows), bool)


class ToolEveryTurn(ToolEnv):
    """A `ToolEnv` whose every turn is a `calc` call (the random policy's text is
    ignored): the cost of the tool machinery."""

    def __init__(self, reply_tokens):
        super().__init__({"calc": calculator}, TOKENIZER, timeout=1.0,
                         result_format=" ".join(["w2"] * reply_tokens))

    def parse(self, text):
        return "calc", "417*38"


def batch_of(size, seed=0):
    ids = np.random.default_rng(seed).integers(4, TOKENIZER.vocabulary_size, [size, PROMPT])
    ids[:, 0] = 1
    return {"prompt": ids.astype(np.int32), "prompt_mask": np.ones_like(ids, np.int32)}


def rollout_rows(policy, sizes, args, timer):
    rows = []
    suppress = (TOKENIZER.eos_id,)
    total = args.turns * args.turn_tokens + (args.turns - 1) * args.reply_tokens
    policy_tokens = args.turns * args.turn_tokens
    for size in sizes:
        batch = batch_of(size)
        envs = {"constant": ConstantEnv(args.reply_tokens),
                "tool": ToolEveryTurn(args.reply_tokens)}
        last = {}

        def multi(env):
            def run():
                last[env] = rollout_episodes(policy, envs[env], batch, args.turns,
                                             args.turn_tokens, suppress_ids=suppress, seed=0)
                return last[env].completion_ids
            return run

        def single(tokens):
            return lambda: tfpg.generate(policy, batch["prompt"], max_new_tokens=tokens,
                                         suppress_ids=suppress, eos_id=None, seed=0).token_ids

        fns = {"constant": multi("constant"), "tool": multi("tool"),
               "same_length": single(total), "same_policy_tokens": single(policy_tokens)}
        times, _ = timer.run(fns, args.repeats)
        best = {name: min(seconds) for name, seconds in times.items()}
        for env in envs:
            episodes = last[env]
            assert int(episodes.policy_mask.sum()) == size * policy_tokens
            rows.append({
                "model": args.model_name, "batch": size, "env": env,
                "policy_tokens_per_s": size * policy_tokens / best[env],
                "single_same_length_tokens_per_s": size * total / best["same_length"],
                "vs_same_length": best["same_length"] / best[env],
                "vs_same_policy_tokens": best["same_policy_tokens"] / best[env],
                "env_share": episodes.env_seconds / best[env],
                "rollout": common.summary(times[env]),
            })
    return rows


def train_rows(policy, size, args):
    rows = []
    for env_name, env in (("constant", ConstantEnv(args.reply_tokens)),
                          ("tool", ToolEveryTurn(args.reply_tokens))):
        trainer = tfpg.algorithms.GRPO(
            policy, None, env=env, max_turns=args.turns, max_new_tokens=args.turn_tokens,
            group_size=4, kl_coef=0.0, suppress_ids=(TOKENIZER.eos_id,))
        trainer.compile(optimizer=keras.optimizers.SGD(0.0))
        batch = {k: tf.constant(v) for k, v in batch_of(size // 4).items()}
        trainer.train_step(batch)                          # traces
        seconds, shares = [], []
        for _ in range(args.repeats):
            for tracker in trainer.metrics:
                tracker.reset_state()
            start = time.perf_counter()
            logs = trainer.train_step(batch)
            seconds.append(time.perf_counter() - start)
            shares.append(float(logs["env_time_fraction"]))
        rows.append({"model": args.model_name, "batch": size, "env": env_name,
                     "step_s": min(seconds), "env_share": float(np.median(shares)),
                     "policy_tokens_per_s": size * args.turns * args.turn_tokens
                     / min(seconds)})
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--turn-tokens", type=int, default=16)
    parser.add_argument("--reply-tokens", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__),
                                                         "results", "multi_turn.json"))
    args = parser.parse_args()
    models = ["small"] if args.quick else ["small", "large"]
    sizes = [32] if args.quick else [8, 64]
    timer = common.Timer()
    rollouts, steps = [], []
    for name in models:
        keras.utils.set_random_seed(0)
        args.model_name = name
        policy = tfpg.PolicyNetwork(TOKENIZER.vocabulary_size, **MODELS[name])
        rollouts += rollout_rows(policy, sizes, args, timer)
        steps += train_rows(policy, sizes[-1], args)
    print(f"rollouts: {args.turns} turns x {args.turn_tokens} tokens, replies of "
          f"{args.reply_tokens} tokens, prompt {PROMPT}")
    common.print_table([
        ("model", "model", None), ("batch", "batch", None), ("env", "env", None),
        ("policy tok/s", "policy_tokens_per_s", "{:.0f}"),
        ("1-turn tok/s", "single_same_length_tokens_per_s", "{:.0f}"),
        ("time 1-turn same length / multi", "vs_same_length", "{:.2f}"),
        ("time 1-turn policy tokens / multi", "vs_same_policy_tokens", "{:.2f}"),
        ("env share", "env_share", "{:.1%}")], rollouts)
    print("\nGRPO train_step with env= (group 4)")
    common.print_table([
        ("model", "model", None), ("batch", "batch", None), ("env", "env", None),
        ("step s", "step_s", "{:.3f}"), ("policy tok/s", "policy_tokens_per_s", "{:.0f}"),
        ("env share", "env_share", "{:.1%}")], steps)
    common.write_json(args.output, {"environment": common.environment(),
                                    "options": {k: v for k, v in vars(args).items()
                                                if k != "model_name"},
                                    "rollouts": rollouts, "train_steps": steps})


if __name__ == "__main__":
    main()
