"""PythonReward: decoding, extra columns, and every error path under on_invalid."""

import numpy as np
import pytest
import tensorflow as tf

from tfpg.rewards import InvalidRewardError, PythonReward, compute_rewards
from tfpg.text import Tokenizer

TOK = Tokenizer.from_texts(["what is two plus two", "four five six"], level="word")
PROMPTS = ["what is two", "two plus two", "six", "what"]
COMPLETIONS = ["four", "four five", "", "six six six"]


def encode_left(texts):
    rows = TOK.encode(texts)
    width = max(len(r) for r in rows)
    return tf.constant([[0] * (width - len(r)) + r for r in rows], tf.int32)


def completions(texts, width=5):
    """Completion ids with EOS (2) appended, junk after it, and the mask."""
    ids = np.full([len(texts), width], TOK.token_to_id("two"), np.int32)
    mask = np.zeros([len(texts), width], np.float32)
    for b, row in enumerate(TOK.encode(texts, add_bos=False)):
        ids[b, :len(row) + 1] = row + [2]
        mask[b, :len(row) + 1] = 1.0
    return tf.constant(ids), tf.constant(mask)


PROMPT_IDS = encode_left(PROMPTS)
COMPLETION_IDS, MASK = completions(COMPLETIONS)
BATCH = {"prompt": PROMPT_IDS, "answer": tf.constant(["four", "four", "x", "six"]),
         "difficulty": tf.constant([1, 2, 3, 4])}
ARGS = (PROMPT_IDS, COMPLETION_IDS, MASK, BATCH)


def test_fn_gets_decoded_strings_and_the_columns_it_names():
    seen = {}

    def correct(prompts, completions, answer):
        seen.update(prompts=prompts, completions=completions, answer=answer)
        return [float(c == a) for c, a in zip(completions, answer)]

    out = PythonReward(correct, TOK)(*ARGS)
    assert out.dtype == tf.float32 and out.numpy().tolist() == [1.0, 0.0, 0.0, 0.0]
    assert seen == {"prompts": PROMPTS, "completions": COMPLETIONS,
                    "answer": ["four", "four", "x", "six"]}


def test_kwargs_get_every_column_but_the_prompt():
    seen = {}

    def everything(prompts, completions, **columns):
        seen.update(columns)
        return np.zeros(len(prompts))

    PythonReward(everything, TOK)(*ARGS)
    assert sorted(seen) == ["answer", "difficulty"]
    assert seen["difficulty"] == [1, 2, 3, 4]


def test_without_tokenizer_fn_gets_ids():
    def count(prompts, completions):
        return [len(p) * 10 + len(c) for p, c in zip(prompts, completions)]

    reward = PythonReward(count)
    assert reward.name == "count"
    # prompt ids without pad/BOS, completion ids before EOS
    assert reward(*ARGS).numpy().tolist() == [31, 32, 10, 13]


def test_works_inside_tf_function_and_keeps_the_batch_dim():
    reward = PythonReward(lambda p, c: [len(x.split()) for x in c], TOK, name="words")

    @tf.function
    def step(prompt, completion, mask, batch):
        return compute_rewards(reward, prompt, completion, mask, batch).rewards

    assert step(*ARGS).numpy().tolist() == [1.0, 2.0, 0.0, 3.0]
    assert reward(*ARGS).shape == (4,)


def raises_on_empty(prompts, completions):
    return [1.0 / len(c.split()) for c in completions]  # ZeroDivisionError for ""


def test_exception_raise_names_reward_prompt_and_completion():
    with pytest.raises(InvalidRewardError,
                       match=r"reward raises_on_empty raised ZeroDivisionError: float division "
                             r"by zero on sample 2: prompt='six' completion=''"):
        compute_rewards(PythonReward(raises_on_empty, TOK), *ARGS)


def test_exception_raise_inside_tf_function():
    reward = PythonReward(raises_on_empty, TOK)

    @tf.function
    def step(prompt, completion, mask, batch):
        return compute_rewards(reward, prompt, completion, mask, batch).rewards

    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"reward raises_on_empty raised ZeroDivisionError.*on sample 2: "
                             r"prompt='six' completion=''"):
        step(*ARGS)


@pytest.mark.parametrize("on_invalid,valid", [("zero", [1, 1, 1, 1]), ("skip", [1, 1, 0, 1])])
def test_exception_masked_per_sample(on_invalid, valid):
    result = compute_rewards(PythonReward(raises_on_empty, TOK), *ARGS, on_invalid=on_invalid)
    assert result.rewards.numpy().tolist() == pytest.approx([1.0, 0.5, 0.0, 1 / 3])
    assert result.valid.numpy().tolist() == valid
    assert float(result.invalid_count) == 1.0


def test_on_invalid_is_fixed_when_traced():
    reward = PythonReward(raises_on_empty, TOK)

    @tf.function
    def step(prompt, completion, mask, batch):
        result = compute_rewards(reward, prompt, completion, mask, batch, on_invalid="skip")
        return result.rewards, result.invalid_count

    rewards, count = step(*ARGS)
    assert rewards.numpy()[2] == 0.0 and float(count) == 1.0


def test_nan_and_none_items():
    def partial(prompts, completions):
        return [None, float("nan"), 1.0, float("inf")]

    with pytest.raises(InvalidRewardError,
                       match=r"reward partial returned nan for sample 0: prompt='what is two' "
                             r"completion='four'"):
        compute_rewards(PythonReward(partial, TOK), *ARGS)
    result = compute_rewards(PythonReward(partial, TOK), *ARGS, on_invalid="skip")
    assert result.rewards.numpy().tolist() == [0.0, 0.0, 1.0, 0.0]
    assert result.valid.numpy().tolist() == [0.0, 0.0, 1.0, 0.0]
    assert float(result.invalid_count) == 3.0


@pytest.mark.parametrize("bad,message", [
    (lambda p, c: None, "returned None; expected a sequence of 4 floats"),
    (lambda p, c: [1.0, 2.0], "returned 2 values for a batch of 4"),
    (lambda p, c: ["a"] * len(c), r"returned values that are not numbers \(could not convert"),
])
def test_unusable_outputs(bad, message):
    with pytest.raises(InvalidRewardError, match=message):
        compute_rewards(PythonReward(bad, TOK, name="bad"), *ARGS)
    # Masked: the whole batch is unusable.
    result = compute_rewards(PythonReward(bad, TOK, name="bad"), *ARGS, on_invalid="zero")
    assert result.rewards.numpy().tolist() == [0.0] * 4
    assert float(result.invalid_count) == 4.0


def test_batch_only_failure_reported_with_first_sample():
    def needs_pairs(prompts, completions):
        if len(prompts) % 2:
            raise RuntimeError("odd batch")
        return [0.0] * len(prompts)

    with pytest.raises(InvalidRewardError, match=r"raised RuntimeError: odd batch on sample 0"):
        compute_rewards(PythonReward(needs_pairs, TOK), *(a[:3] for a in ARGS[:3]),
                        {k: v[:3] for k, v in BATCH.items()})

    def flaky(prompts, completions):
        if len(prompts) > 1:
            raise RuntimeError("whole batch")
        return [1.0]

    with pytest.raises(InvalidRewardError,
                       match=r"reward flaky raised RuntimeError: whole batch on a batch of 4 "
                             r"\(first prompt='what is two' completion='four'\)"):
        compute_rewards(PythonReward(flaky, TOK), *ARGS)
    result = compute_rewards(PythonReward(flaky, TOK), *ARGS, on_invalid="skip")
    assert float(result.invalid_count) == 4.0


def test_config():
    reward = PythonReward(raises_on_empty, TOK, name="inv")
    assert reward.get_config() == {"fn": raises_on_empty, "tokenizer": TOK, "name": "inv"}
    with pytest.raises(TypeError, match="fn must be callable"):
        PythonReward("not a function")
