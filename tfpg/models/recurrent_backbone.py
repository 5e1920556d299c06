"""LSTM / GRU backbone: token ids -> hidden states, with a state cache for decoding."""

import keras
import tensorflow as tf

_RNN_LAYERS = {"lstm": keras.layers.LSTM, "gru": keras.layers.GRU}


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
                output, *new_state = layer(x, mask=padding_mask, initial_state=list(state),
                                           training=training)
                new_state = tuple(new_state)
            new_cache.append(new_state)
            x = self.dropout_layer(output, training=training)
        return x, tuple(new_cache)

    def get_config(self):
        config = super().get_config()
        config.update(vocab_size=self.vocab_size, embedding_dim=self.embedding_dim,
                      hidden_dim=self.hidden_dim, cell=self.cell,
                      num_layers=self.num_layers, dropout=self.dropout)
        return config
