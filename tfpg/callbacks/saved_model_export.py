"""`SavedModelExport`: the policy exported at epoch end, atomically, optionally on improvement."""

import math
import os
import warnings

import keras

from tfpg.callbacks.base import _is_chief, _policy_of, _scalars
from tfpg.export import export_saved_model, read_export_info, recover

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
        path: str. Export directory.
        tokenizer: `tfpg.Tokenizer`. The policy's `Tokenizer` (its vocabulary goes into
            the graph).
        every_n_epochs: int. Epochs between exports.
        monitor: str. Log name to compare with `save_best_only`.
        mode: "max" or "min".
        save_best_only: bool. Export only on improvement.
        **generation_defaults: `max_new_tokens`, `sampler`, `temperature`, `top_k`,
            `top_p`, `eos_id`, `max_prompt_length` of `export_saved_model`;
            `max_new_tokens` and `eos_id` default to the trainer's.

    Example:
    >>> tok = tfpg.Tokenizer.from_texts(["3 + 4 = 7"], level="char")
    >>> export = SavedModelExport("saved_models/run", tokenizer=tok, save_best_only=True,
    ...                           monitor="reward", mode="max")
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
