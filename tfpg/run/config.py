"""The options of a run (`TrainConfig`, the flags of `tfpg train`) and their checks.

Imports no TensorFlow, so that the command line can parse, answer `--help` and refuse
every option that needs no model (`check_config`) in a fraction of a second.
"""

import dataclasses
import importlib.util
import os
import shutil
import tempfile
import warnings

from tfpg.guards import bounds
from tfpg.options import (BACKBONES, EXPORT_FORMATS, HUB_INSTALL_HINT, MIN_FREE_MB_ENV,
                          NAMED_REWARDS, ON_INVALID_REWARD, PRECISIONS, REWARD_TIMEOUT, STRATEGIES,
                          TASK_NAMES, TRAINER_NAMES, TRUNCATE_PROMPTS, UsageError)


@dataclasses.dataclass
class TrainConfig:
    """Every option of `tfpg train` (the CLI flags and the YAML `--config` keys)."""

    task: str = "arithmetic"
    train_file: str = None
    algorithm: str = "rloo"
    backbone: str = "lstm"
    reward: str = None              # None: the task's reward, or BLEU for a file
    reward_model: str = None        # a reward model directory (`tfpg train-reward`)
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
    num_cpu_devices: int = None     # "mirrored" on N logical CPUs; None: $TFPG_NUM_CPU_DEVICES
    mixed_precision: str = None     # None / "float32", "mixed_float16" or "mixed_bfloat16"
    deterministic: bool = False     # tf.config.experimental.enable_op_determinism()
    max_prompt_length: int = None   # tokens, BOS included; None: no limit (Transformer:
                                    # its max_length - max_new_tokens)
    truncate_prompts: str = "error"  # a longer prompt: "error", or cut on the "left"
                                     # (drop its first tokens) / "right" (with a warning)
    on_invalid_reward: str = "raise"  # NaN / inf rewards: "raise", "zero" or "skip"
    reward_timeout: float = REWARD_TIMEOUT  # seconds a Python reward may take per call;
                                            # None: no limit
    log_every: int = None           # train steps between TensorBoard points; None: about
                                    # LOG_POINTS points per curve
    model: str = None               # start from this model instead of a new PolicyNetwork:
                                    # a KerasHub preset name or directory, or a .keras file
    lora_rank: int = None           # with a KerasHub --model: train LoRA adapters only
    gradient_checkpointing: bool = False  # rematerialise transformer blocks in the update
    export_format: str = "saved_model"  # the output: a SavedModel, a transformers checkpoint
                                        # (LoRA merged) or PEFT adapters (EXPORT_FORMATS)
    chat_template: str = None       # a .jinja file: renders conversational prompts
                                    # (overrides the --model checkpoint's template)
    teacher: str = None             # --algorithm distill: the teacher, a KerasHub preset
                                    # name or directory or a .keras file (its tokenizer)
    reward_weight: float = None     # --algorithm distill: weight of the task reward in
                                    # the advantages; None: 0 (the reward only measured)

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
TASK_FINETUNE_EPOCHS = {"arithmetic": 4, "translate": 4, "keywords": 4, "preference": 4,
                        "calculator": 4, "guess": 4}

POLICY_MAX_LENGTH = 256


def flag(name):
    """The command-line flag of option `name`: "learning_rate" -> "--learning-rate"."""
    return "--" + name.replace("_", "-")


def check_values(config):
    """Raises UsageError (one line) for a numeric option out of its range or an empty
    path, without importing TensorFlow: the command line runs it first.

    learning_rate / pretrain_learning_rate: finite > 0; kl_coef: finite >= 0;
    reward_timeout: None or finite > 0; max_new_tokens: an integer >= 1 (and below
    2^31); output / logdir: not "" (which would silently mean the default);
    --teacher with --algorithm distill only (`check_teacher_options`)."""
    checks = [(bounds.check_positive, "learning_rate"),
              (bounds.check_positive, "pretrain_learning_rate"),
              (bounds.check_timeout, "reward_timeout")]
    if config.kl_coef is not None:
        checks.append((bounds.check_non_negative, "kl_coef"))
    if config.max_new_tokens is not None:
        checks.append((bounds.check_count, "max_new_tokens"))
    if config.reward_weight is not None:
        checks.append((bounds.check_non_negative, "reward_weight"))
    try:
        for check, name in checks:
            check(flag(name), getattr(config, name))
    except ValueError as error:
        raise UsageError(str(error)) from None
    check_export_format(config.export_format, config.model, config.lora_rank)
    for name in ("output", "logdir", "train_file", "model", "reward_model", "chat_template",
                 "teacher"):
        value = getattr(config, name, None)
        if isinstance(value, str) and not value.strip():
            raise UsageError(f"{flag(name)} is empty; give a path")
    if config.chat_template is not None:
        read_chat_template(config.chat_template)
    check_teacher_options(config)


def read_chat_template(path, special_tokens=None):
    """The `ChatTemplate` of `--chat-template path` (special tokens: the model's);
    a missing file or a template that does not compile is a UsageError naming the
    file. Needs jinja2 only, not TensorFlow: the CLI checks it first."""
    from tfpg.hf.chat_template import ChatTemplate
    try:
        return ChatTemplate.from_file(path, special_tokens)
    except ImportError as error:
        raise UsageError(f"--chat-template needs jinja2 ({HUB_INSTALL_HINT}): "
                         f"{error}") from None
    except (FileNotFoundError, ValueError) as error:
        raise UsageError(f"--chat-template {error}") from None


def check_config(config):
    """Raises UsageError for options that cannot work, before anything is written."""
    check_values(config)
    if config.train_file is None and config.task not in TASK_NAMES:
        raise UsageError(f"unknown task {config.task!r}; known: "
                         f"{', '.join(sorted(TASK_NAMES))}")
    if config.reward is not None and config.reward_model is not None:
        raise UsageError("give --reward or --reward-model, not both")
    if config.reward is not None:
        check_reward_spec(config.reward)
    if config.algorithm not in TRAINER_NAMES:
        raise UsageError(f"unknown algorithm {config.algorithm!r}; "
                         f"known: {', '.join(TRAINER_NAMES)}")
    if config.backbone not in BACKBONES:
        raise UsageError(f"unknown backbone {config.backbone!r}; known: {', '.join(BACKBONES)}")
    if config.strategy not in STRATEGIES:
        raise UsageError(f"unknown strategy {config.strategy!r}; known: {', '.join(STRATEGIES)}")
    if config.mixed_precision not in (None,) + PRECISIONS:
        raise UsageError(f"unknown --mixed-precision {config.mixed_precision!r}; "
                         f"known: {', '.join(PRECISIONS)}")
    if config.truncate_prompts not in TRUNCATE_PROMPTS:
        raise UsageError(f"unknown --truncate-prompts {config.truncate_prompts!r}; "
                         f"known: {', '.join(TRUNCATE_PROMPTS)}")
    if config.on_invalid_reward not in ON_INVALID_REWARD:
        raise UsageError(f"unknown --on-invalid-reward {config.on_invalid_reward!r}; "
                         f"known: {', '.join(ON_INVALID_REWARD)}")
    for name in ("batch_size", "embedding_dim", "hidden_dim", "num_layers", "group_size"):
        if getattr(config, name) < 1:
            raise UsageError(f"{flag(name)} must be >= 1")
    for name in ("num_cpu_devices", "max_prompt_length", "max_new_tokens", "steps_per_epoch",
                 "log_every", "lora_rank"):
        value = getattr(config, name)
        if value is not None and value < 1:
            raise UsageError(f"{flag(name)} must be >= 1")
    if config.num_cpu_devices not in (None, 1) and config.strategy != "mirrored":
        raise UsageError("--num-cpu-devices needs --strategy mirrored")
    for name in ("pretrain_epochs", "epochs"):
        value = getattr(config, name)
        if value is not None and value < 0:
            raise UsageError(f"{flag(name)} must be >= 0")
    check_file(config.train_file)
    if config.lora_rank is not None and config.model is None:
        raise UsageError("--lora-rank needs --model (a KerasHub preset)")
    if config.model is not None:
        check_model_source("--model", config.model)
        if config.model.endswith(".keras") and config.lora_rank is not None:
            raise UsageError("--lora-rank needs a KerasHub preset; a .keras policy has "
                             "no LoRA adapters")


def check_file(path, option=None):
    """UsageError "[OPTION ]PATH: file not found" unless `path` (None: nothing to check)
    is a file; the command line checks its input files before TensorFlow starts."""
    if path is not None and not os.path.isfile(path):
        raise UsageError(f"{option + ' ' if option else ''}{path}: file not found")


def prompt_token_limit(config, max_new_tokens):
    """The prompt length limit in tokens the run will apply (None: none), known
    before the file is read: --max-prompt-length, or a new Transformer's positions
    left by max_new_tokens."""
    if config.max_prompt_length is not None:
        return config.max_prompt_length
    if config.backbone == "transformer" and config.model is None:
        limit = POLICY_MAX_LENGTH - max_new_tokens
        return limit if limit >= 2 else None    # make_job says there is no room
    return None


def read_train_file(config):
    """The columns of --train-file, each prompt bounded in characters as it is read
    (`tfpg.guards.bounds.prompt_char_limit`), so that no line is ever tokenized whole: a
    longer prompt is refused naming file:line (--truncate-prompts error) or cut to
    its left / right part with a warning. A malformed file is a one-line
    `tfpg.data.DataError` naming file:line; a file without references when no
    --reward / --reward-model scores the completions is a UsageError. Needs no
    TensorFlow (`check_train_file`)."""
    from tfpg import data
    tokens = prompt_token_limit(config, config.max_new_tokens or 32)
    if tokens is None:
        reason = ("the most a prompt may have without --max-prompt-length; shorten it, "
                  "or give --max-prompt-length N with --truncate-prompts left|right")
    else:
        reason = (f"{bounds.MAX_CHARS_PER_TOKEN} characters per token of the "
                  f"{tokens}-token prompt limit; shorten it or pass --truncate-prompts "
                  "left|right")
    columns = data.read_file(config.train_file, bounds.prompt_char_limit(tokens),
                             config.truncate_prompts, reason)
    if "reference" not in columns and config.reward is None and config.reward_model is None:
        raise UsageError(f"{config.train_file}: no references to score against; "
                         "give --reward module:function or a .tsv / .jsonl with references")
    return columns


def check_train_file(config):
    """Reads --train-file (if any) as the run will (`read_train_file`) and drops it:
    the command line refuses a malformed file before TensorFlow starts. Its warnings
    (prompts cut) come when the run reads the file."""
    if config.train_file is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            read_train_file(config)

# What a KerasHub preset or a transformers checkpoint directory always holds.
MODEL_CONFIG_FILE = "config.json"


def check_model_source(option, source):
    """Refuses, before TensorFlow starts, a `--model` / `--teacher` that cannot be one,
    naming what was tried (UsageError, one line): a missing `.keras` file or path, a
    file that is not a `.keras` policy, a directory that is neither a KerasHub preset
    nor a transformers checkpoint (both hold `config.json`). A bare name that is no
    file here (`gpt2_base_en`) and a handle (`hf://...`, `kaggle://...`) are preset
    names: KerasHub resolves them when the model loads (`tfpg.run.model_source`)."""
    if "://" in source:
        return
    if os.path.isdir(source):
        if not os.path.isfile(os.path.join(source, MODEL_CONFIG_FILE)):
            raise UsageError(f"{option} {source}: a directory, but not a KerasHub preset or "
                             f"a transformers checkpoint (no {MODEL_CONFIG_FILE} in it)")
    elif os.path.exists(source):
        if not source.endswith(".keras"):
            raise UsageError(f"{option} {source}: a file, but not a .keras policy (a KerasHub "
                             "preset or a transformers checkpoint is a directory)")
    elif source.endswith(".keras"):
        check_file(source, option)
    elif os.sep in source or "/" in source or source.startswith((".", "~")):
        raise UsageError(f"{option} {source}: no such file or directory")


def check_reward_spec(spec):
    """`--reward`: one of `NAMED_REWARDS`, or `module:function` whose module exists
    (found, not imported: importing it may start TensorFlow). UsageError otherwise."""
    if spec in NAMED_REWARDS:
        return
    if ":" not in spec:
        raise UsageError(f"unknown reward {spec!r}; use one of {', '.join(NAMED_REWARDS)} "
                         "or module:function")
    module_name = spec.partition(":")[0]
    try:
        found = importlib.util.find_spec(module_name) if module_name else None
    except (ImportError, ValueError):        # a parent package that is missing
        found = None
    if found is None:
        raise UsageError(f"--reward {spec}: cannot import {module_name!r} (no module named "
                         f"{module_name!r})")


def check_export_format(export_format, model, lora_rank):
    """Refuses an export format the run's policy cannot have: transformers and PEFT
    need a KerasHub `--model` (not a .keras PolicyNetwork), PEFT also `--lora-rank`."""
    if export_format not in EXPORT_FORMATS:
        raise UsageError(f"unknown export format {export_format!r}; known: "
                         f"{', '.join(EXPORT_FORMATS)}")
    if export_format == "saved_model":
        return
    if model is None or model.endswith(".keras"):
        raise UsageError(f"export format {export_format} needs a KerasHub --model (a "
                         "preset or a Hugging Face directory); tfpg's own PolicyNetwork "
                         "exports as saved_model only")
    if export_format == "peft" and lora_rank is None:
        raise UsageError("export format peft writes LoRA adapters: it needs --lora-rank")


def check_teacher_options(config):
    """`--teacher` goes with `--algorithm distill` and only with it; a `.keras` teacher
    must exist (UsageError, one line)."""
    if config.algorithm == "distill" and config.teacher is None:
        raise UsageError("--algorithm distill needs --teacher (a KerasHub preset name or "
                         "directory, or a .keras policy with tokenizer.json beside it)")
    if config.algorithm != "distill":
        for name in ("teacher", "reward_weight"):
            if getattr(config, name) is not None:
                raise UsageError(f"{flag(name)} is for --algorithm distill, not "
                                 f"{config.algorithm}")
    if config.teacher is not None:
        check_model_source("--teacher", config.teacher)


def check_writable(path, min_free_mb=None):
    """Fails early (before training, creating nothing) when `path` cannot be written:
    its nearest existing ancestor must be a writable directory with `min_free_mb`
    free (default 50 MiB, or $TFPG_MIN_FREE_MB). Writability is tested by creating
    and deleting a file there, which also catches read-only file systems."""
    if min_free_mb is None:
        min_free_mb = float(os.environ.get(MIN_FREE_MB_ENV, 50))
    ancestor = os.path.abspath(path)
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise UsageError(f"{ancestor} is a file, so {path} cannot be created")
    try:
        fd, probe = tempfile.mkstemp(prefix=".tfpg-write-test-", dir=ancestor)
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        raise UsageError(f"{ancestor} is not writable ({error.strerror}), so {path} "
                         "cannot be created") from None
    free = shutil.disk_usage(ancestor).free
    if free < min_free_mb * 2**20:
        raise UsageError(f"only {free // 2**20} MiB free in {ancestor}; need at least "
                         f"{min_free_mb:g} MiB")

# A run's checkpoints: OUTPUT.checkpoint.
CHECKPOINT_SUFFIX = ".checkpoint"


def run_paths(config):
    """(output, logdir, checkpoint directory) of a run, each refused here (UsageError,
    one line, before TensorFlow starts) when the run could not write it: see
    `check_output` and `check_writable`."""
    output = os.path.normpath(config.output or os.path.join("saved_models", config.run_name))
    logdir = config.logdir or os.path.join("logs", config.run_name)
    checkpoint_dir = output + CHECKPOINT_SUFFIX
    check_output(output, checkpoint_dir)
    check_writable(output)
    check_writable(logdir)
    return output, logdir, checkpoint_dir


def check_output(output, checkpoint_dir):
    """Refuses, before training, an output that the final export would refuse (a
    file, a non-empty directory that is not a tfpg export) and a checkpoint
    directory holding something other than a tfpg run."""
    from tfpg.guards.locking import TMP_PREFIX, check_replaceable
    try:
        check_replaceable(output)           # what the export will check at the end
    except ValueError as error:
        raise UsageError(str(error)) from None
    if os.path.exists(checkpoint_dir):
        if not os.path.isdir(checkpoint_dir):
            raise UsageError(f"{checkpoint_dir} exists and is not a directory")
        # (".tokenizer-": the temporary files of tfpg <= 0.1's tokenizer writes)
        ours = ("state.json", "tokenizer.json", "pretrain", "finetune", ".tokenizer-",
                TMP_PREFIX)
        foreign = [name for name in os.listdir(checkpoint_dir)
                   if not name.startswith(ours)]
        if foreign:
            raise UsageError(f"{checkpoint_dir} holds files that are not a tfpg "
                             f"checkpoint ({foreign[0]}); choose another --output")
