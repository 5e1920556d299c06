"""How rollouts are sampled, scored and reused: the defects of issue 14.

Each test here failed on the code before the fix (named in its docstring).
"""

import numpy as np
import pytest
import tensorflow as tf

import keras
import tfpg
from tfpg.algorithms import A2C, GRPO, PPO, REINFORCE, RLOO, SCST
from tfpg.generation import FILTERED_LOGIT, filter_logits
from tfpg.algorithms.token_scores import support_mask

VOCAB = 8


def count_fives(prompt_ids, completion_ids, completion_mask, batch):
    hits = tf.cast(tf.equal(completion_ids, 5), tf.float32) * completion_mask
    return tf.reduce_sum(hits, axis=1) / tf.maximum(tf.reduce_sum(completion_mask, 1), 1.0)


def nan_rows(every, offset=0):
    """count_fives, NaN on rows r with r % every == offset (skipped with "skip")."""
    def reward(prompt_ids, completion_ids, completion_mask, batch):
        rewards = count_fives(prompt_ids, completion_ids, completion_mask, batch)
        rows = tf.range(tf.shape(rewards)[0])
        return tf.where(rows % every == offset, float("nan"), rewards)
    return reward


def prompts(rows=16):
    return tf.constant([[1, 4], [1, 6], [1, 7], [0, 1]] * (rows // 4), tf.int32)


def compiled(agent, learning_rate=1e-2):
    agent.compile(optimizer=keras.optimizers.Adam(learning_rate))
    return agent


def test_minibatch_order_is_independent_of_the_sampled_tokens():
    """Defect 1. The permutation was seeded like the decode, so minibatch 0 held the
    rows that drew the smallest uniforms at step 0, i.e. the smallest first tokens
    (inverse-CDF sampling): with one prompt for every row, max(minibatch 0) <=
    min(minibatch 1) held for every seed."""
    separated = []
    for seed in range(3):
        keras.utils.set_random_seed(seed)
        agent = compiled(GRPO(tfpg.PolicyNetwork(64, 8, 8), count_fives, group_size=4,
                              max_new_tokens=2, eos_id=None, seed=seed, num_minibatches=2))
        rollout, _ = agent.collect_rollout({"prompt": tf.constant([[1, 9]] * 4)})   # 16 rows
        minibatches = agent.minibatch_rows(rollout)
        first = [minibatches(tf.constant(i))["completion_ids"][:, 0].numpy() for i in (0, 1)]
        assert sorted(np.concatenate(first)) == sorted(rollout["completion_ids"][:, 0].numpy())
        separated.append(first[0].max() <= first[1].min())
    assert not any(separated)


def test_later_epochs_score_old_tokens_on_the_sampled_top_k_support():
    """Defect 2. Later epochs recomputed the top-k support from the updated policy:
    old tokens outside it got log-prob -1e9 and approx_kl read ~1e17."""
    keras.utils.set_random_seed(0)
    agent = compiled(PPO(tfpg.PolicyNetwork(VOCAB, 16, 32), count_fives, top_k=3,
                         value_model=tfpg.ValueNetwork(VOCAB, 16, 32), max_new_tokens=6,
                         eos_id=None, num_epochs=4))
    history = agent.fit(tf.data.Dataset.from_tensors({"prompt": prompts()}), epochs=3,
                        verbose=0).history
    assert max(history["approx_kl"]) < 1.0, history["approx_kl"]
    assert max(history["approx_kl"]) > 0.0        # the policy did move

    # The support is part of the rollout: the first step still has ratio 1 exactly.
    agent = compiled(PPO(tfpg.PolicyNetwork(VOCAB, 16, 32), count_fives, top_k=3,
                         value_model=tfpg.ValueNetwork(VOCAB, 16, 32), max_new_tokens=6,
                         eos_id=None, num_epochs=1))
    history = agent.fit(tf.data.Dataset.from_tensors({"prompt": prompts()}), epochs=1,
                        verbose=0).history
    assert history["approx_kl"] == [0.0]


@pytest.mark.parametrize("options", [{"top_k": 3}, {"top_p": 0.6}, {"top_k": 7, "top_p": 0.9}])
def test_the_rollout_keeps_the_support_compactly(options):
    """Top-k alone keeps the k ids per position ([B, N, k], -1 for none: here only 6
    ids can be drawn), top-p a mask packed to bits ([B, N, ceil(V / 8)] bytes); both
    give back the filtered support."""
    keras.utils.set_random_seed(0)
    agent = compiled(GRPO(tfpg.PolicyNetwork(VOCAB, 8, 8), count_fives, group_size=2,
                          max_new_tokens=3, eos_id=None, **options))
    rollout, _ = agent.collect_rollout({"prompt": prompts(4)})
    support = rollout["support"]
    if "top_p" in options:
        assert support.dtype == tf.uint8 and support.shape == (8, 3, 1)
    else:
        assert support.dtype == tf.int32 and support.shape == (8, 3, 3)
    sequence = tf.concat([rollout["prompt_ids"], rollout["completion_ids"]], axis=1)
    logits = agent.policy(sequence)[:, rollout["prompt_ids"].shape[1] - 1:-1]
    filtered = filter_logits(logits, agent.temperature, agent.top_k, agent.top_p,
                             agent.sampled_suppress_ids)
    np.testing.assert_array_equal(support_mask(support, VOCAB).numpy(),
                                  filtered.numpy() > FILTERED_LOGIT)
    ids = support_mask(tf.constant([[[4, -1, 6]]]), VOCAB).numpy()
    assert ids.tolist() == [[[i in (4, 6) for i in range(VOCAB)]]]


def test_skipped_rewards_leave_the_group_statistics_and_the_moving_average():
    """Defect 3. Skipped samples stayed in GRPO's group mean / std and REINFORCE's
    moving average as reward 0."""
    keras.utils.set_random_seed(0)
    agent = compiled(GRPO(tfpg.PolicyNetwork(VOCAB, 16, 32), nan_rows(4, 2), group_size=4,
                          max_new_tokens=6, eos_id=None, on_invalid_reward="skip",
                          kl_coef=0.0))
    agent.fit(tf.data.Dataset.from_tensors({"prompt": prompts(8)}), epochs=1, verbose=0)
    scores = agent.last_rollout["scores"].numpy().reshape(-1, 4)                 # [8, 4]
    advantages = agent.last_rollout["advantages"].numpy()[:, 0].reshape(-1, 4)
    valid = np.arange(4) != 2
    for group, got in zip(scores, advantages):
        kept = group[valid]
        expected = np.zeros(4)
        if kept.max() > kept.min():
            expected[valid] = (kept - kept.mean()) / (kept.std(ddof=1) + 1e-4)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert np.ptp(scores[:, valid], axis=1).max() > 0      # some group carries signal

    keras.utils.set_random_seed(0)
    agent = compiled(REINFORCE(tfpg.PolicyNetwork(VOCAB, 16, 32), nan_rows(2, 1),
                               baseline="moving_average", max_new_tokens=6, eos_id=None,
                               on_invalid_reward="skip"))
    agent.fit(tf.data.Dataset.from_tensors({"prompt": prompts()}), epochs=1, verbose=0)
    scores = agent.last_rollout["scores"].numpy()
    assert scores[0::2].mean() > 0
    assert float(agent.moving_average) == pytest.approx(scores[0::2].mean(), rel=1e-6)


@pytest.mark.parametrize("trainer", [REINFORCE, SCST, A2C])
@pytest.mark.parametrize("reuse", [{"num_epochs": 2}, {"num_minibatches": 2}])
def test_on_policy_algorithms_refuse_to_reuse_rollouts(trainer, reuse):
    """Defect 4. They accepted several steps per rollout with the plain -A log pi
    loss, a biased gradient on stale samples."""
    options = {"value_model": tfpg.ValueNetwork(VOCAB, 8, 8)} if trainer is A2C else {}
    with pytest.raises(ValueError, match="on-policy"):
        trainer(tfpg.PolicyNetwork(VOCAB, 8, 8), count_fives, **options, **reuse)


def test_rloo_reuses_rollouts_with_a_clipped_sequence_ratio():
    """Defect 4. RLOO with num_epochs > 1 takes TRL's clipped sequence-level ratio;
    its first step has the gradient of plain RLOO."""
    def gradients(**options):
        keras.utils.set_random_seed(0)
        agent = RLOO(tfpg.PolicyNetwork(VOCAB, 8, 8), count_fives, group_size=4,
                     max_new_tokens=4, eos_id=2, seed=3, **options)
        return [tf.convert_to_tensor(g).numpy() for g in agent.gradients({"prompt": prompts(4)})]

    for plain, ratio in zip(gradients(), gradients(num_epochs=2)):
        np.testing.assert_allclose(ratio, plain, rtol=1e-5, atol=1e-7)
    keras.utils.set_random_seed(0)
    agent = compiled(RLOO(tfpg.PolicyNetwork(VOCAB, 8, 8), count_fives, group_size=4,
                          max_new_tokens=4, eos_id=None, num_epochs=3, num_minibatches=2))
    history = agent.fit(tf.data.Dataset.from_tensors({"prompt": prompts(4)}), epochs=2,
                        verbose=0).history
    assert {"clip_fraction", "approx_kl"} <= set(history)
    assert 0 < history["approx_kl"][-1] < 1.0


def test_uneven_minibatches_are_never_empty():
    """Defect 5. 6 rows in 4 minibatches were split 2, 2, 2, 0: Adam stepped on a
    minibatch with no rows."""
    agent = compiled(PPO(tfpg.PolicyNetwork(VOCAB, 8, 8), count_fives,
                         value_model=tfpg.ValueNetwork(VOCAB, 8, 8), num_minibatches=4,
                         num_epochs=2))
    rows = tf.range(6)
    rollout = {"row": rows, "completion_ids": tf.zeros([6, 3], tf.int32),
               "completion_mask": tf.ones([6, 3])}
    minibatch = agent.minibatch_rows(rollout)
    for epoch in range(2):
        parts = [minibatch(tf.constant(epoch * 4 + i))["row"].numpy() for i in range(4)]
        assert sorted(len(part) for part in parts) == [1, 1, 2, 2]
        assert sorted(np.concatenate(parts)) == list(range(6))
    with pytest.raises(ValueError, match="num_minibatches"):
        agent.minibatch_rows({key: value[:3] for key, value in rollout.items()})


def test_pad_and_bos_are_never_sampled():
    """Defect 6. A random Transformer at temperature 3 sampled pad (0) and BOS (1):
    617 of 4,096 tokens."""
    keras.utils.set_random_seed(0)
    policy = tfpg.PolicyNetwork(16, 16, 32, backbone="transformer", max_length=40)
    out = tfpg.generate(policy, tf.constant([[0, 1, 5], [1, 6, 7]] * 32), max_new_tokens=32,
                        temperature=3.0, eos_id=None, seed=0)
    ids = out.token_ids.numpy()
    assert out.mask.numpy().all()                  # eos_id=None: every token is real
    assert not np.isin(ids, [0, 1]).any()
    assert len(np.unique(ids)) == 14               # every other id is still drawn
    assert (policy.pad_id, policy.bos_id, policy.eos_id) == (0, 1, 2)
    assert policy.structural_ids == (0, 1)

    agent = compiled(REINFORCE(policy, count_fives, max_new_tokens=16, temperature=3.0,
                               eos_id=2, seed=1))
    rollout, _ = agent.collect_rollout({"prompt": tf.constant([[1, 5]] * 64)})
    real = rollout["completion_mask"].numpy() > 0
    assert not np.isin(rollout["completion_ids"].numpy()[real], [0, 1]).any()


def test_target_kl_needs_a_positive_kl_coef():
    """Defect 7. target_kl with kl_coef=0 was accepted: the multiplicative
    controller can never move a zero coefficient."""
    with pytest.raises(ValueError, match="kl_coef > 0"):
        REINFORCE(tfpg.PolicyNetwork(VOCAB, 8, 8), count_fives, target_kl=0.1)


@pytest.mark.parametrize("make", [
    lambda p: REINFORCE(p, count_fives, max_new_tokens=3, eos_id=None, seed=1),
    lambda p: RLOO(p, count_fives, group_size=2, max_new_tokens=3, eos_id=None, seed=1),
    lambda p: GRPO(p, count_fives, group_size=2, kl_coef=0.0, top_k=3, max_new_tokens=3,
                   eos_id=None, seed=1),
])
def test_a_single_update_without_reference_skips_the_rollout_scoring_pass(make):
    """With one update per rollout and no reference, the rollout has no forward pass of
    its own: the update's log-probs stand in for the behaviour log-probs (ratio 1). The
    gradient equals the one of a rollout scored separately."""
    gradients = []
    for scored in (False, True):
        keras.utils.set_random_seed(0)
        agent = compiled(make(tfpg.PolicyNetwork(VOCAB, 8, 8)))
        assert not agent.scores_rollout
        if scored:
            type(agent).scores_rollout = property(lambda self: True)
        try:
            rollout, _ = agent.collect_rollout({"prompt": prompts(8)})
            assert ("old_log_probs" in rollout) == scored
            keras.utils.set_random_seed(0)
            gradients.append(agent.gradients({"prompt": prompts(8)}))
        finally:
            if scored:
                del type(agent).scores_rollout
    for unscored, scored in zip(*gradients):
        np.testing.assert_allclose(tf.convert_to_tensor(unscored),
                                   tf.convert_to_tensor(scored), atol=1e-6)
    assert max(float(tf.reduce_max(tf.abs(tf.convert_to_tensor(g))))
               for g in gradients[0] if g is not None) > 0
