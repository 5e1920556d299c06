"""`OverlongPenalty`: DAPO's soft over-long punishment (Yu et al., 2025)."""

import keras
import tensorflow as tf

from tfpg.rewards.base import Reward


@keras.saving.register_keras_serializable(package="tfpg")
class OverlongPenalty(Reward):
    """0 up to `max_length - buffer` tokens, then linearly down to -1 at `max_length`,
    and -1 beyond it (TRL's `get_soft_overlong_punishment`).

    With L the completion length (its real tokens, EOS included, as TRL counts):

        0                                   if L <= max_length - buffer
        (max_length - buffer - L) / buffer  if max_length - buffer < L <= max_length
        -1                                  if L > max_length

    Add it to a task reward with `WeightedSum`, e.g.
    `WeightedSum({"task": task_reward, "overlong": OverlongPenalty(20, 4)})`.

    Args:
        max_length: int. The length at which the penalty reaches -1 (DAPO's L_max;
            usually `max_new_tokens`).
        buffer: int. Length of the soft zone before it (DAPO's L_cache), >= 1.
        name: str or None. Defaults to "OverlongPenalty".

    Example:
    >>> OverlongPenalty(4, 2)(None, tf.zeros([3, 5], tf.int32),
    ...                       tf.constant([[1., 1, 0, 0, 0], [1., 1, 1, 0, 0],
    ...                                    [1., 1, 1, 1, 1]]), {}).numpy()
    array([ 0. , -0.5, -1. ], dtype=float32)
    """

    def __init__(self, max_length, buffer, name=None):
        super().__init__(name=name)
        if not isinstance(buffer, int) or buffer < 1:
            raise ValueError(f"buffer must be an int >= 1, got {buffer!r}")
        if not isinstance(max_length, int) or max_length < buffer:
            raise ValueError(f"max_length must be an int >= buffer ({buffer}), "
                             f"got {max_length!r}")
        self.max_length = max_length
        self.buffer = buffer

    def get_config(self):
        return {"max_length": self.max_length, "buffer": self.buffer, "name": self.name}

    def __call__(self, prompt_ids, completion_ids, completion_mask, batch):
        length = tf.reduce_sum(tf.cast(completion_mask > 0, tf.float32), axis=1)  # [B]
        start = float(self.max_length - self.buffer)
        soft = (start - length) / float(self.buffer)
        return tf.where(length <= start, 0.0,
                        tf.where(length <= float(self.max_length), soft, -1.0))
