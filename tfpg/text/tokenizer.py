"""Word- and character-level tokenizer with in-graph string <-> id layers.

`Tokenizer` is the single source of truth for how text becomes token ids in tfpg.
The Python methods (`encode`, `decode`) serve data pipelines, rewards and logging;
the Keras layers `StringToIds` and `IdsToString` do exactly the same thing with
`tf.strings` / `tf.lookup` ops, so an exported SavedModel maps prompt strings to
completion strings without any Python from this package.

Id layout (fixed for every tokenizer):

    0 <pad>   1 <bos>   2 <eos>   3 <unk>   4.. learned tokens

Text-handling rules shared by the Python and in-graph paths:

* Word level splits on whitespace exactly like `str.split()` (every character for
  which `str.isspace()` is true, runs collapse, leading/trailing whitespace is
  ignored). An empty or whitespace-only text therefore has no tokens and encodes to
  `[bos]`. Decoding joins words with single spaces.
* Char level makes every Unicode code point a token, spaces and newlines included,
  so `decode(encode(s)) == s` whenever every character is in the vocabulary.
  Decoding joins characters with "".
* Special-token strings inside text ("<eos>", "<pad>", ...) are ordinary text, not
  control tokens: they encode to `unk_id`, so no user text can inject an EOS or pad.
* Invalid UTF-8: Python `encode` raises `ValueError`; the in-graph `StringToIds`
  layer cannot raise per row in a serving graph, so it replaces each invalid
  sequence with U+FFFD (which then encodes to `unk_id` unless it is in the vocabulary).
"""

import collections
import json
import os

import keras
import numpy as np
import tensorflow as tf

from tfpg.guards.locking import write_json_atomically  # noqa: F401 - also imported from here
from tfpg.hf.chat_template import ChatTemplateMixin
from tfpg.text.truncation import check_truncate, cut

_FORMAT = "tfpg.Tokenizer"
_VERSION = 1
_LEVELS = ("word", "char")
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")

# Every code point for which Python's str.isspace() is true. tf.strings.split only
# knows ASCII whitespace, so the in-graph word splitter first maps these to " " to
# split exactly where str.split() does.
_WHITESPACE = tuple(chr(c) for c in range(0x110000) if chr(c).isspace())
_WHITESPACE_RE = "[" + "".join("\\x{%x}" % ord(c) for c in _WHITESPACE) + "]+"


def _as_text(text):
    """Returns `text` as str; bytes must be valid UTF-8."""
    if isinstance(text, str):
        return text
    if isinstance(text, (bytes, np.bytes_)):
        try:
            return bytes(text).decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(
                f"text is not valid UTF-8: byte {e.start} of {bytes(text)[:40]!r}"
            ) from None
    raise TypeError(f"expected str or bytes, got {type(text).__name__}")


def _check_max_length(max_length):
    if max_length is not None and (not isinstance(max_length, (int, np.integer))
                                   or isinstance(max_length, bool) or max_length < 1):
        raise ValueError(f"max_length must be a positive int or None, got {max_length!r}")


# Registered so that rewards holding a tokenizer serialise in a trainer's Keras config.
@keras.saving.register_keras_serializable(package="tfpg")
class Tokenizer(ChatTemplateMixin):
    """Maps text to token ids and back, at word or character level.

    Build one from a corpus with `Tokenizer.from_texts`, or restore one with
    `Tokenizer.load`. `encode` prepends BOS and adds no EOS (a prompt ready to be
    continued); `decode` drops pad and BOS and stops at the first EOS.

    With a chat template (`tok.chat_template = "F.jinja"`), `apply_chat_template`
    renders conversations; its special tokens are no text, so a template gets no
    `bos_token` and a rendered chat is encoded with BOS prepended (`chat_adds_bos`).

    Args:
        vocabulary: list of str. The token strings, index = id. Must start with
            `SPECIAL_TOKENS` ("<pad>", "<bos>", "<eos>", "<unk>").
        level: "word" or "char".

    Example:

    >>> tok = Tokenizer.from_texts(["the cat sat", "the dog"], level="word")
    >>> tok.encode("the cat ran")
    [1, 4, 5, 3]
    >>> tok.decode([0, 1, 4, 5, 3, 2, 6])
    'the cat <unk>'
    """

    pad_id = 0
    bos_id = 1
    eos_id = 2
    unk_id = 3
    chat_adds_bos = True

    def __init__(self, vocabulary, level="word"):
        if level not in _LEVELS:
            raise ValueError(f"level must be 'word' or 'char', got {level!r}")
        vocabulary = list(vocabulary)
        if tuple(vocabulary[:len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise ValueError(
                f"vocabulary must start with {list(SPECIAL_TOKENS)}, "
                f"got {vocabulary[:len(SPECIAL_TOKENS)]}")
        for token in vocabulary[len(SPECIAL_TOKENS):]:
            if not isinstance(token, str):
                raise ValueError(f"vocabulary tokens must be str, got {token!r}")
            if token in SPECIAL_TOKENS:
                raise ValueError(f"special token {token!r} appears twice in the vocabulary")
            if level == "char" and len(token) != 1:
                raise ValueError(f"char-level tokens must be single characters, got {token!r}")
            if level == "word" and (not token or any(c.isspace() for c in token)):
                raise ValueError(f"word-level tokens must be non-empty without whitespace, "
                                 f"got {token!r}")
        if len(set(vocabulary)) != len(vocabulary):
            dupes = sorted(t for t, n in collections.Counter(vocabulary).items() if n > 1)
            raise ValueError(f"vocabulary has duplicate tokens: {dupes[:5]}")
        self._level = level
        self._vocabulary = vocabulary
        # Special strings are deliberately absent so text "<eos>" encodes to unk.
        self._ids = {t: i for i, t in enumerate(vocabulary) if i >= len(SPECIAL_TOKENS)}

    @classmethod
    def from_texts(cls, texts, level="word", max_vocab=None, min_frequency=1):
        """Builds a vocabulary from `texts`.

        Tokens are ordered by frequency (descending), ties by token string
        (ascending), so the result is deterministic. Tokens seen fewer than
        `min_frequency` times are dropped; `max_vocab` caps the total size,
        the 4 special tokens included.

        Example:
        >>> Tokenizer.from_texts(["b a b", "c"], max_vocab=6).vocabulary
        ['<pad>', '<bos>', '<eos>', '<unk>', 'b', 'a']
        """
        if level not in _LEVELS:
            raise ValueError(f"level must be 'word' or 'char', got {level!r}")
        if isinstance(texts, (str, bytes)):
            raise TypeError("texts must be a list of strings, not a single string")
        if max_vocab is not None and max_vocab < len(SPECIAL_TOKENS):
            raise ValueError(f"max_vocab must be >= {len(SPECIAL_TOKENS)} "
                             f"(the special tokens), got {max_vocab}")
        if min_frequency < 1:
            raise ValueError(f"min_frequency must be >= 1, got {min_frequency}")
        counts = collections.Counter()
        for text in texts:
            counts.update(_split(_as_text(text), level))
        for special in SPECIAL_TOKENS:
            counts.pop(special, None)
        ranked = sorted((t for t, n in counts.items() if n >= min_frequency),
                        key=lambda t: (-counts[t], t))
        if max_vocab is not None:
            ranked = ranked[:max_vocab - len(SPECIAL_TOKENS)]
        return cls(list(SPECIAL_TOKENS) + ranked, level=level)

    @property
    def level(self):
        """"word" or "char"."""
        return self._level

    @property
    def vocabulary(self):
        """List of token strings; index = id (a copy)."""
        return list(self._vocabulary)

    @property
    def vocabulary_size(self):
        """Number of ids, the 4 special tokens included."""
        return len(self._vocabulary)

    def token_to_id(self, token):
        """Id of a vocabulary token; special strings map to their ids, others to `unk_id`."""
        if token in SPECIAL_TOKENS:
            return SPECIAL_TOKENS.index(token)
        return self._ids.get(token, self.unk_id)

    def unknown_tokens(self, texts):
        """The distinct tokens of `texts` (a string or a list) outside the vocabulary,
        in order of appearance: the words or characters that `encode` turns into
        `unk_id` (a special string such as "<eos>" in text counts as unknown too)."""
        texts = [texts] if isinstance(texts, (str, bytes)) else texts
        unknown = {}
        for text in texts:
            for token in _split(_as_text(text), self._level):
                if token not in self._ids:
                    unknown.setdefault(token, None)
        return list(unknown)

    def id_to_token(self, token_id):
        """Token string of `token_id`; raises ValueError when out of range."""
        self._check_ids(np.asarray([token_id]))
        return self._vocabulary[int(token_id)]

    def encode(self, texts, max_length=None, add_bos=True, truncate="right"):
        """Encodes one text or a list of texts.

        Args:
            texts: str, bytes, list of str, np.ndarray or tf.Tensor. A str (or UTF-8
                bytes) -> list[int]; a list of them (or a 1-D numpy array / string
                tensor) -> list[list[int]].
            max_length: int or None. Maximum length of each returned sequence, BOS
                included.
            add_bos: bool. Prepend `bos_id` (prompts); False for BLEU references.
            truncate: `"right"` or `"left"`. What to drop from an over-long sequence.
                "right" keeps the first tokens (the default: the start of a prompt
                carries its meaning); "left" keeps the last tokens (BOS stays in
                front).

        Unknown tokens become `unk_id`; no EOS is added. Raises ValueError for
        bytes that are not valid UTF-8.

        Example:
        >>> tok = Tokenizer.from_texts(["a b c"])
        >>> tok.encode(["a b c", "  "], max_length=3)
        [[1, 4, 5], [1]]
        >>> tok.encode("a b c", max_length=3, truncate="left")
        [1, 5, 6]
        """
        _check_max_length(max_length)
        check_truncate(truncate)
        if isinstance(texts, tf.Tensor):
            texts = texts.numpy()
        if isinstance(texts, (str, bytes)):
            return self._encode_one(texts, max_length, add_bos, truncate)
        if isinstance(texts, np.ndarray):
            if texts.ndim != 1:
                raise ValueError(f"texts must be 1-D, got shape {texts.shape}")
            texts = texts.tolist()
        try:
            texts = list(texts)
        except TypeError:
            raise TypeError(f"expected str, bytes or a list of them, "
                            f"got {type(texts).__name__}") from None
        return [self._encode_one(t, max_length, add_bos, truncate) for t in texts]

    def _encode_one(self, text, max_length, add_bos, truncate):
        ids = [self._ids.get(t, self.unk_id) for t in _split(_as_text(text), self._level)]
        if max_length is not None:
            ids = cut(ids, max_length - 1 if add_bos else max_length, truncate)
        return [self.bos_id] + ids if add_bos else ids

    def decode(self, ids):
        """Decodes ids back to text.

        Args:
            ids: list of int, list of list of int, np.ndarray or tf.Tensor. A 1-D
                sequence -> str, or a batch (list of lists, numpy [B, T], tensor
                [B, T]) -> list[str].

        Pad and BOS are dropped wherever they occur, everything from the first
        EOS on is ignored, unk decodes to "<unk>". Raises ValueError for ids
        outside `[0, vocabulary_size)`.

        Example:
        >>> tok = Tokenizer.from_texts(["a b"])
        >>> tok.decode([[0, 1, 4, 5, 2, 4], [1, 3]])
        ['a b', '<unk>']
        """
        if isinstance(ids, (tf.Tensor, tf.Variable)):
            ids = ids.numpy()
        if isinstance(ids, np.ndarray):
            if ids.ndim == 1:
                return self._decode_one(ids)
            if ids.ndim == 2:
                return [self._decode_one(row) for row in ids]
            raise ValueError(f"ids must be 1-D or 2-D, got shape {ids.shape}")
        ids = list(ids)
        if ids and all(isinstance(row, (list, tuple, np.ndarray)) for row in ids):
            return [self._decode_one(np.asarray(row)) for row in ids]
        return self._decode_one(np.asarray(ids))

    def _decode_one(self, row):
        row = np.asarray(row)
        if row.ndim != 1:
            raise ValueError(f"each id sequence must be 1-D, got shape {row.shape}")
        if row.size and not np.issubdtype(row.dtype, np.integer):
            raise ValueError(f"ids must be integers, got dtype {row.dtype}")
        self._check_ids(row)
        tokens = []
        for i in row.tolist():
            if i == self.eos_id:
                break
            if i not in (self.pad_id, self.bos_id):
                tokens.append(self._vocabulary[i])
        return (" " if self._level == "word" else "").join(tokens)

    def _check_ids(self, ids):
        bad = ids[(ids < 0) | (ids >= len(self._vocabulary))]
        if bad.size:
            raise ValueError(f"token id {int(bad[0])} is out of range for a vocabulary "
                             f"of size {len(self._vocabulary)}")

    def string_to_ids_layer(self, max_length=None, truncate="right", name=None):
        """Returns a `StringToIds` layer: string [B] -> int32 [B, P], left-padded."""
        return StringToIds(self._vocabulary, level=self._level, max_length=max_length,
                           truncate=truncate, name=name)

    def ids_to_string_layer(self, name=None):
        """Returns an `IdsToString` layer: int [B, T] -> string [B]."""
        return IdsToString(self._vocabulary, level=self._level, name=name)

    def get_config(self):
        return {"vocabulary": list(self._vocabulary), "level": self._level}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def save(self, path):
        """Writes the tokenizer as versioned JSON, atomically (temp file + rename)."""
        path = os.fspath(path)
        payload = {"format": _FORMAT, "version": _VERSION, "level": self._level,
                   "vocabulary": self._vocabulary}
        write_json_atomically(path, self.save_chat_template(payload))

    @classmethod
    def load(cls, path):
        """Reads a file written by `save`.

        Raises FileNotFoundError for a missing file and ValueError (naming the
        path and the problem) for anything that is not a valid tokenizer file.
        """
        path = os.fspath(path)
        payload = read_versioned_json(path, _FORMAT, _VERSION, "tfpg tokenizer file",
                                      "tokenizer")
        try:
            return cls(payload["vocabulary"], level=payload["level"]).restore_chat_template(
                payload)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: corrupt tokenizer file ({e})") from None

    def __repr__(self):
        return f"Tokenizer(level={self._level!r}, vocabulary_size={self.vocabulary_size})"


def read_versioned_json(path, format_name, version, kind, versioned, where=None):
    """The JSON object in `path` that names itself `{"format": format_name, "version":
    version}` (tfpg's tokenizer files and the marker files of exports and saved
    models), or a one-line ValueError: "{path}: not a {kind}" (invalid JSON, or no such
    "format") or "{where}: unsupported {versioned} version". A missing file is a
    FileNotFoundError."""
    try:
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a {kind} (invalid JSON: "
                         f"{str(e).splitlines()[0]})") from None
    if not isinstance(info, dict) or info.get("format") != format_name:
        raise ValueError(f"{path}: not a {kind} (missing \"format\": \"{format_name}\")")
    if info.get("version") != version:
        raise ValueError(f"{where or path}: unsupported {versioned} version "
                         f"{info.get('version')!r} (this tfpg reads version {version})")
    return info


def read_json_marker(path, format_name, version, marker, versioned, where=None):
    """`read_versioned_json` of a marker file: "not a {marker} marker" where it is none."""
    return read_versioned_json(path, format_name, version, f"{marker} marker", versioned, where)


def _split(text, level):
    return text.split() if level == "word" else list(text)


def _vocabulary_table(vocabulary):
    """Hash table token -> id over the learned tokens; everything else -> unk."""
    learned = vocabulary[len(SPECIAL_TOKENS):]
    values = list(range(len(SPECIAL_TOKENS), len(vocabulary)))
    if not learned:
        # A table needs at least one key; "" is never produced by either splitter.
        learned, values = [""], [Tokenizer.unk_id]
    keys = tf.constant(learned, tf.string)
    values = tf.constant(values, tf.int32)
    return tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(keys, values),
                                     default_value=Tokenizer.unk_id)


class StringToIds(keras.layers.Layer):
    """In-graph `Tokenizer.encode` + left padding: string [B] -> int32 [B, P].

    Row i equals `tokenizer.encode(texts[i], max_length, truncate=truncate)`
    left-padded with 0 to P, the longest row in the batch (BOS first, no EOS).
    Invalid UTF-8 is replaced with U+FFFD instead of raising.

    Example:
    >>> tok = Tokenizer.from_texts(["a b c"])
    >>> tok.string_to_ids_layer()(tf.constant(["a b", "c"])).numpy().tolist()
    [[1, 4, 5], [0, 1, 6]]
    """

    def __init__(self, vocabulary, level="word", max_length=None, truncate="right", **kwargs):
        super().__init__(**kwargs)
        # Validates the vocabulary/level pair the same way the Python path does.
        Tokenizer(vocabulary, level)
        _check_max_length(max_length)
        check_truncate(truncate)
        self.vocabulary = list(vocabulary)
        self.level = level
        self.max_length = None if max_length is None else int(max_length)
        self.truncate = truncate
        # Created here (not lazily in call) so the table is tracked and exported.
        self._table = _vocabulary_table(self.vocabulary)
        self.built = True

    def call(self, texts):
        texts = tf.convert_to_tensor(texts, tf.string)  # [B]
        texts = tf.strings.unicode_transcode(texts, "UTF-8", "UTF-8", errors="replace",
                                             replacement_char=0xFFFD)
        if self.level == "word":
            tokens = tf.strings.split(tf.strings.regex_replace(texts, _WHITESPACE_RE, " "))
        else:
            tokens = tf.strings.unicode_split(texts, "UTF-8")
        ids = tf.ragged.map_flat_values(self._table.lookup, tokens)  # [B, (n)]
        if self.max_length is not None:
            ids = cut(ids, self.max_length - 1, self.truncate)
        bos = tf.fill([tf.shape(texts)[0], 1], Tokenizer.bos_id)
        ids = tf.concat([bos, ids], axis=1)  # [B, (n + 1)]
        return _left_pad(ids)

    def compute_output_spec(self, texts):
        return keras.KerasTensor((texts.shape[0], None), dtype="int32")

    def get_config(self):
        config = super().get_config()
        config.update({"vocabulary": list(self.vocabulary), "level": self.level,
                       "max_length": self.max_length, "truncate": self.truncate})
        return config


def _left_pad(ragged):
    """Ragged int32 [B, (n)] -> dense [B, P] with each row right-aligned, 0 in front."""
    lengths = tf.cast(ragged.row_lengths(), tf.int32)  # [B]
    width = tf.reduce_max(tf.concat([lengths, [0]], axis=0))
    row = tf.cast(ragged.value_rowids(), tf.int32)  # [N]
    starts = tf.cast(ragged.row_starts(), tf.int32)  # [B]
    position = tf.range(tf.size(row), dtype=tf.int32) - tf.gather(starts, row)  # within row
    column = position + tf.gather(width - lengths, row)
    return tf.scatter_nd(tf.stack([row, column], axis=1), ragged.flat_values,
                         tf.stack([tf.size(lengths), width]))


class IdsToString(keras.layers.Layer):
    """In-graph `Tokenizer.decode`: int [B, T] -> string [B].

    Drops pad and BOS, stops at the first EOS, joins words with " " (chars with
    ""). Ids outside the vocabulary decode to "<unk>" instead of raising, because
    a serving graph has no good way to report a per-row error.

    Example:
    >>> tok = Tokenizer.from_texts(["a b"])
    >>> tok.ids_to_string_layer()(tf.constant([[0, 1, 4, 5, 2, 4]])).numpy().tolist()
    [b'a b']
    """

    def __init__(self, vocabulary, level="word", **kwargs):
        super().__init__(**kwargs)
        Tokenizer(vocabulary, level)
        self.vocabulary = list(vocabulary)
        self.level = level
        self.built = True

    def call(self, ids):
        # int64 so that no id can wrap into range before the range check below.
        ids = tf.cast(ids, tf.int64)  # [B, T]
        size = len(self.vocabulary)
        is_eos = tf.cast(tf.equal(ids, Tokenizer.eos_id), tf.int32)
        before_eos = tf.equal(tf.cumsum(is_eos, axis=1), 0)  # [B, T], false from EOS on
        keep = before_eos & (ids != Tokenizer.pad_id) & (ids != Tokenizer.bos_id)
        in_range = (ids >= 0) & (ids < size)
        ids = tf.where(in_range, ids, tf.constant(Tokenizer.unk_id, tf.int64))
        tokens = tf.gather(tf.constant(self.vocabulary, tf.string), ids)  # [B, T]
        tokens = tf.ragged.boolean_mask(tokens, keep)  # [B, (n)]
        return tf.strings.reduce_join(tokens, axis=1,
                                      separator=" " if self.level == "word" else "")

    def compute_output_spec(self, ids):
        return keras.KerasTensor((ids.shape[0],), dtype="string")

    def get_config(self):
        config = super().get_config()
        config.update({"vocabulary": list(self.vocabulary), "level": self.level})
        return config
