"""`EpisodeTask`: the common shape of the bundled multi-turn tasks.

A multi-turn task is a `Task` whose reward comes from an environment
(`tfpg.envs.turn_env.TurnEnv`) rather than a reward function: `env(tokenizer)` builds it,
`max_turns` and `max_new_tokens` (per turn) bound the episodes, and `reward()` is
None (trainers take `env=` and `reward_fn=None`). Its `pretrain_texts` are whole
teacher episodes written as text (prompt, turns and replies in order, exactly as the
rollout lays them out), so maximum likelihood teaches the turn format and the
environment's replies alike. `evaluate(prompts, completions)` reads episodes back
from text: each completion is everything after the prompt (`Episodes.text`).
`run_episodes` plays a split against the environment and evaluates it.
"""

import numpy as np

from tfpg.envs import multi_turn
from tfpg.tasks.base import Task


class EpisodeTask(Task):
    """Base class of `calculator` and `guess` (see the module docstring)."""

    max_turns = None

    def env(self, tokenizer):
        """The task's `TurnEnv` over `tokenizer`."""
        raise NotImplementedError

    def reward(self, tokenizer):
        """None: the environment gives the rewards (pass `env=` to the trainer)."""
        return None

    def run_episodes(self, policy, tokenizer, split="heldout", batch_size=128,
                     sampler="greedy", seed=0, limit=None):
        """Plays `split` (its first `limit` prompts) against `env(tokenizer)`.

        Returns (metrics of `evaluate` and "reward", the mean episode reward; list of
        episode texts after the prompt).
        """
        part = self.split(split)
        count = len(part) if limit is None else min(limit, len(part))
        env = self.env(tokenizer)
        columns = next(iter(self.prompt_dataset(tokenizer, split, batch_size=len(part))))
        texts, rewards = [], []
        for start in range(0, count, batch_size):
            end = min(start + batch_size, count)
            batch = {key: value.numpy()[start:end] for key, value in columns.items()}
            episodes = multi_turn.rollout_episodes(
                policy, env, batch, self.max_turns, self.max_new_tokens, sampler=sampler,
                seed=[seed, start])
            texts += [episodes.text(tokenizer, row) for row in range(len(episodes.turns))]
            rewards += episodes.rewards.tolist()
        metrics = self.evaluate(part.prompts[:count], texts, split)
        metrics["reward"] = mean(rewards)
        return metrics, texts


def mean(values):
    """Mean of a list as a float; NaN for an empty one."""
    return float(np.mean(values)) if len(values) else float("nan")
