"""`RewardNetwork`: a scalar score of a whole token sequence, for learned rewards."""

import keras
import tensorflow as tf

from tfpg.models.backbones import BackboneModel


class ScoreNormalization:
    """What both reward networks share: the score head read at each row's last real
    token, and the normalisation constants (non-trainable weights `score_mean`,
    `score_std`). The class using it sets `self.score_head`."""

    def add_normalization(self):
        self.score_mean = self.add_weight(shape=(), initializer="zeros", trainable=False,
                                          name="score_mean")
        self.score_std = self.add_weight(shape=(), initializer="ones", trainable=False,
                                         name="score_std")

    def set_normalization(self, mean, std):
        """Scores become (raw - mean) / std."""
        if not self.built:
            self.build()
        if not std > 0:
            raise ValueError(f"std must be positive, got {std}")
        self.score_mean.assign(float(mean))
        self.score_std.assign(float(std))

    def last_token_scores(self, hidden, real, normalize=True):
        """hidden [B, T, H], real [B, T] (1 = real token) -> scores float32 [B]."""
        real = tf.cast(real, tf.int32)
        positions = tf.range(tf.shape(real)[1])[None, :]  # [1, T]
        last = tf.reduce_max(tf.where(real > 0, positions, 0), axis=1)  # [B]
        hidden = tf.cast(tf.gather(hidden, last, batch_dims=1), tf.float32)  # [B, H]
        scores = tf.squeeze(self.score_head(hidden), axis=-1)  # [B] float32
        if normalize:
            scores = (scores - self.score_mean) / self.score_std
        return scores


@keras.saving.register_keras_serializable(package="tfpg")
class RewardNetwork(ScoreNormalization, BackboneModel):
    """A backbone with a scalar head read at the last real token: ids [B, T] -> [B].

    The sequence is the prompt followed by the completion; id 0 is padding and may
    sit anywhere (a left-padded prompt followed by a right-padded completion is
    fine): padded positions change neither the recurrent state nor attention, and
    the score is read at each row's last real token, where the backbone has seen
    everything. A Transformer keeps the last `max_length` real tokens of longer
    sequences (the completion matters most).

    Scores are `(raw - score_mean) / score_std`, with the two constants stored as
    non-trainable weights (saved with the model); `set_normalization` sets them,
    `call(..., normalize=False)` skips them (for training, where the Bradley-Terry
    loss is defined on raw scores).

    Takes the backbone options of `PolicyNetwork`; `from_policy` copies a policy's
    trunk weights (the usual RLHF start: a reward model that already reads the
    language), without sharing them.

    Example:
    >>> scorer = RewardNetwork(vocab_size=20, embedding_dim=16, hidden_dim=32)
    >>> scorer(tf.constant([[0, 1, 7, 9], [1, 7, 9, 0]])).shape    # padding-invariant
    TensorShape([2])
    """

    head_name = "score_head"        # read at the last real token: one score a row

    @classmethod
    def from_policy(cls, policy, **kwargs):
        """A reward network whose backbone starts as a copy of `policy`'s."""
        scorer = cls(**policy.backbone_config(), **kwargs)
        scorer.build()
        if not policy.built:
            policy.build()
        scorer.backbone.set_weights(policy.backbone.get_weights())
        return scorer

    def build(self, input_shape=None):
        super().build(input_shape)
        self.add_normalization()

    def call(self, token_ids, padding_mask=None, training=None, normalize=True):
        """token_ids int [B, T] (0 = padding anywhere) -> scores float32 [B]."""
        token_ids = tf.cast(token_ids, tf.int32)
        if padding_mask is None:
            padding_mask = tf.not_equal(token_ids, 0)
        real = tf.cast(padding_mask, tf.int32)  # [B, T]
        if self.backbone_type == "transformer":
            # Real tokens from t to the end of the row; keep the last max_length.
            remaining = tf.cumsum(real, axis=1, reverse=True)
            real = real * tf.cast(remaining <= self.max_length, tf.int32)
        hidden = self.backbone(token_ids, padding_mask=real > 0, training=training)  # [B, T, H]
        return self.last_token_scores(hidden, real, normalize)

