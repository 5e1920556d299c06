"""`PolicyNetwork`: a causal language model whose softmax is the policy."""

import keras

from tfpg.models.backbones import BackboneModel
from tfpg.models.policy import Policy


@keras.saving.register_keras_serializable(package="tfpg")
class PolicyNetwork(BackboneModel, Policy):
    """Embedding + LSTM / GRU / Transformer + a vocabulary projection: tfpg's own
    `tfpg.models.Policy`.

    `call(token_ids)` gives next-token logits (float32, also under mixed precision) for
    every position; `call_with_cache` runs one decoding step (or a prompt prefill) from
    a cache. Token id 0 is padding: prompts are left-padded and padded positions neither
    change the recurrent state nor are attended to, so padding never changes a
    prediction. Pass `padding_mask` explicitly when a sampled completion may contain id 0.

    For the Transformer, `embedding_dim` is the model width and `hidden_dim` the
    feed-forward width; for LSTM / GRU `hidden_dim` is the state size.

    Example:
    >>> policy = PolicyNetwork(vocab_size=20, embedding_dim=16, hidden_dim=32)
    >>> logits = policy(tf.constant([[1, 7, 9]]))            # [1, 3, 20] float32
    """

    # Special ids: `Policy`'s defaults, tfpg's `Tokenizer` convention (pad 0, BOS 1,
    # EOS 2; pad and BOS never sampled).
    head_name = "lm_head"           # the vocabulary projection: logits [..., V]
    head_units = None

    @property
    def is_positional(self):
        """The Transformer's position table bounds a sequence to `max_length`."""
        return self.backbone_type == "transformer"

    def hidden_states(self, token_ids, padding_mask=None, training=None):
        """token_ids int [B, T] -> the backbone's hidden states [B, T, H]."""
        return self.backbone(token_ids, padding_mask=padding_mask, training=training)

    def head_logits(self, hidden):
        """Hidden states [..., H] -> logits float32 [..., V] (the trainers run this
        head on completion positions only, in chunks: `tfpg.algorithms.token_scores`)."""
        return self.lm_head(hidden)

    def initial_cache(self, batch_size, max_length):
        """An empty decoding cache for `batch_size` sequences of up to `max_length` tokens."""
        if not self.built:  # decoding may come before any full call
            self.build()
        return self.backbone.initial_cache(batch_size, max_length)

    def call_with_cache(self, token_ids, cache, index, padding_mask=None, training=None,
                        last_only=False, in_place=False):
        """Feeds token_ids [B, T] at position `index` of the cache.

        Returns (logits float32 [B, T, V], hidden [B, T, H], updated cache). With
        `last_only=True` logits and hidden are those of the last position only
        ([B, 1, V], [B, 1, H]): a prompt prefill then skips the vocabulary projection
        of every other position. `in_place=True` lets the backbone update the buffers
        of `cache` (from `initial_cache`) instead of copying them; the cache passed in
        must then not be used again.
        """
        hidden, cache = self.backbone.call_with_cache(token_ids, cache, index,
                                                      padding_mask, training,
                                                      in_place=in_place)
        if last_only:
            hidden = hidden[:, -1:]
        return self.lm_head(hidden), hidden, cache
