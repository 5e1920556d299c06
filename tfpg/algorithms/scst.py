"""Self-critical sequence training (Rennie et al., 2017)."""

import keras
import tensorflow as tf

from tfpg import advantages as adv
from tfpg.algorithms.base import PolicyGradientTrainer
from tfpg.rewards.base import compute_rewards


@keras.saving.register_keras_serializable(package="tfpg")
class SCST(PolicyGradientTrainer):
    """REINFORCE whose baseline is the reward of the policy's own greedy decode.

    For every prompt the greedy completion is scored with the same reward; a sample
    is reinforced only if it beats what the model would say at test time. The
    greedy decode costs one extra generation per step and no critic.

    Args:
        reward_fn: callable or `tfpg.rewards.Reward`. Scores both the samples and the
            greedy decode, the baseline; a sample whose greedy decode is skipped
            leaves the loss.

    Other arguments: see `PolicyGradientTrainer` (no `env`: the baseline is a
    single-turn decode).

    Example:
    >>> tok = tfpg.Tokenizer.from_texts(["one two three four"], level="word")
    >>> policy = tfpg.PolicyNetwork(tok.vocabulary_size, embedding_dim=8, hidden_dim=16)
    >>> agent = tfpg.algorithms.SCST(policy, reward_fn=tfpg.rewards.BLEU(), max_new_tokens=16)
    """

    default_loss_aggregation = "sequence_sum"
    supports_env = False    # the baseline is a single-turn greedy decode scored by reward_fn

    def compute_advantages(self, rollout, batch):
        mask = rollout.completion_mask
        greedy = self.sample(rollout.prompt_ids, self.sampling_seed(), greedy=True,
                             prompt_mask=rollout.prompt_mask)
        scored = compute_rewards(self.reward_fn, rollout.prompt_ids, greedy.token_ids,
                                 greedy.mask, batch, self.on_invalid_reward)
        baseline = scored.rewards                                                    # [B]
        returns = adv.discounted_returns(rollout.token_rewards, mask)             # [B, N]
        # A sample whose greedy baseline was skipped has no baseline: it leaves the loss.
        return {"advantages": (returns - tf.stop_gradient(baseline)[:, None]) * mask,
                "loss_mask": rollout.loss_mask * scored.valid[:, None]}

    def loss_terms(self, minibatch, scores, values):
        log_probs = scores.log_probs
        return {"policy_loss": self.policy_gradient_term(minibatch, log_probs)}, {}
