"""Quality: maximum likelihood vs policy-gradient fine-tuning, per task and algorithm.

For each task and seed the policy is pre-trained once with cross-entropy on the
task's (flawed) teaching data; then every algorithm fine-tunes a copy of it, and the
pre-trained policy itself keeps training with cross-entropy for the same wall-clock
time ("ML continued": what the fine-tuning compute buys without a reward). Every row
is scored on the held-out split:

* the task's metric on greedy completions (arithmetic exact match %, translate
  corpus BLEU, keywords satisfaction %); for `preference` the hidden gold reward of
  sampled completions (temperature 1, seed 0), with the learned reward model of
  `tfpg train-reward --task preference --seed SEED` as the training reward,
* the mean reward of those completions (preference: the learned proxy reward),
* KL(policy || pre-trained) per sequence, Monte-Carlo on sampled completions,
* seconds of training (pre-training for the ML row; `fit` wall-clock, tracing
  included, for the others).

Results are mean +- std over seeds; the JSON holds every run and every setting.

    python benchmarks/quality.py                          # 4 tasks x 3 seeds, all rows
    python benchmarks/quality.py --tasks arithmetic --seeds 0 --algorithms rloo ppo
    python benchmarks/quality.py --quick                  # a smoke run, minutes

Runs are saved as they finish (`--output`); run the same command again to resume.
"""

import argparse
import json
import os
import subprocess
import time

import keras
import numpy as np
import tensorflow as tf

import tfpg
from tfpg.algorithms import ALGORITHMS
from tfpg.run.reward_pipeline import load_reward_model, run_reward_training
from tfpg.tasks import get_task
from tfpg.run.jobs import Job
from tfpg.run.pretraining import copy_policy, pretrain
from tfpg.run.evaluation import evaluate_policy
from tfpg.run.checkpoints import variable_checkpoint

TASKS = ("arithmetic", "translate", "keywords", "preference")
ML, ML_CONTINUED = "maximum likelihood", "ML continued"

# Shared settings: the `tfpg train` defaults (LSTM 64/128, Adam 3e-3 for
# pre-training, 1e-3 for fine-tuning, batches of 64 samples).
MODEL = {"backbone": "lstm", "embedding_dim": 64, "hidden_dim": 128, "num_layers": 1}
PRETRAIN = {"learning_rate": 3e-3, "batch_size": 64}
FINETUNE = {"learning_rate": 1e-3, "samples_per_step": 64, "epochs": 4,
            "sampler": "sample", "temperature": 1.0, "max_grad_norm": 1.0}
# Per-algorithm options (beyond the shared ones). RLOO / GRPO sample group_size
# completions per prompt, so their batches hold samples_per_step / group_size prompts:
# every algorithm sees the same number of sampled completions per step.
ALGORITHM_OPTIONS = {
    "reinforce": {"baseline": "moving_average"},
    "scst": {},
    "rloo": {"group_size": 4},
    "grpo": {"group_size": 4, "num_epochs": 1},
    "a2c": {"gae_lambda": 0.95, "entropy_coef": 0.01},
    "ppo": {"num_epochs": 2, "num_minibatches": 1},
    # The GRPO family (TRL 1.16 options). Two epochs, as PPO: with one gradient step
    # per rollout every ratio is 1 and clip-higher / GSPO would change nothing.
    "dr_grpo": {"group_size": 4, "num_epochs": 1, "loss_type": "dr_grpo",
                "scale_rewards": "none"},
    "dapo": {"group_size": 4, "num_epochs": 2, "loss_type": "dapo",
             "clip_epsilon_high": 0.28, "kl_coef": 0.0},
    "gspo": {"group_size": 4, "num_epochs": 2, "importance_sampling_level": "sequence",
             "clip_epsilon": 3e-4, "clip_epsilon_high": 4e-4},
}
# The trainer of each row: the variants are GRPO with other options.
TRAINERS = {**{name: ALGORITHMS[name] for name in ALGORITHMS},
            "dr_grpo": ALGORITHMS["grpo"], "dapo": ALGORITHMS["grpo"],
            "gspo": ALGORITHMS["grpo"]}
# The KL coefficient per task (None: each algorithm's default, 0 for REINFORCE / SCST /
# RLOO / A2C, 0.04 for GRPO, 0.05 for PPO). The keywords reward alone is hackable
# ("was wonderful ." everywhere), so there every algorithm pays the same KL price.
TASK_KL_COEF = {"arithmetic": None, "translate": None, "keywords": 0.1, "preference": 0.1}
QUICK = {"task_options": {"arithmetic": dict(num_train=256, num_heldout=64, num_pretrain=1000),
                          "translate": dict(num_train=256, num_heldout=64, num_pretrain=800),
                          "keywords": dict(num_train=256, num_heldout=64, num_pretrain=600),
                          "preference": dict(num_train=256, num_heldout=64, num_pretrain=600,
                                             num_pairs=500, num_heldout_pairs=100)},
         "pretrain_epochs": 3, "epochs": 1}


def make_job(task_name, seed, quick, cache_dir):
    options = QUICK["task_options"][task_name] if quick else {}
    task = get_task(task_name, seed=seed, **options)
    tokenizer = task.tokenizer()
    job = Job(task_name, task.pretrain_texts, task.train, task.heldout, tokenizer,
              task.reward(tokenizer),
              lambda prompts, completions: task.evaluate(prompts, completions, "heldout"),
              task.primary_metric, task.max_new_tokens,
              QUICK["pretrain_epochs"] if quick else task.pretrain_epochs,
              QUICK["epochs"] if quick else FINETUNE["epochs"])
    job.sampled_metrics = bool(getattr(task, "sampled_metrics", False))
    if getattr(task, "needs_reward_model", False):
        job.reward_fn = learned_reward(task, tokenizer, seed, quick, cache_dir)
    return job


def learned_reward(task, tokenizer, seed, quick, cache_dir):
    """The reward model `tfpg train-reward --task preference --seed SEED` fits (its
    defaults), cached in `cache_dir`."""
    directory = os.path.join(cache_dir, f"{task.name}-{seed}{'-quick' if quick else ''}-rm")
    if not os.path.exists(directory):
        run_reward_training(directory, task=task.name, seed=seed)
    return load_reward_model(directory, tokenizer)


def new_policy(job):
    policy = tfpg.PolicyNetwork(job.tokenizer.vocabulary_size, MODEL["embedding_dim"],
                                MODEL["hidden_dim"], backbone=MODEL["backbone"],
                                num_layers=MODEL["num_layers"], max_length=256)
    policy.build()
    return policy


def pretrained_policy(job, seed, cache_dir):
    """The pre-trained policy, its optimizer (to continue with) and its seconds.

    Cached in `cache_dir` (weights + optimizer) so that a resumed benchmark does not
    pre-train again.
    """
    keras.utils.set_random_seed(seed)
    policy = new_policy(job)
    optimizer = keras.optimizers.Adam(PRETRAIN["learning_rate"])
    optimizer.build(policy.trainable_variables)
    checkpoint = variable_checkpoint(policy=policy.variables, optimizer=optimizer.variables)
    # "-lm": pre-trained by tfpg.run.pretraining.pretrain (earlier caches: Keras' own fit).
    prefix = os.path.join(cache_dir, f"{job.name}-{seed}-pretrained-lm")
    if os.path.exists(prefix + ".json"):
        checkpoint.read(prefix).assert_existing_objects_matched()
        with open(prefix + ".json") as f:
            return policy, optimizer, json.load(f)["seconds"]
    start = time.perf_counter()
    pretrain(job.pretrain_texts, job.tokenizer, job.pretrain_epochs, policy=policy,
             optimizer=optimizer, seed=seed, batch_size=PRETRAIN["batch_size"])
    seconds = time.perf_counter() - start
    os.makedirs(cache_dir, exist_ok=True)
    checkpoint.write(prefix)
    with open(prefix + ".json", "w") as f:
        json.dump({"seconds": seconds, "epochs": job.pretrain_epochs}, f)
    return policy, optimizer, seconds


def algorithm_options(name, job, seed):
    options = {"max_new_tokens": job.max_new_tokens, "eos_id": job.tokenizer.eos_id,
               "seed": seed, "sampler": FINETUNE["sampler"],
               "temperature": FINETUNE["temperature"],
               "max_grad_norm": FINETUNE["max_grad_norm"], **ALGORITHM_OPTIONS[name]}
    if TASK_KL_COEF[job.name] is not None:
        options["kl_coef"] = TASK_KL_COEF[job.name]
    return options


def fine_tune(name, pretrained, job, seed):
    """Fine-tunes a copy of `pretrained`; returns (policy, seconds, last logs)."""
    keras.utils.set_random_seed(seed)
    policy = copy_policy(pretrained)
    options = algorithm_options(name, job, seed)
    if TRAINERS[name].uses_value_model or options.get("baseline") == "value":
        options["value_model"] = tfpg.ValueNetwork(
            job.tokenizer.vocabulary_size, MODEL["embedding_dim"], MODEL["hidden_dim"],
            backbone=MODEL["backbone"], num_layers=MODEL["num_layers"])
    agent = TRAINERS[name](policy, job.reward_fn, **options)
    agent.compile(optimizer=keras.optimizers.Adam(FINETUNE["learning_rate"]))
    prompts_per_step = FINETUNE["samples_per_step"] // options.get("group_size", 1)
    train = job.train
    prompts = tfpg.data.prompt_dataset(train.prompts, job.tokenizer,
                                       references=train.references,
                                       extras=train.extras or None,
                                       batch_size=prompts_per_step, shuffle=True, seed=seed,
                                       drop_remainder=True)
    # The same number of steps (and of sampled completions) for every algorithm.
    steps = len(train) // FINETUNE["samples_per_step"]
    start = time.perf_counter()
    history = agent.fit(prompts.repeat().take(steps), epochs=job.finetune_epochs, verbose=0)
    seconds = time.perf_counter() - start
    logs = {key: float(values[-1]) for key, values in history.history.items()}
    return policy, seconds, logs, steps * job.finetune_epochs


class StopAfter(keras.callbacks.Callback):
    """Stops `fit` once `seconds` of wall-clock have passed (checked every batch)."""

    def __init__(self, seconds):
        super().__init__()
        self.seconds, self.steps = seconds, 0

    def on_train_begin(self, logs=None):
        self.start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        if time.perf_counter() - self.start >= self.seconds:
            self.model.stop_training = True


def continue_ml(pretrained, optimizer, job, seed, seconds):
    """Keeps training `pretrained` (in place, same optimizer) with cross-entropy."""
    stop = StopAfter(seconds)
    start = time.perf_counter()
    pretrain(job.pretrain_texts, job.tokenizer, 10_000, policy=pretrained,
             optimizer=optimizer, seed=seed + 1000, batch_size=PRETRAIN["batch_size"],
             callbacks=[stop])
    return time.perf_counter() - start, stop.steps


def evaluate(policy, job, reference):
    metrics, completions = evaluate_policy(policy, job, reference)
    metrics["samples"] = [{"prompt": p, "completion": c}
                          for p, c in zip(job.heldout.prompts[:3], completions[:3])]
    return metrics


# ------------------------------------------------------------------- tables

METRIC_SCALE = {"arithmetic": ("exact_match", "exact match % (greedy)", 100.0),
                "translate": ("bleu", "BLEU (greedy)", 1.0),
                "keywords": ("satisfaction", "satisfaction % (greedy)", 100.0),
                # RLHF's objective and Gao et al.'s measure: the gold reward of samples
                # (the greedy one, "gold_reward", is in the JSON).
                "preference": ("sampled_gold_reward", "gold reward (sampled)", 1.0)}


def summarize(runs, tasks, methods):
    """{task: {method: {column: (mean, std, n)}}} over seeds."""
    summary = {}
    for task in tasks:
        metric, _, scale = METRIC_SCALE[task]
        summary[task] = {}
        for method in methods:
            rows = [r for r in runs if r["task"] == task and r["method"] == method]
            if not rows:
                continue
            # Sampled metrics go with the reward of the same samples.
            reward = "sampled_reward" if metric.startswith("sampled_") else "reward"
            columns = {"metric": [scale * r["metrics"][metric] for r in rows],
                       "reward": [r["metrics"][reward] for r in rows],
                       "kl": [r["metrics"]["kl"] for r in rows],
                       "seconds": [r["seconds"] for r in rows]}
            summary[task][method] = {
                name: (float(np.mean(v)), float(np.std(v)), len(v))
                for name, v in columns.items()}
    return summary


def markdown(summary, caption):
    def cell(value, digits):
        mean, std, n = value
        return f"{mean:.{digits}f} ± {std:.{digits}f}" if n > 1 else f"{mean:.{digits}f}"

    lines = [caption, ""]
    for task, rows in summary.items():
        if not rows:
            continue
        _, label, _ = METRIC_SCALE[task]
        seeds = max(v["metric"][2] for v in rows.values())
        lines += [f"**{task}** ({seeds} seed{'s' if seeds > 1 else ''})", "",
                  f"| method | held-out {label} | reward | KL (nats/seq) | seconds |",
                  "|---|---:|---:|---:|---:|"]
        digits = 2 if task == "preference" else 1     # gold utility units, not %
        for method, v in rows.items():
            lines.append(f"| {method} | {cell(v['metric'], digits)} | {cell(v['reward'], 3)} | "
                         f"{cell(v['kl'], 2)} | {cell(v['seconds'], 0)} |")
        lines.append("")
    gaps = []
    for task, rows in summary.items():
        algorithms = {m: v for m, v in rows.items() if m not in (ML, ML_CONTINUED)}
        if not algorithms or ML_CONTINUED not in rows:
            continue
        best = max(algorithms, key=lambda m: algorithms[m]["metric"][0])
        gap = algorithms[best]["metric"][0] - rows[ML_CONTINUED]["metric"][0]
        unit = {"translate": "BLEU", "preference": "gold"}.get(task, "points")
        gaps.append(f"{task} {gap:+.1f} {unit} ({best}, KL {algorithms[best]['kl'][0]:.2f})")
    if gaps:
        lines += ["Best algorithm minus ML continued: " + "; ".join(gaps) + ".", ""]
    return "\n".join(lines)


def caption(quick):
    algos = "; ".join(f"{name}: {', '.join(f'{k}={v}' for k, v in opts.items()) or 'defaults'}"
                      for name, opts in ALGORITHM_OPTIONS.items())
    return (f"Held-out quality{' (QUICK smoke run, not meaningful)' if quick else ''}. "
            f"LSTM {MODEL['embedding_dim']}/{MODEL['hidden_dim']} pre-trained with "
            f"cross-entropy (Adam {PRETRAIN['learning_rate']}, the task's epochs); every "
            f"algorithm fine-tunes a copy for {FINETUNE['epochs']} epochs of "
            f"len(train)/{FINETUNE['samples_per_step']} steps of "
            f"{FINETUNE['samples_per_step']} sampled completions (Adam "
            f"{FINETUNE['learning_rate']}, clip {FINETUNE['max_grad_norm']}, temperature 1; "
            f"{algos}; value models the policy's size; KL coefficient: keywords "
            f"{TASK_KL_COEF['keywords']} and preference {TASK_KL_COEF['preference']} for "
            f"all algorithms (preference: against the learned reward model of `tfpg "
            f"train-reward --task preference --seed SEED`), elsewhere each algorithm's "
            f"default (0 except GRPO 0.04, PPO 0.05)). ML continued: the pre-trained policy "
            f"trained on with cross-entropy for the mean fine-tuning wall-clock. Metric and "
            f"reward on greedy completions (preference: gold and proxy reward on sampled "
            f"completions, temperature 1, seed 0); KL(policy || pre-trained) per sequence on "
            f"sampled completions; seconds: training wall-clock on 2 shared CPU cores "
            f"(pre-training for the ML row). Mean ± std over seeds.")


# --------------------------------------------------------------------- main


def load_runs(path, quick):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        saved = json.load(f)
    return [r for r in saved.get("runs", []) if r.get("quick", False) == quick]


def provenance():
    """Where the numbers come from: commit, uncommitted package changes, versions."""
    def git(*args):
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True,
                                  cwd=os.path.dirname(os.path.abspath(__file__)),
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    changed = git("status", "--porcelain", "--", "../tfpg")
    return {"commit": git("rev-parse", "--short", "HEAD"),
            "uncommitted_package_files": [line.strip() for line in changed.splitlines()],
            "tensorflow": tf.__version__, "keras": keras.__version__,
            "cpu_count": os.cpu_count()}


def save(path, markdown_path, runs, quick, origin):
    """Writes the JSON and the markdown of every saved run (all tasks and methods, not
    only this invocation's: a run of one task keeps the others' tables)."""
    tasks = [task for task in TASKS if any(r["task"] == task for r in runs)]
    methods = [ML, ML_CONTINUED] + list(ALGORITHM_OPTIONS)
    summary = summarize(runs, tasks, methods)
    result = {"caption": caption(quick), "quick": quick, "provenance": origin,
              "settings": {"model": MODEL, "pretrain": PRETRAIN, "finetune": FINETUNE,
                           "algorithms": ALGORITHM_OPTIONS, "kl_coef": TASK_KL_COEF,
                           "ml_continued": "same optimizer, wall-clock = mean fine-tuning "
                                           "seconds of the algorithms of that task and seed"},
              "summary": {task: {method: {k: {"mean": v[0], "std": v[1], "n": v[2]}
                                          for k, v in columns.items()}
                                 for method, columns in rows.items()}
                          for task, rows in summary.items()},
              "runs": runs}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1)
    os.replace(tmp, path)
    table = markdown(summary, caption(quick))
    with open(markdown_path, "w") as f:
        f.write(table + "\n")
    return table


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--algorithms", nargs="+", default=list(ALGORITHM_OPTIONS),
                        choices=list(ALGORITHM_OPTIONS))
    parser.add_argument("--quick", action="store_true",
                        help="tiny data, 3 pre-training epochs, 1 fine-tuning epoch, seed 0")
    parser.add_argument("--output", default="benchmarks/results/quality.json")
    parser.add_argument("--markdown", default=None,
                        help="markdown table path (default: --output with .md)")
    parser.add_argument("--cache", default=None,
                        help="pre-trained weights cache (default: beside --output)")
    parser.add_argument("--fresh", action="store_true", help="ignore saved runs")
    parser.add_argument("--table-only", action="store_true",
                        help="rewrite the summary and the markdown from the saved runs")
    args = parser.parse_args()
    if args.quick and args.seeds == [0, 1, 2]:
        args.seeds = [0]
    markdown_path = args.markdown or os.path.splitext(args.output)[0] + ".md"
    cache_dir = args.cache or os.path.join(
        os.path.dirname(os.path.abspath(args.output)),
        "quality-cache-quick" if args.quick else "quality-cache")
    methods = [ML, ML_CONTINUED] + args.algorithms
    runs = [] if args.fresh else load_runs(args.output, args.quick)
    origin = provenance()           # the code this process loaded
    if args.table_only:
        with open(args.output) as f:
            origin = json.load(f).get("provenance")
        print(save(args.output, markdown_path, runs, args.quick, origin))
        return

    def done(task, seed, method):
        return any(r["task"] == task and r["seed"] == seed and r["method"] == method
                   for r in runs)

    def record(task, seed, method, seconds, metrics, **extra):
        runs.append({"task": task, "seed": seed, "method": method, "quick": args.quick,
                     "commit": origin["commit"], "seconds": round(seconds, 1),
                     "metrics": metrics, **extra})
        save(args.output, markdown_path, runs, args.quick, origin)
        metric = METRIC_SCALE[task][0]
        print(f"[{time.strftime('%H:%M:%S')}] {task} seed {seed} {method:<20} "
              f"{metric} {metrics[metric]:.3f}  reward {metrics['reward']:.3f}  "
              f"kl {metrics['kl']:.2f}  {seconds:.0f}s", flush=True)

    for task in args.tasks:
        for seed in args.seeds:
            if all(done(task, seed, m) for m in methods):
                continue
            job = make_job(task, seed, args.quick, cache_dir)
            pretrained, optimizer, pretrain_seconds = pretrained_policy(job, seed, cache_dir)
            reference = copy_policy(pretrained, trainable=False)
            if not done(task, seed, ML):
                record(task, seed, ML, pretrain_seconds, evaluate(pretrained, job, None),
                       epochs=job.pretrain_epochs)
            for name in args.algorithms:
                if done(task, seed, name):
                    continue
                policy, seconds, logs, steps = fine_tune(name, pretrained, job, seed)
                record(task, seed, name, seconds, evaluate(policy, job, reference),
                       steps=steps, options={k: v for k, v in
                                             algorithm_options(name, job, seed).items()
                                             if k != "value_model"},
                       train_logs=logs)
            if not done(task, seed, ML_CONTINUED):
                spent = [r["seconds"] for r in runs if r["task"] == task
                         and r["seed"] == seed and r["method"] in args.algorithms]
                budget = float(np.mean(spent)) if spent else 0.0
                seconds, steps = continue_ml(pretrained, optimizer, job, seed, budget)
                record(task, seed, ML_CONTINUED, seconds,
                       evaluate(pretrained, job, reference), steps=steps,
                       budget_seconds=round(budget, 1))
    print()
    print(save(args.output, markdown_path, runs, args.quick, origin))


if __name__ == "__main__":
    main()
