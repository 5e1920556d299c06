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
`state.json` naming the last completed epoch of each phase). The export directory is
only ever written whole, by rename.
"""

import dataclasses
import importlib
import json
import math
import os
import shutil
import time

import keras
import numpy as np
import tensorflow as tf

from tfpg import callbacks as tfpg_callbacks
from tfpg import data as tfpg_data
from tfpg import rewards
from tfpg.algorithms import ALGORITHMS
from tfpg.export import export_saved_model
from tfpg.generation import generate
from tfpg.losses import token_log_probs
from tfpg.models import PolicyNetwork, ValueNetwork
from tfpg.tasks import TASKS, get_task
from tfpg.text import Tokenizer

STATE_VERSION = 1
STRATEGIES = ("default", "mirrored", "multi_worker")
NAMED_REWARDS = ("bleu", "exact_match", "length")


class UsageError(ValueError):
    """Bad options or data: the CLI reports it in one line and exits with status 2."""


@dataclasses.dataclass
class TrainConfig:
    """Every option of `tfpg train` (the CLI flags and the YAML `--config` keys)."""

    task: str = "arithmetic"
    train_file: str = None
    algorithm: str = "rloo"
    backbone: str = "lstm"
    reward: str = None              # None: the task's reward, or BLEU for a file
    pretrain_epochs: int = None     # None: the task's default
    epochs: int = None              # fine-tuning epochs; None: the task's default
    batch_size: int = 64
    seed: int = 0
    output: str = None              # None: saved_models/<task>-<algorithm>
    logdir: str = None              # None: logs/<task>-<algorithm>
    strategy: str = "default"
    embedding_dim: int = 64
    hidden_dim: int = 128
    num_layers: int = 1
    learning_rate: float = 1e-3
    pretrain_learning_rate: float = 3e-3
    kl_coef: float = None           # None: the algorithm's default
    group_size: int = 4
    max_new_tokens: int = None      # None: the task's default
    steps_per_epoch: int = None     # fine-tuning steps per epoch; None: whole train split

    @classmethod
    def from_dict(cls, values):
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UsageError(f"unknown option(s) {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(known))}")
        return cls(**values)

    @property
    def run_name(self):
        source = self.task if self.train_file is None else \
            os.path.splitext(os.path.basename(self.train_file))[0]
        return f"{source}-{self.algorithm}"


# Fine-tuning defaults per task: epochs over the train split and the held-out sizes
# chosen so that `tfpg train` with no arguments finishes in minutes on 2 CPU cores.
TASK_FINETUNE_EPOCHS = {"arithmetic": 4, "translate": 4, "keywords": 4}


def check_config(config):
    """Raises UsageError for options that cannot work, before anything is written."""
    if config.train_file is None and config.task not in TASKS:
        raise UsageError(f"unknown task {config.task!r}; known: {', '.join(sorted(TASKS))}")
    if config.algorithm not in ALGORITHMS:
        raise UsageError(f"unknown algorithm {config.algorithm!r}; "
                         f"known: {', '.join(ALGORITHMS)}")
    if config.backbone not in ("lstm", "gru", "transformer"):
        raise UsageError(f"unknown backbone {config.backbone!r}; known: lstm, gru, transformer")
    if config.strategy not in STRATEGIES:
        raise UsageError(f"unknown strategy {config.strategy!r}; known: {', '.join(STRATEGIES)}")
    for name in ("batch_size", "embedding_dim", "hidden_dim", "num_layers", "group_size"):
        if getattr(config, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1")
    for name in ("pretrain_epochs", "epochs"):
        value = getattr(config, name)
        if value is not None and value < 0:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 0")
    if config.train_file is not None and not os.path.isfile(config.train_file):
        raise UsageError(f"{config.train_file}: file not found")


def check_writable(path):
    """Fails early (before training, creating nothing) when `path` cannot be written:
    its nearest existing ancestor must be a writable directory with 50 MiB free."""
    ancestor = os.path.abspath(path)
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise UsageError(f"{ancestor} is a file, so {path} cannot be created")
    if not os.access(ancestor, os.W_OK):
        raise UsageError(f"{ancestor} is not writable, so {path} cannot be created")
    free = shutil.disk_usage(ancestor).free
    if free < 50 * 2**20:
        raise UsageError(f"only {free // 2**20} MiB free in {ancestor}; need at least 50 MiB")


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
    return reward_fn


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
               config.max_new_tokens or 32, config.pretrain_epochs or 10, config.epochs or 3)


def make_job(config):
    if config.train_file is not None:
        return _file_job(config)
    task = get_task(config.task, seed=config.seed)
    tokenizer = task.tokenizer()
    return Job(config.task, task.pretrain_texts, task.train, task.heldout, tokenizer,
               load_reward(config.reward, tokenizer, task.reward(tokenizer)),
               lambda prompts, completions: task.evaluate(prompts, completions, "heldout"),
               task.primary_metric, config.max_new_tokens or task.max_new_tokens,
               task.pretrain_epochs if config.pretrain_epochs is None else config.pretrain_epochs,
               TASK_FINETUNE_EPOCHS[config.task] if config.epochs is None else config.epochs)


# ----------------------------------------------------------------- strategy


def make_strategy(name):
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise UsageError("--strategy multi_worker needs the TF_CONFIG environment variable")
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


# -------------------------------------------------------------- checkpoints


class RunState:
    """`state.json` of a run's checkpoint directory: which epochs are done."""

    def __init__(self, directory, config):
        self.directory = directory
        self.path = os.path.join(directory, "state.json")
        self.values = {"version": STATE_VERSION, "config": dataclasses.asdict(config),
                       "pretrain_epochs_done": 0, "finetune_epochs_done": 0,
                       "before": None, "seconds": 0.0}
        if os.path.exists(self.path):
            try:
                with open(self.path) as f:
                    saved = json.load(f)
            except (OSError, ValueError):
                raise UsageError(f"{self.path}: unreadable checkpoint state; "
                                 "delete the directory to start over") from None
            if saved.get("config") != self.values["config"]:
                raise UsageError(f"{directory} holds a run with other options; "
                                 "use another --output or delete it to start over")
            self.values = saved

    @property
    def resumed(self):
        return self.values["pretrain_epochs_done"] > 0 or self.values["seconds"] > 0

    def __getitem__(self, key):
        return self.values[key]

    def save(self, **updates):
        self.values.update(updates)
        os.makedirs(self.directory, exist_ok=True)
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.values, f, indent=2)
        os.replace(tmp, self.path)


class EpochCheckpoint(keras.callbacks.Callback):
    """Saves `checkpoint` and marks the epoch done in the run state at each epoch end."""

    def __init__(self, checkpoint, state, counter, started):
        super().__init__()
        self.checkpoint, self.state, self.counter, self.started = checkpoint, state, counter, started

    def on_epoch_end(self, epoch, logs=None):
        prefix = os.path.join(self.state.directory, self.counter)
        self.checkpoint.write(prefix + ".tmp")
        for name in tf.io.gfile.glob(prefix + ".tmp*"):
            os.replace(name, name.replace(".tmp", "", 1))
        self.state.save(**{f"{self.counter}_epochs_done": epoch + 1,
                           "seconds": self.state["seconds"] + time.time() - self.started})
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
    prefix = os.path.join(directory, name)
    if tf.io.gfile.exists(prefix + ".index"):
        checkpoint.read(prefix).assert_existing_objects_matched()


# --------------------------------------------------------------- evaluation


def _prompt_ids(tokenizer, prompts):
    encoded = tokenizer.encode(list(prompts))
    width = max(len(row) for row in encoded)
    return np.array([[0] * (width - len(row)) + row for row in encoded], np.int32)


def evaluate_policy(policy, job, reference=None, batch_size=256):
    """Held-out metrics of greedy completions, plus mean reward and (with a reference)
    the KL per sequence to it on sampled completions."""
    heldout = job.heldout
    dataset = tfpg_data.prompt_dataset(heldout.prompts, job.tokenizer,
                                       references=heldout.references,
                                       extras=heldout.extras or None, batch_size=batch_size)
    completions, reward_sum, kl_sum = [], 0.0, 0.0
    for batch in dataset:
        greedy = generate(policy, batch["prompt"], job.max_new_tokens, sampler="greedy")
        completions += job.tokenizer.decode(greedy.token_ids)
        reward_sum += float(tf.reduce_sum(job.reward_fn(batch["prompt"], greedy.token_ids,
                                                        greedy.mask, batch)))
        if reference is not None:
            sampled = generate(policy, batch["prompt"], job.max_new_tokens, seed=0)
            kl_sum += float(tf.reduce_sum(_sequence_kl(policy, reference, batch["prompt"],
                                                       sampled)))
    metrics = job.evaluate(heldout.prompts, completions)
    metrics["reward"] = reward_sum / len(heldout)
    metrics["kl"] = kl_sum / len(heldout) if reference is not None else 0.0
    return metrics, completions


def _sequence_kl(policy, reference, prompt_ids, sampled):
    """Monte-Carlo KL(policy || reference) per sequence on sampled completions: [B]."""
    sequence = tf.concat([prompt_ids, sampled.token_ids], axis=1)
    padding = tf.concat([tf.not_equal(prompt_ids, 0), sampled.mask > 0], axis=1)
    start = prompt_ids.shape[1] - 1
    log_probs = [token_log_probs(model(sequence, padding_mask=padding)[:, start:-1],
                                 sampled.token_ids, mask=sampled.mask)
                 for model in (policy, reference)]
    return tf.reduce_sum((log_probs[0] - log_probs[1]) * sampled.mask, axis=1)


# --------------------------------------------------------------------- run


def _algorithm_options(config, job, vocabulary_size):
    options = {"max_new_tokens": job.max_new_tokens, "eos_id": job.tokenizer.eos_id,
               "seed": config.seed}
    cls = ALGORITHMS[config.algorithm]
    if config.kl_coef is not None:
        options["kl_coef"] = config.kl_coef
    if config.algorithm in ("rloo", "grpo"):
        options["group_size"] = max(2, config.group_size)
    if cls.uses_value_model:
        options["value_model"] = ValueNetwork(vocabulary_size, config.embedding_dim,
                                              config.hidden_dim, backbone=config.backbone,
                                              num_layers=config.num_layers)
    return options


def run_training(config, log=print):
    """Runs (or resumes) the whole job; returns the metrics dict written to metrics.json."""
    check_config(config)
    output = config.output or os.path.join("saved_models", config.run_name)
    logdir = config.logdir or os.path.join("logs", config.run_name)
    job = make_job(config)
    if not job.pretrain_texts or not len(job.train) or not len(job.heldout):
        raise UsageError("empty dataset: nothing to train or evaluate on")
    check_writable(output)
    check_writable(logdir)
    checkpoint_dir = output.rstrip("/") + ".checkpoint"
    state = RunState(checkpoint_dir, config)
    if state.resumed:
        log(f"resuming from {checkpoint_dir}: pre-training epoch "
            f"{state['pretrain_epochs_done']}/{job.pretrain_epochs}, fine-tuning epoch "
            f"{state['finetune_epochs_done']}/{job.finetune_epochs}")
    else:
        state.save(max_new_tokens=job.max_new_tokens)
    job.tokenizer.save(os.path.join(checkpoint_dir, "tokenizer.json"))
    keras.utils.set_random_seed(config.seed)
    strategy = make_strategy(config.strategy)
    vocabulary_size = job.tokenizer.vocabulary_size

    with strategy.scope():
        policy = PolicyNetwork(vocabulary_size, config.embedding_dim, config.hidden_dim,
                               backbone=config.backbone, num_layers=config.num_layers,
                               max_length=256)
        policy.build()
        policy.compile(optimizer=keras.optimizers.Adam(config.pretrain_learning_rate),
                       loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True,
                                                                       ignore_class=0))
        policy.optimizer.build(policy.trainable_variables)
    pretrain_checkpoint = variable_checkpoint(policy=policy.variables,
                                              optimizer=policy.optimizer.variables)
    _restore(pretrain_checkpoint, checkpoint_dir, "pretrain")

    # 1. maximum-likelihood pre-training
    done = state["pretrain_epochs_done"]
    if done < job.pretrain_epochs:
        log(f"pre-training on {len(job.pretrain_texts)} texts "
            f"({job.pretrain_epochs} epochs, {config.backbone})")
        # Windows as long as the longest text: padding to a fixed 64 wastes most of
        # the compute on these short texts.
        longest = max(len(row) for row in job.tokenizer.encode(job.pretrain_texts))
        texts = tfpg_data.language_model_dataset(job.pretrain_texts, job.tokenizer,
                                                 sequence_length=min(longest, 128),
                                                 batch_size=config.batch_size,
                                                 seed=config.seed)
        policy.fit(texts, epochs=job.pretrain_epochs, initial_epoch=done, verbose=2,
                   callbacks=[EpochCheckpoint(pretrain_checkpoint, state, "pretrain",
                                              time.time())])

    # 2. the agent (its reference is the pre-trained policy) and "before" metrics
    with strategy.scope():
        agent = ALGORITHMS[config.algorithm](policy, job.reward_fn,
                                             **_algorithm_options(config, job, vocabulary_size))
        agent.compile(optimizer=keras.optimizers.Adam(config.learning_rate))
    policy_ids = {id(v) for v in policy.variables}
    finetune_checkpoint = variable_checkpoint(
        policy=policy.variables, optimizer=agent.optimizer.variables,
        trainer=[v for v in agent.variables if id(v) not in policy_ids])
    _restore(finetune_checkpoint, checkpoint_dir, "finetune")
    reference = agent.reference_model or _frozen_reference(policy, checkpoint_dir)
    before = state["before"]
    if before is None:
        before, _ = evaluate_policy(policy, job)
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
            seed=config.seed, drop_remainder=len(job.train) >= config.batch_size)
        if config.steps_per_epoch:
            prompts = prompts.repeat().take(config.steps_per_epoch)
        agent.fit(prompts, epochs=job.finetune_epochs, initial_epoch=done, verbose=2,
                  callbacks=[tfpg_callbacks.RewardLogger(
                                 csv_path=os.path.join(logdir, "rewards.csv"), logdir=logdir),
                             keras.callbacks.TensorBoard(logdir),
                             tfpg_callbacks.SampleLogger(
                                 logdir, job.tokenizer, prompts=job.heldout.prompts[:8],
                                 references=_first_references(job.heldout.references[:8])),
                             EpochCheckpoint(finetune_checkpoint, state, "finetune",
                                             time.time())])

    # 4. "after", export, metrics.json
    after, completions = evaluate_policy(policy, job, reference)
    metrics = {"task": job.name, "algorithm": config.algorithm, "backbone": config.backbone,
               "primary_metric": job.primary_metric, "before": before, "after": after,
               "seconds": round(state["seconds"], 1), "output": output,
               "samples": [{"prompt": p, "completion": c}
                           for p, c in zip(job.heldout.prompts[:5], completions[:5])]}
    export_saved_model(policy, job.tokenizer, output, max_new_tokens=job.max_new_tokens,
                       eos_id=job.tokenizer.eos_id,
                       metadata={"task": job.name, "algorithm": config.algorithm})
    tmp = os.path.join(output, "metrics.json.tmp")
    with open(tmp, "w") as f:
        json.dump(metrics, f, indent=2)
    os.replace(tmp, os.path.join(output, "metrics.json"))
    return metrics


def _first_references(references):
    return [r if isinstance(r, str) else r[0] for r in references]


def _frozen_reference(policy, checkpoint_dir):
    """The pre-trained policy, for measuring KL when the algorithm keeps no reference."""
    reference = PolicyNetwork.from_config(policy.get_config())
    reference.build()
    prefix = os.path.join(checkpoint_dir, "pretrain")
    variable_checkpoint(policy=reference.variables).read(prefix).expect_partial()
    return reference


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
    if os.path.isdir(source):
        state_path = os.path.join(source, "state.json")
        if not os.path.exists(state_path):
            raise UsageError(f"{source}: not a tfpg checkpoint directory (no state.json)")
        with open(state_path) as f:
            state = json.load(f)
        config = TrainConfig.from_dict(state["config"])
        tokenizer = Tokenizer.load(tokenizer_path or os.path.join(source, "tokenizer.json"))
        policy = PolicyNetwork(tokenizer.vocabulary_size, config.embedding_dim,
                               config.hidden_dim, backbone=config.backbone,
                               num_layers=config.num_layers, max_length=256)
        policy.build()
        phases = [name for name in ("finetune", "pretrain")
                  if tf.io.gfile.exists(os.path.join(source, name + ".index"))]
        if not phases:
            raise UsageError(f"{source}: no completed epoch to export yet")
        variable_checkpoint(policy=policy.variables).read(
            os.path.join(source, phases[0])).expect_partial()
        max_new_tokens = state.get("max_new_tokens", 32)
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
    else:
        raise UsageError(f"{source}: not a checkpoint directory or a .keras file")
    if policy.vocab_size != tokenizer.vocabulary_size:
        raise UsageError(f"tokenizer has {tokenizer.vocabulary_size} tokens but the model "
                         f"{policy.vocab_size}: they do not belong together")
    return export_saved_model(policy, tokenizer, output, max_new_tokens=max_new_tokens,
                              eos_id=tokenizer.eos_id)
