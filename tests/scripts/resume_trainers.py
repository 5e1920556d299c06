"""Each algorithm's trainer, resumed from its epoch-1 checkpoint, against the unbroken one.

    python resume_trainers.py DIRECTORY NAME...

For each algorithm NAME (with the state that makes it resumable or not: PPO's adaptive
`kl_coef`, REINFORCE's moving-average baseline, critics, KL references, several
minibatches): fits 2 epochs of 2 steps, writing `trainer_checkpoint` after epoch 1 as
`tfpg train` does; then builds the trainer again from another seed (so that only the
checkpoint can make it equal), restores that checkpoint and fits epoch 2. Prints one
JSON line: {NAME: {"max_difference": float, "moved": {variable: |change|}}}, the
largest difference between the two trainers' variables (policy, optimizer, trainer)
and how far the stateful variables moved from their initial values.

Runs under `enable_op_determinism`, as `tfpg train --deterministic`, in a process of
its own so that the setting does not reach other tests.
"""

import json
import os
import sys

import numpy as np
import tensorflow as tf

import keras
import tfpg
from tfpg.algorithms import ALGORITHMS
from tfpg.run.checkpoints import (EpochSeed, epoch_batches, restore, trainer_checkpoint,
                                  trainer_state)

VOCAB = 8
SEED = 3
OPTIONS = {
    "reinforce": {"baseline": "moving_average"},
    "scst": {},
    "rloo": {"group_size": 2, "num_epochs": 2},
    "grpo": {"group_size": 2, "kl_coef": 0.1, "num_minibatches": 2},
    "a2c": {},
    "ppo": {"kl_coef": 0.1, "target_kl": 0.01, "kl_horizon": 10, "num_minibatches": 2},
}


def count_fives(prompt_ids, completion_ids, completion_mask, batch):
    """The fraction of real completion tokens that are id 5."""
    hits = tf.cast(tf.equal(completion_ids, 5), tf.float32) * completion_mask
    return tf.reduce_sum(hits, axis=1) / tf.maximum(tf.reduce_sum(completion_mask, 1), 1.0)


def build(name, seed):
    keras.utils.set_random_seed(seed)
    options = dict(OPTIONS[name], max_new_tokens=3, eos_id=None, seed=SEED)
    if ALGORITHMS[name].uses_value_model:
        options["value_model"] = tfpg.ValueNetwork(VOCAB, 8, 16)
    agent = ALGORITHMS[name](tfpg.PolicyNetwork(VOCAB, 8, 16), count_fives, **options)
    agent.compile(optimizer=keras.optimizers.Adam(3e-2))
    return agent


def fit(agent, first_epoch, callbacks=()):
    prompts = np.array([[1, 4], [1, 6], [1, 7], [0, 1], [1, 5], [1, 3]], np.int32)
    elements = tf.data.Dataset.from_tensor_slices({"prompt": prompts})
    batches, steps = epoch_batches(elements, 4, SEED, "finetune", first_epoch, 2, steps=2,
                                   drop_remainder=True)
    agent.fit(batches, epochs=2, initial_epoch=first_epoch, steps_per_epoch=steps, verbose=0,
              callbacks=[EpochSeed(SEED, "finetune"), *callbacks])


class SaveAfterFirstEpoch(keras.callbacks.Callback):
    def __init__(self, checkpoint, prefix):
        super().__init__()
        self.checkpoint, self.prefix = checkpoint, prefix

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            self.checkpoint.write(self.prefix)


def values(agent):
    return {f"{group}/{index}": np.array(variable.numpy())
            for group, variables in trainer_state(agent).items()
            for index, variable in enumerate(variables)}


def compare(name, directory):
    unbroken = build(name, seed=0)
    initial = {variable.path: float(np.sum(variable.numpy())) for variable in unbroken.variables
               if variable.name in ("kl_coef", "baseline_average", "baseline_count")}
    fit(unbroken, 0, [SaveAfterFirstEpoch(trainer_checkpoint(unbroken),
                                          os.path.join(directory, name))])
    resumed = build(name, seed=1)               # other initial weights: only the checkpoint
    restore(trainer_checkpoint(resumed), directory, name)
    fit(resumed, 1)
    expected, got = values(unbroken), values(resumed)
    assert expected.keys() == got.keys(), sorted(set(expected) ^ set(got))
    difference = max(float(np.max(np.abs(expected[key].astype(np.float64) - got[key])))
                     if expected[key].size else 0.0 for key in expected)
    moved = {variable.name: abs(float(np.sum(variable.numpy())) - initial[variable.path])
             for variable in unbroken.variables if variable.path in initial}
    moved["optimizer_iterations"] = int(unbroken.optimizer.iterations.numpy())
    return {"max_difference": difference, "moved": moved}


if __name__ == "__main__":
    tf.config.experimental.enable_op_determinism()
    results = {name: compare(name, sys.argv[1]) for name in sys.argv[2:]}
    print(json.dumps(results))
