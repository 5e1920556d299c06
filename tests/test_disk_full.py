"""A full disk (or any failed write) while writing a checkpoint, the run state, an export
or a log: one line naming the file, exit status 2, the previous checkpoint committed,
nothing half-written left, and the same command resumes once there is room."""

import errno
import glob
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfpg
from tfpg.run import checkpoints
from tfpg.run.config import TrainConfig
from tfpg.options import UsageError

sys.path.insert(0, os.path.dirname(__file__))
from cli_batch import assert_usage_error  # noqa: E402

SCRIPTS = os.path.join(os.path.dirname(__file__), "scripts")
TFPG = [sys.executable, "-m", "tfpg.run.cli"]
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
TINY = {"embedding_dim": 16, "hidden_dim": 32, "batch_size": 16, "steps_per_epoch": 2}
TRAIN = ["train", "--train-file", "add.tsv", "--config", "tiny.yaml", "--pretrain-epochs",
         "1", "--epochs", "2", "--reward", "length", "--max-new-tokens", "4",
         "--output", "out/model", "--logdir", "out/logs"]
NO_SPACE = "no space left on device while writing"


def run(command, cwd):
    return subprocess.run(command, cwd=cwd, env=ENV, capture_output=True, text=True,
                          timeout=600)


def leftovers(directory):
    """What a failed write may leave: TensorFlow's `*_temp` folders, `*.tmp*` files."""
    return [os.path.relpath(path, directory) for pattern in ("**/*_temp", "**/*.tmp*")
            for path in glob.glob(os.path.join(directory, pattern), recursive=True)]


def test_disk_full_at_a_checkpoint_then_at_the_export_then_room_again(tmp_path):
    rng = np.random.default_rng(0)
    lines = [f"{a} + {b} =\t{' '.join(str(a + b))}" for a, b in rng.integers(0, 10, (80, 2))]
    (tmp_path / "add.tsv").write_text("\n".join(lines) + "\n")
    (tmp_path / "tiny.yaml").write_text("".join(f"{k}: {v}\n" for k, v in TINY.items()))
    checkpoint_dir = tmp_path / "out/model.checkpoint"
    state_path = checkpoint_dir / "state.json"

    # SaveV2 of fine-tuning epoch 2's checkpoint finds the disk full.
    result = run([sys.executable, os.path.join(SCRIPTS, "disk_full.py"),
                  "checkpoint:finetune-2"] + TRAIN, tmp_path)
    assert_usage_error(result, f"{NO_SPACE} out/model.checkpoint/finetune-2")
    assert "SaveV2" not in result.stderr
    state = json.loads(state_path.read_text())
    assert (state["finetune_epochs_done"], state["finetune_checkpoint"]) == (1, "finetune-1")
    assert leftovers(tmp_path) == []                  # no finetune-2_temp/, no state.json.tmp
    assert sorted(name for name in os.listdir(checkpoint_dir) if name.startswith("fine")) \
        == ["finetune-1.data-00000-of-00001", "finetune-1.index"]
    assert tf.train.load_checkpoint(str(checkpoint_dir / "finetune-1"))  # still readable
    assert not (tmp_path / "out/model").exists()

    # Room for the checkpoint, not for the export: the epoch is kept, no export appears.
    result = run([sys.executable, os.path.join(SCRIPTS, "disk_full.py"), "export"] + TRAIN,
                 tmp_path)
    assert_usage_error(result, f"{NO_SPACE} out/model")
    assert "resuming from out/model.checkpoint: pre-training epoch 1/1, fine-tuning " \
           "epoch 1/2" in result.stdout
    assert json.loads(state_path.read_text())["finetune_epochs_done"] == 2
    assert not (tmp_path / "out/model").exists()
    assert leftovers(tmp_path) == [] and not glob.glob(str(tmp_path / "out/model.tmp-*"))

    # Room again: the same command resumes and finishes.
    result = run(TFPG + TRAIN, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "fine-tuning epoch 2/2" in result.stdout and "resuming from" in result.stdout
    assert tfpg.load(str(tmp_path / "out/model")).generate(["3 + 4 ="])


def test_a_full_disk_at_the_state_commit_keeps_the_previous_state(tmp_path):
    """fsync of state.json.tmp fails (ENOSPC): the old state.json stays, the
    uncommitted checkpoint and the temporary file go, in one line."""
    sys.path.insert(0, SCRIPTS)
    try:
        from disk_full import fsync_disk_full
    finally:
        sys.path.remove(SCRIPTS)
    config = TrainConfig(output=str(tmp_path / "model"))
    state = checkpoints.RunState(str(tmp_path / "model.checkpoint"), config)
    variable = keras.Variable([1.0, 2.0])
    checkpoint = checkpoints.variable_checkpoint(policy=[variable])
    checkpoints.write_checkpoint(checkpoint, state, "pretrain", 1)
    before = (tmp_path / "model.checkpoint/state.json").read_text()

    with fsync_disk_full(), pytest.raises(UsageError) as error:
        checkpoints.write_checkpoint(checkpoint, state, "pretrain", 2)
    assert str(error.value) == \
        f"{NO_SPACE} {tmp_path / 'model.checkpoint/state.json'}"
    assert (tmp_path / "model.checkpoint/state.json").read_text() == before
    assert state["pretrain_epochs_done"] == 1                 # nor changed in memory
    assert sorted(os.listdir(tmp_path / "model.checkpoint")) == [
        "pretrain-1.data-00000-of-00001", "pretrain-1.index", "state.json"]


@pytest.mark.parametrize("error, reason", [
    (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), "no space left on device"),
    (OSError(errno.EDQUOT, os.strerror(errno.EDQUOT)), "disk quota exceeded"),
    (PermissionError(errno.EACCES, os.strerror(errno.EACCES)), "permission denied"),
    (tf.errors.ResourceExhaustedError(None, None, "{{function_node __wrapped__SaveV2}} "
                                      "m/finetune-1_temp/part-0; No space left on device "
                                      "[Op:SaveV2]"), "no space left on device"),
    (tf.errors.OutOfRangeError(None, None, "x_temp/part; File too large [Op:SaveV2]"),
     "file too large")])
def test_a_failed_write_is_one_line_naming_the_file(error, reason):
    with pytest.raises(UsageError) as raised:
        with checkpoints.writing("out/model.checkpoint/finetune-1"):
            raise error
    assert str(raised.value) == f"{reason} while writing out/model.checkpoint/finetune-1"


def test_errors_that_are_not_failed_writes_pass_through():
    for error in (ValueError("bad"), tf.errors.InvalidArgumentError(None, None, "shape")):
        with pytest.raises(type(error)):
            with checkpoints.writing("somewhere"):
                raise error


def test_a_logger_whose_write_fails_is_reported_naming_the_logdir():
    class FullDiskLogger(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            with open(os.devnull, "w"):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    logger = FullDiskLogger()
    wrapped = checkpoints.WriteReporting(logger, "logs/run")
    model = keras.Sequential([keras.layers.Dense(1)])
    wrapped.set_model(model)
    assert logger.model is model
    wrapped.on_epoch_begin(0)                     # the hooks it does not have: no-ops
    with pytest.raises(UsageError, match=f"^{NO_SPACE} logs/run$"):
        wrapped.on_epoch_end(0)
