"""Checkpoints and run state of `tfpg train`, and `tfpg export` from them.

Checkpoints live beside the export in `OUTPUT.checkpoint/` (a `tf.train.Checkpoint`
of the policy, critic, reference, optimizers and KL controller, the tokenizer, and a
`state.json` naming the last completed epoch of each phase). Each epoch's checkpoint
is written under a new name (`pretrain-3`, `finetune-1`) and only then named in
`state.json`, which is replaced atomically: that rename is the commit, so a process
killed at any instant leaves a state that names a complete checkpoint.

A resumed run is the unbroken run (under `--deterministic`, to the bit): the checkpoint
holds every variable a step reads (weights, optimizer slots and iterations, from which
the sampling seeds derive, the trainer's adaptive `kl_coef` and moving-average
baselines, Keras' seed generators), and what is not a variable is a pure function of
(seed, phase, epoch) instead of a stream that runs on from the start: each epoch's data
order (`epoch_batches`) and the global random state (`EpochSeed`, `reseed`).

A write that fails (a full disk, a quota, a read-only file system) is one line naming
the file (`writing`: "no space left on device while writing PATH", a UsageError, exit
status 2); a failed checkpoint leaves nothing of itself (no `*_temp` folder) and the
previous one committed, so the same command, once there is room, resumes.
"""

import contextlib
import dataclasses
import errno
import glob
import json
import os
import shutil
import time

import keras
import numpy as np
import tensorflow as tf

from tfpg.export import export_saved_model
from tfpg.guards.locking import write_json_atomically
from tfpg.options import RUNTIME_OPTIONS, UsageError
from tfpg.run.config import (CHECKPOINT_SUFFIX, TrainConfig, check_export_format, check_writable,
                             flag)
from tfpg.run.model_source import load_policy, new_policy
from tfpg.text.tokenizer import Tokenizer

# 2: the fine-tuning checkpoint always holds the KL reference (measured on every run).
STATE_VERSION = 2


class RunState:
    """`state.json` of a run's checkpoint directory: which epochs are done, and the
    checkpoint holding each phase's last completed epoch."""

    def __init__(self, directory, config, writable=True):
        self.directory = directory
        self.writable = writable
        self.path = os.path.join(directory, "state.json")
        self.values = {"version": STATE_VERSION, "config": dataclasses.asdict(config),
                       "pretrain_epochs_done": 0, "finetune_epochs_done": 0,
                       "pretrain_checkpoint": None, "finetune_checkpoint": None,
                       "before": None, "seconds": 0.0}
        if os.path.exists(self.path):
            try:
                with open(self.path) as f:
                    saved = json.load(f)
                saved_config = _comparable(TrainConfig.from_dict(saved["config"]))
            except (OSError, ValueError, KeyError, TypeError):
                raise UsageError(f"{self.path}: unreadable checkpoint state; "
                                 "delete the directory to start over") from None
            differing = _differing_options(saved_config, _comparable(config))
            if differing:
                raise UsageError(f"{directory} holds a run with other options ({differing}); "
                                 "use another --output or delete it to start over")
            version = saved.get("version", 1)
            if version > STATE_VERSION:
                raise UsageError(f"{directory} was written by a newer tfpg (state version "
                                 f"{version}); upgrade tfpg or use another --output")
            if version < 2 and saved.get("finetune_epochs_done"):
                # Version 1 kept no KL reference in the fine-tuning checkpoint when
                # kl_coef was 0; its pre-training checkpoints are still good.
                raise UsageError(f"{directory} holds fine-tuning epochs of an older tfpg "
                                 "(state version 1) that this one cannot resume; delete "
                                 "it or use another --output to start over")
            for phase in ("pretrain", "finetune"):       # written by tfpg 0.1
                if saved.get(f"{phase}_epochs_done") and f"{phase}_checkpoint" not in saved:
                    saved[f"{phase}_checkpoint"] = phase
            self.values.update(saved, version=STATE_VERSION)

    @property
    def resumed(self):
        return self.values["pretrain_epochs_done"] > 0 or self.values["seconds"] > 0

    def __getitem__(self, key):
        return self.values[key]

    def save(self, **updates):
        """Updates the state and replaces `state.json` with it atomically; a failed
        write (UsageError, see `writing`) leaves both as they were."""
        values = dict(self.values, **updates)
        if self.writable:
            with writing(self.path):
                os.makedirs(self.directory, exist_ok=True)
                write_json_atomically(self.path, values, indent=2)
        self.values = values


def _comparable(config):
    values = dataclasses.asdict(config)
    for name in RUNTIME_OPTIONS:
        values.pop(name, None)
    if values["mixed_precision"] == "float32":
        values["mixed_precision"] = None
    return values


def _differing_options(saved, current):
    """Each option whose value differs, as "--name NOW (was THEN)", comma-separated;
    "" when the two runs compute the same."""
    def shown(value):
        return "none" if value is None else str(value)
    return ", ".join(f"{flag(name)} {shown(current[name])} (was {shown(saved[name])})"
                     for name in saved if saved[name] != current[name])


# What the C library calls the errors of a failed file write. TensorFlow's file system
# reports them in its messages, without an errno.
_WRITE_ERRORS = tuple(os.strerror(code) for code in (
    errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM,
    errno.EIO, errno.ENOENT, errno.ENOTDIR, errno.EISDIR))


def write_failure(error):
    """Why `error` failed a file write ("no space left on device"), or None when it
    is not a failed write: any OSError; a TensorFlow error only when its message
    names one of the C library's write errors (`SaveV2 ...; No space left on device`
    is a ResourceExhaustedError, a full file an OutOfRangeError)."""
    if isinstance(error, OSError):
        reason = error.strerror or str(error) or type(error).__name__
    elif isinstance(error, tf.errors.OpError):
        reason = next((text for text in _WRITE_ERRORS if text in str(error.message)), None)
    else:
        reason = None
    return reason and reason[0].lower() + reason[1:]


@contextlib.contextmanager
def writing(path):
    """Reports a write of `path` under it that fails (disk full, quota, read-only
    file system, ...) as a one-line UsageError naming it: `tfpg: error: no space left
    on device while writing PATH`, exit status 2, instead of TensorFlow's `SaveV2`
    trace or Python's OSError (whose write errors name no file). The caller cleans up."""
    try:
        yield
    except (OSError, tf.errors.OpError) as error:
        reason = write_failure(error)
        if reason is None:
            raise
        raise UsageError(f"{reason} while writing {path}") from error


def remove_checkpoint(directory, name):
    """Deletes checkpoint `name` of `directory`: its files and the `NAME_temp` folder
    that TensorFlow writes it in (and leaves behind when the write fails)."""
    prefix = os.path.join(directory, name)
    shutil.rmtree(prefix + "_temp", ignore_errors=True)
    for path in glob.glob(glob.escape(prefix) + ".*"):
        with contextlib.suppress(OSError):
            os.remove(path)


def write_checkpoint(checkpoint, state, phase, epochs_done, **updates):
    """Writes `checkpoint` as `PHASE-EPOCHS`, commits it in the run state, then
    deletes the phase's older (or half-written) checkpoints. A write that fails
    (UsageError, see `writing`) deletes what it wrote and leaves the state naming
    the previous checkpoint."""
    name = f"{phase}-{epochs_done}"
    try:
        if state.writable:
            prefix = os.path.join(state.directory, name)
            with writing(prefix):
                checkpoint.write(prefix)
        state.save(**{f"{phase}_epochs_done": epochs_done, f"{phase}_checkpoint": name},
                   **updates)
    except UsageError:
        if state.writable and state[f"{phase}_checkpoint"] != name:
            remove_checkpoint(state.directory, name)
        raise
    if state.writable:
        for path in glob.glob(os.path.join(glob.escape(state.directory), phase + "*")):
            if os.path.basename(path).startswith(name + "."):
                continue
            if os.path.isdir(path):                  # a killed writer's temp folder
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.remove(path)


class WriteReporting(keras.callbacks.Callback):
    """Runs `callback` (a logger), a failed write in any of its hooks reported as a
    one-line UsageError naming `path` (see `writing`)."""

    def __init__(self, callback, path):
        super().__init__()
        self.callback, self.path = callback, path

    def set_model(self, model):
        super().set_model(model)
        self.callback.set_model(model)

    def set_params(self, params):
        super().set_params(params)
        self.callback.set_params(params)


def _reporting_writes(hook):
    def run_hook(self, *args, **kwargs):
        with writing(self.path):
            return getattr(self.callback, hook)(*args, **kwargs)
    run_hook.__name__ = hook
    return run_hook


for _hook in ("on_train_begin", "on_train_end", "on_epoch_begin", "on_epoch_end",
              "on_train_batch_begin", "on_train_batch_end"):
    setattr(WriteReporting, _hook, _reporting_writes(_hook))


class EpochCheckpoint(keras.callbacks.Callback):
    """Checkpoints and marks the epoch done in the run state at each epoch end."""

    def __init__(self, checkpoint, state, phase, started):
        super().__init__()
        self.checkpoint, self.state, self.phase, self.started = checkpoint, state, phase, started

    def on_epoch_end(self, epoch, logs=None):
        write_checkpoint(self.checkpoint, self.state, self.phase, epoch + 1,
                         seconds=self.state["seconds"] + time.time() - self.started)
        self.started = time.time()


# The independent random streams of a run, folded with its seed into every seed it uses.
SEED_STREAMS = {"pretrain": 1, "finetune": 2, "agent": 3, "evaluate": 4}


def stream_seed(seed, stream, epoch=0):
    """A seed in [0, 2**31) for `stream` (a key of SEED_STREAMS) at `epoch`, a pure
    function of the run's `seed` (NumPy's SeedSequence: a stable, well-mixed hash,
    so neighbouring seeds or epochs give unrelated streams)."""
    entropy = [seed % 2**32, SEED_STREAMS[stream], epoch]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0] >> 1)


def reseed(seed, stream, epoch=0):
    """Seeds Python, NumPy, TensorFlow and Keras' global seed generator from
    (seed, stream, epoch): what draws from them next (a layer's initial weights,
    a Python reward using NumPy) draws the same however the run got here."""
    keras.utils.set_random_seed(stream_seed(seed, stream, epoch))


class EpochSeed(keras.callbacks.Callback):
    """`reseed`s at each epoch's start from (seed, phase, epoch): epoch k's global
    random streams do not depend on the epochs before it, which a resumed run skips."""

    def __init__(self, seed, phase):
        super().__init__()
        self.seed, self.phase = seed, phase

    def on_epoch_begin(self, epoch, logs=None):
        reseed(self.seed, self.phase, epoch)


def epoch_batches(elements, batch_size, seed, phase, first_epoch, epochs, steps=None,
                  drop_remainder=False):
    """The batches of epochs [first_epoch, epochs) of a dataset, each epoch's order a
    pure function of (seed, phase, epoch).

    A `shuffle(reshuffle_each_iteration=True)` dataset gives epoch k the k-th order of
    a stream that starts again in every process, so a run resumed at epoch k would
    see epoch 0's order. Here epoch k's order is a stateless permutation seeded by
    (seed, phase, k), and one dataset holds all the remaining epochs, each exactly
    `steps` batches: pass `steps_per_epoch=steps` to `fit` (one iterator over all
    the epochs; any other iterator, such as Keras' probe of a first batch, starts
    over at `first_epoch` and changes nothing).

    Args:
        elements: `tf.data.Dataset`. Single examples (not batched), in a fixed
            order; read once into memory.
        batch_size: int. Examples per batch.
        seed: int. The run's seed.
        phase: `"pretrain"` or `"finetune"`. A key of SEED_STREAMS.
        first_epoch: int. The first epoch to give (`initial_epoch` of fit).
        epochs: int. The epoch to stop before (`epochs` of fit).
        steps: int or None. Batches per epoch; None: one pass over the examples.
            More than a pass holds runs on into further passes, each in an order of
            its own.
        drop_remainder: bool. Drop each pass's last partial batch (a static batch
            size).

    Returns:
        (dataset, steps): the batches, and the batches per epoch.
    """
    columns = elements.batch(2**31 - 1).get_single_element()     # every example, [n, ...]
    count = int(tf.nest.flatten(columns)[0].shape[0])
    per_pass = count // batch_size if drop_remainder else -(-count // batch_size)
    if per_pass < 1:
        raise ValueError(f"{count} examples make no batch of {batch_size} "
                         "(drop_remainder=True)")
    steps = steps or per_pass
    passes = -(-steps // per_pass)
    phase_seed = tf.constant([stream_seed(seed, phase), 0], tf.int64)

    def one_pass(epoch, repetition):
        pass_seed = tf.random.experimental.stateless_fold_in(
            tf.random.experimental.stateless_fold_in(phase_seed, epoch, alg="philox"),
            repetition, alg="philox")
        order = tf.random.experimental.stateless_shuffle(tf.range(count), pass_seed,
                                                         alg="philox")           # [n]
        shuffled = tf.nest.map_structure(lambda column: tf.gather(column, order), columns)
        return tf.data.Dataset.from_tensor_slices(shuffled).batch(
            batch_size, drop_remainder=drop_remainder)

    def one_epoch(epoch):
        epoch = tf.cast(epoch, tf.int32)
        repetitions = tf.data.Dataset.range(passes).map(lambda r: tf.cast(r, tf.int32))
        return repetitions.flat_map(lambda r: one_pass(epoch, r)).take(steps)

    dataset = tf.data.Dataset.range(first_epoch, epochs).flat_map(one_epoch)
    return dataset.prefetch(tf.data.AUTOTUNE), steps


def variable_checkpoint(**groups):
    """A `tf.train.Checkpoint` of named lists of Keras variables.

    Keras 3 models are not trackable object graphs for `tf.train.Checkpoint`, so
    each variable is named by its group and position (`policy/3`), which is stable
    for models built from the same options.
    """
    return tf.train.Checkpoint(**{
        name: tf.train.Checkpoint(**{str(i): v.value for i, v in enumerate(variables)})
        for name, variables in groups.items()})


def trainer_state(trainer):
    """All a policy-gradient trainer's steps read and write, as named lists of
    variables: "policy"; "optimizer" (slots and `iterations`, from which the
    sampling and minibatch seeds derive); "trainer", its other variables (critic,
    KL reference, adaptive `kl_coef`, moving-average baseline, seed generators)."""
    policy_ids = {id(v) for v in trainer.policy.variables}
    return {"policy": trainer.policy.variables, "optimizer": trainer.optimizer.variables,
            "trainer": [v for v in trainer.variables if id(v) not in policy_ids]}


def trainer_checkpoint(trainer):
    """A `variable_checkpoint` of `trainer_state(trainer)`."""
    return variable_checkpoint(**trainer_state(trainer))


def restore(checkpoint, directory, name):
    """Reads checkpoint `name` of `directory` into `checkpoint` (nothing for None); a
    missing or unreadable one is a UsageError naming it."""
    if name is None:
        return
    prefix = os.path.join(directory, name)
    if not tf.io.gfile.exists(prefix + ".index"):
        raise UsageError(f"{directory}: checkpoint {name} named in state.json is missing; "
                         "delete the directory to start over")
    try:
        checkpoint.read(prefix).assert_existing_objects_matched()
    except Exception as error:  # noqa: BLE001 - TF raises many types for corrupt files
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise UsageError(f"{prefix}: cannot restore the checkpoint ({first}); delete "
                         f"{directory} to start over") from None




def export_hub_policy(policy, tokenizer, output, export_format, model=None):
    """Writes a KerasHub policy to `output` as a transformers checkpoint (LoRA merged)
    or, `export_format="peft"`, as PEFT adapters whose base is `model` (the run's
    `--model`: a directory made absolute, `hf://ORG/NAME` the Hub's `ORG/NAME`; a
    KerasHub preset name is no transformers base, so none is named). Bad options are
    a UsageError."""
    from tfpg.hf.export import export_transformers
    base = None
    if model and os.path.isdir(model):
        base = os.path.abspath(model)
    elif model and model.startswith("hf://"):
        base = model[len("hf://"):]
    try:
        with writing(output):       # the export removes its own temporary folder
            return export_transformers(policy, output, tokenizer,
                                       merge_lora=export_format != "peft",
                                       format=export_format, base_model_name_or_path=base)
    except UsageError:
        raise
    except ValueError as error:
        raise UsageError(str(error)) from None


def export_from_source(source, output, tokenizer_path=None, export_format="saved_model"):
    """`tfpg export`: a SavedModel (or, `export_format` "transformers" / "peft", a
    Hugging Face checkpoint / PEFT adapters: `tfpg.export_transformers`) from a run's
    checkpoint directory or a `.keras` file.

    A checkpoint directory (`OUTPUT.checkpoint` of `tfpg train`; the run's `OUTPUT`
    names it too) holds its tokenizer and options (a run from `--model` rebuilds that
    model, then reads the weights); a `.keras` PolicyNetwork needs a tokenizer JSON,
    by default `tokenizer.json` beside it.
    """
    check_writable(output)
    if (os.path.isdir(source) and not os.path.exists(os.path.join(source, "state.json"))
            and os.path.isdir(os.path.normpath(source) + CHECKPOINT_SUFFIX)):
        source = os.path.normpath(source) + CHECKPOINT_SUFFIX     # the run's OUTPUT
    config = None
    if os.path.isdir(source):
        state_path = os.path.join(source, "state.json")
        if not os.path.exists(state_path):
            raise UsageError(f"{source}: not a tfpg checkpoint directory (no state.json)")
        try:
            with open(state_path) as f:
                state = json.load(f)
            config = TrainConfig.from_dict(state["config"])
        except (OSError, ValueError, KeyError, TypeError):
            raise UsageError(f"{state_path}: unreadable checkpoint state") from None
        check_export_format(export_format, config.model, config.lora_rank)
        own_tokenizer = os.path.join(source, "tokenizer.json")
        if not os.path.exists(own_tokenizer):
            raise UsageError(f"{source}: no tokenizer.json (a half-written checkpoint?)")
        if config.model is not None:            # the run started from this model
            policy, tokenizer = load_policy(config.model, config.lora_rank, tokenizer_path)
        else:
            # The run's own tokenizer gives the model's shape; another one must match it.
            model_vocabulary = Tokenizer.load(own_tokenizer).vocabulary_size
            tokenizer = Tokenizer.load(tokenizer_path or own_tokenizer)
            if tokenizer.vocabulary_size != model_vocabulary:
                raise UsageError(f"tokenizer has {tokenizer.vocabulary_size} tokens but the "
                                 f"model {model_vocabulary}: they do not belong together")
            policy = new_policy(config, model_vocabulary)
        names = [state.get(f"{phase}_checkpoint") or phase for phase in ("finetune", "pretrain")
                 if state.get(f"{phase}_epochs_done") or state.get(f"{phase}_checkpoint")]
        names = [name for name in names
                 if tf.io.gfile.exists(os.path.join(source, name + ".index"))]
        if not names:
            raise UsageError(f"{source}: no completed epoch to export yet")
        try:
            variable_checkpoint(policy=policy.variables).read(
                os.path.join(source, names[0])).expect_partial()
        except Exception as error:  # noqa: BLE001 - TF raises many types for corrupt files
            first = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise UsageError(f"{source}: cannot read checkpoint {names[0]} ({first})") from None
        max_new_tokens = state.get("max_new_tokens", 32)
        max_prompt_length = state.get("max_prompt_length")
    elif source.endswith(".keras") and os.path.isfile(source):
        check_export_format(export_format, source, None)
        policy, tokenizer = load_policy(source, tokenizer_path=tokenizer_path)
        max_new_tokens = 32
        max_prompt_length = None
    else:
        raise UsageError(f"{source}: not a checkpoint directory or a .keras file")
    if export_format != "saved_model":
        return export_hub_policy(policy, tokenizer, output, export_format, config.model)
    with writing(output):           # the export removes its own temporary folder
        return export_saved_model(policy, tokenizer, output, max_new_tokens=max_new_tokens,
                                  eos_id=tokenizer.eos_id, max_prompt_length=max_prompt_length)
