"""Proximal Policy Optimization (Schulman et al., 2017) for language models."""

import keras

from tfpg import advantages as adv
from tfpg import losses
from tfpg.algorithms.base import PolicyGradientTrainer
from tfpg.algorithms.grpo import CLIP_RATIO_METRICS, approx_kl_and_clip_fraction
from tfpg.distribution import cross_replica_sum
from tfpg.guards import bounds


@keras.saving.register_keras_serializable(package="tfpg")
class PPO(PolicyGradientTrainer):
    """PPO with GAE, a clipped surrogate, value clipping and a per-token KL penalty.

    Per token the reward is -kl_coef * KL(pi || ref), plus the score on the last
    token (Ziegler et al., 2019; TRL's PPOTrainer). Advantages come from GAE(gamma,
    lambda) and are whitened over the batch. Each rollout is used for `num_epochs`
    passes of `num_minibatches` minibatches:

        L = -min(ratio A, clip(ratio, 1 - eps, 1 + eps) A)
            + value_coef * max((V - R)^2, (clip(V, V_old +- c) - R)^2) / 2
            - entropy_coef * H

    `delta` (INTELLECT-2's two-sided clip, as GRPO's) caps the unclipped ratio too,
    bounding what a token with a negative advantage and a huge ratio contributes.

    Args:
        gamma: float. Discount of GAE.
        gae_lambda: float. Lambda of GAE.
        clip_epsilon: float. `eps` of the clipped surrogate (>= 0).
        value_clip: float or None. `c` of the value clipping: the new value is kept
            within `V_old +- c`; None: no clipping.
        whiten_advantages: bool. Whiten the GAE advantages over the batch's scored
            tokens.
        delta: float or None. Cap of the unclipped ratio (two-sided clipping, > 0);
            None: off.

    Other arguments: see `PolicyGradientTrainer` (`kl_coef` defaults to 0.05,
    `num_epochs` to 4 here; `value_model`, a `ValueNetwork`, is needed).

    Example:
    >>> tok = tfpg.Tokenizer.from_texts(["one two three four"], level="word")
    >>> policy = tfpg.PolicyNetwork(tok.vocabulary_size, embedding_dim=8, hidden_dim=16)
    >>> vocab_size = tok.vocabulary_size
    >>> agent = tfpg.algorithms.PPO(policy, value_model=tfpg.ValueNetwork(vocab_size),
    ...                             reward_fn=tfpg.rewards.BLEU(), kl_coef=0.05)
    """

    uses_value_model = True
    uses_ratio = True
    reuses_rollouts = True

    def __init__(self, policy, reward_fn, value_model=None, kl_coef=0.05, gamma=1.0,
                 gae_lambda=0.95, clip_epsilon=0.2, value_clip=0.2, whiten_advantages=True,
                 num_epochs=4, delta=None, **options):
        bounds.check_non_negative("clip_epsilon", clip_epsilon)
        if delta is not None:
            bounds.check_positive("delta", delta)
        super().__init__(policy, reward_fn, value_model=value_model, kl_coef=kl_coef,
                         num_epochs=num_epochs, **options)
        self.gamma = gamma
        self.gae_lambda = gae_lambda
        self.clip_epsilon = clip_epsilon
        self.value_clip = value_clip
        self.whiten_advantages = whiten_advantages
        self.delta = None if delta is None else float(delta)

    def compute_advantages(self, rollout, batch):
        mask = rollout.completion_mask
        advantages, returns = adv.generalized_advantage_estimation(
            rollout.token_rewards, rollout.values, mask, self.gamma, self.gae_lambda)
        if self.whiten_advantages:
            # Over the scored tokens only: skipped samples are in no statistic.
            advantages = adv.whiten(advantages, rollout.loss_mask,
                                    sum_fn=cross_replica_sum)
        return {"advantages": advantages, "returns": returns}

    def loss_terms(self, minibatch, scores, values):
        log_probs = scores.log_probs
        surrogate, ratio, clipped = losses.ppo_clipped_surrogate(
            log_probs, minibatch.old_log_probs, minibatch.advantages,
            self.clip_epsilon, minibatch.loss_mask, delta=self.delta)
        terms = {"policy_loss": (surrogate, 1.0, self.loss_aggregation),
                 "value_loss": self.value_term(minibatch, values, self.value_clip)}
        return terms, approx_kl_and_clip_fraction(log_probs, minibatch, clipped, ratio,
                                                  minibatch.advantages,
                                                  self.clip_epsilon, self.delta)

    def metric_names(self):
        return super().metric_names() + list(CLIP_RATIO_METRICS)

    def get_config(self):
        config = super().get_config()
        config.update(gamma=self.gamma, gae_lambda=self.gae_lambda,
                      clip_epsilon=self.clip_epsilon, value_clip=self.value_clip,
                      whiten_advantages=self.whiten_advantages, delta=self.delta)
        return config
