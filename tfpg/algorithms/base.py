"""`PolicyGradientTrainer`: the machinery every algorithm shares.

One `train_step` is:

1. rollout (`collect_rollout`, a `tfpg.algorithms.rollout.Rollout`): the rollout
   source samples completions of the batch's prompts in-graph (`group_size` per
   prompt) and scores them with the reward, or, with `env=`, plays multi-turn
   episodes (`tfpg.algorithms.episodes`) (`sample_rollout`); then the log-probs,
   reference log-probs and values the update needs are added (`score_rollout`) and
   the rollout's logs recorded (`record_rollout_metrics`);
2. advantages: the algorithm's own `compute_advantages` (`learn`);
3. update: `num_epochs` passes of `num_minibatches` minibatches over the rollout, each
   a forward pass under `tf.GradientTape`, the algorithm's `loss_terms`, gradient
   clipping by global norm and `optimizer.apply` (`update`).

An algorithm subclass only says how advantages are made and which per-token losses it
minimises. Everything that touches distribution (loss scaling, cross-replica
statistics, gradient all-reduce) lives in `tfpg.distribution`, once.

Conventions: `B` rows in the rollout (prompts x group_size), `P` prompt length, `N`
`max_new_tokens`, `V` vocabulary. Dropout is off during policy-gradient updates
(`training=False`), as in TRL: the log-probs of the update must be those of the policy
that sampled.
"""

import functools

import keras
import tensorflow as tf

from tfpg import advantages as adv
from tfpg import bounds
from tfpg import losses
from tfpg import multi_turn
from tfpg.algorithms import episodes
from tfpg.algorithms.rollout import Rollout, as_rollout, truncated_completions
from tfpg.distribution import (DistributedFitMixin, apply_gradients, cross_replica_sum,
                               is_loss_scale_optimizer, num_replicas, replica_rows,
                               scale_loss)
from tfpg.generation import (check_decode_size, decode_loop, prompt_padding_mask,
                             resolve_eos_id, resolve_sampler, sampling_suppress_ids)
from tfpg.models.checkpointing import gradient_checkpointing
from tfpg.rewards.base import ON_INVALID, compute_rewards
from tfpg.token_scores import SamplingFilter, score_tokens
from tfpg.xla import in_xla_context, resolve_jit_compile

# Folded into the step seed for the minibatch permutation: a stream of its own, so that
# the order of the rows never repeats the decode's sampling noise (which, with
# inverse-CDF sampling, would sort the rows by the tokens they sampled).
MINIBATCH_STREAM = 0x6D696E69   # "mini"
# Seconds a Python reward (`PythonReward`) may take per call, by default.
DEFAULT_REWARD_TIMEOUT = 600.0
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


def _check_values(policy, max_new_tokens, kl_coef, target_kl, reward_timeout):
    """The constructor's numeric options (`tfpg.bounds`), before anything is built:
    max_new_tokens an integer >= 1 that leaves the prompt a position in a positional
    policy's table, kl_coef finite and >= 0, target_kl None or finite and > 0,
    reward_timeout None or > 0 seconds."""
    check_decode_size(policy, None, None, max_new_tokens)
    bounds.check_non_negative("kl_coef", kl_coef)
    if target_kl is not None:
        bounds.check_positive("target_kl", target_kl)
    bounds.check_timeout("reward_timeout", reward_timeout)


def frozen_copy(model):
    """A non-trainable copy of `model` with the same weights (the KL reference)."""
    if not model.built:
        model.build()
    copy = model.__class__.from_config(model.get_config())
    copy.build()
    copy.set_weights(model.get_weights())
    copy.trainable = False
    return copy


def reference_of(policy):
    """The KL reference for `policy`: a LoRA policy's own weights with the adapters
    off (`policy.lora_reference()`, no second copy), else a `frozen_copy`."""
    lora_reference = getattr(policy, "lora_reference", None)
    reference = lora_reference() if lora_reference is not None else None
    return reference if reference is not None else frozen_copy(policy)


def _check_sync_ref_model(reference_model, alpha, steps):
    """`sync_ref_model`'s preconditions, each refused in one line."""
    if reference_model is None:
        raise ValueError("sync_ref_model=True needs a KL reference (kl_coef > 0): with "
                         "none there is nothing to synchronise")
    if not isinstance(reference_model, keras.Model):
        raise ValueError("sync_ref_model=True is not supported for a LoRA policy: its KL "
                         "reference is its own weights with the adapters off, so there is "
                         "no separate reference to mix (as TRL refuses PEFT)")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"ref_model_mixup_alpha must be in [0, 1], got {alpha}")
    if steps < 1:
        raise ValueError(f"ref_model_sync_steps must be >= 1, got {steps}")


class PolicyGradientTrainer(DistributedFitMixin, keras.Model):
    """Base class of the algorithms in `tfpg.algorithms`; not used directly.

    Args:
        policy: the `PolicyNetwork` to train.
        reward_fn: `reward_fn(prompt_ids, completion_ids, completion_mask, batch)
            -> float32 [B]` (see `tfpg.rewards`).
        value_model: a `ValueNetwork` critic, for algorithms that use one.
        reference_model: the frozen model of the KL penalty; a frozen copy of the
            policy (as it is at construction) is made when `kl_coef > 0` and none is
            given.
        max_new_tokens, sampler, temperature, top_k, top_p, eos_id, suppress_ids: the
            sampling options of `tfpg.generate`.
        group_size: completions sampled per prompt (RLOO / GRPO need >= 2).
        kl_coef: weight of the KL penalty to the reference.
        kl_estimator: "k1", "k2" or "k3" (per-token estimator of KL(pi || ref)).
        kl_in_reward: True subtracts `kl_coef * kl_t` from the per-token reward
            (PPO / RLHF style); False adds `kl_coef * kl` to the loss (GRPO style).
        target_kl: with a value, `kl_coef` adapts towards this KL per sequence
            (Ziegler et al. 2019's proportional controller, horizon `kl_horizon`).
        entropy_coef: weight of the entropy bonus.
        value_coef: weight of the value loss.
        num_epochs, num_minibatches: passes and minibatches over each rollout (the
            rows split as evenly as possible: 6 rows in 4 give 1, 2, 1, 2). Only the
            algorithms that correct for stale samples with a clipped importance
            ratio (PPO, GRPO, RLOO) accept more than one step per rollout.
        max_grad_norm: global-norm gradient clipping (None disables).
        loss_aggregation: "token_mean", "sequence_mean", "sequence_sum" or
            "constant" (sum / (B * max_new_tokens)); None takes the algorithm's default.
        on_invalid_reward: "raise", "zero" or "skip" for NaN / inf / failing rewards.
        reward_timeout: seconds a Python reward (`tfpg.rewards.PythonReward`) may take
            per call (default 600); a call that takes longer fails the step naming
            the reward and the limit ("raise") or scores the batch as invalid
            ("zero" / "skip"). None waits for ever. In-graph rewards are not timed.
        seed: seeds the sampling; a run with the same seed samples the same tokens.
        env: a batched turn-level environment (`tfpg.turn_env.TurnEnv`, e.g.
            `tfpg.envs.ToolEnv`) for multi-turn episodes: the env gives the rewards
            (pass `reward_fn=None`), `max_new_tokens` is the budget of one turn, the
            rollout runs in Python between compiled turns and the update in a
            tf.function (see `tfpg.algorithms.episodes`). Python objects: not in
            `get_config`.
        max_turns: policy turns per episode with `env` (default 4).
        head_chunk_size: completion positions the vocabulary projection (and the
            softmax, entropy, KL inputs) runs on at once in the update and the
            rollout's scoring (see `tfpg.token_scores`); None: about 2^24 logits a
            chunk (64 MB), e.g. 110 positions at V = 151,936. Memory, not results:
            every chunk size gives the same loss and gradients.
        gradient_checkpointing: rematerialise the transformer trunks (policy and
            critic; tfpg's Transformer and KerasHub backbones) block by block in the
            update's backward pass: long sequences fit in less memory, for about one
            more forward pass of compute. LSTM / GRU trunks are not affected.
        sync_ref_model: TR-DPO's reference update (TRL's names): every
            `ref_model_sync_steps` optimizer steps the KL reference becomes
            `ref_model_mixup_alpha * policy + (1 - alpha) * reference`, weight by
            weight. Needs a KL reference of its own (kl_coef > 0 or target_kl); a
            LoRA policy's reference is its own weights with the adapters off, so
            there is nothing separate to mix and it is refused (as TRL refuses PEFT).
        ref_model_mixup_alpha: the mixing weight alpha (default 0.6, as TRL).
        ref_model_sync_steps: optimizer steps between syncs (default 512, as TRL).
    """

    default_loss_aggregation = "token_mean"
    uses_value_model = False
    uses_ratio = False          # clipped-surrogate algorithms log clip_fraction, approx_kl
    # Whether several gradient steps may reuse one rollout: only where the loss
    # corrects for the policy having moved (a clipped importance ratio).
    reuses_rollouts = False
    min_group_size = 1
    supports_env = True        # multi-turn episodes (env=); see tfpg.algorithms.episodes

    def __init__(self, policy, reward_fn, value_model=None, reference_model=None,
                 max_new_tokens=32, sampler="sample", temperature=1.0, top_k=None,
                 top_p=None, eos_id="auto", suppress_ids=None, group_size=1, kl_coef=0.0,
                 kl_estimator="k1", kl_in_reward=True, target_kl=None, kl_horizon=10000,
                 entropy_coef=0.0, value_coef=0.5, num_epochs=1, num_minibatches=1,
                 max_grad_norm=1.0, loss_aggregation=None, on_invalid_reward="raise",
                 seed=0, env=None, max_turns=None, head_chunk_size=None,
                 gradient_checkpointing=False, reward_timeout=DEFAULT_REWARD_TIMEOUT,
                 sync_ref_model=False, ref_model_mixup_alpha=0.6, ref_model_sync_steps=512,
                 **kwargs):
        resolve_sampler(sampler, temperature, top_k, top_p)
        _check_values(policy, max_new_tokens, kl_coef, target_kl, reward_timeout)
        super().__init__(**kwargs)
        if self.uses_value_model and value_model is None:
            raise ValueError(f"{type(self).__name__} needs value_model= (a ValueNetwork)")
        if group_size < self.min_group_size:
            raise ValueError(f"{type(self).__name__} needs group_size >= "
                             f"{self.min_group_size}, got {group_size}")
        if kl_estimator not in losses.KL_ESTIMATORS:
            raise ValueError(f"kl_estimator must be one of {losses.KL_ESTIMATORS}")
        if on_invalid_reward not in ON_INVALID:
            raise ValueError(f"on_invalid_reward must be one of {ON_INVALID}")
        if target_kl is not None and not kl_coef > 0:
            raise ValueError("target_kl adapts kl_coef multiplicatively, so it needs "
                             f"kl_coef > 0, got kl_coef={kl_coef}")
        if int(num_epochs) < 1 or int(num_minibatches) < 1:
            raise ValueError("num_epochs and num_minibatches must be >= 1, got "
                             f"{num_epochs} and {num_minibatches}")
        if int(num_epochs) * int(num_minibatches) > 1 and not self.reuses_rollouts:
            raise ValueError(
                f"{type(self).__name__} is on-policy: its loss -A log pi is biased on "
                "samples of an older policy, so it takes one gradient step per rollout "
                f"(got num_epochs={num_epochs}, num_minibatches={num_minibatches}); "
                "use PPO, GRPO or RLOO (clipped importance ratios) to reuse rollouts")
        loss_aggregation = loss_aggregation or self.default_loss_aggregation
        if loss_aggregation not in losses.AGGREGATION_MODES:
            raise ValueError(f"loss_aggregation must be one of {losses.AGGREGATION_MODES}")
        self.policy = policy
        self.reward_fn = reward_fn
        self.value_model = value_model
        if reference_model is None and (kl_coef > 0 or target_kl is not None):
            reference_model = reference_of(policy)
        self.reference_model = reference_model
        self.sync_ref_model = bool(sync_ref_model)
        self.ref_model_mixup_alpha = float(ref_model_mixup_alpha)
        self.ref_model_sync_steps = int(ref_model_sync_steps)
        if self.sync_ref_model:
            _check_sync_ref_model(reference_model, self.ref_model_mixup_alpha,
                                  self.ref_model_sync_steps)
        self.max_new_tokens = int(max_new_tokens)
        self.sampler = sampler
        self.temperature = float(temperature)
        self.top_k = top_k
        self.top_p = top_p
        self.eos_id = resolve_eos_id(policy, eos_id)
        self.suppress_ids = tuple(suppress_ids) if suppress_ids else None
        # What sampling (and scoring) suppresses: these and the structural ids.
        self.sampled_suppress_ids = sampling_suppress_ids(policy, self.suppress_ids)
        self.group_size = int(group_size)
        self.kl_estimator = kl_estimator
        self.kl_in_reward = kl_in_reward
        self.target_kl = target_kl
        self.kl_horizon = kl_horizon
        self.entropy_coef = entropy_coef
        self.value_coef = value_coef
        self.num_epochs = int(num_epochs)
        self.num_minibatches = int(num_minibatches)
        self.max_grad_norm = max_grad_norm
        self.loss_aggregation = loss_aggregation
        self.on_invalid_reward = on_invalid_reward
        self.reward_timeout = bounds.check_timeout("reward_timeout", reward_timeout)
        self.seed = int(seed)
        if head_chunk_size is not None and int(head_chunk_size) < 1:
            raise ValueError(f"head_chunk_size must be >= 1 or None, got {head_chunk_size}")
        self.head_chunk_size = None if head_chunk_size is None else int(head_chunk_size)
        self.gradient_checkpointing = bool(gradient_checkpointing)
        self.max_turns = multi_turn.check_env(env, max_turns, reward_fn, type(self))
        self.env = env
        self.initial_kl_coef = float(kl_coef)
        self.kl_coef = self.add_weight(shape=(), initializer=keras.initializers.Constant(
            kl_coef), trainable=False, name="kl_coef", aggregation="only_first_replica")
        for model in (policy, value_model, reference_model):
            if model is not None and not model.built:
                model.build()
        self._trackers = {name: keras.metrics.Mean(name=name) for name in self.metric_names()}
        # The last rollout, for callbacks (reward / advantage histograms). Set with
        # object.__setattr__ so Keras does not track these as weights or checkpoint them.
        object.__setattr__(self, "_last_rollout", {
            key: tf.Variable(tf.zeros([0] * rank), shape=tf.TensorShape([None] * rank),
                             trainable=False, name=f"last_{key}")
            for key, rank in (("scores", 1), ("advantages", 2), ("completion_mask", 2))})
        self.built = True

    @property
    def last_rollout(self):
        """The previous train step's "scores" [B], "advantages" [B, N] and
        "completion_mask" [B, N]; empty before the first step, under a multi-replica
        strategy and under a whole-step XLA compile (none of these keep it)."""
        rollout = {key: variable.value() for key, variable in self._last_rollout.items()}
        return rollout if rollout["scores"].shape[0] else {}

    def compile(self, optimizer="adam", jit_compile="auto", **kwargs):
        """Keras `compile`, with tfpg's XLA choices (see `tfpg.xla`).

        jit_compile: "auto" (default) compiles the decode loop with XLA where that
            is faster (with a GPU / TPU; not on CPU); True compiles the whole train
            step (in-graph rewards only; a NaN reward then counts as "zero" since XLA
            cannot raise, and `last_rollout` is not kept); False compiles nothing.
        """
        self.jit_decode = resolve_jit_compile(jit_compile, self.policy)   # validates it too
        if self.env is not None:
            if jit_compile is True:
                raise ValueError("env= runs the episodes in Python between turns: "
                                 "jit_compile=True (the whole step in XLA) cannot "
                                 "hold them; use 'auto' or False")
            # The env is Python: train_step runs eagerly (each turn's generation
            # and the update are still tf.functions, see tfpg.algorithms.episodes).
            kwargs["run_eagerly"] = True
        super().compile(optimizer=optimizer, jit_compile=jit_compile is True, **kwargs)
        # Build the optimizer's slots now: created during the first trace of the
        # train function they would make tf.function trace it a second time.
        self.optimizer.build(self.trainable_variables)

    # ----------------------------------------------------------------- metrics

    def metric_names(self):
        """The logs this trainer returns from `train_step` (DESIGN.md names)."""
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
                                 "log it: add it to metric_names() (and the README's "
                                 "metrics table) or to unlogged_metrics()")

    # ----------------------------------------------------------------- rollout

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
        in chunks. A model without `hidden_states` / `head_logits` gives its logits
        as the "hidden states" and an identity head.
        """
        sequence = tf.concat([prompt_ids, completion_ids], axis=1)
        padding = tf.concat([self.prompt_mask(prompt_ids, prompt_mask),
                             completion_mask > 0], axis=1)
        start = tf.shape(prompt_ids)[1] - 1
        if hasattr(model, "hidden_states"):
            hidden = model.hidden_states(sequence, padding_mask=padding, training=False)
            return hidden[:, start:-1], model.head_logits
        logits = model(sequence, padding_mask=padding, training=False)
        return logits[:, start:-1], lambda hidden: tf.cast(hidden, tf.float32)

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
                              vocab_size=getattr(model, "vocab_size", None), **outputs)
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
        `tfpg.multi_turn.Episodes` played with the trainer's sampling options)."""
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

    # -------------------------------------------------------------- algorithm

    def compute_advantages(self, rollout, batch):
        """Returns a dict with "advantages" [B, N] (and "returns" [B, N] with a critic)."""
        raise NotImplementedError

    def loss_terms(self, minibatch, scores, values):
        """Per-token losses of one minibatch.

        `scores` is the minibatch's `TokenScores` [b, N] under the policy being
        updated: `log_probs` under the sampled distribution, `entropy`, and
        `temperature_log_probs` where `needs_temperature_log_probs` (a KL to the
        reference in the loss); `values` [b, N] or None.
        Returns (terms, token_metrics): `terms` maps a log name to
        (per_token [b, N], coefficient, aggregation mode); `token_metrics` maps a log
        name to per-token values averaged over real tokens.
        """
        raise NotImplementedError

    @property
    def needs_temperature_log_probs(self):
        """Whether `loss_terms` reads `scores.temperature_log_probs`."""
        return False

    @property
    def uses_reward_components(self):
        """Whether the rollout keeps each `WeightedSum` objective ("reward_components")."""
        return False

    @property
    def uses_entropy_bonus(self):
        """Whether the loss has an entropy bonus (and the entropy a gradient)."""
        return bool(self.entropy_coef)

    def entropy_coefficient(self):
        """The entropy bonus's weight in this step's loss (float or scalar tensor)."""
        return self.entropy_coef

    def entropy_bonus_mask(self, minibatch, scores):
        """float32 [b, N]: the tokens the entropy bonus averages over (the loss mask)."""
        return minibatch.loss_mask

    def after_update(self, logs):
        """Runs after each optimizer step with the step's logs (controllers)."""
        return None     # a body autograph can convert (a docstring alone is not)

    def policy_gradient_term(self, minibatch, log_probs):
        """-A_t log pi(a_t | s_t): the REINFORCE term (advantages are constants)."""
        per_token = -tf.stop_gradient(minibatch.advantages) * log_probs
        return per_token, 1.0, self.loss_aggregation

    def value_term(self, minibatch, values, clip_range=None):
        per_token = losses.value_loss(values, minibatch.returns, minibatch.values,
                                      clip_range)
        return per_token, self.value_coef, "token_mean"

    # ------------------------------------------------------------------ update

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

    def train_step(self, data):
        batch = data if isinstance(data, dict) else {"prompt": data}
        if self.env is not None:
            # The env is Python: the step runs eagerly, the episodes between compiled
            # turns, then the same score / record / learn path as one tf.function.
            self._record(episodes.train_step(self, batch))
        else:
            rollout, batch = self.collect_rollout(batch)
            self.learn(rollout, batch)
        return self.finalize_logs({tracker.name: tracker.result() for tracker in self.metrics})

    def gradients(self, batch):
        """Gradients of one rollout's loss w.r.t. `trainable_variables` (no update).

        For analysis and tests (e.g. against `tfpg.testing.exact_policy_gradient`).
        """
        if getattr(self, "optimizer", None) is None:
            self.compile(optimizer="sgd")
        rollout, batch = self.collect_rollout(batch)
        return self.rollout_gradients(rollout, batch)

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

    def get_config(self):
        config = super().get_config()
        config.update(
            policy=keras.saving.serialize_keras_object(self.policy),
            value_model=keras.saving.serialize_keras_object(self.value_model),
            max_new_tokens=self.max_new_tokens, sampler=self.sampler,
            temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
            eos_id=self.eos_id, suppress_ids=self.suppress_ids,
            group_size=self.group_size, kl_coef=self.initial_kl_coef,
            kl_estimator=self.kl_estimator, kl_in_reward=self.kl_in_reward,
            target_kl=self.target_kl, kl_horizon=self.kl_horizon,
            entropy_coef=self.entropy_coef, value_coef=self.value_coef,
            num_epochs=self.num_epochs, num_minibatches=self.num_minibatches,
            max_grad_norm=self.max_grad_norm, loss_aggregation=self.loss_aggregation,
            on_invalid_reward=self.on_invalid_reward, reward_timeout=self.reward_timeout,
            seed=self.seed,
            head_chunk_size=self.head_chunk_size,
            gradient_checkpointing=self.gradient_checkpointing,
            sync_ref_model=self.sync_ref_model,
            ref_model_mixup_alpha=self.ref_model_mixup_alpha,
            ref_model_sync_steps=self.ref_model_sync_steps)
        return config
