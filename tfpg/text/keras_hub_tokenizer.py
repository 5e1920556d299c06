"""`KerasHubTokenizer`: a KerasHub tokenizer behind `tfpg.Tokenizer`'s interface.

KerasHub tokenizers (byte-pair: GPT-2, Llama 3, Qwen; SentencePiece: Gemma, Llama,
Mistral) differ from tfpg's own in their special ids, which come from the tokenizer,
never from a convention:

* `eos_id`: the tokenizer's end token; `bos_id`: its start token (None for Qwen,
  which has none). GPT-2 uses `<|endoftext|>` as both, as KerasHub's
  `GPT2CausalLMPreprocessor` does.
* `pad_id`: the tokenizer's pad token where it is a special token of its own (Gemma's
  `<pad>`, Qwen 3's `<|endoftext|>`); otherwise KerasHub's pad id is a real token
  (GPT-2's and Llama 3's id 0 is "!") and tfpg pads with the EOS id instead. Padding
  is told by a mask anyway (`prompt_dataset`'s "prompt_mask"); the pad id is only
  the filler.

`encode` prepends BOS (where the family has one) and adds no EOS; `decode` skips the
leading padding and BOS, stops at the first EOS and drops any other pad / BOS ids:
since the ids after a completion's EOS are the pad id (`tfpg.generate`), that works
also for GPT-2, where pad, BOS and EOS are one token.

The in-graph layers (`string_to_ids_layer`, `ids_to_string_layer`) run the KerasHub
tokenizer's TensorFlow ops, which come from `tensorflow_text`: a process that loads a
SavedModel exported with this tokenizer needs `import tensorflow_text` first.
"""

import base64
import os

import keras
import numpy as np
import tensorflow as tf

from tfpg.guards.locking import write_json_atomically
from tfpg.hf import import_hub_module
from tfpg.hf.chat_template import ChatTemplateMixin
from tfpg.text.tokenizer import _check_max_length, _left_pad, read_versioned_json
from tfpg.text.truncation import check_truncate, cut

FORMAT = "tfpg.KerasHubTokenizer"
VERSION = 1


def special_ids(hub_tokenizer):
    """(pad_id, bos_id, eos_id) of a KerasHub tokenizer, by the rules above."""
    eos = getattr(hub_tokenizer, "end_token_id", None)
    bos = getattr(hub_tokenizer, "start_token_id", None)
    pad = getattr(hub_tokenizer, "pad_token_id", None)
    try:
        specials = set(int(i) for i in hub_tokenizer.special_token_ids)
    except (AttributeError, ValueError):   # no vocabulary yet
        specials = set()
    if pad is None or int(pad) not in specials:
        pad = eos
    return tuple(None if i is None else int(i) for i in (pad, bos, eos))


def structural_ids(pad_id, bos_id, eos_id):
    """Ids that are never a completion token: pad and BOS, unless one is the EOS."""
    return tuple(sorted({i for i in (pad_id, bos_id) if i is not None and i != eos_id}))


def _kept_ids(ids, pad_id, bos_id, eos_id):
    """The ids of one row [T] that `decode` turns into text (numpy, int)."""
    ids = np.asarray(ids, np.int64)
    leading = {i for i in (pad_id, bos_id) if i is not None}
    start = 0
    while start < len(ids) and int(ids[start]) in leading:
        start += 1
    ids = ids[start:]
    if eos_id is not None:
        stops = np.flatnonzero(ids == eos_id)
        if stops.size:
            ids = ids[:stops[0]]
    dropped = list(structural_ids(pad_id, bos_id, eos_id))
    return ids[~np.isin(ids, dropped)] if dropped else ids


class KerasHubTokenizer(ChatTemplateMixin):
    """A `keras_hub.tokenizers.Tokenizer` with tfpg's `Tokenizer` interface.

    `apply_chat_template(messages)` renders a conversation with the chat template of
    the Hugging Face checkpoint it came from, or one set as `tok.chat_template`
    (`tfpg.hf.chat_template`); rendered chats are encoded without BOS, which the
    template writes.

    Args:
        hub_tokenizer: `keras_hub.tokenizers.Tokenizer`. A KerasHub tokenizer with a
            vocabulary (e.g. `causal_lm.preprocessor.tokenizer`).

    Example:
    >>> tok = tfpg.KerasHubTokenizer.from_preset("gpt2_base_en")  # doctest: +SKIP
    >>> # ids: [50256, ...], <|endoftext|> first
    >>> ids = tok.encode("3 + 4 =")  # doctest: +SKIP
    >>> tok.decode(ids + [tok.eos_id, 11])  # doctest: +SKIP
    '3 + 4 ='
    """

    def __init__(self, hub_tokenizer):
        self.hub_tokenizer = hub_tokenizer
        self.pad_id, self.bos_id, self.eos_id = special_ids(hub_tokenizer)
        if self.eos_id is None:
            raise ValueError(f"{type(hub_tokenizer).__name__} has no end token (or no "
                             "vocabulary yet); tfpg needs its EOS id")

    @classmethod
    def from_preset(cls, preset):
        """The tokenizer of a KerasHub preset name or local preset directory."""
        keras_hub = import_hub_module("keras_hub", cls.__name__)
        return cls(keras_hub.tokenizers.Tokenizer.from_preset(preset))

    @property
    def vocabulary_size(self):
        return int(self.hub_tokenizer.vocabulary_size())

    def template_special_tokens(self):
        """`bos_token`, `eos_token`, ... for a chat template: the Hugging Face
        files' (`hf_files`), else the KerasHub tokenizer's own BOS / EOS / pad."""
        tokens = super().template_special_tokens()
        if tokens:
            return tokens
        names = {"bos_token": self.bos_id, "eos_token": self.eos_id}
        if self.pad_id not in (None, self.eos_id):
            names["pad_token"] = self.pad_id
        return {name: self.hub_tokenizer.id_to_token(int(i)) for name, i in names.items()
                if i is not None}

    @property
    def structural_ids(self):
        return structural_ids(self.pad_id, self.bos_id, self.eos_id)

    def _tokenize(self, texts):
        """list of str -> list of id lists (the KerasHub tokenizer, no specials added)."""
        ids = self.hub_tokenizer(tf.constant(texts, tf.string))
        if isinstance(ids, tf.RaggedTensor):
            ids = ids.to_list()
        elif hasattr(ids, "numpy"):
            ids = ids.numpy().tolist()
        return [[int(i) for i in row] for row in ids]

    def encode(self, texts, max_length=None, add_bos=True, truncate="right"):
        """Like `tfpg.Tokenizer.encode`: a str -> list[int], a list -> list[list[int]];
        BOS first (when the family has one and `add_bos`), no EOS. `truncate` "right"
        keeps the first tokens, "left" the last (BOS stays in front)."""
        _check_max_length(max_length)
        check_truncate(truncate)
        if isinstance(texts, tf.Tensor):
            texts = texts.numpy()
        single = isinstance(texts, (str, bytes))
        if isinstance(texts, np.ndarray):
            texts = texts.tolist()
        rows = list(texts) if not single else [texts]
        for text in rows:
            if not isinstance(text, (str, bytes)):
                raise TypeError(f"expected str, bytes or a list of them, got "
                                f"{type(text).__name__}")
            if isinstance(text, bytes):
                text.decode("utf-8")    # raises on invalid UTF-8, as tfpg.Tokenizer does
        bos = [self.bos_id] if add_bos and self.bos_id is not None else []
        encoded = []
        for ids in self._tokenize([t.decode("utf-8") if isinstance(t, bytes) else t
                                   for t in rows]) if rows else []:
            if max_length is not None:
                ids = cut(ids, max_length - len(bos), truncate)
            encoded.append(bos + ids)
        return encoded[0] if single else encoded

    def decode(self, ids):
        """Ids -> text: a 1-D sequence -> str, a batch [B, T] -> list[str]. Skips the
        leading pad / BOS, stops at the first EOS, drops other pad / BOS ids."""
        if isinstance(ids, (tf.Tensor, tf.Variable)):
            ids = ids.numpy()
        if isinstance(ids, np.ndarray) and ids.ndim not in (1, 2):
            raise ValueError(f"ids must be 1-D or 2-D, got shape {ids.shape}")
        ids = ids.tolist() if isinstance(ids, np.ndarray) else list(ids)
        batch = bool(ids) and all(isinstance(row, (list, tuple, np.ndarray)) for row in ids)
        rows = ids if batch else [ids]
        size = self.vocabulary_size
        kept = []
        for row in rows:
            row = _kept_ids(row, self.pad_id, self.bos_id, self.eos_id)
            bad = row[(row < 0) | (row >= size)]
            if bad.size:
                raise ValueError(f"token id {int(bad[0])} is out of range for a vocabulary "
                                 f"of size {size}")
            kept.append(row.tolist())
        texts = [self._detokenize(row) for row in kept]
        return texts if batch else texts[0]

    def _detokenize(self, row):
        if not row:
            return ""
        text = self.hub_tokenizer.detokenize(tf.constant([row], tf.int32))
        text = text.numpy()[0] if hasattr(text, "numpy") else np.asarray(text).ravel()[0]
        return text.decode("utf-8", errors="replace") if isinstance(text, bytes) else str(text)

    def string_to_ids_layer(self, max_length=None, truncate="right", name=None,
                            add_bos=True, return_mask=False):
        """A `HubStringToIds` layer: string [B] -> int32 [B, P] left-padded with
        `pad_id` (and with `return_mask=True` also the int32 [B, P] mask)."""
        return HubStringToIds(self.hub_tokenizer, max_length=max_length, truncate=truncate,
                              add_bos=add_bos, return_mask=return_mask, name=name)

    def ids_to_string_layer(self, name=None):
        """A `HubIdsToString` layer: int [B, T] -> string [B] (as `decode`)."""
        return HubIdsToString(self.hub_tokenizer, name=name)

    # Export uses the mask from the in-graph encoder: padding is not told by ids here.
    encodes_with_mask = True

    def save(self, path):
        """Writes the tokenizer (its KerasHub config and vocabulary) as one JSON file,
        atomically."""
        hub = self.hub_tokenizer
        payload = {"format": FORMAT, "version": VERSION,
                   "tokenizer": keras.saving.serialize_keras_object(hub)}
        if getattr(hub, "proto", None) is not None:
            payload["proto"] = base64.b64encode(hub.proto).decode("ascii")
        else:
            payload["vocabulary"] = hub.vocabulary
            payload["merges"] = list(hub.merges)
        write_json_atomically(os.fspath(path), self.save_chat_template(payload), indent=None)

    @classmethod
    def load(cls, path):
        """Reads a file written by `save`."""
        import_hub_module("keras_hub", cls.__name__)  # registers its tokenizer classes
        import tensorflow_text  # noqa: F401  (its ops: needed to load an export too)
        payload = read_versioned_json(os.fspath(path), FORMAT, VERSION,
                                      "tfpg KerasHub tokenizer file", "KerasHub tokenizer")
        if "hf_files" in payload:     # a transformers checkpoint's tokenizer (tfpg.hf)
            from tfpg.hf.tokenizer import HFTokenizer
            return HFTokenizer.from_payload(payload)
        config = dict(payload["tokenizer"])
        config["config"] = dict(config["config"])
        if "proto" in payload:
            config["config"]["proto"] = base64.b64decode(payload["proto"])
        else:
            config["config"]["vocabulary"] = payload["vocabulary"]
            config["config"]["merges"] = payload["merges"]
        return cls(keras.saving.deserialize_keras_object(config)).restore_chat_template(payload)

    def __repr__(self):
        return (f"KerasHubTokenizer({type(self.hub_tokenizer).__name__}, "
                f"vocabulary_size={self.vocabulary_size})")


def _in_graph(function, tensor):
    """function(tensor), traced when called eagerly: KerasHub tokenizers return Python
    lists outside a graph, ragged tensors inside one."""
    return tf.function(function)(tensor) if tf.executing_eagerly() else function(tensor)


class HubStringToIds(keras.layers.Layer):
    """In-graph `KerasHubTokenizer.encode` + left padding: string [B] -> int32 [B, P]
    (padded with the pad id), plus the int32 [B, P] mask with `return_mask=True`."""

    def __init__(self, hub_tokenizer, max_length=None, truncate="right", add_bos=True,
                 return_mask=False, **kwargs):
        super().__init__(**kwargs)
        _check_max_length(max_length)
        check_truncate(truncate)
        self.hub_tokenizer = hub_tokenizer
        self.pad_id, self.bos_id, self.eos_id = special_ids(hub_tokenizer)
        self.max_length = max_length
        self.truncate = truncate
        self.add_bos = add_bos and self.bos_id is not None
        self.return_mask = return_mask
        self.built = True

    def call(self, texts):
        return _in_graph(self._encode, tf.convert_to_tensor(texts, tf.string))

    def _ids(self, texts):
        """string [B] -> int32 ragged [B, (n)]: truncated, BOS first."""
        ids = self.hub_tokenizer(texts)                                         # [B, (n)]
        if not isinstance(ids, tf.RaggedTensor):
            ids = tf.RaggedTensor.from_tensor(ids)
        ids = tf.cast(ids, tf.int32)                                            # [B, (n)]
        if self.max_length is not None:
            ids = cut(ids, self.max_length - int(self.add_bos), self.truncate)
        if self.add_bos:
            ids = tf.concat([tf.fill([tf.shape(texts)[0], 1], self.bos_id), ids], axis=1)
        return ids

    def _encode(self, texts):
        ids = self._ids(texts)                                                  # [B, (n)]
        # _left_pad fills with 0: shift the ids by one so 0 marks padding, then undo.
        padded = _left_pad(ids + 1)                                             # [B, P]
        mask = tf.cast(padded > 0, tf.int32)
        padded = tf.where(padded > 0, padded - 1, self.pad_id)
        return (padded, mask) if self.return_mask else padded


class HubIdsToString(keras.layers.Layer):
    """In-graph `KerasHubTokenizer.decode`: int [B, T] -> string [B]."""

    def __init__(self, hub_tokenizer, **kwargs):
        super().__init__(**kwargs)
        self.hub_tokenizer = hub_tokenizer
        self.pad_id, self.bos_id, self.eos_id = special_ids(hub_tokenizer)
        self.vocabulary_size = int(hub_tokenizer.vocabulary_size())
        self.built = True

    def call(self, ids):
        return _in_graph(self._decode, tf.cast(ids, tf.int32))

    def _decode(self, ids):                                                     # [B, T]
        leading = tf.zeros_like(ids, tf.bool)
        for special in (self.pad_id, self.bos_id):
            if special is not None:
                leading |= tf.equal(ids, special)
        # Inside the leading run of pad / BOS: every id so far is one of them.
        in_leading = tf.equal(tf.cumsum(tf.cast(~leading, tf.int32), axis=1), 0)
        is_eos = tf.equal(ids, self.eos_id) & ~in_leading
        before_eos = tf.equal(tf.cumsum(tf.cast(is_eos, tf.int32), axis=1), 0)
        keep = before_eos & ~in_leading & (ids >= 0) & (ids < self.vocabulary_size)
        for special in structural_ids(self.pad_id, self.bos_id, self.eos_id):
            keep &= tf.not_equal(ids, special)
        text = self.hub_tokenizer.detokenize(tf.ragged.boolean_mask(ids, keep))
        return tf.reshape(text, [-1])
