"""Group Relative Policy Optimization (Shao et al., 2024, DeepSeekMath) and its
variants: DAPO (Yu et al., 2025), Dr. GRPO (Liu et al., 2025), GSPO (Zheng et al.,
2025), CISPO (MiniMax-M1, 2025), SAPO, LUSPO and VESPO (2025-26), INTELLECT-2's
two-sided clip, DeepSeek-V3.2's bias-corrected KL and off-policy sequence mask,
Skywork-OR1's adaptive entropy and GDPO's per-objective normalisation, with TRL
1.16's option names, meanings and defaults."""

import keras
import tensorflow as tf

from tfpg import advantages as adv
from tfpg import losses
from tfpg.algorithms.base import PolicyGradientTrainer
from tfpg.algorithms.rollout import sequence_return
from tfpg.distribution import cross_replica_sum
from tfpg.guards import bounds

# loss_type -> aggregation (see tfpg.losses.aggregate_loss_terms): "grpo" a mean per
# sequence, then over the minibatch's sequences; "bnpo" the minibatch's token mean;
# "dr_grpo" sum / (rows * max_new_tokens); "dapo" sum / the token count of the whole
# rollout (the generation batch, all replicas), as TRL's num_items_in_batch.
# "cispo" and "vespo" aggregate as "dapo", "sapo" as "grpo"; "luspo" sums each
# sequence's tokens and averages over sequences (each sequence weighted by its length).
LOSS_TYPES = {"grpo": "sequence_mean", "bnpo": "token_mean", "dapo": "rollout_token_mean",
              "dr_grpo": "constant", "cispo": "rollout_token_mean", "sapo": "sequence_mean",
              "luspo": "sequence_sum", "vespo": "rollout_token_mean"}
# The loss types whose policy term is PPO's clipped surrogate.
CLIPPED_LOSS_TYPES = ("grpo", "bnpo", "dapo", "dr_grpo", "luspo")
CLIP_RATIO_METRICS = ("clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean")


@keras.saving.register_keras_serializable(package="tfpg")
class GRPO(PolicyGradientTrainer):
    """Group-normalised advantages, a clipped surrogate, and a k3 KL term in the loss.

    For each prompt `group_size` completions are sampled; advantage = (r - group
    mean) / std. Loss per token: -min(ratio A, clip(ratio, 1 - eps, 1 + eps_high) A)
    + kl_coef * k3(pi, ref), aggregated by `loss_type`.

    Args:
        clip_epsilon: float. `eps`, as TRL's `epsilon`.
        loss_type: str. "grpo" (mean per sequence, then over sequences), "bnpo" (mean
            over the minibatch's tokens), "dr_grpo" (sum / (rows * max_new_tokens)),
            "dapo" (sum / the real-token count of the whole rollout: equal to "bnpo"
            with one minibatch, half of it per step with two), "cispo" (the
            importance weight clipped at `clip_epsilon_high`, an absolute bound,
            detached, times -A log pi: set clip_epsilon_high=5.0 as ScaleRL; None
            means clip_epsilon, as TRL), "sapo" (a soft sigmoid gate,
            `sapo_temperature_pos` / `_neg`), "luspo" (GSPO's loss summed over each
            sequence's tokens; use importance_sampling_level="sequence"), "vespo"
            (-phi(w) A log pi with phi the gamma weight of the sequence ratio w,
            `vespo_k_pos`, `vespo_lambda_pos`, `vespo_k_neg`, `vespo_lambda_neg`).
        scale_rewards: str or bool. "group" (divide by the group's std), "batch" (by
            the std of the whole batch), "none" (Dr. GRPO); True / False mean
            "group" / "none".
        clip_epsilon_high: float or None. Upper clip (DAPO's clip-higher, e.g.
            0.28); None = eps.
        importance_sampling_level: `"token"` or `"sequence"`. "sequence" is GSPO: one
            ratio per sequence, exp of the mean token log-ratio.
        mask_truncated_completions: bool. Completions that hit `max_new_tokens`
            without EOS leave the loss (DAPO); they still count in the group
            statistics.
        top_entropy_quantile: float. Only the tokens whose entropy is in this top
            quantile of the minibatch's tokens get the policy-gradient term (1.0:
            all).
        delta: float or None. Two-sided clipping (INTELLECT-2): the unclipped ratio
            is also capped at `delta` (> 1 + eps), bounding what a negative-advantage
            token with a huge ratio contributes. None: off.
        sapo_temperature_pos: float. Temperature of the "sapo" gate for tokens with a
            positive advantage.
        sapo_temperature_neg: float. Temperature of the "sapo" gate for tokens with a
            negative advantage.
        vespo_k_pos: float. Shape `k` of the "vespo" gamma weight, positive
            advantages.
        vespo_lambda_pos: float. Rate `lambda` of the "vespo" gamma weight, positive
            advantages.
        vespo_k_neg: float. Shape `k` of the "vespo" gamma weight, negative
            advantages.
        vespo_lambda_neg: float. Rate `lambda` of the "vespo" gamma weight, negative
            advantages.
        use_bias_correction_kl: bool. Multiply the k3 KL term by the importance ratio
            (a value of 1 on the first step, but differentiable): its gradient is
            then the unbiased gradient of KL(pi || ref) (DeepSeek-V3.2). Default
            True, as TRL 1.16; it changes the KL gradient (not the loss value)
            whenever kl_coef > 0. False: the plain k3 term, whose gradient is biased.
        off_policy_mask_threshold: float or None. Drop from the policy term the
            sequences with a negative advantage whose mean token KL from the sampling
            policy, mean_t (log pi_old - log pi), exceeds this (DeepSeek-V3.2).
            None: off.
        use_adaptive_entropy: bool. Skywork-OR1's entropy control: the bonus's
            coefficient (starting at `entropy_coef`) is a trainer weight,
            checkpointed and resumed, moved by `entropy_coef_delta` after each
            optimizer step, up (to `entropy_coef_max`) when the bonus tokens' mean
            entropy is at or below `entropy_target`, else down (to
            `entropy_coef_min`); the bonus applies only while the last step's entropy
            was at or below the target.
        entropy_target: float. The entropy `use_adaptive_entropy` steers to.
        entropy_coef_delta: float. The step of the adaptive entropy coefficient.
        entropy_coef_min: float. The least adaptive entropy coefficient.
        entropy_coef_max: float. The greatest adaptive entropy coefficient.
        multi_objective_aggregation: str. With a `tfpg.rewards.WeightedSum` reward,
            "sum_then_normalize" (the weighted sum, then `scale_rewards`) or
            "normalize_then_sum" (GDPO: each objective normalised within its group,
            the weighted sum standardised over the batch; `scale_rewards` is then
            not used, as TRL).

    Other arguments: see `PolicyGradientTrainer` (`group_size`, TRL's
    `num_generations`, defaults to 8 here; `kl_coef`, TRL's `beta`, to 0.04;
    `kl_estimator` to "k3"; `loss_aggregation` follows `loss_type`).

    The entropy bonus (`entropy_coef`) is the mean entropy of the tokens of the
    policy term (the top-entropy tokens with `top_entropy_quantile`), whatever
    `loss_type`, as TRL 1.16.

    Example:
    >>> tok = tfpg.Tokenizer.from_texts(["one two three four"], level="word")
    >>> policy = tfpg.PolicyNetwork(tok.vocabulary_size, embedding_dim=8, hidden_dim=16)
    >>> reward = tfpg.rewards.Length(eos_id=tok.eos_id)
    >>> # The DAPO, Dr. GRPO and GSPO variants:
    >>> dapo = tfpg.algorithms.GRPO(policy, reward, loss_type="dapo", clip_epsilon_high=0.28,
    ...                             mask_truncated_completions=True, kl_coef=0.0)
    >>> dr_grpo = tfpg.algorithms.GRPO(policy, reward, loss_type="dr_grpo",
    ...                                scale_rewards="none")
    >>> gspo = tfpg.algorithms.GRPO(policy, reward, importance_sampling_level="sequence",
    ...                             clip_epsilon=3e-4, clip_epsilon_high=4e-4)
    """

    uses_ratio = True
    reuses_rollouts = True
    min_group_size = 2

    def __init__(self, policy, reward_fn, group_size=8, kl_coef=0.04, clip_epsilon=0.2,
                 loss_type="grpo", scale_rewards="group", clip_epsilon_high=None,
                 importance_sampling_level="token", mask_truncated_completions=False,
                 top_entropy_quantile=1.0, delta=None, sapo_temperature_pos=1.0,
                 sapo_temperature_neg=1.05, vespo_k_pos=2.0, vespo_lambda_pos=3.0,
                 vespo_k_neg=3.0, vespo_lambda_neg=2.0, use_bias_correction_kl=True,
                 off_policy_mask_threshold=None, use_adaptive_entropy=False,
                 entropy_target=0.2, entropy_coef_delta=0.005, entropy_coef_min=0.0,
                 entropy_coef_max=1.0, multi_objective_aggregation="sum_then_normalize",
                 **options):
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {sorted(LOSS_TYPES)}, got {loss_type!r}")
        if importance_sampling_level not in losses.IMPORTANCE_SAMPLING_LEVELS:
            raise ValueError(f"importance_sampling_level must be one of "
                             f"{losses.IMPORTANCE_SAMPLING_LEVELS}, got "
                             f"{importance_sampling_level!r}")
        if not 0 < top_entropy_quantile <= 1:
            raise ValueError(f"top_entropy_quantile must be in (0, 1], got "
                             f"{top_entropy_quantile}")
        bounds.check_non_negative("clip_epsilon", clip_epsilon)
        if clip_epsilon_high is not None:
            bounds.check_non_negative("clip_epsilon_high", clip_epsilon_high)
        scale_rewards = adv.resolve_scale_rewards(scale_rewards)
        _check_options(delta, sapo_temperature_pos, sapo_temperature_neg,
                       off_policy_mask_threshold, use_adaptive_entropy, entropy_coef_delta,
                       entropy_coef_min, entropy_coef_max, multi_objective_aggregation,
                       reward_fn, options)
        # Before the base class's constructor: `metric_names`, which it calls, reads them.
        self.loss_type = loss_type
        self.delta = None if delta is None else float(delta)
        self.sapo_temperature_pos = float(sapo_temperature_pos)
        self.sapo_temperature_neg = float(sapo_temperature_neg)
        self.vespo_k_pos, self.vespo_lambda_pos = float(vespo_k_pos), float(vespo_lambda_pos)
        self.vespo_k_neg, self.vespo_lambda_neg = float(vespo_k_neg), float(vespo_lambda_neg)
        self.use_bias_correction_kl = bool(use_bias_correction_kl)
        self.off_policy_mask_threshold = (None if off_policy_mask_threshold is None
                                          else float(off_policy_mask_threshold))
        self.use_adaptive_entropy = bool(use_adaptive_entropy)
        self.entropy_target = float(entropy_target)
        self.entropy_coef_delta = float(entropy_coef_delta)
        self.entropy_coef_min = float(entropy_coef_min)
        self.entropy_coef_max = float(entropy_coef_max)
        self.multi_objective_aggregation = multi_objective_aggregation
        options.setdefault("kl_estimator", "k3")
        options.setdefault("loss_aggregation", LOSS_TYPES[loss_type])
        super().__init__(policy, reward_fn, group_size=group_size, kl_coef=kl_coef,
                         kl_in_reward=False, **options)
        self.clip_epsilon = clip_epsilon
        self.clip_epsilon_high = clip_epsilon_high
        self.scale_rewards = scale_rewards
        self.importance_sampling_level = importance_sampling_level
        self.mask_truncated_completions = bool(mask_truncated_completions)
        self.top_entropy_quantile = float(top_entropy_quantile)
        if self.use_adaptive_entropy:
            # Trainer weights: checkpointed with the trainer and resumed (TRL keeps
            # both in its checkpoint's JSON).
            self.adaptive_entropy_coef = self.add_weight(
                shape=(), initializer=keras.initializers.Constant(float(self.entropy_coef)),
                trainable=False, name="entropy_coef", aggregation="only_first_replica")
            self.last_bonus_entropy = self.add_weight(
                shape=(), initializer=keras.initializers.Constant(float("inf")),
                trainable=False, name="last_bonus_entropy",
                aggregation="only_first_replica")

    def compute_advantages(self, rollout, batch):
        if self.multi_objective_aggregation == "normalize_then_sum":
            weights = [weight for _, _, weight in self.reward_fn.weighted_components]
            advantages = adv.normalize_then_sum_advantages(
                rollout.reward_components, weights, self.group_size,
                valid=rollout.valid, sum_fn=cross_replica_sum)
        else:
            advantages, _ = adv.group_normalized_advantages(
                sequence_return(rollout), self.group_size, self.scale_rewards,
                valid=rollout.valid, sum_fn=cross_replica_sum)
        result = {"advantages": adv.broadcast_sequence_advantages(
            advantages, rollout.completion_mask)}
        if self.mask_truncated_completions:
            kept = 1.0 - rollout.truncated        # no EOS by max_new_tokens (cut episodes)
            result["loss_mask"] = rollout.loss_mask * kept[:, None]
        return result

    def policy_term(self, minibatch, log_probs, ratio):
        """(per-token policy loss [b, N], per-token metrics) of `loss_type`."""
        mask = minibatch.loss_mask
        advantages = minibatch.advantages
        old = minibatch.old_log_probs
        eps_high = self.clip_epsilon if self.clip_epsilon_high is None else self.clip_epsilon_high
        if self.loss_type == "cispo":
            surrogate, clipped = losses.cispo_loss(log_probs, ratio, advantages, eps_high)
            return surrogate, {"clip_fraction": clipped, "cispo_clip_ratio": clipped}
        if self.loss_type == "sapo":
            return losses.sapo_loss(ratio, advantages, self.sapo_temperature_pos,
                                    self.sapo_temperature_neg), {}
        if self.loss_type == "vespo":
            phi = losses.vespo_weights(log_probs, old, advantages, mask, self.vespo_k_pos,
                                       self.vespo_lambda_pos, self.vespo_k_neg,
                                       self.vespo_lambda_neg)                    # [b, N]
            return (-phi * tf.stop_gradient(advantages) * log_probs,
                    {"vespo/phi_seq_mean": phi})
        surrogate, _, clipped = losses.ppo_clipped_surrogate(
            log_probs, old, advantages, self.clip_epsilon, mask, self.clip_epsilon_high,
            self.importance_sampling_level, self.delta)
        low, high = losses.clip_ratio_indicators(ratio, advantages, self.clip_epsilon,
                                                 self.clip_epsilon_high, self.delta)
        return surrogate, {"clip_fraction": clipped, "clip_ratio/low_mean": low,
                           "clip_ratio/high_mean": high,
                           "clip_ratio/region_mean": tf.maximum(low, high)}

    def loss_terms(self, minibatch, scores, values):
        log_probs = scores.log_probs
        mask = minibatch.loss_mask
        # pi / pi_old [b, N], differentiable (TRL's coef_1, before any delta cap).
        ratio = losses.importance_ratio(log_probs, minibatch.old_log_probs, mask,
                                        self.importance_sampling_level)
        surrogate, token_metrics = self.policy_term(minibatch, log_probs, ratio)
        if self.off_policy_mask_threshold is not None:
            kept = losses.off_policy_sequence_mask(
                log_probs, minibatch.old_log_probs, minibatch.advantages, mask,
                self.off_policy_mask_threshold)
            surrogate *= kept
            token_metrics["off_policy_masked_fraction"] = 1.0 - kept
        if self.top_entropy_quantile < 1.0:
            surrogate *= losses.high_entropy_mask(scores.entropy, mask,
                                                  self.top_entropy_quantile)
        terms = {"policy_loss": (surrogate, 1.0, self.loss_aggregation)}
        if self.reference_model is not None:
            kl = losses.kl_penalty(scores.temperature_log_probs, minibatch.ref_log_probs,
                                   self.kl_estimator)
            if self.use_bias_correction_kl:
                # Value unchanged on the first step (ratio 1), but d(ratio) = ratio *
                # d(log pi) adds the score-function term that makes the gradient of
                # the k3 sample the unbiased gradient of KL(pi || ref).
                kl = kl * ratio
            terms["kl_loss"] = (kl, self.kl_coef, self.loss_aggregation)
        log_ratio = log_probs - minibatch.old_log_probs
        token_metrics["approx_kl"] = 0.5 * log_ratio ** 2
        return terms, token_metrics

    def metric_names(self):
        names = super().metric_names()
        if self.loss_type in CLIPPED_LOSS_TYPES:
            names += list(CLIP_RATIO_METRICS)
        elif self.loss_type == "cispo":
            names.append("cispo_clip_ratio")
        else:
            names.remove("clip_fraction")     # a soft gate or weight: nothing is clipped
            if self.loss_type == "vespo":
                names.append("vespo/phi_seq_mean")
        if self.off_policy_mask_threshold is not None:
            names.append("off_policy_masked_fraction")
        if self.entropy_coef or self.use_adaptive_entropy:
            names.append("entropy_coef")
        if self.reference_model is not None:
            names.append("kl_loss")          # the KL term of the loss, as aggregated
        return names

    @property
    def uses_reward_components(self):
        return self.multi_objective_aggregation == "normalize_then_sum"

    @property
    def uses_entropy_bonus(self):
        return bool(self.entropy_coef) or self.use_adaptive_entropy

    def entropy_coefficient(self):
        if not self.use_adaptive_entropy:
            return self.entropy_coef
        # The coefficient and gate of the end of the previous optimizer step.
        return tf.where(self.last_bonus_entropy <= self.entropy_target,
                        self.adaptive_entropy_coef, 0.0)

    def entropy_bonus_mask(self, minibatch, scores):
        mask = minibatch.loss_mask
        if self.top_entropy_quantile < 1.0:
            return mask * losses.high_entropy_mask(scores.entropy, mask,
                                                   self.top_entropy_quantile)
        return mask

    def after_update(self, logs):
        if self.use_adaptive_entropy:
            entropy = logs["bonus_entropy"]
            below = entropy <= self.entropy_target
            self.adaptive_entropy_coef.assign(tf.where(
                below,
                tf.minimum(self.adaptive_entropy_coef + self.entropy_coef_delta,
                           self.entropy_coef_max),
                tf.maximum(self.adaptive_entropy_coef - self.entropy_coef_delta,
                           self.entropy_coef_min)))
            self.last_bonus_entropy.assign(entropy)
            self._record({"entropy_coef": self.adaptive_entropy_coef})
        elif self.entropy_coef:
            self._record({"entropy_coef": self.entropy_coef})

    @property
    def needs_temperature_log_probs(self):
        return self.reference_model is not None    # the KL term of the loss

    def get_config(self):
        config = super().get_config()
        config.update(clip_epsilon=self.clip_epsilon, loss_type=self.loss_type,
                      scale_rewards=self.scale_rewards,
                      clip_epsilon_high=self.clip_epsilon_high,
                      importance_sampling_level=self.importance_sampling_level,
                      mask_truncated_completions=self.mask_truncated_completions,
                      top_entropy_quantile=self.top_entropy_quantile,
                      delta=self.delta, sapo_temperature_pos=self.sapo_temperature_pos,
                      sapo_temperature_neg=self.sapo_temperature_neg,
                      vespo_k_pos=self.vespo_k_pos, vespo_lambda_pos=self.vespo_lambda_pos,
                      vespo_k_neg=self.vespo_k_neg, vespo_lambda_neg=self.vespo_lambda_neg,
                      use_bias_correction_kl=self.use_bias_correction_kl,
                      off_policy_mask_threshold=self.off_policy_mask_threshold,
                      use_adaptive_entropy=self.use_adaptive_entropy,
                      entropy_target=self.entropy_target,
                      entropy_coef_delta=self.entropy_coef_delta,
                      entropy_coef_min=self.entropy_coef_min,
                      entropy_coef_max=self.entropy_coef_max,
                      multi_objective_aggregation=self.multi_objective_aggregation)
        config.pop("kl_in_reward")
        return config


def _check_options(delta, sapo_temperature_pos, sapo_temperature_neg,
                   off_policy_mask_threshold, use_adaptive_entropy, entropy_coef_delta,
                   entropy_coef_min, entropy_coef_max, multi_objective_aggregation,
                   reward_fn, options):
    """The 2026 options' values, each refused in one line."""
    if delta is not None:
        bounds.check_positive("delta", delta)
    bounds.check_positive("sapo_temperature_pos", sapo_temperature_pos)
    bounds.check_positive("sapo_temperature_neg", sapo_temperature_neg)
    if off_policy_mask_threshold is not None:
        bounds.check_non_negative("off_policy_mask_threshold", off_policy_mask_threshold)
    if use_adaptive_entropy:
        bounds.check_non_negative("entropy_coef_delta", entropy_coef_delta)
        if not 0 <= entropy_coef_min <= entropy_coef_max:
            raise ValueError(f"need 0 <= entropy_coef_min <= entropy_coef_max, got "
                             f"{entropy_coef_min} and {entropy_coef_max}")
    if multi_objective_aggregation not in adv.MULTI_OBJECTIVE_AGGREGATIONS:
        raise ValueError(f"multi_objective_aggregation must be one of "
                         f"{adv.MULTI_OBJECTIVE_AGGREGATIONS}, got "
                         f"{multi_objective_aggregation!r}")
    if multi_objective_aggregation == "normalize_then_sum" and (
            not getattr(reward_fn, "weighted_components", None)
            or options.get("env") is not None):
        raise ValueError('multi_objective_aggregation="normalize_then_sum" needs a '
                         "tfpg.rewards.WeightedSum reward (its components are the "
                         "objectives), and no env")


def approx_kl_and_clip_fraction(log_probs, minibatch, clipped, ratio=None, advantages=None,
                                clip_epsilon=None, delta=None):
    """Per-token diagnostics of a clipped-surrogate update (TRL's definitions); with
    `ratio`, `advantages` and `clip_epsilon` also TRL's `clip_ratio/*` indicators."""
    log_ratio = log_probs - minibatch.old_log_probs
    metrics = {"approx_kl": 0.5 * log_ratio ** 2, "clip_fraction": clipped}
    if ratio is not None:
        low, high = losses.clip_ratio_indicators(ratio, advantages, clip_epsilon,
                                                 delta=delta)
        metrics.update({"clip_ratio/low_mean": low, "clip_ratio/high_mean": high,
                        "clip_ratio/region_mean": tf.maximum(low, high)})
    return metrics
