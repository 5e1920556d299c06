"""Collecting a trainer's rollout: the rollout source (in-graph sampling and the
reward, or multi-turn episodes, `tfpg.algorithms.episodes`), then the scoring passes
(behaviour and reference log-probs, KL, values) over the sampled completions.

These are mixins of `PolicyGradientTrainer` (`tfpg.algorithms.base`), one concern
each: methods only, reading the trainer's options and models (`self.policy`,
`self.max_new_tokens`, ...); the trainer's constructor sets them.
"""

import functools

import tensorflow as tf

from tfpg import advantages as adv
from tfpg import losses
from tfpg.algorithms import episodes
from tfpg.algorithms.rollout import Rollout, as_rollout, truncated_completions
from tfpg.algorithms.token_scores import SamplingFilter, score_tokens
from tfpg.distribution import replica_rows
from tfpg.generation import check_decode_size, decode_loop, prompt_padding_mask
from tfpg.rewards.base import compute_rewards
from tfpg.xla import in_xla_context


class RolloutCollection:
    """Sampling and scoring of `PolicyGradientTrainer` (see the module docstring)."""

    def sampling_seed(self):
        """A fresh [2] seed per optimizer step, reproducible from `seed`."""
        step = tf.cast(self.optimizer.iterations, tf.int32)
        return tf.stack([tf.constant(self.seed, tf.int32), step])

    def sample(self, prompt_ids, seed, greedy=False, prompt_mask=None):
        """Completions of prompt_ids [B, P] (real tokens: prompt_mask [B, P]) with the
        trainer's sampling options."""
        greedy = greedy or self.sampler == "greedy"
        noise_rows = replica_rows(tf.shape(prompt_ids)[0])   # all-reduces: not in XLA
        decode = self._decode
        if getattr(self, "jit_decode", False) and not in_xla_context():
            decode = self._xla_decode
        return decode(prompt_ids, seed, greedy, noise_rows,
                      self.prompt_mask(prompt_ids, prompt_mask))

    def _decode(self, prompt_ids, seed, greedy, noise_rows, prompt_mask):
        return decode_loop(self.policy, prompt_ids, self.max_new_tokens, seed,
                           self.temperature, self.top_k, self.top_p, greedy, self.eos_id,
                           self.sampled_suppress_ids, noise_rows, prompt_mask)

    def prompt_mask(self, prompt_ids, prompt_mask=None):
        """bool [B, P]: the batch's "prompt_mask", or one derived from the policy's pad id."""
        return prompt_padding_mask(self.policy, prompt_ids, prompt_mask)

    @functools.cached_property
    def _xla_decode(self):
        """`_decode` compiled by XLA (traced once per greedy flag). Cached in the
        instance's __dict__, out of Keras' attribute tracking."""
        return tf.function(self._decode, jit_compile=True)

    def completion_hidden(self, model, prompt_ids, completion_ids, completion_mask,
                          prompt_mask=None):
        """(hidden states [B, N, H] at the positions that predict each completion
        token, the head that maps them to float32 logits [., V]).

        Only the trunk runs on the whole sequence: the head (the vocabulary
        projection) is left to `score_tokens`, which runs it on completion positions
        in chunks (a `Policy` that defines only `call` gives its logits as the
        "hidden states" and an identity head).
        """
        sequence = tf.concat([prompt_ids, completion_ids], axis=1)
        padding = tf.concat([self.prompt_mask(prompt_ids, prompt_mask),
                             completion_mask > 0], axis=1)
        start = tf.shape(prompt_ids)[1] - 1
        hidden = model.hidden_states(sequence, padding_mask=padding, training=False)
        return hidden[:, start:-1], model.head_logits

    def completion_values(self, prompt_ids, completion_ids, completion_mask,
                          prompt_mask=None):
        """V(s_t) [B, N]: the value of the state before each completion token."""
        sequence = tf.concat([prompt_ids, completion_ids], axis=1)
        padding = tf.concat([self.prompt_mask(prompt_ids, prompt_mask),
                             completion_mask > 0], axis=1)
        values = self.value_model(sequence, padding_mask=padding, training=False)
        return values[:, tf.shape(prompt_ids)[1] - 1:-1] * completion_mask

    @property
    def sampling(self):
        """The `SamplingFilter` of the trainer's sampling options (suppression included)."""
        return SamplingFilter(self.temperature, self.top_k, self.top_p,
                              self.sampled_suppress_ids)

    def score_completions(self, model, rollout, mask, sampling=None, support=None,
                          **outputs):
        """`TokenScores` [B, N] of the rollout's completions under `model`, masked by
        `mask` [B, N] (log-probs 0 where it is 0).

        `sampling` (default: the trainer's) is the distribution scored; `support`, the
        top-k / top-p support kept from the rollout, replaces its filters: later
        epochs score the old tokens on the support they were sampled from, not one
        recomputed from the updated policy. `outputs`: `score_tokens`' flags
        (entropy, temperature_log_probs, keep_support, entropy_gradient).
        """
        rollout = as_rollout(rollout)
        hidden, head = self.completion_hidden(
            model, rollout.prompt_ids, rollout.completion_ids, rollout.completion_mask,
            rollout.prompt_mask)
        scores = score_tokens(head, hidden, rollout.completion_ids,
                              sampling or self.sampling, support,
                              chunk_size=self.head_chunk_size,
                              vocab_size=model.vocab_size, **outputs)
        real = mask > 0
        return scores._replace(**{
            name: tf.where(real, getattr(scores, name), 0.0)
            for name in ("log_probs", "temperature_log_probs")
            if getattr(scores, name) is not None})

    @property
    def keeps_support(self):
        """Whether rollouts carry their sampling support (only top-k / top-p make it
        depend on the policy; suppression alone is the same in every epoch)."""
        return self.sampling.keeps_support

    def score_rollout(self, rollout, mask):
        """The rollout's behaviour log-probs "old_log_probs" [B, N] (and the "support"
        later epochs score on), and with a reference "ref_log_probs" and "kl" [B, N]
        (masked by `mask`): one pass of the policy's trunk and one of the reference's."""
        with_reference = self.reference_model is not None
        scores = self.score_completions(self.policy, rollout, mask,
                                        keep_support=self.keeps_support,
                                        temperature_log_probs=with_reference)
        scored = {"old_log_probs": scores.log_probs}     # fields of the `Rollout`
        if scores.support is not None:
            scored["support"] = scores.support
        if with_reference:
            # KL between the models' own (temperature-scaled) distributions: a top-k
            # filter on the reference would make KL infinite for tokens it excludes.
            # After the policy's pass, not beside it: the two trunks' activations
            # (attention scores: B * heads * T^2 floats a layer) never coexist.
            with tf.control_dependencies([scores.log_probs]):
                reference = self.score_completions(self.reference_model, rollout, mask,
                                                   SamplingFilter(self.temperature))
            kl = losses.kl_penalty(scores.temperature_log_probs, reference.log_probs,
                                   self.kl_estimator)
            scored.update(ref_log_probs=reference.log_probs, kl=kl * mask)
        return scored

    @property
    def scores_rollout(self):
        """Whether the rollout runs its own forward pass for the behaviour log-probs
        (and the policy side of the KL). With one update per rollout and no reference
        it need not: the update's forward uses the same weights, so its log-probs are
        the behaviour log-probs (ratio 1, as TRL's num_iterations=1) and one forward
        pass of the step is saved. Episodes (`env=`) are always scored: their
        trajectories, in one pass, are what the update reads (the turns were sampled
        from left-padded contexts of their own)."""
        return (self.num_epochs * self.num_minibatches > 1
                or self.reference_model is not None or self.env is not None)

    def sample_rollout(self, batch):
        """The rollout source: samples the batch's prompts (`group_size` copies of
        each) and rewards them; with `env=` plays one episode per row instead
        (`tfpg.algorithms.episodes`, eager). Records the source's own logs (reward
        components, invalid rewards; turn statistics with an env).

        Returns (`Rollout` with its sampled fields, the batch with the group copies).
        """
        if self.env is not None:
            batch, played = self.sample_episodes(batch)
            # The last episodes, for callbacks (SampleLogger's transcripts).
            object.__setattr__(self, "last_episodes", played)
            rollout, invalid = episodes.episode_rollout(played, self.on_invalid_reward)
            self._record(episodes.episode_metrics(self.env, played, invalid))
            return rollout, batch
        if self.group_size > 1:
            # Groups are made here, inside the step, so no shuffle can split one.
            batch = {key: tf.repeat(value, self.group_size, axis=0)
                     for key, value in batch.items()}
        prompt_ids = tf.cast(batch["prompt"], tf.int32)
        # When traced, before the decode allocates: the sizes known then.
        check_decode_size(self.policy, prompt_ids.shape[0], prompt_ids.shape[1],
                          self.max_new_tokens)
        prompt_mask = self.prompt_mask(prompt_ids, batch.get("prompt_mask"))   # [B, P]
        generated = self.sample(prompt_ids, self.sampling_seed(), prompt_mask=prompt_mask)
        completion_ids, mask = generated.token_ids, generated.mask
        completion_ids.set_shape([None, self.max_new_tokens])
        mask.set_shape([None, self.max_new_tokens])

        scored = compute_rewards(self.reward_fn, prompt_ids, completion_ids, mask, batch,
                                 self.on_invalid_reward, self.reward_timeout)
        rollout = Rollout(
            prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=completion_ids,
            completion_mask=mask, loss_mask=mask * scored.valid[:, None],
            scores=scored.rewards, valid=scored.valid,
            token_rewards=adv.sequence_score_to_token_rewards(scored.rewards, mask))
        rollout.truncated = truncated_completions(rollout, self.max_new_tokens, self.eos_id)
        if self.uses_reward_components:
            # [B, C]: each objective of a WeightedSum, unweighted, in its order.
            rollout.reward_components = tf.stack(
                [scored.components[name] for name, _, _ in self.reward_fn.weighted_components],
                axis=1)
        self._record(scored.metrics())
        return rollout, batch

    def sample_episodes(self, batch, seed=None):
        """With `env=`: (the numpy batch with `group_size` copies of each row, the
        `tfpg.envs.multi_turn.Episodes` played with the trainer's sampling options)."""
        return episodes.sample_episodes(self, batch, seed)

    def finish_rollout(self, rollout):
        """Scores a sampled rollout in place (`score_rollout` where `scores_rollout`,
        the KL penalty in the token rewards where `kl_in_reward`, the critic's
        values) and records its logs (`record_rollout_metrics`). Returns it."""
        mask = rollout.action_mask
        if self.scores_rollout:
            rollout.update(self.score_rollout(rollout, mask))
        if rollout.kl is not None and self.kl_in_reward:
            rollout.token_rewards -= self.kl_coef * rollout.kl                # [B, N]
        if self.value_model is not None:
            # After the scoring passes (see `score_rollout`): one trunk at a time.
            with tf.control_dependencies([value for value in (rollout.old_log_probs,
                                                              rollout.kl)
                                          if value is not None]):
                values = self.completion_values(rollout.prompt_ids, rollout.completion_ids,
                                                rollout.completion_mask, rollout.prompt_mask)
            if rollout.policy_mask is not None:     # env tokens: no state of the policy's
                values *= rollout.policy_mask
            rollout.values = values
        self.record_rollout_metrics(rollout)
        return rollout

    def collect_rollout(self, batch):
        """Samples (`sample_rollout`), scores and records a rollout (`finish_rollout`).

        Returns (`Rollout` of [B, ...] tensors, the batch with the group copies).
        """
        rollout, batch = self.sample_rollout(batch)
        return self.finish_rollout(rollout), batch
