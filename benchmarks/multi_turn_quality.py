"""Quality of the multi-turn tasks: maximum likelihood vs GRPO over whole episodes.

For each task (`calculator`, `guess`) and seed: pre-train the `tfpg train` default
policy (LSTM 64/128, Adam 3e-3, the task's `pretrain_epochs`) on the teacher's
episodes, evaluate it on the held-out split (greedy episodes against the task's
env), fine-tune it with GRPO (`env=`, groups of 8 episodes per prompt, 16 prompts
per step, Adam 1e-3, no KL) and evaluate again. Reports each task's metrics
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
from tfpg.pretraining import pretrain

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


def run(task_name, seed, steps, cache_dir):
    task = get_task(task_name, seed=seed)
    tokenizer = task.tokenizer()
    policy, pretrain_s = pretrained(task, seed, cache_dir)
    before, _ = task.run_episodes(policy, tokenizer, "heldout")

    trainer = tfpg.algorithms.GRPO(
        policy, None, env=task.env(tokenizer), max_turns=task.max_turns,
        max_new_tokens=task.max_new_tokens, group_size=GRPO["group_size"],
        kl_coef=GRPO["kl_coef"], seed=seed)
    trainer.compile(optimizer=keras.optimizers.Adam(GRPO["learning_rate"]))
    dataset = task.prompt_dataset(tokenizer, "train", batch_size=GRPO["prompts_per_step"],
                                  shuffle=True, seed=seed, repeat=True)
    started = time.perf_counter()
    history = trainer.fit(dataset, steps_per_epoch=steps // 4, epochs=4, verbose=0)
    train_s = time.perf_counter() - started
    after, texts = task.run_episodes(policy, tokenizer, "heldout")
    return {"task": task_name, "seed": seed, "steps": steps, "pretrain_s": pretrain_s,
            "train_s": train_s, "before": before, "after": after,
            "history": {k: [float(x) for x in v] for k, v in history.history.items()},
            "examples": texts[:3]}


def summarize(runs):
    rows = []
    for task in TASKS:
        mine = [r for r in runs if r["task"] == task]
        if not mine:
            continue
        for metric in METRICS[task]:
            row = {"task": task, "metric": metric, "seeds": len(mine)}
            for when in ("before", "after"):
                values = [r[when][metric] for r in mine]
                row[when] = (float(np.mean(values)), float(np.std(values)))
            rows.append(row)
    return rows


def markdown(rows, runs):
    lines = ["| task | metric | maximum likelihood | GRPO with env= | seeds |",
             "|---|---|---|---|---|"]
    for row in rows:
        cells = [f"{row[w][0]:.3f} ± {row[w][1]:.3f}" for w in ("before", "after")]
        lines.append(f"| {row['task']} | {row['metric']} | {cells[0]} | {cells[1]} | "
                     f"{row['seeds']} |")
    seconds = {t: np.mean([r["train_s"] for r in runs if r["task"] == t]) for t in TASKS
               if any(r["task"] == t for r in runs)}
    lines.append("")
    lines.append("GRPO seconds per run (fit, tracing included): " + ", ".join(
        f"{t} {s:.0f}" for t, s in seconds.items()))
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=160)
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
        for seed in args.seeds:
            if any(r["task"] == task and r["seed"] == seed and r["steps"] == args.steps
                   for r in runs):
                continue
            runs.append(run(task, seed, args.steps, args.cache_dir))
            print(json.dumps({k: runs[-1][k] for k in ("task", "seed", "before", "after",
                                                       "train_s")}), flush=True)
            rows = summarize(runs)
            os.makedirs(os.path.dirname(args.output), exist_ok=True)
            with open(args.output, "w") as f:
                json.dump({"settings": {"model": MODEL, "grpo": GRPO, "steps": args.steps},
                           "summary": rows, "runs": runs}, f, indent=2)
            with open(args.output.replace(".json", ".md"), "w") as f:
                f.write(markdown(rows, runs) + "\n")
    print(markdown(summarize(runs), runs))


if __name__ == "__main__":
    main()
