"""Policy gradient from logged feedback with plain Keras `fit` and `sample_weight`.

No trainer, no rollout inside `train_step`: completions are generated and scored
first, stored as a log of (prompt, completion, reward), and the policy is then
trained the way the source documents do it, with an advantage-weighted
cross-entropy and the advantages passed as `sample_weight`:

    policy.compile(optimizer="adam", loss=tfpg.losses.AdvantageWeightedCrossentropy())
    policy.fit(x, y, sample_weight=advantages)

Task: `arithmetic` (the teacher drops carries; the reward is an exact-match
verifier). Each round logs 4 sampled completions per training prompt from the current
policy, turns rewards into advantages (reward minus the mean reward of the same
prompt's logged completions), keeps their positive part as `sample_weight` and fits
one epoch on the log. The table shows held-out exact match (greedy) and the mean
logged reward round by round, and what one round with the signed advantages does
(off-policy, it collapses: keep weights non-negative on logged data).

    python examples/logged_feedback.py [--rounds 3] [--samples 4] [--log-dir DIR]
"""

import argparse
import collections
import json
import os
import tempfile
import time

import keras
import numpy as np

import tfpg
from tfpg import TrainConfig, copy_policy, evaluate_policy, make_job, pretrain


def write_log(policy, job, path, samples, seed):
    """Samples `samples` completions per training prompt, scores them, appends JSON lines."""
    tok = job.tokenizer
    prompts = tfpg.data.prompt_dataset(job.train.prompts, tok,
                                       references=job.train.references, batch_size=500)
    offset, rewards = 0, []
    with open(path, "w") as f:
        for batch in prompts:
            texts = job.train.prompts[offset:offset + len(batch["prompt"])]
            offset += len(texts)
            for k in range(samples):
                out = tfpg.generate(policy, batch["prompt"], job.max_new_tokens,
                                    eos_id=tok.eos_id, seed=[seed, k])
                scores = job.reward_fn(batch["prompt"], out.token_ids, out.mask, batch)
                ids, lengths = out.token_ids.numpy(), out.mask.numpy().sum(axis=1)
                for prompt, row, length, score in zip(texts, ids, lengths, scores.numpy()):
                    f.write(json.dumps({"prompt": prompt,
                                        "completion": tok.decode(row),
                                        "eos": bool(row[int(length) - 1] == tok.eos_id),
                                        "reward": float(score)}) + "\n")
                    rewards.append(float(score))
    return float(np.mean(rewards))


def read_log(path, tokenizer):
    """The log -> (x, y, advantages) for an advantage-weighted `fit`.

    x: int32 [M, T] prompt + completion ids (right-padded with 0), the model input;
    y: int32 [M, T] the next token at every position, 0 (ignored) wherever the
       next token belongs to the prompt, so only the logged completion is weighted;
    advantages: float32 [M], the reward minus the mean reward of its prompt's entries.
    """
    with open(path) as f:
        entries = [json.loads(line) for line in f]
    by_prompt = collections.defaultdict(list)
    for entry in entries:
        by_prompt[entry["prompt"]].append(entry["reward"])
    sequences, starts = [], []
    for entry in entries:
        prompt = tokenizer.encode(entry["prompt"])                    # BOS + prompt
        completion = tokenizer.encode(entry["completion"], add_bos=False)
        completion += [tokenizer.eos_id] if entry["eos"] else []
        sequences.append(prompt + completion)
        starts.append(len(prompt))
    width = max(len(s) for s in sequences) - 1
    x = np.zeros([len(entries), width], np.int32)
    y = np.zeros([len(entries), width], np.int32)
    for i, (sequence, start) in enumerate(zip(sequences, starts)):
        x[i, :len(sequence) - 1] = sequence[:-1]
        y[i, start - 1:len(sequence) - 1] = sequence[start:]   # completion targets only
    advantages = np.array([e["reward"] - np.mean(by_prompt[e["prompt"]]) for e in entries],
                          np.float32)
    return x, y, advantages


def fit_on_log(policy, path, tokenizer, signed=False):
    """One epoch of advantage-weighted cross-entropy on a log, plain Keras `fit`."""
    x, y, advantages = read_log(path, tokenizer)
    if not signed:
        # Keep the positive part: learn from the completions that beat their prompt's
        # average. Negative weights on logged data keep pushing down completions the
        # policy no longer writes (and the EOS and digits they share with correct
        # answers) on every step, with no fresh samples to correct it; see the last
        # row of the table.
        advantages = np.maximum(advantages, 0.0)
    policy.fit(x, y, sample_weight=advantages, batch_size=64, epochs=1, shuffle=True,
               verbose=0)
    return len(x), float(np.mean(advantages != 0))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=4, help="logged completions per prompt")
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--log-dir", default=None,
                        help="where to write the logs (default: a temporary directory)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.perf_counter()

    job = make_job(TrainConfig(task="arithmetic", seed=args.seed))
    tok = job.tokenizer
    print(f"pre-training on {len(job.pretrain_texts)} sums from a carry-dropping teacher "
          f"({job.pretrain_epochs} epochs) ...", flush=True)
    policy = pretrain(job.pretrain_texts, tok, job.pretrain_epochs, seed=args.seed)
    reference = copy_policy(policy, trainable=False)
    directory = args.log_dir or tempfile.mkdtemp(prefix="tfpg-logs-")
    os.makedirs(directory, exist_ok=True)

    def compile_for_logs(model):
        # From here on the policy is trained like any Keras model on logged data.
        model.compile(optimizer=keras.optimizers.Adam(args.learning_rate),
                      loss=tfpg.losses.AdvantageWeightedCrossentropy())

    compile_for_logs(policy)
    rows = []
    for round_ in range(args.rounds + 1):
        metrics, _ = evaluate_policy(policy, job, reference if round_ else None)
        path = os.path.join(directory, f"feedback-{round_}.jsonl")
        logged_reward = write_log(policy, job, path, args.samples, seed=args.seed + round_)
        rows.append(("pre-trained" if round_ == 0 else f"after round {round_}", metrics,
                     logged_reward))
        if round_ < args.rounds:
            count, weighted = fit_on_log(policy, path, tok)
            print(f"round {round_ + 1}: fit on {count} logged completions (mean reward "
                  f"{logged_reward:.3f}, {weighted:.0%} with a positive advantage) from "
                  f"{path}", flush=True)

    # For comparison: round 1 again, with the signed advantages.
    signed = copy_policy(reference)
    compile_for_logs(signed)
    fit_on_log(signed, os.path.join(directory, "feedback-0.jsonl"), tok, signed=True)
    metrics, _ = evaluate_policy(signed, job, reference)
    logged_reward = write_log(signed, job, os.path.join(directory, "feedback-signed.jsonl"),
                              args.samples, seed=args.seed + 1)
    rows.append(("round 1, signed A", metrics, logged_reward))

    print()
    print(f"advantage-weighted fit on logged feedback (arithmetic; {args.samples} logged "
          f"completions per prompt and round; A = reward - the prompt's mean logged reward, "
          f"sample_weight = max(A, 0); held-out exact match is greedy)")
    print(f"{'':<19}{'exact match':>12}{'carry':>8}{'no carry':>10}{'dropped':>9}"
          f"{'logged reward':>15}{'KL':>7}")
    for name, metrics, logged_reward in rows:
        print(f"{name:<19}{metrics['exact_match']:>12.3f}{metrics['exact_match_carry']:>8.3f}"
              f"{metrics['exact_match_no_carry']:>10.3f}{metrics['dropped_carry']:>9.3f}"
              f"{logged_reward:>15.3f}{metrics['kl']:>7.2f}")
    print(f"logged reward: mean verifier reward of that policy's sampled completions of the "
          f"training prompts; KL to the pre-trained policy per sequence; whole script "
          f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
