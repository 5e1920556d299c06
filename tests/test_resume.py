"""A run killed at a committed epoch and rerun is the unbroken run, to the bit.

Under `--deterministic`: the same weights (max difference 0), optimizer state,
metrics.json and generated texts, whichever phase the kill interrupted. Each
trainer's resumable state (critic, KL reference, adaptive kl_coef, moving-average
baseline, optimizer slots and iterations) is checked per algorithm in
`scripts/resume_trainers.py`; here `tfpg train` itself is killed with SIGKILL.
"""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import tfpg
from tfpg.algorithms import ALGORITHMS
from tfpg.run.checkpoints import epoch_batches, stream_seed

SCRIPTS = os.path.join(os.path.dirname(__file__), "scripts")
TFPG = [sys.executable, "-m", "tfpg.run.cli"]
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")   # a killed run's lines too
# The tiny job of test_distributed: 80 one-digit sums, a 16/32 LSTM; PPO (a critic, a
# KL reference, 4 update epochs over each rollout), 2 + 2 epochs of 2 steps.
TINY = {"embedding_dim": 16, "hidden_dim": 32, "batch_size": 16, "steps_per_epoch": 2}
TRAIN = ["train", "--train-file", "add.tsv", "--config", "tiny.yaml", "--pretrain-epochs",
         "2", "--epochs", "2", "--reward", "length", "--max-new-tokens", "4",
         "--algorithm", "ppo", "--deterministic"]
# The commits the resumed lineage is killed at, one process each: mid-pre-training,
# mid-fine-tuning. (After pre-training's last epoch, where the rerun builds the agent
# with no pre-training epoch run before it, is among benchmarks/faults.py's moments.)
KILLS = [("pretrain", 1), ("finetune", 1)]
PROMPTS = ["3 + 4 =", "9 + 9 =", "0 + 5 ="]


def write_tiny_job(directory):
    rng = np.random.default_rng(0)
    lines = [f"{a} + {b} =\t{' '.join(str(a + b))}" for a, b in rng.integers(0, 10, (80, 2))]
    (directory / "add.tsv").write_text("\n".join(lines) + "\n")
    (directory / "tiny.yaml").write_text("".join(f"{k}: {v}\n" for k, v in TINY.items()))


def arguments(name):
    return TRAIN + ["--output", f"{name}/model", "--logdir", f"{name}/logs"]


def run(command, cwd):
    return subprocess.run(command, cwd=cwd, env=ENV, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The unbroken run and, beside it, one killed at each of KILLS in turn, then
    finished: (working directory, stdout of each rerun)."""
    workdir = tmp_path_factory.mktemp("resume")
    write_tiny_job(workdir)
    unbroken = subprocess.Popen(TFPG + arguments("unbroken"), cwd=workdir, env=ENV, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    reruns = []
    for phase, epochs in KILLS:
        killed = run([sys.executable, os.path.join(SCRIPTS, "kill_after_epoch.py"), phase,
                      str(epochs)] + arguments("resumed"), workdir)
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
        state = json.loads((workdir / "resumed/model.checkpoint/state.json").read_text())
        assert state[f"{phase}_epochs_done"] == epochs
        assert not (workdir / "resumed/model").exists()     # nothing exported before the end
        reruns.append(killed.stdout)
    final = run(TFPG + arguments("resumed"), workdir)
    assert final.returncode == 0, final.stderr[-3000:]
    reruns.append(final.stdout)
    _, stderr = unbroken.communicate(timeout=600)
    assert unbroken.returncode == 0, stderr[-3000:]
    return workdir, reruns[1:]


def checkpoint_values(prefix):
    reader = tf.train.load_checkpoint(str(prefix))
    return {key: reader.get_tensor(key) for key in reader.get_variable_to_shape_map()
            if key != "_CHECKPOINTABLE_OBJECT_GRAPH"}


def assert_identical(expected, got):
    assert expected.keys() == got.keys()
    for key in expected:
        assert np.array_equal(expected[key], got[key]), key


def test_each_rerun_resumed_where_the_kill_left_it(runs):
    _, reruns = runs
    assert "pre-training epoch 1/2, fine-tuning epoch 0/2" in reruns[0]
    assert "pre-training epoch 2/2, fine-tuning epoch 1/2" in reruns[1]


def test_resumed_weights_and_optimizer_state_equal_the_unbroken_run(runs):
    workdir, _ = runs
    last = {}
    for name in ("unbroken", "resumed"):
        state = json.loads((workdir / f"{name}/model.checkpoint/state.json").read_text())
        last[name] = checkpoint_values(workdir / f"{name}/model.checkpoint" /
                                       state["finetune_checkpoint"])
    # policy, optimizer (slots, iterations), trainer (critic, reference, kl_coef)
    assert {key.split("/")[0] for key in last["unbroken"]} == {"policy", "optimizer",
                                                               "trainer"}
    assert_identical(last["unbroken"], last["resumed"])
    # The export numbers its variables in the order its traced functions captured
    # them, which differs between processes: compared as a multiset of arrays.
    exports = [sorted((value.dtype.str, value.shape, value.tobytes()) for value in
                      checkpoint_values(workdir / f"{name}/model/variables/variables").values())
               for name in ("unbroken", "resumed")]
    assert exports[0] == exports[1]


def test_resumed_metrics_and_texts_equal_the_unbroken_run(runs):
    workdir, _ = runs
    metrics = [json.loads((workdir / f"{name}/model/metrics.json").read_text())
               for name in ("unbroken", "resumed")]
    for key in ("before", "after", "samples"):
        assert metrics[0][key] == metrics[1][key], key
    assert metrics[0]["after"]["kl"] != 0.0               # fine-tuning moved the policy
    texts = [tfpg.load(str(workdir / f"{name}/model")).generate(PROMPTS, seed=7)
             for name in ("unbroken", "resumed")]
    assert texts[0] == texts[1]


@pytest.fixture(scope="module")
def trainer_resumes(tmp_path_factory):
    """scripts/resume_trainers.py on all six algorithms, in one process."""
    directory = tmp_path_factory.mktemp("trainers")
    result = run([sys.executable, os.path.join(SCRIPTS, "resume_trainers.py"),
                  str(directory)] + sorted(ALGORITHMS), directory)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_each_trainer_resumed_from_its_checkpoint_equals_the_unbroken_one(
        trainer_resumes, name):
    result = trainer_resumes[name]
    assert result["max_difference"] == 0.0
    moved = result["moved"]
    assert moved["optimizer_iterations"] >= 4
    if name == "ppo":                                     # target_kl adapts kl_coef
        assert moved["kl_coef"] > 0
    if name == "reinforce":                               # the moving-average baseline
        assert moved["baseline_count"] > 0 and moved["baseline_average"] > 0


def test_epoch_batches_are_a_pure_function_of_seed_phase_and_epoch():
    elements = tf.data.Dataset.from_tensor_slices({"x": tf.range(10)})

    def epochs(first, steps=None, drop_remainder=False, seed=0, phase="finetune"):
        dataset, per_epoch = epoch_batches(elements, 4, seed, phase, first, 3, steps,
                                           drop_remainder)
        rows = [batch["x"].numpy().tolist() for batch in dataset]
        return [rows[i:i + per_epoch] for i in range(0, len(rows), per_epoch)]

    whole = epochs(0)
    assert [len(epoch) for epoch in whole] == [3, 3, 3]               # 4 + 4 + 2
    for epoch in whole:
        assert sorted(sum(epoch, [])) == list(range(10))              # each a permutation
    assert whole[0] != whole[1] != whole[2]                           # reshuffled
    assert epochs(1) == whole[1:] and epochs(2) == whole[2:]          # resumed: the same
    assert epochs(0) == whole                                         # a new iterator too
    assert epochs(0, seed=1) != whole and epochs(0, phase="pretrain") != whole
    # More steps than a pass: further passes, in orders of their own.
    long = epochs(1, steps=5, drop_remainder=True)
    assert [len(epoch) for epoch in long] == [5, 5]
    assert all(len(batch) == 4 for epoch in long for batch in epoch)
    assert long[0][:2] != long[0][2:4]
    assert stream_seed(0, "finetune", 1) == stream_seed(0, "finetune", 1) != \
        stream_seed(0, "finetune", 2)
