"""Export a `PolicyNetwork` + `Tokenizer` as a self-contained SavedModel, and load it back.

`export_saved_model` writes a TensorFlow SavedModel whose graphs map prompt *strings*
to completion *strings*: the vocabulary lives inside the graph (the tokenizer's
`StringToIds` / `IdsToString` layers), so `saved_model_cli`, TF Serving or any TF
runtime can serve it without Python from this package.

Signatures (all batch-major, `B` prompts):

* `generate` and `serving_default`: `prompts` string [B] -> `completions` string [B],
  `token_ids` int32 [B, N]. Uses the generation defaults chosen at export time
  (greedy decoding unless another `sampler` was exported).
* `generate_with_options`: the same plus the inputs `max_new_tokens` (int32 []),
  `temperature` (float32 []), `top_k` (int32 []), `top_p` (float32 []) and `seed`
  (int64 []). A value <= 0 (for `seed`: < 0) means "not given": the export default
  is used (for `seed`, a fresh random seed). Giving any of `temperature`, `top_k`,
  `top_p` or `seed` switches greedy decoding to sampling.
* `log_probs`: `prompts` string [B], `completions` string [B] -> `log_probs` float32
  [B, N], `mask` float32 [B, N] and `token_ids` int32 [B, N]. Each completion is
  tokenized without BOS and with the export's `eos_id` appended (as the trainers see
  it; nothing is appended when it was exported with `eos_id=None`) and scored
  token by token under the policy's softmax at temperature 1; 0 at padding.

Chat exports: a run on conversational data (prompts that are message lists) records
its chat template in `tfpg_export.json` ("chat_template": the Jinja source and its
special tokens). The signatures still take strings, the prompts *already rendered*
with that template (`add_generation_prompt=True`): a graph cannot run Jinja, and a
rendered prompt is what any serving stack sends (render it with
`tfpg.hf.chat_template.ChatTemplate.from_config(info["chat_template"])`, or with
transformers from the same template). The graph then adds no BOS to a prompt with
a KerasHub tokenizer: the template writes it, as in training. `load(path).generate`
renders for you: it takes conversations, and a plain string as one user message.

Why two generate signatures: a SignatureDef has no optional inputs. Every consumer
that runs a signature through a session (`saved_model_cli run`, TF Serving, the C++
API) must feed all of its inputs, and a TF2 `loaded.signatures[...]` function needs
all its keyword arguments. So `generate` takes `prompts` alone (this is what
`saved_model_cli run --signature_def generate --input_exprs 'prompts=[...]'` and
`signatures["generate"](prompts=...)` need), and `generate_with_options` takes every
option, with "<= 0 = default" sentinels. `load(path).generate(prompts, **options)`
makes the options truly optional by choosing the signature for you.

Beside the SavedModel files the directory holds `tokenizer.json` (the tokenizer) and
`tfpg_export.json` (format marker, version, generation defaults, vocabulary size,
free-form metadata, and a manifest: the SHA-256 of every other file), which `load`
uses to recognise a tfpg export.

Loading verifies before it executes (a SavedModel is a program): `load` checks the
manifest, then reads `saved_model.pb` without running it and refuses any op that
tfpg's own exports do not contain (`WriteFile`, `PyFunc`, ...; see `tfpg.guards.trust`).
`load(path, trust_remote_code=True)` skips the op check for a graph you built.

Exports are atomic: the model is written into a sibling `PATH.tmp-<random>` and then
renamed into place. An existing export is first renamed to `PATH.tfpg-backup` and
deleted only once the new one is in place, so an interruption at any moment leaves
either the old or the new export; `recover` (run by `export_saved_model`, `load`
and `SavedModelExport`) puts a stranded backup back. One process writes a path at a
time: the writer holds `PATH.lock` (`tfpg.guards.locking`), a second one is refused, and
recovery runs only under that lock (`load` skips it while another process writes).

Example:
>>> path = "saved_models/run"
>>> tfpg.export_saved_model(policy, tok, path, max_new_tokens=16)  # doctest: +SKIP
'saved_models/run'
>>> gen = tfpg.load(path)  # doctest: +SKIP
>>> gen.generate(["3 + 4 ="])  # doctest: +SKIP
['7']
>>> sampled = gen.generate(["3 + 4 ="], temperature=0.8, seed=1)  # doctest: +SKIP
"""

import functools
import glob
import json
import os
import secrets
import shutil
import warnings
import zipfile

import numpy as np
import tensorflow as tf

from tfpg import __version__
from tfpg.generation import (cache_bytes_per_token, decode_loop, resolve_eos_id, resolve_sampler,
                             sampling_suppress_ids)
from tfpg.guards import bounds, trust
from tfpg.guards.locking import (EXPORT_MARKER, check_replaceable, output_lock, try_output_lock,
                                 write_json_atomically)
from tfpg.losses import token_log_probs
from tfpg.models.policy import check_policy
from tfpg.text.tokenizer import Tokenizer, read_json_marker

__all__ = ["export_saved_model", "load", "recover", "read_export_info", "GeneratorModel"]

FORMAT = "tfpg.SavedModel"
FORMAT_VERSION = 1
METADATA_FILE = EXPORT_MARKER
TOKENIZER_FILE = "tokenizer.json"
BACKUP_SUFFIX = ".tfpg-backup"
TMP_SUFFIX = ".tmp-"
SIGNATURES = ("generate", "generate_with_options", "log_probs", "serving_default")
# top_p above 1 keeps every token even where float32 cumulative sums round to 1.0,
# so "no top-p" gives exactly the unfiltered distribution.
_NO_TOP_P = 2.0


def _prompt_spec():
    return tf.TensorSpec([None], tf.string, name="prompts")


class _ExportModule(tf.Module):
    """The object graph that is saved: policy, tokenizer layers, serving functions."""

    def __init__(self, policy, tokenizer, defaults, max_prompt_length, chat=False):
        super().__init__(name="tfpg_export")
        # Held untracked (written to __dict__, bypassing tracking): a tracked Keras 3
        # model saves each weight twice (its variable wrapper exports a copy), and
        # session-based loaders (saved_model_cli, TF Serving) restore only the copy,
        # leaving the handles that the graphs read uninitialised. `save_traced`
        # tracks the raw tf.Variables the traced functions capture instead.
        self.__dict__["policy"] = policy
        # Prompts keep their *last* tokens when too long: the text nearest to the
        # continuation matters most for what comes next.
        # A KerasHub tokenizer's pad id can be a real token (GPT-2's pad is its BOS):
        # its encoder gives the padding mask; for tfpg's Tokenizer, padding is id 0.
        self._with_mask = getattr(tokenizer, "encodes_with_mask", False)
        options = {"return_mask": True} if self._with_mask else {}
        # Rendered chats carry the BOS their template writes (see `chat_template`).
        chat_options = ({"add_bos": getattr(tokenizer, "chat_adds_bos", False)}
                        if chat and self._with_mask else {})
        self.prompt_to_ids = tokenizer.string_to_ids_layer(
            max_length=max_prompt_length, truncate="left", name="prompt_to_ids", **options,
            **chat_options)
        # `tokenize`: the prompts' ids as generate encodes them, none cut off.
        self.prompt_tokens = tokenizer.string_to_ids_layer(
            truncate="left", name="prompt_tokens", **{**options, **chat_options})
        if self._with_mask:
            options["add_bos"] = False
        self.text_to_ids = tokenizer.string_to_ids_layer(name="text_to_ids", **options)
        self.ids_to_text = tokenizer.ids_to_string_layer(name="ids_to_text")
        self._pad_id = getattr(tokenizer, "pad_id", 0)
        # The ids `tfpg.generate` never samples (pad, BOS): the export neither.
        self._suppress_ids = sampling_suppress_ids(policy)
        self._defaults = defaults
        self._vocab_size = tokenizer.vocabulary_size
        self._max_length = policy.max_length if policy.is_positional else None

        self.generate_with_options = tf.function(self._generate_with_options,
                                                 input_signature=[
            _prompt_spec(),
            tf.TensorSpec([], tf.int32, name="max_new_tokens"),
            tf.TensorSpec([], tf.float32, name="temperature"),
            tf.TensorSpec([], tf.int32, name="top_k"),
            tf.TensorSpec([], tf.float32, name="top_p"),
            tf.TensorSpec([], tf.int64, name="seed"),
        ])
        self.generate = tf.function(self._generate, input_signature=[_prompt_spec()])
        self.log_probs = tf.function(self._log_probs, input_signature=[
            _prompt_spec(), tf.TensorSpec([None], tf.string, name="completions")])
        self.tokenize = tf.function(self._tokenize, input_signature=[_prompt_spec()])

    def _generate(self, prompts):
        return self.generate_with_options(
            prompts, tf.constant(0), tf.constant(0.0), tf.constant(0), tf.constant(0.0),
            tf.constant(-1, tf.int64))

    def _generate_with_options(self, prompts, max_new_tokens, temperature, top_k, top_p,
                               seed):
        d = self._defaults
        prompt_ids, prompt_mask = self._encode(self.prompt_to_ids, prompts)  # [B, P] each
        n = tf.where(max_new_tokens > 0, max_new_tokens, d["max_new_tokens"])
        if self._max_length is not None:
            # Position ids must stay inside the Transformer's table.
            n = tf.minimum(n, self._max_length - tf.shape(prompt_ids)[1])
        n = tf.maximum(n, 0)
        sample = tf.logical_or(d["sampler"] != "greedy", tf.reduce_any(
            [temperature > 0, top_k > 0, top_p > 0, seed >= 0]))
        temperature = tf.where(temperature > 0, temperature, d["temperature"])
        top_k = tf.where(top_k > 0, top_k, d["top_k"] or self._vocab_size)
        top_p = tf.where(top_p > 0, top_p, d["top_p"] or _NO_TOP_P)
        # An int seed s samples like tfpg.generate(seed=s): the stateless seed [s, 0].
        seed_pair = tf.cast(tf.stack([seed % 2**32, seed // 2**32]), tf.int32)
        seed_pair = tf.where(seed >= 0, seed_pair,
                             tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int32))

        def decode(greedy):
            return decode_loop(self.policy, prompt_ids, n, seed_pair, temperature,
                               None if greedy else top_k, None if greedy else top_p,
                               greedy, d["eos_id"], self._suppress_ids,
                               prompt_mask=prompt_mask).token_ids

        def decode_batch():
            return tf.cond(sample, lambda: decode(False), lambda: decode(True))

        # decode_loop cannot stack zero rows, so an empty request is answered here.
        token_ids = tf.cond(tf.shape(prompt_ids)[0] > 0, decode_batch,
                            lambda: tf.zeros([0, n], tf.int32))         # [B, N]
        return {"completions": self.ids_to_text(token_ids), "token_ids": token_ids}

    def _encode(self, layer, texts):
        """(ids int32 [B, T] left-padded, mask bool [B, T]) from an encoder layer."""
        if self._with_mask:
            ids, mask = layer(texts)
            return ids, mask > 0
        ids = layer(texts)
        return ids, ids != 0

    def _tokenize(self, prompts):
        """prompts [B] -> token_ids int32 [B, T] left-padded with the pad id (BOS / EOS
        where the tokenizer adds them) and mask int32 [B, T] (1 = a real token)."""
        ids, mask = self._encode(self.prompt_tokens, prompts)
        return {"token_ids": ids, "mask": tf.cast(mask, tf.int32)}

    def _log_probs(self, prompts, completions):
        prompt_ids, prompt_mask = self._encode(self.prompt_to_ids, prompts)  # [B, P]
        ids, real = self._encode(self.text_to_ids, completions)        # [B, C] left-padded
        if not self._with_mask:
            real &= ids != Tokenizer.bos_id                             # tfpg's adds BOS
        tokens = tf.ragged.boolean_mask(ids, real)                      # [B, (n)]
        if self._defaults["eos_id"] is not None:
            eos = tf.fill([tf.shape(ids)[0], 1], self._defaults["eos_id"])
            tokens = tf.concat([tokens, eos], axis=1)
        token_ids = tokens.to_tensor(self._pad_id)                      # [B, N] right-padded
        mask = tf.sequence_mask(tokens.row_lengths(), tf.shape(token_ids)[1], tf.float32)
        sequence = tf.concat([prompt_ids, token_ids], axis=1)           # [B, P + N]
        padding_mask = tf.concat([prompt_mask, mask > 0], axis=1)
        if self._max_length is not None:
            tf.debugging.assert_less_equal(
                tf.reduce_max(tf.reduce_sum(tf.cast(padding_mask, tf.int32), axis=1)),
                self._max_length,
                message="prompt + completion is longer than the model's max_length")
        logits = self.policy(sequence, padding_mask=padding_mask)       # [B, P + N, V]
        prompt_length = tf.shape(prompt_ids)[1]
        step_logits = logits[:, prompt_length - 1:-1]                   # [B, N, V]
        return {"log_probs": token_log_probs(step_logits, token_ids, mask=mask),
                "mask": mask, "token_ids": token_ids}


def export_saved_model(policy, tokenizer, path, max_new_tokens=32, sampler="greedy",
                       temperature=1.0, top_k=None, top_p=None, eos_id="auto",
                       max_prompt_length=None, metadata=None, chat_template=None):
    """Exports `policy` and `tokenizer` as a string-in, string-out SavedModel.

    Args:
        policy: `tfpg.models.Policy`. `PolicyNetwork`, `KerasHubPolicy`); anything else
            is refused (TypeError, one line.
        tokenizer: `tfpg.Tokenizer` or `tfpg.KerasHubTokenizer`. The `Tokenizer` (or
            `KerasHubTokenizer`) the policy was trained with.
        path: str. It is replaced atomically if it holds a previous tfpg export; any
            other non-empty directory is refused, and so is a path that another process
            is writing (it holds `PATH.lock`).
        max_new_tokens: int. Generation default of the `generate` signature (see
            `tfpg.generate`).
        sampler: str. Generation default of the `generate` signature.
        temperature: float. Generation default of the `generate` signature.
        top_k: int or None. Generation default of the `generate` signature.
        top_p: float or None. Generation default of the `generate` signature.
        eos_id: int, None or "auto". Generation default of the `generate` signature.
        max_prompt_length: int or None. Longer prompts keep their last tokens (BOS
            stays). For a Transformer the default is `policy.max_length -
            max_new_tokens`.
        metadata: dict or None. JSON-serialisable dict stored in `tfpg_export.json`.
        chat_template: `tfpg.hf.chat_template.ChatTemplate` or None. The
            `tfpg.hf.chat_template.ChatTemplate` the policy's prompts were rendered with
            (a run on conversational data), or None. It is recorded in
            `tfpg_export.json` ("chat_template"); the signatures then take prompts
            already rendered with it (a graph cannot run Jinja) and add no BOS (the
            template writes it), and `load(path).generate` renders conversations (a
            string as one user message) before calling them.

    Returns:
        `path`.

    Example:
    >>> path = "saved_models/run"
    >>> tfpg.export_saved_model(policy, tok, path, max_new_tokens=16)  # doctest: +SKIP
    'saved_models/run'
    """
    check_policy(policy)
    _, top_k, top_p = resolve_sampler(sampler, temperature, top_k, top_p)
    eos_id = resolve_eos_id(policy, eos_id)
    if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    if policy.vocab_size < tokenizer.vocabulary_size:
        raise ValueError(f"the policy has vocab_size={policy.vocab_size} but the tokenizer "
                         f"has {tokenizer.vocabulary_size} tokens; export the tokenizer the "
                         "policy was trained with")
    if policy.is_positional and max_prompt_length is None:
        max_prompt_length = policy.max_length - max_new_tokens
        if max_prompt_length < 1:
            raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room for a "
                             f"prompt in the model's max_length={policy.max_length}")
    defaults = {"max_new_tokens": int(max_new_tokens), "sampler": sampler,
                "temperature": float(temperature),
                "top_k": None if top_k is None else int(top_k),
                "top_p": None if top_p is None else float(top_p),
                "eos_id": None if eos_id is None else int(eos_id)}
    path = normalize_path(path)
    check_replaceable(path)             # before anything is created
    if not policy.built:
        policy.build()
    make_parent(path)

    def write(tmp):
        _write_saved_model(policy, tokenizer, defaults, max_prompt_length, tmp,
                           chat=chat_template is not None)
        tokenizer.save(os.path.join(tmp, TOKENIZER_FILE))

    return write_directory(path, write, METADATA_FILE, {
        "format": FORMAT, "version": FORMAT_VERSION, "tfpg_version": __version__,
        "vocabulary_size": tokenizer.vocabulary_size,
        "max_prompt_length": max_prompt_length,
        # What `GeneratorModel.generate` bounds max_new_tokens with.
        "max_length": policy.max_length if policy.is_positional else None,
        "decode_cache_bytes_per_token": cache_bytes_per_token(policy),
        "generation": defaults, "metadata": metadata or {},
        "chat_template": None if chat_template is None else chat_template.get_config()})


def write_directory(path, write, marker_file=METADATA_FILE, marker=None,
                    kind="tfpg export"):
    """Writes the directory `path` as one step, replacing a previous one.

    Under `path`'s writer lock, `write(tmp)` fills a temporary sibling; then
    `marker` (a dict) goes to `marker_file` last, with the manifest of every other
    file (its presence marks the directory complete), and the sibling is renamed
    into place (the old directory kept aside until then, see `recover`). On any
    failure the sibling is removed and `path` is as it was.

    Args:
        path: the directory to write; absent, empty, or one holding `marker_file`.
        write: a function of the temporary directory that writes the contents.
        marker_file: the file naming what the directory is.
        marker: the marker's contents; "manifest" is added.
        kind: what such a directory is called in errors.

    Returns:
        `path`.
    """
    path = normalize_path(path)
    with output_lock(path):
        recover(path)
        check_replaceable(path, marker_file, kind)  # a restored backup may differ
        tmp = path + TMP_SUFFIX + secrets.token_hex(4)
        try:
            write(tmp)
            write_json_atomically(os.path.join(tmp, marker_file), dict(
                marker or {}, manifest=trust.file_manifest(tmp, exclude=(marker_file,))))
            _move_into_place(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return path


def make_parent(path):
    """Creates the parent directory of `path`; a file in the way is a one-line error."""
    parent = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(parent, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ValueError(f"{path}: cannot be created, a file is in the way of "
                         f"{parent}") from None


def _write_saved_model(policy, tokenizer, defaults, max_prompt_length, directory,
                       chat=False):
    """Traces the serving functions and saves them to `directory` (the slow step)."""
    module = _ExportModule(policy, tokenizer, defaults, max_prompt_length, chat)
    traced = {name: getattr(module, name).get_concrete_function()
              for name in ("generate", "generate_with_options", "log_probs", "tokenize")}
    save_traced(module, directory, dict(traced, serving_default=traced["generate"]))


def save_traced(module, directory, signatures):
    """`tf.saved_model.save(module, directory, signatures=signatures)`, tracing nothing
    again: each `tf.function` attribute of `module` that is a signature is replaced by
    its traced (concrete) function first. (The save would trace every `tf.function`
    attribute a second time, its cache key being different inside the save: the whole
    cost of an export, doubled.) Every variable the functions read is tracked (as
    `module.weights`), so it is saved."""
    for name, function in signatures.items():
        if isinstance(getattr(module, name, None), tf.types.experimental.PolymorphicFunction):
            setattr(module, name, function)
    seen = {}
    for function in signatures.values():
        for variable in function.variables:
            seen.setdefault(id(variable), variable)
    module.weights = list(seen.values())
    tf.saved_model.save(module, directory, signatures=signatures)


def recover(path):
    """Repairs what an interrupted export left at `path`.

    Restores `path` from `PATH.tfpg-backup` when only the backup exists, deletes a
    backup whose replacement is in place, and removes stale `PATH.tmp-*` folders.
    Returns True when a backup was restored.

    Runs under the writer lock of `path` (taken here unless this process holds it):
    a `PATH.tmp-*` is stale only when no live process holds that lock. Raises
    `tfpg.guards.locking.OutputLockedError` when there is something to repair and another
    process holds it.
    """
    path = normalize_path(path)
    if not _needs_recovery(path):
        return False
    with output_lock(path):
        return _recover_locked(path)


def recover_if_unlocked(path):
    """`recover(path)` unless another process is writing `path` (or no lock can be
    taken there, e.g. a read-only directory): what readers (`load`) run, so that
    they never delete a live writer's `PATH.tmp-*`. Returns True when a backup was
    restored."""
    path = normalize_path(path)
    if not _needs_recovery(path):
        return False            # the common case: no lock file is made at all
    with try_output_lock(path) as locked:
        return _recover_locked(path) if locked else False


def _needs_recovery(path):
    return os.path.isdir(path + BACKUP_SUFFIX) or bool(
        glob.glob(glob.escape(path) + TMP_SUFFIX + "*"))


def _recover_locked(path):
    backup = path + BACKUP_SUFFIX
    restored = False
    if os.path.isdir(backup):
        if os.path.exists(path):
            # The new export was renamed into place before the crash: it is complete.
            shutil.rmtree(backup)
        else:
            os.rename(backup, path)
            restored = True
    for stale in glob.glob(glob.escape(path) + TMP_SUFFIX + "*"):
        shutil.rmtree(stale, ignore_errors=True)
    return restored


def normalize_path(path):
    """`path` as `write_directory` writes it: normpath drops a trailing "/", which
    would otherwise put "PATH/.tfpg-backup" inside the directory instead of beside it."""
    return os.path.normpath(os.fspath(path))


def _move_into_place(tmp, path):
    backup = path + BACKUP_SUFFIX
    if os.path.exists(path):
        os.rename(path, backup)
    os.rename(tmp, path)
    shutil.rmtree(backup, ignore_errors=True)


def _read_export_info(path):
    """Returns the parsed `tfpg_export.json` of `path` or raises a one-line error."""
    trust.require_directory(path)
    if os.path.isfile(path):
        if zipfile.is_zipfile(path) or path.endswith((".keras", ".h5")):
            raise ValueError(f"{path}: is a Keras model file, not a tfpg SavedModel; "
                             "export it with tfpg.export_saved_model (or `tfpg export`)")
        raise ValueError(f"{path}: is a file, not a tfpg SavedModel directory")
    if not os.listdir(path):
        raise ValueError(f"{path}: is an empty directory, not a tfpg SavedModel")
    if not os.path.isfile(os.path.join(path, "saved_model.pb")):
        raise ValueError(f"{path}: is not a SavedModel (no saved_model.pb)")
    info_path = os.path.join(path, METADATA_FILE)
    if not os.path.isfile(info_path):
        raise ValueError(f"{path}: is a SavedModel but not a complete tfpg export "
                         f"(no {METADATA_FILE})")
    return read_json_marker(info_path, FORMAT, FORMAT_VERSION, "tfpg export",
                            "tfpg export", where=path)


def read_export_info(path):
    """The `tfpg_export.json` contents of the export at `path` (a dict).

    Raises the same one-line errors as `load` for anything that is not a tfpg export.
    """
    return _read_export_info(normalize_path(path))


def load(path, trust_remote_code=False):
    """Loads a directory written by `export_saved_model` as a `GeneratorModel`.

    Verifies before it executes: a SavedModel is a program (TensorFlow runs its
    resource initializers at load and its signatures' ops at each call), so first

    * every file must match the SHA-256 in the manifest of `tfpg_export.json` (an
      edited `saved_model.pb`, variables file or `tokenizer.json` is refused);
    * `saved_model.pb` is parsed, not run, and every op of its graph and function
      library (resource initializers and signatures included) must be one that
      tfpg's own exports contain (`tfpg.guards.trust`): no file, network or Python op.

    An export written before manifests existed is loaded with a warning (its files
    cannot be checked for edits) but with the op check, which is what keeps its
    graph from running code. The manifest lives in the directory, so it shows that
    nothing changed since the export, not who made it; the op check is the guard.

    Args:
        path: str. The export directory.
        trust_remote_code: bool. True skips the op check (not the manifest), for a graph
            you built yourself: loading then runs whatever ops the directory holds, with
            your rights, as `tf.saved_model.load` does. Never pass it for a directory
            from someone else.

    Raises FileNotFoundError (missing path) or ValueError (anything else that is not
    a complete tfpg export: a file, an empty or foreign directory, a half-written or
    corrupt SavedModel, a manifest mismatch, an op outside tfpg's exports) with one
    line naming the path and the problem.

    A `PATH.tmp-*` or `PATH.tfpg-backup` left by an interrupted export is cleaned up
    first, unless another process holds `PATH.lock` (it is writing there now).

    Example:
    >>> gen = tfpg.load("saved_models/run")  # doctest: +SKIP
    >>> gen.generate(["3 + 4 ="])  # doctest: +SKIP
    ['7']
    """
    path = normalize_path(path)
    recover_if_unlocked(path)
    info = _read_export_info(path)
    trust.verify_model_directory(path, info, METADATA_FILE, "SavedModel", trust_remote_code,
                                 anyway="tfpg.load(..., trust_remote_code=True)")
    tokenizer = _load_tokenizer(os.path.join(path, TOKENIZER_FILE))
    try:
        loaded = tf.saved_model.load(path)
    except Exception as e:  # TF raises many types for corrupt files; report any as one line
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"{path}: cannot load the SavedModel ({first_line})") from None
    missing = [name for name in SIGNATURES if name not in loaded.signatures]
    if missing:
        raise ValueError(f"{path}: tfpg export is missing signatures {missing}")
    return GeneratorModel(path, loaded, tokenizer, info)


def _load_tokenizer(path):
    """The export's tokenizer: a tfpg `Tokenizer` or a `KerasHubTokenizer` (by the
    file's "format"; the latter needs keras_hub)."""
    from tfpg.text.keras_hub_tokenizer import FORMAT as KERAS_HUB_FORMAT
    from tfpg.text.keras_hub_tokenizer import KerasHubTokenizer
    try:
        with open(path, encoding="utf-8") as f:
            is_keras_hub = json.load(f).get("format") == KERAS_HUB_FORMAT
    except (OSError, ValueError, AttributeError):
        is_keras_hub = False       # Tokenizer.load reports what is wrong
    return KerasHubTokenizer.load(path) if is_keras_hub else Tokenizer.load(path)


def _as_string_list(texts, what):
    if isinstance(texts, (str, bytes)):
        raise TypeError(f"{what} must be a list of strings, not a single string")
    texts = list(texts)
    for text in texts:
        if not isinstance(text, (str, bytes)):
            raise TypeError(f"{what} must hold strings, got {type(text).__name__}")
    return texts


def _text(text):
    return text.decode("utf-8", "replace") if isinstance(text, bytes) else text


class GeneratorModel:
    """A loaded tfpg export: prompt strings in, completion strings out.

    Attributes:
        path: the export directory.
        tokenizer: its `Tokenizer`.
        generation_defaults: the defaults chosen at export time (dict).
        metadata: the `metadata` dict given at export time.
        chat_template: the `ChatTemplate` of a chat export (None otherwise): prompts
            are rendered with it before the signatures see them.
        signatures: the SavedModel's signature functions (`generate`,
            `generate_with_options`, `log_probs`, `serving_default`).

    Example:
    >>> gen = tfpg.load("saved_models/run")  # doctest: +SKIP
    >>> gen.generate(["3 + 4 =", "2 + 2 ="], max_new_tokens=4)  # doctest: +SKIP
    ['7', '4']
    >>> # log p("7" <eos> | "3 + 4 =")
    >>> gen.score(["3 + 4 ="], ["7"])  # doctest: +SKIP
    [-0.0312]
    """

    def __init__(self, path, loaded, tokenizer, info):
        self.path = path
        self.tokenizer = tokenizer
        self.generation_defaults = dict(info["generation"])
        self.metadata = dict(info.get("metadata") or {})
        self._info = info
        self._loaded = loaded
        self.signatures = loaded.signatures
        self.chat_template = None
        if info.get("chat_template"):
            from tfpg.hf.chat_template import ChatTemplate
            self.chat_template = ChatTemplate.from_config(info["chat_template"])

    def render(self, prompts):
        """The prompt strings the signatures take: for a chat export each
        conversation (a list of messages; a string is one user message) rendered
        with the export's chat template and a generation prompt; otherwise the
        strings as they are."""
        from tfpg.hf.chat_template import is_conversation
        if isinstance(prompts, (str, bytes)) or (prompts and isinstance(prompts, list)
                                                 and isinstance(prompts[0], dict)):
            raise TypeError("prompts must be a list (of strings or of conversations), not "
                            "a single prompt")
        prompts = list(prompts)
        if self.chat_template is None:
            if any(is_conversation(p) for p in prompts):
                raise ValueError(f"{self.path} was not trained on conversations (its export "
                                 "has no chat template): give prompt strings")
            return _as_string_list(prompts, "prompts")
        return [self.chat_template.render(
            p if is_conversation(p) else [{"role": "user", "content": _text(p)}])
            for p in prompts]

    def generate(self, prompts, max_new_tokens=None, temperature=None, top_k=None,
                 top_p=None, seed=None, sampler=None, apply_chat_template=True):
        """Completes each prompt; returns list[str] in the order of `prompts`.

        Options left as None take the export defaults; giving `temperature`,
        `top_k`, `top_p` or `seed` samples instead of decoding greedily (an int
        `seed` makes the sample reproducible). `sampler` "greedy" decodes greedily
        whatever the export's default; "sample", "top_k" and "top_p" sample (the
        latter two with `top_k` 50 / `top_p` 0.9 unless given), as `tfpg.generate`.

        Prompt words (or characters) outside the vocabulary are read as `<unk>`;
        a warning names them.

        Raises ValueError for an option out of range (`tfpg.guards.bounds`: temperature > 0
        and finite, top_k an integer >= 1, top_p in (0, 1], max_new_tokens
        an integer >= 1 that leaves a position for the prompt in a positional
        model's table and whose decode fits `tfpg.guards.bounds.decode_memory_limit()`).

        A chat export (`chat_template`) takes conversations (lists of
        `{"role", "content"}` messages) or strings (each one user message) and
        renders them (`render`); `apply_chat_template=False` sends strings already
        rendered as they are.
        """
        prompts = (self.render(prompts) if apply_chat_template
                   else _as_string_list(prompts, "prompts"))
        if max_new_tokens is not None:
            self._check_max_new_tokens(len(prompts), max_new_tokens)
        self._warn_unknown(prompts)
        if sampler is not None:
            temperature, top_k, top_p = self._sampler_options(sampler, temperature, top_k,
                                                              top_p)
            seed = None if sampler == "greedy" else seed    # nothing random to seed
        options = (max_new_tokens, temperature, top_k, top_p, seed)
        if all(option is None for option in options):
            out = self.signatures["generate"](prompts=tf.constant(prompts, tf.string))
        else:
            resolve_sampler("sample", 1.0 if temperature is None else temperature,
                            top_k, top_p)
            if seed is not None and seed < 0:
                raise ValueError(f"seed must be >= 0, got {seed}")
            out = self.signatures["generate_with_options"](
                prompts=tf.constant(prompts, tf.string),
                max_new_tokens=tf.constant(max_new_tokens or 0, tf.int32),
                temperature=tf.constant(temperature or 0.0, tf.float32),
                top_k=tf.constant(top_k or 0, tf.int32),
                top_p=tf.constant(top_p or 0.0, tf.float32),
                seed=tf.constant(-1 if seed is None else seed, tf.int64))
        # errors="replace": a byte-level BPE model may stop inside a UTF-8 sequence.
        return [text.decode("utf-8", errors="replace")
                for text in out["completions"].numpy().tolist()]

    def _check_max_new_tokens(self, batch_size, max_new_tokens):
        """Bounds `max_new_tokens` before the graph allocates anything: an integer
        >= 1, below the position table's size, and a decode that fits in memory
        (the prompt counted at the export's max_prompt_length, or 1 token)."""
        max_new_tokens = bounds.check_count("max_new_tokens", max_new_tokens)
        info = self._info
        max_length = info.get("max_length")
        if max_length is not None and max_new_tokens >= max_length:
            raise ValueError(f"max_new_tokens {max_new_tokens} leaves no position for the "
                             f"prompt in the model's max_length {max_length}")
        bounds.check_decode_memory(batch_size, info.get("max_prompt_length") or 1,
                                   max_new_tokens,
                                   info.get("decode_cache_bytes_per_token") or 0,
                                   info.get("vocabulary_size") or 0)

    def _sampler_options(self, sampler, temperature, top_k, top_p):
        """(temperature, top_k, top_p) that make the export's signature use `sampler`."""
        if sampler == "greedy":
            if (temperature, top_k, top_p) != (None, None, None):
                raise ValueError("sampler='greedy' takes no temperature, top_k or top_p")
            if self.generation_defaults.get("sampler") == "greedy":
                return None, None, None
            return None, 1, None            # the top token alone: argmax
        _, top_k, top_p = resolve_sampler(sampler, 1.0 if temperature is None else
                                          temperature, top_k, top_p)
        return 1.0 if temperature is None else temperature, top_k, top_p

    def _warn_unknown(self, prompts):
        unknown = getattr(self.tokenizer, "unknown_tokens", None)
        # As the graph reads them: invalid UTF-8 as U+FFFD.
        texts = [p.decode("utf-8", "replace") if isinstance(p, bytes) else p for p in prompts]
        unknown = unknown(texts) if unknown is not None else []
        if unknown:
            kind = {"char": "characters", "word": "words"}.get(
                getattr(self.tokenizer, "level", None), "tokens")
            shown = ", ".join(repr(token) for token in unknown[:10])
            more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
            warnings.warn(f"prompts hold {kind} outside the model's vocabulary, read as "
                          f"<unk>: {shown}{more}", stacklevel=3)

    def log_probs(self, prompts, completions):
        """Per-token log-probs of each completion (EOS included) given its prompt.

        Returns a list of float32 arrays, one per completion, of length
        `len(tokenizer.encode(completion, add_bos=False)) + 1` (the EOS; no + 1 for
        an export with `eos_id=None`). A chat export renders the prompts (`render`).
        """
        prompts = self.render(prompts)
        completions = _as_string_list(completions, "completions")
        if len(prompts) != len(completions):
            raise ValueError(f"got {len(prompts)} prompts but {len(completions)} completions")
        out = self.signatures["log_probs"](prompts=tf.constant(prompts, tf.string),
                                           completions=tf.constant(completions, tf.string))
        log_probs, mask = out["log_probs"].numpy(), out["mask"].numpy()
        return [row[m > 0] for row, m in zip(log_probs, mask)]

    def score(self, prompts, completions):
        """Sum of the completion's token log-probs given the prompt: list[float]."""
        return [float(np.sum(row)) for row in self.log_probs(prompts, completions)]

    def run_episodes(self, env, prompts, max_turns, extras=None, **options):
        """Multi-turn episodes with this export's `generate` and `env` (a
        `tfpg.envs.turn_env.TurnEnv` over `self.tokenizer`, e.g. the `ToolEnv` and tools of
        training) in Python: see `tfpg.envs.multi_turn.play_text_episodes`. `options` go
        to `generate` (e.g. `max_new_tokens`: the per-turn budget)."""
        from tfpg.envs.multi_turn import play_text_episodes

        # A chat export: play_text_episodes renders the turns with the export's
        # template and sends them rendered.
        return play_text_episodes(functools.partial(self.generate,
                                                    apply_chat_template=False),
                                  env, prompts, max_turns, extras,
                                  chat_template=self.chat_template, **options)

    def __repr__(self):
        return (f"GeneratorModel(path={self.path!r}, "
                f"vocabulary_size={self.tokenizer.vocabulary_size})")
