"""Checkpoints and run state of `tfpg train`, and `tfpg export` from them.

Checkpoints live beside the export in `OUTPUT.checkpoint/` (a `tf.train.Checkpoint`
of the policy, critic, reference, optimizers and KL controller, the tokenizer, and a
`state.json` naming the last completed epoch of each phase). Each epoch's checkpoint
is written under a new name (`pretrain-3`, `finetune-1`) and only then named in
`state.json`, which is replaced atomically: that rename is the commit, so a process
killed at any instant leaves a state that names a complete checkpoint.
"""

import dataclasses
import glob
import json
import os
import shutil
import time

import keras
import tensorflow as tf

from tfpg.config import (POLICY_MAX_LENGTH, RUNTIME_OPTIONS, TrainConfig, UsageError,
                         check_writable)
from tfpg.export import export_saved_model
from tfpg.model_source import load_policy
from tfpg.models import PolicyNetwork
from tfpg.text import Tokenizer


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
            if saved_config != _comparable(config):
                raise UsageError(f"{directory} holds a run with other options; "
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
        self.values.update(updates)
        if not self.writable:
            return
        os.makedirs(self.directory, exist_ok=True)
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.values, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


def _comparable(config):
    values = dataclasses.asdict(config)
    for name in RUNTIME_OPTIONS:
        values.pop(name, None)
    if values["mixed_precision"] == "float32":
        values["mixed_precision"] = None
    return values


def write_checkpoint(checkpoint, state, phase, epochs_done, **updates):
    """Writes `checkpoint` as `PHASE-EPOCHS`, commits it in the run state, then
    deletes the phase's older (or half-written) checkpoints."""
    name = f"{phase}-{epochs_done}"
    if state.writable:
        checkpoint.write(os.path.join(state.directory, name))
    state.save(**{f"{phase}_epochs_done": epochs_done, f"{phase}_checkpoint": name},
               **updates)
    if state.writable:
        for path in glob.glob(os.path.join(glob.escape(state.directory), phase + "*")):
            if os.path.basename(path).startswith(name + "."):
                continue
            if os.path.isdir(path):                  # a killed writer's temp folder
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.remove(path)


class EpochCheckpoint(keras.callbacks.Callback):
    """Checkpoints and marks the epoch done in the run state at each epoch end."""

    def __init__(self, checkpoint, state, phase, started):
        super().__init__()
        self.checkpoint, self.state, self.phase, self.started = checkpoint, state, phase, started

    def on_epoch_end(self, epoch, logs=None):
        write_checkpoint(self.checkpoint, self.state, self.phase, epoch + 1,
                         seconds=self.state["seconds"] + time.time() - self.started)
        self.started = time.time()


def variable_checkpoint(**groups):
    """A `tf.train.Checkpoint` of named lists of Keras variables.

    Keras 3 models are not trackable object graphs for `tf.train.Checkpoint`, so
    each variable is named by its group and position (`policy/3`), which is stable
    for models built from the same options.
    """
    return tf.train.Checkpoint(**{
        name: tf.train.Checkpoint(**{str(i): v.value for i, v in enumerate(variables)})
        for name, variables in groups.items()})


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


def export_from_source(source, output, tokenizer_path=None):
    """`tfpg export`: a SavedModel from a run's checkpoint directory or a `.keras` file.

    A checkpoint directory (`OUTPUT.checkpoint` of `tfpg train`) holds its tokenizer
    and options (a run from `--model` rebuilds that model, then reads the weights); a
    `.keras` PolicyNetwork needs a tokenizer JSON, by default `tokenizer.json` beside it.
    """
    check_writable(output)
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
            policy = PolicyNetwork(model_vocabulary, config.embedding_dim,
                                   config.hidden_dim, backbone=config.backbone,
                                   num_layers=config.num_layers, max_length=POLICY_MAX_LENGTH)
            policy.build()
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
        policy, tokenizer = load_policy(source, tokenizer_path=tokenizer_path)
        max_new_tokens = 32
        max_prompt_length = None
    else:
        raise UsageError(f"{source}: not a checkpoint directory or a .keras file")
    return export_saved_model(policy, tokenizer, output, max_new_tokens=max_new_tokens,
                              eos_id=tokenizer.eos_id, max_prompt_length=max_prompt_length)
