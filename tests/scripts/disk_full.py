"""Runs `tfpg ARGS...` with the disk full at one write.

    python disk_full.py WHERE ARGS...

WHERE is "checkpoint:NAME" (TensorFlow's SaveV2 of checkpoint NAME, e.g.
finetune-2), "export" (the SavedModel export) or "state:PHASE:EPOCHS" (the
state.json write that commits that epoch).

The first two really fail: they run under a file size limit of 0 bytes
(RLIMIT_FSIZE; SIGXFSZ ignored), so TensorFlow meets a real EFBIG and leaves on disk
what a failed write leaves (SaveV2 its `NAME_temp` folder); the error is then raised
as a full disk raises it, TensorFlow's ResourceExhaustedError ("...; No space left
on device [Op:SaveV2]"). The state.json write fails where a full disk often tells
first, at `fsync` (OSError ENOSPC). Exits with tfpg's status.
"""

import contextlib
import errno
import os
import resource
import signal
import sys

import tensorflow as tf

from tfpg.run import checkpoints, pipeline
from tfpg.run.cli import main

NO_SPACE = os.strerror(errno.ENOSPC)


@contextlib.contextmanager
def disk_full():
    """A write under it fails for real (0-byte file size limit), reported as ENOSPC."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, hard))
    try:
        yield
    except tf.errors.OpError as error:
        raise tf.errors.ResourceExhaustedError(
            error.node_def, error.op,
            error.message.replace(os.strerror(errno.EFBIG), NO_SPACE)) from None
    except OSError as error:
        raise OSError(errno.ENOSPC, NO_SPACE, error.filename) from None
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


@contextlib.contextmanager
def fsync_disk_full():
    """`os.fsync` under it fails with ENOSPC (delayed allocation on a full disk)."""
    fsync = os.fsync

    def full_fsync(fd):
        raise OSError(errno.ENOSPC, NO_SPACE)

    os.fsync = full_fsync
    try:
        yield
    finally:
        os.fsync = fsync


def fill_disk_at(where):
    kind, _, target = where.partition(":")
    if kind == "checkpoint":
        write = tf.train.Checkpoint.write

        def full_write(self, file_prefix, *args, **kwargs):
            if os.path.basename(file_prefix) != target:
                return write(self, file_prefix, *args, **kwargs)
            with disk_full():
                return write(self, file_prefix, *args, **kwargs)

        tf.train.Checkpoint.write = full_write
    elif kind == "state":
        phase, epochs = target.split(":")
        save = checkpoints.RunState.save

        def full_save(self, **updates):
            if updates.get(f"{phase}_epochs_done") != int(epochs):
                return save(self, **updates)
            with fsync_disk_full():
                return save(self, **updates)

        checkpoints.RunState.save = full_save
    elif kind == "export":
        export = pipeline.export_saved_model

        def full_export(*args, **kwargs):
            with disk_full():
                return export(*args, **kwargs)

        pipeline.export_saved_model = full_export
    else:
        raise SystemExit(f"unknown WHERE {where!r}")


if __name__ == "__main__":
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)     # EFBIG instead of a kill
    fill_disk_at(sys.argv[1])
    sys.exit(main(sys.argv[2:]))
