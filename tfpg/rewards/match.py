"""`ExactMatch`: 1 when the completion equals the reference answer, else 0."""

import numpy as np
import tensorflow as tf

from tfpg.rewards.base import Reward, compact_ids, completion_tokens


def _as_text(value):
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class ExactMatch(Reward):
    """1.0 when the completion (cut before EOS) equals the answer, else 0.0.

    `batch[answer_key]` is either

    * token ids, int [B, R] (0 = padding, no BOS/EOS) or [B, K, R] (any of K
      answers; all-zero rows are missing): compared id by id in-graph, ignoring
      padding; or
    * strings [B]: the completion is decoded with `tokenizer` and compared as
      text (in-graph through the tokenizer's `IdsToString` layer).

    With a `normalizer` (a Python `str -> str`, e.g. `str.strip` or
    `lambda s: s.lower()`), both sides are decoded to text and normalised before
    comparing, through `tf.numpy_function`; id answers are decoded with the
    tokenizer too.

    Args:
        answer_key: batch column with the answers ("answer" for strings,
            "reference" for the id references of `tfpg.data.prompt_dataset`).
        tokenizer: a `tfpg.Tokenizer`; needed for string answers or a normalizer.
        normalizer: optional Python callable applied to both texts.
        eos_id: where completions stop.
        name: defaults to "ExactMatch".

    >>> reward = ExactMatch(answer_key="reference")
    >>> reward(None, tf.constant([[7, 2, 0], [7, 8, 2]]), tf.constant([[1., 1., 0.], [1., 1., 1.]]),
    ...        {"reference": tf.constant([[7, 0], [7, 9]])}).numpy()
    array([1., 0.], dtype=float32)
    """

    def __init__(self, answer_key="answer", tokenizer=None, normalizer=None, eos_id=2,
                 name=None):
        super().__init__(name=name)
        if normalizer is not None and not callable(normalizer):
            raise TypeError(f"normalizer must be callable, got {type(normalizer).__name__}")
        if normalizer is not None and tokenizer is None:
            raise ValueError("ExactMatch with a normalizer needs a tokenizer to decode "
                             "completions to text")
        self.answer_key = answer_key
        self.tokenizer = tokenizer
        self.normalizer = normalizer
        self.eos_id = eos_id

    def get_config(self):
        return {"answer_key": self.answer_key, "tokenizer": self.tokenizer,
                "normalizer": self.normalizer, "eos_id": self.eos_id, "name": self.name}

    def __call__(self, prompt_ids, completion_ids, completion_mask, batch):
        if self.answer_key not in batch:
            raise KeyError(f"reward {self.name} needs batch[{self.answer_key!r}]; the "
                           f"batch has {sorted(batch)}")
        answer = tf.convert_to_tensor(batch[self.answer_key])
        as_text = self.normalizer is not None or answer.dtype == tf.string
        # Decoded as text, the cut ids are the tokenizer's pad (a KerasHub id 0 is a
        # real token); compared as ids, 0 is the references' padding.
        pad_id = getattr(self.tokenizer, "pad_id", 0) if as_text else 0
        tokens = completion_tokens(completion_ids, completion_mask, self.eos_id,
                                   pad_id)                                  # [B, N]
        if self.normalizer is not None:
            return self._match_normalized(tokens, answer)
        if answer.dtype == tf.string:
            return self._match_text(tokens, answer)
        return self._match_ids(tokens, tf.cast(answer, tf.int32))

    def _match_ids(self, tokens, answer):
        """tokens int32 [B, N], answer int32 [B, R] or [B, K, R] -> float32 [B]."""
        several = answer.shape.rank == 3
        if not several:
            answer = answer[:, None, :]  # [B, 1, R]
        hyp, _ = compact_ids(tokens)  # [B, N]
        ref, ref_len = compact_ids(answer)  # [B, K, R]
        width = tf.maximum(tf.shape(hyp)[1], tf.shape(ref)[2])
        hyp = tf.pad(hyp, [[0, 0], [0, width - tf.shape(hyp)[1]]])
        ref = tf.pad(ref, [[0, 0], [0, 0], [0, width - tf.shape(ref)[2]]])
        same = tf.reduce_all(tf.equal(hyp[:, None, :], ref), axis=-1)  # [B, K]
        if several:
            same &= ref_len > 0  # missing answers match nothing
        return tf.cast(tf.reduce_any(same, axis=1), tf.float32)

    def _match_text(self, tokens, answer):
        """tokens int32 [B, N], answer string [B] -> float32 [B]."""
        if self.tokenizer is None:
            raise ValueError(f"reward {self.name}: batch[{self.answer_key!r}] holds strings, "
                             "so ExactMatch needs tokenizer= to decode completions")
        if hasattr(self.tokenizer, "ids_to_string_layer"):
            text = self.tokenizer.ids_to_string_layer()(tokens)  # [B]
            return tf.cast(tf.equal(text, answer), tf.float32)
        return self._match_normalized(tokens, answer)

    def _match_normalized(self, tokens, answer):
        normalize = self.normalizer or (lambda s: s)

        def match(ids, answers):
            completions = [normalize(t) for t in self.tokenizer.decode(ids)]
            if answers.dtype == object:  # strings [B]
                targets = [[_as_text(a)] for a in answers]
            else:  # ids [B, R] or [B, K, R]
                several = answers.ndim == 3
                rows = answers if several else answers[:, None, :]
                targets = [[self.tokenizer.decode(r) for r in row if r.any() or not several]
                           for row in rows]
            return np.asarray([float(c in {normalize(t) for t in ts})
                               for c, ts in zip(completions, targets)], np.float32)

        out = tf.numpy_function(match, [tokens, answer], tf.float32, name="exact_match")
        out.set_shape(tokens.shape[:1])
        return out  # [B]
