"""Advantage actor-critic (Mnih et al., 2016), one update per rollout."""

import keras

from tfpg import advantages as adv
from tfpg.algorithms.base import PolicyGradientTrainer


@keras.saving.register_keras_serializable(package="tfpg")
class A2C(PolicyGradientTrainer):
    """Actor-critic with TD / GAE advantages from a learned critic.

    `gae_lambda=0` is the one-step TD advantage A_t = r_t + gamma V(s_{t+1}) - V(s_t);
    values up to 1 blend in longer returns (GAE). The
    default, 0.95, is there because a critic that starts untrained makes the one-step
    advantage badly biased: on the bundled arithmetic task `gae_lambda=0` collapsed
    the policy (exact match 0.40 -> 0.02) where 0.95 reached 0.97. The critic
    (`value_model=`) is fitted to the lambda-returns.
    Loss: -A log pi + value_coef * value loss - entropy_coef * entropy, token mean.

    Args:
        gamma: float. Discount of the TD / GAE advantages.
        gae_lambda: float. Lambda of GAE, in ``[0, 1]``; 0 gives the one-step TD
            advantage.

    Other arguments: see `PolicyGradientTrainer` (`entropy_coef` defaults to 0.01
    here; `value_model`, a `ValueNetwork`, is needed).

    Example:
    >>> tok = tfpg.Tokenizer.from_texts(["one two three four"], level="word")
    >>> policy = tfpg.PolicyNetwork(tok.vocabulary_size, embedding_dim=8, hidden_dim=16)
    >>> reward = tfpg.rewards.Length(eos_id=tok.eos_id)
    >>> agent = tfpg.algorithms.A2C(policy, reward_fn=reward,
    ...                             value_model=tfpg.ValueNetwork(tok.vocabulary_size))
    """

    uses_value_model = True

    def __init__(self, policy, reward_fn, value_model=None, gamma=1.0, gae_lambda=0.95,
                 entropy_coef=0.01, **options):
        super().__init__(policy, reward_fn, value_model=value_model,
                         entropy_coef=entropy_coef, **options)
        self.gamma = gamma
        self.gae_lambda = gae_lambda

    def compute_advantages(self, rollout, batch):
        advantages, returns = adv.generalized_advantage_estimation(
            rollout.token_rewards, rollout.values, rollout.completion_mask,
            self.gamma, self.gae_lambda)
        return {"advantages": advantages, "returns": returns}

    def loss_terms(self, minibatch, scores, values):
        log_probs = scores.log_probs
        return {"policy_loss": self.policy_gradient_term(minibatch, log_probs),
                "value_loss": self.value_term(minibatch, values)}, {}

    def get_config(self):
        config = super().get_config()
        config.update(gamma=self.gamma, gae_lambda=self.gae_lambda)
        return config
