"""compute_rewards: validation, on_invalid masking, error messages, components."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfpg.rewards import (BLEU, InvalidRewardError, Length, Reward, RewardResult,
                          WeightedSum, completion_tokens, compute_rewards, reward_name)

PROMPT = tf.constant([[0, 1, 4], [1, 5, 6], [0, 1, 7], [1, 4, 4]])
COMPLETION = tf.constant([[4, 5, 2, 0], [6, 2, 0, 0], [7, 7, 7, 7], [5, 2, 0, 0]])
MASK = tf.constant([[1., 1., 1., 0.], [1., 1., 0., 0.], [1., 1., 1., 1.], [1., 1., 0., 0.]])
BATCH = {"reference": tf.constant([[4, 5, 0], [6, 0, 0], [7, 7, 7], [4, 0, 0]])}
ARGS = (PROMPT, COMPLETION, MASK, BATCH)


class Constant(Reward):
    """Returns fixed values, whatever the input (for bad-output tests)."""

    def __init__(self, values, name=None):
        super().__init__(name=name)
        self.values = values

    def __call__(self, prompt_ids, completion_ids, completion_mask, batch):
        return self.values


NAN_AT_3 = tf.constant([0.5, 1.0, 0.25, np.nan])


def test_valid_rewards_pass_through():
    result = compute_rewards(Length(), *ARGS)
    assert isinstance(result, RewardResult)
    assert result.rewards.dtype == tf.float32
    assert result.rewards.numpy().tolist() == [2.0, 1.0, 4.0, 1.0]
    assert result.valid.numpy().tolist() == [1.0] * 4
    assert float(result.invalid_count) == 0.0 and result.components == {}
    assert result.metrics().keys() == {"invalid_rewards"}


@pytest.mark.parametrize("on_invalid,valid", [("zero", [1, 1, 1, 1]), ("skip", [1, 1, 1, 0])])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_masked_and_counted(on_invalid, valid, bad):
    reward = Constant(tf.constant([0.5, 1.0, 0.25, bad]))
    result = compute_rewards(reward, *ARGS, on_invalid=on_invalid)
    assert result.rewards.numpy().tolist() == [0.5, 1.0, 0.25, 0.0]
    assert result.valid.numpy().tolist() == valid
    assert float(result.invalid_count) == 1.0
    assert result.metrics()["invalid_rewards"].numpy() == 1.0


def test_raise_eagerly_names_reward_sample_value_and_completion():
    with pytest.raises(InvalidRewardError,
                       match=r"reward BLEU returned nan for sample 3 \(completion ids "
                             r"\[5, 2, 0, 0\]\)"):
        compute_rewards(Constant(NAN_AT_3, name="BLEU"), *ARGS)
    with pytest.raises(InvalidRewardError, match="reward Constant returned inf for sample 0"):
        compute_rewards(Constant(tf.constant([np.inf, 0., 0., 0.])), *ARGS)


def test_raise_inside_tf_function_is_readable():
    @tf.function
    def step(prompt, completion, mask, batch):
        return compute_rewards(Constant(NAN_AT_3 * tf.ones([4]), name="BLEU"),
                               prompt, completion, mask, batch).rewards

    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        step(*ARGS)
    message = str(info.value)
    assert "reward BLEU returned nan for sample 3 (completion ids [5 2 0 0])" in message
    # A healthy batch through the same graph passes.
    assert compute_rewards(Length(), *ARGS).rewards.shape == (4,)


def test_raise_inside_model_fit_is_readable():
    """The message survives a Keras train_step (the trainers' situation)."""

    class Trainer(keras.Model):
        def __init__(self):
            super().__init__()
            self.w = self.add_weight(shape=(), initializer="ones")

        def train_step(self, data):
            rewards = compute_rewards(Constant(NAN_AT_3 * self.w, name="BLEU"), *ARGS).rewards
            return {"reward": tf.reduce_mean(rewards)}

    model = Trainer()
    model.compile(optimizer="sgd")
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"reward BLEU returned nan for sample 3"):
        model.fit(tf.data.Dataset.from_tensors(0.0), epochs=1, verbose=0, shuffle=False)


def test_nan_never_reaches_the_optimizer():
    """A NaN reward with on_invalid="skip" leaves finite gradients and weights."""
    w = tf.Variable([1.0, 1.0, 1.0, 1.0])
    optimizer = keras.optimizers.SGD(0.1)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            log_probs = -tf.square(w)  # stands in for the policy's log-probs [B]
            result = compute_rewards(Constant(NAN_AT_3), *ARGS, on_invalid="skip")
            loss = -tf.reduce_sum(result.valid * result.rewards * log_probs) / tf.maximum(
                tf.reduce_sum(result.valid), 1.0)
        grads = tape.gradient(loss, [w])
        optimizer.apply(grads, [w])
        return grads[0]

    grad = step().numpy()
    assert np.all(np.isfinite(grad)) and grad[3] == 0.0
    assert np.all(np.isfinite(w.numpy()))


def forgetful(prompt_ids, completion_ids, completion_mask, batch):
    tf.reduce_sum(completion_mask, axis=1)  # no return


@pytest.mark.parametrize("on_invalid", ["raise", "zero", "skip"])
def test_none_result_always_raises(on_invalid):
    # No values exist to mask, so even "zero" / "skip" raise, when traced.
    with pytest.raises(TypeError, match="reward forgetful returned None"):
        compute_rewards(forgetful, *ARGS, on_invalid=on_invalid)


def test_non_tensor_and_bad_dtype_raise():
    with pytest.raises(TypeError, match=r"reward Constant returned list \[1, 2, 3, 4\]"):
        compute_rewards(Constant([1, 2, 3, 4]), *ARGS)
    with pytest.raises(TypeError, match="reward Constant returned dtype string"):
        compute_rewards(Constant(tf.constant(["a", "b", "c", "d"])), *ARGS)


def test_dtypes_are_cast_to_float32():
    for values in (tf.constant([1, 0, 1, 0]), tf.constant([True, False, True, False]),
                   tf.constant([1., 0., 1., 0.], tf.float64), np.array([1, 0, 1, 0])):
        result = compute_rewards(Constant(values), *ARGS)
        assert result.rewards.dtype == tf.float32
        assert result.rewards.numpy().tolist() == [1.0, 0.0, 1.0, 0.0]


def test_shapes():
    # [B, 1] (a Dense(1) head) is squeezed to [B].
    squeezed = compute_rewards(Constant(tf.constant([[1.], [2.], [3.], [4.]])), *ARGS)
    assert squeezed.rewards.numpy().tolist() == [1.0, 2.0, 3.0, 4.0]
    with pytest.raises(ValueError, match=r"reward Constant returned shape \(4, 2\); "
                                         r"expected \[B\]"):
        compute_rewards(Constant(tf.zeros([4, 2])), *ARGS)
    with pytest.raises(ValueError, match=r"returned shape \(\)"):
        compute_rewards(Constant(tf.constant(1.0)), *ARGS)
    with pytest.raises(ValueError, match="reward Constant returned the wrong number of values; "
                                         r"expected one per completion, shape \[B\], got 3 "
                                         "for B = 4"):
        compute_rewards(Constant(tf.zeros([3])), *ARGS)


def test_wrong_batch_size_inside_tf_function():
    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
    def step(values):
        return compute_rewards(Constant(values), *ARGS).rewards

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32),
                                  tf.TensorSpec([None, None], tf.int32)])
    def dynamic_step(values, completion_ids):
        return compute_rewards(Constant(values), PROMPT, completion_ids, MASK, BATCH).rewards

    assert step(tf.ones([4])).numpy().tolist() == [1.0] * 4
    for fn in (step, lambda v: dynamic_step(v, COMPLETION)):
        with pytest.raises(tf.errors.InvalidArgumentError, match="wrong number of values"):
            fn(tf.ones([5]))


def test_argument_errors():
    with pytest.raises(ValueError, match="on_invalid must be one of"):
        compute_rewards(Length(), *ARGS, on_invalid="ignore")
    with pytest.raises(TypeError, match="reward_fn must be callable"):
        compute_rewards("bleu", *ARGS)


def test_plain_functions_are_rewards():
    def brevity(prompt_ids, completion_ids, completion_mask, batch):
        return -tf.reduce_sum(completion_mask, axis=1)

    assert reward_name(brevity) == "brevity"
    result = compute_rewards(brevity, *ARGS)
    assert result.rewards.numpy().tolist() == [-3.0, -2.0, -4.0, -2.0]

    def brevity_nan(prompt_ids, completion_ids, completion_mask, batch):
        return brevity(prompt_ids, completion_ids, completion_mask, batch) / tf.constant(
            [1.0, 0.0, 1.0, 1.0]) * 0.0

    with pytest.raises(InvalidRewardError, match="reward brevity_nan returned nan for sample 1"):
        compute_rewards(brevity_nan, *ARGS)


def test_reward_base_class():
    class Plain(Reward):
        pass

    with pytest.raises(NotImplementedError, match="Plain must implement __call__"):
        Plain()(*ARGS)
    assert Plain().name == "Plain" and Plain(name="p").get_config() == {"name": "p"}
    assert repr(Length(target=3)) == "Length(target=3, eos_id=2, name='Length')"


def test_weighted_sum_reports_components():
    total = WeightedSum({"bleu": (BLEU(max_order=1), 2.0), "length": (Length(), -0.5)})
    result = compute_rewards(total, *ARGS)
    bleu = [1.0, 1.0, 0.75, 0.0]  # unigram BLEU against the references
    length = [2.0, 1.0, 4.0, 1.0]
    assert result.components["bleu"].numpy().tolist() == bleu
    assert result.components["length"].numpy().tolist() == length
    expected = [2 * b - 0.5 * n for b, n in zip(bleu, length)]
    assert result.rewards.numpy().tolist() == expected
    assert total(*ARGS).numpy().tolist() == expected  # called directly: the sum only
    metrics = result.metrics()
    assert set(metrics) == {"reward/bleu", "reward/length", "invalid_rewards"}
    assert float(metrics["reward/length"]) == 2.0


def test_weighted_sum_list_form_and_invalid_component():
    total = WeightedSum([("len", Length(), 1.0), ("bad", Constant(NAN_AT_3), 0.0)])
    with pytest.raises(InvalidRewardError,
                       match=r"reward 'bad' \(Constant\) returned nan for sample 3"):
        compute_rewards(total, *ARGS)
    result = compute_rewards(total, *ARGS, on_invalid="skip")
    # One invalid component invalidates the sample, even with weight 0.
    assert result.rewards.numpy().tolist() == [2.0, 1.0, 4.0, 0.0]
    assert result.valid.numpy().tolist() == [1.0, 1.0, 1.0, 0.0]
    assert result.components["len"].numpy().tolist() == [2.0, 1.0, 4.0, 1.0]
    assert result.components["bad"].numpy().tolist() == [0.5, 1.0, 0.25, 0.0]
    # Component means are over valid samples only.
    assert float(result.metrics()["reward/len"]) == pytest.approx(7 / 3)


def test_weighted_sum_config_and_errors():
    total = WeightedSum({"a": Length(), "b": (Length(target=2), 0.5)}, name="mix")
    assert total.weighted_components[0][2] == 1.0
    assert total.get_config()["name"] == "mix"
    with pytest.raises(ValueError, match="at least one component"):
        WeightedSum({})
    with pytest.raises(ValueError, match=r"\(name, reward, weight\)"):
        WeightedSum([("a", Length())])
    with pytest.raises(ValueError, match="unique"):
        WeightedSum([("a", Length(), 1.0), ("a", Length(), 1.0)])


def test_completion_tokens_cuts_at_first_eos_and_mask():
    ids = tf.constant([[4, 2, 5, 2], [4, 5, 6, 7], [2, 4, 0, 0]])
    mask = tf.constant([[1., 1., 0., 0.], [1., 1., 1., 0.], [1., 0., 0., 0.]])
    assert completion_tokens(ids, mask).numpy().tolist() == [
        [4, 0, 0, 0], [4, 5, 6, 0], [0, 0, 0, 0]]
    assert completion_tokens(ids, tf.ones([3, 4]), eos_id=None).numpy().tolist() == \
        ids.numpy().tolist()


def test_xla_compiles_and_still_masks():
    """Under jit_compile the in-graph rewards compile; the "raise" assertion is
    compiled away by XLA, so the NaN is zeroed and counted instead."""
    total = WeightedSum({"bleu": (BLEU(), 1.0), "bad": (Constant(NAN_AT_3), 0.0)})

    @tf.function(jit_compile=True)
    def step(prompt, completion, mask, batch):
        result = compute_rewards(total, prompt, completion, mask, batch)
        return result.rewards, result.invalid_count, result.components["bleu"]

    rewards, count, bleu = step(*ARGS)
    expected = BLEU()(*ARGS).numpy()
    np.testing.assert_allclose(bleu.numpy(), expected, atol=1e-7)
    np.testing.assert_allclose(rewards.numpy(), list(expected[:3]) + [0.0], atol=1e-7)
    assert float(count) == 1.0
