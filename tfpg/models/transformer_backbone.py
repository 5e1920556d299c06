"""Causal pre-norm Transformer backbone with a key/value cache for decoding."""

import math

import keras
import tensorflow as tf

from tfpg.models.checkpointing import checkpointed
from tfpg.xla import in_xla_context

# A large finite negative instead of -inf: a row that is entirely masked (a left-padding
# query) then gets a harmless uniform softmax rather than NaN.
_MASKED_SCORE = -1e9


def _write_slots(cache, new, index, axis, in_place):
    """cache with new written at slots index..index+T-1 of `axis` (-1 or -2).

    Keys are cached as [B, H, D, S] (axis -1), values as [B, H, S, D] (axis -2).
    `in_place=True` overwrites the slots in cache's own buffer (`InplaceUpdate` on a
    flat view): O(B*T) work instead of a copy of the whole cache at every decoding
    step; the cache passed in is modified too. Under XLA (which has no such op, and
    updates loop buffers in place by itself) and by default, a functional update.
    """
    rank = len(cache.shape)
    if not in_place or in_xla_context():
        start = [0] * rank
        start[axis] = index
        return keras.ops.slice_update(cache, start, new)
    shape = tf.shape(cache)
    # Rows of the flat view: one element per slot for keys, a D-vector for values.
    width = 1 if axis == -1 else shape[-1]
    slots, length = shape[axis], tf.shape(new)[axis]
    outer = tf.reduce_prod(shape[:axis])
    rows = tf.range(outer)[:, None] * slots + index + tf.range(length)[None, :]  # [.., T]
    flat = tf.raw_ops.InplaceUpdate(x=tf.reshape(cache, [-1, width]),
                                    i=tf.reshape(rows, [-1]),
                                    v=tf.reshape(new, [-1, width]))
    return tf.reshape(flat, shape)


def _fresh_zeros(shape, dtype):
    """A zero tensor in a buffer of its own: `Empty` is stateful, so unlike tf.zeros
    it is never constant-folded or shared, and may be updated in place."""
    return tf.raw_ops.Empty(shape=shape, dtype=dtype, init=True)


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
             training=None, in_place=False):
        """x [B, T, E]; attention_mask bool [B, T, S] (S = T without a cache).

        With `key_cache` [B, heads, head_dim, S] and `value_cache`
        [B, heads, S, head_dim] the new keys and values are written at slots
        index..index+T-1 and attention runs over all S slots; `in_place=True` overwrites
        those slots in the cache's own buffers (see `TransformerBackbone.call_with_cache`).
        Returns (output [B, T, E], key_cache, value_cache).
        """
        batch, length = tf.shape(x)[0], tf.shape(x)[1]
        qkv = tf.reshape(self.qkv(x), [batch, length, 3, self.num_heads, self.head_dim])
        query, key, value = tf.unstack(tf.transpose(qkv, [2, 0, 3, 1, 4]))  # [B, H, T, D]
        if key_cache is None:
            scores = tf.matmul(query, key, transpose_b=True)             # [B, H, T, T]
        else:
            # Keys are cached transposed, [B, H, D, S], values as [B, H, S, D]: both
            # products are then plain batched matmuls that stream the cache once (a
            # transposed operand costs ~2x for a single query row).
            key_cache = _write_slots(key_cache, tf.transpose(key, [0, 1, 3, 2]), index,
                                     -1, in_place)
            value_cache = _write_slots(value_cache, value, index, -2, in_place)
            scores = tf.matmul(query, key_cache)                         # [B, H, T, S]
            value = value_cache                                          # [B, H, S, D]
        scores = scores / math.sqrt(self.head_dim)
        scores = tf.where(attention_mask[:, None, :, :], tf.cast(scores, tf.float32),
                          _MASKED_SCORE)
        weights = tf.cast(tf.nn.softmax(scores, axis=-1), x.dtype)  # [B, H, T, S]
        weights = self.dropout_layer(weights, training=training)
        attended = tf.transpose(tf.matmul(weights, value), [0, 2, 1, 3])  # [B, T, H, D]
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
             training=None, in_place=False):
        attended, key_cache, value_cache = self.attention(
            self.attention_norm(x), attention_mask, key_cache=key_cache,
            value_cache=value_cache, index=index, training=training, in_place=in_place)
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

    The cache is a dict: `key` and `value`, tuples with one tensor per layer (keys
    `[B, heads, head_dim, S]`, transposed for the score product; values
    `[B, heads, S, head_dim]`), `key_mask` bool `[B, S]` (which slots hold real tokens) and
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
        """Empty cache with room for `max_length` tokens (prompt + completion).

        Every key / value tensor has a buffer of its own, so that decoding may update
        them in place (`call_with_cache(..., in_place=True)`).
        """
        head_dim = self.embedding_dim // self.num_heads
        dtype = tf.as_dtype(self.compute_dtype)
        key_shape = tf.cast(tf.stack([batch_size, self.num_heads, head_dim, max_length]),
                            tf.int32)
        value_shape = tf.cast(tf.stack([batch_size, self.num_heads, max_length, head_dim]),
                              tf.int32)
        return {
            "key": tuple(_fresh_zeros(key_shape, dtype) for _ in self.blocks),
            "value": tuple(_fresh_zeros(value_shape, dtype) for _ in self.blocks),
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
            x = checkpointed(lambda x, block=block: block(x, attention_mask,
                                                          training=training)[0])(x)
        return self.final_norm(x)

    def call_with_cache(self, token_ids, cache, index, padding_mask=None, training=None,
                        in_place=False):
        """Appends token_ids [B, T] at slot `index`; returns (hidden [B, T, E], cache).

        `in_place=True` writes the new keys and values into the buffers of `cache`
        (made by `initial_cache`) instead of copying them: a decoding step then costs
        O(1) rather than O(S) in memory traffic for the update. The cache passed in is
        modified and must not be used again (`generate` hands each cache on once).
        """
        if padding_mask is None:
            padding_mask = tf.not_equal(token_ids, 0)
        padding_mask = tf.cast(padding_mask, tf.bool)
        new_tokens = tf.cast(padding_mask, tf.int32)
        positions = cache["length"][:, None] + tf.maximum(tf.cumsum(new_tokens, axis=1) - 1, 0)
        length, slots = tf.shape(token_ids)[1], tf.shape(cache["key_mask"])[1]
        # key_mask[:, index:index + T] = padding_mask, elementwise (no XLA op).
        slot_ids = tf.range(slots)
        in_window = tf.logical_and(slot_ids >= index, slot_ids < index + length)   # [S]
        written = tf.gather(padding_mask, tf.clip_by_value(slot_ids - index, 0, length - 1),
                            axis=1)                                                 # [B, S]
        key_mask = tf.where(in_window[None, :], written, cache["key_mask"])
        # Query t sits at slot index + t and may see slots up to and including its own.
        query_slot = index + tf.range(length)[:, None]                            # [T, 1]
        causal = tf.range(slots)[None, :] <= query_slot                            # [T, S]
        attention_mask = tf.logical_and(causal[None], key_mask[:, None, :])        # [B, T, S]
        x = self._embed(token_ids, positions, training)
        keys, values = [], []
        for block, key_cache, value_cache in zip(self.blocks, cache["key"], cache["value"]):
            x, key_cache, value_cache = block(x, attention_mask, key_cache=key_cache,
                                              value_cache=value_cache, index=index,
                                              training=training, in_place=in_place)
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
