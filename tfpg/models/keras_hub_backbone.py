"""`KerasHubBackbone`: the trunk of a KerasHub causal LM, correct for left padding.

KerasHub's `CausalLM.call_with_cache` takes no padding mask (its own `generate`
right-pads), so on left-padded prompts its cached logits are wrong; and GPT-2's
backbone numbers positions 0..T-1 whatever the padding. This layer drives the same
sublayers (embeddings, transformer layers, final norm) itself:

* every transformer layer gets the key padding mask of all positions so far (the
  cache carries it beside the keys / values), so padding is never attended to;
* learned absolute positions (GPT-2) are counted over real tokens only
  (`cumsum(mask) - 1`), so a left-padded row sees the positions it would see alone.
  The RoPE families (Gemma, Llama, Mistral, Qwen) only see position differences,
  which left padding does not change.

The families differ only in how tokens are embedded and in the names of the
transformer layers' mask / cache arguments: `FAMILIES` holds that per family.
"""

import contextlib
import functools
from typing import NamedTuple

import keras
import tensorflow as tf

from tfpg.models.checkpointing import checkpointed
from tfpg.models.chunked_attention import chunked_dot_product_attention

# Full passes (no cache) of families with Keras attention run it in chunks of queries
# (see `KerasHubBackbone._chunked_attention`); False restores Keras' own (tests).
CHUNKED_ATTENTION = True


class Family(NamedTuple):
    """What differs between the supported KerasHub decoder families."""
    name: str
    backbone_class: str             # keras_hub.models.<backbone_class>
    embedding: str                  # "learned_positions" | "scaled" | "plain"
    mask_argument: str              # the layer's padding-mask keyword
    cache_argument: str             # the layer's cache keyword
    index_argument: str             # the layer's cache-update-index keyword
    per_layer_cache: bool = False   # cache is a tuple of (key, value) per layer
    # The layer's Keras `MultiHeadAttention` (attribute name), whose attention full
    # passes compute in chunks of queries (`chunked_attention`); None: the family's own.
    keras_attention: str = None


_DECODER = ("decoder_padding_mask", "self_attention_cache",
            "self_attention_cache_update_index")
_GEMMA = ("padding_mask", "cache", "cache_update_index")

# Order matters only for subclasses: Llama3Backbone is a LlamaBackbone.
FAMILIES = (
    Family("GPT-2", "GPT2Backbone", "learned_positions", *_DECODER,
           keras_attention="_self_attention_layer"),
    Family("Gemma 1 / 2", "GemmaBackbone", "scaled", *_GEMMA),
    Family("Gemma 3 (text)", "Gemma3Backbone", "scaled", *_GEMMA, per_layer_cache=True),
    Family("Llama / Llama 3", "LlamaBackbone", "plain", *_DECODER),
    Family("Mistral", "MistralBackbone", "plain", *_DECODER),
    Family("Qwen 2", "QwenBackbone", "plain", *_DECODER),
    Family("Qwen 3", "Qwen3Backbone", "plain", *_DECODER),
)


def _length(token_ids):
    """T of token_ids [B, T], static where known (XLA needs static slice sizes)."""
    return token_ids.shape[1] if token_ids.shape[1] is not None else tf.shape(token_ids)[1]


def supported_families():
    return ", ".join(family.name for family in FAMILIES)


def family_of(hub_backbone):
    """The `Family` of a KerasHub backbone; a ValueError naming the supported ones."""
    import keras_hub
    for family in FAMILIES:
        cls = getattr(keras_hub.models, family.backbone_class, None)
        if cls is not None and isinstance(hub_backbone, cls):
            if getattr(hub_backbone, "vision_encoder", None) is not None:
                raise ValueError(f"{type(hub_backbone).__name__} with a vision encoder is not "
                                 f"supported: tfpg takes text-only models ({family.name})")
            return family
    raise ValueError(f"{type(hub_backbone).__name__} is not a supported KerasHub causal LM "
                     f"backbone; supported families: {supported_families()}")


class SerializesWrapped:
    """`get_config` / `from_config` of a layer or model that wraps one KerasHub object,
    its constructor argument `wrapped` (also its attribute): the object is serialized
    into the config and deserialized back (mixed in before the Keras base class)."""

    wrapped = None

    def get_config(self):
        config = super().get_config()
        config[self.wrapped] = keras.saving.serialize_keras_object(getattr(self, self.wrapped))
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**deserialize_entry(config, cls.wrapped))


@keras.saving.register_keras_serializable(package="tfpg")
class KerasHubBackbone(SerializesWrapped, keras.layers.Layer):
    """Hidden states [B, T, H] of a KerasHub decoder, with a left-padding-correct cache.

    `call(token_ids, padding_mask=None)` -> hidden states (the final norm applied);
    `call_with_cache(token_ids, cache, index, padding_mask=None)` -> (hidden, cache).
    The weights are those of `hub_backbone` (shared, not copied): `KerasHubPolicy`
    and `KerasHubValueNetwork` put their heads on it.

    Args:
        hub_backbone: `keras_hub.models.Backbone`. A backbone of one of `FAMILIES`.
        **kwargs: `keras.Model` arguments (`name`, `dtype`, ...).

    Example:
    >>> trunk = KerasHubBackbone(causal_lm.backbone)  # doctest: +SKIP
    >>> # hidden: [B, T, hidden_dim]
    >>> hidden = trunk(token_ids, padding_mask=mask)  # doctest: +SKIP
    """

    wrapped = "hub_backbone"

    def __init__(self, hub_backbone, **kwargs):
        kwargs.setdefault("dtype", hub_backbone.dtype_policy)
        super().__init__(**kwargs)
        self.family = family_of(hub_backbone)
        self.hub_backbone = hub_backbone
        self.output_dim = hub_backbone.hidden_dim
        self.built = True

    @property
    def has_position_table(self):
        """True for learned absolute positions (GPT-2): `max_length` bounds a sequence."""
        return self.family.embedding == "learned_positions"

    @property
    def max_length(self):
        return getattr(self.hub_backbone, "max_sequence_length", None)

    def _embed(self, token_ids, key_mask, start, training):
        """Token (+ position) embeddings of token_ids [B, T] at cache positions
        start..start+T-1, positions counted over key_mask [B, S] (int32)."""
        backbone = self.hub_backbone
        x = backbone.token_embedding(token_ids)
        if self.family.embedding == "learned_positions":
            positions = tf.maximum(tf.cumsum(key_mask, axis=1) - 1, 0)             # [B, S]
            positions = tf.slice(positions, [0, start], [-1, _length(token_ids)])  # [B, T]
            x = backbone.embeddings_add(
                (x, backbone.position_embedding(x, positions=positions)))
            x = backbone.embeddings_dropout(x, training=training)
        elif self.family.embedding == "scaled":
            x = x * tf.cast(tf.sqrt(float(backbone.hidden_dim)), x.dtype)
        return x

    def _run_layers(self, x, key_mask, caches, index, training):
        if caches is None:
            with self._chunked_attention():
                return self._run_layer_stack(x, key_mask, caches, index, training)
        return self._run_layer_stack(x, key_mask, caches, index, training)

    @contextlib.contextmanager
    def _chunked_attention(self):
        """Within it (while tracing), the family's Keras attention layers compute full
        passes with `chunked_dot_product_attention`: no [B, heads, T, T] tensor is
        kept for the backward pass (the scoring and update passes of long sequences)."""
        if not CHUNKED_ATTENTION or self.family.keras_attention is None:
            yield
            return
        layers = [getattr(layer, self.family.keras_attention)
                  for layer in self.hub_backbone.transformer_layers]
        for attention in layers:
            object.__setattr__(attention, "_compute_attention",
                               functools.partial(_chunked_compute_attention, attention))
        try:
            yield
        finally:
            for attention in layers:
                object.__delattr__(attention, "_compute_attention")

    def _run_layer_stack(self, x, key_mask, caches, index, training):
        family = self.family
        new_caches = []
        for i, layer in enumerate(self.hub_backbone.transformer_layers):
            arguments = {family.mask_argument: key_mask}
            if caches is not None:
                arguments[family.cache_argument] = caches[i]
                arguments[family.index_argument] = index
                x, cache = layer(x, training=training, **arguments)
                new_caches.append(cache)
            else:
                x = checkpointed(
                    lambda x, layer=layer, arguments=arguments:
                    layer(x, training=training, **arguments))(x)
        return self.hub_backbone.layer_norm(x), new_caches

    def call(self, token_ids, padding_mask=None, training=None):
        """token_ids int [B, T], padding_mask [B, T] (1 = real; None: all real)
        -> hidden states [B, T, H] (compute dtype)."""
        token_ids = tf.cast(token_ids, tf.int32)
        if padding_mask is None:
            padding_mask = tf.ones_like(token_ids)
        key_mask = tf.cast(padding_mask, tf.int32)                              # [B, T]
        x = self._embed(token_ids, key_mask, 0, training)
        hidden, _ = self._run_layers(x, key_mask, None, None, training)
        return hidden

    def cache_shape(self, batch_size, max_length):
        """Shape of one layer's key / value cache [B, 2, S, kv_heads, head_dim]."""
        backbone = self.hub_backbone
        query_heads = getattr(backbone, "num_query_heads", None) or backbone.num_heads
        kv_heads = getattr(backbone, "num_key_value_heads", None) or query_heads
        head_dim = getattr(backbone, "head_dim", None) or backbone.hidden_dim // query_heads
        return [batch_size, 2, max_length, kv_heads, head_dim]

    def initial_cache(self, batch_size, max_length):
        """An empty cache: {"kv": the family's key / value cache, "mask": int32 [B, S]}."""
        shape = self.cache_shape(batch_size, max_length)
        layers = self.hub_backbone.num_layers
        dtype = self.compute_dtype
        if self.family.per_layer_cache:          # Gemma 3: ((k, v), ...) [B, S, h, d]
            kv = tuple((tf.zeros(shape[:1] + shape[2:], dtype),
                        tf.zeros(shape[:1] + shape[2:], dtype)) for _ in range(layers))
        else:                                     # [B, layers, 2, S, h, d]
            kv = tf.zeros(shape[:1] + [layers] + shape[1:], dtype)
        return {"kv": kv, "mask": tf.zeros([batch_size, max_length], tf.int32)}

    def call_with_cache(self, token_ids, cache, index, padding_mask=None, training=None):
        """Feeds token_ids [B, T] at cache position `index`; returns (hidden [B, T, H],
        updated cache). `padding_mask` [B, T] (None: all real) is written into the
        cache's key mask, which every layer then attends through."""
        token_ids = tf.cast(token_ids, tf.int32)
        if padding_mask is None:
            padding_mask = tf.ones_like(token_ids)
        index = tf.cast(index, tf.int32)
        key_mask = tf.tensor_scatter_nd_update(
            tf.transpose(cache["mask"]),
            (index + tf.range(_length(token_ids)))[:, None],
            tf.transpose(tf.cast(padding_mask, tf.int32)))
        key_mask = tf.transpose(key_mask)                                       # [B, S]
        x = self._embed(token_ids, key_mask, index, training)
        kv = cache["kv"]
        layers = self.hub_backbone.num_layers
        caches = kv if self.family.per_layer_cache else [kv[:, i] for i in range(layers)]
        hidden, new_caches = self._run_layers(x, key_mask, caches, index, training)
        kv = tuple(new_caches) if self.family.per_layer_cache else tf.stack(new_caches, 1)
        return hidden, {"kv": kv, "mask": key_mask}



def _chunked_compute_attention(attention, query, key, value, attention_mask=None,
                               training=None, return_attention_scores=False,
                               use_causal_mask=False):
    """Keras `MultiHeadAttention._compute_attention` (no dropout, no scores returned)
    as `chunked_dot_product_attention`; anything else goes to Keras' own."""
    if return_attention_scores or (attention._dropout > 0 and training):
        return type(attention)._compute_attention(
            attention, query, key, value, attention_mask, training,
            return_attention_scores, use_causal_mask)
    mask = None if attention_mask is None else tf.cast(attention_mask, tf.bool)
    if use_causal_mask:
        length, keys = tf.shape(query)[1], tf.shape(key)[1]
        causal = tf.linalg.band_part(tf.ones([length, keys], tf.bool), -1, 0)
        mask = causal[None] if mask is None else tf.logical_and(mask, causal[None])
    if mask is not None:
        mask = mask[:, None]                                                  # [B, 1, T, S]
    output = chunked_dot_product_attention(query, key, value, mask,
                                           attention._inverse_sqrt_key_dim)
    return output, None


def trunk_of(model):
    """The `KerasHubBackbone` for `model`: a `KerasHubBackbone` as it is (a shared
    trunk), a `keras_hub.models.Backbone` wrapped, or a `CausalLM`'s backbone wrapped."""
    import keras_hub
    if isinstance(model, keras_hub.models.CausalLM):
        model = model.backbone
    if isinstance(model, KerasHubBackbone):
        return model
    return KerasHubBackbone(model, name="trunk")


def backbone_from_preset(preset, dtype=None):
    """A fresh `keras_hub.models.Backbone` from a preset name or a local preset directory."""
    import keras_hub
    options = {} if dtype is None else {"dtype": dtype}
    return keras_hub.models.Backbone.from_preset(preset, **options)


def deserialize_entry(config, key):
    """A copy of `config` whose `key` (a serialized Keras / KerasHub object) is
    deserialized: for the `from_config` of models holding a KerasHub model."""
    import keras_hub  # noqa: F401  (registers the KerasHub classes)
    config = dict(config)
    config[key] = keras.saving.deserialize_keras_object(config[key])
    return config
