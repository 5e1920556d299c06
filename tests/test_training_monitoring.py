"""What a run leaves for monitoring: TensorBoard event files of a short `run_training`
read back (a point every --log-every steps, KL measured with kl_coef 0, pre-training
loss and perplexity, sample tables at scalar steps), console lines, and run states
written by an older tfpg."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tfpg.run import pipeline

TINY = {"embedding_dim": 16, "hidden_dim": 32, "batch_size": 16}


def read_events(directory):
    accumulator = EventAccumulator(str(directory), size_guidance={"tensors": 0})
    accumulator.Reload()
    return {tag: [(e.step, tf.make_ndarray(e.tensor_proto)) for e in accumulator.Tensors(tag)]
            for tag in accumulator.Tags()["tensors"]}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    directory = tmp_path_factory.mktemp("monitored")
    rng = np.random.default_rng(0)
    lines = [f"{a} + {b} =\t{' '.join(str(a + b))}" for a, b in rng.integers(0, 10, (80, 2))]
    (directory / "add.tsv").write_text("\n".join(lines) + "\n")
    config = pipeline.TrainConfig(
        # "length": a signal from the first step, so that the policy moves whatever the
        # order of the prompts (a tiny model rarely gets a sum exactly right).
        train_file=str(directory / "add.tsv"), reward="length", pretrain_epochs=2,
        epochs=2, steps_per_epoch=3, log_every=2, max_new_tokens=4, kl_coef=0.0,
        output=str(directory / "model"), logdir=str(directory / "logs"), **TINY)
    log = []
    metrics = pipeline.run_training(config, log=log.append)
    return directory, metrics, log


def test_fine_tuning_scalars_every_log_every_steps_with_kl(run):
    directory, metrics, _ = run
    events = read_events(directory / "logs/rewards")
    # 3 steps an epoch, a point every 2 global steps.
    for tag in ("reward", "kl", "entropy", "policy_loss"):
        assert [step for step, _ in events[tag]] == [2, 4, 6], tag
    kl = [float(value) for _, value in events["kl"]]
    # Measured although kl_coef is 0 (a Monte-Carlo estimate: any sign).
    assert all(np.isfinite(kl)) and max(np.abs(kl)) > 0
    assert metrics["after"]["kl"] != 0.0      # a Monte-Carlo estimate: any sign
    # Nothing else writes scalars: no keras.callbacks.TensorBoard "train/epoch_*" copies.
    assert sorted(os.listdir(directory / "logs")) == ["pretrain", "rewards", "rewards.csv",
                                                      "samples"]
    assert not [tag for tag in events if tag.startswith(("epoch", "batch"))]
    assert [step for step, _ in events["rewards"]] == [3, 6]         # histograms


def test_sample_tables_sit_at_scalar_steps(run):
    directory, _, _ = run
    samples = read_events(directory / "logs/samples")["samples"]
    assert [step for step, _ in samples] == [3, 6]
    table = (directory / "logs/samples/epoch_0002.md").read_text()
    assert table.startswith("**epoch 2 (step 6)**")


def test_pre_training_loss_and_perplexity_curves(run):
    directory, _, log = run
    events = read_events(directory / "logs/pretrain")
    # 80 texts in batches of 16: 5 steps an epoch, a point every 2 steps.
    assert [step for step, _ in events["loss"]] == [2, 4, 6, 8, 10]
    losses = np.array([value for _, value in events["loss"]])
    np.testing.assert_allclose([value for _, value in events["perplexity"]], np.exp(losses),
                               rtol=1e-5)
    assert losses[-1] < losses[0]
    progress = [line for line in log if line.startswith("pre-training epoch")]
    assert [line.split(" - ")[0] for line in progress] == ["pre-training epoch 1/2",
                                                          "pre-training epoch 2/2"]


def test_default_log_every_gives_about_a_hundred_points():
    config = pipeline.TrainConfig()
    steps = tf.data.Dataset.range(31)                   # the default run: 31 steps an epoch
    every = pipeline._log_every(config, steps, epochs=4)
    assert every == 2 and 124 // every >= 50
    assert pipeline._log_every(pipeline.TrainConfig(log_every=7), steps, 4) == 7
    assert pipeline._log_every(config, tf.data.Dataset.range(10), 3) == 1


def write_state(directory, **values):
    directory.mkdir(parents=True, exist_ok=True)
    config = pipeline.TrainConfig(output=str(directory)[:-len(".checkpoint")])
    state = {"version": 1, "config": json.loads(json.dumps(vars(config))),
             "pretrain_epochs_done": 3, "finetune_epochs_done": 0,
             "pretrain_checkpoint": "pretrain-3", "finetune_checkpoint": None,
             "before": None, "seconds": 5.0, **values}
    (directory / "state.json").write_text(json.dumps(state))
    return config


def test_a_version_1_state_resumes_pre_training_or_is_refused_in_one_line(tmp_path):
    config = write_state(tmp_path / "model.checkpoint")
    state = pipeline.RunState(str(tmp_path / "model.checkpoint"), config)
    assert state.resumed and state["pretrain_epochs_done"] == 3
    assert state["version"] == pipeline.STATE_VERSION

    config = write_state(tmp_path / "other.checkpoint", finetune_epochs_done=1,
                         finetune_checkpoint="finetune-1")
    with pytest.raises(pipeline.UsageError, match="older tfpg .*delete it or use another"):
        pipeline.RunState(str(tmp_path / "other.checkpoint"), config)
    config = write_state(tmp_path / "newer.checkpoint", version=99)
    with pytest.raises(pipeline.UsageError, match="newer tfpg"):
        pipeline.RunState(str(tmp_path / "newer.checkpoint"), config)
