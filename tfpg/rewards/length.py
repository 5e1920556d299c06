"""`Length`: rewards the completion length, or closeness to a target length."""

import keras
import tensorflow as tf

from tfpg.rewards.base import Reward


@keras.saving.register_keras_serializable(package="tfpg")
class Length(Reward):
    """Number of completion tokens before EOS, or `-|length - target|`.

    The length counts generated tokens (mask = 1) before the first EOS, so a
    completion "a b <eos>" has length 2.

    Args:
        target: int or None. None rewards length itself (longer is better); an int
            rewards closeness: 0 at the target, -1 per token away from it.
        eos_id: int or None. The EOS id (None: the EOS, if any, counts as a token).
        name: str or None. Defaults to "Length".

    Example:
    >>> Length(target=2)(None, tf.constant([[5, 6, 7, 2]]), tf.ones([1, 4]), {}).numpy()
    array([-1.], dtype=float32)
    """

    def __init__(self, target=None, eos_id=2, name=None):
        super().__init__(name=name)
        if target is not None and target < 0:
            raise ValueError(f"target must be >= 0 or None, got {target!r}")
        self.target = target
        self.eos_id = eos_id

    def get_config(self):
        return {"target": self.target, "eos_id": self.eos_id, "name": self.name}

    def __call__(self, prompt_ids, completion_ids, completion_mask, batch):
        keep = tf.cast(completion_mask, tf.float32) > 0  # [B, N]
        if self.eos_id is not None:
            is_eos = tf.cast(tf.equal(tf.cast(completion_ids, tf.int32), self.eos_id), tf.int32)
            keep &= tf.equal(tf.cumsum(is_eos, axis=1), 0)
        length = tf.reduce_sum(tf.cast(keep, tf.float32), axis=1)  # [B]
        if self.target is None:
            return length
        return -tf.abs(length - float(self.target))
