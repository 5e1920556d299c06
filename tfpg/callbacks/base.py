"""What the callbacks share: the global step, a CSV log that survives a resume,
the chief-only rule under a multi-worker strategy."""

import csv
import io
import os

import keras
import numpy as np

from tfpg.distribution import is_chief
from tfpg.guards.locking import write_file_atomically
from tfpg.models.policy import Policy, check_policy


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


def _int_or_none(text):
    try:
        return int(text)
    except (TypeError, ValueError):
        return None


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
