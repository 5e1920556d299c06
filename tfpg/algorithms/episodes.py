"""The multi-turn rollout source of `PolicyGradientTrainer` (`env=`).

With an env the trainer's step is the single-turn one with another source of
rollouts: `PolicyGradientTrainer.sample_rollout` plays one episode per row against
the env (`tfpg.envs.multi_turn.rollout_episodes`: Python between compiled turns, eager)
and makes them a `Rollout` (`episode_rollout`); then the same `score_rollout`,
`record_rollout_metrics`, `learn` (advantages, update) run in one `tf.function`
(`compiled_learn`), traced once per set of rollout fields: every length is dynamic.

What differs from single completions is carried by the rollout itself:
`policy_mask` (1 on the policy's tokens: env replies are context, not actions)
makes the scoring, the values and the advantages act on the policy's tokens only
(`Rollout.action_mask`, `Rollout.for_advantages`), and `token_rewards` holds each
turn's reward on its last policy token.
"""

import time

import numpy as np
import tensorflow as tf

from tfpg.algorithms.rollout import Rollout
from tfpg.envs.multi_turn import episode_rewards, rollout_episodes
from tfpg.envs.turn_env import as_numpy_batch


def sample_episodes(trainer, batch, seed=None):
    """The trainer's episodes of a prompt batch (groups repeated, trainer's sampling).

    Returns (numpy batch with `group_size` copies of each row, `Episodes`).
    """
    batch = as_numpy_batch(batch if isinstance(batch, dict) else {"prompt": batch})
    if trainer.group_size > 1:
        batch = {key: np.repeat(value, trainer.group_size, axis=0)
                 for key, value in batch.items()}
    seed = trainer.sampling_seed() if seed is None else seed
    episodes = rollout_episodes(
        trainer.policy, trainer.env, batch, trainer.max_turns, trainer.max_new_tokens,
        sampler=trainer.sampler, temperature=trainer.temperature, top_k=trainer.top_k,
        top_p=trainer.top_p, suppress_ids=trainer.sampled_suppress_ids, seed=seed,
        jit_compile=bool(getattr(trainer, "jit_decode", False)))
    return batch, episodes


def episode_rollout(episodes, on_invalid="raise"):
    """The sampled `Rollout` of one batch of `Episodes` (tensors), and the count of
    rows with non-finite rewards.

    `completion_mask` is 1 on every real token (the model's padding: env replies
    are context), `policy_mask` on the policy's tokens and `loss_mask` on the
    policy's tokens of valid rows only (the actions); `truncated` marks the
    episodes cut by `max_turns` or the length bound.
    """
    token_rewards, valid, invalid = episode_rewards(episodes.token_rewards, on_invalid)
    rollout = Rollout(
        prompt_ids=tf.constant(episodes.prompt_ids),
        prompt_mask=tf.constant(episodes.prompt_mask.astype(bool)),
        completion_ids=tf.constant(episodes.completion_ids),
        completion_mask=tf.constant(episodes.completion_mask),
        loss_mask=tf.constant(episodes.policy_mask * valid[:, None]),
        policy_mask=tf.constant(episodes.policy_mask),
        token_rewards=tf.constant(token_rewards),
        scores=tf.constant(token_rewards.sum(axis=1)),
        valid=tf.constant(valid),
        truncated=tf.constant((~episodes.done).astype(np.float32)))
    return rollout, invalid


def episode_metrics(env, episodes, invalid):
    """The logs of a batch of episodes besides the rollout's own (`reward`,
    `completion_length` = policy tokens, `truncated_fraction` = cut episodes, ...):
    turns, policy tokens per turn, env tokens, invalid rewards, and the env's."""
    policy_tokens = episodes.policy_mask.sum(axis=1)                          # [B]
    return {"turns": episodes.turns.astype(np.float32),
            "turn_length": policy_tokens / np.maximum(episodes.turns, 1),
            "env_tokens": (episodes.completion_mask - episodes.policy_mask).sum(axis=1),
            "invalid_rewards": float(invalid),
            **env.episode_metrics()}


def compiled_learn(trainer, rollout):
    """The trainer's compiled score -> record -> advantages -> update of a sampled
    episode rollout, called with `dict(rollout.items())` (traced once per set of
    fields: every length is dynamic). Cached in the trainer's __dict__, out of
    Keras' attribute tracking."""
    functions = trainer.__dict__.setdefault("_episode_learn", {})
    key = tuple(rollout.keys())
    if key not in functions:
        spec = {name: tf.TensorSpec([None] * value.shape.rank, value.dtype)
                for name, value in rollout.items()}

        def learn(fields):
            # The batch's columns are numpy (strings too): the env-capable
            # algorithms' advantages read the rollout only.
            trainer.learn(trainer.finish_rollout(Rollout(**fields)), {})

        functions[key] = tf.function(learn, input_signature=[spec],
                                     jit_compile=False, reduce_retracing=True)
    return functions[key]


def train_step(trainer, batch):
    """The trainer's step with `env=` (eager: `compile` sets run_eagerly): the
    episodes in Python, then the compiled rest of the single-turn path."""
    if tf.distribute.get_strategy().num_replicas_in_sync > 1:
        raise ValueError("multi-turn episodes (env=) run on one device: the env is "
                         "Python, outside the replicas")
    started = time.perf_counter()
    rollout, _ = trainer.sample_rollout(batch)
    compiled_learn(trainer, rollout)(dict(rollout.items()))
    seconds = time.perf_counter() - started
    return {"env_time_fraction": trainer.last_episodes.env_seconds / max(seconds, 1e-9)}
