"""Group Relative Policy Optimization (Shao et al., 2024, DeepSeekMath)."""

import keras

from tfpg import advantages as adv
from tfpg import losses
from tfpg.algorithms.base import PolicyGradientTrainer, sequence_return

LOSS_TYPES = {"grpo": "sequence_mean", "bnpo": "token_mean", "dapo": "token_mean",
              "dr_grpo": "constant"}


@keras.saving.register_keras_serializable(package="tfpg")
class GRPO(PolicyGradientTrainer):
    """Group-normalised advantages, a clipped surrogate, and a k3 KL term in the loss.

    For each prompt `group_size` completions are sampled; advantage = (r - mean) / std
    over the group (`scale_rewards=False` keeps only the mean, as Dr. GRPO advises).
    Loss per token: -min(ratio A, clip(ratio) A) + kl_coef * k3(pi, ref), aggregated
    by `loss_type`: "grpo" (mean per sequence, then over sequences), "bnpo" / "dapo"
    (mean over all tokens), "dr_grpo" (sum / (B * max_new_tokens)).

    Example:
    >>> agent = tfpg.algorithms.GRPO(policy, reward_fn=reward, group_size=8,
    ...                              kl_coef=0.04, num_epochs=2)
    """

    uses_ratio = True
    min_group_size = 2

    def __init__(self, policy, reward_fn, group_size=8, kl_coef=0.04, clip_epsilon=0.2,
                 loss_type="grpo", scale_rewards=True, **options):
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {sorted(LOSS_TYPES)}, got {loss_type!r}")
        options.setdefault("kl_estimator", "k3")
        options.setdefault("loss_aggregation", LOSS_TYPES[loss_type])
        super().__init__(policy, reward_fn, group_size=group_size, kl_coef=kl_coef,
                         kl_in_reward=False, **options)
        self.clip_epsilon = clip_epsilon
        self.loss_type = loss_type
        self.scale_rewards = scale_rewards

    def compute_advantages(self, rollout, batch):
        advantages, _ = adv.group_normalized_advantages(
            sequence_return(rollout), self.group_size, scale_by_std=self.scale_rewards)
        return {"advantages": adv.broadcast_sequence_advantages(
            advantages, rollout["completion_mask"])}

    def loss_terms(self, minibatch, log_probs, values, logits):
        mask = minibatch["loss_mask"]
        surrogate, ratio, clipped = losses.ppo_clipped_surrogate(
            log_probs, minibatch["old_log_probs"], minibatch["advantages"],
            self.clip_epsilon, mask)
        terms = {"policy_loss": (surrogate, 1.0, self.loss_aggregation)}
        if self.reference_model is not None:
            policy_log_probs = losses.token_log_probs(
                logits, minibatch["completion_ids"], self.temperature, mask)
            kl = losses.kl_penalty(policy_log_probs, minibatch["ref_log_probs"],
                                   self.kl_estimator)
            terms["kl_loss"] = (kl, self.kl_coef, self.loss_aggregation)
        return terms, approx_kl_and_clip_fraction(log_probs, minibatch, clipped)

    def get_config(self):
        config = super().get_config()
        config.update(clip_epsilon=self.clip_epsilon, loss_type=self.loss_type,
                      scale_rewards=self.scale_rewards)
        config.pop("kl_in_reward")
        return config


def approx_kl_and_clip_fraction(log_probs, minibatch, clipped):
    """Per-token diagnostics of a clipped-surrogate update (TRL's definitions)."""
    log_ratio = log_probs - minibatch["old_log_probs"]
    return {"approx_kl": 0.5 * log_ratio ** 2, "clip_fraction": clipped}
