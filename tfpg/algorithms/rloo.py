"""REINFORCE leave-one-out (Kool et al., 2019; Ahmadian et al., 2024)."""

import keras

from tfpg import advantages as adv
from tfpg.algorithms.base import PolicyGradientTrainer, sequence_return


@keras.saving.register_keras_serializable(package="tfpg")
class RLOO(PolicyGradientTrainer):
    """K samples per prompt; each sample's baseline is the mean reward of the other K-1.

    The sequence reward is the score minus the KL penalty summed over the completion
    (as in TRL's RLOO). The leave-one-out baseline is unbiased and needs no critic.

    Example:
    >>> agent = tfpg.algorithms.RLOO(policy, reward_fn=reward, group_size=4, kl_coef=0.05)
    """

    default_loss_aggregation = "sequence_sum"
    min_group_size = 2

    def __init__(self, policy, reward_fn, group_size=4, **options):
        super().__init__(policy, reward_fn, group_size=group_size, **options)

    def compute_advantages(self, rollout, batch):
        mask = rollout["completion_mask"]
        sequence_rewards = sequence_return(rollout)                         # [B]
        advantages = adv.rloo_advantages(sequence_rewards, self.group_size)  # [B]
        return {"advantages": adv.broadcast_sequence_advantages(advantages, mask)}

    def loss_terms(self, minibatch, log_probs, values, logits):
        return {"policy_loss": self.policy_gradient_term(minibatch, log_probs)}, {}
