"""`WeightedSum`: a weighted sum of rewards, each component reported on its own."""

import keras
import tensorflow as tf

from tfpg.rewards.base import Reward


@keras.saving.register_keras_serializable(package="tfpg")
class WeightedSum(Reward):
    """`sum_i weight_i * reward_i`, with each component logged as `reward/<name>`.

    Calling it returns the weighted sum, float32 [B]. `compute_rewards` instead
    evaluates the components one by one (through `weighted_components`), checks
    each under its own name, masks a sample when any component is invalid and
    returns the unweighted components in `RewardResult.components`.

    Args:
        components: dict. `{"name": (reward, weight), ...}` (a bare reward means weight
            1) or `[(name, reward, weight), ...]`.
        name: str or None. Defaults to "WeightedSum".

    Example:
    >>> from tfpg.rewards.length import Length
    >>> total = WeightedSum({"long": (Length(), 0.5), "short": (Length(target=0), 2.0)})
    >>> total(None, tf.constant([[5, 6, 2]]), tf.ones([1, 3]), {}).numpy()
    array([-3.], dtype=float32)
    """

    def __init__(self, components, name=None):
        super().__init__(name=name)
        if isinstance(components, dict):
            parts = [(n, *(c if isinstance(c, (tuple, list)) else (c, 1.0)))
                     for n, c in components.items()]
        else:
            parts = [tuple(c) for c in components]
        if not parts:
            raise ValueError("WeightedSum needs at least one component")
        for part in parts:
            if len(part) != 3 or not isinstance(part[0], str) or not callable(part[1]):
                raise ValueError(f"each component must be (name, reward, weight), got {part!r}")
        names = [n for n, _, _ in parts]
        if len(set(names)) != len(names):
            raise ValueError(f"component names must be unique, got {names}")
        self.weighted_components = [(n, r, float(w)) for n, r, w in parts]

    def get_config(self):
        return {"components": [list(c) for c in self.weighted_components], "name": self.name}

    def __call__(self, prompt_ids, completion_ids, completion_mask, batch):
        total = 0.0
        for _, reward, weight in self.weighted_components:
            value = tf.cast(reward(prompt_ids, completion_ids, completion_mask, batch),
                            tf.float32)
            if value.shape.rank == 2 and value.shape[1] == 1:
                value = value[:, 0]
            total += weight * value
        return total  # [B]
