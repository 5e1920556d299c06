"""`KerasHubValueNetwork`: per-token values V(s_t) from a KerasHub decoder trunk."""

import keras
import tensorflow as tf

from tfpg.models.keras_hub_backbone import SerializesWrapped, backbone_from_preset, trunk_of


@keras.saving.register_keras_serializable(package="tfpg")
class KerasHubValueNetwork(SerializesWrapped, keras.Model):
    """A scalar head on a KerasHub trunk: token ids [B, T] -> values float32 [B, T].

    Either on the policy's own trunk (`ValueNetwork.from_policy(kerashub_policy)` or
    `KerasHubValueNetwork.from_policy`: shared weights, and under LoRA the critic
    trains the same adapters plus its head), or on a separate KerasHub backbone
    (`KerasHubValueNetwork(causal_lm_or_backbone)`, `from_preset`), which trains whole.
    Saved alone, a shared-trunk critic keeps a copy of the trunk.

    Args:
        backbone: `tfpg.models.KerasHubBackbone`, `keras_hub.models.Backbone` or
            `keras_hub.models.CausalLM`. A `KerasHubBackbone` (shared), a
            `keras_hub.models.Backbone` or a `keras_hub.models.CausalLM` (its backbone)
            of a supported family.

    Example:
    >>> # policy: a KerasHubPolicy; values: [B, T]
    >>> critic = tfpg.ValueNetwork.from_policy(policy)  # doctest: +SKIP
    >>> values = critic(ids, padding_mask=mask)  # doctest: +SKIP
    """

    wrapped = "backbone"

    def __init__(self, backbone, **kwargs):
        backbone = trunk_of(backbone)
        super().__init__(**kwargs)
        self.backbone = backbone
        self.value_head = keras.layers.Dense(1, dtype="float32", name="value_head")
        self.value_head.build((None, None, backbone.output_dim))
        self.built = True

    @classmethod
    def from_policy(cls, policy, **kwargs):
        """A value head on `policy`'s trunk (a `KerasHubPolicy`; weights shared)."""
        return cls(policy.backbone, **kwargs)

    @classmethod
    def from_preset(cls, preset, dtype=None, **kwargs):
        """A critic on a fresh copy of a preset's backbone (its head starts at random)."""
        return cls(backbone_from_preset(preset, dtype), **kwargs)

    def build(self, input_shape=None):
        self.built = True

    def call(self, token_ids, padding_mask=None, training=None):
        """token_ids int [B, T] (padding_mask [B, T], 1 = real) -> values float32 [B, T]."""
        hidden = self.backbone(token_ids, padding_mask=padding_mask, training=training)
        return tf.squeeze(self.value_head(tf.cast(hidden, tf.float32)), axis=-1)

