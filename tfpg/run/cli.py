"""The `tfpg` command: train, train-reward, generate, evaluate, export.

    tfpg train                      # the embedded default, end to end, in minutes
    tfpg train --task translate --algorithm ppo --backbone gru
    tfpg generate saved_models/arithmetic-rloo "12+34=" "57+68="
    tfpg evaluate saved_models/arithmetic-rloo --task arithmetic
    tfpg export saved_models/arithmetic-rloo.checkpoint --output saved_models/copy
    tfpg train-reward --task preference --output saved_models/preference-rm
    tfpg train --task preference --reward-model saved_models/preference-rm

    tfpg train --strategy mirrored --num-cpu-devices 2      # 2 replicas on one CPU
    TF_CONFIG='{"cluster": ..., "task": ...}' tfpg train --strategy multi_worker

Bad input ends with a one-line message and exit status 2; nothing half-written is
left behind (`TFPG_DEBUG=1` shows the traceback instead). TensorFlow's own log lines
are kept off the console unless `--verbose` (or `TFPG_DEBUG`) asks for them.

`generate` and `evaluate` verify a model directory before TensorFlow runs any of it
(its manifest, and no op outside tfpg's own exports: `tfpg.guards.trust`); `train`,
`train-reward` and `export` hold `OUTPUT.lock`, so a second writer of one output
exits 2 naming the first one's PID (`tfpg.guards.locking`).
"""

import argparse
import contextlib
import json
import os
import sys
import warnings

# Only modules that do not import TensorFlow: `--help` and bad arguments answer at
# once; each command imports what it runs.
from tfpg.guards import bounds
from tfpg.options import (BACKBONES, EXPORT_FORMATS, NAMED_REWARDS, ON_INVALID_REWARD, PRECISIONS,
                          REWARD_TIMEOUT, SAMPLERS, STRATEGIES, TASK_NAMES, TRAINER_NAMES,
                          TRUNCATE_PROMPTS, UsageError)
from tfpg.run.config import TrainConfig, check_config, check_file, check_train_file, flag, run_paths
from tfpg.run.native_logs import filter_native_logs, quiet_environment


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        # No prefixes: `--epoch 2` is an error, not `--epochs 2`.
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message):
        raise UsageError(message)


def _common_options():
    """Options every command takes, before or after its name (`tfpg --verbose train`
    and `tfpg train --verbose`); SUPPRESS keeps a command's default from hiding the
    top-level value."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="show TensorFlow's own log lines (also $TFPG_DEBUG=1)")
    return common


def _train_parser(subparsers, common):
    train = subparsers.add_parser("train", help="pre-train, fine-tune, evaluate, export",
                                  parents=[common])
    source = train.add_mutually_exclusive_group()
    source.add_argument("--task", help=f"bundled task: {' | '.join(TASK_NAMES)} "
                                       "(default arithmetic)")
    source.add_argument("--train-file", help="your data: .tsv (prompt TAB reference), "
                                             ".jsonl (a \"prompt\" string or list of "
                                             "{\"role\", \"content\"} messages) or .txt")
    train.add_argument("--chat-template", metavar="F.jinja",
                       help="render conversational prompts with this chat template "
                            "(default: the --model checkpoint's own)")
    train.add_argument("--algorithm", help=f"{' | '.join(TRAINER_NAMES)} (default rloo)")
    train.add_argument("--backbone", help=f"{' | '.join(BACKBONES)} (default lstm)")
    train.add_argument("--reward", help=f"{' | '.join(NAMED_REWARDS)} | module:function "
                                        "(default: the task's reward)")
    train.add_argument("--reward-model", help="score with a reward model directory written "
                                              "by `tfpg train-reward`")
    train.add_argument("--pretrain-epochs", type=int)
    train.add_argument("--epochs", type=int, help="fine-tuning epochs")
    train.add_argument("--batch-size", type=int)
    train.add_argument("--seed", type=int)
    train.add_argument("--learning-rate", type=float)
    train.add_argument("--kl-coef", type=float)
    train.add_argument("--config", help="YAML file of options (flags override it)")
    train.add_argument("--output", help="SavedModel directory (default "
                                        "saved_models/<task>-<algorithm>)")
    train.add_argument("--logdir", help="TensorBoard directory (default logs/<task>-<algorithm>)")
    train.add_argument("--strategy", choices=STRATEGIES,
                       help="default: one device; mirrored: all local GPUs (or "
                            "--num-cpu-devices logical CPUs); multi_worker: "
                            "MultiWorkerMirroredStrategy from TF_CONFIG")
    train.add_argument("--num-cpu-devices", type=int,
                       help="with --strategy mirrored and no GPU: split the CPU into N "
                            "devices (also $TFPG_NUM_CPU_DEVICES)")
    train.add_argument("--mixed-precision", choices=PRECISIONS,
                       help="compute dtype policy (float32 weights, float32 log-softmax; "
                            "loss scaling for mixed_float16)")
    train.add_argument("--deterministic", action="store_true", default=None,
                       help="TensorFlow op determinism: a rerun with the same seed gives "
                            "the same metrics.json")
    train.add_argument("--steps-per-epoch", type=int, help="fine-tuning steps per epoch")
    train.add_argument("--max-new-tokens", type=int)
    train.add_argument("--max-prompt-length", type=int,
                       help="longest prompt in tokens, BOS included")
    train.add_argument("--truncate-prompts", choices=TRUNCATE_PROMPTS,
                       help="a longer prompt: error (default), or cut on the left (drop "
                            "its first tokens) / right (drop its last), with a warning")
    train.add_argument("--model", help="start from this model instead of a new "
                                       "PolicyNetwork: a KerasHub preset name or directory, "
                                       "a Hugging Face transformers checkpoint directory, "
                                       "or a .keras policy (tokenizer.json beside it); "
                                       "pre-training only with --pretrain-epochs")
    train.add_argument("--lora-rank", type=int,
                       help="with a KerasHub --model: train rank-N LoRA adapters only")
    train.add_argument("--teacher", metavar="PRESET_OR_DIR_OR_KERAS_FILE",
                       help="with --algorithm distill: the frozen teacher whose per-token "
                            "log-probs the student is distilled towards (the student's "
                            "tokenizer; a new student takes the teacher's)")
    train.add_argument("--reward-weight", type=float,
                       help="with --algorithm distill: weight of the task reward beside "
                            "the teacher's (default 0: the reward is only measured)")
    train.add_argument("--export-format", choices=EXPORT_FORMATS,
                       help="the --output: a SavedModel (default), a Hugging Face "
                            "transformers checkpoint (LoRA merged) or PEFT LoRA adapters "
                            "(with --lora-rank); transformers / peft need a KerasHub --model")
    train.add_argument("--gradient-checkpointing", action="store_true", default=None,
                       help="recompute each transformer block's activations in the "
                            "backward pass: long completions in less memory")
    train.add_argument("--log-every", type=int,
                       help="train steps between TensorBoard points (default: about 100 "
                            "points per curve)")
    train.add_argument("--on-invalid-reward", choices=ON_INVALID_REWARD,
                       help="NaN / inf rewards: raise (default), zero, or skip the sample")
    train.add_argument("--reward-timeout", type=_seconds_or_none, metavar="SECONDS",
                       help=f"seconds a Python reward may take per call (default "
                            f"{REWARD_TIMEOUT:g}; 'none': no limit); a slower call fails "
                            "the step, or under --on-invalid-reward zero|skip its batch "
                            "counts as invalid")


# `--reward-timeout none`: argparse drops None values, so "none" stands for it until
# `_train` builds the config.
_NO_LIMIT = "none"


def _seconds_or_none(text):
    if text.strip().lower() == _NO_LIMIT:
        return _NO_LIMIT
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds or 'none', got "
                                         f"{text!r}") from None


def _train_reward_parser(subparsers, common):
    reward = subparsers.add_parser("train-reward", parents=[common],
                                   help="fit a Bradley-Terry reward model on preference pairs")
    source = reward.add_mutually_exclusive_group()
    source.add_argument("--task", help="bundled task with preference pairs (default preference)")
    source.add_argument("--pairs", help='JSONL lines {"prompt", "chosen", "rejected"}')
    reward.add_argument("--output", required=True, help="reward model directory")
    reward.add_argument("--tokenizer", help="tokenizer JSON, e.g. the policy's (default: the "
                                            "task's, or one built from the pairs)")
    reward.add_argument("--backbone", choices=BACKBONES)
    for name, kind in (("epochs", int), ("batch-size", int), ("learning-rate", float),
                       ("seed", int), ("embedding-dim", int), ("hidden-dim", int),
                       ("margin", float), ("validation-split", float)):
        reward.add_argument(f"--{name}", type=kind)


def _build_parser():
    parser = _Parser(prog="tfpg", description="Policy-gradient fine-tuning of Keras "
                                              "language models.")
    common = _common_options()
    parser.add_argument("--verbose", action="store_true",
                        help="show TensorFlow's own log lines (also $TFPG_DEBUG=1)")
    subparsers = parser.add_subparsers(dest="command", parser_class=_Parser)
    _train_parser(subparsers, common)
    _train_reward_parser(subparsers, common)

    generate = subparsers.add_parser("generate", help="complete prompts with a SavedModel",
                                     parents=[common])
    generate.add_argument("model_dir")
    generate.add_argument("prompts", nargs="+", metavar="PROMPT")
    generate.add_argument("--sampler", choices=SAMPLERS,
                          help="default: the export's own (see its tfpg_export.json)")
    generate.add_argument("--max-new-tokens", type=int)
    generate.add_argument("--temperature", type=float)
    generate.add_argument("--top-k", type=int)
    generate.add_argument("--top-p", type=float)
    generate.add_argument("--seed", type=int)
    generate.add_argument("--format", choices=("text", "jsonl"), default="text",
                          help="text: one line per prompt, newlines as \\n and an empty "
                               "completion as (empty); jsonl: one {\"prompt\", "
                               "\"completion\"} object per line")

    evaluate = subparsers.add_parser("evaluate", help="held-out metrics of a SavedModel",
                                     parents=[common])
    evaluate.add_argument("model_dir")
    source = evaluate.add_mutually_exclusive_group()
    source.add_argument("--task", choices=TASK_NAMES)
    source.add_argument("--eval-file")

    export = subparsers.add_parser("export", help="SavedModel, transformers checkpoint or "
                                                   "PEFT adapters from a run's checkpoint "
                                                   "or a .keras file", parents=[common])
    export.add_argument("source", metavar="CHECKPOINT_OR_RUN",
                        help="a run's checkpoint directory (OUTPUT.checkpoint), the run's "
                             "OUTPUT, or a .keras policy")
    export.add_argument("--output", required=True)
    export.add_argument("--format", choices=EXPORT_FORMATS, default="saved_model",
                        help="saved_model (default); transformers: a Hugging Face "
                             "checkpoint, LoRA merged; peft: the LoRA adapters alone "
                             "(transformers / peft: runs from a KerasHub --model)")
    export.add_argument("--tokenizer", help="tokenizer JSON (default: beside the source)")
    return parser


def _load_yaml(path):
    import yaml
    try:
        with open(path) as f:
            values = yaml.safe_load(f)
    except FileNotFoundError:
        raise UsageError(f"{path}: file not found") from None
    except yaml.YAMLError as error:
        raise UsageError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise UsageError(f"{path}: expected a mapping of option: value")
    return {str(key).replace("-", "_"): value for key, value in values.items()}


def _train(args):
    if args.config is not None and not args.config.strip():
        raise UsageError("--config is empty; give a path")
    values = _load_yaml(args.config) if args.config else {}
    flags = {key: value for key, value in vars(args).items()
             if value is not None and key not in ("command", "config", "verbose")}
    values.update(flags)
    if "train_file" in flags:
        values.pop("task", None)
    if isinstance(values.get("reward_timeout"), str) \
            and values["reward_timeout"].strip().lower() == _NO_LIMIT:
        values["reward_timeout"] = None
    config = TrainConfig.from_dict(values)
    check_config(config)                # every check that needs no model, before TensorFlow
    check_train_file(config)            # a malformed --train-file, too
    run_paths(config)                   # an output or logdir the run could not write
    from tfpg.run.devices import configure_cpu_devices
    from tfpg.run.evaluation import format_table
    from tfpg.run.pipeline import run_training
    if config.strategy == "mirrored":
        # Logical devices exist only if made before TensorFlow runs its first op.
        configure_cpu_devices(config.num_cpu_devices)
    metrics = run_training(config)
    if metrics.get("chief", True):
        print(format_table(metrics))
        print(f"exported to {metrics['output']} (metrics in {metrics['output']}/metrics.json)")


def _check_flags(args, checks):
    """Runs `tfpg.guards.bounds` checks on the given flags (name -> check), before
    TensorFlow starts; a value out of range is a UsageError naming the flag."""
    for name, check in checks.items():
        value = getattr(args, name, None)
        if value is not None:
            try:
                check(flag(name), value)
            except ValueError as error:
                raise UsageError(str(error)) from None


def _check_path_flags(args, *names):
    for name in names:
        value = getattr(args, name, None)
        if value is not None and not value.strip():
            raise UsageError(f"{flag(name)} is empty; give a path")


def _check_inputs(args, files=(), model_dir=False):
    """Input files (and the SavedModel directory `model_dir`) that do not exist are
    refused before TensorFlow starts, in the words of the loaders that read them."""
    for name in files:
        check_file(getattr(args, name, None))
    if model_dir:
        from tfpg.guards.trust import require_directory
        try:
            require_directory(args.model_dir)
        except FileNotFoundError as error:
            raise UsageError(str(error)) from None


def _train_reward(args):
    _check_path_flags(args, "output", "tokenizer", "pairs")
    _check_inputs(args, files=("tokenizer", "pairs"))
    _check_flags(args, {"learning_rate": bounds.check_positive})
    from tfpg.run.reward_pipeline import format_summary, run_reward_training
    options = {key: value for key, value in vars(args).items()
               if value is not None and key not in ("command", "verbose")}
    print(format_summary(run_reward_training(**options)))


def _generate(args):
    _check_flags(args, {"max_new_tokens": bounds.check_count,
                        "temperature": bounds.check_positive,
                        "top_k": bounds.check_count, "top_p": bounds.check_top_p,
                        "seed": lambda name, value: bounds.check_count(name, value, 0,
                                                                       2**63 - 1)})
    _check_inputs(args, model_dir=True)
    from tfpg.export import load
    options = {name: getattr(args, name) for name in
               ("sampler", "max_new_tokens", "temperature", "top_k", "top_p", "seed")
               if getattr(args, name) is not None}
    completions = load(args.model_dir).generate(args.prompts, **options)
    for prompt, completion in zip(args.prompts, completions):
        print(_completion_line(prompt, completion, args.format))


def _completion_line(prompt, completion, form):
    """One output line per prompt, so that lines match prompts whatever the text."""
    if form == "jsonl":
        return json.dumps({"prompt": prompt, "completion": completion}, ensure_ascii=False)
    if not completion:
        return "(empty)"
    return completion.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")


def _evaluate(args):
    _check_inputs(args, files=("eval_file",), model_dir=True)
    from tfpg import data
    from tfpg.export import load
    from tfpg.tasks import get_task
    model = load(args.model_dir)
    if args.eval_file:
        columns = data.read_file(args.eval_file)
        prompts, references = columns["prompt"], columns.get("reference")
        if references is None:
            raise UsageError(f"{args.eval_file}: needs references (.tsv or .jsonl)")
        from tfpg.run.evaluation import reference_metrics
        metrics = reference_metrics(model.generate(prompts), references)
    else:
        name = args.task or model.metadata.get("task")
        if name not in TASK_NAMES:
            raise UsageError("give --task or --eval-file (the model names no bundled task)")
        task = get_task(name)
        _check_task_vocabulary(model, name, task.heldout.prompts)
        if hasattr(task, "env"):      # multi-turn: episodes with the task's env
            episodes = model.run_episodes(
                task.env(model.tokenizer), task.heldout.prompts, task.max_turns,
                extras=task.heldout.extras, max_new_tokens=task.max_new_tokens)
            completions = [(" " if task.level == "word" else "").join(
                text for _, text in episode["turns"]) for episode in episodes]
        else:
            completions = model.generate(task.heldout.prompts)
        metrics = task.evaluate(task.heldout.prompts, completions, "heldout")
    print(json.dumps(metrics, indent=2))


# Above this share of unknown prompt tokens a model was not trained on the task.
MAX_UNKNOWN_FRACTION = 0.5


def _check_task_vocabulary(model, task_name, prompts):
    """Refuses to evaluate a model on a task whose prompts it mostly cannot read
    (every unknown word becomes <unk>, and the metrics are zeros that look real)."""
    tokenizer = model.tokenizer
    unk_id = getattr(tokenizer, "unk_id", None)
    if unk_id is None or not hasattr(tokenizer, "unknown_tokens"):
        return
    ids = [i for row in tokenizer.encode(list(prompts), add_bos=False) for i in row]
    unknown = sum(i == unk_id for i in ids) / max(1, len(ids))
    if unknown > MAX_UNKNOWN_FRACTION:
        examples = ", ".join(repr(t) for t in tokenizer.unknown_tokens(list(prompts))[:5])
        trained_on = model.metadata.get("task")
        raise UsageError(
            f"{model.path} does not know {unknown:.0%} of the {task_name} task's prompt "
            f"tokens (e.g. {examples}); it was trained on "
            f"{trained_on or 'another vocabulary'}, not on {task_name}")


def _export(args):
    _check_path_flags(args, "output", "tokenizer")
    _check_inputs(args, files=("tokenizer",))
    if not os.path.exists(args.source):
        raise UsageError(f"{args.source}: no such file or directory (expected a run's "
                         "checkpoint directory or a .keras file)")
    from tfpg.run.checkpoints import export_from_source
    path = export_from_source(args.source, args.output, args.tokenizer, args.format)
    print(f"exported to {path}")


COMMANDS = {"train": _train, "train-reward": _train_reward, "generate": _generate,
            "evaluate": _evaluate, "export": _export}


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """Python warnings as one `tfpg: warning:` line each, like the CLI's errors."""
    text = " ".join(str(message).split())
    print(f"tfpg: warning: {text}", file=sys.stderr, flush=True)


def main(argv=None):
    try:
        args = _build_parser().parse_args(argv)
        verbose = args.verbose or bool(os.environ.get("TFPG_DEBUG"))
        if not verbose:
            quiet_environment()
            filter_native_logs()
        if args.command is None:
            raise UsageError("missing command: train, train-reward, generate, evaluate or export "
                             "(tfpg --help)")
        with warnings.catch_warnings() if not verbose else contextlib.nullcontext():
            if not verbose:
                warnings.showwarning = _show_warning
            COMMANDS[args.command](args)
        return 0
    except KeyboardInterrupt:
        print("tfpg: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - the CLI's promise: one line, no traceback
        if os.environ.get("TFPG_DEBUG"):
            raise
        message = _one_line(error)
        status = 2 if isinstance(error, (UsageError, ValueError, FileNotFoundError,
                                         TypeError)) else 1
        if message.startswith("reward ") and _is_tf_error(error):
            status = 2          # a NaN or failing reward: bad input, like a bad file
        print(f"tfpg: error: {message}", file=sys.stderr)
        return status


def _is_tf_error(error):
    tf = sys.modules.get("tensorflow")
    return tf is not None and isinstance(error, tf.errors.OpError)


def _one_line(error):
    """The line of an exception that names the problem.

    A TensorFlow runtime error (a NaN reward, a failing reward function inside
    `fit`) starts with "Graph execution error:" and a node trace; its assertion
    message or the error's own message is the useful line.
    """
    text = str(getattr(error, "message", None) or error).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    for line in lines:
        if "assertion failed:" in line:
            return line.split("assertion failed:", 1)[1].strip(" []")
    if lines[0].startswith("in user code:"):
        # AutoGraph's trace of user code: the exception itself is the last line.
        last = lines[-1]
        name = type(error).__name__ + ": "
        return last[len(name):] if last.startswith(name) else last
    generic = ("Graph execution error", "Detected at node", "File ", "Traceback")
    useful = [line for line in lines if not line.startswith(generic)
              and not line.startswith(("[[", "{{"))]
    if useful and useful[0] != lines[0] and lines[0].startswith(generic):
        return useful[0]
    return lines[0]


if __name__ == "__main__":
    sys.exit(main())
