"""Tests for tfpg.advantages: hand computations and brute-force Python references."""

import numpy as np
import pytest
import tensorflow as tf

from tfpg import advantages as adv

NAN = float("nan")


# ----------------------------------------------------------------------------------
# Brute-force references (plain Python loops over rows and real tokens)
# ----------------------------------------------------------------------------------


def ref_returns(rewards, mask, gamma):
    out = np.zeros_like(rewards, dtype=np.float64)
    for b in range(rewards.shape[0]):
        real = [t for t in range(rewards.shape[1]) if mask[b, t] > 0]
        g = 0.0
        for t in reversed(real):
            g = rewards[b, t] + gamma * g
            out[b, t] = g
    return out


def ref_gae(rewards, values, mask, gamma, lam):
    """Textbook GAE over the real tokens of each row (masked tokens skipped)."""
    advantages = np.zeros_like(rewards, dtype=np.float64)
    for b in range(rewards.shape[0]):
        real = [t for t in range(rewards.shape[1]) if mask[b, t] > 0]
        last = 0.0
        for i in reversed(range(len(real))):
            t = real[i]
            next_value = values[b, real[i + 1]] if i + 1 < len(real) else 0.0
            delta = rewards[b, t] + gamma * next_value - values[b, t]
            last = delta + gamma * lam * last
            advantages[b, t] = last
    returns = np.where(mask > 0, advantages + values, 0.0)
    return advantages, returns


def prefix_mask(lengths, T):
    return (np.arange(T)[None, :] < np.asarray(lengths)[:, None]).astype(np.float32)


def with_garbage(x, mask):
    """Puts NaN / inf at masked positions: they must not influence anything."""
    x = x.copy()
    garbage = np.where(np.arange(x.size).reshape(x.shape) % 2 == 0, np.nan, np.inf)
    return np.where(mask > 0, x, garbage).astype(np.float32)


RNG_MASKS = [
    prefix_mask([0, 1, 3, 6, 6], 6),  # empty row, one token, mid-sequence end, full rows
    prefix_mask([6, 6, 6, 6, 6], 6),  # all full length (truncated)
    np.array([[1, 1, 0, 1, 1, 0], [0, 0, 1, 1, 1, 1], [1, 0, 1, 0, 1, 0],
              [0, 0, 0, 0, 0, 1], [1, 1, 1, 1, 1, 1]], np.float32),  # holes
]


# ----------------------------------------------------------------------------------
# discounted_returns
# ----------------------------------------------------------------------------------


def test_discounted_returns_hand():
    rewards = np.array([[0, 0, 1, 5], [1, 1, 1, 1], [3, 3, 3, 3]], np.float32)
    mask = np.array([[1, 1, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0]], np.float32)
    got = adv.discounted_returns(rewards, mask, gamma=0.5).numpy()
    expected = [[0.25, 0.5, 1.0, 0.0], [1.875, 1.75, 1.5, 1.0], [0, 0, 0, 0]]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-7)
    assert got.dtype == np.float32


@pytest.mark.parametrize("mask", RNG_MASKS)
@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_discounted_returns_matches_loop(mask, gamma):
    rng = np.random.default_rng(0)
    rewards = rng.normal(size=mask.shape).astype(np.float32)
    got = adv.discounted_returns(with_garbage(rewards, mask), mask, gamma).numpy()
    np.testing.assert_allclose(got, ref_returns(rewards, mask, gamma), rtol=1e-5, atol=1e-6)
    assert np.all(got[mask == 0] == 0)


# ----------------------------------------------------------------------------------
# GAE / TD
# ----------------------------------------------------------------------------------


def test_gae_hand():
    # One row of 3 real tokens then padding; gamma=0.5, lam=0.5.
    rewards = np.array([[0.0, 0.0, 1.0, 7.0]], np.float32)
    values = np.array([[0.5, 1.0, 0.25, 9.0]], np.float32)
    mask = np.array([[1, 1, 1, 0]], np.float32)
    # deltas: t2 = 1 - 0.25 = 0.75 (no bootstrap past the end)
    #         t1 = 0 + 0.5*0.25 - 1 = -0.875 ; t0 = 0 + 0.5*1 - 0.5 = 0
    # A2 = 0.75 ; A1 = -0.875 + 0.25*0.75 = -0.6875 ; A0 = 0 + 0.25*-0.6875 = -0.171875
    a, r = adv.generalized_advantage_estimation(rewards, values, mask, gamma=0.5, lam=0.5)
    np.testing.assert_allclose(a.numpy(), [[-0.171875, -0.6875, 0.75, 0.0]], atol=1e-7)
    np.testing.assert_allclose(r.numpy(), [[0.328125, 0.3125, 1.0, 0.0]], atol=1e-7)


@pytest.mark.parametrize("mask", RNG_MASKS)
@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (1.0, 1.0), (0.99, 0.0)])
def test_gae_matches_loop(mask, gamma, lam):
    rng = np.random.default_rng(1)
    rewards = rng.normal(size=mask.shape).astype(np.float32)
    values = rng.normal(size=mask.shape).astype(np.float32)
    a, r = adv.generalized_advantage_estimation(
        with_garbage(rewards, mask), with_garbage(values, mask), mask, gamma, lam
    )
    ref_a, ref_r = ref_gae(rewards, values, mask, gamma, lam)
    np.testing.assert_allclose(a.numpy(), ref_a, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(r.numpy(), ref_r, rtol=1e-5, atol=1e-5)
    assert np.all(a.numpy()[mask == 0] == 0) and np.all(r.numpy()[mask == 0] == 0)


def test_gae_lambda_one_is_monte_carlo():
    rng = np.random.default_rng(2)
    mask = RNG_MASKS[0]
    rewards = rng.normal(size=mask.shape).astype(np.float32)
    values = rng.normal(size=mask.shape).astype(np.float32)
    a, r = adv.generalized_advantage_estimation(rewards, values, mask, gamma=0.9, lam=1.0)
    g = adv.discounted_returns(rewards, mask, gamma=0.9).numpy()
    np.testing.assert_allclose(r.numpy(), g, atol=1e-5)
    np.testing.assert_allclose(a.numpy(), np.where(mask > 0, g - values, 0), atol=1e-5)


def test_td_advantages_are_gae_lambda_zero():
    rewards = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], np.float32)
    values = np.array([[0.5, 1.5, 2.5], [1.0, 1.0, 1.0]], np.float32)
    mask = np.array([[1, 1, 1], [1, 1, 0]], np.float32)
    a, r = adv.temporal_difference_advantages(rewards, values, mask, gamma=0.5)
    # A = r + 0.5 V' - V, V' = 0 after the last real token (truncated row 0 included).
    expected = [[1 + 0.75 - 0.5, 2 + 1.25 - 1.5, 3 - 2.5], [4 + 0.5 - 1, 5 - 1, 0]]
    np.testing.assert_allclose(a.numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(r.numpy(), [[1.75, 3.25, 3.0], [4.5, 5.0, 0.0]], atol=1e-6)
    a0, _ = adv.generalized_advantage_estimation(rewards, values, mask, gamma=0.5, lam=0.0)
    np.testing.assert_allclose(a.numpy(), a0.numpy())


def test_truncated_row_is_terminal():
    # A full-length row gets no bootstrap: last advantage = r_T - V_T.
    a, _ = adv.generalized_advantage_estimation(
        [[0.0, 1.0]], [[3.0, 2.0]], [[1.0, 1.0]], gamma=1.0, lam=1.0)
    np.testing.assert_allclose(a.numpy(), [[-2.0, -1.0]])


def test_gae_no_gradient_leak_through_masked_values():
    values = tf.Variable([[1.0, 2.0, 3.0]])
    mask = tf.constant([[1.0, 1.0, 0.0]])
    with tf.GradientTape() as tape:
        a, _ = adv.generalized_advantage_estimation([[0.0, 1.0, 5.0]], values, mask, 1.0, 1.0)
        total = tf.reduce_sum(a)
    grad = tape.gradient(total, values).numpy()
    np.testing.assert_allclose(grad, [[-1.0, -1.0, 0.0]])


# ----------------------------------------------------------------------------------
# whiten
# ----------------------------------------------------------------------------------


def test_whiten_ignores_masked_entries():
    x = np.array([[1.0, 2.0, 100.0], [3.0, -50.0, NAN]], np.float32)
    mask = np.array([[1, 1, 0], [1, 0, 0]], np.float32)
    got = adv.whiten(x, mask).numpy()
    real = np.array([1.0, 2.0, 3.0])
    expected_real = (real - real.mean()) / np.sqrt(real.var() + 1e-8)  # ddof=0
    np.testing.assert_allclose(got[mask > 0], expected_real, rtol=1e-6)
    assert np.all(got[mask == 0] == 0)
    np.testing.assert_allclose(got[mask > 0].mean(), 0, atol=1e-6)
    np.testing.assert_allclose(got[mask > 0].std(), 1, atol=1e-5)


def test_whiten_no_shift_and_no_mask_and_rank1():
    x = np.array([1.0, 2.0, 3.0, 6.0], np.float32)
    sd = np.sqrt(x.var() + 1e-8)
    np.testing.assert_allclose(adv.whiten(x).numpy(), (x - 3.0) / sd, rtol=1e-6)
    np.testing.assert_allclose(adv.whiten(x, shift_mean=False).numpy(), (x - 3.0) / sd + 3.0,
                               rtol=1e-6)
    got = adv.whiten(x, mask=np.array([1, 1, 0, 0], np.float32)).numpy()
    np.testing.assert_allclose(got, [-1.0, 1.0, 0.0, 0.0], rtol=1e-6)


def test_whiten_all_masked_is_zero():
    got = adv.whiten(np.ones((2, 3), np.float32), np.zeros((2, 3), np.float32)).numpy()
    assert np.all(got == 0)


# ----------------------------------------------------------------------------------
# moving average baseline
# ----------------------------------------------------------------------------------


def test_moving_average_first_batch_and_bias_correction():
    decay = 0.9
    avg, cnt = adv.update_moving_average(0.0, 0.0, [1.0, 3.0], decay)
    assert float(avg) == pytest.approx(2.0) and float(cnt) == 1.0
    avg, cnt = adv.update_moving_average(avg, cnt, [4.0, 6.0], decay)
    # m1 = 0.1*2 ; m2 = 0.9*0.2 + 0.1*5 = 0.68 ; corrected = 0.68 / (1 - 0.81) = 3.5789...
    assert float(avg) == pytest.approx(0.68 / 0.19, rel=1e-6) and float(cnt) == 2.0


def test_moving_average_matches_weighted_mean_of_batches():
    rng = np.random.default_rng(3)
    decay = 0.8
    avg, cnt = tf.constant(0.0), tf.constant(0, tf.int64)
    means = []
    for _ in range(7):
        batch = rng.normal(size=5).astype(np.float32)
        means.append(batch.mean())
        avg, cnt = adv.update_moving_average(avg, cnt, batch, decay)
    n = len(means)
    w = np.array([decay ** (n - 1 - i) for i in range(n)])
    np.testing.assert_allclose(float(avg), np.dot(w, means) / w.sum(), rtol=1e-5)
    assert cnt.dtype == tf.int64 and int(cnt) == n


def test_moving_average_empty_batch_is_noop():
    avg, cnt = adv.update_moving_average(1.5, 3.0, tf.zeros([0]), 0.9)
    assert float(avg) == 1.5 and float(cnt) == 3.0


# ----------------------------------------------------------------------------------
# RLOO and GRPO
# ----------------------------------------------------------------------------------


def test_leave_one_out_k2():
    r = np.array([1.0, 3.0, 5.0, 5.0], np.float32)
    np.testing.assert_allclose(adv.leave_one_out_baseline(r, 2).numpy(), [3.0, 1.0, 5.0, 5.0])
    np.testing.assert_allclose(adv.rloo_advantages(r, 2).numpy(), [-2.0, 2.0, 0.0, 0.0])


def test_leave_one_out_k4():
    r = np.array([1.0, 2.0, 3.0, 6.0, 0.0, 0.0, 0.0, 4.0], np.float32)
    base = adv.leave_one_out_baseline(r, 4).numpy()
    np.testing.assert_allclose(base, [11 / 3, 10 / 3, 3.0, 2.0, 4 / 3, 4 / 3, 4 / 3, 0.0],
                               rtol=1e-6)
    grouped = r.reshape(-1, 4)
    expected = (4 / 3) * (grouped - grouped.mean(1, keepdims=True))
    np.testing.assert_allclose(adv.rloo_advantages(r, 4).numpy(), expected.ravel(), rtol=1e-5,
                               atol=1e-6)


def test_rloo_brute_force():
    rng = np.random.default_rng(4)
    k = 5
    r = rng.normal(size=4 * k).astype(np.float32)
    expected = [np.mean([r[j] for j in range(i // k * k, i // k * k + k) if j != i])
                for i in range(r.size)]
    np.testing.assert_allclose(adv.leave_one_out_baseline(r, k).numpy(), expected, rtol=1e-5,
                               atol=1e-6)


@pytest.mark.parametrize("k", [1, 0, -2, 2.0, True, None])
def test_group_size_validation(k):
    with pytest.raises(ValueError):
        adv.leave_one_out_baseline(tf.ones([4]), k)
    with pytest.raises(ValueError):
        adv.group_normalized_advantages(tf.ones([4]), k)


def test_group_size_numpy_int_ok():
    got = adv.rloo_advantages([0.0, 2.0], np.int64(2)).numpy()
    np.testing.assert_allclose(got, [-2.0, 2.0])


def test_group_normalized_hand():
    r = np.array([1.0, 2.0, 3.0, 0.5, 0.5, 0.5], np.float32)
    a, zero = adv.group_normalized_advantages(r, 3)
    # Group 1: mean 2, unbiased std 1. Group 2: all equal -> 0 and flagged.
    np.testing.assert_allclose(a.numpy(), [-1 / 1.0001, 0, 1 / 1.0001, 0, 0, 0], rtol=1e-6)
    np.testing.assert_allclose(zero.numpy(), [0.0, 1.0])
    a, _ = adv.group_normalized_advantages(r, 3, scale_by_std=False)
    np.testing.assert_allclose(a.numpy(), [-1, 0, 1, 0, 0, 0])


def test_group_normalized_random_vs_numpy_ddof1():
    rng = np.random.default_rng(5)
    r = rng.integers(0, 3, size=(6, 4)).astype(np.float32)
    r[2] = 1.0  # force a zero-std group
    a, zero = adv.group_normalized_advantages(r.ravel(), 4, epsilon=1e-3)
    expected = (r - r.mean(1, keepdims=True)) / (r.std(1, ddof=1, keepdims=True) + 1e-3)
    np.testing.assert_allclose(a.numpy(), expected.ravel(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(zero.numpy(), (r.max(1) == r.min(1)).astype(np.float32))
    assert zero.numpy()[2] == 1.0


def test_skipped_samples_leave_rloo_and_grpo_groups():
    """Issue 14's group [1, 1, skipped, 0] (TRL: RLOO [0.5, 0.5, 0, -1], GRPO
    [0.577, 0.577, 0, -1.155]); the skipped reward may hold anything."""
    r = np.array([1.0, 1.0, NAN, 0.0], np.float32)
    valid = np.array([1.0, 1.0, 0.0, 1.0], np.float32)
    np.testing.assert_allclose(adv.rloo_advantages(r, 4, valid).numpy(), [0.5, 0.5, 0, -1])
    np.testing.assert_allclose(adv.leave_one_out_baseline(r, 4, valid).numpy()[[0, 1, 3]],
                               [0.5, 0.5, 1.0])
    std = np.std([1.0, 1.0, 0.0], ddof=1)                  # 0.57735
    a, zero = adv.group_normalized_advantages(r, 4, valid=valid)
    np.testing.assert_allclose(a.numpy(), [1 / 3 / (std + 1e-4), 1 / 3 / (std + 1e-4), 0,
                                           -2 / 3 / (std + 1e-4)], rtol=1e-6)
    np.testing.assert_allclose(a.numpy(), [0.577, 0.577, 0, -1.155], atol=1e-3)
    assert zero.numpy().tolist() == [0.0]
    # One valid sample left: no baseline, no spread: advantage 0, flagged.
    lone = np.array([1.0, 0.0, 0.0, 0.0], np.float32)
    assert adv.rloo_advantages([3.0, 9.0, 9.0, 9.0], 4, lone).numpy().tolist() == [0, 0, 0, 0]
    a, zero = adv.group_normalized_advantages([3.0, 9.0, 9.0, 5.0], 4, valid=[1, 0, 0, 0])
    assert a.numpy().tolist() == [0, 0, 0, 0] and zero.numpy().tolist() == [1.0]


def test_group_normalized_batch_scale_and_none():
    """TRL's scale_rewards: "batch" divides the group-centred rewards by the std of
    the whole batch (ddof 1); "none" (= False) does not divide."""
    r = np.array([1.0, 2.0, 3.0, 5.0, 0.0, 0.0, 1.0, 1.0], np.float32)
    grouped = r.reshape(2, 4)
    centred = grouped - grouped.mean(1, keepdims=True)
    a, _ = adv.group_normalized_advantages(r, 4, "batch")
    np.testing.assert_allclose(a.numpy(), (centred / (r.std(ddof=1) + 1e-4)).ravel(),
                               rtol=1e-6)
    for none in ("none", False):
        a, _ = adv.group_normalized_advantages(r, 4, none)
        np.testing.assert_allclose(a.numpy(), centred.ravel(), rtol=1e-6)
    # Skipped samples are in neither the batch std nor the group means.
    valid = np.array([1, 1, 1, 0, 1, 1, 1, 1], np.float32)
    a, _ = adv.group_normalized_advantages(np.where(valid > 0, r, NAN), 4, "batch",
                                           valid=valid)
    kept = r[valid > 0]
    expected = np.array([-1, 0, 1, 0, -0.5, -0.5, 0.5, 0.5]) / (kept.std(ddof=1) + 1e-4)
    np.testing.assert_allclose(a.numpy(), expected, rtol=1e-5)
    with pytest.raises(ValueError, match="scale_rewards"):
        adv.group_normalized_advantages(r, 4, "global")


def test_moving_average_weights_skip_samples():
    avg, cnt = adv.update_moving_average(0.0, 0.0, [1.0, NAN, 3.0], 0.9,
                                         weights=[1.0, 0.0, 1.0])
    assert float(avg) == 2.0 and float(cnt) == 1.0
    avg, cnt = adv.update_moving_average(avg, cnt, [NAN], 0.9, weights=[0.0])  # all skipped
    assert float(avg) == 2.0 and float(cnt) == 1.0


# ----------------------------------------------------------------------------------
# sequence scores -> tokens
# ----------------------------------------------------------------------------------


def test_sequence_score_to_token_rewards():
    mask = np.array([[1, 1, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0], [1, 0, 1, 0]], np.float32)
    got = adv.sequence_score_to_token_rewards([1.0, 2.0, 3.0, -4.0], mask).numpy()
    expected = [[0, 0, 1, 0], [0, 0, 0, 2], [0, 0, 0, 0], [0, 0, -4, 0]]
    np.testing.assert_array_equal(got, np.array(expected, np.float32))


def test_broadcast_sequence_advantages():
    mask = np.array([[1, 1, 0], [0, 0, 0]], np.float32)
    got = adv.broadcast_sequence_advantages([2.0, 5.0], mask).numpy()
    np.testing.assert_array_equal(got, [[2, 2, 0], [0, 0, 0]])


def test_score_to_rewards_then_returns_gives_score_everywhere():
    mask = prefix_mask([2, 4, 1], 4)
    tok = adv.sequence_score_to_token_rewards([1.0, -1.0, 0.5], mask)
    got = adv.discounted_returns(tok, mask).numpy()
    np.testing.assert_array_equal(got, mask * np.array([[1.0], [-1.0], [0.5]]))


# ----------------------------------------------------------------------------------
# inside tf.function with unknown batch (and time) dimensions
# ----------------------------------------------------------------------------------


def test_everything_in_tf_function_with_unknown_dims():
    bt = tf.TensorSpec([None, None], tf.float32)
    b = tf.TensorSpec([None], tf.float32)

    @tf.function(input_signature=[bt, bt, bt, b])
    def run(rewards, values, mask, scores):
        a, r = adv.generalized_advantage_estimation(rewards, values, mask, 0.9, 0.95)
        return {
            "ret": adv.discounted_returns(rewards, mask, 0.9),
            "a": a,
            "r": r,
            "w": adv.whiten(a, mask),
            "tok": adv.sequence_score_to_token_rewards(scores, mask),
            "bc": adv.broadcast_sequence_advantages(scores, mask),
            "rloo": adv.rloo_advantages(scores, 2),
            "grpo": adv.group_normalized_advantages(scores, 2)[0],
            "ema": adv.update_moving_average(0.0, 0.0, scores, 0.9)[0],
        }

    rng = np.random.default_rng(6)
    for batch, length in [(4, 5), (6, 3)]:
        mask = prefix_mask(rng.integers(0, length + 1, size=batch), length)
        rewards = rng.normal(size=(batch, length)).astype(np.float32)
        values = rng.normal(size=(batch, length)).astype(np.float32)
        scores = rng.normal(size=batch).astype(np.float32)
        out = run(rewards, values, mask, scores)
        ref_a, ref_r = ref_gae(rewards, values, mask, 0.9, 0.95)
        np.testing.assert_allclose(out["a"].numpy(), ref_a, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(out["ret"].numpy(), ref_returns(rewards, mask, 0.9),
                                   rtol=1e-5, atol=1e-5)
        assert out["tok"].shape == (batch, length) and out["rloo"].shape == (batch,)
    assert run.experimental_get_tracing_count() == 1
