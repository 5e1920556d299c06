"""`Keyword`: the fraction of keywords that occur in the completion."""

import keras
import tensorflow as tf

from tfpg.rewards.base import Reward, completion_tokens, id_mask


@keras.saving.register_keras_serializable(package="tfpg")
class Keyword(Reward):
    """Fraction of the keywords found in the completion (before EOS), in [0, 1].

    Keywords are fixed for the whole run (`keywords`) or per prompt
    (`keywords_key`):

    * `keywords`: a list of token ids, of id sequences (multi-token keywords,
      matched as contiguous runs) or of strings encoded with `tokenizer`
      (a string that encodes to an unknown token is an error);
    * `keywords_key`: batch column of single-token keyword ids, int [B, W], whose
      real entries are `batch[keywords_key + "_mask"]` when the batch has it,
      else the ids other than `pad_id`; rows without keywords score 0.

    The completion's tokens are those of `completion_mask` before EOS; any id,
    0 included (a real token in KerasHub vocabularies), can be a keyword.

    Args:
        keywords: list or None. See above.
        tokenizer: `tfpg.Tokenizer` or None. Needed when `keywords` are strings.
        keywords_key: str or None. See above; exactly one of `keywords` /
            `keywords_key`.
        eos_id: int or None. Where completions stop: the tokenizer's / policy's EOS id
            (2 for tfpg's `Tokenizer`); None: every masked-in token counts.
        pad_id: int. The `keywords_key` column's padding when the batch has no mask
            column; None: the tokenizer's `pad_id`, or 0 (tfpg's `Tokenizer`).
        name: str or None. Defaults to "Keyword".

    Example:
    >>> reward = Keyword([7, [8, 9]])
    >>> reward(None, tf.constant([[7, 8, 5, 9, 2]]), tf.ones([1, 5]), {}).numpy()
    array([0.5], dtype=float32)
    """

    def __init__(self, keywords=None, tokenizer=None, keywords_key=None, eos_id=2, pad_id=None,
                 name=None):
        super().__init__(name=name)
        if (keywords is None) == (keywords_key is None):
            raise ValueError("pass exactly one of keywords= (fixed) or keywords_key= "
                             "(a batch column)")
        self.keywords = None if keywords is None else list(keywords)
        self.tokenizer = tokenizer
        self.keywords_key = keywords_key
        self.eos_id = eos_id
        self.pad_id = pad_id
        if keywords is not None:
            self._keyword_ids, self._keyword_mask = self._encode(self.keywords)

    def get_config(self):
        return {"keywords": self.keywords, "tokenizer": self.tokenizer,
                "keywords_key": self.keywords_key, "eos_id": self.eos_id,
                "pad_id": self.pad_id, "name": self.name}

    def _encode(self, keywords):
        """keywords -> (ids int32 [W, L], mask bool [W, L]): each row one keyword,
        right-padded (id 0 can be a keyword token, so the mask tells the end)."""
        if not keywords:
            raise ValueError("keywords must not be empty")
        rows = []
        for keyword in keywords:
            if isinstance(keyword, (str, bytes)):
                if self.tokenizer is None:
                    raise ValueError(f"keyword {keyword!r} is a string: pass tokenizer= "
                                     "to encode it")
                ids = self.tokenizer.encode(keyword, add_bos=False)
                if not ids or self.tokenizer.unk_id in ids:
                    raise ValueError(f"keyword {keyword!r} is not in the tokenizer's "
                                     "vocabulary")
            elif isinstance(keyword, int):
                ids = [keyword]
            else:
                ids = [int(i) for i in keyword]
            if not ids or min(ids) < 0:
                raise ValueError(f"keyword {keyword!r} must be non-empty non-negative ids")
            rows.append(ids)
        width = max(len(r) for r in rows)
        return (tf.constant([r + [0] * (width - len(r)) for r in rows], tf.int32),
                tf.constant([[True] * len(r) + [False] * (width - len(r)) for r in rows]))

    def __call__(self, prompt_ids, completion_ids, completion_mask, batch):
        # Ids are non-negative: -1 at the cut positions matches no keyword.
        tokens = completion_tokens(completion_ids, completion_mask, self.eos_id,
                                   pad_id=-1)  # [B, N]
        if self.keywords_key is not None:
            if self.keywords_key not in batch:
                raise KeyError(f"reward {self.name} needs batch[{self.keywords_key!r}]; the "
                               f"batch has {sorted(batch)}")
            pad_id = self.pad_id if self.pad_id is not None else getattr(
                self.tokenizer, "pad_id", 0)
            real = id_mask(batch, self.keywords_key, pad_id) > 0  # [B, W]
            return self._per_prompt(tokens, tf.cast(batch[self.keywords_key], tf.int32), real)
        keywords, used = self._keyword_ids, self._keyword_mask  # [W, L]
        length = keywords.shape[1]
        padded = tf.pad(tokens, [[0, 0], [0, length]], constant_values=-1)  # [B, N + L]
        n = tf.shape(tokens)[1]
        match = None
        for j in range(length):
            # Token at window start + j equals keyword position j (or the keyword ended).
            window = padded[:, j:j + n]  # [B, N]
            ok = tf.equal(window[:, :, None], keywords[None, None, :, j]) | tf.logical_not(
                used[None, None, :, j])  # [B, N, W]
            match = ok if match is None else match & ok
        present = tf.reduce_any(match, axis=1)  # [B, W]
        return tf.reduce_mean(tf.cast(present, tf.float32), axis=1)

    @staticmethod
    def _per_prompt(tokens, keywords, real):
        """tokens int32 [B, N] (-1 = not a token), keywords int32 [B, W], real bool
        [B, W] -> float32 [B]."""
        present = tf.reduce_any(tf.equal(tokens[:, :, None], keywords[:, None, :]), axis=1)
        found = tf.reduce_sum(tf.cast(present & real, tf.float32), axis=1)
        return found / tf.maximum(tf.reduce_sum(tf.cast(real, tf.float32), axis=1), 1.0)
