"""`ValueNetwork`: per-token state values V(s_t) for actor-critic algorithms."""

import keras
import tensorflow as tf

from tfpg.models.backbones import make_backbone


@keras.saving.register_keras_serializable(package="tfpg")
class ValueNetwork(keras.Model):
    """A backbone with a scalar head: token ids [B, T] -> values float32 [B, T].

    `values[:, t]` estimates the return after having read tokens 0..t. It takes the
    same backbone options as `PolicyNetwork`. `ValueNetwork.from_policy(policy)` puts
    the value head on the policy's own trunk (shared weights, a cheaper critic whose
    loss also shapes the policy's features); saved alone, such a model keeps a copy.

    Example:
    >>> critic = ValueNetwork(vocab_size=20, embedding_dim=16, hidden_dim=32)
    >>> values = critic(tf.constant([[1, 7, 9]]))            # [1, 3]
    """

    def __init__(self, vocab_size, embedding_dim=128, hidden_dim=256, backbone="lstm",
                 num_layers=1, num_heads=4, dropout=0.0, max_length=512, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.embedding_dim = embedding_dim
        self.hidden_dim = hidden_dim
        self.backbone_type = backbone
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.dropout = dropout
        self.max_length = max_length
        self.backbone = make_backbone(vocab_size, embedding_dim, hidden_dim, backbone,
                                      num_layers, num_heads, dropout, max_length)
        self.value_head = keras.layers.Dense(1, dtype="float32", name="value_head")

    @classmethod
    def from_policy(cls, policy, **kwargs):
        """A value head on `policy`'s backbone (weights shared with the policy)."""
        critic = cls(policy.vocab_size, policy.embedding_dim, policy.hidden_dim,
                     policy.backbone_type, policy.num_layers, policy.num_heads,
                     policy.dropout, policy.max_length, **kwargs)
        critic.backbone = policy.backbone
        return critic

    def build(self, input_shape=None):
        if not self.backbone.built:  # a shared trunk is already built
            self.backbone.build(input_shape)
        self.value_head.build((None, None, self.backbone.output_dim))
        self.built = True

    def call(self, token_ids, padding_mask=None, training=None):
        """token_ids int [B, T] -> values float32 [B, T]."""
        hidden = self.backbone(token_ids, padding_mask=padding_mask, training=training)
        return tf.squeeze(self.value_head(hidden), axis=-1)

    def get_config(self):
        config = super().get_config()
        config.update(vocab_size=self.vocab_size, embedding_dim=self.embedding_dim,
                      hidden_dim=self.hidden_dim, backbone=self.backbone_type,
                      num_layers=self.num_layers, num_heads=self.num_heads,
                      dropout=self.dropout, max_length=self.max_length)
        return config
