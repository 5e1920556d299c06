"""The `tfpg` command end to end, in subprocesses, as a user runs it."""

import json
import os
import re
import subprocess
import sys

import pytest

import tfpg
from tfpg.run import cli, native_logs

sys.path.insert(0, os.path.dirname(__file__))
from cli_batch import assert_usage_error, run_in_fresh_directories  # noqa: E402

TFPG = [sys.executable, "-m", "tfpg.run.cli"]
SMALL = ["train", "--pretrain-epochs", "4", "--epochs", "2", "--steps-per-epoch", "2",
         "--batch-size", "128"]
# TensorFlow's native log lines, as they appear on stderr without the filter.
NATIVE_LOG = re.compile(r"^[IWE]\d{4} |^WARNING: All log messages before absl|"
                        r"^To enable the following instructions")
# The console as a user has it: none of TensorFlow's log settings.
ENV = {key: value for key, value in os.environ.items()
       if key not in ("TF_CPP_MIN_LOG_LEVEL", "TFPG_DEBUG")}


def run(args, cwd, timeout=600):
    return subprocess.run(TFPG + args, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=ENV)


def native_log_lines(text):
    return [line for line in text.splitlines() if NATIVE_LOG.match(line)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One small `tfpg train` run shared by the tests that need an export."""
    workdir = tmp_path_factory.mktemp("run")
    result = run(SMALL + ["--output", "out/model", "--logdir", "out/logs"], workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir, result


# Bad input that needs no model, refused before TensorFlow is imported: the words
# each one-line error names.
NO_TENSORFLOW_ERRORS = [
    (["train", "--epochs", "many"], ["--epochs", "many"]),
    (["train", "--epoch", "2"], ["--epoch"]),                  # no prefix matching
    (["frobnicate"], ["frobnicate"]),
    ([], ["missing command"]),
    (["train", "--epochs", "-1"], ["--epochs must be >= 0"]),
    (["train", "--algorithm", "dpo"], ["unknown algorithm 'dpo'", "grpo", "distill"]),
    (["train", "--task", "chess"], ["unknown task 'chess'", "arithmetic"]),
    (["train", "--backbone", "rnn"], ["unknown backbone 'rnn'", "transformer"]),
    (["train", "--train-file", "missing.tsv"], ["missing.tsv: file not found"]),
    # A malformed --train-file (MALFORMED_FILES) is read before TensorFlow starts.
    (["train", "--train-file", "bad.jsonl"],
     ["bad.jsonl:2: invalid JSON (Expecting property name enclosed in double quotes"]),
    (["train", "--train-file", "no_prompt.jsonl"],
     ["no_prompt.jsonl:1: missing required key 'prompt'"]),
    (["train", "--train-file", "no_tab.tsv"],
     ["no_tab.tsv:2: expected 'prompt<TAB>reference', found no tab"]),
    (["train", "--train-file", "empty.tsv"],
     ["empty.tsv: no examples (the file is empty or has only blank lines)"]),
    (["train", "--train-file", "latin1.tsv"],
     ["latin1.tsv:2: invalid UTF-8 (byte 0xe9 at column 4)"]),
    (["train", "--train-file", "prompts.txt"],              # no references, no --reward
     ["prompts.txt: no references to score against"]),
    (["train", "--train-file", "long.tsv", "--max-prompt-length", "1"],
     ["long.tsv:1: prompt has 65 characters, more than 64"]),
    (["train", "--model", "nonexistent_dir/"],
     ["--model nonexistent_dir/: no such file or directory"]),
    (["train", "--model", "not_a_preset"],          # a directory without config.json
     ["--model not_a_preset: a directory, but not a KerasHub preset", "no config.json"]),
    (["train", "--model", "notes.txt"], ["--model notes.txt: a file, but not a .keras"]),
    (["train", "--model", "missing.keras"], ["--model missing.keras: file not found"]),
    (["train", "--algorithm", "distill", "--teacher", "nowhere/t"],
     ["--teacher nowhere/t: no such file or directory"]),
    (["train", "--output", "notes.txt"], ["notes.txt: exists and is not a directory"]),
    (["train", "--reward", "sparkle"], ["unknown reward 'sparkle'", "exact_match"]),
    (["train", "--reward", "no_such_module:fn"],     # found, not imported: no TF
     ["--reward no_such_module:fn: cannot import 'no_such_module'"]),
    (["generate", "nowhere", "hi"], ["nowhere: no such directory (expected a tfpg SavedModel)"]),
    (["evaluate", "nowhere"], ["nowhere: no such directory"]),
    (["evaluate", "not_a_preset", "--eval-file", "missing.tsv"], ["missing.tsv: file not found"]),
    (["export", "nowhere", "--output", "out"], ["nowhere: no such file or directory"]),
    (["train-reward", "--pairs", "missing.jsonl", "--output", "rm"],
     ["missing.jsonl: file not found"]),
]


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The files of the malformed --train-file cases above (name: bytes).
MALFORMED_FILES = {
    "bad.jsonl": b'{"prompt": "1 + 1 =", "reference": "2"}\n{prompt: "2 + 2 ="}\n',
    "no_prompt.jsonl": b'{"question": "1 + 1 =", "reference": "2"}\n',
    "no_tab.tsv": b"1 + 1 =\t2\n2 + 2 = 4\n",
    "empty.tsv": b"",
    "latin1.tsv": b"1 + 1 =\t2\ncaf\xe9\tcoffee\n",
    "prompts.txt": b"1 + 1 =\n2 + 2 =\n",
    "long.tsv": b"x" * 65 + b"\ty\n",
}


def test_help_and_bad_arguments_answer_without_tensorflow(tmp_path):
    (tmp_path / "not_a_preset").mkdir()
    (tmp_path / "notes.txt").write_text("not a model\n")
    for name, content in MALFORMED_FILES.items():
        (tmp_path / name).write_bytes(content)
    # Run from a clone's parent directory: the clone (named tfpg, no __init__.py) is in
    # the current directory. Whether tfpg is installed (pip install .) or editable (the
    # .pth line of pyproject.toml's package-dir puts the clone's root on sys.path), the
    # regular package wins over the empty namespace package of the current directory.
    (tmp_path / "tfpg").mkdir()
    script = "\n".join([
        "import json, os, sys",
        f"sys.path.append({ROOT!r})",          # what an editable install's .pth line adds
        "import tfpg",
        "assert tfpg.__file__ and os.path.basename(tfpg.__file__) == '__init__.py', "
        "tfpg.__path__",
        f"assert not tfpg.__file__.startswith({str(tmp_path)!r}), tfpg.__file__",
        "from tfpg.run.cli import main",
        "for argv in (['--help'], ['train', '--help'], ['generate', '--help']):",
        "    try:",
        "        main(argv)",
        "    except SystemExit as exit:",
        "        assert exit.code == 0, argv",
        f"cases = {json.dumps([args for args, _ in NO_TENSORFLOW_ERRORS])}",
        "for argv in cases:",
        "    assert main(argv) == 2, argv",
        "    print('--', file=sys.stderr)",
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')))"])
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120, env=ENV, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines()[-1] == "[]"         # nothing of TF or Keras loaded
    assert "--sampler {greedy,sample,top_k,top_p}" in result.stdout
    errors = result.stderr.split("--\n")[:-1]
    assert len(errors) == len(NO_TENSORFLOW_ERRORS), result.stderr
    for error, (argv, words) in zip(errors, NO_TENSORFLOW_ERRORS):
        assert error.count("\n") == 1 and error.startswith("tfpg: error: "), (argv, error)
        assert all(word in error for word in words), (argv, error)


def test_the_native_log_filter_drops_absl_lines_and_keeps_the_rest():
    dropped = [
        b"WARNING: All log messages before absl::InitializeLog() is called are written to "
        b"STDERR",
        b"I0000 00:00:1796151482.045157    8357 port.cc:153] oneDNN custom operations are on.",
        b"E0000 00:00:1796151485.068003    8357 cuda_platform.cc:52] failed call to cuInit: "
        b"INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)",
        b"E0000 00:00:1796151485.761130    8357 util.cc:131] oneDNN supports DT_INT64 only "
        b"on platforms with AVX-512.",
        b"W1201 18:55:42.123456   12 gpu_device.cc:2] a warning",
        b"To enable the following instructions: AVX2 AVX512F FMA, in other operations, "
        b"rebuild TensorFlow with the appropriate compiler flags."]
    kept = [b"tfpg: error: something", b"Traceback (most recent call last):",
            b"F0000 00:00:1.5 3 check.cc:9] Check failed: fatal lines stay",
            b"I0000 is not a log line without its prefix"]
    source_read, source_write = os.pipe()
    sink_read, sink_write = os.pipe()
    lines = [line for pair in zip(dropped, kept + kept[:2]) for line in pair]
    os.write(source_write, b"\n".join(lines) + b"\nno newline at the end")
    os.close(source_write)
    native_logs._copy_filtered(source_read, sink_write)
    os.close(sink_write)
    assert os.read(sink_read, 1 << 16) == b"\n".join(
        kept + kept[:2]) + b"\nno newline at the end"


def test_train_writes_export_metrics_and_logs(trained):
    workdir, result = trained
    assert native_log_lines(result.stderr) == [], result.stderr[-2000:]
    assert "\x1b[" not in result.stdout                # no ANSI codes off a terminal
    progress = [line for line in result.stdout.splitlines()
                if line.startswith("pre-training epoch")]
    assert [line.split(" - ")[0] for line in progress] == [
        f"pre-training epoch {n}/4" for n in (1, 2, 3, 4)]
    assert "held-out" in result.stdout and "before" in result.stdout
    metrics = json.loads((workdir / "out/model/metrics.json").read_text())
    assert metrics["task"] == "arithmetic" and metrics["algorithm"] == "rloo"
    for phase in ("before", "after"):
        assert {"exact_match", "reward"} <= set(metrics[phase])
    assert metrics["seconds"] > 0
    assert (workdir / "out/logs/rewards.csv").exists()
    generator = tfpg.load(str(workdir / "out/model"))
    assert len(generator.generate(["12+34="])) == 1


def test_generate_evaluate_and_export_subcommands(trained):
    workdir, _ = trained
    generated = run(["generate", "out/model", "12+34=", "57+68="], workdir)
    assert generated.returncode == 0, generated.stderr[-2000:]
    assert generated.stderr == ""                   # no TensorFlow log lines
    assert len(generated.stdout.strip().splitlines()) == 2

    evaluated = run(["evaluate", "out/model"], workdir)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert native_log_lines(evaluated.stderr) == []
    assert "exact_match" in json.loads(evaluated.stdout)

    exported = run(["export", "out/model.checkpoint", "--output", "copy"], workdir)
    assert exported.returncode == 0, exported.stderr[-2000:]
    assert native_log_lines(exported.stderr) == []
    again = run(["generate", "copy", "12+34=", "57+68=", "--format", "jsonl"], workdir)
    records = [json.loads(line) for line in again.stdout.splitlines()]
    assert [record["prompt"] for record in records] == ["12+34=", "57+68="]
    # Same weights as the trained export.
    assert [cli._completion_line(None, record["completion"], "text")
            for record in records] == generated.stdout.splitlines()


def test_the_names_the_command_line_offers_are_the_registries():
    """`tfpg.options` holds each name list once; the registries are built from it."""
    from tfpg import generation, options, rewards
    from tfpg.algorithms import ALGORITHMS, TRAINERS
    from tfpg.models import backbones
    from tfpg.tasks import TASKS
    assert {name: cls.__name__ for name, cls in TRAINERS.items()} == {
        "reinforce": "REINFORCE", "scst": "SCST", "rloo": "RLOO", "grpo": "GRPO",
        "a2c": "A2C", "ppo": "PPO", "distill": "OnPolicyDistillation"}
    assert list(ALGORITHMS) == list(TRAINERS)[:-1]
    assert {name: cls.__name__ for name, cls in TASKS.items()} == {
        "arithmetic": "ArithmeticTask", "translate": "TranslateTask",
        "keywords": "KeywordsTask", "preference": "PreferenceTask",
        "calculator": "CalculatorTask", "guess": "GuessTask"}
    assert backbones.BACKBONES is options.BACKBONES
    assert generation.SAMPLERS is options.SAMPLERS
    assert rewards.ON_INVALID is options.ON_INVALID_REWARD


def test_an_editable_install_puts_the_clone_on_sys_path():
    """setuptools writes a .pth path line (not an import hook, which a clone named tfpg
    in the current directory would shadow) when the package dir is the root's."""
    tomllib = pytest.importorskip("tomllib")
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        assert tomllib.load(f)["tool"]["setuptools"]["package-dir"] == {"": "."}


def test_one_install_hint_for_the_hub_extra():
    """README and the errors that need keras-hub or jinja2 give the same command."""
    from tfpg import options
    from tfpg.run import config, model_source
    readme = os.path.join(os.path.dirname(__file__), os.pardir, "README.md")
    with open(readme, encoding="utf-8") as f:
        assert options.HUB_INSTALL_HINT in f.read()
    for module in (config, model_source):
        with open(module.__file__, encoding="utf-8") as f:
            source = f.read()
        assert "HUB_INSTALL_HINT}" in source and "pip install tfpg" not in source


def test_a_resume_with_other_options_names_each_one(tmp_path):
    from tfpg.run import checkpoints
    from tfpg.run.config import TrainConfig
    directory = str(tmp_path / "model.checkpoint")
    checkpoints.RunState(directory, TrainConfig(learning_rate=0.001)).save(seconds=1.0)
    other = TrainConfig(learning_rate=0.5, batch_size=8, kl_coef=0.1,
                        strategy="mirrored")          # a runtime option: may differ
    with pytest.raises(checkpoints.UsageError) as error:
        checkpoints.RunState(directory, other)
    assert str(error.value) == (
        f"{directory} holds a run with other options (--batch-size 8 (was 64), "
        "--learning-rate 0.5 (was 0.001), --kl-coef 0.1 (was none)); use another "
        "--output or delete it to start over")


def test_evaluate_on_a_file_scores_bleu_and_exact_match_by_hand():
    """`tfpg evaluate --eval-file` and a `--train-file` run's held-out metrics share
    `reference_metrics`: corpus BLEU x 100 over words, exact match with any reference."""
    from tfpg.run.evaluation import reference_metrics
    # n-gram precisions 4/5, 3/4, 2/3, 1/2 and equal lengths: BLEU = 0.2 ** (1/4).
    metrics = reference_metrics(["a b c d e", "x"], ["a b c d f", ["y", " x "]])
    assert metrics["exact_match"] == 0.5
    got = reference_metrics(["a b c d e"], ["a b c d f"])
    assert got == {"bleu": pytest.approx(100 * 0.2 ** 0.25), "exact_match": 0.0}


def test_text_output_is_one_line_per_prompt_whatever_the_completion():
    lines = [cli._completion_line("p", text, "text") for text in
             ("", "a\nb", "back\\slash\r", "plain")]
    assert lines == ["(empty)", "a\\nb", "back\\\\slash\\r", "plain"]
    assert json.loads(cli._completion_line("p\n", "", "jsonl")) == \
        {"prompt": "p\n", "completion": ""}


BAD_INPUT = [
    (["train", "--task", "chess"], ["unknown task", "chess"]),
    (["train", "--algorithm", "dqn"], ["unknown algorithm", "dqn"]),
    (["train", "--train-file", "missing.tsv"], ["missing.tsv", "not found"]),
    (["train", "--train-file", "empty.tsv"], ["empty.tsv", "no examples"]),
    (["train", "--train-file", "malformed.tsv"], ["malformed.tsv:2"]),
    (["train", "--reward", "no_such_module:fn"], ["no_such_module"]),
    (["train", "--reward", "os:no_such_function"], ["no_such_function"]),
    (["train", "--reward", "sparkle"], ["unknown reward", "sparkle"]),
    (["train", "--config", "bad.yaml"], ["unknown option", "learning_rat"]),
    (["train", "--epochs", "many"], ["epochs"]),
    (["generate", "nowhere", "hi"], ["nowhere"]),
    (["frobnicate"], ["frobnicate"]),
]


def _bad_input_directory(directory):
    (directory / "empty.tsv").write_text("")
    (directory / "malformed.tsv").write_text("a prompt\tits reference\nno tab on this line\n")
    (directory / "bad.yaml").write_text("learning_rat: 0.1\n")
    return directory


@pytest.fixture(scope="module")
def bad_input_runs(tmp_path_factory):
    """Every BAD_INPUT command, each in a directory of its own, all in one process
    (tests/cli_batch.py): (directory, files before, result) per case."""
    commands = [args + ["--output", "out/model"] if args[0] == "train" else args
                for args, _ in BAD_INPUT]
    return run_in_fresh_directories(tmp_path_factory, commands, _bad_input_directory, ENV)


@pytest.mark.parametrize("case", range(len(BAD_INPUT)),
                         ids=[" ".join(args) for args, _ in BAD_INPUT])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(bad_input_runs, case):
    directory, before, result = bad_input_runs[case]
    assert_usage_error(result, *BAD_INPUT[case][1])
    assert set(os.listdir(directory)) == before     # no half-written output or logs


def test_one_bad_input_alone_in_a_fresh_process(tmp_path):
    """The same as a user meets it: one command, its own process, exit status 2."""
    result = run(["train", "--train-file", "malformed.tsv", "--output", "out/model"],
                 _bad_input_directory(tmp_path))
    assert_usage_error(result, "malformed.tsv:2")
    assert native_log_lines(result.stderr) == []
    assert not (tmp_path / "out").exists()
