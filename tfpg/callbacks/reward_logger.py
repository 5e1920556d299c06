"""`RewardLogger` and `LanguageModelLogger`: a trainer's `fit` logs to CSV and TensorBoard."""

import collections.abc
import math
import os

import tensorflow as tf

from tfpg.callbacks.base import _CsvLog, _GlobalStep, _int_or_none, _is_chief, _numpy, _scalars


class RewardLogger(_GlobalStep):
    """Logs reward statistics from the `fit` logs to CSV and TensorBoard.

    Every numeric scalar in the logs is recorded under its own name: the trainers'
    `reward`, `reward_std`, `kl`, `entropy`, `completion_length`,
    `truncated_fraction`, `reward/<component>`, losses (the metrics table of
    docs/algorithms.md lists them all), and `val_*` entries at epoch end.

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
        csv_path: str or None. CSV file to write, or None.
        logdir: str or None. TensorBoard log directory, or None.
        histogram_freq: int. Epochs between histograms; 0 disables them.
        log_every: int or None. Train steps between points; None: one point per epoch.
        run: str. The TensorBoard run (sub-directory of `logdir`).

    Example:
    >>> logger = RewardLogger(csv_path="logs/run/rewards.csv", logdir="logs/run",
    ...                       log_every=2)
    >>> agent.fit(dataset, epochs=3, callbacks=[logger])  # doctest: +SKIP
    >>> logger.history[-1]["reward"]  # doctest: +SKIP
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
    >>> trainer.fit(texts, epochs=10, callbacks=[  # doctest: +SKIP
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
