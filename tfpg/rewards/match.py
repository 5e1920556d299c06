"""`ExactMatch`: 1 when the completion equals the reference answer, else 0."""

import keras
import numpy as np
import tensorflow as tf

from tfpg.rewards.base import Reward, compact_ids, completion_token_mask, completion_tokens, id_mask


def _as_text(value):
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


@keras.saving.register_keras_serializable(package="tfpg")
class ExactMatch(Reward):
    """1.0 when the completion (cut before EOS) equals the answer, else 0.0.

    `batch[answer_key]` is either

    * token ids, int [B, R] (no BOS/EOS) or [B, K, R] (any of K answers; rows
      without a real token are missing): compared id by id in-graph. The real
      tokens are `batch[answer_key + "_mask"]` when the batch has it
      (`prompt_dataset`'s "reference_mask"), else the ids other than `pad_id`;
      on the completion side, `completion_mask` before EOS (id 0 is a real
      token in KerasHub vocabularies); or
    * strings [B]: the completion is decoded with `tokenizer` and compared as
      text (in-graph through the tokenizer's `IdsToString` layer).

    With a `normalizer` (a Python `str -> str`, e.g. `str.strip` or
    `lambda s: s.lower()`), both sides are decoded to text and normalised before
    comparing, through `tf.numpy_function`; id answers are decoded with the
    tokenizer too.

    Args:
        answer_key: str. Batch column with the answers ("answer" for strings,
            "reference" for the id references of `tfpg.data.prompt_dataset`).
        tokenizer: `tfpg.Tokenizer` or None. Needed for string answers or a normalizer.
        normalizer: callable or None. Python callable applied to both texts.
        eos_id: int or None. Where completions stop: the tokenizer's / policy's EOS id
            (2 for tfpg's `Tokenizer`); None: every masked-in token counts.
        pad_id: int or None. The id answers' padding when the batch has no mask column;
            None: the tokenizer's `pad_id`, or 0 (tfpg's `Tokenizer`) without one.
        name: str or None. Defaults to "ExactMatch".

    Example:
    >>> reward = ExactMatch(answer_key="reference")
    >>> reward(None, tf.constant([[7, 2, 0], [7, 8, 2]]), tf.constant([[1., 1., 0.], [1., 1., 1.]]),
    ...        {"reference": tf.constant([[7, 0], [7, 9]])}).numpy()
    array([1., 0.], dtype=float32)
    """

    def __init__(self, answer_key="answer", tokenizer=None, normalizer=None, eos_id=2,
                 pad_id=None, name=None):
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
        self.pad_id = pad_id

    def get_config(self):
        return {"answer_key": self.answer_key, "tokenizer": self.tokenizer,
                "normalizer": self.normalizer, "eos_id": self.eos_id, "pad_id": self.pad_id,
                "name": self.name}

    def _pad_id(self):
        if self.pad_id is not None:
            return self.pad_id
        return getattr(self.tokenizer, "pad_id", 0)

    def __call__(self, prompt_ids, completion_ids, completion_mask, batch):
        if self.answer_key not in batch:
            raise KeyError(f"reward {self.name} needs batch[{self.answer_key!r}]; the "
                           f"batch has {sorted(batch)}")
        answer = tf.convert_to_tensor(batch[self.answer_key])
        tokens = tf.cast(completion_ids, tf.int32)  # [B, N]
        keep = completion_token_mask(tokens, completion_mask, self.eos_id)  # [B, N]
        if answer.dtype == tf.string:
            if self.normalizer is not None:
                return self._match_normalized(tokens, keep, answer)
            return self._match_text(tokens, completion_mask, answer)
        answer_mask = id_mask(batch, self.answer_key, self._pad_id())  # like answer
        if self.normalizer is not None:
            return self._match_normalized(tokens, keep, answer, answer_mask)
        return self._match_ids(tokens, keep, tf.cast(answer, tf.int32), answer_mask)

    def _match_ids(self, tokens, keep, answer, answer_mask):
        """tokens int32 [B, N], keep [B, N], answer int32 [B, R] or [B, K, R] and its
        mask -> float32 [B]."""
        several = answer.shape.rank == 3
        if not several:
            answer, answer_mask = answer[:, None, :], answer_mask[:, None, :]  # [B, 1, R]
        hyp, hyp_len = compact_ids(tokens, keep)  # [B, N], [B]
        ref, ref_len = compact_ids(answer, answer_mask)  # [B, K, R], [B, K]
        width = tf.maximum(tf.shape(hyp)[1], tf.shape(ref)[2])
        hyp = tf.pad(hyp, [[0, 0], [0, width - tf.shape(hyp)[1]]])
        ref = tf.pad(ref, [[0, 0], [0, 0], [0, width - tf.shape(ref)[2]]])
        # Past their lengths both hold 0, which may be a real id: lengths must agree.
        same = tf.reduce_all(tf.equal(hyp[:, None, :], ref), axis=-1)  # [B, K]
        same &= tf.equal(hyp_len[:, None], ref_len)
        if several:
            same &= ref_len > 0  # missing answers match nothing
        return tf.cast(tf.reduce_any(same, axis=1), tf.float32)

    def _match_text(self, tokens, completion_mask, answer):
        """tokens int32 [B, N], answer string [B] -> float32 [B]."""
        if self.tokenizer is None:
            raise ValueError(f"reward {self.name}: batch[{self.answer_key!r}] holds strings, "
                             "so ExactMatch needs tokenizer= to decode completions")
        if hasattr(self.tokenizer, "ids_to_string_layer"):
            # The layer drops the tokenizer's pad id (never a KerasHub id 0 that is a
            # real token), so the cut ids become that.
            tokens = completion_tokens(tokens, completion_mask, self.eos_id,
                                       getattr(self.tokenizer, "pad_id", 0))  # [B, N]
            text = self.tokenizer.ids_to_string_layer()(tokens)  # [B]
            return tf.cast(tf.equal(text, answer), tf.float32)
        keep = completion_token_mask(tokens, completion_mask, self.eos_id)
        return self._match_normalized(tokens, keep, answer)

    def _match_normalized(self, tokens, keep, answer, answer_mask=None):
        """Decodes the masked-in ids of both sides in Python -> float32 [B]."""
        if self.tokenizer is None:
            raise ValueError(f"reward {self.name}: comparing as text needs tokenizer=")
        normalize = self.normalizer or (lambda s: s)

        def decode(ids, mask):  # [T] ids and mask -> text of the masked-in ids
            return self.tokenizer.decode([int(i) for i, m in zip(ids, mask) if m > 0])

        def match(ids, kept, answers, *masks):
            completions = [normalize(decode(r, m)) for r, m in zip(ids, kept)]
            if not masks:  # strings [B]
                targets = [[_as_text(a)] for a in answers]
            else:  # ids [B, R] or [B, K, R]
                several = answers.ndim == 3
                rows = answers if several else answers[:, None, :]
                row_masks = masks[0] if several else masks[0][:, None, :]
                targets = [[decode(r, m) for r, m in zip(row, mask) if m.any() or not several]
                           for row, mask in zip(rows, row_masks)]
            return np.asarray([float(c in {normalize(t) for t in ts})
                               for c, ts in zip(completions, targets)], np.float32)

        inputs = [tokens, keep, answer] + ([] if answer_mask is None else [answer_mask])
        out = tf.numpy_function(match, inputs, tf.float32, name="exact_match")
        out.set_shape(tokens.shape[:1])
        return out  # [B]
