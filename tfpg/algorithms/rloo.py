"""REINFORCE leave-one-out (Kool et al., 2019; Ahmadian et al., 2024)."""

import keras
import tensorflow as tf

from tfpg import advantages as adv
from tfpg import losses
from tfpg.algorithms.base import PolicyGradientTrainer
from tfpg.algorithms.grpo import CLIP_RATIO_METRICS, approx_kl_and_clip_fraction
from tfpg.algorithms.rollout import sequence_return
from tfpg.distribution import cross_replica_sum
from tfpg.guards import bounds


@keras.saving.register_keras_serializable(package="tfpg")
class RLOO(PolicyGradientTrainer):
    """K samples per prompt; each sample's baseline is the mean reward of the other K-1.

    The sequence reward is the score minus the KL penalty summed over the completion
    (as in TRL's RLOO). The leave-one-out baseline is unbiased and needs no critic.

    With `num_epochs` or `num_minibatches` > 1 a rollout serves several gradient
    steps, and the loss becomes the clipped surrogate of a sequence-level ratio
    (TRL's RLOO): per sequence -min(rho A, clip(rho, 1 - eps, 1 + eps) A) with
    rho = pi(y | x) / pi_old(y | x), averaged over the sequences. At rho = 1 its
    gradient is exactly that of the default "sequence_sum" -A log pi(y | x), so
    the first step is the plain RLOO step. (`clip_fraction` and `approx_kl` are
    then logged; with one step per rollout the plain loss is used.)

    `normalize_advantages=True` (TRL's option; REINFORCE++-baseline, Hu et al.,
    2025) standardises the leave-one-out advantages over the whole batch,
    (A - mean) / (std + 1e-4), so every batch's update has the same scale.

    Args:
        clip_epsilon: float. `eps` of the sequence-level clipped surrogate, used when
            a rollout serves several gradient steps (>= 0).
        normalize_advantages: bool. Standardise the leave-one-out advantages over the
            whole batch.

    Other arguments: see `PolicyGradientTrainer` (`group_size`, K >= 2,
    defaults to 4 here).

    Example:
    >>> tok = tfpg.Tokenizer.from_texts(["one two three four"], level="word")
    >>> policy = tfpg.PolicyNetwork(tok.vocabulary_size, embedding_dim=8, hidden_dim=16)
    >>> reward = tfpg.rewards.Length(eos_id=tok.eos_id)
    >>> agent = tfpg.algorithms.RLOO(policy, reward_fn=reward, group_size=4, kl_coef=0.05)
    """

    default_loss_aggregation = "sequence_sum"
    min_group_size = 2
    reuses_rollouts = True

    def __init__(self, policy, reward_fn, group_size=4, clip_epsilon=0.2,
                 normalize_advantages=False, **options):
        bounds.check_non_negative("clip_epsilon", clip_epsilon)
        super().__init__(policy, reward_fn, group_size=group_size, **options)
        self.clip_epsilon = clip_epsilon
        self.normalize_advantages = bool(normalize_advantages)

    @property
    def uses_ratio(self):
        """A clipped ratio only where samples are reused."""
        return self.num_epochs * self.num_minibatches > 1

    def compute_advantages(self, rollout, batch):
        mask = rollout.completion_mask
        sequence_rewards = sequence_return(rollout)                         # [B]
        advantages = adv.rloo_advantages(sequence_rewards, self.group_size,
                                         rollout.valid)                   # [B]
        if self.normalize_advantages:
            advantages = adv.standardize(advantages, rollout.valid,
                                         sum_fn=cross_replica_sum)
        return {"advantages": adv.broadcast_sequence_advantages(advantages, mask)}

    def loss_terms(self, minibatch, scores, values):
        log_probs = scores.log_probs
        if not self.uses_ratio:
            return {"policy_loss": self.policy_gradient_term(minibatch, log_probs)}, {}
        mask = minibatch.loss_mask
        # log pi(y | x) of each sequence, and its advantage: [B, 1].
        sequence_log_probs = losses.masked_sum(log_probs, mask, axis=1)[:, None]
        old = losses.masked_sum(minibatch.old_log_probs, mask, axis=1)[:, None]
        advantages = minibatch.advantages[:, :1]
        surrogate, _, clipped = losses.ppo_clipped_surrogate(
            sequence_log_probs, old, advantages, self.clip_epsilon)         # [B, 1]
        # The sequence's loss on each of its tokens, averaged per sequence.
        per_token = tf.broadcast_to(surrogate, tf.shape(mask))
        token_clipped = tf.broadcast_to(clipped, tf.shape(mask))
        ratio = tf.broadcast_to(tf.exp(sequence_log_probs - old), tf.shape(mask))
        return ({"policy_loss": (per_token, 1.0, "sequence_mean")},
                approx_kl_and_clip_fraction(log_probs, minibatch, token_clipped, ratio,
                                            minibatch.advantages, self.clip_epsilon))

    def metric_names(self):
        names = super().metric_names()
        return names + (list(CLIP_RATIO_METRICS) if self.uses_ratio else [])

    def get_config(self):
        config = super().get_config()
        config.update(clip_epsilon=self.clip_epsilon,
                      normalize_advantages=self.normalize_advantages)
        return config
