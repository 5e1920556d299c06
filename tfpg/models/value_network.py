"""`ValueNetwork`: per-token state values V(s_t) for actor-critic algorithms."""

import keras
import tensorflow as tf

from tfpg.models.backbones import BackboneModel
from tfpg.models.keras_hub_policy import KerasHubPolicy
from tfpg.models.keras_hub_value_network import KerasHubValueNetwork


@keras.saving.register_keras_serializable(package="tfpg")
class ValueNetwork(BackboneModel):
    """A backbone with a scalar head: token ids [B, T] -> values float32 [B, T].

    `values[:, t]` estimates the return after having read tokens 0..t. It takes the
    same backbone options as `PolicyNetwork`. `ValueNetwork.from_policy(policy)` puts
    the value head on the policy's own trunk (shared weights, a cheaper critic whose
    loss also shapes the policy's features); saved alone, such a model keeps a copy.

    Example:
    >>> critic = ValueNetwork(vocab_size=20, embedding_dim=16, hidden_dim=32)
    >>> values = critic(tf.constant([[1, 7, 9]]))            # [1, 3]
    """

    head_name = "value_head"        # V(s_t): one value a position

    @classmethod
    def from_policy(cls, policy, **kwargs):
        """A value head on `policy`'s backbone (weights shared with the policy); for a
        `KerasHubPolicy`, a `KerasHubValueNetwork` on its trunk."""
        if isinstance(policy, KerasHubPolicy):
            return KerasHubValueNetwork.from_policy(policy, **kwargs)
        critic = cls(**policy.backbone_config(), **kwargs)
        critic.backbone = policy.backbone
        return critic

    def call(self, token_ids, padding_mask=None, training=None):
        """token_ids int [B, T] -> values float32 [B, T]."""
        hidden = self.backbone(token_ids, padding_mask=padding_mask, training=training)
        return tf.squeeze(self.value_head(hidden), axis=-1)
