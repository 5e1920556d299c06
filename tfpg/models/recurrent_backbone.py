"""LSTM / GRU backbone: token ids -> hidden states, with a state cache for decoding."""

import keras
import tensorflow as tf

_RNN_LAYERS = {"lstm": keras.layers.LSTM, "gru": keras.layers.GRU}


# ------------------------------------------------------------------ sequences
#
# Whole-sequence LSTM / GRU with the weights of a Keras cell and the semantics of the
# Keras layer (gates i, f, c, o / z, r, h with reset_after; a masked step keeps the
# state and repeats the previous output, zeros before the first real step). Faster
# than the Keras layer's generic loop on CPU because
#   * the input projection x @ W + b of all T steps is one [B*T, E] x [E, G] matmul;
#   * the backward pass is written out: per step only dh @ U^T runs in the loop, and
#     the weight gradients dU, dW, db are single matmuls over all B*T rows, instead
#     of T small [H, B] x [B, G] products summed with AddN.
# Only the recurrent matmul and elementwise gate work are left inside the loops.


def _zeros_if_none(gradient, like):
    return tf.zeros_like(like) if gradient is None else gradient


def _project(x, kernel, bias):
    """x [B, T, E] @ kernel [E, G] + bias [G] -> time-major [T, B, G]."""
    batch, length = tf.shape(x)[0], tf.shape(x)[1]
    flat = tf.matmul(tf.reshape(x, [-1, tf.shape(x)[-1]]), kernel) + bias
    # Explicit sizes, not -1: an empty batch has no elements to infer them from.
    return tf.transpose(tf.reshape(flat, [batch, length, tf.shape(kernel)[1]]), [1, 0, 2])


@tf.custom_gradient
def _lstm_recurrence(projected, mask, h0, c0, recurrent_kernel):
    """projected [T, B, 4H] (x W + b), mask bool [T, B, 1], state [B, H] each ->
    (outputs [T, B, H], h [B, H], c [B, H])."""
    length, dtype = tf.shape(projected)[0], projected.dtype
    saved = [tf.TensorArray(dtype, size=length) for _ in range(5)]   # out, h, c, gates, tanh c

    def step(t, h, c, out, saved):
        i, f, g, o = tf.split(projected[t] + tf.matmul(h, recurrent_kernel), 4, axis=-1)
        i, f, g, o = tf.sigmoid(i), tf.sigmoid(f), tf.tanh(g), tf.sigmoid(o)
        c_new = f * c + i * g
        tanh_c = tf.tanh(c_new)
        h_new = o * tanh_c
        m = mask[t]
        out = tf.where(m, h_new, out)
        saved = [array.write(t, value) for array, value in
                 zip(saved, (out, h, c, tf.concat([i, f, g, o], -1), tanh_c))]
        return t + 1, tf.where(m, h_new, h), tf.where(m, c_new, c), out, saved

    _, h, c, _, saved = tf.while_loop(lambda t, *_: t < length, step,
                                      [tf.constant(0), h0, c0, tf.zeros_like(h0), saved])
    outputs, h_before, c_before, gates, tanh_cs = (array.stack() for array in saved)

    def grad(d_outputs, d_h, d_c):
        d_outputs = _zeros_if_none(d_outputs, outputs)
        d_h, d_c = _zeros_if_none(d_h, h), _zeros_if_none(d_c, c)
        kernel_t = tf.transpose(recurrent_kernel)
        zero = tf.zeros([], dtype)
        d_gates = tf.TensorArray(dtype, size=length)

        def back(t, d_h, d_c, d_out, d_gates):
            m = mask[t]
            d_out = d_out + d_outputs[t]
            # out_t = m ? h_new : out_{t-1};  (h_t, c_t) = m ? new : previous
            d_h_new = tf.where(m, d_out + d_h, zero)
            d_c_new = tf.where(m, d_c, zero)
            i, f, g, o = tf.split(gates[t], 4, axis=-1)
            tanh_c = tanh_cs[t]
            d_cell = d_c_new + d_h_new * o * (1 - tanh_c * tanh_c)
            d_z = tf.concat([d_cell * g * i * (1 - i), d_cell * c_before[t] * f * (1 - f),
                             d_cell * i * (1 - g * g), d_h_new * tanh_c * o * (1 - o)],
                            axis=-1)                                          # [B, 4H]
            d_h_prev = tf.matmul(d_z, kernel_t) + tf.where(m, zero, d_h)
            d_c_prev = d_cell * f + tf.where(m, zero, d_c)
            return t - 1, d_h_prev, d_c_prev, tf.where(m, zero, d_out), d_gates.write(t, d_z)

        _, d_h0, d_c0, _, d_gates = tf.while_loop(
            lambda t, *_: t >= 0, back, [length - 1, d_h, d_c, tf.zeros_like(d_h), d_gates])
        d_gates = d_gates.stack()                                             # [T, B, 4H]
        d_kernel = tf.matmul(tf.reshape(h_before, [-1, tf.shape(h0)[-1]]),
                             tf.reshape(d_gates, [-1, tf.shape(d_gates)[-1]]),
                             transpose_a=True)
        return d_gates, None, d_h0, d_c0, d_kernel

    return (outputs, h, c), grad


@tf.custom_gradient
def _gru_recurrence(projected, mask, h0, recurrent_kernel, recurrent_bias):
    """projected [T, B, 3H] (x W + input bias), mask bool [T, B, 1], h0 [B, H] ->
    (outputs [T, B, H], h [B, H]); Keras GRU with reset_after=True."""
    length, dtype = tf.shape(projected)[0], projected.dtype
    saved = [tf.TensorArray(dtype, size=length) for _ in range(3)]   # out, h, gates

    def step(t, h, out, saved):
        x_z, x_r, x_h = tf.split(projected[t], 3, axis=-1)
        inner = tf.matmul(h, recurrent_kernel) + recurrent_bias
        h_z, h_r, h_h = tf.split(inner, 3, axis=-1)
        z, r = tf.sigmoid(x_z + h_z), tf.sigmoid(x_r + h_r)
        n = tf.tanh(x_h + r * h_h)
        h_new = z * h + (1 - z) * n
        m = mask[t]
        out = tf.where(m, h_new, out)
        saved = [array.write(t, value) for array, value in
                 zip(saved, (out, h, tf.concat([z, r, n, h_h], -1)))]
        return t + 1, tf.where(m, h_new, h), out, saved

    _, h, _, saved = tf.while_loop(lambda t, *_: t < length, step,
                                   [tf.constant(0), h0, tf.zeros_like(h0), saved])
    outputs, h_before, gates = (array.stack() for array in saved)

    def grad(d_outputs, d_h):
        d_outputs = _zeros_if_none(d_outputs, outputs)
        d_h = _zeros_if_none(d_h, h)
        kernel_t = tf.transpose(recurrent_kernel)
        zero = tf.zeros([], dtype)
        d_projected = tf.TensorArray(dtype, size=length)
        d_inner = tf.TensorArray(dtype, size=length)

        def back(t, d_h, d_out, d_projected, d_inner):
            m = mask[t]
            d_out = d_out + d_outputs[t]
            d_h_new = tf.where(m, d_out + d_h, zero)
            z, r, n, h_h = tf.split(gates[t], 4, axis=-1)
            d_n = d_h_new * (1 - z) * (1 - n * n)                 # through tanh
            d_z = d_h_new * (h_before[t] - n) * z * (1 - z)
            d_r = d_n * h_h * r * (1 - r)
            d_x = tf.concat([d_z, d_r, d_n], axis=-1)             # [B, 3H]
            d_hidden = tf.concat([d_z, d_r, d_n * r], axis=-1)    # [B, 3H]
            d_h_prev = (tf.matmul(d_hidden, kernel_t) + d_h_new * z
                        + tf.where(m, zero, d_h))
            return (t - 1, d_h_prev, tf.where(m, zero, d_out), d_projected.write(t, d_x),
                    d_inner.write(t, d_hidden))

        _, d_h0, _, d_projected, d_inner = tf.while_loop(
            lambda t, *_: t >= 0, back,
            [length - 1, d_h, tf.zeros_like(d_h), d_projected, d_inner])
        d_projected, d_inner = d_projected.stack(), d_inner.stack()         # [T, B, 3H]
        flat_inner = tf.reshape(d_inner, [-1, tf.shape(d_inner)[-1]])
        d_kernel = tf.matmul(tf.reshape(h_before, [-1, tf.shape(h0)[-1]]), flat_inner,
                             transpose_a=True)
        d_bias = tf.matmul(tf.ones([1, tf.shape(flat_inner)[0]], dtype), flat_inner)[0]
        return d_projected, None, d_h0, d_kernel, d_bias

    return (outputs, h), grad


def _run_sequence(cell, x, mask, state):
    """The Keras `cell`'s layer over x [B, T, E] with mask bool [B, T] from `state`.
    Returns (outputs [B, T, H], new state tuple)."""
    dtype = x.dtype
    kernel = tf.cast(cell.kernel, dtype)
    recurrent_kernel = tf.cast(cell.recurrent_kernel, dtype)
    bias = tf.cast(cell.bias, dtype)
    mask = tf.transpose(mask)[:, :, None]                                   # [T, B, 1]
    if isinstance(cell, keras.layers.LSTMCell):
        outputs, h, c = _lstm_recurrence(_project(x, kernel, bias), mask, state[0],
                                         state[1], recurrent_kernel)
        new_state = (h, c)
    else:
        outputs, h = _gru_recurrence(_project(x, kernel, bias[0]), mask, state[0],
                                     recurrent_kernel, bias[1])
        new_state = (h,)
    return tf.transpose(outputs, [1, 0, 2]), new_state


@keras.saving.register_keras_serializable(package="tfpg")
class RecurrentBackbone(keras.layers.Layer):
    """Embedding followed by `num_layers` stacked LSTM or GRU layers.

    The cache of a recurrent backbone is its state: a tuple with one entry per layer,
    each a tuple of `[B, hidden_dim]` tensors (`(h, c)` for LSTM, `(h,)` for GRU).
    Padding positions (mask 0) leave the state untouched, so a left-padded prompt ends
    in exactly the state of the same prompt without padding.

    Example:
    >>> backbone = RecurrentBackbone(vocab_size=10, embedding_dim=8, hidden_dim=16)
    >>> hidden = backbone(tf.constant([[1, 5, 6]]))          # [1, 3, 16]
    """

    def __init__(self, vocab_size, embedding_dim=128, hidden_dim=256, cell="lstm",
                 num_layers=1, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        if cell not in _RNN_LAYERS:
            raise ValueError(f"cell must be one of {sorted(_RNN_LAYERS)}, got {cell!r}")
        self.vocab_size = vocab_size
        self.embedding_dim = embedding_dim
        self.hidden_dim = hidden_dim
        self.cell = cell
        self.num_layers = num_layers
        self.dropout = dropout
        self.embedding = keras.layers.Embedding(vocab_size, embedding_dim, name="embedding")
        self.rnn_layers = [
            _RNN_LAYERS[cell](hidden_dim, return_sequences=True, return_state=True,
                              name=f"{cell}_{i}")
            for i in range(num_layers)
        ]
        self.dropout_layer = keras.layers.Dropout(dropout)

    @property
    def output_dim(self):
        return self.hidden_dim

    @property
    def _states_per_layer(self):
        return 2 if self.cell == "lstm" else 1

    def build(self, input_shape=None):
        self.embedding.build(None)
        width = self.embedding_dim
        for layer in self.rnn_layers:
            layer.build((None, None, width))
            width = self.hidden_dim
        self.built = True

    def initial_cache(self, batch_size, max_length=None):
        """Zero state for `batch_size` sequences (`max_length` is unused for RNNs)."""
        zeros = tf.zeros([batch_size, self.hidden_dim], self.compute_dtype)
        return tuple(tuple(zeros for _ in range(self._states_per_layer))
                     for _ in self.rnn_layers)

    def call(self, token_ids, padding_mask=None, training=None):
        hidden, _ = self.call_with_cache(token_ids, None, 0, padding_mask, training)
        return hidden

    def call_with_cache(self, token_ids, cache, index, padding_mask=None, training=None,
                        in_place=False):
        """Runs `token_ids` [B, T] from state `cache`; returns (hidden [B, T, H], cache).

        `index` (the position of the first token) and `in_place` are accepted for
        interface parity with the Transformer and unused: the state already summarises
        the past, and is small enough to be replaced at every step.
        """
        del index, in_place
        if padding_mask is None:
            padding_mask = tf.not_equal(token_ids, 0)
        padding_mask = tf.cast(padding_mask, tf.bool)
        x = self.dropout_layer(self.embedding(token_ids), training=training)
        if cache is None:
            cache = self.initial_cache(tf.shape(token_ids)[0])
        single_step = token_ids.shape[1] == 1
        new_cache = []
        for layer, state in zip(self.rnn_layers, cache):
            if single_step:
                # One decoding step: call the cell directly (no RNN loop machinery).
                output, new_state = layer.cell(x[:, 0], list(state), training=training)
                keep = padding_mask[:, 0:1]
                new_state = tuple(tf.where(keep, new, old)
                                  for new, old in zip(new_state, state))
                output = new_state[0][:, None, :]
            else:
                # The layer's weights and semantics, run by `_run_sequence` (faster
                # forward and backward than the layer's own loop, same results).
                output, new_state = _run_sequence(layer.cell, x, padding_mask, state)
            new_cache.append(new_state)
            x = self.dropout_layer(output, training=training)
        return x, tuple(new_cache)

    def get_config(self):
        config = super().get_config()
        config.update(vocab_size=self.vocab_size, embedding_dim=self.embedding_dim,
                      hidden_dim=self.hidden_dim, cell=self.cell,
                      num_layers=self.num_layers, dropout=self.dropout)
        return config
