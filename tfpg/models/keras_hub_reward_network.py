"""`KerasHubRewardNetwork`: a sequence score from a KerasHub decoder trunk."""

import keras
import tensorflow as tf

from tfpg.models.keras_hub_backbone import SerializesWrapped, backbone_from_preset, trunk_of
from tfpg.models.reward_network import ScoreNormalization


@keras.saving.register_keras_serializable(package="tfpg")
class KerasHubRewardNetwork(ScoreNormalization, SerializesWrapped, keras.Model):
    """A scalar head on a KerasHub trunk, read at the last real token: ids [B, T] -> [B].

    The KerasHub counterpart of `RewardNetwork` (same normalisation, same
    `call(token_ids, padding_mask, normalize=)`). In KerasHub vocabularies every id
    may be a real token, so `padding_mask` (1 = real) says where the sequence is;
    without it every position counts.

    The trunk trains whole and must not be the policy's own (the policy moves under
    policy-gradient training; the reward must not): build it on a fresh copy with
    `from_preset`, or `from_policy`, which copies a `KerasHubPolicy`'s trunk weights
    (without its LoRA adapters).

    Args:
        backbone: `keras_hub.models.Backbone` or `keras_hub.models.CausalLM`. A
            `keras_hub.models.Backbone` or `keras_hub.models.CausalLM` (its backbone) of
            a supported family, or a `KerasHubBackbone`.

    Example:
    >>> scorer = KerasHubRewardNetwork.from_preset("gpt2_base_en")  # doctest: +SKIP
    >>> # scores: [B]
    >>> scores = scorer(ids, padding_mask=mask)  # doctest: +SKIP
    """

    wrapped = "backbone"

    def __init__(self, backbone, **kwargs):
        backbone = trunk_of(backbone)
        super().__init__(**kwargs)
        self.backbone = backbone
        self.score_head = keras.layers.Dense(1, dtype="float32", name="score_head")
        self.score_head.build((None, backbone.output_dim))
        self.add_normalization()
        self.built = True

    @classmethod
    def from_preset(cls, preset, dtype=None, **kwargs):
        """A reward network on a fresh copy of a preset's backbone (head at random)."""
        return cls(backbone_from_preset(preset, dtype), **kwargs)

    @classmethod
    def from_policy(cls, policy, **kwargs):
        """A reward network on a copy of a `KerasHubPolicy`'s trunk (base weights)."""
        hub = policy.backbone.hub_backbone
        if policy.lora_rank is not None:
            raise ValueError("from_policy copies a whole trunk; this policy trains LoRA "
                             "adapters: use KerasHubRewardNetwork.from_preset(preset)")
        copy = type(hub).from_config(hub.get_config())
        copy.set_weights(hub.get_weights())
        return cls(copy, **kwargs)

    def build(self, input_shape=None):
        self.built = True

    def call(self, token_ids, padding_mask=None, training=None, normalize=True):
        """token_ids int [B, T], padding_mask [B, T] (1 = real) -> scores float32 [B]."""
        token_ids = tf.cast(token_ids, tf.int32)
        real = tf.ones_like(token_ids) if padding_mask is None else tf.cast(padding_mask,
                                                                             tf.int32)
        hidden = self.backbone(token_ids, padding_mask=real, training=training)  # [B, T, H]
        return self.last_token_scores(hidden, real, normalize)

