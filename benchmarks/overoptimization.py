"""Reward over-optimisation on the `preference` task: proxy vs gold reward against KL.

For each seed: pre-train a policy on the task's teaching data (maximum likelihood),
fit a Bradley-Terry reward model on the task's preference pairs (held-out pairwise
accuracy beside the annotator's ceiling), then fine-tune a copy of the policy
against that learned reward with each algorithm and `kl_coef`. Every
`--eval-every` steps, on held-out prompts, completions are sampled (temperature 1,
fixed seed) and three numbers recorded:

* proxy reward: the learned reward model's mean score (normalised units: std 1
  over the training completions);
* gold reward: the task's hidden gold utility (what the annotator judged by);
* KL(pi || pi_ref) per sequence, Monte-Carlo over those samples, to the
  pre-trained policy.

Gao et al. (2022) plot both rewards against sqrt(KL); the proxy keeps rising while
the gold reward peaks and falls. The summary reports, per run, where the gold
reward peaked, at what KL, and how far the proxy had run ahead by the end.

    python benchmarks/overoptimization.py                 # full: 3 seeds x 2 x 4, ~1-2 h
    python benchmarks/overoptimization.py --short         # a few minutes on 2 cores
    python benchmarks/overoptimization.py --algorithms rloo --kl-coefs 0 0.05 --steps 200

Writes `benchmarks/results/overoptimization[-short].json` and a PNG beside it.
"""

import argparse
import json
import os
import time

import keras
import numpy as np
import tensorflow as tf

import tfpg
from tfpg.losses import token_log_probs
from tfpg.rewards import train_preference_model
from tfpg.tasks import get_task
from tfpg.run.pretraining import copy_policy, pretrain

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
MODEL = {"backbone": "lstm", "embedding_dim": 64, "hidden_dim": 128}
ALGORITHM_OPTIONS = {"ppo": {"num_epochs": 2, "num_minibatches": 1},
                     "rloo": {"group_size": 4}}
FULL = {"seeds": [0, 1, 2], "algorithms": ["ppo", "rloo"], "kl_coefs": [0.0, 0.02, 0.1, 0.5],
        "steps": 300, "eval_every": 20, "samples_per_step": 64, "pretrain_epochs": 6,
        "reward_epochs": 4, "eval_prompts": 192, "task": {}}
SHORT = {"seeds": [0], "algorithms": ["ppo", "rloo"], "kl_coefs": [0.0, 0.1],
         "steps": 40, "eval_every": 10, "samples_per_step": 32, "pretrain_epochs": 3,
         "reward_epochs": 3, "eval_prompts": 64,
         "task": {"num_pairs": 1000, "num_heldout_pairs": 300, "num_pretrain": 1500,
                  "num_train": 400, "num_heldout": 64}}


def measure(policy, reference, proxy, gold, prompts, tokenizer, max_new_tokens, seed=0):
    """Mean proxy and gold reward and KL per sequence on sampled completions."""
    data = tfpg.data.prompt_dataset(prompts, tokenizer, batch_size=len(prompts))
    batch = next(iter(data))
    prompt_ids, prompt_mask = batch["prompt"], batch["prompt_mask"]
    out = tfpg.generate(policy, prompt_ids, max_new_tokens, seed=seed,
                        eos_id=tokenizer.eos_id, prompt_mask=prompt_mask)
    sequence = tf.concat([prompt_ids, out.token_ids], axis=1)
    padding = tf.concat([tf.cast(prompt_mask, tf.bool), out.mask > 0], axis=1)
    start = prompt_ids.shape[1] - 1
    log_probs = [token_log_probs(model(sequence, padding_mask=padding)[:, start:-1],
                                 out.token_ids, mask=out.mask) for model in (policy, reference)]
    kl = tf.reduce_sum((log_probs[0] - log_probs[1]) * out.mask, axis=1)
    lengths = tf.reduce_sum(out.mask, axis=1)
    return {"proxy": float(tf.reduce_mean(proxy(prompt_ids, out.token_ids, out.mask, batch))),
            "gold": float(tf.reduce_mean(gold(prompt_ids, out.token_ids, out.mask, batch))),
            "kl": float(tf.reduce_mean(kl)), "length": float(tf.reduce_mean(lengths)),
            "sample": tokenizer.decode(out.token_ids[:1])[0]}


class Curve(keras.callbacks.Callback):
    """Measures every `every` steps (and at step 0)."""

    def __init__(self, every, measure_fn):
        super().__init__()
        self.every, self.measure_fn, self.points, self.step = every, measure_fn, [], 0

    def on_train_begin(self, logs=None):
        self.points.append({"step": 0, **self.measure_fn()})

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self.step % self.every == 0:
            self.points.append({"step": self.step, **self.measure_fn()})


def fine_tune(name, kl_coef, pretrained, reward_model, gold, task, tokenizer, seed, settings):
    keras.utils.set_random_seed(seed)
    policy = copy_policy(pretrained)
    reference = copy_policy(pretrained, trainable=False)
    options = {"max_new_tokens": task.max_new_tokens, "eos_id": tokenizer.eos_id,
               "seed": seed, "kl_coef": kl_coef, "max_grad_norm": 1.0,
               **ALGORITHM_OPTIONS[name]}
    if tfpg.algorithms.ALGORITHMS[name].uses_value_model:
        options["value_model"] = tfpg.ValueNetwork(tokenizer.vocabulary_size, **MODEL)
    agent = tfpg.algorithms.ALGORITHMS[name](policy, reward_model, **options)
    agent.compile(optimizer=keras.optimizers.Adam(1e-3))
    group = options.get("group_size", 1)
    prompts = tfpg.data.prompt_dataset(task.train.prompts, tokenizer,
                                       batch_size=settings["samples_per_step"] // group,
                                       shuffle=True, seed=seed, drop_remainder=True)
    heldout = task.heldout.prompts[:settings["eval_prompts"]]
    curve = Curve(settings["eval_every"], lambda: measure(
        policy, reference, reward_model, gold, heldout, tokenizer, task.max_new_tokens))
    start = time.perf_counter()
    agent.fit(prompts.repeat().take(settings["steps"]), epochs=1, verbose=0, callbacks=[curve])
    return {"algorithm": name, "kl_coef": kl_coef, "seed": seed, "curve": curve.points,
            "seconds": time.perf_counter() - start, **summarize_curve(curve.points)}


def summarize_curve(points):
    """Where the gold reward peaked, its KL, and the proxy's lead by then and at the end."""
    first = points[0]
    peak = max(points, key=lambda p: p["gold"])
    last = points[-1]
    return {"gold_start": first["gold"], "gold_peak": peak["gold"], "peak_step": peak["step"],
            "kl_at_gold_peak": peak["kl"],
            "proxy_gain_at_gold_peak": peak["proxy"] - first["proxy"],
            "gold_gain_at_peak": peak["gold"] - first["gold"],
            "gold_end": last["gold"], "proxy_gain_end": last["proxy"] - first["proxy"],
            "gold_gain_end": last["gold"] - first["gold"], "kl_end": last["kl"]}


def plot(runs, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    algorithms = sorted({r["algorithm"] for r in runs})
    coefs = sorted({r["kl_coef"] for r in runs})
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(coefs)))
    figure, axes = plt.subplots(1, len(algorithms), figsize=(6 * len(algorithms), 4.5),
                                squeeze=False)
    for ax, name in zip(axes[0], algorithms):
        for color, coef in zip(colors, coefs):
            chosen = [r for r in runs if r["algorithm"] == name and r["kl_coef"] == coef]
            if not chosen:
                continue
            steps = len(min((r["curve"] for r in chosen), key=len))
            mean = lambda key: np.mean([[p[key] for p in r["curve"][:steps]]  # noqa: E731
                                        for r in chosen], axis=0)
            x = np.sqrt(np.maximum(mean("kl"), 0.0))
            ax.plot(x, mean("proxy") - mean("proxy")[0], "-o", ms=3, color=color,
                    label=f"proxy, kl_coef={coef:g}")
            ax.plot(x, mean("gold") - mean("gold")[0], "--s", ms=3, color=color,
                    label=f"gold, kl_coef={coef:g}")
        ax.axhline(0.0, color="grey", lw=0.5)
        ax.set_title(f"{name.upper()} against the learned reward")
        ax.set_xlabel("sqrt(KL(pi || pi_ref)) per sequence, nats^0.5")
        ax.set_ylabel("reward gain over the pre-trained policy")
        ax.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="a few minutes on 2 cores")
    parser.add_argument("--seeds", type=int, nargs="+")
    parser.add_argument("--algorithms", nargs="+", choices=sorted(ALGORITHM_OPTIONS))
    parser.add_argument("--kl-coefs", type=float, nargs="+")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--eval-every", type=int)
    parser.add_argument("--output", help="JSON path (default benchmarks/results/"
                                         "overoptimization[-short].json)")
    args = parser.parse_args(argv)
    settings = dict(SHORT if args.short else FULL)
    for key in ("seeds", "algorithms", "kl_coefs", "steps", "eval_every"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    output = args.output or os.path.join(
        RESULTS, "overoptimization-short.json" if args.short else "overoptimization.json")
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)

    runs, reward_models = [], []
    for seed in settings["seeds"]:
        task = get_task("preference", seed=seed, **settings["task"])
        tokenizer = task.tokenizer()
        start = time.perf_counter()
        pretrained = pretrain(task.pretrain_texts, tokenizer, settings["pretrain_epochs"],
                              seed=seed, **MODEL)
        pretrain_seconds = time.perf_counter() - start
        pairs = task.preference_pairs("train")
        start = time.perf_counter()
        reward_model = train_preference_model(
            pairs["prompts"], pairs["chosen"], pairs["rejected"], tokenizer,
            heldout=task.preference_pairs("heldout"), epochs=settings["reward_epochs"],
            seed=seed)
        reward_models.append({"seed": seed,
                              "heldout_accuracy": reward_model.metadata["heldout_accuracy"],
                              "ceiling": task.pairwise_ceiling("heldout"),
                              "gold_accuracy": task.gold_accuracy("heldout"),
                              "seconds": time.perf_counter() - start,
                              "pretrain_seconds": pretrain_seconds})
        print(f"seed {seed}: reward model held-out accuracy "
              f"{reward_models[-1]['heldout_accuracy']:.3f} (ceiling "
              f"{reward_models[-1]['ceiling']:.3f})", flush=True)
        gold = task.gold_reward(tokenizer)
        for name in settings["algorithms"]:
            for kl_coef in settings["kl_coefs"]:
                run = fine_tune(name, kl_coef, pretrained, reward_model, gold, task,
                                tokenizer, seed, settings)
                runs.append(run)
                print(f"  {name} kl_coef={kl_coef:g}: gold {run['gold_start']:+.2f} -> peak "
                      f"{run['gold_peak']:+.2f} at step {run['peak_step']} (KL "
                      f"{run['kl_at_gold_peak']:.2f}) -> end {run['gold_end']:+.2f}; proxy "
                      f"gain at peak {run['proxy_gain_at_gold_peak']:+.2f}, at end "
                      f"{run['proxy_gain_end']:+.2f} (KL {run['kl_end']:.2f}) "
                      f"[{run['seconds']:.0f} s]", flush=True)
                with open(output, "w") as f:
                    json.dump({"settings": settings, "reward_models": reward_models,
                               "runs": runs}, f, indent=1)
    png = os.path.splitext(output)[0] + ".png"
    plot(runs, png)
    print(f"wrote {output} and {png}")


if __name__ == "__main__":
    main()
