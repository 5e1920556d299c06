"""The whole job behind `tfpg train`: data, pre-training, fine-tuning, evaluation, export.

`run_training(TrainConfig(...))` runs these phases, checkpointing after every epoch
of each so that a killed run, started again with the same options, resumes from its
last completed epoch:

1. data: a bundled task (`tfpg.tasks`) or the user's `.tsv` / `.jsonl` / `.txt` file;
2. maximum-likelihood pre-training of a `PolicyNetwork` (plain Keras `fit`);
3. held-out evaluation of the pre-trained policy ("before");
4. policy-gradient fine-tuning with the chosen algorithm and reward;
5. held-out evaluation ("after"), atomic SavedModel export, `OUTPUT/metrics.json`.

Checkpoints live beside the export in `OUTPUT.checkpoint/` (a `tf.train.Checkpoint`
of the policy, critic, reference, optimizers and KL controller, the tokenizer, and a
`state.json` naming the last completed epoch of each phase). Each epoch's checkpoint
is written under a new name (`pretrain-3`, `finetune-1`) and only then named in
`state.json`, which is replaced atomically: that rename is the commit, so a process
killed at any instant leaves a state that names a complete checkpoint. The export
directory is only ever written whole, by rename.

Distribution (`strategy`): "default" (one device), "mirrored" (all local GPUs, or
`num_cpu_devices` logical CPUs for testing) or "multi_worker"
(`MultiWorkerMirroredStrategy` from `TF_CONFIG`; every worker runs the same command,
the chief alone writes checkpoints, logs, metrics and the export, and `OUTPUT` must
be on a file system every worker sees). Each worker reads its rows of every global
batch (DATA sharding) and samples with the noise rows a single device would use for
them, so a run gives the same weights whatever the strategy (to float rounding).
"""

import dataclasses
import functools
import glob
import importlib
import inspect
import json
import math
import os
import shutil
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from tfpg import callbacks as tfpg_callbacks
from tfpg import data as tfpg_data
from tfpg import rewards
from tfpg.algorithms import ALGORITHMS
from tfpg.algorithms.base import frozen_copy, reference_of
from tfpg.distribution import (DistributedFitMixin, apply_gradients, cross_replica_sum,
                               in_multi_worker_mode, scale_loss)
from tfpg.export import export_saved_model
from tfpg.generation import generate
from tfpg.losses import token_log_probs
from tfpg.models import PolicyNetwork, ValueNetwork
from tfpg.tasks import get_task
from tfpg.text import Tokenizer

from tfpg.config import (LOG_POINTS, MIN_FREE_MB_ENV, NAMED_REWARDS, NUM_CPU_DEVICES_ENV,  # noqa: F401
                         ON_INVALID_REWARD, POLICY_MAX_LENGTH, PRECISIONS, RUNTIME_OPTIONS,
                         STRATEGIES, TASK_FINETUNE_EPOCHS, TRUNCATE_PROMPTS, TrainConfig,
                         UsageError, check_config, check_output, check_writable)

# 2: the fine-tuning checkpoint always holds the KL reference (measured on every run).
STATE_VERSION = 2


# --------------------------------------------------------------------- data


@dataclasses.dataclass
class Job:
    """The data side of a run: what to learn from, what to reward, how to evaluate."""

    name: str
    pretrain_texts: list
    train: object                   # a tasks.Split
    heldout: object                 # a tasks.Split
    tokenizer: Tokenizer
    reward_fn: object
    evaluate: object                # (prompts, completions) -> dict
    primary_metric: str
    max_new_tokens: int
    pretrain_epochs: int
    finetune_epochs: int
    max_prompt_length: int = None   # tokens, BOS included; None: no limit
    truncate: str = "error"         # "error", "left" or "right"


def load_reward(spec, tokenizer, task_reward):
    """The reward named by `--reward`: a built-in name, `module:function`, or the task's."""
    if spec is None:
        return task_reward
    if spec == "bleu":
        return rewards.BLEU()
    if spec == "exact_match":
        return rewards.ExactMatch(answer_key="reference")
    if spec == "length":
        return rewards.Length()
    if ":" not in spec:
        raise UsageError(f"unknown reward {spec!r}; use one of {', '.join(NAMED_REWARDS)} "
                         "or module:function")
    module_name, _, attribute = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise UsageError(f"--reward {spec}: cannot import {module_name!r} ({error})") from None
    reward_fn = getattr(module, attribute, None)
    if not callable(reward_fn):
        raise UsageError(f"--reward {spec}: {module_name} has no callable {attribute!r}")
    return _named_reward(reward_fn, spec)


def _named_reward(reward_fn, spec):
    """A plain function reward whose exceptions (raised while `fit` traces the step)
    name the reward; reward objects (`PythonReward`, `WeightedSum`) report their own."""
    if not inspect.isfunction(reward_fn):
        return reward_fn

    @functools.wraps(reward_fn)
    def reward(*args):
        try:
            return reward_fn(*args)
        except Exception as error:  # noqa: BLE001 - any failure of user code
            raise UsageError(f"reward {spec} failed: {type(error).__name__}: "
                             f"{error}") from error

    return reward


def _file_job(config):
    from tfpg.tasks.base import Split
    columns = tfpg_data.read_file(config.train_file)
    prompts = columns.pop("prompt")
    references = columns.pop("reference", None)
    if references is None and config.reward is None:
        raise UsageError(f"{config.train_file}: no references to score against; "
                         "give --reward module:function or a .tsv / .jsonl with references")
    first = [r if isinstance(r, str) else r[0] for r in references] if references else None
    pretrain_texts = [f"{p} {r}" for p, r in zip(prompts, first)] if first else list(prompts)
    tokenizer = Tokenizer.from_texts(pretrain_texts + [
        r for refs in (references or []) for r in ([refs] if isinstance(refs, str) else refs)])
    cut = max(1, len(prompts) // 10)
    references = references or [""] * len(prompts)
    heldout = Split(prompts[:cut], references[:cut], {k: v[:cut] for k, v in columns.items()})
    train = Split(prompts[cut:] or prompts, references[cut:] or references,
                  {k: (v[cut:] or v) for k, v in columns.items()})

    def evaluate(prompts, completions):
        refs = [[r] if isinstance(r, str) else list(r) for r in heldout.references]
        hyps = [c.split() for c in completions]
        return {"bleu": 100 * rewards.corpus_bleu(hyps, [[r.split() for r in rs] for rs in refs]),
                "exact_match": float(np.mean([c.strip() in [r.strip() for r in rs]
                                              for c, rs in zip(completions, refs)]))}

    return Job(config.run_name, pretrain_texts, train, heldout, tokenizer,
               load_reward(config.reward or "bleu", tokenizer, None), evaluate, "bleu",
               config.max_new_tokens or 32,
               10 if config.pretrain_epochs is None else config.pretrain_epochs,
               3 if config.epochs is None else config.epochs)


def make_job(config):
    if config.train_file is not None:
        job = _file_job(config)
    else:
        task = get_task(config.task, seed=config.seed)
        tokenizer = task.tokenizer()
        job = Job(config.task, task.pretrain_texts, task.train, task.heldout, tokenizer,
                  load_reward(config.reward, tokenizer, task.reward(tokenizer)),
                  lambda prompts, completions: task.evaluate(prompts, completions, "heldout"),
                  task.primary_metric, config.max_new_tokens or task.max_new_tokens,
                  task.pretrain_epochs if config.pretrain_epochs is None
                  else config.pretrain_epochs,
                  TASK_FINETUNE_EPOCHS[config.task] if config.epochs is None else config.epochs)
    job.max_prompt_length = config.max_prompt_length
    if job.max_prompt_length is None and config.backbone == "transformer":
        # Position ids must stay inside the Transformer's table.
        job.max_prompt_length = POLICY_MAX_LENGTH - job.max_new_tokens
        if job.max_prompt_length < 2:
            raise UsageError(f"--max-new-tokens {job.max_new_tokens} leaves no room for a "
                             f"prompt in the Transformer's {POLICY_MAX_LENGTH} positions")
    job.truncate = config.truncate_prompts
    return job


def check_prompt_lengths(job, warn):
    """Applies the prompt length limit: a UsageError naming the first over-long
    prompt, or (with `truncate` "left" / "right") a warning counting them."""
    limit = job.max_prompt_length
    if limit is None:
        return
    for split_name, split in (("training", job.train), ("held-out", job.heldout)):
        lengths = [len(ids) for ids in job.tokenizer.encode(list(split.prompts))]
        long = [i for i, n in enumerate(lengths) if n > limit]
        if not long:
            continue
        if job.truncate == "error":
            first = long[0]
            raise UsageError(
                f"{split_name} prompt {first} ({split.prompts[first][:40]!r}) has "
                f"{lengths[first]} tokens, more than --max-prompt-length {limit} (BOS "
                "included); shorten it or pass --truncate-prompts left|right")
        warn(f"{len(long)} {split_name} prompt(s) longer than {limit} tokens were "
             f"truncated, keeping their {job.truncate} part")


# ----------------------------------------------------------------- strategy


def configure_cpu_devices(count):
    """Splits the CPU into `count` logical devices (for "mirrored" without GPUs).

    Must run before TensorFlow executes its first op; `tfpg train` does it first
    thing. Also read from $TFPG_NUM_CPU_DEVICES when `count` is None.
    """
    if count is None:
        count = int(os.environ.get(NUM_CPU_DEVICES_ENV) or 1)
    if count <= 1:
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)])
    except RuntimeError:
        if len(tf.config.list_logical_devices("CPU")) != count:
            raise UsageError(f"cannot split the CPU into {count} devices: TensorFlow is "
                             "already running (set TFPG_NUM_CPU_DEVICES before it "
                             "starts)") from None


def make_strategy(name, num_cpu_devices=None):
    """The `tf.distribute` strategy called `name` (see `STRATEGIES`)."""
    if name == "mirrored":
        if tf.config.list_physical_devices("GPU"):     # does not start the runtime
            return tf.distribute.MirroredStrategy()
        configure_cpu_devices(num_cpu_devices)
        cpus = [device.name for device in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(cpus)
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise UsageError("--strategy multi_worker needs the TF_CONFIG environment variable")
        try:
            json.loads(os.environ["TF_CONFIG"])
        except ValueError:
            raise UsageError("TF_CONFIG is not valid JSON") from None
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def is_chief(strategy):
    """False on the non-chief workers of a multi-worker strategy (they write nothing)."""
    if not in_multi_worker_mode(strategy):
        return True
    resolver = strategy.cluster_resolver
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def shard_by_data(dataset):
    """Each worker reads its own rows of every global batch (DATA auto-sharding).

    The default (AUTO) finds no files to shard in an in-memory dataset and falls
    back to DATA with a warning; saying so explicitly keeps the logs clean and the
    behaviour independent of how the dataset was made.
    """
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = \
        tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def set_precision(name):
    """Sets the global Keras dtype policy; returns the previous policy's name."""
    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(name or "float32")
    return previous


def float32_copy(policy):
    """A float32 `PolicyNetwork` with `policy`'s weights, made outside any strategy,
    for evaluation and export (mixed-precision weights are float32 already; only
    the compute dtype changes, and the copy's variables are plain ones)."""
    previous = set_precision("float32")
    try:
        with tf.distribute.get_strategy().scope():     # the default strategy
            copy = PolicyNetwork.from_config(dict(policy.get_config(), dtype="float32"))
            copy.build()
            copy.set_weights(policy.get_weights())
    finally:
        set_precision(previous)
    return copy


# ------------------------------------------------------------- pre-training


class LanguageModelTrainer(DistributedFitMixin, keras.Model):
    """Maximum-likelihood pre-training of a `PolicyNetwork` with `fit`.

    The same loss as `policy.compile(loss=SparseCategoricalCrossentropy(
    from_logits=True, ignore_class=0))` (mean over real target tokens), computed
    so that it also runs under `MultiWorkerMirroredStrategy` (see
    `DistributedFitMixin`): the token count is all-reduced, so the gradient is that
    of the global batch on any number of replicas, and under mixed_float16 the loss
    is scaled for the `LossScaleOptimizer`. Logs "loss".

    Gradients are applied dense, as in the policy-gradient trainers: Keras' own
    `train_step` hands Adam the embedding gradient as `IndexedSlices`, a lazy update
    (only the rows seen decay, repeated ids count twice in the second moment) that
    gives other numbers and cannot be the same on one device and on several.
    """

    def __init__(self, policy, **kwargs):
        super().__init__(**kwargs)
        self.policy = policy
        if not policy.built:
            policy.build()
        self._loss_tracker = keras.metrics.Mean(name="loss")
        self.built = True

    @property
    def metrics(self):
        return [self._loss_tracker]

    def compile(self, optimizer="adam", **kwargs):
        super().compile(optimizer=optimizer, **kwargs)
        self.optimizer.build(self.trainable_variables)

    def train_step(self, data):
        inputs, targets = data                                        # [B, L] each
        mask = tf.cast(tf.not_equal(targets, 0), tf.float32)          # [B, L]
        count = cross_replica_sum(tf.reduce_sum(mask))
        with tf.GradientTape() as tape:
            logits = self.policy(inputs, training=True)               # [B, L, V] float32
            per_token = keras.losses.sparse_categorical_crossentropy(
                targets, tf.cast(logits, tf.float32), from_logits=True)
            loss = tf.math.divide_no_nan(tf.reduce_sum(per_token * mask), count)
            scaled = scale_loss(self.optimizer, loss)
        gradients = tape.gradient(scaled, self.trainable_variables)
        apply_gradients(self.optimizer, gradients, self.trainable_variables)
        self._loss_tracker.update_state(cross_replica_sum(loss))
        return self.finalize_logs({"loss": self._loss_tracker.result()})


def pretraining_dataset(texts, tokenizer, batch_size, seed, max_sequence_length=128):
    """`language_model_dataset` windows as long as the longest text (at most
    `max_sequence_length` pairs): padding to a fixed length would waste most of the
    compute on short texts."""
    longest = max((len(ids) for ids in tokenizer.encode(list(texts))), default=1)
    return tfpg_data.language_model_dataset(
        texts, tokenizer, sequence_length=min(longest, max_sequence_length),
        batch_size=batch_size, seed=seed)


def pretrain(texts, tokenizer, epochs, *, policy=None, seed=0, batch_size=64,
             learning_rate=3e-3, optimizer=None, max_sequence_length=128,
             embedding_dim=64, hidden_dim=128, backbone="lstm", num_layers=1,
             max_length=POLICY_MAX_LENGTH, callbacks=None, verbose=0):
    """Pre-trains a `PolicyNetwork` on `texts` with maximum likelihood; returns it.

    The pre-training of `tfpg train` as one call: `LanguageModelTrainer` (mean
    cross-entropy over real target tokens, dense Adam) fitted on
    `tfpg.data.language_model_dataset` windows as long as the longest text (at most
    `max_sequence_length` next-token pairs; longer texts are cut into windows).

    Args:
        texts: the training texts, a list of strings.
        tokenizer: the `tfpg.Tokenizer` that encodes them.
        epochs: passes over `texts`.
        policy: a `PolicyNetwork` to train (in place); None builds a new one of
            `tokenizer.vocabulary_size` tokens from `embedding_dim`, `hidden_dim`,
            `backbone`, `num_layers` and `max_length` (the `tfpg train` defaults).
        seed: seeds Keras first (`keras.utils.set_random_seed`: a new policy's
            initial weights) and the order of the texts in every epoch.
        batch_size: windows per batch.
        learning_rate: of the Adam optimizer made when `optimizer` is None.
        optimizer: a Keras optimizer to use instead; give the same one to a later
            call to train on with its state (moments, step count).
        max_sequence_length: the longest window, in next-token pairs.
        callbacks, verbose: passed to `fit`.

    Example:

    >>> from tfpg.tasks import get_task
    >>> task = get_task("arithmetic", seed=0, num_train=8, num_heldout=8, num_pretrain=64)
    >>> tokenizer = task.tokenizer()
    >>> policy = pretrain(task.pretrain_texts, tokenizer, epochs=1, hidden_dim=32)
    >>> out = generate(policy, [tokenizer.encode("12+34=")], max_new_tokens=4, seed=0)
    >>> out.token_ids.shape
    TensorShape([1, 4])
    """
    if isinstance(texts, (str, bytes)):
        raise TypeError("pretrain: texts must be a list of strings, not a single string")
    if policy is not None and policy.vocab_size != tokenizer.vocabulary_size:
        raise ValueError(f"tokenizer has {tokenizer.vocabulary_size} tokens but the policy "
                         f"{policy.vocab_size}: they do not belong together")
    dataset = pretraining_dataset(texts, tokenizer, batch_size, seed, max_sequence_length)
    keras.utils.set_random_seed(seed)
    if policy is None:
        policy = PolicyNetwork(tokenizer.vocabulary_size, embedding_dim, hidden_dim,
                               backbone=backbone, num_layers=num_layers,
                               max_length=max_length)
    trainer = LanguageModelTrainer(policy)
    trainer.compile(optimizer=optimizer or keras.optimizers.Adam(learning_rate))
    trainer.fit(dataset, epochs=epochs, verbose=verbose, callbacks=callbacks)
    return policy


def copy_policy(policy, trainable=True):
    """A new model of `policy`'s class and config holding a copy of its weights:
    trainable (to fine-tune a copy of a pre-trained policy) or, with
    `trainable=False`, frozen like `tfpg.algorithms.base.frozen_copy` (a reference)."""
    copy = frozen_copy(policy)
    copy.trainable = trainable
    return copy


# -------------------------------------------------------------- checkpoints


class RunState:
    """`state.json` of a run's checkpoint directory: which epochs are done, and the
    checkpoint holding each phase's last completed epoch."""

    def __init__(self, directory, config, writable=True):
        self.directory = directory
        self.writable = writable
        self.path = os.path.join(directory, "state.json")
        self.values = {"version": STATE_VERSION, "config": dataclasses.asdict(config),
                       "pretrain_epochs_done": 0, "finetune_epochs_done": 0,
                       "pretrain_checkpoint": None, "finetune_checkpoint": None,
                       "before": None, "seconds": 0.0}
        if os.path.exists(self.path):
            try:
                with open(self.path) as f:
                    saved = json.load(f)
                saved_config = _comparable(TrainConfig.from_dict(saved["config"]))
            except (OSError, ValueError, KeyError, TypeError):
                raise UsageError(f"{self.path}: unreadable checkpoint state; "
                                 "delete the directory to start over") from None
            if saved_config != _comparable(config):
                raise UsageError(f"{directory} holds a run with other options; "
                                 "use another --output or delete it to start over")
            version = saved.get("version", 1)
            if version > STATE_VERSION:
                raise UsageError(f"{directory} was written by a newer tfpg (state version "
                                 f"{version}); upgrade tfpg or use another --output")
            if version < 2 and saved.get("finetune_epochs_done"):
                # Version 1 kept no KL reference in the fine-tuning checkpoint when
                # kl_coef was 0; its pre-training checkpoints are still good.
                raise UsageError(f"{directory} holds fine-tuning epochs of an older tfpg "
                                 "(state version 1) that this one cannot resume; delete "
                                 "it or use another --output to start over")
            for phase in ("pretrain", "finetune"):       # written by tfpg 0.1
                if saved.get(f"{phase}_epochs_done") and f"{phase}_checkpoint" not in saved:
                    saved[f"{phase}_checkpoint"] = phase
            self.values.update(saved, version=STATE_VERSION)

    @property
    def resumed(self):
        return self.values["pretrain_epochs_done"] > 0 or self.values["seconds"] > 0

    def __getitem__(self, key):
        return self.values[key]

    def save(self, **updates):
        self.values.update(updates)
        if not self.writable:
            return
        os.makedirs(self.directory, exist_ok=True)
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.values, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


def _comparable(config):
    values = dataclasses.asdict(config)
    for name in RUNTIME_OPTIONS:
        values.pop(name, None)
    if values["mixed_precision"] == "float32":
        values["mixed_precision"] = None
    return values


def write_checkpoint(checkpoint, state, phase, epochs_done, **updates):
    """Writes `checkpoint` as `PHASE-EPOCHS`, commits it in the run state, then
    deletes the phase's older (or half-written) checkpoints."""
    name = f"{phase}-{epochs_done}"
    if state.writable:
        checkpoint.write(os.path.join(state.directory, name))
    state.save(**{f"{phase}_epochs_done": epochs_done, f"{phase}_checkpoint": name},
               **updates)
    if state.writable:
        for path in glob.glob(os.path.join(glob.escape(state.directory), phase + "*")):
            if os.path.basename(path).startswith(name + "."):
                continue
            if os.path.isdir(path):                  # a killed writer's temp folder
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.remove(path)


class EpochCheckpoint(keras.callbacks.Callback):
    """Checkpoints and marks the epoch done in the run state at each epoch end."""

    def __init__(self, checkpoint, state, phase, started):
        super().__init__()
        self.checkpoint, self.state, self.phase, self.started = checkpoint, state, phase, started

    def on_epoch_end(self, epoch, logs=None):
        write_checkpoint(self.checkpoint, self.state, self.phase, epoch + 1,
                         seconds=self.state["seconds"] + time.time() - self.started)
        self.started = time.time()


def variable_checkpoint(**groups):
    """A `tf.train.Checkpoint` of named lists of Keras variables.

    Keras 3 models are not trackable object graphs for `tf.train.Checkpoint`, so
    each variable is named by its group and position (`policy/3`), which is stable
    for models built from the same options.
    """
    return tf.train.Checkpoint(**{
        name: tf.train.Checkpoint(**{str(i): v.value for i, v in enumerate(variables)})
        for name, variables in groups.items()})


def _restore(checkpoint, directory, name):
    if name is None:
        return
    prefix = os.path.join(directory, name)
    if not tf.io.gfile.exists(prefix + ".index"):
        raise UsageError(f"{directory}: checkpoint {name} named in state.json is missing; "
                         "delete the directory to start over")
    try:
        checkpoint.read(prefix).assert_existing_objects_matched()
    except Exception as error:  # noqa: BLE001 - TF raises many types for corrupt files
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise UsageError(f"{prefix}: cannot restore the checkpoint ({first}); delete "
                         f"{directory} to start over") from None


# --------------------------------------------------------------- evaluation


def evaluate_policy(policy, job, reference=None, batch_size=256):
    """Held-out metrics of greedy completions, plus mean reward and (with a reference)
    the KL per sequence to it on sampled completions."""
    heldout = job.heldout
    dataset = tfpg_data.prompt_dataset(heldout.prompts, job.tokenizer,
                                       references=heldout.references,
                                       extras=heldout.extras or None, batch_size=batch_size,
                                       max_prompt_length=job.max_prompt_length,
                                       truncate=job.truncate)
    completions, reward_sum, kl_sum = [], 0.0, 0.0
    for batch in dataset:
        greedy = generate(policy, batch["prompt"], job.max_new_tokens, sampler="greedy",
                          prompt_mask=batch["prompt_mask"])
        completions += job.tokenizer.decode(greedy.token_ids)
        reward_sum += float(tf.reduce_sum(job.reward_fn(batch["prompt"], greedy.token_ids,
                                                        greedy.mask, batch)))
        if reference is not None:
            sampled = generate(policy, batch["prompt"], job.max_new_tokens, seed=0,
                               prompt_mask=batch["prompt_mask"])
            kl_sum += float(tf.reduce_sum(_sequence_kl(policy, reference, batch["prompt"],
                                                       sampled, batch["prompt_mask"])))
    metrics = job.evaluate(heldout.prompts, completions)
    metrics["reward"] = reward_sum / len(heldout)
    metrics["kl"] = kl_sum / len(heldout) if reference is not None else 0.0
    return metrics, completions


def _sequence_kl(policy, reference, prompt_ids, sampled, prompt_mask):
    """Monte-Carlo KL(policy || reference) per sequence on sampled completions: [B]."""
    sequence = tf.concat([prompt_ids, sampled.token_ids], axis=1)
    padding = tf.concat([tf.cast(prompt_mask, tf.bool), sampled.mask > 0], axis=1)
    start = prompt_ids.shape[1] - 1
    log_probs = [token_log_probs(model(sequence, padding_mask=padding)[:, start:-1],
                                 sampled.token_ids, mask=sampled.mask)
                 for model in (policy, reference)]
    return tf.reduce_sum((log_probs[0] - log_probs[1]) * sampled.mask, axis=1)


# --------------------------------------------------------------------- run


def _algorithm_options(config, job, policy):
    vocabulary_size = policy.vocab_size
    options = {"max_new_tokens": job.max_new_tokens, "eos_id": job.tokenizer.eos_id,
               "seed": config.seed, "on_invalid_reward": config.on_invalid_reward}
    cls = ALGORITHMS[config.algorithm]
    if config.kl_coef is not None:
        options["kl_coef"] = config.kl_coef
    if config.algorithm in ("rloo", "grpo"):
        options["group_size"] = max(2, config.group_size)
    # The pre-trained policy as the reference, also when kl_coef is 0: the trainer
    # then measures and logs the KL without penalising it.
    options["reference_model"] = reference_of(policy)
    if cls.uses_value_model:
        options["value_model"] = ValueNetwork(vocabulary_size, config.embedding_dim,
                                              config.hidden_dim, backbone=config.backbone,
                                              num_layers=config.num_layers,
                                              max_length=POLICY_MAX_LENGTH)
    return options


def _warn(message):
    print(f"tfpg: warning: {message}", file=sys.stderr, flush=True)


def run_training(config, log=print, warn=_warn):
    """Runs (or resumes) the whole job; returns the metrics dict written to metrics.json.

    Under a multi-worker strategy every worker calls this; the non-chief workers
    write nothing and return `{"chief": False, ...}` without evaluating.
    """
    check_config(config)
    output = os.path.normpath(config.output or os.path.join("saved_models", config.run_name))
    logdir = config.logdir or os.path.join("logs", config.run_name)
    checkpoint_dir = output + ".checkpoint"
    check_output(output, checkpoint_dir)
    check_writable(output)
    check_writable(logdir)
    # Devices, strategy and determinism before anything runs a TensorFlow op.
    strategy = make_strategy(config.strategy, config.num_cpu_devices)
    chief = is_chief(strategy)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    job = make_job(config)
    if not job.pretrain_texts or not len(job.train) or not len(job.heldout):
        raise UsageError("empty dataset: nothing to train or evaluate on")
    check_prompt_lengths(job, warn)
    state = RunState(checkpoint_dir, config, writable=chief)
    if state.resumed:
        log(f"resuming from {checkpoint_dir}: pre-training epoch "
            f"{state['pretrain_epochs_done']}/{job.pretrain_epochs}, fine-tuning epoch "
            f"{state['finetune_epochs_done']}/{job.finetune_epochs}")
    else:
        state.save(max_new_tokens=job.max_new_tokens, max_prompt_length=job.max_prompt_length)
    if chief:
        job.tokenizer.save(os.path.join(checkpoint_dir, "tokenizer.json"))
    previous_precision = set_precision(config.mixed_precision)
    try:
        return _run(config, job, strategy, chief, state, output, logdir, log)
    finally:
        set_precision(previous_precision)


def _run(config, job, strategy, chief, state, output, logdir, log):
    keras.utils.set_random_seed(config.seed)
    vocabulary_size = job.tokenizer.vocabulary_size
    checkpoint_dir = state.directory

    with strategy.scope():
        policy = PolicyNetwork(vocabulary_size, config.embedding_dim, config.hidden_dim,
                               backbone=config.backbone, num_layers=config.num_layers,
                               max_length=POLICY_MAX_LENGTH)
        policy.build()
        pretrainer = LanguageModelTrainer(policy)
        pretrainer.compile(optimizer=keras.optimizers.Adam(config.pretrain_learning_rate))
    pretrain_checkpoint = variable_checkpoint(policy=policy.variables,
                                              optimizer=pretrainer.optimizer.variables)
    _restore(pretrain_checkpoint, checkpoint_dir, state["pretrain_checkpoint"])

    # 1. maximum-likelihood pre-training
    done = state["pretrain_epochs_done"]
    if done < job.pretrain_epochs:
        log(f"pre-training on {len(job.pretrain_texts)} texts "
            f"({job.pretrain_epochs} epochs, {config.backbone})")
        texts = pretraining_dataset(job.pretrain_texts, job.tokenizer,
                                    config.batch_size, config.seed)
        callbacks = [EpochCheckpoint(pretrain_checkpoint, state, "pretrain", time.time())]
        if chief:
            callbacks[:0] = [
                tfpg_callbacks.LanguageModelLogger(
                    logdir, log_every=_log_every(config, texts, job.pretrain_epochs)),
                EpochProgress("pre-training", job.pretrain_epochs, log=log)]
        pretrainer.fit(shard_by_data(texts), epochs=job.pretrain_epochs, initial_epoch=done,
                       verbose=0, callbacks=callbacks)
    if state["pretrain_checkpoint"] is None:
        # No pre-training: the initial weights are the reference of the "after" KL.
        write_checkpoint(pretrain_checkpoint, state, "pretrain", 0)

    # 2. the agent (its reference is the pre-trained policy) and "before" metrics
    with strategy.scope():
        agent = ALGORITHMS[config.algorithm](policy, job.reward_fn,
                                             **_algorithm_options(config, job, policy))
        agent.compile(optimizer=keras.optimizers.Adam(config.learning_rate))
    policy_ids = {id(v) for v in policy.variables}
    finetune_checkpoint = variable_checkpoint(
        policy=policy.variables, optimizer=agent.optimizer.variables,
        trainer=[v for v in agent.variables if id(v) not in policy_ids])
    _restore(finetune_checkpoint, checkpoint_dir, state["finetune_checkpoint"])
    copies = {}

    def evaluation_policy():
        """A float32 copy of the policy outside the strategy, made once (so that its
        traced generation functions are reused) and refreshed with its weights."""
        if "policy" not in copies:
            copies["policy"] = float32_copy(policy)
        else:
            copies["policy"].set_weights(policy.get_weights())
        return copies["policy"]

    before = state["before"]
    if before is None and chief:
        before, _ = evaluate_policy(evaluation_policy(), job)
        before["kl"] = 0.0
        state.save(before=before)

    # 3. policy-gradient fine-tuning
    done = state["finetune_epochs_done"]
    if done < job.finetune_epochs:
        log(f"fine-tuning with {config.algorithm} on {len(job.train)} prompts "
            f"({job.finetune_epochs} epochs)")
        prompts = tfpg_data.prompt_dataset(
            job.train.prompts, job.tokenizer, references=job.train.references,
            extras=job.train.extras or None, batch_size=config.batch_size, shuffle=True,
            seed=config.seed, drop_remainder=len(job.train) >= config.batch_size,
            max_prompt_length=job.max_prompt_length, truncate=job.truncate)
        if config.steps_per_epoch:
            prompts = prompts.repeat().take(config.steps_per_epoch)
        callbacks = [EpochCheckpoint(finetune_checkpoint, state, "finetune", time.time())]
        if chief:
            callbacks[:0] = [
                tfpg_callbacks.RewardLogger(
                    csv_path=os.path.join(logdir, "rewards.csv"), logdir=logdir,
                    log_every=_log_every(config, prompts, job.finetune_epochs)),
                tfpg_callbacks.SampleLogger(
                    logdir, job.tokenizer, prompts=job.heldout.prompts[:8],
                    references=_first_references(job.heldout.references[:8]))]
        # A progress bar on a terminal; elsewhere one line an epoch, without ANSI codes.
        verbose = (1 if sys.stdout.isatty() else 2) if chief else 0
        agent.fit(shard_by_data(prompts), epochs=job.finetune_epochs, initial_epoch=done,
                  verbose=verbose, callbacks=callbacks)

    if not chief:
        log("fine-tuning done; the chief evaluates and exports")
        return {"chief": False, "output": output}

    # 4. "after", export, metrics.json (from float32 copies outside the strategy)
    exported = evaluation_policy()
    reference = float32_copy(agent.reference_model)
    after, completions = evaluate_policy(exported, job, reference)
    metrics = {"task": job.name, "algorithm": config.algorithm, "backbone": config.backbone,
               "strategy": config.strategy, "replicas": strategy.num_replicas_in_sync,
               "mixed_precision": config.mixed_precision or "float32",
               "primary_metric": job.primary_metric, "before": before, "after": after,
               "seconds": round(state["seconds"], 1), "output": output,
               "samples": [{"prompt": p, "completion": c}
                           for p, c in zip(job.heldout.prompts[:5], completions[:5])]}
    export_saved_model(exported, job.tokenizer, output, max_new_tokens=job.max_new_tokens,
                       eos_id=job.tokenizer.eos_id, max_prompt_length=job.max_prompt_length,
                       metadata={"task": job.name, "algorithm": config.algorithm})
    tmp = os.path.join(output, "metrics.json.tmp")
    with open(tmp, "w") as f:
        json.dump(metrics, f, indent=2)
    os.replace(tmp, os.path.join(output, "metrics.json"))
    return metrics


def _first_references(references):
    return [r if isinstance(r, str) else r[0] for r in references]


def _log_every(config, dataset, epochs):
    """Train steps between TensorBoard points: --log-every, or about LOG_POINTS
    points over the whole phase."""
    if config.log_every:
        return config.log_every
    steps = int(dataset.cardinality())
    if steps < 1:                                    # unknown: a point per epoch
        return None
    return max(1, math.ceil(steps * epochs / LOG_POINTS))


class EpochProgress(keras.callbacks.Callback):
    """Console progress of a `fit` of many short epochs (pre-training runs tens):
    on a terminal one progress bar over the epochs; elsewhere a line every few
    epochs (about `lines` in all, plus the first epoch run and the last)."""

    def __init__(self, label, epochs, lines=10, log=print):
        super().__init__()
        self.label, self.epochs, self.log = label, epochs, log
        self.every = max(1, math.ceil(epochs / lines))
        self._bar = None
        self._first = True

    def on_train_begin(self, logs=None):
        self._started = time.time()
        if sys.stdout.isatty():
            self._bar = keras.utils.Progbar(self.epochs, unit_name="epoch",
                                            stateful_metrics=["loss"])

    def on_epoch_end(self, epoch, logs=None):
        values = {name: float(value) for name, value in (logs or {}).items()}
        if self._bar is not None:
            self._bar.update(epoch + 1, values=list(values.items()))
        elif self._first or (epoch + 1) % self.every == 0 or epoch + 1 == self.epochs:
            shown = " - ".join(f"{name} {value:.4f}" for name, value in values.items())
            self.log(f"{self.label} epoch {epoch + 1}/{self.epochs} - {shown} - "
                     f"{time.time() - self._started:.0f}s")
        self._first = False


def format_table(metrics):
    """The before / after table printed at the end of `tfpg train`."""
    before, after = metrics["before"], metrics["after"]
    names = [metrics["primary_metric"]] + [k for k in after if k != metrics["primary_metric"]]
    lines = [f"{'held-out':<24}{'before':>10}{'after':>10}"]
    for name in names:
        lines.append(f"{name:<24}{before.get(name, math.nan):>10.3f}{after[name]:>10.3f}")
    lines.append(f"{'seconds':<24}{'':>10}{metrics['seconds']:>10.1f}")
    return "\n".join(lines)


def export_from_source(source, output, tokenizer_path=None):
    """`tfpg export`: a SavedModel from a run's checkpoint directory or a `.keras` file.

    A checkpoint directory (`OUTPUT.checkpoint` of `tfpg train`) holds its tokenizer
    and options; a `.keras` PolicyNetwork needs a tokenizer JSON, by default
    `tokenizer.json` beside it.
    """
    check_writable(output)
    if os.path.isdir(source):
        state_path = os.path.join(source, "state.json")
        if not os.path.exists(state_path):
            raise UsageError(f"{source}: not a tfpg checkpoint directory (no state.json)")
        try:
            with open(state_path) as f:
                state = json.load(f)
            config = TrainConfig.from_dict(state["config"])
        except (OSError, ValueError, KeyError, TypeError):
            raise UsageError(f"{state_path}: unreadable checkpoint state") from None
        own_tokenizer = os.path.join(source, "tokenizer.json")
        if not os.path.exists(own_tokenizer):
            raise UsageError(f"{source}: no tokenizer.json (a half-written checkpoint?)")
        # The run's own tokenizer gives the model's shape; another one must match it.
        model_vocabulary = Tokenizer.load(own_tokenizer).vocabulary_size
        tokenizer = Tokenizer.load(tokenizer_path or own_tokenizer)
        if tokenizer.vocabulary_size != model_vocabulary:
            raise UsageError(f"tokenizer has {tokenizer.vocabulary_size} tokens but the model "
                             f"{model_vocabulary}: they do not belong together")
        policy = PolicyNetwork(model_vocabulary, config.embedding_dim,
                               config.hidden_dim, backbone=config.backbone,
                               num_layers=config.num_layers, max_length=POLICY_MAX_LENGTH)
        policy.build()
        names = [state.get(f"{phase}_checkpoint") or phase for phase in ("finetune", "pretrain")
                 if state.get(f"{phase}_epochs_done") or state.get(f"{phase}_checkpoint")]
        names = [name for name in names
                 if tf.io.gfile.exists(os.path.join(source, name + ".index"))]
        if not names:
            raise UsageError(f"{source}: no completed epoch to export yet")
        try:
            variable_checkpoint(policy=policy.variables).read(
                os.path.join(source, names[0])).expect_partial()
        except Exception as error:  # noqa: BLE001 - TF raises many types for corrupt files
            first = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise UsageError(f"{source}: cannot read checkpoint {names[0]} ({first})") from None
        max_new_tokens = state.get("max_new_tokens", 32)
        max_prompt_length = state.get("max_prompt_length")
    elif source.endswith(".keras") and os.path.isfile(source):
        tokenizer_path = tokenizer_path or os.path.join(os.path.dirname(source),
                                                        "tokenizer.json")
        if not os.path.exists(tokenizer_path):
            raise UsageError(f"{source}: no tokenizer; pass --tokenizer F.json")
        tokenizer = Tokenizer.load(tokenizer_path)
        try:
            policy = keras.models.load_model(source)
        except Exception as error:  # noqa: BLE001 - any unreadable file is a usage error
            raise UsageError(f"{source}: cannot load ({type(error).__name__})") from None
        if not isinstance(policy, PolicyNetwork):
            raise UsageError(f"{source}: holds a {type(policy).__name__}, not a PolicyNetwork")
        max_new_tokens = 32
        max_prompt_length = None
    else:
        raise UsageError(f"{source}: not a checkpoint directory or a .keras file")
    if policy.vocab_size != tokenizer.vocabulary_size:
        raise UsageError(f"tokenizer has {tokenizer.vocabulary_size} tokens but the model "
                         f"{policy.vocab_size}: they do not belong together")
    return export_saved_model(policy, tokenizer, output, max_new_tokens=max_new_tokens,
                              eos_id=tokenizer.eos_id, max_prompt_length=max_prompt_length)
