"""One GRPO step of a tiny KerasHub GPT-2 policy under MirroredStrategy on 2 logical
CPUs vs one device.

Prints one line per variant: `NAME max_abs_weight_difference max_abs_update`. Run as a
subprocess: logical devices must be configured before TensorFlow does anything.

    python mirrored_keras_hub_step.py [full] [lora]
"""

import os
import sys

import numpy as np
import tensorflow as tf

tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0],
    [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])

import keras  # noqa: E402

import tfpg  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from keras_hub_models import build_causal_lm  # noqa: E402


def reward(prompt_ids, completion_ids, completion_mask, batch):
    low = tf.cast(completion_ids < 128, tf.float32) * completion_mask
    return tf.reduce_sum(low, axis=1)


def train_one_step(variant, strategy):
    with strategy.scope():
        policy = tfpg.KerasHubPolicy(build_causal_lm("gpt2", seed=0),
                                     lora_rank=2 if variant == "lora" else None)
        agent = tfpg.algorithms.GRPO(policy, reward_fn=reward, group_size=2,
                                     max_new_tokens=4, kl_coef=0.1, seed=3, num_epochs=2)
        # The same graph on both sides (XLA would draw other random numbers).
        agent.compile(optimizer=keras.optimizers.SGD(0.5), jit_compile=False)
    tok = policy.tokenizer
    dataset = tfpg.data.prompt_dataset(["1 + 2 =", "the cat", "a dog ran", "!"], tok,
                                       batch_size=4)
    before = [v.numpy() for v in agent.trainable_variables]
    agent.fit(dataset, epochs=1, verbose=0)
    after = [v.numpy() for v in agent.trainable_variables]
    update = max(float(np.abs(x - y).max()) for x, y in zip(before, after))
    return after, update


def main(variants):
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    single = tf.distribute.OneDeviceStrategy("/cpu:0")
    for variant in variants:
        a, update = train_one_step(variant, single)
        b, _ = train_one_step(variant, mirrored)
        diff = max(float(np.abs(x - y).max()) for x, y in zip(a, b))
        print(variant, diff, update, flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or ["full", "lora"])
