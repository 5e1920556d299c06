"""Keras callbacks for policy-gradient runs: reward logs, sample tables, SavedModel exports.

* `RewardLogger` writes the trainer's `fit` logs (reward, reward_std, kl, entropy, ...)
  to a CSV file and to TensorBoard scalars (every N steps or per epoch), plus
  histograms of the last rollout's rewards and advantages.
* `LanguageModelLogger` does the same for pre-training: loss and perplexity.
* `SampleLogger` completes a fixed list of prompts every N epochs (or steps) and
  writes prompt | completion | reward | reference tables to TensorBoard (text
  plugin) and to markdown / JSONL files.
* `SavedModelExport` exports the policy with `tfpg.export_saved_model` at epoch end,
  atomically, optionally only when a monitored log improves.

They work with any `keras.Model` trainer that has a `policy` attribute (the
`tfpg.algorithms` trainers) and read optional trainer attributes when present
(`last_rollout`, `reward_fn`, `max_new_tokens`, `temperature`, `eos_id`, ...).
Under a multi-worker strategy only the chief writes files.

Example:
>>> agent.fit(dataset, epochs=5, callbacks=[
...     tfpg.callbacks.RewardLogger(csv_path="logs/run/rewards.csv", logdir="logs/run"),
...     tfpg.callbacks.SampleLogger("logs/run", tokenizer=tok, prompts=["3 + 4 ="]),
...     tfpg.callbacks.SavedModelExport("saved_models/run", tokenizer=tok)])
"""

import collections.abc
import csv
import io
import json
import math
import os
import warnings

import keras
import numpy as np
import tensorflow as tf

from tfpg import data as tfpg_data
from tfpg.distribution import is_chief
from tfpg.export import export_saved_model, read_export_info, recover
from tfpg.locking import write_file_atomically
from tfpg.models.policy import Policy, check_policy
from tfpg.generation import generate
from tfpg.rewards.base import call_reward

__all__ = ["RewardLogger", "LanguageModelLogger", "SampleLogger", "SavedModelExport"]


def _is_chief(model):
    """False on the non-chief workers of `model`'s multi-worker strategy (they must
    not write)."""
    return is_chief(getattr(model, "distribute_strategy", None))


def _numpy(value):
    return value.numpy() if hasattr(value, "numpy") else np.asarray(value)


def _scalars(logs):
    """The numeric scalar entries of a Keras logs dict, as Python floats, in order."""
    scalars = {}
    for name, value in (logs or {}).items():
        try:
            array = _numpy(value)
        except (TypeError, ValueError):
            continue
        if array.size == 1 and array.dtype.kind in "biuf":
            scalars[name] = float(array.reshape(()))
    return scalars


def _policy_of(model):
    """The policy a trainer holds (or the model itself when it is a `Policy`)."""
    if isinstance(model, Policy):
        return model
    return check_policy(getattr(model, "policy", None), "the model's policy")


class _CsvLog:
    """A CSV file that grows one complete line per `append`.

    Each row is written with a single `write` of a whole line, so an interrupted
    process leaves at most one partial last line, which the next `_CsvLog` on the file
    drops. A row with new columns rewrites the file (temp file + rename) with the
    wider header.
    """

    def __init__(self, path):
        self.path = path
        self.fields, self.rows = None, []
        if os.path.isfile(path):
            with open(path, newline="", encoding="utf-8") as f:
                text = f.read()
            if not text.endswith("\n"):
                text = text[:text.rfind("\n") + 1]
            reader = csv.DictReader(io.StringIO(text))
            self.rows = list(reader)
            self.fields = reader.fieldnames
        if self.fields is None:
            self.fields = []
            self._rewrite()

    def drop_rows(self, keep):
        """Keeps only the rows (dicts of strings) for which `keep(row)` is true."""
        kept = [row for row in self.rows if keep(row)]
        if len(kept) != len(self.rows):
            self.rows = kept
            self._rewrite()

    def append(self, row):
        new_fields = [name for name in row if name not in self.fields]
        row = {name: "" if value is None else str(value) for name, value in row.items()}
        self.rows.append(row)
        if new_fields:
            self.fields = self.fields + new_fields
            self._rewrite()
            return
        with open(self.path, "a", newline="", encoding="utf-8") as f:
            f.write(self._format([row]))

    def _format(self, rows, header=False):
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, self.fields, lineterminator="\n")
        if header:
            writer.writeheader()
        writer.writerows(rows)
        return buffer.getvalue()

    def _rewrite(self):
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        write_file_atomically(self.path,
                              self._format(self.rows, header=True) if self.fields else "")


class _GlobalStep(keras.callbacks.Callback):
    """Counts train steps across epochs: `self._step` is the global step of the last
    batch, the same in a run resumed at epoch k (k * steps per epoch, when `fit`
    knows the number of steps) as in one that never stopped."""

    _step = 0

    def on_epoch_begin(self, epoch, logs=None):
        steps = (self.params or {}).get("steps")
        if steps:
            self._step = epoch * steps

    def on_train_batch_end(self, batch, logs=None):
        self._step += 1


class RewardLogger(_GlobalStep):
    """Logs reward statistics from the `fit` logs to CSV and TensorBoard.

    Every numeric scalar in the logs is recorded under its own name: the trainers'
    `reward`, `reward_std`, `kl`, `entropy`, `completion_length`,
    `truncated_fraction`, `reward/<component>`, losses (the README's metrics table
    lists them all), and `val_*` entries at epoch end.

    The TensorBoard step is always the global train step (also that of
    `SampleLogger`'s tables), and each value is written once:

    * with `log_every=N`, every N global train steps (and at the last step of
      training) the mean of each log over the steps since the previous point,
      across epoch boundaries. Keras reports batch logs as running means since the
      start of the epoch (the trainers' metrics are `keras.metrics.Mean` trackers,
      reset every epoch, updated the same number of times each step), so the sum
      over steps (j, k] of an epoch is k m_k - j m_j;
    * without it, once per epoch: the epoch's logs at its last step.

    * CSV (`csv_path`): columns `kind` ("batch" for the `log_every` points, "epoch"
      for the epoch means, always written), `epoch`, `step`, then one column per
      log name. Rows are appended as they come. When training starts again at
      epoch k (a resumed run, or a fresh run at 0), rows of epochs >= k are first
      dropped, so the file never holds two versions of an epoch.
    * TensorBoard (`logdir`): the run `logdir/<run>` ("rewards" by default).
    * Histograms, every `histogram_freq` epochs (0 disables), from the trainer's
      last rollout under the protocol below; skipped silently when the trainer does
      not follow it.

    Rollout protocol: a trainer may expose `last_rollout`, a mapping (of
    `tf.Variable`s, tensors or arrays) updated by each `train_step` with

    * "scores": float [B], the rewards of the last rollout -> histogram `rewards`;
    * "advantages": float [B, N] per token (or [B] per sequence) -> histogram
      `advantages`, restricted to real tokens when
    * "completion_mask": float [B, N] (1 = real completion token) is present;
    * "prompt_ids" (optional): int [B, P], used by `SampleLogger` for default prompts.

    Args:
        csv_path: CSV file to write, or None.
        logdir: TensorBoard log directory, or None.
        histogram_freq: epochs between histograms; 0 disables them.
        log_every: train steps between points; None: one point per epoch.
        run: the TensorBoard run (sub-directory of `logdir`).

    Example:
    >>> logger = RewardLogger(csv_path="logs/run/rewards.csv", logdir="logs/run",
    ...                       log_every=2)
    >>> agent.fit(dataset, epochs=3, callbacks=[logger])
    >>> logger.history[-1]["reward"]
    0.61
    """

    def __init__(self, csv_path=None, logdir=None, histogram_freq=1, log_every=None,
                 run="rewards"):
        super().__init__()
        if log_every is not None and (isinstance(log_every, bool)
                                      or not isinstance(log_every, int) or log_every < 1):
            raise ValueError(f"log_every must be a positive int or None, got {log_every!r}")
        if not isinstance(histogram_freq, int) or histogram_freq < 0:
            raise ValueError(f"histogram_freq must be an int >= 0, got {histogram_freq!r}")
        self.csv_path = None if csv_path is None else os.fspath(csv_path)
        self.logdir = None if logdir is None else os.fspath(logdir)
        self.histogram_freq = histogram_freq
        self.log_every = log_every
        self.run = run
        self.history = []  # the rows written, as dicts, also when nothing goes to disk
        self._writer = None
        self._csv = None
        self._epoch = 0
        self._first_epoch = True
        self._batches = 0                   # batches done in this epoch
        self._window = (0, {})              # (batches, running means) at the last point
        self._carry = (0, {})               # (steps, sums) of earlier epochs not yet written
        self._last_logs = None

    def on_train_begin(self, logs=None):
        self._first_epoch = True
        self._carry = (0, {})
        if not _is_chief(self.model):
            return
        if self.logdir is not None and self._writer is None:
            self._writer = tf.summary.create_file_writer(os.path.join(self.logdir, self.run))
        if self.csv_path is not None:
            self._csv = _CsvLog(self.csv_path)

    def on_epoch_begin(self, epoch, logs=None):
        super().on_epoch_begin(epoch, logs)
        self._epoch = epoch
        self._batches, self._window = 0, (0, {})
        if self._first_epoch and self._csv is not None:
            self._csv.drop_rows(lambda row: _int_or_none(row.get("epoch")) is not None
                                and int(row["epoch"]) < epoch)
        self._first_epoch = False

    def on_train_batch_end(self, batch, logs=None):
        super().on_train_batch_end(batch, logs)
        self._batches += 1
        self._last_logs = logs
        if self.log_every and self._step % self.log_every == 0:
            self._write_point(logs)

    def on_epoch_end(self, epoch, logs=None):
        if self.log_every and self._last_logs:
            # The epoch's steps after its last point join the next point (Keras
            # resets the running means at every epoch start, so keep their sums).
            self._carry = self._window_sums(self._last_logs)
        self._record("epoch", logs, tensorboard=not self.log_every)
        if self.histogram_freq and epoch % self.histogram_freq == 0:
            self._log_histograms(self._step)
        if self._writer is not None:
            self._writer.flush()

    def on_train_end(self, logs=None):
        if self._carry[0]:                          # the steps after the last point
            self._write_point({})
        if self._writer is not None:
            self._writer.flush()

    def _window_sums(self, logs):
        """(steps, {name: sum}) since the previous point, carried steps included, from
        the running means `logs` after this epoch's `_batches` steps; starts a new
        window."""
        means = _scalars(logs)
        done, previous = self._window
        count, sums = self._carry
        sums = dict(sums)
        for name, mean in means.items():
            sums[name] = sums.get(name, 0.0) + self._batches * mean - done * previous.get(
                name, 0.0)
        self._window, self._carry = (self._batches, means), (0, {})
        return count + self._batches - done, sums

    def _write_point(self, logs):
        count, sums = self._window_sums(logs)
        if count:
            self._record("batch", {name: total / count for name, total in sums.items()})

    def _derived(self, scalars):
        """Values computed from the logged ones (none here; see LanguageModelLogger)."""
        return scalars

    def _record(self, kind, logs, tensorboard=True):
        scalars = self._derived(_scalars(logs))
        row = {"kind": kind, "epoch": self._epoch, "step": self._step, **scalars}
        self.history.append(row)
        if self._csv is not None:
            self._csv.append(row)
        if self._writer is not None and tensorboard:
            with self._writer.as_default():
                for name, value in scalars.items():
                    tf.summary.scalar(name, value, step=self._step)

    def _log_histograms(self, step):
        rollout = getattr(self.model, "last_rollout", None)
        if self._writer is None or not isinstance(rollout, collections.abc.Mapping):
            return
        with self._writer.as_default():
            if rollout.get("scores") is not None:
                tf.summary.histogram("rewards", _numpy(rollout["scores"]).reshape(-1),
                                     step=step)
            if rollout.get("advantages") is not None:
                advantages = _numpy(rollout["advantages"])
                mask = rollout.get("completion_mask")
                if mask is not None and _numpy(mask).shape == advantages.shape:
                    advantages = advantages[_numpy(mask) > 0]
                tf.summary.histogram("advantages", advantages.reshape(-1), step=step)


class LanguageModelLogger(RewardLogger):
    """Pre-training curves: `loss` and `perplexity` (exp of the mean loss over the
    same steps) of a `fit` with a cross-entropy loss, in the TensorBoard run
    `logdir/pretrain` (and `csv_path`), every `log_every` steps or once per epoch,
    at the global step, like `RewardLogger`.

    Example:
    >>> trainer.fit(texts, epochs=10, callbacks=[
    ...     LanguageModelLogger(logdir="logs/run", log_every=20)])
    """

    def __init__(self, logdir=None, csv_path=None, log_every=None, run="pretrain"):
        super().__init__(csv_path=csv_path, logdir=logdir, histogram_freq=0,
                         log_every=log_every, run=run)

    def _derived(self, scalars):
        if "loss" in scalars:
            # exp of a mean loss: the perplexity of those tokens (capped against overflow).
            scalars["perplexity"] = math.exp(min(scalars["loss"], 80.0))
        return scalars


def _int_or_none(text):
    try:
        return int(text)
    except (TypeError, ValueError):
        return None


def _markdown_cell(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    # Pipes would split the cell and newlines the row.
    return str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\n", "<br>")


class SampleLogger(_GlobalStep):
    """Completes fixed evaluation prompts during training and logs the results.

    Every `every_n_epochs` epochs (or, when `every_n_steps` is given, every that
    many batches instead) it generates completions with `model.policy` (or the model
    itself when it is a `PolicyNetwork`) via `tfpg.generate`, scores them with the
    reward, and writes a markdown table prompt | completion | reward | reference:

    * TensorBoard text summary `samples` in the run `logdir/samples` at the global
      train step (that of `RewardLogger`'s scalars: an epoch's table at its last step);
    * `logdir/samples/epoch_0001.md` (after the first epoch) or `step_00000100.md`;
    * one JSON line per sample appended to `logdir/samples/samples.jsonl`.

    With a multi-turn trainer (`env=`) the rows are whole episodes of the last
    training batch instead: prompt | turns with the env's replies in [brackets] |
    the episode's reward.

    Args:
        logdir: TensorBoard log directory.
        tokenizer: the `Tokenizer` of the policy.
        prompts: evaluation prompts (strings, or conversations rendered with the
            tokenizer's chat template). None takes up to 4 distinct prompts of
            the first rollout (`model.last_rollout["prompt_ids"]`, see `RewardLogger`)
            and keeps them; without one, the empty prompt (samples from BOS).
        references: reference strings, one per prompt (shown in the table and passed
            to the reward as `batch["reference"]`, encoded without BOS and
            right-padded with 0).
        every_n_steps: log every N training batches instead of every N epochs.
        every_n_epochs: log every N epochs.
        max_new_tokens: completion length; default the trainer's `max_new_tokens`
            (else 32).
        sampler: "greedy" (default, comparable across epochs) or a sampler of
            `tfpg.generate`; sampling uses the trainer's `temperature`, `top_k` and
            `top_p` and the fixed `seed`.
        reward_fn: `reward_fn(prompt_ids, completion_ids, completion_mask, batch)`;
            default the trainer's `reward_fn`. A reward that fails here (e.g. it
            needs dataset columns this callback cannot supply) is reported in a
            warning once and the reward column is left empty.
        seed: sampling seed.

    Example:
    >>> SampleLogger("logs/run", tokenizer=tok, prompts=["3 + 4 =", "2 + 5 ="],
    ...              references=["7", "7"], every_n_epochs=1)
    """

    def __init__(self, logdir, tokenizer, prompts=None, references=None, every_n_steps=None,
                 every_n_epochs=1, max_new_tokens=None, sampler="greedy", reward_fn=None,
                 seed=0):
        super().__init__()
        if isinstance(prompts, str) or isinstance(references, str):
            raise TypeError("prompts and references must be lists of strings")
        if references is not None and prompts is None:
            raise ValueError("references need prompts (one reference per prompt)")
        if references is not None and len(references) != len(prompts):
            raise ValueError(f"got {len(prompts)} prompts but {len(references)} references")
        if prompts is not None and not prompts:
            raise ValueError("prompts is empty")
        for name, value in (("every_n_steps", every_n_steps),
                            ("every_n_epochs", every_n_epochs)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive int or None, got {value!r}")
        self.logdir = os.fspath(logdir)
        self.tokenizer = tokenizer
        self.prompts = None if prompts is None else list(prompts)
        self.references = None if references is None else list(references)
        self.every_n_steps = every_n_steps
        self.every_n_epochs = every_n_epochs
        self.max_new_tokens = max_new_tokens
        self.sampler = sampler
        self.reward_fn = reward_fn
        self.seed = seed
        # Conversations (message lists) are rendered with the tokenizer's chat template.
        self._prompt_ids = None if prompts is None else [
            tfpg_data.encode_prompt(prompt, tokenizer) for prompt in self.prompts]
        self._step = 0
        self._writer = None
        self._reward_warned = False

    @property
    def sample_dir(self):
        """Where the markdown and JSONL files go: `logdir/samples`."""
        return os.path.join(self.logdir, "samples")

    def on_train_begin(self, logs=None):
        if _is_chief(self.model) and self._writer is None:
            self._writer = tf.summary.create_file_writer(self.sample_dir)

    def on_train_batch_end(self, batch, logs=None):
        super().on_train_batch_end(batch, logs)
        if self.every_n_steps and self._step % self.every_n_steps == 0:
            self.log_samples(tb_step=self._step, name=f"step_{self._step:08d}",
                             title=f"step {self._step}")

    def on_epoch_end(self, epoch, logs=None):
        if (not self.every_n_steps and self.every_n_epochs
                and (epoch + 1) % self.every_n_epochs == 0):
            self.log_samples(tb_step=self._step, name=f"epoch_{epoch + 1:04d}",
                             title=f"epoch {epoch + 1} (step {self._step})", epoch=epoch + 1)

    def log_samples(self, tb_step, name, title, epoch=None):
        """Generates, scores and writes one table; returns the sample records."""
        if self._writer is None:
            return []
        records = self._samples()
        for record in records:
            record.update(epoch=epoch, step=self._step)
        table = self._markdown(title, records)
        os.makedirs(self.sample_dir, exist_ok=True)
        with open(os.path.join(self.sample_dir, name + ".md"), "w", encoding="utf-8") as f:
            f.write(table)
        with open(os.path.join(self.sample_dir, "samples.jsonl"), "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        with self._writer.as_default():
            tf.summary.text("samples", table, step=tb_step)
        self._writer.flush()
        return records

    def _default_prompt_ids(self):
        rollout = getattr(self.model, "last_rollout", None)
        if isinstance(rollout, collections.abc.Mapping) and rollout.get("prompt_ids") is not None:
            rows = []
            ids = _numpy(rollout["prompt_ids"]).tolist()
            masks = (_numpy(rollout["prompt_mask"]).tolist() if "prompt_mask" in rollout
                     else [[i != 0 for i in row] for row in ids])
            for row, mask in zip(ids, masks):
                row = [i for i, real in zip(row, mask) if real]
                if row and row not in rows:
                    rows.append(row)
                if len(rows) == 4:
                    break
            if rows:
                return rows
        return [self.tokenizer.encode("")]

    def _samples(self):
        model = self.model
        episodes = getattr(model, "last_episodes", None)
        if getattr(model, "env", None) is not None and episodes is not None:
            # Multi-turn trainers: whole episodes of the last training batch (turns
            # and env replies), which carry the env's columns a prompt list lacks.
            return episodes.records(self.tokenizer)
        if self._prompt_ids is None:
            self._prompt_ids = self._default_prompt_ids()
        policy = _policy_of(model)
        prompt_ids, prompt_mask = tfpg_data.pad_ids(self._prompt_ids, "left",
                                                    policy.pad_id)
        prompt_ids = tf.constant(prompt_ids)
        sampling = {} if self.sampler == "greedy" else {
            "temperature": getattr(model, "temperature", 1.0),
            "top_k": getattr(model, "top_k", None), "top_p": getattr(model, "top_p", None)}
        out = generate(policy, prompt_ids, prompt_mask=prompt_mask,
                       max_new_tokens=self.max_new_tokens or getattr(model, "max_new_tokens", 32),
                       sampler=self.sampler,
                       eos_id=getattr(model, "eos_id", self.tokenizer.eos_id),
                       seed=self.seed, suppress_ids=getattr(model, "suppress_ids", None),
                       **sampling)
        rewards = self._rewards(prompt_ids, out)
        completions = self.tokenizer.decode(out.token_ids.numpy())
        prompts = self.prompts or self.tokenizer.decode(self._prompt_ids)
        return [{"prompt": prompts[i], "completion": completions[i],
                 "reward": None if rewards is None else float(rewards[i]),
                 "reference": None if self.references is None else self.references[i]}
                for i in range(len(prompts))]

    def _rewards(self, prompt_ids, out):
        reward_fn = self.reward_fn or getattr(self.model, "reward_fn", None)
        if reward_fn is None:
            return None
        batch = {"prompt": prompt_ids}
        if self.prompts and tfpg_data.is_conversation(self.prompts[0]):
            # As prompt_dataset gives them: the reward reads the conversations.
            batch[tfpg_data.MESSAGES_COLUMN] = tf.constant(
                [json.dumps(p, ensure_ascii=False) for p in self.prompts])
        if self.references is not None:
            batch["reference"] = tf.constant(tfpg_data.pad_ids(
                self.tokenizer.encode(self.references, add_bos=False), "right",
                min_width=1)[0])
        try:
            # Within the trainer's reward_timeout: a hung reward must not hang `fit`.
            rewards = _numpy(call_reward(
                reward_fn, prompt_ids, out.token_ids, out.mask, batch,
                getattr(self.model, "on_invalid_reward", "raise"),
                getattr(self.model, "reward_timeout", None)))
            return rewards.reshape(len(self._prompt_ids))
        except Exception as e:  # a logging callback must not end the training run
            if not self._reward_warned:
                warnings.warn(f"SampleLogger: the reward failed on the evaluation prompts, "
                              f"logging samples without rewards ({type(e).__name__}: {e})")
                self._reward_warned = True
            return None

    def _markdown(self, title, records):
        columns = ["prompt", "completion"]
        if any(r["reward"] is not None for r in records):
            columns.append("reward")
        if self.references is not None:
            columns.append("reference")
        lines = [f"**{title}**", "", "| " + " | ".join(columns) + " |",
                 "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(_markdown_cell(r[c]) for c in columns) + " |"
                  for r in records]
        return "\n".join(lines) + "\n"


_GENERATION_OPTIONS = ("max_new_tokens", "sampler", "temperature", "top_k", "top_p",
                       "eos_id", "max_prompt_length")


class SavedModelExport(keras.callbacks.Callback):
    """Exports the trainer's policy as a SavedModel (`tfpg.export_saved_model`) at epoch end.

    Every `every_n_epochs` epochs the policy is exported to `path`, atomically: the
    new export is written beside `path` and renamed into place, so an interrupted
    export never replaces a good one (a stranded backup is restored at train begin).

    With `save_best_only`, an export happens only when the log `monitor` improves
    (`mode` "max" or "min") on the best value so far. The monitored value is stored
    in the export's `tfpg_export.json` metadata, so a resumed run compares against
    the export already on disk.

    Args:
        path: export directory.
        tokenizer: the policy's `Tokenizer` (its vocabulary goes into the graph).
        every_n_epochs: epochs between exports.
        monitor: log name to compare with `save_best_only`.
        mode: "max" or "min".
        save_best_only: export only on improvement.
        **generation_defaults: `max_new_tokens`, `sampler`, `temperature`, `top_k`,
            `top_p`, `eos_id`, `max_prompt_length` of `export_saved_model`;
            `max_new_tokens` and `eos_id` default to the trainer's.

    Example:
    >>> SavedModelExport("saved_models/run", tokenizer=tok, save_best_only=True,
    ...                  monitor="reward", mode="max")
    """

    def __init__(self, path, tokenizer, every_n_epochs=1, monitor="reward", mode="max",
                 save_best_only=False, **generation_defaults):
        super().__init__()
        unknown = sorted(set(generation_defaults) - set(_GENERATION_OPTIONS))
        if unknown:
            raise TypeError(f"SavedModelExport got unknown options {unknown}; "
                            f"generation options are {list(_GENERATION_OPTIONS)}")
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        if not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be a positive int, got {every_n_epochs!r}")
        self.path = os.fspath(path)
        self.tokenizer = tokenizer
        self.every_n_epochs = every_n_epochs
        self.monitor = monitor
        self.mode = mode
        self.save_best_only = save_best_only
        self.generation_defaults = generation_defaults
        self.best = None
        self._missing_warned = False

    def on_train_begin(self, logs=None):
        if not _is_chief(self.model):
            return
        recover(self.path)
        if self.save_best_only and self.best is None:
            self.best = self._best_on_disk()

    def _best_on_disk(self):
        try:
            metadata = read_export_info(self.path).get("metadata") or {}
        except (OSError, ValueError):
            return None
        if metadata.get("monitor") == self.monitor and metadata.get("mode") == self.mode:
            return metadata.get("monitor_value")
        return None

    def _improves(self, value):
        if value is None or math.isnan(value):
            return False
        if self.best is None:
            return True
        return value > self.best if self.mode == "max" else value < self.best

    def on_epoch_end(self, epoch, logs=None):
        if not _is_chief(self.model) or (epoch + 1) % self.every_n_epochs:
            return
        scalars = _scalars(logs)
        value = scalars.get(self.monitor)
        if self.save_best_only:
            if value is None:
                if not self._missing_warned:
                    warnings.warn(f"SavedModelExport: monitor {self.monitor!r} is not in the "
                                  f"logs ({sorted(scalars)}); nothing is exported")
                    self._missing_warned = True
                return
            if not self._improves(value):
                return
            self.best = value
        self.export(epoch, scalars)

    def export(self, epoch, logs):
        """Exports now; `epoch` (0-based) and `logs` go into the export's metadata."""
        options = dict(self.generation_defaults)
        for name in ("max_new_tokens", "eos_id"):
            if name not in options and hasattr(self.model, name):
                options[name] = getattr(self.model, name)
        metadata = {"epoch": epoch + 1, "monitor": self.monitor, "mode": self.mode,
                    "monitor_value": logs.get(self.monitor), "logs": logs}
        return export_saved_model(_policy_of(self.model), self.tokenizer, self.path,
                                  metadata=metadata, **options)
