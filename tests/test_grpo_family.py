"""The GRPO family (DAPO, Dr. GRPO, GSPO) against hand computations of TRL's formulas."""

import numpy as np
import pytest
import tensorflow as tf

import keras
import tfpg
from tfpg import losses as L
from tfpg.algorithms import GRPO
from tfpg.rewards import OverlongPenalty, WeightedSum, compute_rewards

VOCAB = 8
N = 6


def count_fives(prompt_ids, completion_ids, completion_mask, batch):
    hits = tf.cast(tf.equal(completion_ids, 5), tf.float32) * completion_mask
    return tf.reduce_sum(hits, axis=1) / tf.maximum(tf.reduce_sum(completion_mask, 1), 1.0)


def one_batch(rows=4):
    prompts = tf.constant([[1, 4], [1, 6], [1, 7], [0, 1]][:rows], tf.int32)
    return tf.data.Dataset.from_tensors({"prompt": prompts})


def grpo(learning_rate=1e-2, **options):
    keras.utils.set_random_seed(0)
    options = {"group_size": 4, "max_new_tokens": N, "eos_id": 2, "seed": 0, **options}
    agent = GRPO(tfpg.PolicyNetwork(VOCAB, 16, 32), count_fives, **options)
    agent.compile(optimizer=keras.optimizers.SGD(learning_rate))
    return agent


def trl_loss(loss_type, advantages, mask, rollout_mask):
    """TRL 1.16's aggregation of the per-token loss -A (every ratio 1) of one
    minibatch (advantages, mask [b, N]) drawn from a rollout (rollout_mask)."""
    loss = -advantages * mask
    return {"grpo": np.mean(loss.sum(1) / np.maximum(mask.sum(1), 1)),
            "bnpo": loss.sum() / mask.sum(),
            "dr_grpo": loss.sum() / (len(mask) * N),
            "dapo": loss.sum() / rollout_mask.sum(),   # the whole generation batch's tokens
            }[loss_type]


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_loss_types_with_two_minibatches_match_trl(loss_type):
    """Each of 2 minibatch losses is TRL's aggregation; with a learning rate of 0
    every ratio is 1 and the logged `policy_loss` of a step is their mean."""
    agent = grpo(learning_rate=0.0, loss_type=loss_type, kl_coef=0.0, num_minibatches=2)
    rollout, batch = agent.collect_rollout({"prompt": tf.constant([[1, 4], [1, 6], [1, 7],
                                                                   [0, 1]])})
    rollout.update(agent.compute_advantages(rollout, batch))
    mask = rollout["loss_mask"].numpy()
    assert 0 < mask.sum() < mask.size                     # lengths differ (EOS)
    minibatches = agent.minibatch_rows(rollout)
    for index in range(2):
        minibatch = minibatches(tf.constant(index))
        _, _, logs = agent.loss_and_gradients(minibatch, tf.reduce_sum(rollout["loss_mask"]))
        expected = trl_loss(loss_type, minibatch["advantages"].numpy(),
                            minibatch["loss_mask"].numpy(), mask)
        assert abs(expected) > 1e-3
        assert float(logs["policy_loss"]) == pytest.approx(expected, rel=1e-5)

    # The same through fit (the update loop hands the rollout's token count on).
    history = agent.fit(one_batch(), epochs=1, verbose=0).history
    rollout = agent.last_rollout
    advantages, mask = rollout["advantages"].numpy(), rollout["completion_mask"].numpy()
    agent.optimizer.iterations.assign(0)                  # the step's permutation again
    minibatches = agent.minibatch_rows({"completion_mask": rollout["completion_mask"],
                                         "row": tf.range(16)})
    rows = [minibatches(tf.constant(index))["row"].numpy() for index in range(2)]
    expected = np.mean([trl_loss(loss_type, advantages[r], mask[r], mask) for r in rows])
    assert history["policy_loss"][0] == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_gspo_ratio_clipping_and_gradient():
    """importance_sampling_level="sequence": one ratio per row, exp of the mean
    token log-ratio over its real tokens; the gradient flows through that mean."""
    rng = np.random.default_rng(0)
    old = rng.normal(-1.5, 0.3, size=(3, 4)).astype(np.float32)
    shift = np.array([[0.1, 0.3, -0.2, 9.0], [0.5, 0.4, 0.6, 0.2], [-0.6, -0.4, 0.0, 0.0]],
                     np.float32)
    mask = np.array([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0]], np.float32)
    advantages = np.array([[2.0] * 4, [1.0] * 4, [-1.0] * 4], np.float32) * mask
    new = tf.Variable(old + shift)
    with tf.GradientTape() as tape:
        loss, ratio, clipped = L.ppo_clipped_surrogate(
            new, old, advantages, 0.2, mask, importance_sampling_level="sequence")
        total = tf.reduce_sum(loss)
    sequence_ratio = np.exp((shift * mask).sum(1) / mask.sum(1))   # 9.0 is masked out
    np.testing.assert_allclose(ratio.numpy(), np.where(mask > 0, sequence_ratio[:, None], 1),
                               rtol=1e-5)
    clip = np.clip(sequence_ratio, 0.8, 1.2)
    per_row = np.maximum(-advantages[:, 0] * sequence_ratio, -advantages[:, 0] * clip)
    np.testing.assert_allclose(loss.numpy(), per_row[:, None] * mask, rtol=1e-5)
    # Row 0: ratio 1.07 unclipped; row 1: 1.54 > 1.2 with A > 0, clipped; row 2:
    # 0.61 < 0.8 with A < 0, clipped.
    np.testing.assert_allclose(clipped.numpy(), [[0, 0, 0, 0], [1, 1, 1, 1], [1, 1, 0, 0]])
    # Row 0 puts -A rho on each of its 3 tokens; each depends on every log pi_t of
    # the row through the mean: d total / d log pi_t = 3 (-A rho / 3) = -A rho.
    # Clipped rows get no gradient.
    expected = np.zeros_like(old)
    expected[0, :3] = -2.0 * sequence_ratio[0]
    np.testing.assert_allclose(tape.gradient(total, new).numpy(), expected, rtol=1e-5,
                               atol=1e-7)


def test_clip_higher_raises_only_the_upper_clip():
    ratio = np.array([[1.1, 1.25, 1.3, 0.75, 0.85]], np.float32)
    advantages = np.array([[1.0, 1.0, 1.0, -1.0, -1.0]], np.float32)
    mask = np.ones_like(ratio)
    log_ratio = np.log(ratio)
    zeros = np.zeros_like(ratio)
    _, _, symmetric = L.ppo_clipped_surrogate(log_ratio, zeros, advantages, 0.2, mask)
    loss, _, higher = L.ppo_clipped_surrogate(log_ratio, zeros, advantages, 0.2, mask,
                                              clip_epsilon_high=0.28)
    np.testing.assert_array_equal(symmetric.numpy(), [[0, 1, 1, 1, 0]])   # fraction 0.6
    np.testing.assert_array_equal(higher.numpy(), [[0, 0, 1, 1, 0]])      # fraction 0.4
    np.testing.assert_allclose(loss.numpy(), [[-1.1, -1.25, -1.28, 0.8, 0.85]], rtol=1e-6)

    # In the trainer: the logged clip_fraction is the token mean of that indicator.
    agent = grpo(learning_rate=0.7, num_epochs=4, clip_epsilon_high=0.28, kl_coef=0.0)
    symmetric = grpo(learning_rate=0.7, num_epochs=4, kl_coef=0.0)
    high = agent.fit(one_batch(), epochs=1, verbose=0).history["clip_fraction"][0]
    low = symmetric.fit(one_batch(), epochs=1, verbose=0).history["clip_fraction"][0]
    assert 0 < high < low


def test_scale_rewards_batch_in_the_trainer():
    agent = grpo(scale_rewards="batch")
    agent.fit(one_batch(), epochs=1, verbose=0)
    scores = agent.last_rollout["scores"].numpy()
    grouped = scores.reshape(-1, 4)
    expected = (grouped - grouped.mean(1, keepdims=True)) / (scores.std(ddof=1) + 1e-4)
    expected[grouped.max(1) == grouped.min(1)] = 0.0
    np.testing.assert_allclose(agent.last_rollout["advantages"].numpy()[:, 0],
                               expected.ravel(), rtol=1e-5, atol=1e-6)
    assert grpo(scale_rewards=True).scale_rewards == "group"
    assert grpo(scale_rewards=False).scale_rewards == "none"
    with pytest.raises(ValueError, match="scale_rewards"):
        grpo(scale_rewards="global")


def test_mask_truncated_completions_gives_zero_gradient_when_all_are_truncated():
    prompts = {"prompt": tf.constant([[1, 4], [1, 6]])}
    # eos_id=None: every completion runs to max_new_tokens, so every one is truncated.
    agent = grpo(eos_id=None, mask_truncated_completions=True, entropy_coef=0.01)
    gradients = agent.gradients(prompts)
    assert all(float(tf.reduce_max(tf.abs(tf.convert_to_tensor(g)))) == 0.0
               for g in gradients if g is not None)
    plain = grpo(eos_id=None, entropy_coef=0.01).gradients(prompts)
    assert max(float(tf.reduce_max(tf.abs(tf.convert_to_tensor(g))))
               for g in plain if g is not None) > 0


VARIANTS = {
    "dapo": dict(loss_type="dapo", clip_epsilon_high=0.28, mask_truncated_completions=True),
    "dr_grpo": dict(loss_type="dr_grpo", scale_rewards="none"),
    "gspo": dict(importance_sampling_level="sequence", clip_epsilon=3e-4,
                 clip_epsilon_high=4e-4),
    "batch_scale": dict(scale_rewards="batch", loss_type="bnpo"),
    "top_entropy": dict(top_entropy_quantile=0.2, top_k=5),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_first_minibatch_has_ratio_one_and_zero_kl_for_every_variant(variant):
    agent = grpo(kl_coef=0.1, **VARIANTS[variant])
    history = agent.fit(one_batch(), epochs=1, verbose=0).history
    assert history["approx_kl"] == [0.0]
    assert history["clip_fraction"] == [0.0]
    assert history["kl"] == [0.0]
    for key, value in VARIANTS[variant].items():
        assert getattr(agent, key) == value


def test_high_entropy_mask_keeps_the_top_quantile_like_torch_quantile():
    rng = np.random.default_rng(3)
    entropies = rng.uniform(0, 2, size=(4, 6)).astype(np.float32)
    mask = (np.arange(6)[None] < np.array([[6], [3], [0], [5]])).astype(np.float32)
    for quantile in (1.0, 0.5, 0.2):
        threshold = np.quantile(entropies[mask > 0], 1 - quantile)   # linear, as torch
        expected = ((entropies >= threshold) & (mask > 0)).astype(np.float32)
        got = L.high_entropy_mask(entropies, mask, quantile).numpy()
        np.testing.assert_array_equal(got, expected)
    assert L.high_entropy_mask(entropies, mask, 0.2).numpy().sum() == 3   # of 14 tokens
    assert L.high_entropy_mask(entropies, np.zeros_like(mask), 0.5).numpy().sum() == 0


def test_overlong_penalty_exact_values_and_in_a_weighted_sum():
    lengths = np.array([1, 4, 5, 6, 7, 8])
    mask = (np.arange(8)[None] < lengths[:, None]).astype(np.float32)
    ids = tf.zeros([6, 8], tf.int32)
    penalty = OverlongPenalty(max_length=7, buffer=3)
    # 0 up to 7 - 3 = 4 tokens, then (4 - L) / 3 up to 7, then -1.
    np.testing.assert_allclose(penalty(None, ids, mask, {}).numpy(),
                               [0, 0, -1 / 3, -2 / 3, -1, -1], rtol=1e-6)
    total = WeightedSum({"length": tfpg.rewards.Length(eos_id=None),
                         "overlong": (penalty, 2.0)})
    result = compute_rewards(total, tf.zeros([6, 1], tf.int32), ids, mask, {})
    np.testing.assert_allclose(result.rewards.numpy(),
                               lengths + 2 * np.array([0, 0, -1 / 3, -2 / 3, -1, -1]),
                               rtol=1e-6)
    assert penalty.get_config() == {"max_length": 7, "buffer": 3, "name": "OverlongPenalty"}
    with pytest.raises(ValueError, match="buffer"):
        OverlongPenalty(7, 0)
