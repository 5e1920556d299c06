"""`PolicyGradientTrainer`: the machinery every algorithm shares.

One `train_step` is:

1. rollout (`collect_rollout`, a `tfpg.algorithms.rollout.Rollout`;
   `tfpg.algorithms.collect`): the rollout source samples completions of the batch's
   prompts in-graph (`group_size` per prompt) and scores them with the reward, or,
   with `env=`, plays multi-turn episodes (`tfpg.algorithms.episodes`)
   (`sample_rollout`); then the log-probs, reference log-probs and values the update
   needs are added (`score_rollout`) and the rollout's logs recorded
   (`record_rollout_metrics`, `tfpg.algorithms.metrics`);
2. advantages: the algorithm's own `compute_advantages` (`learn`);
3. update (`tfpg.algorithms.update`): `num_epochs` passes of `num_minibatches`
   minibatches over the rollout, each a forward pass under `tf.GradientTape`, the
   algorithm's `loss_terms`, gradient clipping by global norm and `optimizer.apply`.

This module holds the constructor (options, checks, models), `compile`, the
algorithm's hooks and `train_step`; the three stages are mixins, one module each.

An algorithm subclass only says how advantages are made and which per-token losses it
minimises. Everything that touches distribution (loss scaling, cross-replica
statistics, gradient all-reduce) lives in `tfpg.distribution`, once.

Conventions: `B` rows in the rollout (prompts x group_size), `P` prompt length, `N`
`max_new_tokens`, `V` vocabulary. Dropout is off during policy-gradient updates
(`training=False`), as in TRL: the log-probs of the update must be those of the policy
that sampled.
"""

import copy

import keras
import tensorflow as tf

from tfpg import losses
from tfpg.algorithms import episodes
from tfpg.algorithms.collect import RolloutCollection
from tfpg.algorithms.metrics import TrainerMetrics
from tfpg.algorithms.update import PolicyUpdate
from tfpg.distribution import DistributedFitMixin
from tfpg.envs import multi_turn
from tfpg.generation import (check_decode_size, resolve_eos_id, resolve_sampler,
                             sampling_suppress_ids)
from tfpg.guards import bounds
from tfpg.models.copying import copy_policy
from tfpg.models.keras_hub_policy import AdaptersOff
from tfpg.models.policy import check_policy
from tfpg.rewards.base import ON_INVALID
from tfpg.rewards.serialization import reward_layers, serialize_reward
from tfpg.xla import resolve_jit_compile

# Seconds a Python reward (`PythonReward`) may take per call, by default.
DEFAULT_REWARD_TIMEOUT = 600.0


def _check_values(policy, max_new_tokens, kl_coef, target_kl, reward_timeout):
    """The constructor's numeric options (`tfpg.guards.bounds`), before anything is built:
    max_new_tokens an integer >= 1 that leaves the prompt a position in a positional
    policy's table, kl_coef finite and >= 0, target_kl None or finite and > 0,
    reward_timeout None or > 0 seconds."""
    check_decode_size(policy, None, None, max_new_tokens)
    bounds.check_non_negative("kl_coef", kl_coef)
    if target_kl is not None:
        bounds.check_positive("target_kl", target_kl)
    bounds.check_timeout("reward_timeout", reward_timeout)


def reference_of(policy):
    """The KL reference for `policy`: a LoRA policy's own weights with the adapters
    off (`policy.lora_reference()`, no second copy), else a frozen copy."""
    reference = policy.lora_reference()
    return reference if reference is not None else copy_policy(policy, trainable=False)


def check_reference(model, name="reference_model"):
    """A model scored like the policy (KL reference, teacher): a `tfpg.models.Policy`
    or a LoRA policy's adapters-off view (`lora_reference()`); else TypeError."""
    if not isinstance(model, AdaptersOff):
        check_policy(model, name)


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


class PolicyGradientTrainer(RolloutCollection, PolicyUpdate, TrainerMetrics,
                            DistributedFitMixin, keras.Model):
    """Base class of the algorithms in `tfpg.algorithms`; not used directly.

    Args:
        policy: `tfpg.models.Policy`. The policy to train (`PolicyNetwork`,
            `KerasHubPolicy`); anything else is refused (TypeError, one line).
        reward_fn: callable or `tfpg.rewards.Reward`. `reward_fn(prompt_ids,
            completion_ids, completion_mask, batch) -> float32 [B]` (see
            `tfpg.rewards`). `get_config` holds a `tfpg.rewards` object (or a function
            registered with Keras) and refuses, in one line, a plain Python function
            (`tfpg.rewards.serialization`).
        value_model: `tfpg.models.ValueNetwork` or None. A critic, for algorithms that
            use one.
        reference_model: `tfpg.models.Policy` or None. The frozen model of the KL
            penalty (a `Policy`, or a LoRA policy's `lora_reference()`); a frozen copy
            of the policy (as it is at construction) is made when `kl_coef > 0` and
            none is given.
        max_new_tokens: int. The sampling option of `tfpg.generate`.
        sampler: str. The sampling option of `tfpg.generate`.
        temperature: float. The sampling option of `tfpg.generate`.
        top_k: int or None. The sampling option of `tfpg.generate`.
        top_p: float or None. The sampling option of `tfpg.generate`.
        eos_id: int, None or "auto". The sampling option of `tfpg.generate`.
        suppress_ids: list of int or None. The sampling option of `tfpg.generate`.
        group_size: int. Completions sampled per prompt (RLOO / GRPO need >= 2).
        kl_coef: float. Weight of the KL penalty to the reference.
        kl_estimator: str. "k1", "k2" or "k3" (per-token estimator of KL(pi || ref)).
        kl_in_reward: bool. True subtracts `kl_coef * kl_t` from the per-token reward
            (PPO / RLHF style); False adds `kl_coef * kl` to the loss (GRPO style).
        target_kl: float or None. With a value, `kl_coef` adapts towards this KL per
            sequence (Ziegler et al. 2019's proportional controller, horizon
            `kl_horizon`).
        kl_horizon: int. The `target_kl` controller's horizon in sequences: a step
            moves `kl_coef` by at most 20% times its sequences / `kl_horizon`.
        entropy_coef: float. Weight of the entropy bonus.
        value_coef: float. Weight of the value loss.
        num_epochs: int. Passes over each rollout. Only the algorithms that correct
            for stale samples with a clipped importance ratio (PPO, GRPO, RLOO) accept
            more than one step per rollout.
        num_minibatches: int. Minibatches of each pass (the rows split as evenly as
            possible: 6 rows in 4 give 1, 2, 1, 2); more than one step per rollout
            only as `num_epochs` says.
        max_grad_norm: float or None. Global-norm gradient clipping (None disables).
        loss_aggregation: str or None. "token_mean", "sequence_mean", "sequence_sum"
            or "constant" (sum / (B * max_new_tokens)); None takes the algorithm's
            default.
        on_invalid_reward: str. "raise", "zero" or "skip" for NaN / inf / failing
            rewards.
        seed: int. Seeds the sampling; a run with the same seed samples the same
            tokens.
        env: `tfpg.envs.TurnEnv` or None. A batched turn-level environment (e.g.
            `tfpg.envs.ToolEnv`) for multi-turn episodes: the env gives the rewards
            (pass `reward_fn=None`), `max_new_tokens` is the budget of one turn, the
            rollout runs in Python between compiled turns and the update in a
            tf.function (see `tfpg.algorithms.episodes`). A Python object: a
            trainer with an env has no `get_config` (ValueError, one line).
        max_turns: int or None. Policy turns per episode with `env` (default 4).
        head_chunk_size: int or None. Completion positions the vocabulary projection
            (and the softmax, entropy, KL inputs) runs on at once in the update and the
            rollout's scoring (see `tfpg.algorithms.token_scores`); None: about 2^24
            logits a chunk (64 MB), e.g. 110 positions at V = 151,936. Memory, not
            results: every chunk size gives the same loss and gradients.
        gradient_checkpointing: bool. Rematerialise the transformer trunks (policy and
            critic; tfpg's Transformer and KerasHub backbones) block by block in the
            update's backward pass: long sequences fit in less memory, for about one
            more forward pass of compute. LSTM / GRU trunks are not affected.
        reward_timeout: float or None. Seconds a Python reward
            (`tfpg.rewards.PythonReward`) may take per call (default 600); a call that
            takes longer fails the step naming the reward and the limit ("raise") or
            scores the batch as invalid ("zero" / "skip"). None waits for ever.
            In-graph rewards are not timed.
        sync_ref_model: bool. TR-DPO's reference update (TRL's names): every
            `ref_model_sync_steps` optimizer steps the KL reference becomes
            `ref_model_mixup_alpha * policy + (1 - alpha) * reference`, weight by
            weight. Needs a KL reference of its own (kl_coef > 0 or target_kl); a
            LoRA policy's reference is its own weights with the adapters off, so
            there is nothing separate to mix and it is refused (as TRL refuses PEFT).
        ref_model_mixup_alpha: float. The mixing weight alpha (default 0.6, as TRL).
        ref_model_sync_steps: int. Optimizer steps between syncs (default 512, as TRL).
        **kwargs: `keras.Model` arguments (`name`, ...).

    Raises:
        TypeError: `policy` or `reference_model` is not a `tfpg.models.Policy`.
        ValueError: an option is out of range (e.g. `group_size` below the
            algorithm's minimum, an unknown `kl_estimator`, several steps per rollout
            for an on-policy algorithm, or a critic missing where one is needed).
    """

    default_loss_aggregation = "token_mean"
    uses_value_model = False
    uses_ratio = False          # clipped-surrogate algorithms log clip_fraction, approx_kl
    # Whether several gradient steps may reuse one rollout: only where the loss
    # corrects for the policy having moved (a clipped importance ratio).
    reuses_rollouts = False
    min_group_size = 1
    supports_env = True        # multi-turn episodes (env=); see tfpg.algorithms.episodes
    # The constructor arguments that `get_config` holds Keras-serialised.
    serialized_arguments = ("policy", "reward_fn", "value_model", "reference_model")

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
        check_policy(policy)
        if reference_model is not None:
            check_reference(reference_model)
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
        # Only a reference given here is in `get_config`: a default one is made again.
        self._reference_given = reference_model is not None
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

        Args:
            optimizer: str or `keras.optimizers.Optimizer`. As in Keras `compile`.
            jit_compile: bool or "auto". "auto" (default) compiles the decode loop with
                XLA where that is faster (with a GPU / TPU; not on CPU); True compiles
                the whole train step (in-graph rewards only; a NaN reward then counts as
                "zero" since XLA cannot raise, and `last_rollout` is not kept); False
                compiles nothing.
            **kwargs: other Keras `compile` arguments.

        Raises:
            ValueError: `jit_compile=True` with an `env` (its episodes run in Python).
        """
        self.jit_decode = resolve_jit_compile(jit_compile, self.policy)   # validates it too
        self._jit_compile_option = jit_compile      # for `get_compile_config`
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

    def get_compile_config(self):
        """Keras' compile config, with `jit_compile` as given to `compile` ("auto")."""
        config = super().get_compile_config()
        if config:
            config["jit_compile"] = self._jit_compile_option
        return config

    def compile_from_config(self, config):
        """Compiles as `config` (from `get_compile_config`) says: what loading a
        `.keras` file calls, before it restores the optimizer's state."""
        self.compile(**keras.saving.deserialize_keras_object(config))

    @property
    def reward_layers(self):
        """The Keras layers of the reward (a `RewardModel`'s scorer, a `Perplexity`
        reference): never trained, but saved in and restored from `.keras` files
        with the trainer, so that a loaded trainer scores as the original."""
        return reward_layers(self.reward_fn)

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

    def config_reward(self):
        """The `reward_fn` argument the trainer was built with (for `get_config`)."""
        return self.reward_fn

    def get_config(self):
        """Every constructor argument; the policy, reward, critic and a given KL
        reference Keras-serialised (`keras.saving.serialize_keras_object`).

        Raises:
            ValueError: (one line) for what a config cannot rebuild: an env, a
                Python-function reward (see `tfpg.rewards.serialization`).
        """
        if self.env is not None:
            raise ValueError(f"env {type(self.env).__name__} (a Python object) cannot be "
                             "serialised; rebuild the trainer with it")
        reward = serialize_reward(self.config_reward())
        config = super().get_config()
        config.update(
            policy=keras.saving.serialize_keras_object(self.policy), reward_fn=reward,
            value_model=keras.saving.serialize_keras_object(self.value_model),
            reference_model=(keras.saving.serialize_keras_object(self.reference_model)
                             if self._reference_given else None),
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
            seed=self.seed, env=None, max_turns=self.max_turns,
            head_chunk_size=self.head_chunk_size,
            gradient_checkpointing=self.gradient_checkpointing,
            sync_ref_model=self.sync_ref_model,
            ref_model_mixup_alpha=self.ref_model_mixup_alpha,
            ref_model_sync_steps=self.ref_model_sync_steps)
        return config

    @classmethod
    def from_config(cls, config):
        """The trainer of `get_config()`: its Keras objects deserialised, the rest
        passed to the constructor (weights are not in configs: `.keras` files)."""
        config = dict(config)
        for key in cls.serialized_arguments:
            if key in config:
                # A copy: deserialising a functional model consumes its config.
                config[key] = keras.saving.deserialize_keras_object(copy.deepcopy(config[key]))
        return cls(**config)
