"""The run pipeline behind `tfpg train`, top to bottom.

`run_training(TrainConfig(...))`:

1. make the job (`tfpg.run.jobs`): a bundled task or the user's file, its tokenizer,
   reward and evaluation;
2. make the model: a new `PolicyNetwork` (`new_policy`), or the `.keras` policy or
   KerasHub preset of `--model` (`tfpg.run.model_source`; it brings its tokenizer, which
   the job then uses), on the devices of the chosen strategy (`tfpg.run.devices`);
3. pre-train it with maximum likelihood if asked (`tfpg.run.pretraining`; by default a
   new policy is, a `--model` is not);
4. evaluate it on held-out data ("before", `tfpg.run.evaluation`);
5. fine-tune it with the chosen policy-gradient algorithm and reward;
6. evaluate again ("after", with the KL to the pre-trained policy), export the
   SavedModel atomically and write `OUTPUT/metrics.json`.

Every epoch of steps 3 and 5 is checkpointed (`tfpg.run.checkpoints`), so that a killed
run, started again with the same options, resumes from its last completed epoch. Each
epoch's randomness (its data order, the Python / NumPy / TensorFlow / Keras random
streams) is a pure function of (seed, phase, epoch), and everything else a step reads
is in the checkpoint, so that under `--deterministic` the resumed run is the unbroken
one, to the bit.
From its first write on, the run (its chief) holds the writer lock of its output
(`OUTPUT.lock`, `tfpg.guards.locking`): a second run on the same output is refused with
the first one's PID.
Options and their checks are in `tfpg.run.config`. Under a multi-worker strategy every
worker runs the same command and the chief alone writes checkpoints, logs, metrics
and the export (`OUTPUT` must be on a file system every worker sees); a run gives
the same weights whatever the strategy (to float rounding).

The names of the modules above stay importable from here (`from tfpg.run.pipeline import
pretrain, TrainConfig, ...`).
"""

import contextlib
import math
import os
import sys
import time

import keras
import tensorflow as tf

from tfpg import callbacks as tfpg_callbacks
from tfpg import data as tfpg_data
from tfpg.algorithms import ALGORITHMS, TRAINERS  # noqa: F401
from tfpg.algorithms.base import reference_of
from tfpg.distribution import is_chief
from tfpg.export import export_saved_model
from tfpg.guards.locking import output_lock, write_json_atomically
from tfpg.models import copy_policy  # noqa: F401
from tfpg.models import KerasHubPolicy, PolicyNetwork, ValueNetwork
from tfpg.options import (LOG_POINTS, MIN_FREE_MB_ENV, NAMED_REWARDS,  # noqa: F401
                          NUM_CPU_DEVICES_ENV, ON_INVALID_REWARD, PRECISIONS, RUNTIME_OPTIONS,
                          STRATEGIES, TRUNCATE_PROMPTS, UsageError)
from tfpg.run.checkpoints import (STATE_VERSION, EpochCheckpoint, EpochSeed, RunState,  # noqa: F401
                                  WriteReporting, epoch_batches, export_from_source,
                                  export_hub_policy, reseed, restore, trainer_checkpoint,
                                  variable_checkpoint, write_checkpoint, writing)
from tfpg.run.config import (POLICY_MAX_LENGTH, TASK_FINETUNE_EPOCHS, TrainConfig,  # noqa: F401
                             check_config, check_output, check_writable, run_paths)
from tfpg.run.devices import (configure_cpu_devices, float32_copy, make_strategy,  # noqa: F401
                              set_precision, shard_by_data)
from tfpg.run.evaluation import evaluate_policy, format_table  # noqa: F401
from tfpg.run.jobs import Job, check_prompt_lengths, load_reward, make_job  # noqa: F401
from tfpg.run.model_source import load_policy, load_teacher, new_policy
from tfpg.run.pretraining import (EpochProgress, LanguageModelTrainer, pretrain,  # noqa: F401
                                  pretraining_dataset)


def _warn(message):
    print(f"tfpg: warning: {message}", file=sys.stderr, flush=True)


def run_training(config, log=print, warn=_warn):
    """Runs (or resumes) the whole job; returns the metrics dict written to metrics.json.

    Under a multi-worker strategy every worker calls this; the non-chief workers
    write nothing and return `{"chief": False, ...}` without evaluating.
    """
    check_config(config)
    output, logdir, checkpoint_dir = run_paths(config)
    # Devices, strategy and determinism before anything runs a TensorFlow op.
    strategy = make_strategy(config.strategy, config.num_cpu_devices)
    chief = is_chief(strategy)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()

    # 1. the job (with the tokenizer of the model it starts from, if any)
    policy = tokenizer = teacher = None
    if config.model is not None:
        keras.utils.set_random_seed(config.seed)        # LoRA adapters' initial weights
        with strategy.scope():
            policy, tokenizer = load_policy(config.model, config.lora_rank)
    if config.teacher is not None:      # --algorithm distill: a new student takes its tokenizer
        with strategy.scope():
            teacher, tokenizer = load_teacher(config.teacher, tokenizer)
    job = make_job(config, tokenizer=tokenizer)
    if not job.pretrain_texts or not len(job.train) or not len(job.heldout):
        raise UsageError("empty dataset: nothing to train or evaluate on")
    check_prompt_lengths(job, warn)
    # Everything above only reads: bad input is refused before the lock file exists.
    # From here the chief writes (checkpoints, logs, the export), alone on its output;
    # the other workers write nothing.
    with output_lock(output) if chief else contextlib.nullcontext():
        state = RunState(checkpoint_dir, config, writable=chief)
        if state.resumed:
            log(f"resuming from {checkpoint_dir}: pre-training epoch "
                f"{state['pretrain_epochs_done']}/{job.pretrain_epochs}, fine-tuning epoch "
                f"{state['finetune_epochs_done']}/{job.finetune_epochs}")
        else:
            state.save(max_new_tokens=job.max_new_tokens,
                       max_prompt_length=job.max_prompt_length)
        if chief:
            tokenizer_path = os.path.join(checkpoint_dir, "tokenizer.json")
            with writing(tokenizer_path):
                job.tokenizer.save(tokenizer_path)
        previous_precision = set_precision(config.mixed_precision)
        try:
            return _run(_Run(config, job, strategy, chief, state, output, logdir, log), policy,
                        teacher)
        finally:
            set_precision(previous_precision)


class _Run:
    """What the phases of one run share."""

    def __init__(self, config, job, strategy, chief, state, output, logdir, log):
        self.config, self.job, self.strategy, self.chief = config, job, strategy, chief
        self.state, self.output, self.logdir, self.log = state, output, logdir, log
        self._evaluation_copy = None

    def evaluation_policy(self, policy):
        """A float32 copy of `policy` outside the strategy, made once (so that its
        traced generation functions are reused) and refreshed with its weights. A
        KerasHub policy is evaluated as it is (it trains on one device, in its own
        dtype)."""
        if isinstance(policy, KerasHubPolicy):
            return policy
        if self._evaluation_copy is None:
            self._evaluation_copy = float32_copy(policy)
        else:
            self._evaluation_copy.set_weights(policy.get_weights())
        return self._evaluation_copy


def _run(run, policy=None, teacher=None):
    keras.utils.set_random_seed(run.config.seed)
    # 2. the model (a --model is loaded already: its tokenizer made the job)
    if policy is None:
        with run.strategy.scope():
            policy = new_policy(run.config, run.job.tokenizer.vocabulary_size)
    # 3. pre-training
    pretrain_phase(run, policy)
    # 4. the agent (its reference is the pre-trained policy) and "before" metrics.
    # Seeded afresh: a run resumed after pre-training ran none of its epochs, yet its
    # critic must start from the unbroken run's initial weights.
    reseed(run.config.seed, "agent")
    with run.strategy.scope():
        models = (policy,) if teacher is None else (policy, teacher)    # distill: both
        agent = TRAINERS[run.config.algorithm](
            *models, run.job.reward_fn, **_algorithm_options(run.config, run.job, policy))
        agent.compile(optimizer=keras.optimizers.Adam(run.config.learning_rate))
    checkpoint = trainer_checkpoint(agent)
    restore(checkpoint, run.state.directory, run.state["finetune_checkpoint"])
    if run.state["before"] is None and run.chief:
        reseed(run.config.seed, "evaluate", 0)
        before, _ = evaluate_policy(run.evaluation_policy(policy), run.job)
        before["kl"] = 0.0
        run.state.save(before=before)
    # 5. fine-tuning
    finetune_phase(run, agent, checkpoint)
    if not run.chief:
        run.log("fine-tuning done; the chief evaluates and exports")
        return {"chief": False, "output": run.output}
    # 6. "after", export, metrics.json
    return evaluate_and_export(run, agent)


def pretrain_phase(run, policy):
    """Maximum-likelihood pre-training of `policy` for the job's epochs, resumed from
    the run's last pre-training checkpoint. Without any (0 epochs), the initial
    weights are checkpointed: they are the reference of the "after" KL."""
    config, job, state = run.config, run.job, run.state
    with run.strategy.scope():
        trainer = LanguageModelTrainer(policy)
        trainer.compile(optimizer=keras.optimizers.Adam(config.pretrain_learning_rate))
    checkpoint = variable_checkpoint(policy=policy.variables,
                                     optimizer=trainer.optimizer.variables)
    restore(checkpoint, state.directory, state["pretrain_checkpoint"])
    done = state["pretrain_epochs_done"]
    if done < job.pretrain_epochs:
        run.log(f"pre-training on {len(job.pretrain_texts)} texts "
                f"({job.pretrain_epochs} epochs, {config.backbone})")
        windows = pretraining_dataset(job.pretrain_texts, job.tokenizer, config.batch_size,
                                      config.seed, shuffle=False).unbatch()
        texts, steps = epoch_batches(windows, config.batch_size, config.seed, "pretrain",
                                     done, job.pretrain_epochs)
        callbacks = [EpochSeed(config.seed, "pretrain"),
                     EpochCheckpoint(checkpoint, state, "pretrain", time.time())]
        if run.chief:
            callbacks[1:1] = [
                WriteReporting(tfpg_callbacks.LanguageModelLogger(
                    run.logdir, log_every=_log_every(config, steps, job.pretrain_epochs)),
                    run.logdir),
                EpochProgress("pre-training", job.pretrain_epochs, log=run.log)]
        trainer.fit(shard_by_data(texts), epochs=job.pretrain_epochs, initial_epoch=done,
                    steps_per_epoch=steps, verbose=0, callbacks=callbacks)
    if state["pretrain_checkpoint"] is None:
        write_checkpoint(checkpoint, state, "pretrain", 0)


def finetune_phase(run, agent, checkpoint):
    """Policy-gradient fine-tuning for the job's epochs, from the last completed one;
    the chief logs rewards (CSV, TensorBoard) and sample tables."""
    config, job, state = run.config, run.job, run.state
    done = state["finetune_epochs_done"]
    if done >= job.finetune_epochs:
        return
    run.log(f"fine-tuning with {config.algorithm} on {len(job.train)} prompts "
            f"({job.finetune_epochs} epochs)")
    examples = tfpg_data.prompt_dataset(
        job.train.prompts, job.tokenizer, references=job.train.references,
        extras=job.train.extras or None, batch_size=config.batch_size,
        max_prompt_length=job.max_prompt_length, truncate=job.truncate).unbatch()
    # --steps-per-epoch: each epoch that many batches of passes over the prompts.
    prompts, steps = epoch_batches(examples, config.batch_size, config.seed, "finetune",
                                   done, job.finetune_epochs, steps=config.steps_per_epoch,
                                   drop_remainder=len(job.train) >= config.batch_size)
    callbacks = [EpochSeed(config.seed, "finetune"),
                 EpochCheckpoint(checkpoint, state, "finetune", time.time())]
    if run.chief:
        callbacks[1:1] = [WriteReporting(logger, run.logdir) for logger in (
            tfpg_callbacks.RewardLogger(
                csv_path=os.path.join(run.logdir, "rewards.csv"), logdir=run.logdir,
                log_every=_log_every(config, steps, job.finetune_epochs)),
            tfpg_callbacks.SampleLogger(
                run.logdir, job.tokenizer, prompts=job.heldout.prompts[:8],
                references=_first_references(job.heldout.references[:8])))]
    # A progress bar on a terminal; elsewhere one line an epoch, without ANSI codes.
    verbose = (1 if sys.stdout.isatty() else 2) if run.chief else 0
    agent.fit(shard_by_data(prompts), epochs=job.finetune_epochs, initial_epoch=done,
              steps_per_epoch=steps, verbose=verbose, callbacks=callbacks)


def evaluate_and_export(run, agent):
    """"After" metrics and KL to the reference (float32 copies outside the strategy),
    the SavedModel export and `metrics.json`; returns the metrics."""
    config, job, state = run.config, run.job, run.state
    reseed(config.seed, "evaluate", 1)
    exported = run.evaluation_policy(agent.policy)
    reference = agent.reference_model
    if isinstance(reference, PolicyNetwork):
        reference = float32_copy(reference)
    after, completions = evaluate_policy(exported, job, reference)
    metrics = {"task": job.name, "algorithm": config.algorithm,
               "backbone": config.backbone if config.model is None else None,
               "model": config.model, "lora_rank": config.lora_rank,
               "strategy": config.strategy, "replicas": run.strategy.num_replicas_in_sync,
               "mixed_precision": config.mixed_precision or "float32",
               "primary_metric": job.primary_metric, "before": state["before"],
               "after": after, "seconds": round(state["seconds"], 1), "output": run.output,
               "samples": [{"prompt": p, "completion": c}
                           for p, c in zip(job.heldout.prompts[:5], completions[:5])]}
    if config.export_format != "saved_model":       # transformers / peft
        export_hub_policy(exported, job.tokenizer, run.output, config.export_format,
                          config.model)
    else:
        with writing(run.output):   # the export removes its own temporary folder
            export_saved_model(exported, job.tokenizer, run.output,
                               max_new_tokens=job.max_new_tokens,
                               eos_id=job.tokenizer.eos_id,
                               max_prompt_length=job.max_prompt_length,
                               metadata={"task": job.name, "algorithm": config.algorithm},
                               # Conversational prompts: the export renders them alike.
                               chat_template=(job.tokenizer.chat_template
                                              if job.conversational else None))
    path = os.path.join(run.output, "metrics.json")
    with writing(path):
        write_json_atomically(path, metrics, indent=2)
    return metrics


def _algorithm_options(config, job, policy):
    options = {"max_new_tokens": job.max_new_tokens, "eos_id": job.tokenizer.eos_id,
               "seed": config.seed, "on_invalid_reward": config.on_invalid_reward,
               "reward_timeout": config.reward_timeout,
               "gradient_checkpointing": bool(config.gradient_checkpointing)}
    cls = TRAINERS[config.algorithm]
    if config.kl_coef is not None:
        options["kl_coef"] = config.kl_coef
    elif job.kl_coef is not None:
        options["kl_coef"] = job.kl_coef
    if job.episodes is not None:        # multi-turn: the task's env gives the rewards
        options.update(env=job.episodes.env(job.tokenizer),
                       max_turns=job.episodes.max_turns)
    if config.algorithm == "distill":      # the task reward measured, weighted by --reward-weight
        options["reward_weight"] = config.reward_weight or 0.0
    if config.algorithm in ("rloo", "grpo"):
        options["group_size"] = max(2, config.group_size)
    # The pre-trained policy as the reference, also when kl_coef is 0: the trainer
    # then measures and logs the KL without penalising it.
    options["reference_model"] = reference_of(policy)
    if cls.uses_value_model and isinstance(policy, KerasHubPolicy):
        options["value_model"] = ValueNetwork.from_policy(policy)     # on its trunk
    elif cls.uses_value_model:          # a critic of the policy's own shape
        options["value_model"] = ValueNetwork(**policy.backbone_config())
    return options


def _log_every(config, steps, epochs):
    """Train steps between TensorBoard points: --log-every, or about LOG_POINTS
    points over the whole phase of `steps` per epoch (a count, or a dataset of an
    epoch's batches)."""
    if config.log_every:
        return config.log_every
    if isinstance(steps, tf.data.Dataset):
        steps = int(steps.cardinality())
    if steps < 1:                                    # unknown: a point per epoch
        return None
    return max(1, math.ceil(steps * epochs / LOG_POINTS))


def _first_references(references):
    return [r if isinstance(r, str) else r[0] for r in references]
