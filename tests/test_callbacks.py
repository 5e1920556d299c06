"""Tests for `tfpg.callbacks` with a tiny stand-in trainer (not `tfpg.algorithms`):
CSV and TensorBoard reward logs read back from the event files, sample tables,
and SavedModel exports at epoch end."""

import csv
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tfpg import callbacks as callbacks_lib
from tfpg.callbacks import saved_model_export
from tfpg.callbacks.base import _CsvLog
from tfpg.callbacks import RewardLogger, SampleLogger, SavedModelExport
from tfpg.export import load, read_export_info
from tfpg.generation import generate
from tfpg.models import PolicyNetwork
from tfpg.text import Tokenizer

WORDS = "one two three four five six seven eight nine ten plus is".split()
LOG_NAMES = ["reward", "reward_std", "reward_min", "reward_max", "kl", "entropy",
             "completion_length", "reward/length"]


def completion_length_reward(prompt_ids, completion_ids, completion_mask, batch):
    return tf.reduce_sum(completion_mask, axis=1)


class FakeTrainer(keras.Model):
    """Stands in for a `tfpg.algorithms` trainer: a policy, trainer attributes, Mean
    trackers, fixed-ish logs and (optionally) the `last_rollout` protocol."""

    def __init__(self, policy, with_rollout=True):
        super().__init__()
        self.policy = policy
        self.reward_fn = completion_length_reward
        self.max_new_tokens = 4
        self.eos_id = 2
        self.temperature = 1.0
        self.epoch_reward = tf.Variable(0.0, trainable=False)  # set per epoch by tests
        self.trackers = {name: keras.metrics.Mean(name=name) for name in LOG_NAMES}
        if with_rollout:
            self.last_rollout = {
                "scores": tf.Variable(tf.zeros([4])),
                "advantages": tf.Variable(tf.zeros([4, 3])),
                "completion_mask": tf.Variable(tf.zeros([4, 3])),
                "prompt_ids": tf.Variable(tf.zeros([4, 4], tf.int32)),
            }
        self.built = True

    @property
    def metrics(self):
        return list(self.trackers.values())

    def train_step(self, data):
        prompt_ids = data["prompt"]                                           # [4, 4]
        scores = tf.cast(prompt_ids[:, -1], tf.float32) / 10.0 + self.epoch_reward
        values = {"reward": tf.reduce_mean(scores), "reward_std": tf.math.reduce_std(scores),
                  "reward_min": tf.reduce_min(scores), "reward_max": tf.reduce_max(scores),
                  "kl": 0.25, "entropy": 2.0, "completion_length": 3.0,
                  "reward/length": 1.5}
        for name, value in values.items():
            self.trackers[name].update_state(value)
        if hasattr(self, "last_rollout"):
            mask = tf.constant([[1.0, 1.0, 0.0]] * 4)
            # Masked-out advantages are huge so the test can see they are left out.
            self.last_rollout["advantages"].assign(tf.where(mask > 0, scores[:, None], 1e3))
            self.last_rollout["completion_mask"].assign(mask)
            self.last_rollout["scores"].assign(scores)
            self.last_rollout["prompt_ids"].assign(prompt_ids)
        return {name: tracker.result() for name, tracker in self.trackers.items()}


def set_epoch_rewards(model, rewards):
    """A callback that makes epoch e's rewards about `rewards[e]`."""
    return keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs: model.epoch_reward.assign(rewards[epoch]))


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.from_texts([" ".join(WORDS)])


@pytest.fixture(scope="module")
def policy(tokenizer):
    keras.utils.set_random_seed(3)
    policy = PolicyNetwork(tokenizer.vocabulary_size, 16, 24)
    policy.build()
    policy.lm_head.kernel.assign(policy.lm_head.kernel * 6.0)
    return policy


@pytest.fixture
def dataset(tokenizer):
    prompts = [f"{a} plus {b}" for a, b in zip(WORDS[:12], WORDS[1:] + WORDS[:1])]
    ids = np.array(tokenizer.encode(prompts), np.int32)                       # [12, 4]
    return tf.data.Dataset.from_tensor_slices({"prompt": ids}).batch(4)


def make_trainer(policy, with_rollout=True):
    trainer = FakeTrainer(policy, with_rollout=with_rollout)
    trainer.compile(optimizer="sgd")
    return trainer


def greedy_completions(policy, tokenizer, prompts, max_new_tokens):
    rows = tokenizer.encode(prompts)
    width = max(len(row) for row in rows)
    prompt_ids = tf.constant([[0] * (width - len(row)) + row for row in rows])
    out = generate(policy, prompt_ids, max_new_tokens=max_new_tokens, sampler="greedy")
    return tokenizer.decode(out.token_ids)


def read_events(directory):
    accumulator = EventAccumulator(directory, size_guidance={"tensors": 0})
    accumulator.Reload()
    return {tag: [(e.step, tf.make_ndarray(e.tensor_proto))
                  for e in accumulator.Tensors(tag)]
            for tag in accumulator.Tags()["tensors"]}


def batch_rewards(dataset, epoch_rewards):
    """The FakeTrainer's reward of each batch, by hand: [epochs, batches]."""
    last = [batch["prompt"].numpy()[:, -1] for batch in dataset]
    return np.array([[np.mean(ids / 10.0 + r) for ids in last] for r in epoch_rewards])


def test_reward_logger_writes_csv_scalars_and_histograms(tmp_path, policy, dataset):
    trainer = make_trainer(policy)
    csv_path = tmp_path / "rewards.csv"
    logger = RewardLogger(csv_path=csv_path, logdir=tmp_path / "logs", log_every=2)
    history = trainer.fit(dataset, epochs=2, verbose=0, shuffle=False,
                          callbacks=[logger, set_epoch_rewards(trainer, [1.0, 2.0])])

    # 3 steps per epoch, a point every 2 global steps: steps 1-2, 3-4 (across the
    # epochs), 5-6; each value the mean over its own steps, written once (no
    # per-epoch duplicate).
    rewards = batch_rewards(dataset, [1.0, 2.0])
    events = read_events(str(tmp_path / "logs" / "rewards"))
    assert [step for step, _ in events["reward"]] == [2, 4, 6]
    np.testing.assert_allclose([value for _, value in events["reward"]],
                               rewards.reshape(3, 2).mean(axis=1), rtol=1e-5)
    for name in LOG_NAMES:
        assert [step for step, _ in events[name]] == [2, 4, 6], name
    np.testing.assert_allclose([value for _, value in events["kl"]], 0.25)
    assert not [tag for tag in events if tag.startswith(("batch/", "epoch"))]
    assert events["reward_min"][1][1] <= events["reward"][1][1] <= events["reward_max"][1][1]
    # Histograms at each epoch's last step: buckets [k, 3] of (left, right, count);
    # masked advantages excluded.
    for tag in ("rewards", "advantages"):
        assert [step for step, _ in events[tag]] == [3, 6]
    advantages = events["advantages"][1][1]
    assert advantages[:, 2].sum() == 8 and advantages[:, 1].max() < 100
    assert events["rewards"][1][1][:, 2].sum() == 4

    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:3] == ["kind", "epoch", "step"] and set(LOG_NAMES) <= set(rows[0])
    assert [(r["kind"], r["epoch"], r["step"]) for r in rows] == [
        ("batch", "0", "2"), ("epoch", "0", "3"), ("batch", "1", "4"), ("batch", "1", "6"),
        ("epoch", "1", "6")]
    epoch_rows = [r for r in rows if r["kind"] == "epoch"]
    np.testing.assert_allclose([float(r["reward"]) for r in epoch_rows],
                               history.history["reward"], rtol=1e-6)
    np.testing.assert_allclose(history.history["reward"], rewards.mean(axis=1), rtol=1e-5)
    assert logger.history[-1]["kl"] == pytest.approx(0.25)

    # A run resumed at epoch 1 replaces epoch 1's rows instead of duplicating them.
    trainer.fit(dataset, epochs=2, initial_epoch=1, verbose=0, shuffle=False,
                callbacks=[RewardLogger(csv_path=csv_path),
                           set_epoch_rewards(trainer, [1.0, 5.0])])
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["epoch"], r["step"]) for r in rows if r["kind"] == "epoch"] == [
        ("0", "3"), ("1", "6")]                     # the global step of the resumed epoch
    assert float(rows[-1]["reward"]) > 5


def test_reward_logger_without_rollout_or_files(tmp_path, policy, dataset):
    trainer = make_trainer(policy, with_rollout=False)
    logger = RewardLogger(logdir=tmp_path)
    trainer.fit(dataset, epochs=1, verbose=0, shuffle=False, callbacks=[logger])
    events = read_events(str(tmp_path / "rewards"))
    assert "reward" in events and "rewards" not in events and "advantages" not in events
    assert [row["kind"] for row in logger.history] == ["epoch"]
    assert [step for step, _ in events["reward"]] == [3]         # the epoch's last step
    for bad in (0, "sometimes", True):
        with pytest.raises(ValueError, match="log_every"):
            RewardLogger(log_every=bad)


def test_language_model_logger_writes_loss_and_perplexity(tmp_path, tokenizer):
    from tfpg.run.pretraining import LanguageModelTrainer, pretraining_dataset
    keras.utils.set_random_seed(0)
    trainer = LanguageModelTrainer(PolicyNetwork(tokenizer.vocabulary_size, 8, 8))
    trainer.compile(optimizer=keras.optimizers.Adam(1e-2))
    texts = pretraining_dataset([" ".join(WORDS[i:i + 4]) for i in range(8)], tokenizer,
                                batch_size=2, seed=0)                   # 4 steps an epoch
    logger = callbacks_lib.LanguageModelLogger(logdir=tmp_path, log_every=3)
    trainer.fit(texts, epochs=2, verbose=0, callbacks=[logger])
    events = read_events(str(tmp_path / "pretrain"))
    assert [step for step, _ in events["loss"]] == [3, 6, 8]         # and the last step
    losses = np.array([value for _, value in events["loss"]])
    np.testing.assert_allclose([value for _, value in events["perplexity"]], np.exp(losses),
                               rtol=1e-5)
    assert losses[-1] < losses[0]


def test_csv_log_survives_a_partial_line_and_new_columns(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("kind,epoch,step,reward\nepoch,0,3,0.5\nepoch,1,6,0.")  # torn last row
    log = _CsvLog(str(path))
    log.append({"kind": "epoch", "epoch": 1, "step": 6, "reward": 0.75, "kl": 0.1})
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["epoch"], r["reward"], r["kl"]) for r in rows] == [("0", "0.5", ""),
                                                                  ("1", "0.75", "0.1")]


def test_sample_logger_writes_tables_to_tensorboard_and_disk(tmp_path, policy, tokenizer,
                                                             dataset):
    trainer = make_trainer(policy)
    prompts = ["one plus two", "three | four"]
    references = ["three", "seven eight"]

    def reference_length(prompt_ids, completion_ids, completion_mask, batch):
        return tf.reduce_sum(tf.cast(batch["reference"] > 0, tf.float32), axis=1)

    logger = SampleLogger(tmp_path, tokenizer, prompts=prompts, references=references,
                          reward_fn=reference_length)
    trainer.fit(dataset, epochs=2, verbose=0, shuffle=False, callbacks=[logger])

    expected = greedy_completions(policy, tokenizer, prompts, max_new_tokens=4)
    sample_dir = tmp_path / "samples"
    assert sorted(n for n in os.listdir(sample_dir) if not n.startswith("events.")) == \
        ["epoch_0001.md", "epoch_0002.md", "samples.jsonl"]
    records = [json.loads(line) for line in open(sample_dir / "samples.jsonl")]
    assert [r["epoch"] for r in records] == [1, 1, 2, 2]
    assert [r["completion"] for r in records[:2]] == expected
    assert [r["reward"] for r in records[:2]] == [1.0, 2.0]
    assert [r["reference"] for r in records[:2]] == references

    table = (sample_dir / "epoch_0002.md").read_text()
    assert "| prompt | completion | reward | reference |" in table
    assert "three \\| four" in table and "**epoch 2 (step 6)**" in table
    events = read_events(str(sample_dir))
    assert [step for step, _ in events["samples"]] == [3, 6]     # RewardLogger's steps
    assert events["samples"][1][1].item().decode() == table


def test_sample_logger_by_steps_with_default_prompts(tmp_path, policy, tokenizer, dataset):
    trainer = make_trainer(policy)
    logger = SampleLogger(tmp_path, tokenizer, every_n_steps=2, max_new_tokens=3)
    trainer.fit(dataset, epochs=2, verbose=0, shuffle=False, callbacks=[logger])
    sample_dir = tmp_path / "samples"
    assert sorted(n for n in os.listdir(sample_dir) if n.endswith(".md")) == \
        ["step_00000002.md", "step_00000004.md", "step_00000006.md"]
    records = [json.loads(line) for line in open(sample_dir / "samples.jsonl")]
    # Prompts: the rows of the rollout before the first log (batch 2), kept from then on.
    assert [r["prompt"] for r in records[:4]] == [r["prompt"] for r in records[-4:]] == \
        ["five plus six", "six plus seven", "seven plus eight", "eight plus nine"]
    assert len(records) == 12
    # The trainer's reward_fn scores them: completion length under max_new_tokens=3.
    assert all(0 < r["reward"] <= 3 for r in records)
    assert [step for step, _ in read_events(str(sample_dir))["samples"]] == [2, 4, 6]


def test_sample_logger_without_rollout_or_working_reward(tmp_path, policy, tokenizer,
                                                         dataset):
    trainer = make_trainer(policy, with_rollout=False)

    def needs_reference(prompt_ids, completion_ids, completion_mask, batch):
        return tf.cast(tf.shape(batch["reference"])[1], tf.float32) + completion_mask[:, 0]

    logger = SampleLogger(tmp_path, tokenizer, reward_fn=needs_reference)
    with pytest.warns(UserWarning, match="reward failed"):
        trainer.fit(dataset, epochs=1, verbose=0, shuffle=False, callbacks=[logger])
    records = [json.loads(line) for line in open(tmp_path / "samples" / "samples.jsonl")]
    assert [(r["prompt"], r["reward"]) for r in records] == [("", None)]
    assert "| prompt | completion |\n" in (tmp_path / "samples" / "epoch_0001.md").read_text()
    with pytest.raises(ValueError, match="2 prompts but 1 references"):
        SampleLogger(tmp_path, tokenizer, prompts=["a", "b"], references=["c"])


def test_saved_model_export_keeps_the_best_export(tmp_path, policy, tokenizer, dataset):
    trainer = make_trainer(policy)
    path = str(tmp_path / "model")
    exporter = SavedModelExport(path, tokenizer, save_best_only=True)
    trainer.fit(dataset, epochs=2, verbose=0, shuffle=False,
                callbacks=[set_epoch_rewards(trainer, [3.0, 2.0]), exporter])
    info = read_export_info(path)
    assert info["metadata"]["epoch"] == 1 and info["metadata"]["monitor"] == "reward"
    assert info["metadata"]["monitor_value"] == pytest.approx(exporter.best)
    assert info["generation"]["max_new_tokens"] == 4  # the trainer's
    assert sorted(os.listdir(tmp_path)) == ["model"]
    prompts = ["one plus two", "nine"]
    assert load(path).generate(prompts) == greedy_completions(policy, tokenizer, prompts,
                                                              max_new_tokens=4)


def test_saved_model_export_schedule_and_monitor(tmp_path, policy, tokenizer, dataset,
                                                 monkeypatch):
    exported = []

    def fake_export(policy, tokenizer, path, metadata=None, **options):
        exported.append(metadata["epoch"])
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, "tfpg_export.json"), "w") as f:
            json.dump({"metadata": metadata}, f)

    monkeypatch.setattr(saved_model_export, "export_saved_model", fake_export)
    monkeypatch.setattr(saved_model_export, "read_export_info",
                        lambda path: json.load(open(os.path.join(path, "tfpg_export.json"))))
    trainer = make_trainer(policy)

    def run(exporter, rewards, initial_epoch=0):
        exported.clear()
        trainer.fit(dataset, epochs=len(rewards), initial_epoch=initial_epoch, verbose=0, shuffle=False,
                    callbacks=[set_epoch_rewards(trainer, rewards), exporter])
        return list(exported)

    path = str(tmp_path / "m")
    assert run(SavedModelExport(path, tokenizer, save_best_only=True), [1., 3., 2.]) == [1, 2]
    # A resumed run compares with the best export already on disk (epoch 2's).
    assert run(SavedModelExport(path, tokenizer, save_best_only=True),
               [0., 0., 2.9, 9.], initial_epoch=2) == [4]
    assert run(SavedModelExport(tmp_path / "n", tokenizer, save_best_only=True, mode="min"),
               [1., 3., 0.]) == [1, 3]
    assert run(SavedModelExport(tmp_path / "o", tokenizer, every_n_epochs=2),
               [1., 1., 1., 1.]) == [2, 4]
    with pytest.warns(UserWarning, match="'accuracy' is not in the logs"):
        assert run(SavedModelExport(tmp_path / "p", tokenizer, monitor="accuracy",
                                    save_best_only=True), [1.]) == []
    with pytest.raises(TypeError, match="unknown options"):
        SavedModelExport(path, tokenizer, beam_width=4)


def test_sample_logger_on_a_policy_being_pretrained(tmp_path, tokenizer):
    keras.utils.set_random_seed(5)
    policy = PolicyNetwork(tokenizer.vocabulary_size, 8, 8)
    policy.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, ignore_class=0))
    ids = np.array([tokenizer.encode(" ".join(WORDS))] * 4, np.int32)
    logger = SampleLogger(tmp_path, tokenizer, prompts=["one two"], max_new_tokens=3)
    policy.fit(ids[:, :-1], ids[:, 1:], epochs=1, verbose=0, callbacks=[logger])
    records = [json.loads(line) for line in open(tmp_path / "samples" / "samples.jsonl")]
    assert [(r["prompt"], r["reward"]) for r in records] == [("one two", None)]
    assert records[0]["completion"] == greedy_completions(policy, tokenizer, ["one two"], 3)[0]
