"""A trainer's update over its rollout: the loss of a minibatch and its gradients
under `tf.GradientTape`, the optimizer steps over `num_epochs` x `num_minibatches`
minibatches, and TR-DPO's reference sync.

These are mixins of `PolicyGradientTrainer` (`tfpg.algorithms.base`), one concern
each: methods only, reading the trainer's options and models (`self.policy`,
`self.max_new_tokens`, ...); the trainer's constructor sets them.
"""

import tensorflow as tf

from tfpg import losses
from tfpg.algorithms.rollout import as_rollout
from tfpg.distribution import (apply_gradients, cross_replica_sum, is_loss_scale_optimizer,
                               num_replicas, scale_loss)
from tfpg.models.checkpointing import gradient_checkpointing
from tfpg.xla import in_xla_context

# Folded into the step seed for the minibatch permutation: a stream of its own, so that
# the order of the rows never repeats the decode's sampling noise (which, with
# inverse-CDF sampling, would sort the rows by the tokens they sampled).
MINIBATCH_STREAM = 0x6D696E69   # "mini"


class PolicyUpdate:
    """The update of `PolicyGradientTrainer` (see the module docstring)."""

    def _aggregate(self, per_token, mask, mode, rollout_tokens=None):
        """Scalar loss whose sum over replicas is the single-device loss.

        `rollout_tokens`: this replica's real-token count of the whole rollout (the
        "rollout_token_mean" denominator; the minibatch's own count without one)."""
        normalizer = self.max_new_tokens
        if mode == "rollout_token_mean":
            normalizer = tf.reduce_sum(mask) if rollout_tokens is None else rollout_tokens
        numerator, denominator = losses.aggregate_loss_terms(per_token, mask, mode,
                                                             normalizer)
        return tf.math.divide_no_nan(numerator,
                                     cross_replica_sum(tf.stop_gradient(denominator)))

    def loss_and_gradients(self, minibatch, rollout_tokens=None):
        """Total loss, its gradients and the logs of one minibatch.

        `rollout_tokens`: the real-token count of the rollout the minibatch is drawn
        from (see `_aggregate`); None when the minibatch is the whole rollout.

        The gradients are of the loss times the loss scale under a
        `LossScaleOptimizer` (mixed_float16), as `optimizer.apply` expects them.
        """
        minibatch = as_rollout(minibatch)
        mask = minibatch.loss_mask
        with tf.GradientTape() as tape, gradient_checkpointing(self.gradient_checkpointing):
            scores = self.score_completions(
                self.policy, minibatch, mask, support=minibatch.support,
                entropy=True, entropy_gradient=self.uses_entropy_bonus,
                temperature_log_probs=self.needs_temperature_log_probs)
            if not self.uses_entropy_bonus:    # logged only: score_tokens gives it no gradient
                scores = scores._replace(entropy=tf.stop_gradient(scores.entropy))
            if minibatch.old_log_probs is None:    # see `scores_rollout`
                minibatch = minibatch.replace(
                    old_log_probs=tf.stop_gradient(scores.log_probs))
            values = None
            if self.value_model is not None:
                values = self.completion_values(minibatch.prompt_ids,
                                                minibatch.completion_ids,
                                                minibatch.completion_mask,
                                                minibatch.prompt_mask)
            terms, token_metrics = self.loss_terms(minibatch, scores, values)
            entropy = self._aggregate(scores.entropy, mask, "token_mean")
            logs = {"entropy": entropy}
            total = 0.0
            if self.uses_entropy_bonus:
                # The mean entropy of the tokens the bonus acts on (TRL: those of the
                # policy term), whatever the loss's own aggregation.
                bonus_mask = self.entropy_bonus_mask(minibatch, scores)
                logs["bonus_entropy"] = (entropy if bonus_mask is mask else
                                         self._aggregate(scores.entropy, bonus_mask,
                                                         "token_mean"))
                total = -self.entropy_coefficient() * logs["bonus_entropy"]
            for name, (per_token, coefficient, mode) in terms.items():
                logs[name] = self._aggregate(per_token, mask, mode, rollout_tokens)
                total += coefficient * logs[name]
            scaled = scale_loss(self.optimizer, total)      # float16: loss scaling
        variables = self.trainable_variables
        gradients = tape.gradient(scaled, variables)
        for name, per_token in token_metrics.items():
            logs[name] = self._aggregate(per_token, mask, "token_mean")
        return total, gradients, {name: cross_replica_sum(value) for name, value in logs.items()}

    def apply_gradients(self, gradients):
        """All-reduces, clips (`max_grad_norm`) and applies `gradients` as
        `loss_and_gradients` gives them (times the loss scale under a
        `LossScaleOptimizer`) to `trainable_variables`."""
        apply_gradients(self.optimizer, gradients, self.trainable_variables,
                        self.max_grad_norm)

    def optimizer_step(self, minibatch, rollout_tokens=None):
        """One optimizer step on `minibatch` (`loss_and_gradients`, then
        `apply_gradients`), its logs recorded, `after_update` and a TR-DPO sync."""
        total, gradients, logs = self.loss_and_gradients(minibatch, rollout_tokens)
        total = tf.debugging.check_numerics(
            total, f"{type(self).__name__}: the loss is not finite")
        with tf.control_dependencies([total]):
            self.apply_gradients(gradients)
        self._record(logs)
        self.after_update(logs)
        if self.sync_ref_model:
            self._sync_reference()

    def _sync_reference(self):
        """TR-DPO: every `ref_model_sync_steps` optimizer steps, reference <-
        alpha * policy + (1 - alpha) * reference, weight by weight (after the step's
        update, as TRL's callback at the step's end)."""
        alpha = self.ref_model_mixup_alpha
        due = tf.equal(self.optimizer.iterations % self.ref_model_sync_steps, 0)
        pairs = [(target, source) for target, source in
                 zip(self.reference_model.weights, self.policy.weights)
                 if "float" in str(target.dtype)]

        def mix(target, source, due):
            return target.assign(tf.where(due, alpha * source + (1.0 - alpha) * target,
                                          target))

        context = tf.distribute.get_replica_context()
        if context is not None and num_replicas() > 1:
            def merged(strategy, due):
                for target, source in pairs:
                    strategy.extended.update(target, mix, args=(source, due))
            context.merge_call(merged, args=(due,))
        else:
            for target, source in pairs:
                mix(target, source, due)

    def update(self, rollout):
        """`num_epochs` x `num_minibatches` gradient steps over one rollout.

        A `tf.while_loop` rather than a Python loop, so the graph holds one copy of
        the update however many steps there are (tracing stays fast). Under a
        multi-replica strategy the steps are unrolled instead: `tf.distribute` cannot
        synchronise replicas (all-reduce) inside a while loop; under XLA too (see
        below).
        """
        steps = self.num_epochs * self.num_minibatches
        if steps == 1:
            self.optimizer_step(rollout)
            return
        minibatches = self.minibatch_rows(rollout)
        rollout_tokens = tf.reduce_sum(rollout.loss_mask)
        # XLA compiles a while loop of optimizer updates very slowly (minutes for a
        # small PPO on CPU) and runs it slower still: unrolled, it compiles like
        # `steps` copies of one update.
        if num_replicas() > 1 or in_xla_context():
            for step in range(steps):
                self.optimizer_step(minibatches(tf.constant(step)), rollout_tokens)
            return

        def body(step):
            self.optimizer_step(minibatches(step), rollout_tokens)
            return (step + 1,)          # a tuple like loop_vars: eager unpacks it too

        tf.while_loop(lambda step: step < steps, body, (tf.constant(0),))

    def minibatch_rows(self, rollout):
        """A function of the step index giving that step's minibatch of the rollout
        (a `Rollout`, or any structure of [B, ...] tensors with "completion_mask")."""
        size = tf.shape(rollout["completion_mask"])[0]
        static_size = rollout["completion_mask"].shape[0]
        if static_size is not None and static_size < self.num_minibatches:
            raise ValueError(f"num_minibatches={self.num_minibatches} is more than the "
                             f"{static_size} rows of the rollout")
        seed = tf.random.experimental.stateless_fold_in(self.sampling_seed(),
                                                        MINIBATCH_STREAM)
        # A random permutation per epoch as the argsort of uniforms (XLA has no
        # shuffle op; ties have probability ~0 and would still give a permutation).
        orders = tf.stack([                                             # [epochs, B]
            tf.argsort(tf.random.stateless_uniform(
                [size], tf.random.experimental.stateless_fold_in(seed, epoch)))
            for epoch in range(self.num_epochs)])
        # Minibatch i holds rows [i B / M, (i + 1) B / M) of the order: sizes differ by
        # at most one, and none is empty while B >= M (6 rows in 4: 1, 2, 1, 2).
        if not in_xla_context():    # XLA compiles assertions away
            check = tf.debugging.assert_greater_equal(
                size, self.num_minibatches, message="num_minibatches is more than the "
                "rows of the rollout: a minibatch would be empty")
            with tf.control_dependencies([check]):
                size = tf.identity(size)
        bounds = tf.range(self.num_minibatches + 1) * size // self.num_minibatches

        def minibatch(step):
            epoch, index = step // self.num_minibatches, step % self.num_minibatches
            rows = orders[epoch][bounds[index]:bounds[index + 1]]
            return tf.nest.map_structure(lambda value: tf.gather(value, rows), rollout)

        return minibatch

    def learn(self, rollout, batch):
        """The step after its rollout is collected: the algorithm's advantages (of
        `rollout.for_advantages()`), kept as `last_rollout`, then `update`."""
        rollout.update(self.compute_advantages(rollout.for_advantages(), batch))
        if num_replicas() == 1 and not in_xla_context():   # XLA cannot resize variables
            kept = rollout.for_advantages()
            for key, variable in self._last_rollout.items():
                variable.assign(kept[key])
        self.update(rollout)

    def rollout_gradients(self, rollout, batch):
        """Gradients of the loss of a collected `rollout` (its advantages added in
        place) w.r.t. `trainable_variables`, no update: the gradients of the loss
        itself, divided by the loss scale under a `LossScaleOptimizer` (float16)."""
        rollout.update(self.compute_advantages(rollout.for_advantages(), batch))
        _, gradients, _ = self.loss_and_gradients(rollout)
        if is_loss_scale_optimizer(self.optimizer):
            scale = self.optimizer.dynamic_scale
            gradients = [None if g is None else tf.convert_to_tensor(g) / scale
                         for g in gradients]
        return gradients
