"""Held-out evaluation of a policy: the task's metrics, mean reward, KL to a reference,
and the before / after table of `tfpg train`.
"""

import math

import tensorflow as tf

from tfpg import data as tfpg_data
from tfpg.generation import generate
from tfpg.losses import token_log_probs


def evaluate_policy(policy, job, reference=None, batch_size=256):
    """Held-out metrics of greedy completions, plus mean reward and (with a reference)
    the KL per sequence to it on sampled completions."""
    if job.episodes is not None:
        # Multi-turn: greedy episodes against the task's env (no KL measured).
        metrics, texts = job.episodes.run_episodes(policy, job.tokenizer, "heldout")
        return dict(metrics, kl=0.0), texts
    heldout = job.heldout
    dataset = tfpg_data.prompt_dataset(heldout.prompts, job.tokenizer,
                                       references=heldout.references,
                                       extras=heldout.extras or None, batch_size=batch_size,
                                       max_prompt_length=job.max_prompt_length,
                                       truncate=job.truncate)
    completions, reward_sum, kl_sum = [], 0.0, 0.0
    for batch in dataset:
        greedy = generate(policy, batch["prompt"], job.max_new_tokens, sampler="greedy",
                          prompt_mask=batch["prompt_mask"])
        completions += job.tokenizer.decode(greedy.token_ids)
        reward_sum += float(tf.reduce_sum(job.reward_fn(batch["prompt"], greedy.token_ids,
                                                        greedy.mask, batch)))
        if reference is not None:
            sampled = generate(policy, batch["prompt"], job.max_new_tokens, seed=0,
                               prompt_mask=batch["prompt_mask"])
            kl_sum += float(tf.reduce_sum(_sequence_kl(policy, reference, batch["prompt"],
                                                       sampled, batch["prompt_mask"])))
    metrics = job.evaluate(heldout.prompts, completions)
    metrics["reward"] = reward_sum / len(heldout)
    metrics["kl"] = kl_sum / len(heldout) if reference is not None else 0.0
    return metrics, completions


def _sequence_kl(policy, reference, prompt_ids, sampled, prompt_mask):
    """Monte-Carlo KL(policy || reference) per sequence on sampled completions: [B]."""
    sequence = tf.concat([prompt_ids, sampled.token_ids], axis=1)
    padding = tf.concat([tf.cast(prompt_mask, tf.bool), sampled.mask > 0], axis=1)
    start = prompt_ids.shape[1] - 1
    log_probs = [token_log_probs(model(sequence, padding_mask=padding)[:, start:-1],
                                 sampled.token_ids, mask=sampled.mask)
                 for model in (policy, reference)]
    return tf.reduce_sum((log_probs[0] - log_probs[1]) * sampled.mask, axis=1)


def format_table(metrics):
    """The before / after table printed at the end of `tfpg train`."""
    before, after = metrics["before"], metrics["after"]
    names = [metrics["primary_metric"]] + [k for k in after if k != metrics["primary_metric"]]
    lines = [f"{'held-out':<24}{'before':>10}{'after':>10}"]
    for name in names:
        lines.append(f"{name:<24}{before.get(name, math.nan):>10.3f}{after[name]:>10.3f}")
    lines.append(f"{'seconds':<24}{'':>10}{metrics['seconds']:>10.1f}")
    return "\n".join(lines)
