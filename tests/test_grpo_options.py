"""The 2026 GRPO / RLOO / PPO options of TRL 1.16 against hand computations: each
option's per-token loss and its aggregation on a hand-made rollout, the pure
functions' gradients, the controllers (adaptive entropy, reference sync), GDPO and
REINFORCE++-baseline advantages, and the one-line refusals."""

import math

import numpy as np
import pytest
import tensorflow as tf

import keras
import tfpg
from tfpg import advantages as adv
from tfpg.run import checkpoints
from tfpg import losses as L
from tfpg.algorithms import GRPO, PPO, RLOO
from tfpg.algorithms.rollout import Rollout

VOCAB, N = 8, 4
PROMPTS = tf.constant([[1, 4], [1, 6]], tf.int32)
COMPLETIONS = np.array([[5, 3, 2, 0], [4, 2, 0, 0], [5, 5, 6, 2], [3, 0, 0, 0]], np.int32)
MASK = (np.arange(N)[None] < np.array([[3], [2], [4], [1]])).astype(np.float32)
ADVANTAGES = np.array([1.0, -0.5, 0.8, -1.2], np.float32)
# log pi - log pi_old per token: rows 1 and 3 have moved far (ratios ~0.5 / ~2).
SHIFT = np.array([[0.1, -0.3, 0.25, 0], [-0.7, -0.6, 0, 0], [0.05, 0.4, -0.1, 0.9],
                  [0.8, 0, 0, 0]], np.float32)
REF_SHIFT = np.array([[0.3, -0.2, 0.1, 0], [0.2, 0.5, 0, 0], [-0.4, 0.1, 0.3, 0.2],
                      [-0.3, 0, 0, 0]], np.float32)
ROLLOUT_TOKENS = 20.0    # the real tokens of the whole rollout ("dapo" aggregation)


def count_fives(prompt_ids, completion_ids, completion_mask, batch):
    hits = tf.cast(tf.equal(completion_ids, 5), tf.float32) * completion_mask
    return tf.reduce_sum(hits, axis=1) / tf.maximum(tf.reduce_sum(completion_mask, 1), 1.0)


def grpo(policy=None, **options):
    keras.utils.set_random_seed(0)
    options = {"group_size": 2, "max_new_tokens": N, "eos_id": 2, "seed": 0, **options}
    agent = GRPO(policy or tfpg.PolicyNetwork(VOCAB, 16, 32),
                 options.pop("reward", count_fives), **options)
    agent.compile(optimizer=keras.optimizers.SGD(0.5))
    return agent


def hand_minibatch(agent):
    """The hand-made rollout: fixed completions, advantages, behaviour log-probs
    `log pi - SHIFT` and reference log-probs `log pi_T - REF_SHIFT`; and log pi."""
    minibatch = {"prompt_ids": tf.repeat(PROMPTS, 2, axis=0),
                 "completion_ids": tf.constant(COMPLETIONS),
                 "completion_mask": tf.constant(MASK), "loss_mask": tf.constant(MASK),
                 "advantages": tf.constant(ADVANTAGES[:, None] * MASK)}
    scores = agent.score_completions(agent.policy, minibatch, minibatch["loss_mask"],
                                     temperature_log_probs=True)
    log_probs = scores.log_probs.numpy()
    minibatch["old_log_probs"] = tf.constant((log_probs - SHIFT) * MASK)
    minibatch["ref_log_probs"] = tf.constant(
        (scores.temperature_log_probs.numpy() - REF_SHIFT) * MASK)
    return Rollout(**minibatch), log_probs


def trl_per_token(options, log_probs):
    """TRL 1.16's `_compute_loss` per-token policy loss, in numpy (token level)."""
    loss_type = options.get("loss_type", "grpo")
    a = ADVANTAGES[:, None] * np.ones_like(MASK)
    ratio = np.exp(SHIFT * MASK)
    eps = options.get("clip_epsilon", 0.2)
    eps_high = options.get("clip_epsilon_high") or eps
    if loss_type == "cispo":
        loss = -np.minimum(ratio, eps_high) * a * log_probs
    elif loss_type == "sapo":
        tau = np.where(a > 0, options.get("sapo_temperature_pos", 1.0),
                       options.get("sapo_temperature_neg", 1.05))
        loss = -4 / tau / (1 + np.exp(-tau * (ratio - 1))) * a
    elif loss_type == "vespo":
        log_w = np.clip((np.clip(SHIFT, -20, 20) * MASK).sum(1, keepdims=True),
                        math.log(1e-8), 20)
        k = np.where(a[:, :1] >= 0, 2.0, 3.0)
        lam = np.where(a[:, :1] >= 0, 3.0, 2.0)
        loss = -np.exp(lam + k * log_w - lam * np.exp(log_w)) * a * log_probs
    else:
        capped = np.minimum(ratio, options["delta"]) if options.get("delta") else ratio
        loss = -np.minimum(capped * a, np.clip(ratio, 1 - eps, 1 + eps_high) * a)
    if options.get("off_policy_mask_threshold") is not None:
        kl = (-SHIFT * MASK).sum(1, keepdims=True) / MASK.sum(1, keepdims=True)
        loss *= (a >= 0) | (kl <= options["off_policy_mask_threshold"])
    return loss


def aggregate(loss_type, per_token):
    masked = per_token * MASK
    if loss_type in ("grpo", "sapo"):
        return np.mean(masked.sum(1) / MASK.sum(1))
    if loss_type == "bnpo":
        return masked.sum() / MASK.sum()
    if loss_type == "dr_grpo":
        return masked.sum() / (len(MASK) * N)
    if loss_type == "luspo":
        return masked.sum(1).mean()
    return masked.sum() / ROLLOUT_TOKENS        # dapo, cispo, vespo


@pytest.fixture(scope="module")
def models():
    """One policy and its frozen copy (the KL reference) for the hand-made rollouts."""
    keras.utils.set_random_seed(0)
    policy = tfpg.PolicyNetwork(VOCAB, 16, 32)
    policy.build()
    reference = tfpg.copy_policy(policy, trainable=False)
    return policy, reference


@pytest.mark.parametrize("options", [
    {"loss_type": "cispo", "clip_epsilon_high": 1.5},
    {"loss_type": "cispo"},                                  # TRL: epsilon_high = eps
    {"loss_type": "sapo"},
    {"loss_type": "sapo", "sapo_temperature_pos": 2.0, "sapo_temperature_neg": 0.5},
    {"loss_type": "luspo", "clip_epsilon": 0.5},
    {"loss_type": "vespo"},
    {"loss_type": "grpo", "delta": 1.3},
    {"loss_type": "dapo", "off_policy_mask_threshold": 0.2},
    {"loss_type": "bnpo", "delta": 1.3, "off_policy_mask_threshold": 0.2},
    {"loss_type": "dr_grpo", "use_bias_correction_kl": False},
], ids=lambda options: "-".join(f"{k}={v}" for k, v in options.items()))
def test_policy_and_kl_loss_match_hand_computation(options, models):
    """Each loss_type / option: the logged policy loss is TRL's per-token loss,
    aggregated as TRL; the KL term is k3 (times the ratio with bias correction,
    the default)."""
    policy, reference = models
    agent = grpo(policy, kl_coef=0.1, reference_model=reference, **options)
    bias_correction = options.get("use_bias_correction_kl", True)
    minibatch, log_probs = hand_minibatch(agent)
    total, _, logs = agent.loss_and_gradients(minibatch, tf.constant(ROLLOUT_TOKENS))
    loss_type = options["loss_type"]
    expected = aggregate(loss_type, trl_per_token(options, log_probs))
    assert float(logs["policy_loss"]) == pytest.approx(expected, rel=1e-5, abs=1e-7)
    kl = np.exp(REF_SHIFT * -1) - (-REF_SHIFT) - 1        # k3 at log(ref / pi) = -shift
    if bias_correction:
        kl = kl * np.exp(SHIFT * MASK)
    assert float(logs["kl_loss"]) == pytest.approx(aggregate(loss_type, kl), rel=1e-5)
    assert float(total) == pytest.approx(expected + 0.1 * aggregate(loss_type, kl), rel=1e-5)


def test_per_token_gradients_of_the_new_terms():
    """CISPO's weight is detached (gradient -min(r, c) A per log pi); SAPO's gate has
    slope sigmoid' * 4 (= 1 at r = 1); bias-corrected k3 at ratio 1 has gradient
    d k3 + k3 per log pi, the unbiased reverse-KL gradient's sample."""
    log_pi = tf.Variable([[-1.0, -2.0, -0.5]])
    old = tf.constant([[-1.5, -1.0, -0.5]])
    ref = tf.constant([[-0.7, -2.5, -0.2]])
    a = tf.constant([[1.0, 2.0, -1.0]])
    with tf.GradientTape(persistent=True) as tape:
        ratio = L.importance_ratio(log_pi, old)
        cispo, clipped = L.cispo_loss(log_pi, ratio, a, 1.5)
        sapo = L.sapo_loss(ratio, a, 1.0, 1.05)
        at_one = L.importance_ratio(log_pi, tf.stop_gradient(log_pi))
        k3 = L.kl_penalty(log_pi, ref, "k3")
        corrected = k3 * at_one
    r = np.exp([0.5, -1.0, 0.0])
    np.testing.assert_allclose(tape.gradient(cispo, log_pi).numpy()[0],
                               -np.minimum(r, 1.5) * [1, 2, -1], rtol=1e-6)
    np.testing.assert_array_equal(clipped.numpy(), [[1, 0, 0]])       # r = 1.65 > 1.5, A > 0
    tau = np.array([1.0, 1.0, 1.05])
    s = 1 / (1 + np.exp(-tau * (r - 1)))
    np.testing.assert_allclose(tape.gradient(sapo, log_pi).numpy()[0],
                               -4 * s * (1 - s) * np.array([1, 2, -1]) * r, rtol=1e-5)
    d = np.array([-0.7, -2.5, -0.2]) - np.array([-1.0, -2.0, -0.5])   # log(ref / pi)
    k3_value = np.exp(d) - d - 1
    np.testing.assert_allclose(tape.gradient(k3, log_pi).numpy()[0], 1 - np.exp(d),
                               rtol=1e-5)
    np.testing.assert_allclose(tape.gradient(corrected, log_pi).numpy()[0],
                               1 - np.exp(d) + k3_value, rtol=1e-5)
    np.testing.assert_allclose(corrected.numpy(), k3.numpy())           # same value


def test_clip_ratio_metrics_are_trls_indicators(models):
    """clip_ratio/low_mean, /high_mean, /region_mean: token means of (r < 1 - eps,
    A < 0), (r > 1 + eps, A > 0) and either."""
    agent = grpo(models[0], kl_coef=0.0)
    minibatch, _ = hand_minibatch(agent)
    _, token_metrics = agent.loss_terms(minibatch, agent.score_completions(
        agent.policy, minibatch, minibatch["loss_mask"], entropy=True), None)
    ratio = np.exp(SHIFT)
    a = ADVANTAGES[:, None]
    low = ((ratio < 0.8) & (a < 0)) * MASK
    high = ((ratio > 1.2) & (a > 0)) * MASK
    np.testing.assert_array_equal(token_metrics["clip_ratio/low_mean"].numpy() * MASK, low)
    np.testing.assert_array_equal(token_metrics["clip_ratio/high_mean"].numpy() * MASK, high)
    assert low.sum() == 2 and high.sum() == 3                           # both occur
    np.testing.assert_array_equal(token_metrics["clip_ratio/region_mean"].numpy() * MASK,
                                  np.maximum(low, high))
    # (test_algorithms.py sees them in GRPO's and PPO's fit logs.)


def test_normalize_then_sum_and_standardize_by_hand():
    """GDPO: each objective normalised in its group ((x - mean) / (std + 1e-4), ddof
    1), weighted sum, then standardised over the batch; a skipped sample counts in
    no statistic. RLOO's normalize_advantages is the same standardisation."""
    components = np.array([[1, 10], [0, 30], [1, 20], [1, 20],
                           [0, 5], [2, 6], [4, 0], [9, 9]], np.float32)
    valid = np.array([1, 1, 1, 1, 1, 1, 1, 0], np.float32)
    got = adv.normalize_then_sum_advantages(components, [1.0, 0.5], 4, valid).numpy()
    total = np.zeros(8)
    for column, weight in ((0, 1.0), (1, 0.5)):
        for group in (slice(0, 4), slice(4, 7)):
            x = components[group, column]
            total[group] += weight * (x - x.mean()) / (x.std(ddof=1) + 1e-4)
    expected = (total[:7] - total[:7].mean()) / (total[:7].std(ddof=1) + 1e-4)
    np.testing.assert_allclose(got, np.append(expected, 0.0), rtol=1e-5, atol=1e-6)

    rewards = tf.constant([1.0, 0.0, 0.0, 0.0, 3.0, 1.0, 2.0, 2.0])
    agent = RLOO(tfpg.PolicyNetwork(VOCAB, 16, 32), lambda *a: rewards, group_size=4,
                 max_new_tokens=N, eos_id=2, normalize_advantages=True)
    result = agent.compute_advantages(Rollout(
        token_rewards=tf.one_hot([0] * 8, N) * rewards[:, None],
        completion_mask=tf.ones([8, N]), valid=tf.ones([8])), {})
    loo = adv.rloo_advantages(rewards, 4).numpy()
    np.testing.assert_allclose(result["advantages"].numpy()[:, 0],
                               (loo - loo.mean()) / (loo.std(ddof=1) + 1e-4), rtol=1e-5,
                               atol=1e-6)
    assert agent.normalize_advantages is True


def test_normalize_then_sum_in_the_trainer_uses_each_objective():
    long = tfpg.rewards.Length(eos_id=None)
    total = tfpg.rewards.WeightedSum({"fives": (count_fives, 1.0), "long": (long, 0.01)})
    agent = grpo(reward=total, group_size=4, kl_coef=0.0,
                 multi_objective_aggregation="normalize_then_sum")
    rollout, batch = agent.collect_rollout({"prompt": PROMPTS})
    components = rollout["reward_components"].numpy()                 # [8, 2]
    np.testing.assert_allclose(components[:, 1],
                               rollout["completion_mask"].numpy().sum(1), rtol=1e-6)
    advantages = agent.compute_advantages(rollout, batch)["advantages"].numpy()[:, 0]
    np.testing.assert_allclose(
        advantages, adv.normalize_then_sum_advantages(components, [1.0, 0.01], 4).numpy(),
        rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="WeightedSum"):
        grpo(multi_objective_aggregation="normalize_then_sum")
    with pytest.raises(ValueError, match="multi_objective_aggregation"):
        grpo(multi_objective_aggregation="sum")


def optimizer_steps(agent, count):
    """`count` optimizer steps (eager, no tracing) on one rollout of PROMPTS."""
    rollout, batch = agent.collect_rollout({"prompt": PROMPTS})
    rollout.update(agent.compute_advantages(rollout, batch))
    for _ in range(count):
        agent.optimizer_step(rollout)
        yield


def test_adaptive_entropy_moves_a_checkpointed_coefficient(models, tmp_path):
    """Skywork-OR1 as TRL: the bonus is off until a step's entropy is at or below the
    target (last entropy starts at inf); the coefficient then rises by delta per step
    (entropy below the target) up to the max, and is a trainer weight: checkpointed."""
    agent = grpo(models[0], kl_coef=0.0, entropy_coef=0.1, use_adaptive_entropy=True,
                 entropy_target=100.0, entropy_coef_delta=0.05, entropy_coef_max=0.18)
    assert float(agent.entropy_coefficient()) == 0.0                  # no step yet: off
    applied = []
    for _ in optimizer_steps(agent, 3):
        applied.append(float(agent.entropy_coefficient()))
    assert applied == pytest.approx([0.15, 0.18, 0.18])               # + delta, capped
    assert float({m.name: m for m in agent.metrics}["entropy_coef"].result()) == pytest.approx(0.17)
    assert any(v is agent.adaptive_entropy_coef
               for v in checkpoints.trainer_state(agent)["trainer"])
    # Entropy above the target: down by delta to the minimum, and the bonus is gated.
    falling = grpo(models[0], kl_coef=0.0, entropy_coef=0.1, use_adaptive_entropy=True,
                   entropy_target=0.0, entropy_coef_delta=0.04, entropy_coef_min=0.03)
    list(optimizer_steps(falling, 2))
    assert float(falling.adaptive_entropy_coef) == pytest.approx(0.03)
    assert float(falling.entropy_coefficient()) == 0.0
    # Resumed: a new trainer reads the coefficient and the gate back.
    path = checkpoints.trainer_checkpoint(agent).write(str(tmp_path / "ckpt"))
    resumed = grpo(models[0], kl_coef=0.0, entropy_coef=0.1, use_adaptive_entropy=True,
                   entropy_target=100.0)
    checkpoints.trainer_checkpoint(resumed).read(path).expect_partial()
    assert float(resumed.entropy_coefficient()) == pytest.approx(0.18)


def test_sync_ref_model_mixes_every_sync_steps():
    """TR-DPO: after optimizer steps 2 and 4 of 4 (sync every 2), reference <- alpha
    policy + (1 - alpha) reference; after steps 1 and 3 it is unchanged."""
    agent = grpo(kl_coef=0.05, sync_ref_model=True, ref_model_mixup_alpha=0.5,
                 ref_model_sync_steps=2)
    reference = [w.numpy() for w in agent.reference_model.weights]
    for step, _ in enumerate(optimizer_steps(agent, 4), start=1):
        policy = [w.numpy() for w in agent.policy.weights]
        if step % 2 == 0:
            reference = [0.5 * p + 0.5 * r for p, r in zip(policy, reference)]
        for expected, weight in zip(reference, agent.reference_model.weights):
            np.testing.assert_allclose(weight.numpy(), expected, rtol=1e-6, atol=1e-7)
    assert not np.allclose(reference[0], policy[0])
    assert (agent.sync_ref_model, agent.ref_model_mixup_alpha,
            agent.ref_model_sync_steps) == (True, 0.5, 2)


def test_options_are_refused_in_one_line():
    keras_hub = pytest.importorskip("keras_hub")
    backbone = keras_hub.models.GPT2Backbone(vocabulary_size=16, num_layers=1, num_heads=2,
                                             hidden_dim=8, intermediate_dim=16,
                                             max_sequence_length=16)
    lora = tfpg.KerasHubPolicy(keras_hub.models.GPT2CausalLM(backbone, preprocessor=None),
                               lora_rank=2, pad_id=15, bos_id=15, eos_id=15)
    cases = [
        (lambda: GRPO(lora, count_fives, max_new_tokens=N, sync_ref_model=True), "LoRA"),
        (lambda: grpo(kl_coef=0.0, sync_ref_model=True), "needs a KL reference"),
        (lambda: grpo(sync_ref_model=True, ref_model_mixup_alpha=1.5), "mixup_alpha"),
        (lambda: grpo(loss_type="ppo"), "loss_type"),
        (lambda: grpo(delta=-1.0), "delta"),
        (lambda: grpo(sapo_temperature_neg=0.0), "sapo_temperature_neg"),
        (lambda: grpo(off_policy_mask_threshold=-0.1), "off_policy_mask_threshold"),
        (lambda: grpo(use_adaptive_entropy=True, entropy_coef_min=0.5,
                      entropy_coef_max=0.1), "entropy_coef_min"),
        (lambda: PPO(tfpg.PolicyNetwork(VOCAB, 16, 32), count_fives,
                     value_model=tfpg.ValueNetwork(VOCAB, 16, 32), delta=0.0), "delta"),
    ]
    for build, match in cases:
        with pytest.raises(ValueError, match=match) as error:
            build()
        assert "\n" not in str(error.value)


def test_get_config_carries_every_new_option():
    options = dict(loss_type="vespo", delta=2.0, sapo_temperature_pos=1.5,
                   sapo_temperature_neg=0.9, vespo_k_pos=1.0, vespo_lambda_pos=2.5,
                   vespo_k_neg=2.0, vespo_lambda_neg=1.5, use_bias_correction_kl=False,
                   off_policy_mask_threshold=0.3, use_adaptive_entropy=True,
                   entropy_target=1.0, entropy_coef_delta=0.01, entropy_coef_min=0.001,
                   entropy_coef_max=0.5, sync_ref_model=True, ref_model_mixup_alpha=0.9,
                   ref_model_sync_steps=8)
    # A serialisable reward: a trainer with a Python-function reward has no config.
    agent = grpo(reward=tfpg.rewards.Length(), **options)
    config = agent.get_config()
    assert {key: config[key] for key in options} == options
    assert config["multi_objective_aggregation"] == "sum_then_normalize"
    assert GRPO(tfpg.PolicyNetwork(VOCAB, 16, 32), count_fives).use_bias_correction_kl
    assert set(agent.metric_names()) >= {"vespo/phi_seq_mean", "off_policy_masked_fraction",
                                         "entropy_coef"}
    assert "clip_fraction" not in agent.metric_names()        # a soft weight: no clipping
