"""Tests for tfpg.losses: hand computations, numpy references, gradients, Keras fit."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfpg import losses as L

NEG_INF = float("-inf")


def np_log_softmax(x):
    x = np.asarray(x, np.float64)
    m = np.max(x, axis=-1, keepdims=True)
    z = x - m
    return z - np.log(np.sum(np.exp(z), axis=-1, keepdims=True))


def random_logits(shape, seed=0, scale=2.0):
    return (np.random.default_rng(seed).normal(size=shape) * scale).astype(np.float32)


# ----------------------------------------------------------------------------------
# token_log_probs
# ----------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 0.7, 2.5])
def test_token_log_probs_vs_numpy(temperature):
    logits = random_logits((3, 4, 7))
    ids = np.random.default_rng(1).integers(0, 7, size=(3, 4))
    got = L.token_log_probs(logits, ids, temperature=temperature).numpy()
    ref = np.take_along_axis(np_log_softmax(logits / temperature), ids[..., None], -1)[..., 0]
    assert got.dtype == np.float32 and got.shape == (3, 4)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_token_log_probs_hand():
    logits = np.log(np.array([[[0.5, 0.25, 0.25]]], np.float32))
    got = L.token_log_probs(logits, [[1]]).numpy()
    np.testing.assert_allclose(got, [[np.log(0.25)]], rtol=1e-6)
    # temperature 0.5 squares the probabilities: (0.25^2) / (0.25 + 0.0625 + 0.0625)
    got = L.token_log_probs(logits, [[1]], temperature=0.5).numpy()
    np.testing.assert_allclose(got, [[np.log(0.0625 / 0.375)]], rtol=1e-6)


def test_token_log_probs_with_filtered_logits():
    # top-2 filtering left -inf on the other entries; kept tokens are exact, no NaN.
    raw = np.array([[[2.0, 1.0, 0.5, -1.0]]], np.float32)
    filtered = np.array([[[2.0, 1.0, NEG_INF, NEG_INF]]], np.float32)
    logits = tf.Variable(filtered)
    with tf.GradientTape() as tape:
        lp = L.token_log_probs(logits, [[1]], temperature=0.8)
    expected = np_log_softmax(raw[..., :2] / 0.8)[0, 0, 1]
    np.testing.assert_allclose(lp.numpy(), [[expected]], rtol=1e-6)
    grad = tape.gradient(lp, logits).numpy()
    assert np.all(np.isfinite(grad)) and np.all(grad[..., 2:] == 0)
    # A token outside the support gets -inf; the mask argument zeroes it (and its grad).
    assert L.token_log_probs(filtered, [[3]]).numpy()[0, 0] == NEG_INF
    with tf.GradientTape() as tape:
        lp = L.token_log_probs(logits, [[3]], mask=[[0.0]])
        loss = tf.reduce_sum(tf.exp(lp))
    assert lp.numpy()[0, 0] == 0.0
    assert np.all(np.isfinite(tape.gradient(loss, logits).numpy()))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_token_log_probs_low_precision_logits_are_float32(dtype):
    logits = random_logits((2, 3, 5))
    got = L.token_log_probs(tf.cast(logits, dtype), [[0, 1, 2], [3, 4, 0]])
    assert got.dtype == tf.float32
    ref = L.token_log_probs(tf.cast(tf.cast(logits, dtype), tf.float32), [[0, 1, 2], [3, 4, 0]])
    np.testing.assert_array_equal(got.numpy(), ref.numpy())


# ----------------------------------------------------------------------------------
# entropy
# ----------------------------------------------------------------------------------


def test_entropy_uniform_is_log_v():
    got = L.entropy(np.zeros((2, 3, 11), np.float32)).numpy()
    np.testing.assert_allclose(got, np.full((2, 3), np.log(11)), rtol=1e-6)


def test_entropy_vs_numpy_and_temperature():
    logits = random_logits((2, 3, 6), seed=2)
    for temperature in (1.0, 0.5):
        lp = np_log_softmax(logits / temperature)
        ref = -(np.exp(lp) * lp).sum(-1)
        np.testing.assert_allclose(L.entropy(logits, temperature).numpy(), ref, rtol=1e-5)


def test_entropy_with_neg_inf_entries():
    logits = tf.Variable([[[0.0, 0.0, NEG_INF, NEG_INF], [5.0, NEG_INF, NEG_INF, NEG_INF]]])
    with tf.GradientTape() as tape:
        h = L.entropy(logits)
    np.testing.assert_allclose(h.numpy(), [[np.log(2), 0.0]], atol=1e-7)
    grad = tape.gradient(h, logits).numpy()
    assert np.all(np.isfinite(grad))


# ----------------------------------------------------------------------------------
# KL
# ----------------------------------------------------------------------------------


def test_kl_penalty_hand():
    lp = np.array([[np.log(0.5), np.log(0.2)]], np.float32)
    ref = np.array([[np.log(0.25), np.log(0.4)]], np.float32)
    d = np.log(0.25 / 0.5), np.log(0.4 / 0.2)  # log(ref/pi) = -log 2, log 2
    np.testing.assert_allclose(L.kl_penalty(lp, ref, "k1").numpy(), [[np.log(2), -np.log(2)]],
                               rtol=1e-6)
    np.testing.assert_allclose(L.kl_penalty(lp, ref, "k2").numpy(),
                               [[0.5 * d[0] ** 2, 0.5 * d[1] ** 2]], rtol=1e-6)
    np.testing.assert_allclose(L.kl_penalty(lp, ref, "k3").numpy(),
                               [[0.5 + np.log(2) - 1, 2 - np.log(2) - 1]], rtol=1e-5)
    assert np.all(L.kl_penalty(lp, lp, "k3").numpy() == 0)
    with pytest.raises(ValueError):
        L.kl_penalty(lp, ref, "k4")


def test_full_kl_vs_numpy_zero_when_equal_and_neg_inf():
    logits = random_logits((2, 3, 5), seed=3)
    ref_logits = random_logits((2, 3, 5), seed=4)
    p, q = np_log_softmax(logits), np_log_softmax(ref_logits)
    expected = (np.exp(p) * (p - q)).sum(-1)
    np.testing.assert_allclose(L.full_kl(logits, ref_logits).numpy(), expected, rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(L.full_kl(logits, logits).numpy(), 0.0, atol=1e-6)
    # Filtered policy logits: KL of the renormalised support, finite, finite gradients.
    pol = tf.Variable(np.where(np.arange(5) < 2, logits, NEG_INF).astype(np.float32))
    with tf.GradientTape() as tape:
        kl = L.full_kl(pol, ref_logits)
    p2 = np_log_softmax(logits[..., :2])
    expected = (np.exp(p2) * (p2 - q[..., :2])).sum(-1)
    np.testing.assert_allclose(kl.numpy(), expected, rtol=1e-5, atol=1e-6)
    assert np.all(np.isfinite(tape.gradient(kl, pol).numpy()))


def test_k1_and_k3_monte_carlo_match_full_kl():
    rng = np.random.default_rng(7)
    V, N = 6, 200_000
    logits = random_logits((1, 1, V), seed=8, scale=1.0)
    ref_logits = random_logits((1, 1, V), seed=9, scale=1.0)
    exact = float(L.full_kl(logits, ref_logits).numpy()[0, 0])
    p = np.exp(np_log_softmax(logits[0, 0]))
    samples = rng.choice(V, size=N, p=p / p.sum())
    lp = L.token_log_probs(np.broadcast_to(logits, (1, N, V)), samples[None]).numpy()
    ref_lp = L.token_log_probs(np.broadcast_to(ref_logits, (1, N, V)), samples[None]).numpy()
    k1 = L.kl_penalty(lp, ref_lp, "k1").numpy()
    k2 = L.kl_penalty(lp, ref_lp, "k2").numpy()
    k3 = L.kl_penalty(lp, ref_lp, "k3").numpy()
    assert exact > 0.05
    for k in (k1, k3):
        stderr = k.std() / np.sqrt(N)
        assert abs(k.mean() - exact) < 4 * stderr + 1e-4, (k.mean(), exact, stderr)
    assert np.all(k3 >= 0) and np.all(k2 >= 0)


# ----------------------------------------------------------------------------------
# PPO
# ----------------------------------------------------------------------------------


def test_ppo_ratio_one():
    lp = np.log(np.array([[0.3, 0.6, 0.1]], np.float32))
    adv = np.array([[1.5, -2.0, 0.0]], np.float32)
    loss, ratio, clipped = L.ppo_clipped_surrogate(lp, lp, adv)
    np.testing.assert_allclose(ratio.numpy(), 1.0)
    np.testing.assert_allclose(loss.numpy(), -adv)
    assert np.all(clipped.numpy() == 0)


def test_ppo_clipping_cases():
    ratio = np.array([1.5, 1.5, 0.5, 0.5, 1.1, 0.9, 1.5], np.float32)
    adv = np.array([1.0, -1.0, 1.0, -1.0, 2.0, -2.0, 0.0], np.float32)
    old = np.zeros((1, 7), np.float32)
    new = tf.Variable(np.log(ratio)[None])
    with tf.GradientTape() as tape:
        loss, r, clipped = L.ppo_clipped_surrogate(new, old, adv[None], clip_epsilon=0.2)
        total = tf.reduce_sum(loss)
    np.testing.assert_allclose(r.numpy()[0], ratio, rtol=1e-6)
    np.testing.assert_allclose(loss.numpy()[0], [-1.2, 1.5, -0.5, 0.8, -2.2, 1.8, 0.0],
                               rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(clipped.numpy()[0], [1, 0, 0, 1, 0, 0, 0])
    # d loss / d log_prob = -A * ratio where unclipped, 0 where clipped.
    grad = tape.gradient(total, new).numpy()[0]
    np.testing.assert_allclose(grad, [0.0, 1.5, -0.5, 0.0, -2.2, 1.8, 0.0], rtol=1e-6,
                               atol=1e-7)


def test_ppo_stop_gradients_and_mask():
    new = tf.Variable([[0.1, NEG_INF]])
    old = tf.Variable([[0.0, 0.0]])
    adv = tf.Variable([[1.0, 3.0]])
    with tf.GradientTape(persistent=True) as tape:
        loss, ratio, clipped = L.ppo_clipped_surrogate(new, old, adv, mask=[[1.0, 0.0]])
        total = tf.reduce_sum(loss)
    assert tape.gradient(total, adv) is None
    assert tape.gradient(total, old) is None
    grad = tape.gradient(total, new).numpy()
    np.testing.assert_allclose(grad, [[-np.exp(0.1), 0.0]], rtol=1e-6)
    assert loss.numpy()[0, 1] == 0 and ratio.numpy()[0, 1] == 1 and clipped.numpy()[0, 1] == 0


# ----------------------------------------------------------------------------------
# value loss
# ----------------------------------------------------------------------------------


def test_value_loss_unclipped_and_clipped():
    values = tf.Variable([[1.0, 3.0, 0.0, 2.0]])
    returns = tf.Variable([[0.0, 2.0, 0.0, 0.0]])
    old = np.array([[0.5, 2.5, 0.0, 2.5]], np.float32)
    with tf.GradientTape(persistent=True) as tape:
        plain = L.value_loss(values, returns)
        clipped = L.value_loss(values, returns, old_values=old, clip_range=0.2)
        total = tf.reduce_sum(clipped)
    np.testing.assert_allclose(plain.numpy(), [[0.5, 0.5, 0.0, 2.0]])
    # clip(v, old-0.2, old+0.2): [0.7, 2.7, 0.0, 2.3] -> (.-R)^2: [0.49, 0.49, 0, 5.29]
    np.testing.assert_allclose(clipped.numpy(), [[0.5, 0.5, 0.0, 0.5 * 5.29]], rtol=1e-6)
    assert tape.gradient(total, returns) is None
    # Where the clipped term wins (last entry) the value gets no gradient.
    np.testing.assert_allclose(tape.gradient(total, values).numpy(), [[1.0, 1.0, 0.0, 0.0]])
    assert np.all(L.value_loss(values, returns, old_values=old).numpy() == plain.numpy())
    with pytest.raises(ValueError):
        L.value_loss(values, returns, clip_range=0.2)


# ----------------------------------------------------------------------------------
# aggregation and masked helpers
# ----------------------------------------------------------------------------------

LOSS = np.array([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0], [9.0, 9.0, 9.0, 9.0]], np.float32)
MASK = np.array([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]], np.float32)


@pytest.mark.parametrize(
    "mode,normalizer,expected",
    [
        ("token_mean", None, (1 + 2 + 5 + 6 + 7 + 8) / 6),
        ("sequence_mean", None, (1.5 + 6.5 + 0.0) / 3),
        ("sequence_sum", None, (3 + 26) / 3),
        ("constant", 8, 29 / (3 * 8)),
        ("rollout_token_mean", 12, 29 / 12),
    ],
)
def test_aggregate_modes_exact(mode, normalizer, expected):
    got = L.aggregate_loss(LOSS, MASK, mode, normalizer=normalizer)
    assert got.shape == () and float(got) == pytest.approx(expected, rel=1e-6)
    num, den = L.aggregate_loss_terms(LOSS, MASK, mode, normalizer=normalizer)
    assert float(num) / float(den) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("mode", L.AGGREGATION_MODES)
def test_aggregate_ignores_garbage_and_all_masked_is_zero(mode):
    garbage = np.where(MASK > 0, LOSS, np.nan).astype(np.float32)
    garbage[2, 0] = np.inf
    a = L.aggregate_loss(garbage, MASK, mode, normalizer=4)
    b = L.aggregate_loss(LOSS, MASK, mode, normalizer=4)
    assert float(a) == float(b)
    zero = L.aggregate_loss(garbage, np.zeros_like(MASK), mode, normalizer=4)
    assert float(zero) == 0.0


# "rollout_token_mean" takes its denominator from outside (the rollout's count).
@pytest.mark.parametrize("mode", [m for m in L.AGGREGATION_MODES if m != "rollout_token_mean"])
def test_aggregate_global_denominator_sums_over_replicas(mode):
    rng = np.random.default_rng(10)
    loss = rng.normal(size=(6, 5)).astype(np.float32)
    mask = (np.arange(5)[None] < rng.integers(0, 6, size=(6, 1))).astype(np.float32)
    single = float(L.aggregate_loss(loss, mask, mode, normalizer=5))
    shards = [(loss[:2], mask[:2]), (loss[2:], mask[2:])]  # unequal replica batches
    dens = [float(L.aggregate_loss_terms(x, m, mode, normalizer=5)[1]) for x, m in shards]
    parts = [float(L.aggregate_loss(x, m, mode, normalizer=5, global_denominator=sum(dens)))
             for x, m in shards]
    assert sum(parts) == pytest.approx(single, rel=1e-5, abs=1e-6)


def test_aggregate_errors():
    with pytest.raises(ValueError):
        L.aggregate_loss(LOSS, MASK, "constant")
    with pytest.raises(ValueError):
        L.aggregate_loss(LOSS, MASK, "mean")


def test_masked_mean_and_sum():
    np.testing.assert_allclose(float(L.masked_sum(LOSS, MASK)), 29.0)
    np.testing.assert_allclose(float(L.masked_mean(LOSS, MASK)), 29.0 / 6)
    np.testing.assert_allclose(L.masked_sum(LOSS, MASK, axis=1).numpy(), [3.0, 26.0, 0.0])
    np.testing.assert_allclose(L.masked_mean(LOSS, MASK, axis=1).numpy(), [1.5, 6.5, 0.0])
    np.testing.assert_allclose(L.masked_mean(LOSS, MASK, axis=0).numpy(), [3, 4, 7, 8])
    # rank-1 (per-sequence metrics) and a NaN where masked
    np.testing.assert_allclose(float(L.masked_mean([1.0, np.nan, 3.0], [1.0, 0.0, 1.0])), 2.0)


def test_policy_gradient_loss_gradient_flows_only_into_log_probs():
    logits = tf.Variable(random_logits((2, 3, 4), seed=11))
    adv = tf.Variable([[1.0, 1.0, 0.0], [-2.0, -2.0, -2.0]])
    mask = tf.constant([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    ids = tf.constant([[0, 1, 2], [3, 2, 1]])
    with tf.GradientTape() as tape:
        lp = L.token_log_probs(logits, ids, mask=mask)
        loss = L.aggregate_loss(-tf.stop_gradient(adv) * lp, mask, "token_mean")
    g_logits, g_adv = tape.gradient(loss, [logits, adv])
    assert g_adv is None
    # d/dlogits of -A * log_softmax(logits)[id] / N = -A (onehot - p) / N
    p = np.exp(np_log_softmax(logits.numpy()))
    onehot = np.eye(4)[ids.numpy()]
    expected = -(adv.numpy() * mask.numpy())[..., None] * (onehot - p) / 5.0
    np.testing.assert_allclose(g_logits.numpy(), expected, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------
# tf.function with unknown dimensions
# ----------------------------------------------------------------------------------


def test_losses_in_tf_function_with_unknown_dims():
    bt = tf.TensorSpec([None, None], tf.float32)
    btv = tf.TensorSpec([None, None, 5], tf.float32)

    @tf.function(input_signature=[btv, btv, tf.TensorSpec([None, None], tf.int32), bt, bt])
    def run(logits, ref_logits, ids, adv, mask):
        lp = L.token_log_probs(logits, ids, temperature=0.9, mask=mask)
        ref = L.token_log_probs(ref_logits, ids, temperature=0.9, mask=mask)
        loss, ratio, clipped = L.ppo_clipped_surrogate(lp, ref, adv, mask=mask)
        out = {"kl3": L.kl_penalty(lp, ref, "k3"), "full": L.full_kl(logits, ref_logits),
               "ent": L.entropy(logits), "vl": L.value_loss(lp, adv, ref, 0.2)}
        for mode in L.AGGREGATION_MODES:
            out[mode] = L.aggregate_loss(loss, mask, mode, normalizer=7)
        out["mm"] = L.masked_mean(clipped, mask)
        return out

    for batch, length in [(3, 4), (5, 2)]:
        logits = random_logits((batch, length, 5), seed=batch)
        ref_logits = random_logits((batch, length, 5), seed=batch + 1)
        ids = np.random.default_rng(batch).integers(0, 5, size=(batch, length)).astype(np.int32)
        adv = np.ones((batch, length), np.float32)
        mask = np.ones((batch, length), np.float32)
        out = run(logits, ref_logits, ids, adv, mask)
        assert out["kl3"].shape == (batch, length) and out["token_mean"].shape == ()
        eager = L.aggregate_loss(
            L.ppo_clipped_surrogate(L.token_log_probs(logits, ids, 0.9),
                                    L.token_log_probs(ref_logits, ids, 0.9), adv)[0],
            mask, "sequence_mean")
        np.testing.assert_allclose(out["sequence_mean"].numpy(), eager.numpy(), rtol=1e-6)
    assert run.experimental_get_tracing_count() == 1


# ----------------------------------------------------------------------------------
# AdvantageWeightedCrossentropy
# ----------------------------------------------------------------------------------

B, T, V = 4, 5, 6


def awc_data(seed=12):
    rng = np.random.default_rng(seed)
    logits = random_logits((B, T, V), seed=seed)
    y = rng.integers(1, V, size=(B, T)).astype(np.int32)
    y[0, 3:] = 0
    y[2, 1:] = 0
    adv = rng.normal(size=B).astype(np.float32)
    return logits, y, adv


def awc_reference(logits, y, weights):
    """-sum_{b,t} w_bt log pi(y_bt) m_bt / sum m."""
    m = (y != 0).astype(np.float64)
    lp = np.take_along_axis(np_log_softmax(logits), y[..., None], -1)[..., 0]
    w = np.broadcast_to(np.asarray(weights, np.float64).reshape(B, -1), (B, T))
    return -(w * lp * m).sum() / m.sum()


def test_awc_direct_call_per_sequence_and_per_token_weights():
    logits, y, adv = awc_data()
    loss = L.AdvantageWeightedCrossentropy()
    np.testing.assert_allclose(float(loss(y, logits, sample_weight=adv)),
                               awc_reference(logits, y, adv), rtol=1e-5)
    per_token = np.random.default_rng(13).normal(size=(B, T)).astype(np.float32)
    np.testing.assert_allclose(float(loss(y, logits, sample_weight=per_token)),
                               awc_reference(logits, y, per_token), rtol=1e-5)
    # [B, 1] works as [B]
    np.testing.assert_allclose(float(loss(y, logits, sample_weight=adv[:, None])),
                               awc_reference(logits, y, adv), rtol=1e-5)
    # No weights: Keras' own masked sparse cross-entropy.
    scce = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=0)
    np.testing.assert_allclose(float(loss(y, logits)), float(scce(y, logits)), rtol=1e-5)
    # per-token values from call(), zero at pads
    per = loss.call(y, logits).numpy()
    assert per.shape == (B, T) and np.all(per[y == 0] == 0)


def test_awc_reductions_and_probabilities():
    logits, y, adv = awc_data()
    m = (y != 0).astype(np.float64)
    total = awc_reference(logits, y, adv) * m.sum()
    got_sum = L.AdvantageWeightedCrossentropy(reduction="sum")(y, logits, adv)
    np.testing.assert_allclose(float(got_sum), total, rtol=1e-5)
    got_none = L.AdvantageWeightedCrossentropy(reduction=None)(y, logits, adv)
    assert got_none.shape == (B, T)
    np.testing.assert_allclose(float(tf.reduce_sum(got_none)), total, rtol=1e-5)
    probs = tf.nn.softmax(logits)
    got_p = L.AdvantageWeightedCrossentropy(from_logits=False)(y, probs, adv)
    np.testing.assert_allclose(float(got_p), awc_reference(logits, y, adv), rtol=1e-4)
    # ignore_class=None counts every position
    got_all = L.AdvantageWeightedCrossentropy(ignore_class=None)(y, logits)
    lp = np.take_along_axis(np_log_softmax(logits), y[..., None], -1)[..., 0]
    np.testing.assert_allclose(float(got_all), -lp.mean(), rtol=1e-5)


def tiny_lm():
    inp = keras.Input((T,), dtype="int32")
    h = keras.layers.Embedding(V, 8)(inp)
    out = keras.layers.Dense(V)(h)
    return keras.Model(inp, out)


def test_awc_with_keras_compile_evaluate_and_fit():
    keras.utils.set_random_seed(0)
    _, y, adv = awc_data()
    x = np.random.default_rng(14).integers(1, V, size=(B, T)).astype(np.int32)
    model = tiny_lm()
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=L.AdvantageWeightedCrossentropy())
    logits = model(x).numpy()
    expected = awc_reference(logits, y, adv)
    got = model.evaluate(x, y, sample_weight=adv, batch_size=B, verbose=0)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    got = model.compute_loss(x=x, y=y, y_pred=model(x), sample_weight=adv)
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)
    # One SGD step through fit equals the hand-computed gradient step on the logits'
    # last layer: check the reported loss and that the update follows -grad.
    kernel = model.layers[-1].kernel
    before = kernel.numpy().copy()
    with tf.GradientTape() as tape:
        manual = L.AdvantageWeightedCrossentropy()(y, model(x), sample_weight=adv)
    grad = tape.gradient(manual, kernel).numpy()
    history = model.fit(x, y, sample_weight=adv, batch_size=B, epochs=1, shuffle=False,
                        verbose=0)
    np.testing.assert_allclose(history.history["loss"][0], expected, rtol=1e-5)
    np.testing.assert_allclose(kernel.numpy(), before - 0.1 * grad, rtol=1e-4, atol=1e-6)


def test_awc_config_and_serialization():
    loss = L.AdvantageWeightedCrossentropy(from_logits=False, ignore_class=-1,
                                           reduction="sum", name="awc")
    config = loss.get_config()
    assert config["from_logits"] is False and config["ignore_class"] == -1
    assert config["reduction"] == "sum" and config["name"] == "awc"
    clone = L.AdvantageWeightedCrossentropy.from_config(config)
    assert clone.get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert isinstance(restored, L.AdvantageWeightedCrossentropy)
    assert restored.get_config() == config
