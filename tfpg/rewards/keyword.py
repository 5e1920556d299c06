"""`Keyword`: the fraction of keywords that occur in the completion."""

import tensorflow as tf

from tfpg.rewards.base import Reward, completion_tokens


class Keyword(Reward):
    """Fraction of the keywords found in the completion (before EOS), in [0, 1].

    Keywords are fixed for the whole run (`keywords`) or per prompt
    (`keywords_key`):

    * `keywords`: a list of token ids, of id sequences (multi-token keywords,
      matched as contiguous runs) or of strings encoded with `tokenizer`
      (a string that encodes to an unknown token is an error);
    * `keywords_key`: batch column of single-token keyword ids, int [B, W]
      (0 = padding); rows without keywords score 0.

    Args:
        keywords: see above.
        tokenizer: needed when `keywords` are strings.
        keywords_key: see above; exactly one of `keywords` / `keywords_key`.
        eos_id: where completions stop.
        name: defaults to "Keyword".

    >>> reward = Keyword([7, [8, 9]])
    >>> reward(None, tf.constant([[7, 8, 5, 9, 2]]), tf.ones([1, 5]), {}).numpy()
    array([0.5], dtype=float32)
    """

    def __init__(self, keywords=None, tokenizer=None, keywords_key=None, eos_id=2, name=None):
        super().__init__(name=name)
        if (keywords is None) == (keywords_key is None):
            raise ValueError("pass exactly one of keywords= (fixed) or keywords_key= "
                             "(a batch column)")
        self.keywords = None if keywords is None else list(keywords)
        self.tokenizer = tokenizer
        self.keywords_key = keywords_key
        self.eos_id = eos_id
        self._keyword_ids = None if keywords is None else self._encode(self.keywords)

    def get_config(self):
        return {"keywords": self.keywords, "tokenizer": self.tokenizer,
                "keywords_key": self.keywords_key, "eos_id": self.eos_id, "name": self.name}

    def _encode(self, keywords):
        """keywords -> int32 [W, L], each row one keyword, right-padded with 0."""
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
            if not ids or min(ids) <= 0:
                raise ValueError(f"keyword {keyword!r} must be non-empty positive ids")
            rows.append(ids)
        width = max(len(r) for r in rows)
        return tf.constant([r + [0] * (width - len(r)) for r in rows], tf.int32)

    def __call__(self, prompt_ids, completion_ids, completion_mask, batch):
        tokens = completion_tokens(completion_ids, completion_mask, self.eos_id)  # [B, N]
        if self.keywords_key is not None:
            return self._per_prompt(tokens, tf.cast(batch[self.keywords_key], tf.int32))
        keywords = self._keyword_ids  # [W, L]
        length = keywords.shape[1]
        padded = tf.pad(tokens, [[0, 0], [0, length]])  # [B, N + L]
        n = tf.shape(tokens)[1]
        match = None
        for j in range(length):
            # Token at window start + j equals keyword position j (or the keyword ended).
            window = padded[:, j:j + n]  # [B, N]
            ok = tf.equal(window[:, :, None], keywords[None, None, :, j]) | tf.equal(
                keywords[None, None, :, j], 0)  # [B, N, W]
            match = ok if match is None else match & ok
        present = tf.reduce_any(match, axis=1)  # [B, W]
        return tf.reduce_mean(tf.cast(present, tf.float32), axis=1)

    @staticmethod
    def _per_prompt(tokens, keywords):
        """tokens int32 [B, N], keywords int32 [B, W] -> float32 [B]."""
        real = keywords > 0  # [B, W]
        present = tf.reduce_any(tf.equal(tokens[:, :, None], keywords[:, None, :]), axis=1)
        found = tf.reduce_sum(tf.cast(present & real, tf.float32), axis=1)
        return found / tf.maximum(tf.reduce_sum(tf.cast(real, tf.float32), axis=1), 1.0)
