"""`HFTokenizer`: the tokenizer of a transformers checkpoint, id for id as Hugging Face
`tokenizers` reads its `tokenizer.json`.

Two encoders give the same ids:

* Python side (`encode`, what training and `prompt_dataset` use): `tokenizers` itself
  on the checkpoint's `tokenizer.json` (no special tokens), then the checkpoint's own
  special-token policy: BOS / EOS where `tokenizer_config.json` says `add_bos_token` /
  `add_eos_token`, else where the post-processor adds them (Llama 3 prepends
  `<|begin_of_text|>`, Gemma `<bos>`; GPT-2 and Qwen add nothing).
* In the graph (`string_to_ids_layer`, the exported SavedModel): `InGraphEncoder`.
  The text is first split around the added tokens (special tokens written as text
  are one id, as in `tokenizers`), then each piece goes through the family's encoder:
  byte-level BPE (GPT-2, Llama 3, Qwen) after the checkpoint's own split regex
  (translated to RE2, below) and normalizer (Qwen's NFC), on KerasHub's in-graph BPE
  merges; SentencePiece (Gemma) with the checkpoint's `tokenizer.model` (or one built
  from `tokenizer.json`).

RE2 (TensorFlow's regex engine) has no look-ahead, and the split regexes end with
`\\s+(?!\\S)|\\s+`: a whitespace run before a non-space leaves its last character to
the next piece (" world"). As KerasHub does for GPT-2, a marker is inserted before that
last character and the marker pieces are dropped after the split; the marker is a
private-use character (U+E000), so a text containing U+E000 itself can split
differently; so can one with U+E001, which stands in for NUL (tensorflow_text's
regex_split ends a string at NUL). `\\s` is spelled out as Unicode whitespace (RE2's `\\s` is ASCII only).

Decoding uses the KerasHub tokenizer (byte-level or SentencePiece), as
`KerasHubTokenizer` does. `hf_files` (the checkpoint's tokenizer files, str contents)
are kept byte for byte through `save` / `load`.
"""

import base64
import json
import os
import re

import tensorflow as tf

from tfpg.guards.locking import write_json_atomically
from tfpg.hf import import_hub_module
from tfpg.text.keras_hub_tokenizer import (FORMAT, VERSION, HubIdsToString, HubStringToIds,
                                           KerasHubTokenizer)
from tfpg.text.tokenizer import _check_max_length
from tfpg.text.truncation import check_truncate, cut

# The files of a checkpoint that belong to its tokenizer (kept unchanged).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "chat_template.jinja", "generation_config.json")
SENTENCEPIECE_FILE = "tokenizer.model"

MARKER = "\ue000"
# tensorflow_text's regex_split ends a string at NUL: NUL stands in as this private-use
# character (split like NUL: neither letter, digit nor space) until the pieces are cut.
NUL_STAND_IN = "\ue001"
# Unicode White_Space (what `\s` matches in `tokenizers`' Oniguruma regexes).
_WHITESPACE = (r"\t\n\x{0b}\f\r \x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}"
               r"\x{202f}\x{205f}\x{3000}")
# GPT-2's ByteLevel pre-tokenizer regex (`use_regex: true`).
GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LOOKAHEAD = r"\s+(?!\S)|"


def _re2_class_body(body):
    r"""A character class body with `\s` spelled out (RE2's `\s` is ASCII)."""
    return body.replace(r"\s", _WHITESPACE)


def translate_split_pattern(pattern):
    """(RE2 pattern, marker regex) for a `tokenizers` split regex ending in
    `\\s+(?!\\S)|\\s+`, or ValueError where RE2 cannot express it.

    The marker regex finds the last whitespace character of a run that a non-space
    follows; `MARKER` inserted before it splits the run as the look-ahead does.
    Where the pattern has `\\s*[\\r\\n]+` (Llama 3, Qwen), a run ending in a newline
    is one piece anyway, so only a last character that is not a newline is marked.
    """
    if _LOOKAHEAD not in pattern:
        raise ValueError(f"split regex {pattern!r}: tfpg emulates only the look-ahead "
                         r"'\s+(?!\S)' in the graph")
    body = pattern.replace(_LOOKAHEAD, "")
    if re.search(r"\(\?[=!<]", body):
        raise ValueError(f"split regex {pattern!r} has a look-around RE2 cannot run")
    out, i = [], 0
    while i < len(body):
        if body[i] == "\\" and i + 1 < len(body):
            pair = body[i:i + 2]
            out.append({r"\s": f"[{_WHITESPACE}]",
                        r"\S": f"[^{_WHITESPACE}{MARKER}]"}.get(pair, pair))
            i += 2
        elif body[i] == "[":
            end = i + 1
            if body[end:end + 1] == "^":
                end += 1
            end += 1 if body[end:end + 1] == "]" else 0
            while body[end] != "]":
                end += 2 if body[end] == "\\" else 1
            inner = _re2_class_body(body[i + 1:end])
            # The marker never joins a piece: every negated class excludes it.
            out.append("[" + inner + (MARKER if inner.startswith("^") else "") + "]")
            i = end + 1
        else:
            out.append(body[i])
            i += 1
    newline_piece = r"\s*[\r\n]+" in pattern
    last = f"[{_WHITESPACE}]" if not newline_piece else \
        f"[{_WHITESPACE.replace(chr(92) + 'n', '').replace(chr(92) + 'r', '')}]"
    marker_at = f"({last})([^{_WHITESPACE}])"
    return MARKER + "|" + "".join(out), marker_at


def special_token_policy(tokenizer_json, tokenizer_config):
    """(prefix ids, suffix ids) the checkpoint adds around a text: `add_bos_token` /
    `add_eos_token` of `tokenizer_config.json` where given (transformers rebuilds its
    post-processor from them), else what the `tokenizer.json` post-processor adds."""
    from tokenizers import Tokenizer
    tokenizer = Tokenizer.from_str(tokenizer_json)
    probe_plain = tokenizer.encode("a", add_special_tokens=False).ids
    probe = tokenizer.encode("a").ids
    start = next(i for i in range(len(probe) - len(probe_plain) + 1)
                 if probe[i:i + len(probe_plain)] == probe_plain)
    prefix, suffix = probe[:start], probe[start + len(probe_plain):]

    def token_id(name):
        token = tokenizer_config.get(name)
        if isinstance(token, dict):
            token = token.get("content")
        return None if token is None else tokenizer.token_to_id(token)

    if "add_bos_token" in tokenizer_config:
        bos = token_id("bos_token")
        prefix = [bos] if tokenizer_config["add_bos_token"] and bos is not None else []
    if "add_eos_token" in tokenizer_config:
        eos = token_id("eos_token")
        suffix = [eos] if tokenizer_config["add_eos_token"] and eos is not None else []
    return [int(i) for i in prefix], [int(i) for i in suffix]


def _token_name(config, key):
    token = config.get(key)
    return token.get("content") if isinstance(token, dict) else token


class HFTokenizer(KerasHubTokenizer):
    """A transformers checkpoint's tokenizer behind `tfpg.KerasHubTokenizer`'s interface.

    Args:
        hf_files: dict. File name -> str contents of the checkpoint's tokenizer
            files; `tokenizer.json` is required.
        sentencepiece_proto: bytes or None. The bytes of `tokenizer.model`
            (SentencePiece families), or None to build one from `tokenizer.json`
            where the family needs it.

    Attributes:
        hf_files: the files, unchanged.
        bos_id / eos_id / pad_id: the checkpoint's: BOS only where it is prepended
            (None for GPT-2, whose `<|endoftext|>` is its EOS); EOS from
            `tokenizer_config.json` (`eos_token`); pad its `pad_token` or the EOS.
    """

    def __init__(self, hf_files, sentencepiece_proto=None):
        Tokenizer = import_hub_module("tokenizers", "HFTokenizer").Tokenizer
        if "tokenizer.json" not in hf_files:
            raise ValueError("a Hugging Face tokenizer needs tokenizer.json")
        self.hf_files = dict(hf_files)
        self.sentencepiece_proto = sentencepiece_proto
        self.backend = Tokenizer.from_str(hf_files["tokenizer.json"])
        self._json = json.loads(hf_files["tokenizer.json"])
        config = json.loads(hf_files.get("tokenizer_config.json", "{}"))
        self.prefix_ids, self.suffix_ids = special_token_policy(hf_files["tokenizer.json"],
                                                                config)
        eos = _token_name(config, "eos_token")
        eos_id = None if eos is None else self.backend.token_to_id(eos)
        if eos_id is None:
            generation = json.loads(hf_files.get("generation_config.json", "{}"))
            eos_id = generation.get("eos_token_id")
            eos_id = eos_id[0] if isinstance(eos_id, list) else eos_id
        if eos_id is None:
            raise ValueError("the checkpoint's tokenizer names no EOS token (eos_token in "
                             "tokenizer_config.json) that is in its vocabulary")
        pad = _token_name(config, "pad_token")
        pad_id = None if pad is None else self.backend.token_to_id(pad)
        self.hub_tokenizer = self._hub_tokenizer()
        self.eos_id = int(eos_id)
        self.pad_id = int(pad_id) if pad_id is not None else self.eos_id
        self.bos_id = self.prefix_ids[-1] if self.prefix_ids else None

    # ------------------------------------------------------------ building

    @property
    def kind(self):
        """"byte_level" (GPT-2, Llama 3, Qwen) or "sentencepiece" (Gemma, Llama 2,
        Mistral)."""
        model = self._json.get("model") or {}
        return "sentencepiece" if model.get("byte_fallback") else "byte_level"

    @property
    def dummy_prefix(self):
        """Where a SentencePiece-style tokenizer adds its "▁" (Llama 2, Mistral):
        "first" (the first piece of a text, unless an added token opens it), "always"
        (every piece between added tokens) or None. `tokenizers`' Metaspace adds it
        only where the piece does not start with a space already; SentencePiece's
        `add_dummy_prefix` always does, so the graph adds it itself."""
        pre = self._json.get("pre_tokenizer") or {}
        steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
        for step in steps:
            if step.get("type") == "Metaspace":
                scheme = step.get("prepend_scheme", "always" if step.get(
                    "add_prefix_space", True) else "never")
                return None if scheme == "never" else scheme
        return None

    def _vocabulary(self):
        vocabulary = dict(self._json["model"]["vocab"])
        for token in self._json.get("added_tokens", []):
            vocabulary[token["content"]] = token["id"]
        return vocabulary

    def _hub_tokenizer(self):
        keras_hub = import_hub_module("keras_hub", "HFTokenizer")
        if self._json.get("model", {}).get("type") != "BPE":
            raise ValueError(f"tokenizer.json has a {self._json.get('model', {}).get('type')} "
                             "model; tfpg reads byte-level or SentencePiece-style BPE")
        if self.kind == "sentencepiece":
            if self.sentencepiece_proto is None:
                from keras_hub.src.utils.transformers.convert_gemma3 import \
                    _build_sentencepiece_proto
                self.sentencepiece_proto = _build_sentencepiece_proto(self._json)
            proto = self.sentencepiece_proto
            if self.dummy_prefix is not None:
                proto = _without_dummy_prefix(proto)
            return keras_hub.tokenizers.SentencePieceTokenizer(proto=proto)
        merges = self._json["model"]["merges"]
        merges = [" ".join(m) if isinstance(m, list) else m for m in merges]
        # No unsplittable tokens: InGraphEncoder splits the added tokens out itself.
        return keras_hub.tokenizers.BytePairTokenizer(vocabulary=self._vocabulary(),
                                                      merges=merges, unsplittable_tokens=[])

    @classmethod
    def from_directory(cls, directory):
        """The tokenizer of a transformers checkpoint directory."""
        files = {}
        for name in TOKENIZER_FILES:
            path = os.path.join(directory, name)
            if os.path.isfile(path):
                with open(path, encoding="utf-8", newline="") as f:
                    files[name] = f.read()
        if "tokenizer.json" not in files:
            raise ValueError(f"{directory}: no tokenizer.json (tfpg reads the tokenizer of a "
                             "transformers checkpoint from it)")
        proto = None
        if os.path.isfile(os.path.join(directory, SENTENCEPIECE_FILE)):
            with open(os.path.join(directory, SENTENCEPIECE_FILE), "rb") as f:
                proto = f.read()
        return cls(files, sentencepiece_proto=proto)

    # ------------------------------------------------------------ encoding

    @property
    def vocabulary_size(self):
        return int(self.backend.get_vocab_size(with_added_tokens=True))

    @property
    def added_tokens(self):
        """{content: id} of the tokens `tokenizers` matches in raw text."""
        return {t["content"]: int(t["id"]) for t in self._json.get("added_tokens", [])}

    def _tokenize(self, texts):
        """list of str -> list of id lists (no special tokens added)."""
        return [e.ids for e in self.backend.encode_batch(list(texts),
                                                         add_special_tokens=False)]

    def encode(self, texts, max_length=None, add_bos=True, truncate="right"):
        """Like `KerasHubTokenizer.encode`, with the checkpoint's policy: its BOS (and
        any other prefix) first and its EOS last where it adds them (`add_bos=False`
        adds neither)."""
        _check_max_length(max_length)
        check_truncate(truncate)
        encoded = super().encode(texts, max_length=None, add_bos=False)
        single = isinstance(encoded, list) and (not encoded or isinstance(encoded[0], int))
        rows = [encoded] if single else encoded
        prefix = self.prefix_ids if add_bos else []
        suffix = self.suffix_ids if add_bos else []
        out = []
        for ids in rows:
            if max_length is not None:
                ids = cut(ids, max(max_length - len(prefix) - len(suffix), 0), truncate)
            out.append(prefix + ids + suffix)
        return out[0] if single else out

    def encode_with_specials(self, texts):
        """What `tokenizers` gives with its own special tokens (the reference)."""
        return [e.ids for e in self.backend.encode_batch(list(texts))]

    def string_to_ids_layer(self, max_length=None, truncate="right", name=None,
                            add_bos=True, return_mask=False):
        """An `HFStringToIds` layer: string [B] -> int32 [B, P] left-padded (ids as
        `encode` gives them), with `return_mask=True` also the int32 [B, P] mask."""
        return HFStringToIds(self, max_length=max_length, truncate=truncate,
                             add_bos=add_bos, return_mask=return_mask, name=name)

    def ids_to_string_layer(self, name=None):
        """An `HFIdsToString` layer: int [B, T] -> string [B] (as `decode`)."""
        return HFIdsToString(self, name=name)

    def in_graph_encoder(self):
        """An `InGraphEncoder` of this tokenizer (no special tokens added)."""
        return InGraphEncoder(self)

    # ------------------------------------------------------------ files

    def save(self, path):
        """Writes the tokenizer (the checkpoint's files, unchanged) as one JSON file."""
        payload = {"format": FORMAT, "version": VERSION, "hf_files": self.hf_files}
        if self.sentencepiece_proto is not None:
            payload["proto"] = base64.b64encode(self.sentencepiece_proto).decode("ascii")
        # A template set on it is kept besides the files' own.
        write_json_atomically(os.fspath(path), self.save_chat_template(payload), indent=None)

    @classmethod
    def from_payload(cls, payload):
        """The tokenizer of a payload written by `save` (`KerasHubTokenizer.load`
        reads the file and hands it here)."""
        proto = payload.get("proto")
        tokenizer = cls(payload["hf_files"],
                        sentencepiece_proto=None if proto is None else base64.b64decode(proto))
        return tokenizer.restore_chat_template(payload)

    def __repr__(self):
        return (f"HFTokenizer({self.kind}, vocabulary_size={self.vocabulary_size}, "
                f"bos_id={self.bos_id}, eos_id={self.eos_id})")


class InGraphEncoder(tf.Module):
    """TensorFlow ops that give `tokenizers`' ids (no special tokens added):
    string [B] -> int32 ragged [B, (n)]. Builds its tables once; call inside a graph.
    A `tf.Module`, so an export that holds it saves its tables.

    Args:
        tokenizer: `HFTokenizer`. The tokenizer whose ids to give.
    """

    def __init__(self, tokenizer):
        super().__init__(name="in_graph_encoder")
        self.hub_tokenizer = tokenizer.hub_tokenizer
        self.kind = tokenizer.kind
        added = sorted(tokenizer.added_tokens.items(), key=lambda item: -len(item[0]))
        # Longest first: "<|im_start|>user" never cuts a longer added token short.
        self.added_pattern = "|".join(re.escape(content) for content, _ in added) or None
        self.added_table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant([c for c, _ in added] or [""], tf.string),
                tf.constant([i for _, i in added] or [-1], tf.int32)), default_value=-1)
        spec = tokenizer._json
        self.dummy_prefix = tokenizer.dummy_prefix
        self.ignore_merges = bool((spec.get("model") or {}).get("ignore_merges"))
        self.nfc = (spec.get("normalizer") or {}).get("type") == "NFC"
        if (spec.get("normalizer") or {}).get("type") not in (None, "NFC") \
                and self.kind == "byte_level":
            raise ValueError(f"tokenizer.json normalizer {spec['normalizer'].get('type')}: "
                             "tfpg's in-graph tokenizer supports none or NFC")
        if self.kind == "byte_level":
            self.pattern, self.marker_at = translate_split_pattern(split_pattern(spec))

    def __call__(self, texts):
        import tensorflow_text as tf_text
        texts = tf.convert_to_tensor(texts, tf.string)                          # [B]
        texts = tf.strings.regex_replace(texts, "\x00", NUL_STAND_IN)
        if self.added_pattern is not None:
            pieces = tf_text.regex_split(texts, self.added_pattern,
                                         self.added_pattern)                    # [B, (p)]
        else:
            pieces = tf.RaggedTensor.from_tensor(texts[:, None])
        flat = pieces.flat_values                                                # [N]
        added_id = self.added_table.lookup(flat)                                 # [N]
        is_added = added_id >= 0
        text = tf.where(is_added, tf.fill(tf.shape(flat), ""), flat)
        if self.dummy_prefix is not None:
            # [N]: the pieces that get "▁" (a space, which SentencePiece escapes).
            prefixed = ~is_added & tf.not_equal(text, "") & ~tf.strings.regex_full_match(
                text, "(?s)[ \u2581].*")
            if self.dummy_prefix == "first":
                starts = tf.gather(pieces.row_splits, pieces.value_rowids())
                prefixed &= tf.equal(tf.range(tf.size(flat, out_type=tf.int64)), starts)
            text = tf.where(prefixed, tf.strings.join([" ", text]), text)
        ids = self._encode_pieces(text)                                          # [N, (k)]
        added = tf.ragged.boolean_mask(added_id[:, None], is_added[:, None])     # [N, (0|1)]
        ids = tf.concat([added, tf.cast(ids, tf.int32)], axis=1)                 # [N, (k)]
        return tf.RaggedTensor.from_row_splits(ids, pieces.row_splits).merge_dims(1, 2)

    def _encode_pieces(self, text):
        if self.kind == "sentencepiece":
            ids = self.hub_tokenizer(_restore_nul(text))
            return ids if isinstance(ids, tf.RaggedTensor) else tf.RaggedTensor.from_tensor(ids)
        return self._byte_level(text)

    def _byte_level(self, text):
        """Normalizer, split regex, then KerasHub's BPE merges (its cache and tables)."""
        import tensorflow_text as tf_text
        hub = self.hub_tokenizer
        hub._maybe_initialized_tf()
        if self.nfc:
            text = tf_text.normalize_utf8(text, "NFC")
        text = tf.strings.regex_replace(text, self.marker_at, MARKER + r"\1\2")
        words = tf_text.regex_split(text, self.pattern, self.pattern)            # [N, (w)]
        words = tf.ragged.boolean_mask(words, tf.not_equal(words, MARKER))
        flat = _restore_nul(words.flat_values)
        cached = hub.cache.lookup(flat)
        unseen = tf.math.reduce_any(tf.equal(cached, "") & tf.not_equal(flat, ""))

        def merge_unseen():
            hub._bpe_merge_and_update_cache_tf(tf.boolean_mask(flat, tf.equal(cached, "")))
            return hub.cache.lookup(flat)

        merged = tf.cond(unseen, merge_unseen, lambda: cached)
        if self.ignore_merges:
            # `ignore_merges` (Llama 3): a word that is a token is that token, merges or
            # not (a byte-level token never holds a space, the separator here).
            mapped = tf.strings.reduce_join(
                hub.byte2unicode.lookup(tf.strings.bytes_split(flat)), axis=-1)
            merged = tf.where(hub.token_to_id_map.lookup(mapped) >= 0, mapped, merged)
        tokens = tf.strings.split(merged, sep=" ")                               # [W, (t)]
        ids = hub.token_to_id_map.lookup(tokens)
        return tf.RaggedTensor.from_row_splits(ids.flat_values,
                                               tf.gather(ids.row_splits, words.row_splits))


def _without_dummy_prefix(proto):
    """A SentencePiece model proto with `add_dummy_prefix` off."""
    from sentencepiece import sentencepiece_model_pb2
    model = sentencepiece_model_pb2.ModelProto()
    model.ParseFromString(proto)
    model.normalizer_spec.add_dummy_prefix = False
    return model.SerializeToString()


def _restore_nul(strings):
    return tf.strings.regex_replace(strings, NUL_STAND_IN, "\x00")


def split_pattern(spec):
    """The split regex of a byte-level `tokenizer.json`: GPT-2's for a ByteLevel
    pre-tokenizer with `use_regex`, else that of its `Split` pre-tokenizer."""
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    for step in steps:
        if step.get("type") == "ByteLevel" and step.get("add_prefix_space"):
            raise ValueError("a ByteLevel pre-tokenizer with add_prefix_space: tfpg's in-graph "
                             "tokenizer does not add the space")
    for step in steps:
        if step.get("type") == "Split" and "Regex" in (step.get("pattern") or {}):
            if step.get("behavior") != "Isolated" or step.get("invert"):
                raise ValueError("a Split pre-tokenizer other than Isolated: not supported "
                                 "in the graph")
            return step["pattern"]["Regex"]
        if step.get("type") == "ByteLevel" and step.get("use_regex", True):
            return GPT2_PATTERN
    raise ValueError("tokenizer.json has no split regex tfpg knows (ByteLevel or Split)")


class HFIdsToString(HubIdsToString):
    """In-graph `HFTokenizer.decode`: int [B, T] -> string [B], with the checkpoint's
    special ids (the KerasHub tokenizer underneath has none of its own)."""

    def __init__(self, tokenizer, **kwargs):
        super().__init__(tokenizer.hub_tokenizer, **kwargs)
        self.pad_id, self.bos_id, self.eos_id = tokenizer.pad_id, tokenizer.bos_id, \
            tokenizer.eos_id


class HFStringToIds(HubStringToIds):
    """In-graph `HFTokenizer.encode` + left padding: string [B] -> int32 [B, P] (padded
    with the pad id), plus the int32 [B, P] mask with `return_mask=True`."""

    def __init__(self, tokenizer, max_length=None, truncate="right", add_bos=True,
                 return_mask=False, **kwargs):
        super().__init__(tokenizer.hub_tokenizer, max_length=max_length, truncate=truncate,
                         add_bos=False, return_mask=return_mask, **kwargs)
        self.pad_id, self.bos_id, self.eos_id = tokenizer.pad_id, tokenizer.bos_id, \
            tokenizer.eos_id
        self.prefix_ids = list(tokenizer.prefix_ids) if add_bos else []
        self.suffix_ids = list(tokenizer.suffix_ids) if add_bos else []
        self.encoder = tokenizer.in_graph_encoder()

    def _ids(self, texts):
        ids = self.encoder(texts)                                                # [B, (n)]
        if self.max_length is not None:
            ids = cut(ids, max(self.max_length - len(self.prefix_ids) - len(self.suffix_ids), 0),
                      self.truncate)
        batch = tf.shape(texts)[0]
        parts = [tf.RaggedTensor.from_tensor(tf.tile([self.prefix_ids], [batch, 1]))] \
            if self.prefix_ids else []
        parts.append(ids)
        if self.suffix_ids:
            parts.append(tf.RaggedTensor.from_tensor(tf.tile([self.suffix_ids], [batch, 1])))
        return tf.concat(parts, axis=1) if len(parts) > 1 else ids


__all__ = ["HFTokenizer", "HFStringToIds", "InGraphEncoder", "translate_split_pattern",
           "special_token_policy", "TOKENIZER_FILES"]
