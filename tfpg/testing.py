"""Exact policy gradients by enumeration, for checking estimators on tiny problems."""

import itertools

import numpy as np
import tensorflow as tf

from tfpg.generation import prompt_padding_mask


def all_completions(vocab_size, num_new_tokens, exclude=()):
    """Every id sequence of length `num_new_tokens` over the ids not in `exclude`:
    int32 [V' ** N, N]."""
    ids = [i for i in range(vocab_size) if i not in set(exclude)]
    return np.array(list(itertools.product(ids, repeat=num_new_tokens)), np.int32)


def exact_policy_gradient(policy, prompt_ids, reward_fn, num_new_tokens, temperature=1.0,
                          batch=None):
    """Exact J = mean_b E_{c ~ pi(.|prompt_b)} [R(prompt_b, c)] and its gradient.

    Enumerates all V ** N completions over the non-structural ids (so keep V and N
    tiny: vocab 5 without pad and BOS, 3 tokens gives 27), scores each with
    `reward_fn` (the `tfpg.rewards` signature, every token a real token: this is
    the `eos_id=None` setting) and differentiates
    sum_c pi(c | prompt) R(c) through `policy`.

    Args:
        policy: a `PolicyNetwork`.
        prompt_ids: int [B, P] left-padded prompts.
        reward_fn: `reward_fn(prompt_ids, completion_ids, completion_mask, batch)`.
        num_new_tokens: N.
        temperature: softmax temperature of the sampling distribution.
        batch: extra columns for the reward, each with leading dim B.

    Returns:
        (expected_reward float, gradients: list aligned with
        `policy.trainable_variables`), the gradient of J (ascent direction).

    Example:
    >>> policy = tfpg.PolicyNetwork(vocab_size=7, embedding_dim=8, hidden_dim=8)
    >>> reward_fn = tfpg.rewards.Length(eos_id=None)
    >>> j, grads = exact_policy_gradient(policy, [[1, 5]], reward_fn, num_new_tokens=3)
    >>> j
    3.0
    """
    prompt_ids = tf.convert_to_tensor(prompt_ids, tf.int32)
    num_prompts, prompt_length = prompt_ids.shape
    # Sampling never draws the structural ids (pad, BOS): neither does the enumeration.
    structural = tuple(policy.structural_ids)
    completions = tf.constant(all_completions(policy.vocab_size, num_new_tokens,
                                              structural))                   # [M, N]
    count = int(completions.shape[0])
    prompts = tf.repeat(prompt_ids, count, axis=0)                        # [B*M, P]
    completion_ids = tf.tile(completions, [num_prompts, 1])              # [B*M, N]
    mask = tf.ones(completion_ids.shape, tf.float32)
    expanded = {key: tf.repeat(value, count, axis=0) for key, value in (batch or {}).items()}
    expanded["prompt"] = prompts
    rewards = tf.cast(reward_fn(prompts, completion_ids, mask, expanded), tf.float32)

    sequence = tf.concat([prompts, completion_ids], axis=1)
    prompt_mask = prompt_padding_mask(policy, prompts)                    # [B*M, P]
    padding = tf.concat([prompt_mask, tf.ones_like(completion_ids, tf.bool)], 1)
    with tf.GradientTape() as tape:
        logits = policy(sequence, padding_mask=padding)[:, prompt_length - 1:-1]
        logits = tf.cast(logits, tf.float32) / temperature
        if structural:
            allowed = ~np.isin(np.arange(policy.vocab_size), structural)
            logits = tf.where(tf.constant(allowed), logits, -1e9)
        log_probs = tf.nn.log_softmax(logits)
        sequence_log_prob = tf.reduce_sum(
            tf.gather(log_probs, completion_ids, batch_dims=2), axis=1)   # [B*M]
        expected = tf.reduce_sum(tf.exp(sequence_log_prob) * rewards) / num_prompts
    gradients = tape.gradient(expected, policy.trainable_variables)
    return float(expected), gradients


def count_train_step_traces(trainer):
    """Makes `trainer.train_step` count its traces; returns the counter (a list that
    gets one entry per trace: the Python body runs only while tf.function traces).

    Example:
    >>> tok = tfpg.Tokenizer.from_texts(["one two three"], level="word")
    >>> policy = tfpg.PolicyNetwork(tok.vocabulary_size, embedding_dim=8, hidden_dim=8)
    >>> agent = tfpg.algorithms.REINFORCE(policy, tfpg.rewards.Length(), max_new_tokens=2)
    >>> agent.compile(optimizer=keras.optimizers.SGD(0.1))
    >>> dataset = tfpg.data.prompt_dataset(["one", "two"] * 2, tok, batch_size=2)
    >>> traces = count_train_step_traces(agent)
    >>> history = agent.fit(dataset, epochs=3, verbose=0)
    >>> len(traces)          # batches of one shape never retrace the step
    1
    """
    traces = []
    original = trainer.train_step

    def counting_train_step(data):
        traces.append(1)
        return original(data)

    # Not a Keras-tracked attribute: set on the instance, as fit looks it up there.
    object.__setattr__(trainer, "train_step", counting_train_step)
    return traces


def replay_fixed_rollout(trainer, batch, completion_ids, completion_mask, steps=1):
    """Runs `trainer` on a rollout whose completions are given instead of sampled:
    the reward, advantages, reference and behaviour log-probs and losses are the
    trainer's own. Each step is one loss-and-gradient pass over the whole rollout;
    between steps the gradients are applied with the trainer's optimizer (as a
    second `num_epochs` pass over the same rollout). For parity checks against
    other implementations on one fixed batch (`benchmarks/trl_parity.py`).

    Args:
        trainer: a compiled `PolicyGradientTrainer` (e.g. with `SGD`).
        batch: the dataset element: {"prompt": int [P, L], ...}; each prompt is
            repeated `group_size` times, as in `train_step`.
        completion_ids: int [P * group_size, N] (N = `max_new_tokens`).
        completion_mask: float [P * group_size, N], 1 = real token (EOS included).
        steps: passes over the rollout.

    Returns:
        A list of (loss float, gradients list aligned with `trainable_variables`),
        one per step.

    Example:
    >>> policy = tfpg.PolicyNetwork(vocab_size=7, embedding_dim=8, hidden_dim=8)
    >>> agent = tfpg.algorithms.REINFORCE(policy, tfpg.rewards.Length(), max_new_tokens=2)
    >>> agent.compile(optimizer=keras.optimizers.SGD(0.1))
    >>> ids, completions, mask = [[1, 5]], [[4, 2]], [[1.0, 1.0]]
    >>> [(loss, grads)] = replay_fixed_rollout(agent, {"prompt": ids}, completions, mask)
    """
    completion_ids = tf.constant(completion_ids, tf.int32)
    completion_mask = tf.constant(completion_mask, tf.float32)

    class Fixed:
        token_ids, mask = completion_ids, completion_mask

    # An instance attribute, out of Keras' tracking: `collect_rollout` samples through it.
    object.__setattr__(trainer, "sample", lambda *args, **kwargs: Fixed)
    rollout, batch = trainer.collect_rollout(dict(batch))
    rollout.update(trainer.compute_advantages(rollout, batch))
    results = []
    for step in range(steps):
        if step:
            trainer.apply_gradients(gradients)
        total, gradients, logs = trainer.loss_and_gradients(rollout)
        trainer.after_update(logs)
        results.append((float(total), [None if g is None else tf.convert_to_tensor(g)
                                       for g in gradients]))
    return results
