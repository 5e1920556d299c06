"""Causal pre-norm Transformer backbone with a key/value cache for decoding."""

import math

import keras
import tensorflow as tf

# A large finite negative instead of -inf: a row that is entirely masked (a left-padding
# query) then gets a harmless uniform softmax rather than NaN.
_MASKED_SCORE = -1e9


@keras.saving.register_keras_serializable(package="tfpg")
class CausalSelfAttention(keras.layers.Layer):
    """Multi-head self-attention over [B, T, E], optionally extending a key/value cache."""

    def __init__(self, model_dim, num_heads, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        if model_dim % num_heads:
            raise ValueError(f"embedding_dim {model_dim} is not divisible by "
                             f"num_heads {num_heads}")
        self.model_dim = model_dim
        self.num_heads = num_heads
        self.head_dim = model_dim // num_heads
        self.dropout = dropout
        self.qkv = keras.layers.Dense(3 * model_dim, name="qkv")
        self.output_projection = keras.layers.Dense(model_dim, name="output")
        self.dropout_layer = keras.layers.Dropout(dropout)

    def build(self, input_shape=None):
        self.qkv.build((None, None, self.model_dim))
        self.output_projection.build((None, None, self.model_dim))
        self.built = True

    def call(self, x, attention_mask, key_cache=None, value_cache=None, index=0,
             training=None):
        """x [B, T, E]; attention_mask bool [B, T, S] (S = T without a cache).

        With `key_cache` / `value_cache` [B, S, heads, head_dim] the new keys and values
        are written at positions index..index+T-1 and attention runs over all S slots.
        Returns (output [B, T, E], key_cache, value_cache).
        """
        batch, length = tf.shape(x)[0], tf.shape(x)[1]
        qkv = tf.reshape(self.qkv(x), [batch, length, 3, self.num_heads, self.head_dim])
        query, key, value = tf.unstack(qkv, axis=2)              # [B, T, H, D] each
        if key_cache is not None:
            start = [0, index, 0, 0]
            key_cache = keras.ops.slice_update(key_cache, start, key)
            value_cache = keras.ops.slice_update(value_cache, start, value)
            key, value = key_cache, value_cache                  # [B, S, H, D]
        scores = tf.einsum("bqhd,bkhd->bhqk", query, key) / math.sqrt(self.head_dim)
        scores = tf.where(attention_mask[:, None, :, :], tf.cast(scores, tf.float32),
                          _MASKED_SCORE)
        weights = tf.cast(tf.nn.softmax(scores, axis=-1), x.dtype)  # [B, H, T, S]
        weights = self.dropout_layer(weights, training=training)
        attended = tf.einsum("bhqk,bkhd->bqhd", weights, value)
        attended = tf.reshape(attended, [batch, length, self.model_dim])
        return self.output_projection(attended), key_cache, value_cache

    def get_config(self):
        config = super().get_config()
        config.update(model_dim=self.model_dim, num_heads=self.num_heads,
                      dropout=self.dropout)
        return config


@keras.saving.register_keras_serializable(package="tfpg")
class TransformerBlock(keras.layers.Layer):
    """Pre-norm block: x + attn(norm(x)), then x + ffn(norm(x))."""

    def __init__(self, model_dim, feedforward_dim, num_heads, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.model_dim = model_dim
        self.feedforward_dim = feedforward_dim
        self.num_heads = num_heads
        self.dropout = dropout
        self.attention_norm = keras.layers.LayerNormalization(epsilon=1e-5, name="attn_norm")
        self.attention = CausalSelfAttention(model_dim, num_heads, dropout, name="attention")
        self.feedforward_norm = keras.layers.LayerNormalization(epsilon=1e-5, name="ffn_norm")
        self.feedforward_in = keras.layers.Dense(feedforward_dim, activation="gelu",
                                                 name="ffn_in")
        self.feedforward_out = keras.layers.Dense(model_dim, name="ffn_out")
        self.dropout_layer = keras.layers.Dropout(dropout)

    def build(self, input_shape=None):
        shape = (None, None, self.model_dim)
        self.attention_norm.build(shape)
        self.attention.build(shape)
        self.feedforward_norm.build(shape)
        self.feedforward_in.build(shape)
        self.feedforward_out.build((None, None, self.feedforward_dim))
        self.built = True

    def call(self, x, attention_mask, key_cache=None, value_cache=None, index=0,
             training=None):
        attended, key_cache, value_cache = self.attention(
            self.attention_norm(x), attention_mask, key_cache=key_cache,
            value_cache=value_cache, index=index, training=training)
        x = x + self.dropout_layer(attended, training=training)
        update = self.feedforward_out(self.feedforward_in(self.feedforward_norm(x)))
        x = x + self.dropout_layer(update, training=training)
        return x, key_cache, value_cache

    def get_config(self):
        config = super().get_config()
        config.update(model_dim=self.model_dim, feedforward_dim=self.feedforward_dim,
                      num_heads=self.num_heads, dropout=self.dropout)
        return config


@keras.saving.register_keras_serializable(package="tfpg")
class TransformerBackbone(keras.layers.Layer):
    """Token + learned position embeddings, `num_layers` causal pre-norm blocks, final norm.

    Positions count real tokens only (`cumsum(padding_mask) - 1`), so a left-padded
    prompt is encoded exactly as the same prompt without padding.

    The cache is a dict: `key` and `value`, tuples with one `[B, S, heads, head_dim]`
    tensor per layer, `key_mask` bool `[B, S]` (which slots hold real tokens) and
    `length` int32 `[B]` (real tokens seen so far, the next position id).

    Example:
    >>> backbone = TransformerBackbone(vocab_size=10, embedding_dim=16, hidden_dim=32,
    ...                                num_heads=2, max_length=8)
    >>> hidden = backbone(tf.constant([[1, 5, 6]]))          # [1, 3, 16]
    """

    def __init__(self, vocab_size, embedding_dim=128, hidden_dim=256, num_layers=1,
                 num_heads=4, dropout=0.0, max_length=512, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.embedding_dim = embedding_dim
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.dropout = dropout
        self.max_length = max_length
        self.token_embedding = keras.layers.Embedding(vocab_size, embedding_dim,
                                                      name="token_embedding")
        self.position_embedding = keras.layers.Embedding(max_length, embedding_dim,
                                                         name="position_embedding")
        self.blocks = [TransformerBlock(embedding_dim, hidden_dim, num_heads, dropout,
                                        name=f"block_{i}") for i in range(num_layers)]
        self.final_norm = keras.layers.LayerNormalization(epsilon=1e-5, name="final_norm")
        self.dropout_layer = keras.layers.Dropout(dropout)

    @property
    def output_dim(self):
        return self.embedding_dim

    def build(self, input_shape=None):
        self.token_embedding.build(None)
        self.position_embedding.build(None)
        for block in self.blocks:
            block.build(None)
        self.final_norm.build((None, None, self.embedding_dim))
        self.built = True

    def initial_cache(self, batch_size, max_length):
        """Empty cache with room for `max_length` tokens (prompt + completion)."""
        head_dim = self.embedding_dim // self.num_heads
        shape = [batch_size, max_length, self.num_heads, head_dim]
        empty = tf.zeros(shape, self.compute_dtype)
        return {
            "key": tuple(empty for _ in self.blocks),
            "value": tuple(empty for _ in self.blocks),
            "key_mask": tf.zeros([batch_size, max_length], tf.bool),
            "length": tf.zeros([batch_size], tf.int32),
        }

    def _embed(self, token_ids, positions, training):
        x = self.token_embedding(token_ids) + self.position_embedding(positions)
        return self.dropout_layer(x, training=training)

    def call(self, token_ids, padding_mask=None, training=None):
        """token_ids [B, T] -> hidden [B, T, E] (no cache)."""
        if padding_mask is None:
            padding_mask = tf.not_equal(token_ids, 0)
        padding_mask = tf.cast(padding_mask, tf.bool)
        positions = tf.maximum(tf.cumsum(tf.cast(padding_mask, tf.int32), axis=1) - 1, 0)
        length = tf.shape(token_ids)[1]
        causal = tf.linalg.band_part(tf.ones([length, length], tf.bool), -1, 0)  # [T, T]
        attention_mask = tf.logical_and(causal[None], padding_mask[:, None, :])  # [B, T, T]
        x = self._embed(token_ids, positions, training)
        for block in self.blocks:
            x, _, _ = block(x, attention_mask, training=training)
        return self.final_norm(x)

    def call_with_cache(self, token_ids, cache, index, padding_mask=None, training=None):
        """Appends token_ids [B, T] at slot `index`; returns (hidden [B, T, E], cache)."""
        if padding_mask is None:
            padding_mask = tf.not_equal(token_ids, 0)
        padding_mask = tf.cast(padding_mask, tf.bool)
        new_tokens = tf.cast(padding_mask, tf.int32)
        positions = cache["length"][:, None] + tf.maximum(tf.cumsum(new_tokens, axis=1) - 1, 0)
        key_mask = keras.ops.slice_update(cache["key_mask"], [0, index], padding_mask)
        length, slots = tf.shape(token_ids)[1], tf.shape(key_mask)[1]
        # Query t sits at slot index + t and may see slots up to and including its own.
        query_slot = index + tf.range(length)[:, None]                            # [T, 1]
        causal = tf.range(slots)[None, :] <= query_slot                            # [T, S]
        attention_mask = tf.logical_and(causal[None], key_mask[:, None, :])        # [B, T, S]
        x = self._embed(token_ids, positions, training)
        keys, values = [], []
        for block, key_cache, value_cache in zip(self.blocks, cache["key"], cache["value"]):
            x, key_cache, value_cache = block(x, attention_mask, key_cache=key_cache,
                                              value_cache=value_cache, index=index,
                                              training=training)
            keys.append(key_cache)
            values.append(value_cache)
        cache = {"key": tuple(keys), "value": tuple(values), "key_mask": key_mask,
                 "length": cache["length"] + tf.reduce_sum(new_tokens, axis=1)}
        return self.final_norm(x), cache

    def get_config(self):
        config = super().get_config()
        config.update(vocab_size=self.vocab_size, embedding_dim=self.embedding_dim,
                      hidden_dim=self.hidden_dim, num_layers=self.num_layers,
                      num_heads=self.num_heads, dropout=self.dropout,
                      max_length=self.max_length)
        return config
