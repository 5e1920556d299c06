"""The trainer's logs: which names a trainer logs, how a step records them, and the
rollout's statistics (reward, lengths, KL; the adaptive KL coefficient).

These are mixins of `PolicyGradientTrainer` (`tfpg.algorithms.base`), one concern
each: methods only, reading the trainer's options and models (`self.policy`,
`self.max_new_tokens`, ...); the trainer's constructor sets them.
"""

import tensorflow as tf

from tfpg import advantages as adv
from tfpg.distribution import cross_replica_sum
from tfpg.envs import multi_turn

# What a step computes and deliberately does not log, and why. Every other value a
# step records must be one of `metric_names()` (`_record` refuses it otherwise), so no
# loss term or statistic is computed and silently dropped.
UNLOGGED = frozenset({
    # The entropy bonus's own mean (over the policy term's tokens): `entropy` is
    # logged, and this equals it unless GRPO's `top_entropy_quantile` < 1; GRPO's
    # adaptive controller reads it and logs its result, `entropy_coef`.
    "bonus_entropy",
    # With on_invalid_reward="raise" a step with an invalid reward fails: the count
    # is always 0 (logged with "zero" / "skip").
    "invalid_rewards",
})


class TrainerMetrics:
    """The logs of `PolicyGradientTrainer` (see the module docstring)."""

    def metric_names(self):
        """The logs this trainer returns from `train_step` (the names `fit` logs)."""
        names = ["reward", "reward_std", "policy_loss", "entropy", "completion_length",
                 "truncated_fraction"]
        if self.reference_model is not None:
            names.append("kl")
        if self.target_kl is not None:
            names.append("kl_coef")
        if self.value_model is not None:
            names.append("value_loss")
        if self.uses_ratio:
            names += ["clip_fraction", "approx_kl"]
        if self.group_size > 1:
            names.append("zero_std_fraction")
        if self.on_invalid_reward != "raise":
            names.append("invalid_rewards")
        if self.env is not None:
            names += multi_turn.metric_names(self.env)
        names += [f"reward/{name}" for name, _, _ in
                  getattr(self.reward_fn, "weighted_components", None) or ()]
        return names

    def unlogged_metrics(self):
        """The names a step computes and deliberately does not log (`UNLOGGED`)."""
        return UNLOGGED

    @property
    def metrics(self):
        return list(self._trackers.values())

    def _record(self, values):
        """Adds `values` (name -> scalar or [B] values) to the step's logs; a name
        that is neither logged (`metric_names`) nor in `UNLOGGED` is refused."""
        for name, value in values.items():
            if name in self._trackers:
                self._trackers[name].update_state(value)
            elif name not in self.unlogged_metrics():
                raise ValueError(f"{type(self).__name__} computes {name!r} but does not "
                                 "log it: add it to metric_names() (and to the metrics "
                                 "table of docs/algorithms.md) or to unlogged_metrics()")

    def record_rollout_metrics(self, rollout):
        """Records the rollout's logs: reward mean and std over valid rows (all
        replicas), completion length (the policy's tokens), truncated fraction, KL
        per sequence, zero-std groups; adapts `kl_coef` towards `target_kl`."""
        scores, valid = rollout.scores, rollout.valid
        reward_mean, reward_sq, count = self._global_moments(scores, valid)
        values = {
            "reward": reward_mean,
            "reward_std": tf.sqrt(tf.maximum(reward_sq - reward_mean ** 2, 0.0)),
            "completion_length": tf.reduce_sum(rollout.action_mask, axis=1),   # [B]
            "truncated_fraction": rollout.truncated,
        }
        if rollout.kl is not None:
            values["kl"] = tf.reduce_sum(rollout.kl, axis=1)                 # per sequence
        if self.group_size > 1:
            _, values["zero_std_fraction"] = adv.group_normalized_advantages(
                scores, self.group_size, valid=valid)                        # per group
        self._record(values)
        if self.target_kl is not None:
            self._update_kl_coef(values["kl"], count)

    def _global_moments(self, values, weights):
        """Weighted mean and mean of squares of values [B] over all replicas."""
        totals = cross_replica_sum(tf.stack([
            tf.reduce_sum(values * weights), tf.reduce_sum(values ** 2 * weights),
            tf.reduce_sum(weights)]))
        count = tf.maximum(totals[2], 1.0)
        return totals[0] / count, totals[1] / count, totals[2]

    def _update_kl_coef(self, sequence_kl, count):
        mean_kl, _, _ = self._global_moments(sequence_kl, tf.ones_like(sequence_kl))
        error = tf.clip_by_value(mean_kl / self.target_kl - 1.0, -0.2, 0.2)
        self.kl_coef.assign(self.kl_coef * (1.0 + error * count / self.kl_horizon))
        self._record({"kl_coef": self.kl_coef})
