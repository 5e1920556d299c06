"""Reward vs KL: steering a language model to use a positive word, at several KL prices.

The `keywords` task rewards a completion that contains "wonderful", "lovely", "great"
or "perfect"; the teaching corpus uses one in 15% of its sentences. The reward alone
is hackable (say "was wonderful ." to everything), so it is paired with a KL penalty
to the pre-trained model. This script fine-tunes a copy of the same pre-trained
policy with RLOO at several KL coefficients and prints, for each, keyword
satisfaction (greedy and sampled), diversity (distinct bigrams of sampled
completions) and KL(policy || pre-trained) per sequence: the trade-off curve.

    python examples/keyword_control.py [--kl-coefs 0 0.05 0.2 1.0] [--epochs 2]
"""

import argparse
import time

import keras
import tensorflow as tf

import tfpg
from tfpg import TrainConfig, copy_policy, evaluate_policy, make_job, pretrain
from tfpg.tasks.keywords import distinct_n


def sampled_stats(policy, job, samples=4):
    """Satisfaction and distinct-2 of sampled completions of the held-out prompts."""
    prompts = tfpg.data.prompt_dataset(job.heldout.prompts, job.tokenizer,
                                       batch_size=len(job.heldout))
    batch = next(iter(prompts))
    completions, hits = [], 0.0
    for seed in range(samples):
        out = tfpg.generate(policy, batch["prompt"], job.max_new_tokens,
                            eos_id=job.tokenizer.eos_id, seed=seed)
        hits += float(tf.reduce_sum(job.reward_fn(batch["prompt"], out.token_ids, out.mask,
                                                  batch)))
        completions += job.tokenizer.decode(out.token_ids)
    return hits / len(completions), distinct_n(completions, 2), completions


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kl-coefs", nargs="+", type=float, default=[0.0, 0.05, 0.2, 1.0])
    parser.add_argument("--epochs", type=int, default=2,
                        help="fine-tuning epochs of 15 steps x 64 samples")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.perf_counter()

    job = make_job(TrainConfig(task="keywords", seed=args.seed))
    tok = job.tokenizer
    print(f"pre-training on {len(job.pretrain_texts)} topic sentences "
          f"({job.pretrain_epochs} epochs) ...", flush=True)
    pretrained = pretrain(job.pretrain_texts, tok, job.pretrain_epochs, seed=args.seed)
    reference = copy_policy(pretrained, trainable=False)

    metrics, _ = evaluate_policy(pretrained, job)
    sampled, distinct, completions = sampled_stats(pretrained, job)
    rows = [("pre-trained", metrics["satisfaction"], sampled, distinct, 0.0, 0.0,
             completions[0])]
    steps = len(job.train) // 64
    for kl_coef in args.kl_coefs:
        keras.utils.set_random_seed(args.seed)
        policy = copy_policy(pretrained)
        agent = tfpg.algorithms.RLOO(policy, reward_fn=job.reward_fn, group_size=4,
                                     kl_coef=kl_coef, reference_model=reference,
                                     max_new_tokens=job.max_new_tokens, eos_id=tok.eos_id,
                                     seed=args.seed)
        agent.compile(optimizer=keras.optimizers.Adam(1e-3))
        prompts = tfpg.data.prompt_dataset(job.train.prompts, tok, batch_size=16,
                                           shuffle=True, seed=args.seed, drop_remainder=True)
        start = time.perf_counter()
        agent.fit(prompts.repeat().take(steps), epochs=args.epochs, verbose=0)
        seconds = time.perf_counter() - start
        metrics, _ = evaluate_policy(policy, job, reference)
        sampled, distinct, completions = sampled_stats(policy, job)
        rows.append((f"RLOO kl_coef={kl_coef:g}", metrics["satisfaction"], sampled, distinct,
                     metrics["kl"], seconds, completions[0]))
        print(f"kl_coef={kl_coef:g}: satisfaction {metrics['satisfaction']:.2f}, "
              f"KL {metrics['kl']:.2f} nats ({seconds:.0f} s)", flush=True)

    print()
    print(f"held-out keyword control ({len(job.heldout)} prompts of unseen sentence starts; "
          f"RLOO, group 4, {args.epochs} x {steps} steps of 64 samples)")
    print(f"{'':<22}{'satisfied':>10}{'satisfied':>10}{'distinct-2':>11}{'KL':>7}"
          f"{'seconds':>9}  sample")
    print(f"{'':<22}{'(greedy)':>10}{'(sampled)':>10}{'(sampled)':>11}{'(nats)':>7}")
    for name, greedy, sampled, distinct, kl, seconds, sample in rows:
        print(f"{name:<22}{greedy:>10.2f}{sampled:>10.2f}{distinct:>11.3f}{kl:>7.2f}"
              f"{seconds:>9.0f}  {sample}")
    print(f"KL is KL(policy || pre-trained) per sequence on sampled completions; "
          f"whole script {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
