"""tf.data builders and file readers.

* `language_model_dataset`: (inputs, targets) next-token pairs for maximum-likelihood
  pre-training with `SparseCategoricalCrossentropy(from_logits=True, ignore_class=0)`.
* `prompt_dataset`: dict batches `{"prompt": int32 [B, P], "prompt_mask": int32 [B, P],
  "reference": ..., **extras}` for the policy-gradient algorithms; prompts are
  left-padded so generation starts at the same position in every row. A prompt is a
  string or a conversation (TRL's format: a list of `{"role", "content"}` messages),
  rendered with the tokenizer's chat template.
* `read_txt`, `read_tsv`, `read_jsonl`, `read_file`: plain-Python readers whose
  errors are `DataError`s with one-line messages `path:line: what is wrong`. They
  bound what a line may hold before anything tokenizes it: the characters of a
  prompt (`PromptLimit`) and the nesting of a JSON line (`parse_json_line`). They
  need no TensorFlow, which only the dataset builders import: the command line reads
  and checks a `--train-file` before TensorFlow starts.
"""

import codecs
import json
import os
import warnings

import numpy as np

from tfpg.guards.bounds import MAX_JSON_DEPTH, json_depth
from tfpg.hf.chat_template import check_conversation, is_conversation
from tfpg.options import TRUNCATE_PROMPTS
from tfpg.text.truncation import check_truncate, cut

_INT32 = np.iinfo(np.int32)
# A conversational prompt's messages, as JSON (tf.string [B]): what `PythonReward`
# hands a reward function as the prompt, as TRL does.
MESSAGES_COLUMN = "prompt_messages"
_RESERVED_COLUMNS = ("prompt", "prompt_mask", "reference", "reference_mask", MESSAGES_COLUMN)


class DataError(ValueError):
    """A problem with a data file; the message is one line: `path:line: what is wrong`."""


def _as_list(values, what):
    if isinstance(values, (str, bytes)):
        raise TypeError(f"{what} must be a list of strings, not a single string")
    return list(values)


def language_model_dataset(texts, tokenizer, sequence_length=64, batch_size=32,
                           shuffle=True, seed=0, drop_remainder=False):
    """Builds next-token (inputs, targets) pairs for pre-training.

    Each text becomes `[bos] + tokens + [eos]`; inputs are `seq[:-1]`, targets
    `seq[1:]`, both int32 [B, sequence_length], right-padded with 0 (the pad
    target is skipped by `ignore_class=0`). A text with more than
    `sequence_length` next-token pairs is chunked, not truncated: it is cut into
    consecutive windows of `sequence_length` pairs (each window's last target is
    the next window's first input), so every pair is trained on exactly once;
    windows after the first start mid-text, without BOS.

    Args:
        texts: list of str. The texts.
        tokenizer: `tfpg.Tokenizer`. Encodes the texts.
        sequence_length: int. L, the number of next-token pairs per example.
        batch_size: int. Examples per batch.
        shuffle: bool. Shuffle the examples (reshuffled every epoch, seeded by `seed`).
        seed: int. Shuffle seed.
        drop_remainder: bool. Drop the last partial batch (gives a static batch size).

    Example:

    >>> from tfpg.text import Tokenizer
    >>> tok = Tokenizer.from_texts(["a b c"])
    >>> ds = language_model_dataset(["a b c"], tok, sequence_length=3, shuffle=False)
    >>> [x.numpy().tolist() for x in next(iter(ds))]
    [[[1, 4, 5], [6, 0, 0]], [[4, 5, 6], [2, 0, 0]]]
    """
    texts = _as_list(texts, "texts")
    if not texts:
        raise ValueError("language_model_dataset: texts is empty; refusing to build an "
                         "empty dataset")
    if sequence_length < 1 or batch_size < 1:
        raise ValueError(f"sequence_length and batch_size must be >= 1, got "
                         f"{sequence_length} and {batch_size}")
    windows = []
    for ids in tokenizer.encode(texts):
        sequence = ids + [tokenizer.eos_id]
        for start in range(0, len(sequence) - 1, sequence_length):
            windows.append(sequence[start:start + sequence_length + 1])
    if drop_remainder and len(windows) < batch_size:
        raise ValueError(f"language_model_dataset: {len(windows)} examples are fewer than "
                         f"batch_size={batch_size} with drop_remainder=True, giving an "
                         f"empty dataset")
    inputs = np.zeros([len(windows), sequence_length], np.int32)  # [N, L]
    targets = np.zeros([len(windows), sequence_length], np.int32)  # [N, L]
    for i, window in enumerate(windows):
        inputs[i, :len(window) - 1] = window[:-1]
        targets[i, :len(window) - 1] = window[1:]
    return _batched((inputs, targets), batch_size, shuffle, seed, False, drop_remainder)


def prompt_dataset(prompts, tokenizer, references=None, batch_size=32,
                   max_prompt_length=None, truncate="error", shuffle=False, seed=0,
                   extras=None, repeat=False, drop_remainder=False):
    """Builds batches of prompts (and references / extra columns) for RL fine-tuning.

    Elements are dicts:

    * `"prompt"`: int32 [B, P], BOS first, no EOS, LEFT-padded with the
      tokenizer's `pad_id` (0 for tfpg's `Tokenizer`). P is the longest prompt in
      the whole dataset, so every batch has the same static width and
      `train_step` is traced once.
    * `"prompt_mask"`: int32 [B, P], 1 for the prompt's tokens, 0 for padding (in
      KerasHub vocabularies the pad id can also be a real token, so padding is
      told by this mask, never by the id).
    * `"reference"` (when `references` is given): int32, encoded without BOS or
      EOS and RIGHT-padded with the tokenizer's `pad_id` (0 for tfpg's
      `Tokenizer`). If every reference is a string the shape is [B, R]; if any
      is a list of strings (several references for one prompt) every row
      becomes a list and the shape is [B, K, R], K the most references any
      prompt has, missing references being all-padding rows. R (and K) are at
      least 1 even when every reference is empty.
    * `"reference_mask"` (with `"reference"`): int32 of its shape, 1 for the
      references' tokens, 0 for padding (what the id rewards read).
    * `"prompt_messages"` (conversational prompts): tf.string [B], each prompt's
      messages as JSON, for rewards that read the conversation (`PythonReward`).
    * one column per `extras` entry: strings -> tf.string, ints -> int32,
      floats -> float32, bools -> tf.bool.

    Conversational prompts (TRL's format: each a list of `{"role", "content"}`
    messages) are rendered with the tokenizer's chat template and
    `add_generation_prompt=True` (`tokenizer.apply_chat_template`), then encoded as
    transformers encodes them: without adding BOS, which the template writes (tfpg's
    own `Tokenizer`, whose BOS is no text, prepends it: `chat_adds_bos`). A tokenizer
    without a template is a one-line ValueError saying how to give one.

    Args:
        prompts: list of str or list of list of dict. Prompt strings, or
            conversations (lists of message dicts); not both kinds.
        tokenizer: `tfpg.Tokenizer` or `tfpg.KerasHubTokenizer`. Encodes the prompts.
        references: list of str, list of list of str, or None. One entry per prompt:
            a string or a list of strings.
        batch_size: int. Prompts per batch.
        max_prompt_length: int. Maximum prompt length in tokens, BOS included.
        truncate: `"error"`, `"left"` or `"right"`. What to do with a longer prompt:
            "error" (the default: a ValueError naming the prompt's index), "left"
            (drop its first tokens after BOS, keeping the end) or "right" (keep its
            first tokens).
        shuffle: bool. Shuffle the prompts (reshuffled every epoch, seeded by `seed`).
        seed: int. Shuffle seed.
        extras: dict or None. Name -> list of values, one per prompt.
        repeat: bool. Repeat forever (each repetition reshuffled when `shuffle`).
        drop_remainder: bool. Drop the last partial batch.

    Example:

    >>> from tfpg.text import Tokenizer
    >>> tok = Tokenizer.from_texts(["a b c"])
    >>> ds = prompt_dataset(["a b", "c"], tok, references=["c", "a b"])
    >>> batch = {k: v.numpy().tolist() for k, v in next(iter(ds)).items()}
    >>> batch["prompt"], batch["prompt_mask"], batch["reference"]
    ([[1, 4, 5], [0, 1, 6]], [[1, 1, 1], [0, 1, 1]], [[6, 0], [4, 5]])
    >>> batch["reference_mask"]
    [[1, 0], [1, 1]]
    """
    prompts = _as_list(prompts, "prompts")
    if not prompts:
        raise ValueError("prompt_dataset: prompts is empty; refusing to build an empty dataset")
    check_truncate(truncate, TRUNCATE_PROMPTS)
    if max_prompt_length is not None and max_prompt_length < 1:
        raise ValueError(f"max_prompt_length must be >= 1, got {max_prompt_length}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if drop_remainder and len(prompts) < batch_size:
        raise ValueError(f"prompt_dataset: {len(prompts)} prompts are fewer than "
                         f"batch_size={batch_size} with drop_remainder=True, giving an "
                         f"empty dataset")
    prompt_ids, prompt_mask = _encode_prompts(prompts, tokenizer, max_prompt_length, truncate)
    columns = {"prompt": prompt_ids, "prompt_mask": prompt_mask}
    if is_conversation(prompts[0]):
        columns[MESSAGES_COLUMN] = np.asarray(
            [json.dumps(list(p), ensure_ascii=False) for p in prompts], dtype=object)
    if references is not None:
        columns["reference"], columns["reference_mask"] = _encode_references(
            references, tokenizer, len(prompts))
    for name, values in (extras or {}).items():
        if name in _RESERVED_COLUMNS:
            raise ValueError(f"extras may not be named {name!r} (reserved column)")
        columns[name] = _extra_column(name, values, len(prompts))
    return _batched(columns, batch_size, shuffle, seed, repeat, drop_remainder)


def _batched(arrays, batch_size, shuffle, seed, repeat, drop_remainder):
    """The `tf.data` pipeline of both builders over `arrays` (numpy, one row per
    example): shuffled every epoch (seeded), repeated forever if asked, batched."""
    import tensorflow as tf  # here: the readers below run without it
    dataset = tf.data.Dataset.from_tensor_slices(arrays)
    if shuffle:
        count = int(dataset.cardinality())
        dataset = dataset.shuffle(count, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()
    return dataset.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)


def prompt_text(prompt, tokenizer):
    """(text, add_bos) a prompt is encoded from: a string as it is, with BOS; a
    conversation rendered with the tokenizer's chat template (generation prompt
    added), with BOS only where the tokenizer's BOS is no text (`chat_adds_bos`)."""
    if not is_conversation(prompt):
        return prompt, True
    return (tokenizer.apply_chat_template(prompt, add_generation_prompt=True),
            getattr(tokenizer, "chat_adds_bos", False))


def encode_prompt(prompt, tokenizer, **options):
    """Token ids of one prompt, a string or a conversation (see `prompt_text`);
    `options` go to `tokenizer.encode` (max_length, truncate)."""
    text, add_bos = prompt_text(prompt, tokenizer)
    return tokenizer.encode(text, add_bos=add_bos, **options)


def check_prompt_kinds(prompts):
    """Raises ValueError unless the prompts are all strings or all conversations
    (each a well-formed list of messages)."""
    conversational = is_conversation(prompts[0])
    for index, prompt in enumerate(prompts):
        if is_conversation(prompt) != conversational:
            raise ValueError(f"prompt {index} is {'a string' if conversational else 'a list'}"
                             f" but prompt 0 is {'a list' if conversational else 'a string'}; "
                             "prompts are all strings or all conversations (message lists)")
        if conversational:
            try:
                check_conversation(prompt)
            except ValueError as e:
                raise ValueError(f"prompt {index}: {e}") from None


def _encode_prompts(prompts, tokenizer, max_prompt_length, truncate):
    """-> (ids int32 [N, P] left-padded with the tokenizer's pad id, mask int32 [N, P])."""
    check_prompt_kinds(prompts)
    encoded = []
    for index, prompt in enumerate(prompts):
        try:
            ids = encode_prompt(prompt, tokenizer)
            if max_prompt_length is not None and len(ids) > max_prompt_length:
                if truncate == "error":
                    raise ValueError(
                        f"has {len(ids)} tokens (BOS included), more than "
                        f"max_prompt_length={max_prompt_length}; shorten it or pass "
                        f"truncate='left' or truncate='right'")
                ids = encode_prompt(prompt, tokenizer, max_length=max_prompt_length,
                                    truncate=truncate)
        except (TypeError, ValueError) as e:
            raise type(e)(f"prompt {index}: {e}") from None
        encoded.append(ids)
    return pad_ids(encoded, "left", getattr(tokenizer, "pad_id", 0))


def pad_ids(rows, side="left", pad_id=0, multiple=1, min_width=0):
    """Lists of ids -> one padded batch, in numpy.

    Args:
        rows: list of list of int. The id lists (an empty one is all padding).
        side: `"left"` or `"right"`. "left" (prompts: generation starts at the same
            position in every row) or "right" (references, completions).
        pad_id: int. The id of padding (the tokenizer's; a mask, never the id,
            marks it).
        multiple: int. The width is rounded up to a multiple of it (fewer shapes to
            trace).
        min_width: int. The least width, for a batch whose rows may all be empty.

    Returns:
        (ids int32 [B, T], mask int32 [B, T], 1 = real token), T the longest row
        (at least `min_width`) rounded up to a multiple of `multiple`.

    Example:
    >>> pad_ids([[5, 6], [7]], "left")[0].tolist()
    [[5, 6], [0, 7]]
    """
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right'; got {side!r}")
    width = max([min_width] + [len(row) for row in rows])
    width = -(-width // multiple) * multiple
    ids = np.full([len(rows), width], pad_id, np.int32)  # [B, T]
    mask = np.zeros([len(rows), width], np.int32)  # [B, T]
    for i, row in enumerate(rows):
        if len(row):
            where = slice(width - len(row), None) if side == "left" else slice(0, len(row))
            ids[i, where] = row
            mask[i, where] = 1
    return ids, mask


def _encode_references(references, tokenizer, count):
    """-> (ids, mask): int32 [N, R] (one string each) or [N, K, R] (lists), ids
    right-padded with the tokenizer's pad id."""
    references = _as_list(references, "references")
    if len(references) != count:
        raise ValueError(f"got {count} prompts but {len(references)} references")
    multi = any(isinstance(r, (list, tuple)) for r in references)
    rows = []
    for index, reference in enumerate(references):
        group = reference if isinstance(reference, (list, tuple)) else [reference]
        try:
            rows.append([tokenizer.encode(text, add_bos=False) for text in group])
        except (TypeError, ValueError) as e:
            raise type(e)(f"reference {index}: {e}") from None
    width = max([1] + [len(ids) for group in rows for ids in group])
    depth = max([1] + [len(group) for group in rows])
    pad_id = getattr(tokenizer, "pad_id", 0)
    array = np.full([count, depth, width], pad_id, np.int32)  # [N, K, R]
    mask = np.zeros([count, depth, width], np.int32)  # [N, K, R]
    for i, group in enumerate(rows):
        for k, ids in enumerate(group):
            array[i, k, :len(ids)] = ids
            mask[i, k, :len(ids)] = 1
    if not multi:
        return array[:, 0], mask[:, 0]  # [N, R]
    return array, mask


def _extra_column(name, values, count):
    """Converts one extras column to a numpy array with a TF-friendly dtype."""
    values = _as_list(values, f"extras[{name!r}]")
    if len(values) != count:
        raise ValueError(f"got {count} prompts but {len(values)} values in extras[{name!r}]")
    is_text = [isinstance(v, (str, bytes)) for v in values]
    if any(is_text) and not all(is_text):
        raise ValueError(f"extras[{name!r}] mixes strings with other values")
    try:
        array = np.asarray(values)
    except ValueError:
        array = np.asarray(values, dtype=object)
    kind = array.dtype.kind
    if kind == "f":
        return array.astype(np.float32)
    if kind in "iu":
        if array.size and (array.min() < _INT32.min or array.max() > _INT32.max):
            raise ValueError(f"extras[{name!r}] has integers that do not fit in int32")
        return array.astype(np.int32)
    if kind in "bUS":
        return array
    raise ValueError(f"extras[{name!r}] must hold strings, ints, floats or bools "
                     f"(equal-length lists of them are fine), got {array.dtype} values")


def _lines(path):
    """Yields (line number, text) for each non-blank line of a UTF-8 file."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, not a file") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    with f:
        # Binary iteration splits on b"\n" only; text mode would also split on
        # "\r", "\x1c", "\u2028", ... which may legitimately occur inside a text.
        for number, raw in enumerate(f, start=1):
            if number == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8):]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{number}: invalid UTF-8 (byte 0x{raw[e.start]:02x} "
                                f"at column {e.start + 1})") from None
            line = line.rstrip("\r\n")
            if line.strip():
                yield number, line


def _no_examples(path):
    return DataError(f"{path}: no examples (the file is empty or has only blank lines)")


def parse_json_line(line, where):
    """One JSONL line -> its value; a `DataError` naming `where` ("path:line") for
    invalid JSON and for nesting deeper than `tfpg.guards.bounds.MAX_JSON_DEPTH` (a deep
    line would otherwise end in Python's RecursionError)."""
    too_deep = DataError(f"{where}: nesting deeper than {MAX_JSON_DEPTH}")
    try:
        value = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
    except RecursionError:
        raise too_deep from None
    if json_depth(value) > MAX_JSON_DEPTH:
        raise too_deep
    return value


class PromptLimit:
    """Bounds the characters of each prompt a reader keeps, before anything tokenizes
    it: a longer prompt is refused (`truncate="error"`, a `DataError` naming
    path:line) or cut on the left ("left": its last `max_chars` characters are kept,
    as `prompt_dataset` keeps the last tokens) or on the right ("right": its first
    ones), counted for one warning per file (`report`).

    Args:
        path: str. The file, for messages.
        max_chars: int or None. Characters kept per prompt; None keeps every prompt
            whole.
        truncate: `"error"`, `"left"` or `"right"`. What to do with a longer prompt.
        reason: str or None. What sets `max_chars` and how to lift it, for the error
            message.
    """

    def __init__(self, path, max_chars=None, truncate="error", reason=None):
        check_truncate(truncate, TRUNCATE_PROMPTS)
        self.path, self.max_chars, self.truncate = path, max_chars, truncate
        self.reason = reason or (f"max_prompt_chars={max_chars}; shorten it or pass "
                                 "truncate='left' or 'right'")
        self.cut_lines = []

    def __call__(self, number, prompt):
        """The prompt of line `number`, cut to `max_chars` characters if need be. A
        conversation counts the characters of its messages' JSON and is never cut
        (no side of a conversation is the one to drop): a longer one is refused."""
        if self.max_chars is None:
            return prompt
        if is_conversation(prompt):
            size = len(json.dumps(prompt, ensure_ascii=False))
            if size > self.max_chars:
                raise DataError(f"{self.path}:{number}: prompt messages have {size} "
                                f"characters, more than {self.max_chars} ({self.reason}); "
                                "conversations are never cut: shorten it")
            return prompt
        if len(prompt) <= self.max_chars:
            return prompt
        if self.truncate == "error":
            raise DataError(f"{self.path}:{number}: prompt has {len(prompt)} characters, "
                            f"more than {self.max_chars} ({self.reason})")
        self.cut_lines.append(number)
        return cut(prompt, self.max_chars, self.truncate)

    def report(self):
        """Warns once (Python `warnings`) if any prompt was cut."""
        if self.cut_lines:
            lines = self.cut_lines
            kept = "last" if self.truncate == "left" else "first"
            warnings.warn(f"{self.path}: {len(lines)} prompt(s) longer than "
                          f"{self.max_chars} characters were cut before tokenizing, keeping "
                          f"their {kept} {self.max_chars} characters (truncate "
                          f"{self.truncate!r}; first: line {lines[0]})", stacklevel=3)


def read_txt(path, prompt_limit=None):
    """Reads one text per non-blank line -> list[str] (line endings removed).

    `prompt_limit`: a `PromptLimit` applied to each line (each is a prompt).

    Example:
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "t.txt")
    >>> _ = open(path, "w").write("a b\\n\\nc\\n")
    >>> read_txt(path)
    ['a b', 'c']
    """
    path = os.fspath(path)
    limit = prompt_limit or PromptLimit(path)
    texts = [limit(number, line) for number, line in _lines(path)]
    if not texts:
        raise _no_examples(path)
    return texts


def read_tsv(path, prompt_limit=None):
    """Reads `prompt<TAB>reference[<TAB>reference...]` lines -> (prompts, references).

    A line with one reference gives a str, a line with several gives a list of
    str (`prompt_dataset` accepts both). A line without a tab is a `DataError`.
    `prompt_limit`: a `PromptLimit` applied to each prompt.

    Example:
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "t.tsv")
    >>> _ = open(path, "w").write("1 + 1\\t2\\nhi\\thello\\they\\n")
    >>> read_tsv(path)
    (['1 + 1', 'hi'], ['2', ['hello', 'hey']])
    """
    path = os.fspath(path)
    limit = prompt_limit or PromptLimit(path)
    prompts, references = [], []
    for number, line in _lines(path):
        fields = line.split("\t")
        if len(fields) < 2:
            raise DataError(f"{path}:{number}: expected 'prompt<TAB>reference', found no tab")
        prompts.append(limit(number, fields[0]))
        references.append(fields[1] if len(fields) == 2 else fields[1:])
    if not prompts:
        raise _no_examples(path)
    return prompts, references


def read_jsonl(path, prompt_limit=None):
    """Reads one JSON object per line -> dict of columns.

    Each object needs a `"prompt"`: a string, or a conversation in TRL's format (a
    list of `{"role", "content"}` messages; every line then has one, and
    `prompt_dataset` renders them with the chat template); `"reference"` (a string
    or a list of strings) and any other keys are optional, but every line must have
    the same keys as the first one. Columns come back as lists, `"prompt"` first. A
    line nested deeper than `tfpg.guards.bounds.MAX_JSON_DEPTH` is a `DataError`.
    `prompt_limit`: a `PromptLimit` applied to each prompt.

    Example:
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "t.jsonl")
    >>> _ = open(path, "w").write('{"prompt": "hi", "reference": "yo", "id": 7}\\n')
    >>> read_jsonl(path)
    {'prompt': ['hi'], 'reference': ['yo'], 'id': [7]}
    """
    path = os.fspath(path)
    limit = prompt_limit or PromptLimit(path)
    columns, first, conversational = None, None, False
    for number, line in _lines(path):
        where = f"{path}:{number}"
        record = parse_json_line(line, where)
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected a JSON object, found {type(record).__name__}")
        if "prompt" not in record:
            raise DataError(f"{where}: missing required key 'prompt'")
        prompt = record["prompt"]
        if is_conversation(prompt):
            try:
                check_conversation(prompt)
            except ValueError as e:
                raise DataError(f"{where}: 'prompt' is not a conversation ({e})") from None
        elif not isinstance(prompt, str):
            raise DataError(f"{where}: 'prompt' must be a string or a list of "
                            f"{{\"role\", \"content\"}} messages, found "
                            f"{type(prompt).__name__}")
        if columns is not None and is_conversation(prompt) != conversational:
            kinds = ("a string", "a list of messages")
            raise DataError(f"{where}: 'prompt' is {kinds[is_conversation(prompt)]} but line "
                            f"{first}'s is {kinds[conversational]} (a file holds one kind)")
        reference = record.get("reference", "")
        if not (isinstance(reference, str) or (
                isinstance(reference, list) and all(isinstance(r, str) for r in reference))):
            raise DataError(f"{where}: 'reference' must be a string or a list of strings")
        if columns is None:
            first, conversational = number, is_conversation(prompt)
            keys = ["prompt"] + (["reference"] if "reference" in record else [])
            columns = {key: [] for key in keys + [k for k in record if k not in keys]}
        if record.keys() != columns.keys():
            missing = sorted(columns.keys() - record.keys())
            extra = sorted(record.keys() - columns.keys())
            problem = f"missing key {missing[0]!r}" if missing else f"unexpected key {extra[0]!r}"
            raise DataError(f"{where}: {problem} (every line needs the keys of line {first})")
        record["prompt"] = limit(number, record["prompt"])
        for key, column in columns.items():
            column.append(record[key])
    if columns is None:
        raise _no_examples(path)
    return columns


def read_file(path, max_prompt_chars=None, truncate="error", reason=None):
    """Reads a .txt, .tsv or .jsonl file -> dict of columns with at least "prompt".

    `.txt` lines become prompts; `.tsv` gives "prompt" and "reference"; `.jsonl`
    gives its keys. So `cols = read_file(p)` feeds
    `prompt_dataset(cols.pop("prompt"), tok, references=cols.pop("reference", None),
    extras=cols)`.

    `max_prompt_chars` bounds each prompt as it is read (see `PromptLimit`:
    `truncate` "error" refuses a longer one naming path:line, "left" / "right" keep
    its last / first characters, with one warning for the file; `reason` explains
    the bound in the error), so that nothing ever tokenizes a huge line whole. The
    readers below take the `PromptLimit` itself; its warning is then the caller's
    (`report()`).
    """
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lower()
    limit = PromptLimit(path, max_prompt_chars, truncate, reason)
    if suffix == ".txt":
        columns = {"prompt": read_txt(path, limit)}
    elif suffix == ".tsv":
        prompts, references = read_tsv(path, limit)
        columns = {"prompt": prompts, "reference": references}
    elif suffix == ".jsonl":
        columns = read_jsonl(path, limit)
    else:
        raise DataError(f"{path}: unsupported file type {suffix or '(no suffix)'!r} "
                        f"(expected .txt, .tsv or .jsonl)")
    limit.report()
    return columns
