"""Held-out evaluation of a policy: the task's metrics, mean reward, KL to a reference,
and the before / after table of `tfpg train`.
"""

import math

import tensorflow as tf

from tfpg import data as tfpg_data
from tfpg.generation import generate
from tfpg.losses import token_log_probs
from tfpg.rewards.base import call_reward
from tfpg.rewards.bleu import corpus_bleu


def reference_metrics(completions, references):
    """The held-out metrics of the user's own data (`--train-file`, `--eval-file`).

    Args:
        completions: list of str. The completions.
        references: list of str or list of list of str. One per completion: a string
            or a list of acceptable strings.

    Returns:
        {"bleu": corpus BLEU x 100 over whitespace words, "exact_match": the fraction
        of completions equal to one of their references, spaces at the ends ignored}.

    Example:
    >>> reference_metrics(["a b c d", "x"], ["a b c d", ["y", " x "]])["exact_match"]
    1.0
    """
    refs = [[r] if isinstance(r, str) else list(r) for r in references]
    bleu = corpus_bleu([c.split() for c in completions],
                       [[r.split() for r in rs] for rs in refs])
    matches = [c.strip() in [r.strip() for r in rs] for c, rs in zip(completions, refs)]
    return {"bleu": 100 * bleu, "exact_match": sum(matches) / max(1, len(matches))}


def evaluate_policy(policy, job, reference=None, batch_size=256):
    """Held-out metrics of greedy completions, plus mean reward and (with a reference)
    the KL per sequence to it on sampled completions (temperature 1, seed 0). A job
    with `sampled_metrics` also gets its metrics and reward of those sampled
    completions, as "sampled_<name>": what RL fine-tuning optimises is the expected
    reward of samples, which the greedy completion alone can misstate."""
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
    completions, sampled_completions = [], []
    reward_sum, sampled_reward_sum, kl_sum = 0.0, 0.0, 0.0
    for batch in dataset:
        greedy = generate(policy, batch["prompt"], job.max_new_tokens, sampler="greedy",
                          prompt_mask=batch["prompt_mask"])
        completions += job.tokenizer.decode(greedy.token_ids)
        reward_sum += _reward_sum(job, batch, greedy)
        if reference is None and not job.sampled_metrics:
            continue
        sampled = generate(policy, batch["prompt"], job.max_new_tokens, seed=0,
                           prompt_mask=batch["prompt_mask"])
        if reference is not None:
            kl_sum += float(tf.reduce_sum(_sequence_kl(policy, reference, batch["prompt"],
                                                       sampled, batch["prompt_mask"])))
        if job.sampled_metrics:
            sampled_completions += job.tokenizer.decode(sampled.token_ids)
            sampled_reward_sum += _reward_sum(job, batch, sampled)
    metrics = job.evaluate(heldout.prompts, completions)
    metrics["reward"] = reward_sum / len(heldout)
    metrics["kl"] = kl_sum / len(heldout) if reference is not None else 0.0
    if job.sampled_metrics:
        sampled = job.evaluate(heldout.prompts, sampled_completions)
        sampled["reward"] = sampled_reward_sum / len(heldout)
        metrics.update({f"sampled_{name}": value for name, value in sampled.items()})
    return metrics, completions


def _reward_sum(job, batch, generated):
    # Checked (a str or a string tensor is named, not summed) and timed like a step.
    rewards = call_reward(job.reward_fn, batch["prompt"], generated.token_ids,
                          generated.mask, batch, job.on_invalid_reward, job.reward_timeout)
    return float(tf.reduce_sum(rewards))


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
