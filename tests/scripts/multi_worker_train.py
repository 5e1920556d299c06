"""Three training steps under MultiWorkerMirroredStrategy, one worker per process.

    python multi_worker_train.py INDEX PORT0,PORT1 OUTDIR [ALGORITHM...]

Worker INDEX of a cluster on 127.0.0.1:PORT0 and 127.0.0.1:PORT1 (`TF_CONFIG` is set
here, before TensorFlow starts) trains each algorithm (default: ppo rloo) for 3 steps
of a global batch of 7 prompts, which does not split evenly (4 rows on worker 0, 3 on
worker 1), and writes its trainable weights to OUTDIR/ALGORITHM-INDEX.npz.
`train(name, strategy)` is the same run for any strategy: the single-process
reference sees the combined batch of 7 on one device.
"""

import json
import os
import sys

if __name__ == "__main__":
    _index, _ports = int(sys.argv[1]), sys.argv[2].split(",")
    os.environ["TF_CONFIG"] = json.dumps({
        "cluster": {"worker": [f"127.0.0.1:{port}" for port in _ports]},
        "task": {"type": "worker", "index": _index}})

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras  # noqa: E402
import tfpg  # noqa: E402
from tfpg.run.devices import shard_by_data  # noqa: E402
from tfpg.algorithms import ALGORITHMS  # noqa: E402

VOCAB = 9
STEPS = 3
GLOBAL_BATCH = 7


def reward(prompt_ids, completion_ids, completion_mask, batch):
    hits = tf.cast(tf.equal(completion_ids, 5), tf.float32) * completion_mask
    return tf.reduce_sum(hits, axis=1) + tf.cast(batch["bonus"], tf.float32)


def dataset():
    rows = STEPS * GLOBAL_BATCH
    prompts = np.array([[0, 1, 4], [1, 6, 7], [0, 1, 8], [1, 3, 3]] * rows, np.int32)[:rows]
    data = {"prompt": prompts, "bonus": np.arange(rows, dtype=np.float32) / 8}
    # Each worker reads its half of every global batch.
    return shard_by_data(
        tf.data.Dataset.from_tensor_slices(data).batch(GLOBAL_BATCH))


def train(name, strategy):
    """(trainable weights after STEPS steps of `name`, logs, largest weight change)."""
    options = {"max_new_tokens": 4, "eos_id": 2, "seed": 3, "kl_coef": 0.1,
               "max_grad_norm": 0.5}
    if name in ("rloo", "grpo"):
        options["group_size"] = 2
    if name == "ppo":
        options["num_epochs"] = 2
    with strategy.scope():
        keras.utils.set_random_seed(0)
        if ALGORITHMS[name].uses_value_model:
            options["value_model"] = tfpg.ValueNetwork(VOCAB, 8, 12)
        agent = ALGORITHMS[name](tfpg.PolicyNetwork(VOCAB, 8, 12), reward, **options)
        agent.compile(optimizer=keras.optimizers.SGD(0.5))
    before = [v.numpy() for v in agent.trainable_variables]
    history = agent.fit(dataset(), epochs=1, verbose=0).history
    after = [v.numpy() for v in agent.trainable_variables]
    return after, history, max(float(np.abs(a - b).max()) for a, b in zip(after, before))


def main(index, outdir, names):
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    assert strategy.num_replicas_in_sync == 2, strategy.num_replicas_in_sync
    for name in names:
        weights, history, _ = train(name, strategy)
        np.savez(os.path.join(outdir, f"{name}-{index}.npz"), *weights)
        print(index, name, json.dumps({k: float(v[-1]) for k, v in history.items()}),
              flush=True)


if __name__ == "__main__":
    main(_index, sys.argv[3], sys.argv[4:] or ["ppo", "rloo"])
