import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import keras
import tfpg
from tfpg.algorithms import ALGORITHMS, GRPO, PPO, REINFORCE, RLOO
from tfpg.testing import count_train_step_traces, exact_policy_gradient

VOCAB = 8


def count_fives(prompt_ids, completion_ids, completion_mask, batch):
    """Toy reward: the fraction of real completion tokens that are id 5."""
    hits = tf.cast(tf.equal(completion_ids, 5), tf.float32) * completion_mask
    return tf.reduce_sum(hits, axis=1) / tf.maximum(tf.reduce_sum(completion_mask, 1), 1.0)


def toy_dataset(batch_size=16):
    prompts = np.array([[1, 4], [1, 6], [1, 7], [0, 1]] * 8, np.int32)
    return tf.data.Dataset.from_tensor_slices({"prompt": prompts}).batch(batch_size)


def make_agent(name, **overrides):
    keras.utils.set_random_seed(0)
    options = dict(max_new_tokens=6, eos_id=None, seed=0)
    if name in ("a2c", "ppo"):
        options["value_model"] = tfpg.ValueNetwork(VOCAB, 16, 32)
    if name in ("rloo", "grpo"):
        options["group_size"] = 4
    options.update(overrides)
    agent = ALGORITHMS[name](tfpg.PolicyNetwork(VOCAB, 16, 32), count_fives, **options)
    agent.compile(optimizer=keras.optimizers.Adam(1e-2))
    return agent


COMMON = {"reward", "reward_std", "entropy", "policy_loss", "completion_length",
          "truncated_fraction"}
EXPECTED_METRICS = {
    "reinforce": COMMON,
    "scst": COMMON,
    "rloo": COMMON | {"zero_std_fraction"},
    "grpo": COMMON | {"zero_std_fraction", "kl", "kl_loss", "clip_fraction", "approx_kl",
                      "clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean"},
    "a2c": COMMON | {"value_loss"},
    "ppo": COMMON | {"kl", "value_loss", "clip_fraction", "approx_kl", "clip_ratio/low_mean",
                     "clip_ratio/high_mean", "clip_ratio/region_mean"},
}


# GRPO's other loss types (issue 23): name -> (options, logs instead of the clip ratios).
LOSS_TYPES = {
    "grpo-cispo": ({"loss_type": "cispo", "clip_epsilon_high": 5.0}, {"cispo_clip_ratio"}),
    "grpo-sapo": ({"loss_type": "sapo"}, set()),
    "grpo-luspo": ({"loss_type": "luspo", "importance_sampling_level": "sequence"}, None),
    "grpo-vespo": ({"loss_type": "vespo"}, {"vespo/phi_seq_mean"}),
}


@pytest.mark.parametrize("name", sorted(ALGORITHMS) + sorted(LOSS_TYPES))
def test_algorithm_raises_reward_and_logs_its_metrics(name):
    options, metrics = LOSS_TYPES.get(name, ({"num_epochs": 2} if name == "ppo" else {},
                                              None))
    agent = make_agent(name.split("-")[0], **options)
    history = agent.fit(toy_dataset(), epochs=15, verbose=0).history
    expected = EXPECTED_METRICS[name.split("-")[0]]
    if metrics is not None:     # no clip ratios (a soft gate or weight: no clip_fraction)
        expected = {m for m in expected if not m.startswith("clip_")} | metrics
        expected |= {"clip_fraction"} if name == "grpo-cispo" else set()
    assert set(history) == expected
    rewards = history["reward"]
    assert rewards[0] < 0.3                 # 1/8 of tokens are 5 by chance
    assert rewards[-1] > rewards[0] + 0.4, rewards


def flatten(gradients):
    return np.concatenate([tf.convert_to_tensor(g).numpy().ravel() for g in gradients])


def reward_for_exact_test(prompt_ids, completion_ids, completion_mask, batch):
    threes = tf.reduce_sum(tf.cast(tf.equal(completion_ids, 3), tf.float32), axis=1)
    return threes + tf.cast(tf.equal(completion_ids[:, 0], 4), tf.float32)


@pytest.mark.parametrize("name,options,repeats", [
    ("reinforce", {}, 4000),
    ("rloo", {"group_size": 4}, 1000),
    ("value", {"baseline": "value"}, 4000),
])
def test_sampled_gradient_matches_exact_policy_gradient(name, options, repeats):
    keras.utils.set_random_seed(0)
    policy = tfpg.PolicyNetwork(5, 8, 8)     # ids 2-4 (no pad, BOS), 3 tokens: 27 completions
    prompts = tf.constant([[1, 2], [0, 3]], tf.int32)
    _, exact = exact_policy_gradient(policy, prompts, reward_for_exact_test, 3)
    if name == "value":
        options = dict(options, value_model=tfpg.ValueNetwork(5, 8, 8))
    trainer = RLOO if name == "rloo" else REINFORCE
    agent = trainer(policy, reward_for_exact_test, max_new_tokens=3, eos_id=None, seed=1,
                    **options)
    gradients = agent.gradients({"prompt": tf.repeat(prompts, repeats, axis=0)})
    position = {id(v): i for i, v in enumerate(agent.trainable_variables)}
    estimate = -flatten([gradients[position[id(v)]] for v in policy.trainable_variables])
    exact = flatten(exact)
    cosine = estimate @ exact / np.linalg.norm(estimate) / np.linalg.norm(exact)
    assert cosine >= 0.99


@pytest.mark.parametrize("name", ["ppo", "grpo"])
def test_first_minibatch_has_ratio_one_and_zero_kl(name):
    agent = make_agent(name, num_epochs=1, kl_coef=0.1, eos_id=2)
    history = agent.fit(toy_dataset().take(1), epochs=1, verbose=0).history
    assert history["approx_kl"] == [0.0]        # log ratio exactly 0 on every token
    assert history["clip_fraction"] == [0.0]
    assert history["kl"] == [0.0]               # the policy still equals its reference


def test_later_ppo_epochs_move_the_ratio():
    agent = make_agent("ppo", num_epochs=4, num_minibatches=2)
    history = agent.fit(toy_dataset().take(1), epochs=1, verbose=0).history
    assert history["approx_kl"][0] > 0


def test_adaptive_kl_controller_moves_the_coefficient():
    agent = make_agent("ppo", kl_coef=0.2, target_kl=1e-6, kl_horizon=100, num_epochs=2,
                       kl_estimator="k3")
    agent.fit(toy_dataset(), epochs=3, verbose=0)
    # Step 1: KL is 0 (policy == reference), below target: x (1 - 0.2 * 16 / 100).
    # Steps 2-6: KL far above target: x (1 + 0.2 * 16 / 100) each, the clipped maximum.
    expected = 0.2 * (1 - 0.032) * (1 + 0.032) ** 5
    assert float(agent.kl_coef) == pytest.approx(expected, rel=1e-5)


def test_nan_reward_is_refused_by_default_and_skipped_on_request():
    def half_nan(prompt_ids, completion_ids, completion_mask, batch):
        rewards = count_fives(prompt_ids, completion_ids, completion_mask, batch)
        rows = tf.range(tf.shape(rewards)[0])
        return tf.where(rows % 2 == 0, rewards, float("nan"))

    keras.utils.set_random_seed(0)
    agent = REINFORCE(tfpg.PolicyNetwork(VOCAB, 8, 8), half_nan, max_new_tokens=3)
    agent.compile(optimizer="adam")
    with pytest.raises(Exception, match="nan"):
        agent.fit(toy_dataset(), epochs=1, verbose=0)

    agent = REINFORCE(tfpg.PolicyNetwork(VOCAB, 8, 8), half_nan, max_new_tokens=3,
                      on_invalid_reward="skip")
    agent.compile(optimizer="adam")
    history = agent.fit(toy_dataset(), epochs=1, verbose=0).history
    assert history["invalid_rewards"] == [8.0]
    assert all(np.isfinite(v.numpy()).all() for v in agent.trainable_variables)


def test_train_step_does_not_retrace_across_batches_and_epochs():
    agent = make_agent("rloo")
    traces = count_train_step_traces(agent)
    dataset = toy_dataset(batch_size=8)  # 4 batches of the same shape per epoch
    agent.fit(dataset, epochs=3, verbose=0)
    assert len(traces) == 1


def test_options_are_validated():
    policy = tfpg.PolicyNetwork(VOCAB, 8, 8)
    with pytest.raises(ValueError, match="value_model"):
        PPO(policy, count_fives)
    with pytest.raises(ValueError, match="group_size >= 2"):
        GRPO(policy, count_fives, group_size=1)
    with pytest.raises(ValueError, match="baseline must be one of"):
        REINFORCE(policy, count_fives, baseline="median")


# Under MirroredStrategy: the plain policy gradient with a moving-average baseline,
# a group trainer with KL and two epochs, and the critic's clipped multi-epoch step
# (SCST, RLOO and A2C share their code paths; `python tests/scripts/mirrored_step.py`
# runs all six).
MIRRORED = ["grpo", "ppo"]     # REINFORCE, SCST, RLOO and A2C share their paths


def test_one_step_under_mirrored_strategy_equals_single_device():
    script = os.path.join(os.path.dirname(__file__), "scripts", "mirrored_step.py")
    result = subprocess.run([sys.executable, script] + MIRRORED, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split() for line in result.stdout.splitlines()]
    assert sorted(row[0] for row in rows) == sorted(MIRRORED)
    for name, difference, update in rows:
        assert float(update) > 1e-3, name       # the step really changed the weights
        assert float(difference) <= 1e-5, name


def test_run_eagerly_takes_the_same_update_steps_as_the_graph():
    """Several update steps per rollout (a while loop in the graph) also run eagerly,
    to the same weights."""
    weights = []
    for eager in (False, True):
        agent = make_agent("ppo", num_epochs=2, num_minibatches=2)
        agent.compile(optimizer=keras.optimizers.Adam(1e-2), run_eagerly=eager)
        agent.fit(toy_dataset().take(1), epochs=1, verbose=0)
        weights.append(agent.policy.get_weights())
    for graph, eager in zip(*weights):
        np.testing.assert_allclose(graph, eager, atol=1e-5)


# ------------------------------------------------------------------ metrics names

def readme_metrics_table():
    """{first-column cell: [names in it]} of the metrics table of docs/algorithms.md."""
    with open(os.path.join(os.path.dirname(__file__), "..", "docs", "algorithms.md"),
              encoding="utf-8") as f:
        text = f.read()
    table = text[text.index("| log | what | logged by |"):].split("\n\n")[0]
    rows = [line.split(" | ")[0].lstrip("| ") for line in table.splitlines()[2:]]
    return {row: __import__("re").findall(r"`([^`]+)`", row) for row in rows}


def distill(policy, **options):
    return tfpg.algorithms.OnPolicyDistillation(policy, tfpg.PolicyNetwork(VOCAB, 16, 32),
                                                **options)


TOOL_TOKENIZER = tfpg.Tokenizer.from_texts(["<calc> 1 + 2 </calc> 3"], level="word")
# Each trainer and the options that change what it logs -> the logs, by hand.
LOGGED = [
    ("reinforce", {}, COMMON),
    ("reinforce", {"baseline": "value", "value_model": True}, COMMON | {"value_loss"}),
    ("scst", {"on_invalid_reward": "skip"}, COMMON | {"invalid_rewards"}),
    ("rloo", {"group_size": 2, "kl_coef": 0.1}, COMMON | {"zero_std_fraction", "kl"}),
    ("rloo", {"group_size": 2, "num_epochs": 2}, COMMON | {
        "zero_std_fraction", "clip_fraction", "approx_kl", "clip_ratio/low_mean",
        "clip_ratio/high_mean", "clip_ratio/region_mean"}),
    ("grpo", {"group_size": 2}, EXPECTED_METRICS["grpo"]),
    ("grpo", {"group_size": 2, "kl_coef": 0.0, "loss_type": "cispo", "entropy_coef": 0.01,
              "off_policy_mask_threshold": 0.5},
     COMMON | {"zero_std_fraction", "clip_fraction", "cispo_clip_ratio", "approx_kl",
               "entropy_coef", "off_policy_masked_fraction"}),
    ("grpo", {"group_size": 2, "kl_coef": 0.0, "loss_type": "vespo",
              "use_adaptive_entropy": True},
     COMMON | {"zero_std_fraction", "approx_kl", "vespo/phi_seq_mean", "entropy_coef"}),
    ("a2c", {"value_model": True}, COMMON | {"value_loss"}),
    ("ppo", {"value_model": True, "target_kl": 0.1}, EXPECTED_METRICS["ppo"] | {"kl_coef"}),
    ("distill", {}, COMMON - {"reward", "reward_std"} | {"teacher_kl"}),
    ("distill", {"reward_fn": count_fives}, COMMON | {"teacher_kl"}),
    ("reinforce", {"reward_fn": tfpg.rewards.WeightedSum(
        {"fives": (count_fives, 1.0), "long": (tfpg.rewards.Length(eos_id=None), 0.1)})},
     COMMON | {"reward/fives", "reward/long"}),
    ("ppo", {"value_model": True, "reward_fn": None, "max_turns": 2,
             "env": tfpg.envs.ToolEnv({"calc": tfpg.envs.calculator}, TOOL_TOKENIZER)},
     EXPECTED_METRICS["ppo"] | {"turns", "turn_length", "env_tokens", "env_time_fraction",
                                "tool_calls", "tool_errors"}),
]


def logged_names(name, options):
    options = dict(options)
    if options.pop("value_model", False):
        options["value_model"] = tfpg.ValueNetwork(VOCAB, 16, 32)
    policy = tfpg.PolicyNetwork(options.pop("vocab", VOCAB), 16, 32)
    if name == "distill":       # a task reward only where one is given
        agent = distill(policy, **options)
    else:
        agent = ALGORITHMS[name](policy, options.pop("reward_fn", count_fives),
                                 max_new_tokens=4, **options)
    return {metric.name for metric in agent.metrics}


def test_each_trainers_logs_are_the_readme_metrics_table():
    """What each trainer logs (its `metrics`, the keys `train_step` returns), by hand,
    and every name is a row of the metrics table of docs/algorithms.md; every row is logged by
    one of these trainers (no stale names)."""
    table = readme_metrics_table()
    documented = {name for names in table.values() for name in names}
    env_row = [row for row in table if "metric_names" in row][0]
    seen = set()
    for name, options, expected in LOGGED:
        if "env" in options:
            options = dict(options, vocab=TOOL_TOKENIZER.vocabulary_size)
        logged = logged_names(name, options)
        assert logged == expected, (name, options)
        components = {n for n in logged if n.startswith("reward/")}
        env_names = set(options["env"].metric_names) if "env" in options else set()
        undocumented = logged - documented - components - env_names
        assert not undocumented, (name, undocumented)
        seen |= logged - components - env_names
    assert documented - seen - {"reward/<name>", "metric_names", *table[env_row][1:]} == set()


class Mystery(REINFORCE):
    def loss_terms(self, minibatch, scores, values):
        terms, metrics = super().loss_terms(minibatch, scores, values)
        return terms, dict(metrics, mystery=scores.log_probs)


def test_a_computed_statistic_that_is_not_logged_is_refused():
    """A loss's statistic that is neither in `metric_names` nor declared unlogged
    fails the step, naming it (no statistic is computed and silently dropped)."""
    agent = Mystery(tfpg.PolicyNetwork(VOCAB, 16, 32), count_fives, max_new_tokens=3)
    agent.compile(optimizer="sgd")
    with pytest.raises(ValueError, match="computes 'mystery' but does not log it"):
        agent.train_step({"prompt": tf.constant([[1, 4], [1, 6]])})


def test_rollout_is_a_typed_structure_that_tf_nest_and_tf_function_carry():
    from tfpg.algorithms.rollout import Rollout
    env_tokens = tf.constant([[1.0, 0.0, 1.0]])               # a policy, env, policy row
    rollout = Rollout(scores=tf.constant([2.0]), completion_mask=tf.ones([1, 3]),
                      policy_mask=env_tokens, loss_mask=env_tokens * 0.0)
    assert rollout.keys() == ["completion_mask", "loss_mask", "scores", "policy_mask"]
    assert len(tf.nest.flatten(rollout)) == 4                  # None fields are no leaves
    doubled = tf.function(lambda r: tf.nest.map_structure(lambda x: 2 * x, r))(rollout)
    assert isinstance(doubled, Rollout) and doubled.kl is None
    assert float(doubled["scores"][0]) == 4.0 and "kl" not in doubled
    assert rollout.action_mask is env_tokens                   # the policy's tokens
    assert rollout.for_advantages().completion_mask is rollout.loss_mask
    with pytest.raises(KeyError, match="no field 'scroes'"):
        rollout.update({"scroes": tf.zeros([1])})
