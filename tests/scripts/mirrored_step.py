"""One train step under MirroredStrategy on 2 logical CPUs vs one device.

Prints one line per algorithm: `NAME max_abs_weight_difference max_abs_update`. Run as a
subprocess: logical devices must be configured before TensorFlow does anything.

    python mirrored_step.py [--rows N] [ALGORITHM...]

`--rows 7` gives a global batch that does not split evenly (4 + 3 rows): each replica
must still sample with the noise rows of its own slice of the global batch.
"""

import sys

import numpy as np
import tensorflow as tf

tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0],
    [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])

import keras  # noqa: E402

import tfpg  # noqa: E402
from tfpg.algorithms import ALGORITHMS  # noqa: E402

VOCAB = 9


def reward(prompt_ids, completion_ids, completion_mask, batch):
    hits = tf.cast(tf.equal(completion_ids, 5), tf.float32) * completion_mask
    return tf.reduce_sum(hits, axis=1) + tf.cast(batch["bonus"], tf.float32)


def options(name):
    extra = {"max_new_tokens": 4, "eos_id": 2, "seed": 3, "kl_coef": 0.1, "max_grad_norm": 0.5}
    if name in ("a2c", "ppo"):
        extra["value_model"] = tfpg.ValueNetwork(VOCAB, 8, 12)
    if name in ("rloo", "grpo"):
        extra["group_size"] = 2
    if name in ("ppo", "grpo"):
        extra["num_epochs"] = 2
    return extra


def train_one_step(name, strategy, rows=8):
    prompts = np.array([[0, 1, 4], [1, 6, 7], [0, 1, 8], [1, 3, 3]] * 4, np.int32)[:rows]
    data = {"prompt": prompts, "bonus": np.arange(rows, dtype=np.float32) / 8}
    dataset = tf.data.Dataset.from_tensor_slices(data).batch(rows)
    with strategy.scope():
        keras.utils.set_random_seed(0)
        policy = tfpg.PolicyNetwork(VOCAB, 8, 12)
        agent = ALGORITHMS[name](policy, reward, **options(name))
        agent.compile(optimizer=keras.optimizers.SGD(0.5))
    before = [v.numpy() for v in agent.trainable_variables]
    agent.fit(dataset, epochs=1, verbose=0)
    after = [v.numpy() for v in agent.trainable_variables]
    update = max(float(np.abs(x - y).max()) for x, y in zip(before, after))
    return after, update


def main(names, rows=8):
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    single = tf.distribute.OneDeviceStrategy("/cpu:0")
    for name in names:
        a, update = train_one_step(name, single, rows)
        b, _ = train_one_step(name, mirrored, rows)
        diff = max(float(np.abs(x - y).max()) for x, y in zip(a, b))
        print(name, diff, update, flush=True)


if __name__ == "__main__":
    arguments, rows = sys.argv[1:], 8
    if arguments[:1] == ["--rows"]:
        rows, arguments = int(arguments[1]), arguments[2:]
    main(arguments or list(ALGORITHMS), rows)
