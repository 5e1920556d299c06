"""Bounds and values (issue 22, items 4 and 5): every numeric option out of its range,
a decode too big for its model or for memory, a huge prompt line, a deeply nested
JSON line and a reward that hangs or returns no numbers are refused in one line,
before anything is allocated or trained: `ValueError` in the API, exit 2 with one
line on stderr and nothing written on the command line (`tfpg.guards.bounds`)."""

import os
import sys
import threading
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfpg
from tfpg.guards import bounds
from tfpg.algorithms import A2C, GRPO, PPO, REINFORCE, RLOO, SCST
from tfpg.data import DataError, read_file
from tfpg.export import export_saved_model, load
from tfpg.rewards import (PythonReward, RewardOutputError, check_reward, compute_rewards,
                          read_preference_pairs)

sys.path.insert(0, os.path.dirname(__file__))
from cli_batch import assert_usage_error, run_in_fresh_directories  # noqa: E402

NAN, INF = float("nan"), float("inf")
# A decode limit every machine reaches (the default is half its memory).
SMALL_LIMIT_GB = "1"
TOKENIZER = tfpg.Tokenizer.from_texts(["a b c d", "1 + 2 = 3"])


def length_reward(prompt_ids, completion_ids, completion_mask, batch):
    return tf.reduce_sum(completion_mask, axis=1)


@pytest.fixture(scope="module")
def policy():
    keras.utils.set_random_seed(0)
    policy = tfpg.PolicyNetwork(TOKENIZER.vocabulary_size, 8, 8)
    policy.build()
    return policy


@pytest.fixture(scope="module")
def transformer():
    policy = tfpg.PolicyNetwork(TOKENIZER.vocabulary_size, 8, 8, backbone="transformer",
                                num_heads=2, max_length=16)
    policy.build()
    return policy


@pytest.fixture
def small_decode_limit(monkeypatch):
    monkeypatch.setenv(bounds.DECODE_MEMORY_ENV, SMALL_LIMIT_GB)


# ------------------------------------------------------------- tfpg.guards.bounds


def test_the_checks_name_the_value_and_the_range():
    assert bounds.check_positive("temperature", 0.7) == 0.7
    assert bounds.check_count("top_k", 50.0) == 50
    assert bounds.check_timeout("reward_timeout", None) is None
    cases = [
        (bounds.check_positive, "temperature", NAN, "temperature must be > 0 and finite, "
                                                    "got nan"),
        (bounds.check_positive, "learning_rate", -1e-3, "got -0.001"),
        (bounds.check_positive, "temperature", True, "must be a number > 0 and finite, "
                                                     "got True"),
        (bounds.check_non_negative, "kl_coef", -1, "kl_coef must be >= 0 and finite, got -1"),
        (bounds.check_top_p, "top_p", 1.5, "top_p must be in (0, 1], got 1.5"),
        (bounds.check_count, "top_k", 2.5, "top_k must be an integer in [1, 2147483647], "
                                           "got 2.5"),
        (bounds.check_count, "max_new_tokens", 2**31, "got 2147483648"),
        (bounds.check_timeout, "reward_timeout", INF, "reward_timeout must be a finite "
                                                      "number of seconds > 0 or None"),
    ]
    for check, name, value, message in cases:
        with pytest.raises(ValueError, match=_literal(message)):
            check(name, value)


def test_the_decode_limit_is_half_the_memory_or_the_environment(monkeypatch):
    monkeypatch.delenv(bounds.DECODE_MEMORY_ENV, raising=False)
    limit, source = bounds.decode_memory_limit()
    assert limit > 0 and "half this machine's memory" in source
    monkeypatch.setenv(bounds.DECODE_MEMORY_ENV, "0.5")
    assert bounds.decode_memory_limit() == (2**29, f"${bounds.DECODE_MEMORY_ENV}")
    monkeypatch.setenv(bounds.DECODE_MEMORY_ENV, "lots")
    with pytest.raises(ValueError, match="must be a number of GiB > 0, got 'lots'"):
        bounds.decode_memory_limit()


def _literal(text):
    import re
    return re.escape(text)


# ------------------------------------------------------- tfpg.generate and trainers


@pytest.mark.parametrize("options,message", [
    (dict(temperature=NAN), "temperature must be > 0 and finite, got nan"),
    (dict(temperature=INF), "temperature must be > 0 and finite, got inf"),
    (dict(temperature=0.0), "temperature must be > 0 and finite, got 0.0"),
    (dict(top_p=NAN), "top_p must be in (0, 1], got nan"),
    (dict(top_p=0.0), "top_p must be in (0, 1], got 0.0"),
    (dict(top_k=0), "top_k must be an integer in [1, 2147483647], got 0"),
    (dict(max_new_tokens=-1), "max_new_tokens must be an integer in [0, 2147483647], got -1"),
    (dict(prompt_ids=np.zeros([1, 0], np.int32)), "prompt_ids has no tokens (shape [1, 0])"),
    (dict(max_new_tokens=10**9), "max_new_tokens 1000000000 needs about 22.4 GiB for the "
                                 "decode's buffers and cache (1 x (2 + 1000000000) tokens), "
                                 "more than the limit of 1 GiB ($TFPG_MAX_DECODE_MEMORY_GB)"),
])
def test_generate_refuses_values_out_of_range(policy, small_decode_limit, options, message):
    arguments = dict(prompt_ids=np.array([[1, 4]], np.int32), max_new_tokens=4)
    arguments.update(options)
    with pytest.raises(ValueError, match=_literal(message)):
        tfpg.generate(policy, **arguments)


def test_generate_keeps_a_positional_model_inside_its_table(transformer):
    with pytest.raises(ValueError, match=_literal(
            "prompt length 2 + max_new_tokens 15 exceeds the model's max_length 16")):
        tfpg.generate(transformer, np.array([[1, 4]], np.int32), max_new_tokens=15)
    out = tfpg.generate(transformer, np.array([[1, 4]], np.int32), max_new_tokens=14)
    assert out.token_ids.shape == (1, 14)


TRAINERS = {"reinforce": REINFORCE, "scst": SCST, "rloo": RLOO, "grpo": GRPO, "a2c": A2C,
            "ppo": PPO}
BAD_TRAINER_OPTIONS = [
    (dict(max_new_tokens=0), "max_new_tokens must be an integer in [1, 2147483647], got 0"),
    (dict(kl_coef=-1.0), "kl_coef must be >= 0 and finite, got -1.0"),
    (dict(kl_coef=NAN), "kl_coef must be >= 0 and finite, got nan"),
    (dict(temperature=NAN), "temperature must be > 0 and finite, got nan"),
    (dict(top_p=NAN), "top_p must be in (0, 1], got nan"),
    (dict(top_k=0), "top_k must be an integer in [1, 2147483647], got 0"),
    (dict(reward_timeout=0), "reward_timeout must be a finite number of seconds > 0"),
]


@pytest.mark.parametrize("algorithm", TRAINERS)
def test_every_trainer_refuses_values_out_of_range(policy, transformer, algorithm):
    cls = TRAINERS[algorithm]
    for options, message in BAD_TRAINER_OPTIONS:
        with pytest.raises(ValueError, match=_literal(message)):
            cls(policy, length_reward, **options)
    with pytest.raises(ValueError, match=_literal(
            "prompt length 1 + max_new_tokens 16 exceeds the model's max_length 16")):
        cls(transformer, length_reward, max_new_tokens=16)
    if "clip_epsilon" in cls.__init__.__code__.co_varnames:
        for value in (NAN, -0.1):
            with pytest.raises(ValueError, match="clip_epsilon must be >= 0 and finite"):
                cls(policy, length_reward, clip_epsilon=value)


def test_a_rollout_too_big_for_memory_is_refused_when_traced(policy, monkeypatch):
    """The constructor knows one row; the traced step knows B (prompts x group) and P."""
    monkeypatch.setenv(bounds.DECODE_MEMORY_ENV, "0.5")
    agent = RLOO(policy, length_reward, max_new_tokens=10**7, group_size=2)   # 1 row fits
    agent.compile(optimizer="adam")
    prompts = tfpg.data.prompt_dataset(["a b", "c"], TOKENIZER, batch_size=2,
                                       drop_remainder=True)
    with pytest.raises(ValueError, match=_literal(
            "max_new_tokens 10000000 needs about 0.894 GiB for the decode's buffers and "
            "cache (4 x (3 + 10000000) tokens), more than the limit of 0.5 GiB")):
        agent.fit(prompts, verbose=0)


def test_keras_hub_policies_are_bounded_by_their_position_table(tmp_path):
    pytest.importorskip("keras_hub")
    from keras_hub_models import build_causal_lm
    with pytest.raises(ValueError, match=_literal(
            "lora_rank must be an integer in [1, 2147483647], got -1")):
        tfpg.KerasHubPolicy.from_preset(str(tmp_path / "no-such-preset"), lora_rank=-1)
    gpt2 = tfpg.KerasHubPolicy(build_causal_lm("gpt2"))        # max_sequence_length 64
    with pytest.raises(ValueError, match=_literal(
            "prompt length 2 + max_new_tokens 63 exceeds the model's max_length 64")):
        tfpg.generate(gpt2, np.array([[1, 4]], np.int32), max_new_tokens=63)
    with pytest.raises(ValueError, match="max_new_tokens 64 exceeds the model's max_length"):
        RLOO(gpt2, length_reward, max_new_tokens=64)
    # 2 layers x keys and values x 16 floats, and the int32 mask: per position.
    assert tfpg.generation.cache_bytes_per_token(gpt2) == 2 * 2 * 16 * 4 + 4


# ------------------------------------------------------------------ exports


@pytest.fixture(scope="module")
def exported(policy, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("export") / "model")
    return export_saved_model(policy, TOKENIZER, path, max_new_tokens=4)


def test_generator_model_refuses_values_out_of_range(exported, monkeypatch):
    monkeypatch.setenv(bounds.DECODE_MEMORY_ENV, SMALL_LIMIT_GB)
    model = load(exported)
    cases = [
        (dict(temperature=NAN), "temperature must be > 0 and finite, got nan"),
        (dict(temperature=INF), "temperature must be > 0 and finite, got inf"),
        (dict(top_p=NAN), "top_p must be in (0, 1], got nan"),
        (dict(top_k=-3), "top_k must be an integer in [1, 2147483647], got -3"),
        (dict(max_new_tokens=0), "max_new_tokens must be an integer in [1, 2147483647]"),
        (dict(max_new_tokens=10**9), "max_new_tokens 1000000000 needs about"),
    ]
    for options, message in cases:
        with pytest.raises(ValueError, match=_literal(message)):
            model.generate(["a b"], **options)
    assert len(model.generate(["a b"], max_new_tokens=3, temperature=0.5, seed=1)) == 1


# ------------------------------------------------------------------ rewards


def _slow_reward(release, name="slow"):
    """A PythonReward that waits for `release` (a threading.Event) or 60 s."""
    def slow(prompts, completions):
        release.wait(60)
        return [1.0] * len(prompts)
    return PythonReward(slow, name=name)


@pytest.mark.parametrize("mode", ["raise", "skip"])
def test_a_reward_that_never_returns_is_bounded_by_reward_timeout(policy, mode):
    """A hung Python reward fails the step in one line naming it and the limit, or
    makes its batches invalid; `fit` never waits more than the timeout a call."""
    release = threading.Event()
    prompts = tfpg.data.prompt_dataset(["a b", "c", "d"], TOKENIZER, batch_size=3)
    agent = REINFORCE(policy, _slow_reward(release), max_new_tokens=3, reward_timeout=0.5,
                      on_invalid_reward=mode)
    assert agent.reward_timeout == 0.5
    agent.compile(optimizer="adam")
    start = time.monotonic()
    try:
        if mode == "raise":
            with pytest.raises(tf.errors.InvalidArgumentError, match=_literal(
                    "reward slow did not return within 0.5 s (reward_timeout=0.5")):
                agent.fit(prompts, verbose=0)
        else:
            history = agent.fit(prompts, epochs=2, verbose=0).history
            assert history["invalid_rewards"] == [3.0, 3.0]
            assert history["reward"] == [0.0, 0.0]
    finally:
        release.set()
    assert time.monotonic() - start < 30


def test_a_hung_call_is_not_repeated_while_it_runs():
    """Under "zero" the batch of a call that timed out is invalid; while that call
    still runs, the reward is not called again (it may not be reentrant): the next
    batch is invalid at once, without waiting again."""
    release = threading.Event()
    reward = _slow_reward(release)
    args = (tf.constant([[1, 4], [1, 5]]), tf.constant([[5, 2], [6, 2]]), tf.ones([2, 2]),
            {})
    try:
        start = time.monotonic()
        first = compute_rewards(reward, *args, on_invalid="zero", timeout=0.3)
        assert 0.3 <= time.monotonic() - start < 5
        assert first.rewards.numpy().tolist() == [0.0, 0.0]
        assert first.valid.numpy().tolist() == [1.0, 1.0] and float(first.invalid_count) == 2
        start = time.monotonic()
        second = compute_rewards(reward, *args, on_invalid="zero", timeout=0.3)
        assert time.monotonic() - start < 0.3 and float(second.invalid_count) == 2
        with pytest.raises(tfpg.rewards.RewardTimeoutError, match=_literal(
                "reward slow is still running a call that took longer than "
                "reward_timeout=0.3 s")):
            compute_rewards(reward, *args, timeout=0.3)
    finally:
        release.set()
    reward._overdue.join(5)                     # released: called again as usual
    assert compute_rewards(reward, *args, timeout=0.3).rewards.numpy().tolist() == [1, 1]


def test_reward_timeout_none_calls_the_reward_in_place(policy):
    caller = []

    def where(prompts, completions):
        caller.append(threading.current_thread())
        return [1.0] * len(prompts)

    args = (tf.constant([[1, 4]]), tf.constant([[5, 2]]), tf.ones([1, 2]), {})
    compute_rewards(PythonReward(where), *args, timeout=None)
    compute_rewards(PythonReward(where), *args, timeout=5)
    assert caller[0] is threading.current_thread()
    assert caller[1] is not threading.current_thread()     # a worker thread
    assert REINFORCE(policy, length_reward, reward_timeout=None).reward_timeout is None


def returns_string_tensor(prompt_ids, completion_ids, completion_mask, batch):
    return tf.fill(tf.shape(completion_ids)[:1], "x")


def returns_str(prompt_ids, completion_ids, completion_mask, batch):
    return "hello"


def returns_none(prompt_ids, completion_ids, completion_mask, batch):
    return None


def returns_nan(prompt_ids, completion_ids, completion_mask, batch):
    return tf.fill(tf.shape(completion_ids)[:1], NAN)


def test_check_reward_names_the_reward_and_what_it_returned():
    args = (tf.constant([[1, 4], [1, 5]]), tf.constant([[5, 2], [6, 2]]), tf.ones([2, 2]),
            {})
    cases = [
        (returns_string_tensor, "reward returns_string_tensor returned dtype string"),
        (returns_str, "reward returns_str returned str 'hello'"),
        (returns_none, "reward returns_none returned None"),
        (PythonReward(lambda p, c: ["a", "b"], name="texts"),
         "reward texts returned values that are not numbers (could not convert string to "
         "float: 'a'; items of type str)"),
        (PythonReward(lambda p, c: "ab", name="text"), "reward text returned str 'ab'"),
    ]
    for reward, message in cases:
        with pytest.raises(RewardOutputError, match=_literal(message)):
            check_reward(reward, *args)
    check_reward(returns_nan, *args)           # values are the step's to judge
    check_reward(PythonReward(lambda p, c: 1 / 0), *args)


# ------------------------------------------------------------------ data files


def test_a_prompt_line_is_bounded_as_it_is_read(tmp_path):
    path = tmp_path / "long.tsv"
    path.write_text("short prompt\tref\n" + "w " * 1000 + "end\tref\n")
    with pytest.raises(DataError, match=_literal(
            f"{path}:2: prompt has 2003 characters, more than 64 (max_prompt_chars=64")):
        read_file(str(path), max_prompt_chars=64)
    with pytest.warns(UserWarning, match=_literal(
            "1 prompt(s) longer than 64 characters were cut before tokenizing, keeping "
            "their last 64 characters (truncate 'left'; first: line 2)")):
        left = read_file(str(path), max_prompt_chars=64, truncate="left")
    assert left["prompt"] == ["short prompt", ("w " * 1000 + "end")[-64:]]
    with pytest.warns(UserWarning, match="keeping their first 64 characters"):
        right = read_file(str(path), max_prompt_chars=64, truncate="right")
    assert right["prompt"][1] == ("w " * 32)
    assert read_file(str(path))["prompt"][1].endswith("end")       # no bound: whole


@pytest.mark.parametrize("depth", [bounds.MAX_JSON_DEPTH + 1, 100_000])
def test_deeply_nested_json_lines_are_refused_with_file_and_line(tmp_path, depth):
    nested = "[" * depth + "]" * depth
    data = tmp_path / "deep.jsonl"
    data.write_text('{"prompt": "a", "reference": "b"}\n{"prompt": "a", "x": %s}\n' % nested)
    message = f"{data}:2: nesting deeper than {bounds.MAX_JSON_DEPTH}"
    with pytest.raises(DataError, match=_literal(message)):
        read_file(str(data))
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(nested + "\n")
    with pytest.raises(DataError, match=_literal(f"{pairs}:1: nesting deeper than")):
        read_preference_pairs(str(pairs))


def test_json_nesting_up_to_the_limit_is_read(tmp_path):
    depth = bounds.MAX_JSON_DEPTH - 1       # inside the record's own object
    data = tmp_path / "ok.jsonl"
    data.write_text('{"prompt": "a", "x": %s}\n' % ("[" * depth + "]" * depth))
    assert read_file(str(data))["prompt"] == ["a"]
    assert bounds.json_depth({"a": [[1], {"b": []}]}) == 4 and bounds.json_depth(1) == 0


# ------------------------------------------------------------- the command line


REWARDS_MODULE = '''
import time
import tensorflow as tf
import tfpg


def string_tensor(prompt_ids, completion_ids, completion_mask, batch):
    return tf.fill(tf.shape(completion_ids)[:1], "x")


def python_str(prompt_ids, completion_ids, completion_mask, batch):
    return "hello"


def nothing(prompt_ids, completion_ids, completion_mask, batch):
    return None


def _texts(prompts, completions):
    return ["good"] * len(prompts)


def _sleeps(prompts, completions):
    time.sleep(20)
    return [1.0] * len(prompts)


texts = tfpg.rewards.PythonReward(_texts, name="texts")
sleeps = tfpg.rewards.PythonReward(_sleeps, name="sleeps")
'''


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """Files the CLI cases read (one copy for all of them): a training file, one with
    a 10 MB prompt line, deeply nested JSONL lines, a module of bad rewards."""
    directory = tmp_path_factory.mktemp("shared")
    lines = [f"{a} + {b} =\t{a + b}" for a in range(5) for b in range(5)]
    (directory / "add.tsv").write_text("\n".join(lines) + "\n")
    with open(directory / "big.tsv", "w") as f:
        f.write(lines[0] + "\n" + "1 " * 5_000_000 + "=\t3\n")       # 10 MB prompt
    nested = "[" * 100_000 + "]" * 100_000
    (directory / "deep.jsonl").write_text(
        '{"prompt": "a", "reference": "b"}\n{"prompt": %s}\n' % nested)
    (directory / "pairs.jsonl").write_text(nested + "\n")
    (directory / "bounds_rewards.py").write_text(REWARDS_MODULE)
    return directory


# (args, words of the error line) per case; {shared} is the `shared` directory,
# {model} the export. Train cases would write out/model and out/logs.
TINY_TRAIN = ["train", "--train-file", "{shared}/add.tsv", "--pretrain-epochs", "1",
              "--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "8",
              "--max-new-tokens", "4", "--output", "out/model", "--logdir", "out/logs"]
CLI_CASES = [
    (["--kl-coef", "-1"], ["--kl-coef must be >= 0 and finite, got -1.0"]),
    (["--kl-coef", "nan"], ["--kl-coef must be >= 0 and finite, got nan"]),
    (["--learning-rate", "nan"], ["--learning-rate must be > 0 and finite, got nan"]),
    (["--learning-rate", "inf"], ["--learning-rate", "got inf"]),
    (["--learning-rate", "0"], ["--learning-rate", "got 0.0"]),
    (["--output", ""], ["--output is empty"]),
    (["--max-new-tokens", "0"], ["--max-new-tokens must be an integer in [1,"]),
    (["--reward-timeout", "0"], ["--reward-timeout must be a finite number of seconds"]),
    (["--max-new-tokens", "100000000"],
     ["--max-new-tokens 100000000 needs about", "more than the limit of 1 GiB"]),
    (["--train-file", "{shared}/big.tsv"],
     ["{shared}/big.tsv:2: prompt has 10000001 characters, more than 8192"]),
    (["--train-file", "{shared}/big.tsv", "--max-prompt-length", "8"],
     ["big.tsv:2: prompt has 10000001 characters, more than 512", "--truncate-prompts"]),
    (["--train-file", "{shared}/deep.jsonl"], ["{shared}/deep.jsonl:2: nesting deeper than 100"]),
    (["--reward", "bounds_rewards:string_tensor"],
     ["reward string_tensor returned dtype string"]),
    (["--reward", "bounds_rewards:python_str"], ["reward python_str returned str 'hello'"]),
    (["--reward", "bounds_rewards:nothing"], ["reward nothing returned None"]),
    (["--reward", "bounds_rewards:texts"],
     ["reward texts returned values that are not numbers", "items of type str"]),
    (["--reward", "bounds_rewards:sleeps", "--reward-timeout", "1"],
     ["reward sleeps did not return within 1 s (reward_timeout=1"]),
    (["generate", "{model}", "a b", "--temperature", "nan"],
     ["--temperature must be > 0 and finite, got nan"]),
    (["generate", "{model}", "a b", "--temperature", "inf"], ["--temperature", "got inf"]),
    (["generate", "{model}", "a b", "--top-p", "nan"], ["--top-p must be in (0, 1]"]),
    (["generate", "{model}", "a b", "--top-k", "0"], ["--top-k must be an integer"]),
    (["generate", "{model}", "a b", "--max-new-tokens", "0"], ["--max-new-tokens"]),
    (["generate", "{model}", "a b", "--max-new-tokens", "1000000000"],
     ["max_new_tokens 1000000000 needs about", "more than the limit of 1 GiB"]),
    (["export", "{model}", "--output", ""], ["--output is empty"]),
    (["train-reward", "--output", ""], ["--output is empty"]),
    (["train-reward", "--pairs", "{shared}/pairs.jsonl", "--output", "out/rm"],
     ["pairs.jsonl:1: nesting deeper than 100"]),
]


def _command(args):
    """A case's full command line: flags alone are added to TINY_TRAIN (the last
    of a repeated flag wins)."""
    return args if not args[0].startswith("--") else TINY_TRAIN + args


def _fill(texts, shared, model):
    return [text.format(shared=shared, model=model) for text in texts]


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory, shared, exported):
    """Every CLI case in a fresh directory of its own, all in one process
    (tests/cli_batch.py), under a 1 GiB decode limit."""
    commands = [_fill(_command(args), shared, exported) for args, _ in CLI_CASES]
    env = dict(os.environ, **{bounds.DECODE_MEMORY_ENV: SMALL_LIMIT_GB})
    env["PYTHONPATH"] = os.pathsep.join([str(shared)] + [
        p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    start = time.monotonic()
    runs = run_in_fresh_directories(tmp_path_factory, commands,
                                    lambda directory: directory, env)
    return runs, time.monotonic() - start


@pytest.mark.parametrize("case", range(len(CLI_CASES)),
                         ids=[" ".join(args).replace("{shared}/", "") or "''"
                              for args, _ in CLI_CASES])
def test_cli_refuses_in_one_line_and_writes_nothing(cli_runs, shared, exported, case):
    runs, _ = cli_runs
    directory, before, result = runs[case]
    assert_usage_error(result, *_fill(CLI_CASES[case][1], shared, exported))
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr[-2000:]
    assert set(os.listdir(directory)) == before         # no output, logs or lock


def test_cli_refusals_come_before_training(cli_runs):
    """None of the cases pre-trains: together they take seconds, the hung reward's
    1 s included."""
    runs, seconds = cli_runs
    assert not any("pre-training" in result.stdout for _, _, result in runs)
    assert seconds < 120
