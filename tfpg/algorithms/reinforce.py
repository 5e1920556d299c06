"""REINFORCE (Williams, 1992) with an optional baseline."""

import keras
import tensorflow as tf

from tfpg import advantages as adv
from tfpg.algorithms.base import PolicyGradientTrainer
from tfpg.distribution import cross_replica_sum

BASELINES = (None, "moving_average", "value")


@keras.saving.register_keras_serializable(package="tfpg")
class REINFORCE(PolicyGradientTrainer):
    """Policy gradient with the Monte-Carlo return: loss = -sum_t (G_t - b_t) log pi(a_t|s_t).

    Baselines: None; "moving_average" (a bias-corrected exponential average of past
    sequence returns, the classic MIXER-style baseline); "value" (a learned critic
    V(s_t), trained to the returns with `value_coef`; pass `value_model=`).
    Loss aggregation defaults to "sequence_sum" (the textbook estimator: each
    sequence's summed token terms, averaged over the batch).

    Args:
        baseline: `"moving_average"`, `"value"` or None. The baseline subtracted from
            the returns (see above); None: no baseline.
        gamma: float. Discount of the Monte-Carlo returns.
        baseline_decay: float. Decay of the "moving_average" baseline, in ``[0, 1)``.

    Other arguments: see `PolicyGradientTrainer`.

    Example:
    >>> tok = tfpg.Tokenizer.from_texts(["one two three four"], level="word")
    >>> policy = tfpg.PolicyNetwork(tok.vocabulary_size, embedding_dim=8, hidden_dim=16)
    >>> dataset = tfpg.data.prompt_dataset(["one two", "three"], tok, references=["three", "four"],
    ...                                    batch_size=2)
    >>> agent = tfpg.algorithms.REINFORCE(policy, reward_fn=tfpg.rewards.BLEU(),
    ...                                   baseline="moving_average", max_new_tokens=4)
    >>> agent.compile(optimizer=keras.optimizers.Adam(1e-3))
    >>> history = agent.fit(dataset, epochs=2, verbose=0)
    >>> sorted(history.history)
    ['completion_length', 'entropy', 'policy_loss', 'reward', 'reward_std', 'truncated_fraction']
    """

    default_loss_aggregation = "sequence_sum"

    def __init__(self, policy, reward_fn, baseline=None, gamma=1.0, baseline_decay=0.9,
                 **options):
        if baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")
        if baseline == "value" and options.get("value_model") is None:
            raise ValueError('baseline="value" needs value_model= (a ValueNetwork)')
        if baseline != "value" and options.get("value_model") is not None:
            raise ValueError('value_model= is only used with baseline="value"')
        super().__init__(policy, reward_fn, **options)
        self.baseline = baseline
        self.gamma = gamma
        self.baseline_decay = baseline_decay
        self.moving_average = self.add_weight(shape=(), initializer="zeros",
                                              trainable=False, name="baseline_average",
                                              aggregation="only_first_replica")
        self.moving_average_count = self.add_weight(shape=(), initializer="zeros",
                                                    trainable=False, name="baseline_count",
                                                    aggregation="only_first_replica")

    def compute_advantages(self, rollout, batch):
        mask = rollout.completion_mask
        returns = adv.discounted_returns(rollout.token_rewards, mask, self.gamma)  # [B, N]
        if self.baseline is None:
            return {"advantages": returns}
        if self.baseline == "value":
            return {"advantages": (returns - rollout.values) * mask, "returns": returns}
        baseline = tf.identity(self.moving_average)          # the average before this batch
        valid = rollout.valid                              # skipped samples: not averaged
        totals = cross_replica_sum(tf.stack([tf.reduce_sum(returns[:, 0] * valid),
                                             tf.reduce_sum(valid)]))
        average, count = adv.update_moving_average(
            self.moving_average, self.moving_average_count,
            tf.reshape(tf.math.divide_no_nan(totals[0], totals[1]), [1]),
            self.baseline_decay, weights=tf.reshape(totals[1], [1]))
        self.moving_average.assign(average)
        self.moving_average_count.assign(count)
        # The first batch has no baseline yet (count 0): plain returns.
        baseline = tf.where(self.moving_average_count > 1, baseline, 0.0)
        return {"advantages": (returns - baseline) * mask}

    def loss_terms(self, minibatch, scores, values):
        log_probs = scores.log_probs
        terms = {"policy_loss": self.policy_gradient_term(minibatch, log_probs)}
        if self.baseline == "value":
            terms["value_loss"] = self.value_term(minibatch, values)
        return terms, {}

    def get_config(self):
        config = super().get_config()
        config.update(baseline=self.baseline, gamma=self.gamma,
                      baseline_decay=self.baseline_decay)
        return config
