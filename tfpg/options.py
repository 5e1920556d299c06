"""The choices of every option (algorithms, tasks, backbones, samplers, ...) and
`UsageError`, defined once, without TensorFlow.

The registries (`tfpg.algorithms.TRAINERS`, `tfpg.tasks.TASKS`, the backbones of
`tfpg.models`, the samplers of `tfpg.generation`, `tfpg.rewards`) take their names
from here, and the command line (`tfpg.run.cli`) lists and checks them without
importing TensorFlow.
"""

ALGORITHM_NAMES = ("reinforce", "scst", "rloo", "grpo", "a2c", "ppo")   # reward trainers
TRAINER_NAMES = ALGORITHM_NAMES + ("distill",)      # and on-policy distillation
TASK_NAMES = ("arithmetic", "translate", "keywords", "preference", "calculator", "guess")
BACKBONES = ("lstm", "gru", "transformer")
SAMPLERS = ("greedy", "sample", "top_k", "top_p")
# What a NaN / inf reward does: fail the step, count it as 0, or drop the sample.
ON_INVALID_REWARD = ("raise", "zero", "skip")
STRATEGIES = ("default", "mirrored", "multi_worker")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
# What `tfpg train` / `tfpg export` write: a SavedModel, a Hugging Face transformers
# checkpoint, or PEFT LoRA adapters (`tfpg.export_transformers`).
EXPORT_FORMATS = ("saved_model", "transformers", "peft")
TRUNCATE_PROMPTS = ("error", "left", "right")
NAMED_REWARDS = ("bleu", "exact_match", "length")
# Options that change how a run executes but not what it computes: a run may be
# resumed with other values (e.g. on more devices).
RUNTIME_OPTIONS = ("strategy", "num_cpu_devices", "deterministic", "logdir", "log_every",
                   "gradient_checkpointing", "reward_timeout", "export_format")
# Seconds a Python reward may take per call (`--reward-timeout`), by default.
REWARD_TIMEOUT = 600.0
# TensorBoard points per curve when --log-every is not given.
LOG_POINTS = 100
NUM_CPU_DEVICES_ENV = "TFPG_NUM_CPU_DEVICES"
MIN_FREE_MB_ENV = "TFPG_MIN_FREE_MB"


# What installs the optional KerasHub / Hugging Face support (keras-hub, jinja2): the
# one hint every error and the README give.
HUB_INSTALL_HINT = 'pip install "tfpg[hub]"'


class UsageError(ValueError):
    """Bad options or data: the CLI reports it in one line and exits with status 2."""
