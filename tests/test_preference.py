"""Bradley-Terry reward models, the `preference` task and their bad-input cases."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tfpg import data as tfpg_data
from tfpg import rewards
from tfpg.data import DataError
from tfpg.losses import bradley_terry_loss
from tfpg.models import PolicyNetwork, RewardNetwork
from tfpg.rewards.preference import check_pairs, read_preference_pairs
from tfpg.rewards.reward_model import RewardModel
from tfpg.tasks import get_task
from tfpg.tasks.preference import utility_of, utility_terms
from tfpg.text import Tokenizer

sys.path.insert(0, os.path.dirname(__file__))
from cli_batch import assert_usage_error, run_in_fresh_directories  # noqa: E402


@pytest.fixture(scope="module")
def task():
    return get_task("preference", seed=0, num_pairs=800, num_heldout_pairs=400,
                    num_train=16, num_heldout=16, num_pretrain=64)


@pytest.fixture(scope="module")
def trained(task):
    tok = task.tokenizer()
    pairs = task.preference_pairs("train")
    model = rewards.train_preference_model(
        pairs["prompts"], pairs["chosen"], pairs["rejected"], tok,
        heldout=task.preference_pairs("heldout"), embedding_dim=16, hidden_dim=32, epochs=3)
    return model, tok


def test_bradley_terry_loss_matches_hand_computation():
    chosen, rejected = [2.0, 0.0, -1.0, 30.0], [1.0, 0.0, 1.0, -30.0]
    for margin in (0.0, 0.5):
        expected = [math.log(1 + math.exp(-(c - r - margin))) for c, r in zip(chosen, rejected)]
        got = bradley_terry_loss(tf.constant(chosen), tf.constant(rejected), margin).numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    per_pair = bradley_terry_loss(tf.constant([1.0, 1.0]), tf.constant([0.0, 0.0]),
                                  tf.constant([0.0, 1.0])).numpy()
    np.testing.assert_allclose(per_pair, [math.log(1 + math.exp(-1)), math.log(2)], rtol=1e-6)


@pytest.mark.parametrize("backbone", ["lstm", "transformer"])
def test_reward_network_reads_the_last_real_token_wherever_the_padding_is(backbone):
    scorer = RewardNetwork(12, embedding_dim=8, hidden_dim=16, backbone=backbone, num_heads=2,
                           max_length=4)
    right = scorer(tf.constant([[1, 5, 6, 7, 0, 0]])).numpy()
    split = scorer(tf.constant([[0, 1, 5, 0, 6, 7]])).numpy()   # left-padded prompt + completion
    np.testing.assert_allclose(right, split, atol=1e-6)
    assert scorer(tf.constant([[1, 5, 6, 8]])).numpy() != pytest.approx(right)
    scorer.set_normalization(2.0, 4.0)
    np.testing.assert_allclose(scorer(tf.constant([[1, 5, 6, 7]])).numpy(),
                               (scorer(tf.constant([[1, 5, 6, 7]]), normalize=False) - 2.0) / 4.0,
                               rtol=1e-6)
    if backbone == "transformer":   # longer than max_length: the last 4 real tokens count
        np.testing.assert_allclose(scorer(tf.constant([[3, 3, 1, 5, 6, 7]])).numpy(),
                                   scorer(tf.constant([[1, 5, 6, 7]])).numpy(), atol=1e-6)


def test_reward_network_from_policy_copies_the_trunk_without_sharing_it():
    policy = PolicyNetwork(10, embedding_dim=8, hidden_dim=8)
    policy.build()
    scorer = RewardNetwork.from_policy(policy)
    for a, b in zip(policy.backbone.weights, scorer.backbone.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
        assert a is not b


def test_task_gold_utility_and_ceiling(task):
    tok = task.tokenizer()
    assert task.utility("sure , the rain is very clear and vague .") == 0.5
    # Distinct good adjectives capped at 3; every word beyond 12 costs 0.5.
    long = "the rain is clear and accurate and useful and precise and very very honest ."
    terms = utility_terms(long.split())
    assert terms == {"good": 5, "bad": 0, "keyword": 0, "length": 15}
    assert utility_of(terms) == 3 - 1.5
    texts = task.pretrain_texts[:32] + [long, "clear clear clear wrong wrong"]
    prompts = task.train.prompts[:1] * len(texts)
    ids, _ = rewards.reward_model.pad_ids(tok.encode(texts, add_bos=False), "right")
    ids = np.concatenate([ids, np.full([len(ids), 1], tok.eos_id), np.full([len(ids), 1], 5)],
                         axis=1)
    mask = (ids != 0).astype(np.float32)
    mask[:, -1] = 0   # after EOS
    gold = task.gold_reward(tok)(tf.constant(tok.encode(prompts)), tf.constant(ids),
                                 tf.constant(mask), {}).numpy()
    np.testing.assert_allclose(gold, [task.utility(t) for t in texts], atol=1e-6)

    pairs = task.preference_pairs("heldout")
    gaps = np.abs([task.utility(c) - task.utility(r)
                   for c, r in zip(pairs["chosen"], pairs["rejected"])])
    expected = np.mean(1 / (1 + np.exp(-gaps / task.annotator_temperature)))
    assert task.pairwise_ceiling("heldout") == pytest.approx(expected, rel=1e-9)
    assert 0.8 < expected < 0.9          # noisy enough to matter at the default temperature
    assert set(task.heldout.prompts).isdisjoint(task.train.prompts)
    assert set(pairs["prompts"]).isdisjoint(task.preference_pairs("train")["prompts"])
    again = get_task("preference", seed=0, num_pairs=800, num_heldout_pairs=400,
                     num_train=16, num_heldout=16, num_pretrain=64)
    assert again.preference_pairs("heldout") == pairs
    with pytest.raises(ValueError, match="learned reward model"):
        task.reward(tok)(None, tf.ones([1, 2], tf.int32), tf.ones([1, 2]), {})


def test_heldout_accuracy_near_the_annotators_ceiling(task, trained):
    model, _ = trained
    ceiling = task.pairwise_ceiling("heldout")
    accuracy = model.metadata["heldout_accuracy"]
    assert accuracy >= 0.75
    assert accuracy >= ceiling - 0.05, (accuracy, ceiling)
    history = model.history.history
    assert history["val_pairwise_accuracy"][-1] == pytest.approx(accuracy, abs=1e-6)
    assert history["loss"][-1] < history["loss"][0]


def test_scores_are_normalised_over_the_training_completions(task, trained):
    model, _ = trained
    pairs = task.preference_pairs("train")
    scores = np.concatenate([model.score(pairs["prompts"], pairs["chosen"]),
                             model.score(pairs["prompts"], pairs["rejected"])])
    # Training used 800 pairs; the normalisation constants came from all of them.
    assert abs(scores.mean()) < 1e-4 and scores.std() == pytest.approx(1.0, abs=1e-4)
    norm = model.metadata["normalization"]
    assert float(model.model.score_mean.numpy()) == pytest.approx(norm["mean"])


def test_save_load_and_served_score_signature_agree(task, trained, tmp_path):
    model, tok = trained
    prompts = task.heldout.prompts[:5]
    completions = task.heldout.references[:5]
    expected = model.score(prompts, completions)
    # As a reward: the policy's completion ids carry EOS and junk after it.
    ids, _ = rewards.reward_model.pad_ids(tok.encode(completions, add_bos=False), "right")
    ids = np.concatenate([ids, np.full([5, 2], tok.eos_id)], axis=1)
    ids[ids == 0] = tok.eos_id
    mask = np.ones_like(ids, np.float32)
    prompt_ids, _ = rewards.reward_model.pad_ids(tok.encode(prompts), "left")
    as_reward = model(tf.constant(prompt_ids), tf.constant(ids), tf.constant(mask), {}).numpy()
    np.testing.assert_allclose(as_reward, expected, atol=1e-5)

    path = str(tmp_path / "rm")
    assert model.save(path) == path
    assert sorted(os.listdir(tmp_path)) == ["rm"]        # nothing left beside it
    loaded = RewardModel.load(path)
    np.testing.assert_allclose(loaded.score(prompts, completions), expected, atol=1e-5)
    assert loaded.metadata["heldout_accuracy"] == model.metadata["heldout_accuracy"]
    served = tf.saved_model.load(path).signatures["score"](
        prompts=tf.constant(prompts), completions=tf.constant(completions))["scores"].numpy()
    np.testing.assert_allclose(served, expected, atol=1e-5)
    model.save(path)                                       # replaces its own kind
    os.makedirs(tmp_path / "other")
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a tfpg reward model"):
        model.save(str(tmp_path / "other"))
    with pytest.raises(ValueError, match="not a tfpg reward model"):
        RewardModel.load(str(tmp_path / "other"))


def _one_line_data_error(call, match):
    with pytest.raises(DataError, match=match) as info:
        call()
    assert "\n" not in str(info.value)


def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


def test_bad_pair_files(tmp_path):
    good = json.dumps({"prompt": "p", "chosen": "a b", "rejected": "b a"})
    assert read_preference_pairs(_write(tmp_path / "ok.jsonl", [good, ""]))["chosen"] == ["a b"]
    missing = _write(tmp_path / "m.jsonl", [good, json.dumps({"prompt": "p", "chosen": "a"})])
    _one_line_data_error(lambda: read_preference_pairs(missing),
                         r"m.jsonl:2: missing .*'rejected'")
    same = _write(tmp_path / "s.jsonl", [json.dumps({"prompt": "p", "chosen": "a  b",
                                                     "rejected": "a b"})])
    _one_line_data_error(lambda: read_preference_pairs(same), "s.jsonl:1: .*same text")
    empty = _write(tmp_path / "e.jsonl", ["", "  "])
    _one_line_data_error(lambda: read_preference_pairs(empty), "no preference pairs")
    _one_line_data_error(lambda: check_pairs(["p"], ["x"], ["x"]), "pair 0: chosen and rejected")
    _one_line_data_error(lambda: check_pairs([], [], []), "no preference pairs")
    _one_line_data_error(lambda: check_pairs(["p"], ["x"], []), "one of each per pair")


def test_pairs_in_another_language_are_refused(task):
    tok = task.tokenizer()
    _one_line_data_error(
        lambda: rewards.train_preference_model(
            ["décris la rivière"] * 4, ["elle est claire et utile ."] * 4,
            ["elle est vague ."] * 4, tok, epochs=1),
        "unknown to the tokenizer.*another language")
    char = Tokenizer.from_texts(["abc"], level="char")
    _one_line_data_error(lambda: rewards.train_preference_model(
        ["xyz"], ["zz"], ["yy"], char, epochs=1), "another language")


def _pairs_file(path, task, count, start=0):
    pairs = task.preference_pairs("train")
    lines = [json.dumps({"prompt": p, "chosen": c, "rejected": r})
             for p, c, r in list(zip(pairs["prompts"], pairs["chosen"],
                                     pairs["rejected"]))[start:start + count]]
    return _write(path, lines)


def test_for_tokenizer_maps_another_vocabularys_ids(trained, task):
    model, tok = trained
    shuffled = Tokenizer(tok.vocabulary[:4] + tok.vocabulary[4:][::-1], level="word")
    remapped = model.for_tokenizer(shuffled)
    assert model.for_tokenizer(Tokenizer(tok.vocabulary)) is model
    prompts, completions = task.heldout.prompts[:4], task.heldout.references[:4]
    prompt_ids, _ = rewards.reward_model.pad_ids(shuffled.encode(prompts), "left")
    ids, _ = rewards.reward_model.pad_ids(shuffled.encode(completions, add_bos=False), "right")
    got = remapped(tf.constant(prompt_ids), tf.constant(ids),
                   tf.constant((ids != 0).astype(np.float32)), {}).numpy()
    np.testing.assert_allclose(got, model.score(prompts, completions), atol=1e-5)
    with pytest.raises(ValueError, match="word-level tokens"):
        model.for_tokenizer(Tokenizer.from_texts(["ab"], level="char"))


def test_train_reward_job_from_a_pairs_file_and_its_bad_inputs(task, tmp_path):
    from tfpg.run.reward_pipeline import load_reward_model, run_reward_training
    pairs = _pairs_file(tmp_path / "pairs.jsonl", task, 48)
    out = str(tmp_path / "rm")
    summary = run_reward_training(out, pairs=pairs, epochs=1, hidden_dim=8, embedding_dim=8)
    assert summary["train_pairs"] + summary["heldout_pairs"] == 48
    assert summary["heldout_pairs"] == 4 and 0.0 <= summary["heldout_accuracy"] <= 1.0
    loaded = load_reward_model(out, task.tokenizer())
    assert loaded.metadata["source"] == pairs
    assert loaded(tf.constant([[1, 5]]), tf.constant([[6, 2]]), tf.ones([1, 2]), {}).shape == [1]

    # Every bad input: a one-line ValueError, and nothing written.
    lines = open(pairs).read().splitlines()
    record = json.loads(lines[0])
    bad = {"missing": [json.dumps({"prompt": "p", "chosen": "a"})],
           "same": [json.dumps({**record, "rejected": record["chosen"]})],
           "empty": []}
    for name, content in bad.items():
        path = _write(tmp_path / f"{name}.jsonl", content)
        with pytest.raises(DataError) as info:
            run_reward_training(str(tmp_path / f"out-{name}"), pairs=path, epochs=1)
        assert "\n" not in str(info.value)
    foreign = _write(tmp_path / "fr.jsonl", [json.dumps(
        {"prompt": "décris la rivière", "chosen": "elle est claire et utile .",
         "rejected": "elle est floue ."})] * 8)
    tok_path = str(tmp_path / "tok.json")
    task.tokenizer().save(tok_path)
    with pytest.raises(DataError, match="another language"):
        run_reward_training(str(tmp_path / "out-fr"), pairs=foreign, tokenizer=tok_path, epochs=1)
    os.makedirs(tmp_path / "taken")
    (tmp_path / "taken" / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="not a tfpg reward model"):
        run_reward_training(str(tmp_path / "taken"), pairs=pairs, epochs=1)
    with pytest.raises(ValueError, match="no preference pairs"):
        run_reward_training(str(tmp_path / "out-arith"), task="arithmetic")
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["pairs.jsonl", "rm", "tok.json", "taken", "fr.jsonl"]
        + [f"{name}.jsonl" for name in bad])
    with pytest.raises(ValueError, match="--reward-model: .*no such directory"):
        load_reward_model(str(tmp_path / "nothing"), task.tokenizer())


def test_a_classifier_reward_model_saves_and_serves_too(tmp_path):
    texts = ["good film", "bad film", "good good", "bad bad"] * 8
    tok = Tokenizer.from_texts(texts)
    classifier = rewards.train_reward_from_labels(texts, [1, 0, 1, 0] * 8, tok, epochs=5)
    expected = classifier.score(["", ""], ["good film", "bad"])
    path = classifier.save(str(tmp_path / "clf"))
    np.testing.assert_allclose(RewardModel.load(path).score(["", ""], ["good film", "bad"]),
                               expected, atol=1e-6)
    served = tf.saved_model.load(path).signatures["score"](
        prompts=tf.constant(["", ""]), completions=tf.constant(["good film", "bad"]))
    np.testing.assert_allclose(served["scores"].numpy(), expected, atol=1e-6)


def test_a_keras_hub_trunk_reward_model_scores_saves_and_serves(tmp_path):
    pytest.importorskip("keras_hub")
    pytest.importorskip("tfpg.models.keras_hub_policy")
    sys.path.insert(0, os.path.dirname(__file__))
    from keras_hub_models import save_preset

    from tfpg.models.keras_hub_policy import KerasHubPolicy
    from tfpg.models.keras_hub_reward_network import KerasHubRewardNetwork
    policy = KerasHubPolicy.from_preset(save_preset("gpt2", tmp_path / "presets"))
    tok = policy.tokenizer
    prompts = ["the cat", "a dog", "1 + 2 =", "the end"] * 4
    model = rewards.train_preference_model(
        prompts, ["sat on the mat"] * 16, ["ran ! ?"] * 16, tok, init_from=policy,
        epochs=3, batch_size=8, validation_split=0.25, learning_rate=1e-2)
    assert isinstance(model.model, KerasHubRewardNetwork)
    # A copy of the policy's trunk, not the trunk itself.
    assert not {id(v) for v in model.model.trainable_variables} & \
        {id(v) for v in policy.trainable_variables}
    assert model.metadata["train_accuracy"] == 1.0
    prompts, completions = ["the cat", "1 + 2 ="], ["sat on the mat", "ran !"]
    expected = model.score(prompts, completions)
    # As the trainers call it: left-padded prompts with their mask, EOS then junk.
    prompt_ids, prompt_mask = rewards.reward_model.pad_ids(tok.encode(prompts), "left",
                                                           tok.pad_id)
    rows = [ids + [tok.eos_id] for ids in tok.encode(completions, add_bos=False)]
    ids, mask = rewards.reward_model.pad_ids(rows, "right", 0)   # id 0 is "!", masked out
    ids[:, -1:] = np.where(mask[:, -1:] > 0, ids[:, -1:], 7)
    as_reward = model(tf.constant(prompt_ids), tf.constant(ids), tf.constant(mask, tf.float32),
                      {"prompt_mask": tf.constant(prompt_mask)}).numpy()
    np.testing.assert_allclose(as_reward, expected, atol=1e-5)
    path = model.save(str(tmp_path / "rm"))
    loaded = RewardModel.load(path)
    np.testing.assert_allclose(loaded.score(prompts, completions), expected, atol=1e-5)
    served = tf.saved_model.load(path).signatures["score"](
        prompts=tf.constant(prompts), completions=tf.constant(completions))["scores"].numpy()
    np.testing.assert_allclose(served, expected, atol=1e-5)
    assert loaded.for_tokenizer(tok) is loaded
    with pytest.raises(ValueError, match="train the reward model with the policy's"):
        loaded.for_tokenizer(Tokenizer.from_texts(["the cat"]))


# ------------------------------------------------------------------ command line

TFPG = [sys.executable, "-m", "tfpg.run.cli"]


def tfpg_cli(args, cwd, timeout=600):
    env = {key: value for key, value in os.environ.items() if key != "TFPG_DEBUG"}
    return subprocess.run(TFPG + args, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_cli_train_reward_then_train_with_the_reward_model(tmp_path):
    made = tfpg_cli(["train-reward", "--task", "preference", "--output", "rm", "--epochs", "1",
                     "--hidden-dim", "16", "--embedding-dim", "8"], tmp_path)
    assert made.returncode == 0, made.stderr[-2000:]
    assert "held-out pairwise accuracy" in made.stdout and "ceiling" in made.stdout
    assert RewardModel.load(str(tmp_path / "rm")).metadata["ceiling"] > 0.8
    trained = tfpg_cli(["train", "--task", "preference", "--reward-model", "rm",
                        "--pretrain-epochs", "1", "--epochs", "1", "--steps-per-epoch", "2",
                        "--batch-size", "16", "--output", "out/model", "--logdir", "out/logs"],
                       tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    metrics = json.loads((tmp_path / "out/model/metrics.json").read_text())
    assert metrics["task"] == "preference" and metrics["primary_metric"] == "gold_reward"
    for phase in ("before", "after"):
        # Gold and proxy reward of greedy and of sampled completions.
        assert {"gold_reward", "reward", "sampled_gold_reward", "sampled_reward",
                "kl"} <= set(metrics[phase]), metrics[phase]
    assert metrics["after"]["kl"] > 0


BAD_PREFERENCE_INPUT = [
    (["train", "--task", "preference"], ["--reward-model", "train-reward"]),
    (["train", "--task", "preference", "--reward-model", "nowhere"], ["nowhere"]),
    (["train", "--reward", "bleu", "--reward-model", "rm"], ["not both"]),
    (["train-reward", "--pairs", "missing.jsonl"], ["missing.jsonl:2", "'rejected'"]),
    (["train-reward", "--pairs", "same.jsonl"], ["same.jsonl:1", "same text"]),
    (["train-reward", "--pairs", "empty.jsonl"], ["empty.jsonl", "no preference pairs"]),
    (["train-reward", "--pairs", "fr.jsonl", "--tokenizer", "tok.json"], ["another language"]),
    (["train-reward", "--task", "arithmetic"], ["no preference pairs"]),
    (["train-reward", "--task", "preference", "--pairs", "fr.jsonl"], ["not allowed with"]),
]


def _bad_preference_directory(directory):
    good = json.dumps({"prompt": "describe the rain", "chosen": "the rain is clear .",
                       "rejected": "the rain is vague ."})
    _write(directory / "missing.jsonl", [good, json.dumps({"prompt": "p", "chosen": "a"})])
    _write(directory / "same.jsonl", [json.dumps({"prompt": "p", "chosen": "a b",
                                                  "rejected": "a b"})])
    _write(directory / "empty.jsonl", [])
    _write(directory / "fr.jsonl", [json.dumps({"prompt": "décris la pluie",
                                                "chosen": "elle est claire .",
                                                "rejected": "elle est floue ."})] * 4)
    get_task("preference", num_pairs=4, num_heldout_pairs=4, num_train=4, num_heldout=4,
             num_pretrain=4).tokenizer().save(str(directory / "tok.json"))
    return directory


@pytest.fixture(scope="module")
def bad_preference_runs(tmp_path_factory):
    """Every BAD_PREFERENCE_INPUT command in a directory of its own, all in one
    process (tests/cli_batch.py): (directory, files before, result) per case."""
    env = {key: value for key, value in os.environ.items() if key != "TFPG_DEBUG"}
    return run_in_fresh_directories(
        tmp_path_factory, [args + ["--output", "out/model"] for args, _ in BAD_PREFERENCE_INPUT],
        _bad_preference_directory, env)


@pytest.mark.parametrize("case", range(len(BAD_PREFERENCE_INPUT)),
                         ids=[" ".join(args) for args, _ in BAD_PREFERENCE_INPUT])
def test_cli_bad_preference_input_exits_2_and_writes_nothing(bad_preference_runs, case):
    directory, before, result = bad_preference_runs[case]
    assert_usage_error(result, *BAD_PREFERENCE_INPUT[case][1])
    assert set(os.listdir(directory)) == before


def test_the_preference_task_is_also_evaluated_on_sampled_completions():
    """`sampled_metrics`: the task's metrics and the reward of the completions sampled
    at temperature 1 with seed 0, beside the greedy ones."""
    import keras
    from tfpg.run.config import TrainConfig
    from tfpg.run.evaluation import evaluate_policy
    from tfpg.generation import generate
    from tfpg.run.jobs import make_job

    task = get_task("preference", num_pairs=8, num_heldout_pairs=4, num_train=4,
                    num_heldout=6, num_pretrain=8)
    job = make_job(TrainConfig(task="preference", reward="length"))
    job.heldout = task.heldout
    assert job.sampled_metrics
    keras.utils.set_random_seed(0)
    policy = PolicyNetwork(job.tokenizer.vocabulary_size, 8, 16)
    metrics, greedy_texts = evaluate_policy(policy, job)

    batch = next(iter(tfpg_data.prompt_dataset(task.heldout.prompts, job.tokenizer,
                                               batch_size=256)))
    sampled = generate(policy, batch["prompt"], job.max_new_tokens, seed=0,
                       prompt_mask=batch["prompt_mask"])
    expected = task.evaluate(task.heldout.prompts, job.tokenizer.decode(sampled.token_ids))
    for name, value in expected.items():
        assert metrics[f"sampled_{name}"] == pytest.approx(value), name
        assert metrics[name] == pytest.approx(task.evaluate(task.heldout.prompts,
                                                            greedy_texts)[name])
    rewards_of_samples = job.reward_fn(batch["prompt"], sampled.token_ids, sampled.mask, batch)
    assert metrics["sampled_reward"] == pytest.approx(float(tf.reduce_mean(rewards_of_samples)))
    assert metrics["sampled_gold_reward"] != metrics["gold_reward"]
