"""Group Relative Policy Optimization (Shao et al., 2024, DeepSeekMath) and its
variants: DAPO (Yu et al., 2025), Dr. GRPO (Liu et al., 2025), GSPO (Zheng et al.,
2025), with TRL 1.16's option names and meanings."""

import keras
import tensorflow as tf

from tfpg import advantages as adv
from tfpg import bounds
from tfpg import losses
from tfpg.algorithms.base import (PolicyGradientTrainer, sequence_return,
                                  truncated_completions)
from tfpg.distribution import cross_replica_sum

# loss_type -> aggregation (see tfpg.losses.aggregate_loss_terms): "grpo" a mean per
# sequence, then over the minibatch's sequences; "bnpo" the minibatch's token mean;
# "dr_grpo" sum / (rows * max_new_tokens); "dapo" sum / the token count of the whole
# rollout (the generation batch, all replicas), as TRL's num_items_in_batch.
LOSS_TYPES = {"grpo": "sequence_mean", "bnpo": "token_mean", "dapo": "rollout_token_mean",
              "dr_grpo": "constant"}


@keras.saving.register_keras_serializable(package="tfpg")
class GRPO(PolicyGradientTrainer):
    """Group-normalised advantages, a clipped surrogate, and a k3 KL term in the loss.

    For each prompt `group_size` completions are sampled; advantage = (r - group
    mean) / std. Loss per token: -min(ratio A, clip(ratio, 1 - eps, 1 + eps_high) A)
    + kl_coef * k3(pi, ref), aggregated by `loss_type`.

    Args (besides `PolicyGradientTrainer`'s):
        group_size, kl_coef, clip_epsilon: as in TRL (`num_generations`, `beta`,
            `epsilon`).
        clip_epsilon_high: upper clip (DAPO's clip-higher, e.g. 0.28); None = eps.
        loss_type: "grpo" (mean per sequence, then over sequences), "bnpo" (mean over
            the minibatch's tokens), "dr_grpo" (sum / (rows * max_new_tokens)),
            "dapo" (sum / the real-token count of the whole rollout: equal to "bnpo"
            with one minibatch, half of it per step with two).
        scale_rewards: "group" (divide by the group's std), "batch" (by the std of
            the whole batch), "none" (Dr. GRPO); True / False mean "group" / "none".
        importance_sampling_level: "token", or "sequence" (GSPO: one ratio per
            sequence, exp of the mean token log-ratio).
        mask_truncated_completions: completions that hit `max_new_tokens` without
            EOS leave the loss (DAPO); they still count in the group statistics.
        top_entropy_quantile: only the tokens whose entropy is in this top quantile
            of the minibatch's tokens get the policy-gradient term (1.0: all).

    Variants:
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
                 top_entropy_quantile=1.0, **options):
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
        options.setdefault("kl_estimator", "k3")
        options.setdefault("loss_aggregation", LOSS_TYPES[loss_type])
        super().__init__(policy, reward_fn, group_size=group_size, kl_coef=kl_coef,
                         kl_in_reward=False, **options)
        self.clip_epsilon = clip_epsilon
        self.clip_epsilon_high = clip_epsilon_high
        self.loss_type = loss_type
        self.scale_rewards = scale_rewards
        self.importance_sampling_level = importance_sampling_level
        self.mask_truncated_completions = bool(mask_truncated_completions)
        self.top_entropy_quantile = float(top_entropy_quantile)

    def compute_advantages(self, rollout, batch):
        advantages, _ = adv.group_normalized_advantages(
            sequence_return(rollout), self.group_size, self.scale_rewards,
            valid=rollout["valid"], sum_fn=cross_replica_sum)
        result = {"advantages": adv.broadcast_sequence_advantages(
            advantages, rollout["completion_mask"])}
        if self.mask_truncated_completions:
            kept = 1.0 - truncated_completions(rollout, self.max_new_tokens, self.eos_id)
            result["loss_mask"] = rollout["loss_mask"] * kept[:, None]
        return result

    def loss_terms(self, minibatch, scores, values):
        log_probs = scores.log_probs
        mask = minibatch["loss_mask"]
        surrogate, _, clipped = losses.ppo_clipped_surrogate(
            log_probs, minibatch["old_log_probs"], minibatch["advantages"],
            self.clip_epsilon, mask, self.clip_epsilon_high, self.importance_sampling_level)
        if self.top_entropy_quantile < 1.0:
            surrogate *= losses.high_entropy_mask(scores.entropy, mask,
                                                  self.top_entropy_quantile)
        terms = {"policy_loss": (surrogate, 1.0, self.loss_aggregation)}
        if self.reference_model is not None:
            kl = losses.kl_penalty(scores.temperature_log_probs, minibatch["ref_log_probs"],
                                   self.kl_estimator)
            terms["kl_loss"] = (kl, self.kl_coef, self.loss_aggregation)
        return terms, approx_kl_and_clip_fraction(log_probs, minibatch, clipped)

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
                      top_entropy_quantile=self.top_entropy_quantile)
        config.pop("kl_in_reward")
        return config


def approx_kl_and_clip_fraction(log_probs, minibatch, clipped):
    """Per-token diagnostics of a clipped-surrogate update (TRL's definitions)."""
    log_ratio = log_probs - minibatch["old_log_probs"]
    return {"approx_kl": 0.5 * log_ratio ** 2, "clip_fraction": clipped}
