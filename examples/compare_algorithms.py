"""All six algorithms on one task, from the same pre-trained policy.

Pre-trains a policy once with cross-entropy, then fine-tunes a copy with each of
REINFORCE, SCST, RLOO, GRPO, A2C and PPO on the task's reward, with the same number
of sampled completions per step and the same number of steps, and prints held-out
metric and reward (greedy decoding) before / after, KL to the pre-trained policy and
the seconds each took.

    python examples/compare_algorithms.py [--task arithmetic] [--epochs 2]
        [--algorithms reinforce scst rloo grpo a2c ppo]
"""

import argparse
import time

import keras

import tfpg
from tfpg import TrainConfig, copy_policy, evaluate_policy, make_job, pretrain
from tfpg.algorithms import ALGORITHMS

# Settings per algorithm; every one samples 64 completions per step (RLOO / GRPO as
# 16 prompts x a group of 4).
OPTIONS = {
    "reinforce": {"baseline": "moving_average"},
    "scst": {},
    "rloo": {"group_size": 4},
    "grpo": {"group_size": 4},
    "a2c": {"gae_lambda": 0.95},            # TD(0) with a fresh critic is unstable here
    "ppo": {"num_epochs": 2},
}
SAMPLES_PER_STEP = 64


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="arithmetic",
                        choices=["arithmetic", "translate", "keywords"])
    parser.add_argument("--algorithms", nargs="+", default=list(OPTIONS), choices=list(OPTIONS))
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--kl-coef", type=float, default=None,
                        help="KL coefficient for every algorithm (default: each one's own; "
                             "0.1 on keywords)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.kl_coef is None and args.task == "keywords":
        args.kl_coef = 0.1          # the keyword reward alone is hackable
    started = time.perf_counter()

    job = make_job(TrainConfig(task=args.task, seed=args.seed))
    tok = job.tokenizer
    print(f"pre-training on {len(job.pretrain_texts)} {args.task} texts "
          f"({job.pretrain_epochs} epochs) ...", flush=True)
    start = time.perf_counter()
    pretrained = pretrain(job.pretrain_texts, tok, job.pretrain_epochs, seed=args.seed)
    pretrain_seconds = time.perf_counter() - start
    reference = copy_policy(pretrained, trainable=False)
    before, _ = evaluate_policy(pretrained, job)

    steps = len(job.train) // SAMPLES_PER_STEP
    results = []
    for name in args.algorithms:
        keras.utils.set_random_seed(args.seed)
        policy = copy_policy(pretrained)
        options = dict(OPTIONS[name])
        if args.kl_coef is not None:
            options["kl_coef"] = args.kl_coef
        if ALGORITHMS[name].uses_value_model:
            options["value_model"] = tfpg.ValueNetwork(tok.vocabulary_size, 64, 128)
        agent = ALGORITHMS[name](policy, reward_fn=job.reward_fn,
                                 max_new_tokens=job.max_new_tokens, eos_id=tok.eos_id,
                                 seed=args.seed, **options)
        agent.compile(optimizer=keras.optimizers.Adam(1e-3))
        group_size = options.get("group_size", 1)
        prompts = tfpg.data.prompt_dataset(job.train.prompts, tok,
                                           references=job.train.references,
                                           extras=job.train.extras or None,
                                           batch_size=SAMPLES_PER_STEP // group_size,
                                           shuffle=True, seed=args.seed, drop_remainder=True)
        start = time.perf_counter()
        agent.fit(prompts.repeat().take(steps), epochs=args.epochs, verbose=0)
        seconds = time.perf_counter() - start
        after, _ = evaluate_policy(policy, job, reference)
        results.append((name, after, seconds))
        print(f"{name}: {job.primary_metric} {before[job.primary_metric]:.3f} -> "
              f"{after[job.primary_metric]:.3f} ({seconds:.0f} s)", flush=True)

    metric = job.primary_metric
    print()
    print(f"{args.task}: {len(job.heldout)} held-out prompts, greedy decoding; each algorithm "
          f"{args.epochs} x {steps} steps of {SAMPLES_PER_STEP} samples, Adam 1e-3")
    print(f"{'algorithm':<12}{metric + ' before':>20}{metric + ' after':>20}"
          f"{'reward before':>15}{'reward after':>14}{'KL':>7}{'seconds':>9}")
    print(f"{'(pre-train)':<12}{before[metric]:>20.3f}{'':>20}{before['reward']:>15.3f}"
          f"{'':>14}{'':>7}{pretrain_seconds:>9.0f}")
    for name, after, seconds in results:
        print(f"{name:<12}{before[metric]:>20.3f}{after[metric]:>20.3f}"
              f"{before['reward']:>15.3f}{after['reward']:>14.3f}{after['kl']:>7.2f}"
              f"{seconds:>9.0f}")
    print(f"KL: KL(policy || pre-trained) per sequence on sampled completions; "
          f"whole script {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
