"""Devices, `tf.distribute` strategies and precision of a run.

Distribution (`strategy`): "default" (one device), "mirrored" (all local GPUs, or
`num_cpu_devices` logical CPUs for testing) or "multi_worker"
(`MultiWorkerMirroredStrategy` from `TF_CONFIG`; every worker runs the same command,
the chief alone writes checkpoints, logs, metrics and the export). Each worker reads
its rows of every global batch (DATA sharding). The per-replica mechanics of the
trainers (all-reduce, replica rows, loss scaling) are in `tfpg.distribution`.
"""

import json
import os

import keras
import tensorflow as tf

from tfpg.distribution import is_chief  # noqa: F401 - a run's chief writes, with the strategy
from tfpg.models.copying import copy_policy
from tfpg.options import NUM_CPU_DEVICES_ENV, UsageError


def configure_cpu_devices(count):
    """Splits the CPU into `count` logical devices (for "mirrored" without GPUs).

    Must run before TensorFlow executes its first op; `tfpg train` does it first
    thing. Also read from $TFPG_NUM_CPU_DEVICES when `count` is None.
    """
    if count is None:
        count = int(os.environ.get(NUM_CPU_DEVICES_ENV) or 1)
    if count <= 1:
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)])
    except RuntimeError:
        if len(tf.config.list_logical_devices("CPU")) != count:
            raise UsageError(f"cannot split the CPU into {count} devices: TensorFlow is "
                             "already running (set TFPG_NUM_CPU_DEVICES before it "
                             "starts)") from None


def make_strategy(name, num_cpu_devices=None):
    """The `tf.distribute` strategy called `name` (see `STRATEGIES`)."""
    if name == "mirrored":
        if tf.config.list_physical_devices("GPU"):     # does not start the runtime
            return tf.distribute.MirroredStrategy()
        configure_cpu_devices(num_cpu_devices)
        cpus = [device.name for device in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(cpus)
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise UsageError("--strategy multi_worker needs the TF_CONFIG environment variable")
        try:
            json.loads(os.environ["TF_CONFIG"])
        except ValueError:
            raise UsageError("TF_CONFIG is not valid JSON") from None
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def shard_by_data(dataset):
    """Each worker reads its own rows of every global batch (DATA auto-sharding).

    The default (AUTO) finds no files to shard in an in-memory dataset and falls
    back to DATA with a warning; saying so explicitly keeps the logs clean and the
    behaviour independent of how the dataset was made.
    """
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = \
        tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def set_precision(name):
    """Sets the global Keras dtype policy; returns the previous policy's name."""
    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(name or "float32")
    return previous


def float32_copy(policy):
    """A float32 copy of `policy` made outside any strategy, for evaluation and
    export (mixed-precision weights are float32 already; only the compute dtype
    changes, and the copy's variables are plain ones)."""
    with tf.distribute.get_strategy().scope():     # the default strategy
        return copy_policy(policy, dtype="float32")
