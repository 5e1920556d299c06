"""Quality of the multi-turn tasks: maximum likelihood vs GRPO over whole episodes.

For each task (`calculator`, `guess`) and seed: pre-train the `tfpg train` default
policy (LSTM 64/128, Adam 3e-3, the task's `pretrain_epochs`) on the teacher's
episodes, evaluate it on the held-out split (greedy episodes against the task's
env), fine-tune it with GRPO (`env=`, groups of 8 episodes per prompt, 16 prompts
per step, Adam 1e-3, no KL) -- or PPO (`--algorithms ppo`: a critic, GAE over the
policy tokens, 128 prompts per step, 2 epochs) -- and evaluate again. Reports each task's metrics
before / after as mean +- std over seeds (calculator: accuracy, tool-call rate,
calls per episode; guess: success rate, mean turns) and writes JSON + markdown.

    python benchmarks/multi_turn_quality.py                 # 2 tasks x 3 seeds (~25 min)
    python benchmarks/multi_turn_quality.py --tasks guess --seeds 0 --steps 40

Runs are saved as they finish (`--output`); run the same command again to resume.
"""

import argparse
import json
import os
import tempfile
import time

import keras
import numpy as np

import tfpg
from tfpg.tasks import get_task
from tfpg.run.pretraining import pretrain

TASKS = ("calculator", "guess")
METRICS = {"calculator": ("accuracy", "tool_call_rate", "calls_per_episode"),
           "guess": ("success_rate", "mean_turns")}
MODEL = {"embedding_dim": 64, "hidden_dim": 128}
GRPO = {"group_size": 8, "kl_coef": 0.0, "prompts_per_step": 16, "learning_rate": 1e-3}


def pretrained(task, seed, cache_dir):
    """The pre-trained policy of (task, seed), cached in `cache_dir`; its seconds."""
    tokenizer = task.tokenizer()
    path = os.path.join(cache_dir, f"{task.name}-{seed}.weights.h5")
    started = time.perf_counter()
    keras.utils.set_random_seed(seed)
    policy = tfpg.PolicyNetwork(tokenizer.vocabulary_size, **MODEL)
    if os.path.exists(path + ".json"):
        policy.build()
        policy.load_weights(path)
        with open(path + ".json") as f:
            return policy, json.load(f)["pretrain_s"]
    pretrain(task.pretrain_texts, tokenizer, task.pretrain_epochs, policy=policy, seed=seed)
    seconds = time.perf_counter() - started
    os.makedirs(cache_dir, exist_ok=True)
    policy.save_weights(path)
    with open(path + ".json", "w") as f:
        json.dump({"pretrain_s": seconds}, f)
    return policy, seconds


def run(task_name, seed, steps, cache_dir, algorithm="grpo"):
    task = get_task(task_name, seed=seed)
    tokenizer = task.tokenizer()
    policy, pretrain_s = pretrained(task, seed, cache_dir)
    before, _ = task.run_episodes(policy, tokenizer, "heldout")

    options = dict(env=task.env(tokenizer), max_turns=task.max_turns,
                   max_new_tokens=task.max_new_tokens, kl_coef=GRPO["kl_coef"], seed=seed)
    prompts_per_step = GRPO["prompts_per_step"]
    if algorithm == "grpo":
        trainer = tfpg.algorithms.GRPO(policy, None, group_size=GRPO["group_size"],
                                       **options)
    else:   # PPO: as many episodes per step, one per prompt, GAE over policy tokens
        prompts_per_step *= GRPO["group_size"]
        trainer = tfpg.algorithms.PPO(
            policy, None, value_model=tfpg.ValueNetwork(tokenizer.vocabulary_size, **MODEL),
            num_epochs=2, **options)
    trainer.compile(optimizer=keras.optimizers.Adam(GRPO["learning_rate"]))
    dataset = task.prompt_dataset(tokenizer, "train", batch_size=prompts_per_step,
                                  shuffle=True, seed=seed, repeat=True)
    started = time.perf_counter()
    history = trainer.fit(dataset, steps_per_epoch=steps // 4, epochs=4, verbose=0)
    train_s = time.perf_counter() - started
    after, texts = task.run_episodes(policy, tokenizer, "heldout")
    return {"task": task_name, "seed": seed, "steps": steps, "algorithm": algorithm,
            "pretrain_s": pretrain_s,
            "train_s": train_s, "before": before, "after": after,
            "history": {k: [float(x) for x in v] for k, v in history.history.items()},
            "examples": texts[:3]}


ALGORITHMS = ("grpo", "ppo")


def _algorithm(run_):
    return run_.get("algorithm", "grpo")


def summarize(runs):
    """One row per (task, metric): mean and std over seeds before and after each
    algorithm ("before" is the pre-trained policy, shared by the algorithms)."""
    rows = []
    for task in TASKS:
        mine = [r for r in runs if r["task"] == task]
        if not mine:
            continue
        for metric in METRICS[task]:
            before = {r["seed"]: r["before"][metric] for r in mine}
            row = {"task": task, "metric": metric, "seeds": len(before),
                   "before": (float(np.mean(list(before.values()))),
                              float(np.std(list(before.values()))))}
            for algorithm in ALGORITHMS:
                values = [r["after"][metric] for r in mine if _algorithm(r) == algorithm]
                if values:
                    row[algorithm] = (float(np.mean(values)), float(np.std(values)),
                                      len(values))
            rows.append(row)
    return rows


def markdown(rows, runs):
    present = [a for a in ALGORITHMS if any(a in row for row in rows)]
    lines = ["| task | metric | maximum likelihood | "
             + " | ".join(f"{a.upper()} with env=" for a in present) + " |",
             "|---|---|---|" + "---|" * len(present)]
    for row in rows:
        cells = [f"{row['before'][0]:.3f} ± {row['before'][1]:.3f} ({row['seeds']})"]
        cells += [f"{row[a][0]:.3f} ± {row[a][1]:.3f} ({row[a][2]})" if a in row else "-"
                  for a in present]
        lines.append(f"| {row['task']} | {row['metric']} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("(seeds in brackets) Seconds per fine-tuning run (fit, tracing included): "
                 + ", ".join(f"{t} {a.upper()} {np.mean(s):.0f}" for (t, a), s in sorted(
                     _seconds(runs).items())))
    return "\n".join(lines)


def _seconds(runs):
    seconds = {}
    for r in runs:
        seconds.setdefault((r["task"], _algorithm(r)), []).append(r["train_s"])
    return seconds


def save(path, runs, steps):
    rows = summarize(runs)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"settings": {"model": MODEL, "grpo": GRPO, "steps": steps,
                                "ppo": "num_epochs 2, one episode per prompt, as many "
                                       "episodes per step as GRPO"},
                   "summary": rows, "runs": runs}, f, indent=2)
    with open(path.replace(".json", ".md"), "w") as f:
        f.write(markdown(rows, runs) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=160)
    parser.add_argument("--algorithms", nargs="+", default=["grpo"], choices=ALGORITHMS)
    here = os.path.dirname(os.path.abspath(__file__))
    parser.add_argument("--output", default=os.path.join(here, "results",
                                                         "multi_turn_quality.json"))
    # Pre-trained weights are cached (outside the repository) for reruns.
    parser.add_argument("--cache-dir", default=os.path.join(tempfile.gettempdir(),
                                                            "tfpg-multi-turn-quality"))
    parser.add_argument("--pretrain-only", action="store_true",
                        help="only fill the cache of pre-trained policies")
    args = parser.parse_args()
    if args.pretrain_only:
        for task in args.tasks:
            for seed in args.seeds:
                print(task, seed, pretrained(get_task(task, seed=seed), seed,
                                             args.cache_dir)[1], flush=True)
        return
    runs = []
    if os.path.exists(args.output):
        with open(args.output) as f:
            runs = json.load(f)["runs"]
    for task in args.tasks:
        for algorithm in args.algorithms:
            for seed in args.seeds:
                if any(r["task"] == task and r["seed"] == seed and r["steps"] == args.steps
                       and _algorithm(r) == algorithm for r in runs):
                    continue
                runs.append(run(task, seed, args.steps, args.cache_dir, algorithm))
                print(json.dumps({k: runs[-1][k] for k in (
                    "task", "algorithm", "seed", "before", "after", "train_s")}), flush=True)
                save(args.output, runs, args.steps)
    print(markdown(summarize(runs), runs))


if __name__ == "__main__":
    main()
