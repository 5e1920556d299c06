"""Multi-turn episodes: the turn-level env protocol, ToolEnv, rollouts and trainers."""

import threading
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfpg
from tfpg import multi_turn
from tfpg.text import SPECIAL_TOKENS, Tokenizer
from tfpg.tool_env import ToolEnv, calculator, run_calls
from tfpg.turn_env import TurnEnv

WORDS = ["go", "x", ";", "ok", "y", "a", "b", "c", "say", "<calc>", "</calc>", "12*3",
         "1/0", "error:", "timeout", "36"]
TOK = Tokenizer(list(SPECIAL_TOKENS) + WORDS, level="word")
ID = {word: TOK.token_to_id(word) for word in WORDS}


class BigramPolicy(keras.Model):
    """A trainable bigram model: the next-token logits are a row of `w` chosen by the
    last token, so scripted tables make greedy decoding follow a script."""

    pad_id, bos_id, eos_id, structural_ids = 0, 1, 2, (0, 1)

    def __init__(self, vocab_size, table=None, probe_shape=None, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.table = dict(table or {})
        self.probe_shape = probe_shape

    def build(self, input_shape=None):
        initial = np.zeros([self.vocab_size] * 2, np.float32)
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

    def call_with_cache(self, token_ids, cache, index, padding_mask=None, training=None):
        logits = tf.gather(self.w, token_ids)
        return logits, logits, cache

    def get_config(self):
        return {"vocab_size": self.vocab_size, "table": self.table,
                "probe_shape": self.probe_shape}


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
    ids, mask = multi_turn._left_padded([TOK.encode(t) for t in texts], 0)
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
    release.set()


def test_calculator_refuses_anything_but_integer_arithmetic():
    assert calculator("417*38") == 15846
    for bad in ("__import__('os')", "2**999", "x+1", "1.5*2", "9" * 40 + "*9"):
        with pytest.raises((ValueError, SyntaxError)):
            calculator(bad)


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
