"""Multi-turn episodes: the turn-level env protocol, ToolEnv, rollouts and trainers."""

import json
import re
import threading
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfpg
from tfpg.envs import multi_turn
from tfpg.data import pad_ids
from tfpg.text.tokenizer import SPECIAL_TOKENS
from tfpg.text import Tokenizer
from tfpg.envs.tool_env import ToolEnv, calculator, run_calls
from tfpg.envs.turn_env import TurnEnv

WORDS = ["go", "x", ";", "ok", "y", "a", "b", "c", "say", "<calc>", "</calc>", "12*3",
         "1/0", "error:", "timeout", "36"]
TOK = Tokenizer(list(SPECIAL_TOKENS) + WORDS, level="word")
ID = {word: TOK.token_to_id(word) for word in WORDS}


class BigramPolicy(tfpg.models.Policy):
    """A trainable bigram model: the next-token logits are a row of `w` chosen by the
    last token, so scripted tables make greedy decoding follow a script."""

    def __init__(self, vocab_size, table=None, probe_shape=None, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.table = dict(table or {})
        self.probe_shape = probe_shape
        self.seed = seed

    def build(self, input_shape=None):
        initial = np.zeros([self.vocab_size] * 2, np.float32)
        if self.seed is not None:
            initial += np.random.default_rng(self.seed).normal(size=initial.shape)
        for token, following in self.table.items():
            initial[token, following] = 30.0
        self.w = self.add_weight(shape=initial.shape, name="w",
                                 initializer=keras.initializers.Constant(initial))
        # A zero bias per (row, position) added to the training logits: its gradient
        # is the gradient of the loss w.r.t. those logits.
        self.delta = None
        if self.probe_shape is not None:
            self.delta = self.add_weight(shape=[*self.probe_shape, self.vocab_size],
                                         initializer="zeros", name="delta")
        self.built = True

    def call(self, token_ids, padding_mask=None, training=None):
        logits = tf.gather(self.w, token_ids)
        if self.delta is not None:
            shape = tf.shape(token_ids)
            logits += self.delta[:shape[0], :shape[1]]
        return logits

    def initial_cache(self, batch_size, max_length):
        if not self.built:
            self.build()
        return tf.zeros([batch_size])

    def call_with_cache(self, token_ids, cache, index, padding_mask=None, training=None,
                        last_only=False, in_place=False):
        logits = tf.gather(self.w, token_ids)
        return logits, logits, cache

    def get_config(self):
        return {"vocab_size": self.vocab_size, "table": self.table,
                "probe_shape": self.probe_shape, "seed": self.seed}


class ScriptedEnv(TurnEnv):
    """Row 0 gets "ok" after turn 1 and reward 1 after turn 2; row 1 is done after
    turn 1 with reward 0.5."""

    def respond(self, rows, completions):
        self.seen = getattr(self, "seen", []) + [(rows.tolist(), list(completions))]
        turns = self.turns[rows]
        done = (rows == 1) | (turns == 1)
        rewards = np.where(rows == 1, 0.5, np.where(turns == 1, 1.0, 0.0))
        return ["ok"] * len(rows), rewards, done


def prompts(*texts):
    ids, mask = pad_ids([TOK.encode(t) for t in texts], "left", 0)
    return {"prompt": ids, "prompt_mask": mask}


SCRIPT = {ID["go"]: ID["x"], ID["x"]: ID[";"], ID[";"]: ID["a"], ID["ok"]: ID["y"],
          ID["y"]: ID[";"]}


def test_scripted_trajectories_and_masks_equal_hand_built_ones():
    env = ScriptedEnv(TOK, turn_end=";")
    episodes = multi_turn.rollout_episodes(BigramPolicy(TOK.vocabulary_size, SCRIPT), env,
                                           prompts("go", "ok"), max_turns=3,
                                           max_new_tokens=4, sampler="greedy")
    go, x, end, ok, y = (ID[w] for w in ("go", "x", ";", "ok", "y"))
    np.testing.assert_array_equal(episodes.prompt_ids, [[1, go], [1, ok]])
    # Row 0: turn "x ;", reply "ok", turn "y ;". Row 1 ends after its first turn.
    np.testing.assert_array_equal(episodes.completion_ids,
                                  [[x, end, ok, y, end], [y, end, 0, 0, 0]])
    np.testing.assert_array_equal(episodes.completion_mask, [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    np.testing.assert_array_equal(episodes.policy_mask, [[1, 1, 0, 1, 1], [1, 1, 0, 0, 0]])
    np.testing.assert_array_equal(episodes.loss_mask,
                                  [[0, 0, 1, 1, 0, 1, 1], [0, 0, 1, 1, 0, 0, 0]])
    np.testing.assert_array_equal(episodes.token_ids[0], [1, go, x, end, ok, y, end])
    np.testing.assert_allclose(episodes.token_rewards, [[0, 0, 0, 0, 1], [0, 0.5, 0, 0, 0]])
    np.testing.assert_allclose(episodes.rewards, [1.0, 0.5])
    np.testing.assert_array_equal(episodes.turns, [2, 1])
    np.testing.assert_array_equal(episodes.done, [True, True])
    # One env call per turn for all unfinished rows, with the decoded turns.
    assert env.seen == [([0, 1], ["x ;", "y ;"]), ([0], ["y ;"])]
    # Greedy with a 30-logit margin: log-probs ~0 on policy tokens, exactly 0 elsewhere.
    assert np.all(episodes.log_probs[episodes.policy_mask == 0] == 0)
    assert np.all(np.abs(episodes.log_probs[episodes.policy_mask == 1]) < 1e-6)
    assert episodes.render(TOK, 0) == "go | x ; [ok] y ;"


def test_turn_budget_max_turns_and_eos_end_turns():
    # "go" -> "x" -> "x" ...: no turn end, so each turn is cut at the budget; EOS
    # (after "a") ends a turn although the turn-end token is ";".
    table = {ID["go"]: ID["x"], ID["x"]: ID["x"], ID["ok"]: ID["a"], ID["a"]: 2,
             2: ID["b"]}

    class Never(TurnEnv):
        def respond(self, rows, completions):
            return ["ok"] * len(rows), np.zeros(len(rows)), np.zeros(len(rows), bool)

    episodes = multi_turn.rollout_episodes(BigramPolicy(TOK.vocabulary_size, table),
                                           Never(TOK, turn_end=";"), prompts("go"),
                                           max_turns=2, max_new_tokens=3, sampler="greedy")
    x, ok, a = ID["x"], ID["ok"], ID["a"]
    np.testing.assert_array_equal(episodes.completion_ids, [[x, x, x, ok, a, 2]])
    np.testing.assert_array_equal(episodes.policy_mask, [[1, 1, 1, 0, 1, 1]])
    np.testing.assert_array_equal(episodes.done, [False])     # cut by max_turns
    np.testing.assert_array_equal(episodes.turns, [2])


def test_trajectories_never_outgrow_a_position_table():
    class Positional(BigramPolicy):
        is_positional, max_length = True, 7

    class Chatty(TurnEnv):
        def respond(self, rows, completions):
            return ["ok ok ok"] * len(rows), np.zeros(len(rows)), np.zeros(len(rows), bool)

    # "say" -> "x" -> "x" ...: turns of 3 tokens, replies of 3, prompts of 2 and 4.
    table = {ID["say"]: ID["x"], ID["x"]: ID["x"], ID["ok"]: ID["x"], ID["a"]: ID["x"]}
    episodes = multi_turn.rollout_episodes(Positional(TOK.vocabulary_size, table),
                                           Chatty(TOK), prompts("say", "say a a"),
                                           max_turns=4, max_new_tokens=3, sampler="greedy")
    lengths = episodes.prompt_mask.sum(axis=1) + episodes.completion_mask.sum(axis=1)
    np.testing.assert_array_equal(lengths, [7, 7])
    x, ok = ID["x"], ID["ok"]
    # Row 0: BOS say | x x x, ok ok (cut to fit). Row 1 (4 prompt tokens): its
    # turn is cut at the 3 tokens left by the longer context.
    np.testing.assert_array_equal(episodes.completion_ids[0], [x, x, x, ok, ok])
    np.testing.assert_array_equal(episodes.policy_mask, [[1, 1, 1, 0, 0], [1, 1, 1, 0, 0]])
    np.testing.assert_array_equal(episodes.done, [False, False])


def test_env_protocol_validates_its_calls():
    env = ScriptedEnv(TOK)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(["x"])
    env.reset(prompts("go", "ok"))
    with pytest.raises(ValueError, match="2 unfinished rows"):
        env.step(["x"])
    env.step(["x", "y"])
    assert env.unfinished.tolist() == [0]
    with pytest.raises(ValueError, match="already done"):
        env.step(["y"], rows=[1])
    with pytest.raises(ValueError, match="one token"):
        TurnEnv(TOK, turn_end="no such")


def calc_env(**options):
    tools = {"calc": calculator, "boom": lambda a: 1 / 0, "hang": lambda a: time.sleep(30),
             "junk": lambda a: Garbage(), "long": lambda a: "9" * 1000}
    return ToolEnv(tools, TOK, reward_fn=lambda answers, batch: [len(a) for a in answers],
                   timeout=0.3, **options)


class Garbage:
    def __str__(self):
        raise RuntimeError("cannot print")


def test_tool_env_runs_tools_and_turns_failures_into_error_observations():
    env = calc_env()
    env.reset(prompts(*["go"] * 7))
    started = time.perf_counter()
    observations, rewards, dones = env.step([
        "<calc> 12*3 </calc>", "<boom> 1 </boom>", "<hang> 1 </hang>", "<junk> 1 </junk>",
        "<calc> 12*3", "<nope> 1 </nope>", "36"])
    elapsed = time.perf_counter() - started
    assert elapsed < 2.0                     # the hanging tool was abandoned at 0.3 s
    assert observations == ["36", "error: ZeroDivisionError", "error: timeout",
                            "error: output", "error: no </calc>", "error: unknown tool nope",
                            ""]
    np.testing.assert_array_equal(dones, [0, 0, 0, 0, 0, 0, 1])
    np.testing.assert_allclose(rewards, [0, 0, 0, 0, 0, 0, 2])     # len("36")
    assert env.answers[6] == "36" and env.answers[0] is None
    metrics = env.episode_metrics()
    np.testing.assert_array_equal(metrics["tool_calls"], [1, 1, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(metrics["tool_errors"], [0, 1, 1, 1, 1, 1, 0])
    env.reset(prompts("go"))
    observations, _, _ = env.step(["<long> 1 </long>"])
    assert observations == ["9" * 64]


def test_run_calls_waits_for_the_timeout_in_all_not_per_call():
    release = threading.Event()
    started = time.perf_counter()
    results = run_calls([(lambda a: release.wait(5), None)] * 4 + [(str, 7)], timeout=0.2)
    assert time.perf_counter() - started < 1.0
    assert results == [(False, "timeout")] * 4 + [(True, "7")]
    # The 4 workers still stuck are replaced: later calls run at once.
    started = time.perf_counter()
    assert run_calls([(str, i) for i in range(8)], timeout=2.0) == \
        [(True, str(i)) for i in range(8)]
    assert time.perf_counter() - started < 1.0
    release.set()


def test_calculator_refuses_anything_but_integer_arithmetic():
    assert calculator("417*38") == 15846
    for bad in ("__import__('os')", "2**999", "x+1", "1.5*2", "9" * 40 + "*9"):
        with pytest.raises((ValueError, SyntaxError)):
            calculator(bad)


# --- trainers --------------------------------------------------------------------------

def with_env(algorithm, policy, env, max_turns, **options):
    return algorithm(policy, None, env=env, max_turns=max_turns, **options)


@pytest.mark.parametrize("algorithm", ["GRPO", "PPO"])
def test_loss_gradient_is_exactly_zero_at_environment_tokens(algorithm):
    rows, width = 4, 24
    policy = BigramPolicy(TOK.vocabulary_size, probe_shape=[rows, width], seed=0)
    options = dict(max_new_tokens=3, entropy_coef=0.1, kl_coef=0.1, seed=3)
    if algorithm == "PPO":
        options["value_model"] = tfpg.ValueNetwork(TOK.vocabulary_size, 8, 8)
    else:
        options["group_size"] = 2
    trainer = with_env(getattr(tfpg.algorithms, algorithm), policy,
                       ScriptedEnv(TOK, turn_end=";"), max_turns=3, **options)
    batch = prompts("go", "ok") if algorithm == "GRPO" else prompts("go", "ok", "go", "ok")
    trainer.compile(optimizer="sgd")
    rollout, batch = trainer.collect_rollout(batch)
    episodes = trainer.last_episodes
    grads = trainer.rollout_gradients(rollout, batch)
    probe = [g for g, v in zip(grads, trainer.trainable_variables) if v is policy.delta][0]
    probe = tf.convert_to_tensor(probe).numpy()                          # [rows, width, V]
    start = episodes.prompt_ids.shape[1] - 1      # the logits that predict completion 0
    n = episodes.completion_ids.shape[1]
    predicts_action = np.zeros([rows, width], bool)
    predicts_action[:, start:start + n] = episodes.policy_mask > 0
    assert np.all(probe[~predicts_action] == 0.0)                        # exactly
    assert np.all(np.abs(probe[predicts_action]).sum(axis=-1) > 0)
    # Row 1 ended after its first turn: no env tokens, nothing after its turn. The
    # others have one "ok" reply between two turns.
    assert episodes.turns.tolist() == [2, 1, 2, 2]
    np.testing.assert_array_equal(episodes.policy_mask[1], episodes.completion_mask[1])
    assert 1 <= episodes.policy_mask[1].sum() <= 3
    env_tokens = episodes.completion_mask - episodes.policy_mask
    assert env_tokens.sum(axis=1).tolist() == [1, 0, 1, 1]
    np.testing.assert_array_equal(rollout["loss_mask"], episodes.policy_mask)


WORDS3 = ["a", "b", "c"]


class EchoEnv(TurnEnv):
    """Three turns: say the word the last observation names ("say a" -> "a"), 1/3 each."""

    def start(self, batch):
        self.words = [self.tokenizer.decode(row[-1:]) for row in batch["prompt"]]
        return super().start(batch)

    def respond(self, rows, completions):
        rewards, replies = [], []
        for row, text in zip(rows, completions):
            rewards.append(float(text.split()[:1] == [self.words[row]]) / 3)
            self.words[row] = WORDS3[(WORDS3.index(self.words[row]) + 1) % 3]
            replies.append(f"say {self.words[row]}")
        return replies, rewards, self.turns[rows] + 1 >= 3


@pytest.mark.parametrize("algorithm", ["GRPO", "PPO"])
def test_grpo_and_ppo_raise_the_reward_of_a_multi_turn_toy(algorithm):
    keras.utils.set_random_seed(0)
    policy = tfpg.PolicyNetwork(TOK.vocabulary_size, 16, 32)
    options = dict(max_new_tokens=2, kl_coef=0.0, seed=0)
    if algorithm == "PPO":
        options.update(value_model=tfpg.ValueNetwork(TOK.vocabulary_size, 16, 32),
                       num_epochs=2)
    else:
        options["group_size"] = 4
    trainer = with_env(getattr(tfpg.algorithms, algorithm), policy, EchoEnv(TOK),
                       max_turns=3, **options)
    trainer.compile(optimizer=keras.optimizers.Adam(3e-2))
    say = ID["say"]
    prompt = np.array([[1, say, ID[WORDS3[i % 3]]] for i in range(8)], np.int32)
    dataset = tf.data.Dataset.from_tensors({"prompt": prompt}).repeat(24)
    history = trainer.fit(dataset, epochs=1, verbose=0, callbacks=[RewardPerStep()])
    rewards = RewardPerStep.rewards
    assert np.mean(rewards[-4:]) > np.mean(rewards[:4]) + 0.25, rewards
    for name in ("turns", "env_tokens", "turn_length", "env_time_fraction"):
        assert name in history.history
    assert trainer.last_episodes.turns.tolist() == [3] * len(trainer.last_episodes.turns)


@pytest.mark.parametrize("backbone", ["lstm", "transformer"])
def test_trajectory_scoring_reproduces_the_sampled_log_probs(backbone):
    # The update scores whole trajectories in one pass (first observation left-padded,
    # turns and replies right-padded); that must give the log-probs each turn's own
    # generation sampled with (left-padded contexts), so the first PPO ratio is 1.
    keras.utils.set_random_seed(0)
    policy = tfpg.PolicyNetwork(TOK.vocabulary_size, 16, 16, backbone=backbone,
                                num_heads=2, max_length=64)
    trainer = with_env(tfpg.algorithms.PPO, policy, EchoEnv(TOK), max_turns=3,
                       max_new_tokens=3, top_k=6, kl_coef=0.0, seed=1,
                       value_model=tfpg.ValueNetwork(TOK.vocabulary_size, 8, 8))
    trainer.compile(optimizer="sgd")
    rollout, _ = trainer.collect_rollout(prompts("say a", "say b c", "say c a b"))
    episodes = trainer.last_episodes
    mask = episodes.policy_mask > 0
    assert mask.sum() > 10 and (episodes.completion_mask > episodes.policy_mask).any()
    np.testing.assert_allclose(rollout["old_log_probs"].numpy()[mask],
                               episodes.log_probs[mask], atol=2e-5)
    assert np.all(rollout["old_log_probs"].numpy()[~mask] == 0)


@pytest.mark.parametrize("algorithm, options", [
    ("REINFORCE", {"baseline": "moving_average"}), ("REINFORCE", {"baseline": "value"}),
    ("A2C", {}), ("RLOO", {"group_size": 2, "num_epochs": 2, "top_k": 5})])
def test_every_algorithm_takes_a_multi_turn_step(algorithm, options):
    policy = BigramPolicy(TOK.vocabulary_size, seed=0)
    if algorithm == "A2C" or options.get("baseline") == "value":
        options = dict(options, value_model=tfpg.ValueNetwork(TOK.vocabulary_size, 8, 8))
    trainer = with_env(getattr(tfpg.algorithms, algorithm), policy, EchoEnv(TOK),
                       max_turns=3, max_new_tokens=2, kl_coef=0.1, entropy_coef=0.01,
                       **options)
    trainer.compile(optimizer=keras.optimizers.SGD(0.1))
    before = policy.w.numpy().copy()
    batch = {"prompt": tf.constant([[1, ID["say"], ID[w]] for w in WORDS3])}
    logs = {k: float(v) for k, v in trainer.train_step(batch).items()}
    assert all(np.isfinite(v) for v in logs.values()), logs
    assert logs["turns"] == 3.0 and logs["env_tokens"] == 4.0     # 2 replies of 2 words
    assert not np.allclose(policy.w.numpy(), before)


def mixed_precision_ppo(policy_name, env, weights=None):
    """A multi-turn PPO (one epoch) built under the dtype policy `policy_name`,
    SGD(0.5) (a LossScaleOptimizer under mixed_float16), with `weights`."""
    keras.mixed_precision.set_global_policy(policy_name)
    try:
        keras.utils.set_random_seed(0)
        trainer = with_env(tfpg.algorithms.PPO, tfpg.PolicyNetwork(TOK.vocabulary_size, 16, 32),
                           env, max_turns=2, max_new_tokens=2, num_epochs=1, kl_coef=0.05,
                           value_model=tfpg.ValueNetwork(TOK.vocabulary_size, 16, 32))
        trainer.compile(optimizer=keras.optimizers.SGD(0.5))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    for variable, value in zip(trainer.trainable_variables, weights or ()):
        variable.assign(value)
    return trainer


def test_a_mixed_float16_multi_turn_step_equals_the_float32_step():
    """Under mixed_float16 the loss is scaled (2^15 at first): the multi-turn path
    must unscale the gradients as the single-turn one does (it did not: they came
    out 32768 times too large). Both trainers score the same episodes."""
    reference = mixed_precision_ppo("float32", EchoEnv(TOK))
    weights = [v.numpy() for v in reference.trainable_variables]
    half = mixed_precision_ppo("mixed_float16", EchoEnv(TOK), weights)
    assert isinstance(half.optimizer, keras.optimizers.LossScaleOptimizer)
    assert half.policy.dtype_policy.name == "mixed_float16"
    batch = {"prompt": np.array([[1, ID["say"], ID[w]] for w in WORDS3], np.int32)}
    fixed = reference.sample_episodes(batch)           # one draw of episodes for both
    for trainer in (reference, half):
        object.__setattr__(trainer, "sample_episodes", lambda batch, seed=None: fixed)

    def close(got, want):
        got, want = (np.concatenate([tf.convert_to_tensor(g).numpy().ravel() for g in x])
                     for x in (got, want))
        scale = np.abs(want).max()
        assert scale > 1e-3 and np.abs(got - want).max() <= 2e-2 * scale, \
            (np.abs(got - want).max(), scale)

    # The step's gradients (`apply_gradients` then treats both alike: tested in
    # test_distributed.py, clipping under loss scaling).
    close(half.gradients(batch), reference.gradients(batch))


class RewardPerStep(keras.callbacks.Callback):
    rewards = []

    def on_train_begin(self, logs=None):
        type(self).rewards = []

    def on_train_batch_end(self, batch, logs=None):
        # Keras averages logs over the epoch; the trainer's last rollout is this step's.
        self.rewards.append(float(tf.reduce_mean(self.model.last_rollout["scores"])))


def test_failing_tools_give_error_observations_and_training_goes_on(tmp_path):
    tools = {"calc": lambda a: 1 / 0, "hang": lambda a: time.sleep(30)}
    # The policy writes "<calc> 12*3 </calc>" and ends the turn at "</calc>".
    table = {ID["go"]: ID["<calc>"], ID["<calc>"]: ID["12*3"], ID["12*3"]: ID["</calc>"],
             ID["error:"]: ID["36"], ID["36"]: 2}
    env = ToolEnv(tools, TOK, reward_fn=lambda answers, batch: [1.0] * len(answers),
                  turn_end="</calc>", timeout=0.2, error_format="error:")
    trainer = with_env(tfpg.algorithms.RLOO, BigramPolicy(TOK.vocabulary_size, table),
                       env, max_turns=3, group_size=2, max_new_tokens=4, sampler="greedy")
    trainer.compile(optimizer="sgd")
    samples = tfpg.callbacks.SampleLogger(str(tmp_path), TOK)
    logs = trainer.fit(tf.data.Dataset.from_tensors(prompts("go", "go")).repeat(2),
                       verbose=0, callbacks=[samples]).history
    assert logs["tool_calls"][-1] == 1.0 and logs["tool_errors"][-1] == 1.0
    episodes = trainer.last_episodes
    assert episodes.render(TOK, 0) == "go | <calc> 12*3 </calc> [error:] 36"
    np.testing.assert_allclose(episodes.rewards, [1.0] * 4)
    # Sample tables show whole episodes (one per distinct prompt).
    with open(tmp_path / "samples" / "samples.jsonl") as f:
        record = json.loads(f.readline())
    assert (record["prompt"], record["completion"], record["reward"]) == \
        ("go", "<calc> 12*3 </calc> [error:] 36", 1.0)


class NanEnv(TurnEnv):
    """One turn; row 1's reward is NaN."""

    def respond(self, rows, completions):
        rewards = np.where(rows == 1, np.nan, 1.0)
        return [""] * len(rows), rewards, np.ones(len(rows), bool)


def test_non_finite_env_rewards_raise_or_are_skipped():
    batch = prompts("go", "ok", "go")
    trainer = with_env(tfpg.algorithms.REINFORCE, BigramPolicy(TOK.vocabulary_size, SCRIPT),
                       NanEnv(TOK), max_turns=2, max_new_tokens=2)
    trainer.compile(optimizer="sgd")
    with pytest.raises(ValueError, match=r"non-finite rewards in rows \[1\]"):
        trainer.train_step(batch)
    trainer = with_env(tfpg.algorithms.REINFORCE, BigramPolicy(TOK.vocabulary_size, SCRIPT),
                       NanEnv(TOK), max_turns=2, max_new_tokens=2, on_invalid_reward="skip")
    trainer.compile(optimizer="sgd")
    logs = trainer.train_step(batch)
    assert float(logs["invalid_rewards"]) == 1.0 and float(logs["reward"]) == 1.0
    np.testing.assert_array_equal(trainer.last_rollout["completion_mask"].numpy().sum(axis=1),
                                  [2, 0, 2])


def test_trainer_env_options_are_checked_in_one_line():
    policy = BigramPolicy(TOK.vocabulary_size)
    env = ScriptedEnv(TOK)
    with pytest.raises(ValueError, match="reward_fn=None"):
        tfpg.algorithms.RLOO(policy, lambda *a: tf.zeros([1]), env=env)
    with pytest.raises(ValueError, match="pass env= too"):
        tfpg.algorithms.RLOO(policy, lambda *a: tf.zeros([1]), max_turns=2)
    with pytest.raises(ValueError, match="max_turns must be a positive int"):
        tfpg.algorithms.RLOO(policy, None, env=env, max_turns=0)
    with pytest.raises(TypeError, match="TurnEnv"):
        tfpg.algorithms.RLOO(policy, None, env=object())
    with pytest.raises(ValueError, match="SCST does not run multi-turn episodes"):
        tfpg.algorithms.SCST(policy, None, env=env)
    trainer = tfpg.algorithms.RLOO(policy, None, env=env)
    assert trainer.max_turns == 4
    with pytest.raises(ValueError, match="jit_compile=True"):
        trainer.compile(optimizer="sgd", jit_compile=True)


# --- text episodes (an export's generate) ------------------------------------------

def test_text_episodes_of_an_export_equal_the_in_graph_rollout(tmp_path):
    keras.utils.set_random_seed(1)
    policy = tfpg.PolicyNetwork(TOK.vocabulary_size, 8, 8)
    path = tfpg.export_saved_model(policy, TOK, str(tmp_path / "export"), max_new_tokens=3)
    batch = prompts("say a", "say b", "say c")
    episodes = multi_turn.rollout_episodes(policy, EchoEnv(TOK, turn_end=";"), batch,
                                           max_turns=3, max_new_tokens=3, sampler="greedy")
    played = tfpg.load(path).run_episodes(EchoEnv(TOK, turn_end=";"),
                                          ["say a", "say b", "say c"], max_turns=3,
                                          max_new_tokens=3)
    for row, episode in enumerate(played):
        expected = [(role, TOK.decode(np.asarray(ids, np.int32)))
                    for role, ids in episodes.segments[row][1:]]
        assert episode["turns"] == expected
        assert episode["reward"] == pytest.approx(episodes.rewards[row])
        assert episode["done"] == episodes.done[row]


def test_play_text_episodes_cuts_turns_and_runs_tools():
    tokenizer = Tokenizer.from_texts(["0123456789*=calc()\n error"], level="char")
    env = ToolEnv({"calc": calculator}, tokenizer, turn_end=")", open_tag="{name}(",
                  close_tag=")", result_format="={output}\n",
                  reward_fn=lambda answers, batch: [float(a == "36") for a in answers])
    calls = []

    def generate(contexts, max_new_tokens):
        calls.append(list(contexts))
        return ["36" if context.endswith("\n") else "calc(12*3)99" for context in contexts]

    played = multi_turn.play_text_episodes(generate, env, ["12*3="], max_turns=3,
                                           max_new_tokens=12)
    assert played == [{"prompt": "12*3=", "done": True, "reward": 1.0, "turns": [
        ("policy", "calc(12*3)"), ("env", "=36\n"), ("policy", "36")]}]
    assert calls == [["12*3="], ["12*3=calc(12*3)=36\n"]]


# --- bundled multi-turn tasks ---------------------------------------------------------

from tfpg.tasks import CalculatorTask, GuessTask  # noqa: E402
from tfpg.tasks.guess import feedback  # noqa: E402


def test_calculator_task_data_teacher_and_env_agree():
    task = CalculatorTask(seed=0, num_train=300, num_heldout=100, num_pretrain=2000)
    again = CalculatorTask(seed=0, num_train=300, num_heldout=100, num_pretrain=2000)
    assert task.pretrain_texts == again.pretrain_texts and task.train == again.train
    assert CalculatorTask(seed=1, num_pretrain=10).pretrain_texts != task.pretrain_texts[:10]
    taught = {text[:text.index("=") + 1] for text in task.pretrain_texts}
    assert not set(task.heldout.prompts) & (taught | set(task.train.prompts))
    rate = np.mean(["calc(" in text for text in task.pretrain_texts])
    assert 0.25 < rate < 0.35                               # tool_rate=0.3
    # The teacher is right when it calls the tool, and rarely otherwise.
    metrics = task.evaluate([t[:t.index("=") + 1] for t in task.pretrain_texts],
                            [t[t.index("=") + 1:] for t in task.pretrain_texts])
    assert metrics["tool_call_rate"] == metrics["calls_per_episode"] == rate
    assert rate < metrics["accuracy"] < rate + 0.1
    # Played against the env, the teacher's turns give the teacher's text back.
    tokenizer = task.tokenizer()
    env = task.env(tokenizer)
    a, b = 417, 38
    env.reset({"prompt": [tokenizer.encode(f"{a}*{b}=")],
               "answer": np.array([b"15846"])})
    observations, rewards, dones = env.step(["calc(417*38)"])
    assert (observations, rewards.tolist(), dones.tolist()) == (["=15846\n"], [0.0], [False])
    _, rewards, dones = env.step(["15846"])
    assert (rewards.tolist(), dones.tolist()) == ([1.0], [True])
    assert f"{a}*{b}=" + "calc(417*38)" + observations[0] + "15846" == task.teacher(a, b, True)


def test_guess_task_teacher_and_env_agree():
    task = GuessTask(seed=0, num_train=50, num_heldout=50, num_pretrain=500)
    assert task.pretrain_texts == GuessTask(seed=0, num_train=50, num_heldout=50,
                                            num_pretrain=500).pretrain_texts
    assert (feedback("3", 7), feedback("9", 7), feedback("7", 7), feedback("?", 7)) == \
        ("higher", "lower", None, "no")
    # The teacher guesses at random among the numbers still possible: it mostly finds
    # the number within 8 turns, but takes more turns than halving would (~3.4).
    episodes = [text[len(task.prompt):] for text in task.pretrain_texts]
    assert np.mean([text.endswith("?") for text in episodes]) > 0.9
    assert np.mean([len(task.guesses(text)) for text in episodes]) > 4.0
    tokenizer = task.tokenizer()
    env = task.env(tokenizer)
    env.reset({"prompt": [tokenizer.encode(task.prompt)] * 2, "target": np.array([5, 16])})
    observations, rewards, dones = env.step(["8 ?", "16 ?"])
    assert observations[0] == "lower" and dones.tolist() == [False, True]
    np.testing.assert_allclose(rewards, [0.0, 1.0])         # found at the first turn
    assert env.step(["4 ?"])[0] == ["higher"]
    _, rewards, dones = env.step(["5 ?"])
    np.testing.assert_allclose(rewards, [(8 - 3 + 1) / 8])  # found at the third turn
    np.testing.assert_array_equal(env.turns, [3, 1])
    # Evaluation reads turns as the rollout lays them out: "8 8" is a whole turn
    # (2 tokens, no "?"), "no" the reply.
    task.heldout = tfpg.tasks.Split([task.prompt] * 2, ["5", "1"], {"target": [5, 1]})
    assert task.guesses("8 8 no 3 ?") == ["8", "3"]
    assert task.evaluate(task.heldout.prompts, ["8 ? lower 4 ? higher 5 ?", "8 8 no 3 ?"]) \
        == {"success_rate": 0.5, "mean_turns": 5.5}


def test_episode_task_run_episodes_plays_the_split_against_its_env():
    task = GuessTask(seed=0, num_train=4, num_heldout=40, num_pretrain=4)
    tokenizer = task.tokenizer()
    ids = {w: tokenizer.token_to_id(w) for w in (":", "8", "?", "higher", "lower")}
    # Always "8 ?": found at once when the number is 8, never otherwise.
    table = {ids[":"]: ids["8"], ids["8"]: ids["?"], ids["higher"]: ids["8"],
             ids["lower"]: ids["8"]}
    metrics, texts = task.run_episodes(BigramPolicy(tokenizer.vocabulary_size, table),
                                       tokenizer, "heldout", batch_size=16)
    eights = np.mean(np.asarray(task.heldout.extras["target"]) == 8)
    assert 0 < eights < 1
    assert metrics == pytest.approx({"success_rate": eights,
                                     "mean_turns": eights + 8 * (1 - eights),
                                     "reward": eights})
    assert len(texts) == 40 and texts[0].startswith("8 ?")


# --- the command line ------------------------------------------------------------------

def test_tfpg_train_and_evaluate_run_a_multi_turn_task(tmp_path):
    import subprocess
    import sys
    command = [sys.executable, "-m", "tfpg.run.cli"]
    train = command + ["train", "--task", "guess", "--algorithm", "grpo",
                       "--pretrain-epochs", "2", "--epochs", "1", "--steps-per-epoch", "2",
                       "--output", "model", "--logdir", "logs"]
    result = subprocess.run(train, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "model" / "metrics.json").read_text())
    assert {"success_rate", "mean_turns", "reward"} <= set(metrics["after"])
    # TensorBoard / CSV get the per-turn statistics; sample tables whole episodes.
    header = (tmp_path / "logs" / "rewards.csv").read_text().splitlines()[0]
    assert all(name in header for name in ("turns", "turn_length", "env_tokens", "success"))
    samples = (tmp_path / "logs" / "samples" / "epoch_0001.md").read_text()
    assert re.search(r"\| guess 1 to 16 : \| \d+ \? (\[(higher|lower)\] \d+ \? )*", samples)
    # The export plays the same episodes with its single-turn generate and the env.
    result = subprocess.run(command + ["evaluate", "model"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    evaluated = json.loads(result.stdout[result.stdout.index("{"):])
    assert evaluated == pytest.approx({k: metrics["after"][k]
                                       for k in ("success_rate", "mean_turns")})
