"""The bad-input battery: each case gets a clear error or a documented result, through
the public API and the `tfpg` command, and nothing already saved is lost.

Most CLI cases call `tfpg.run.cli.main` in this process (the same code path as the
`tfpg` command, without a TensorFlow start-up per case); a few run the real command.
The bad-input table of docs/trust.md lists the same cases.
"""

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import warnings

import numpy as np
import pytest
import tensorflow as tf

import keras
import tfpg
from tfpg.run import pipeline
from tfpg.algorithms import REINFORCE
from tfpg.run.cli import main

TINY = {"embedding_dim": 16, "hidden_dim": 32, "batch_size": 16, "steps_per_epoch": 2}
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")


def write_job(directory):
    rng = np.random.default_rng(0)
    lines = [f"{a} + {b} =\t{' '.join(str(a + b))}" for a, b in rng.integers(0, 10, (80, 2))]
    (directory / "add.tsv").write_text("\n".join(lines) + "\n")
    (directory / "tiny.yaml").write_text("".join(f"{k}: {v}\n" for k, v in TINY.items()))


def train_args(directory, *extra):
    return ["train", "--train-file", str(directory / "add.tsv"), "--config",
            str(directory / "tiny.yaml"), "--reward", "exact_match", "--max-new-tokens", "4",
            "--output", str(directory / "out/model"), "--logdir",
            str(directory / "out/logs"), *extra]


def snapshot(*paths):
    """Content hash of every file under `paths` (to prove nothing was touched)."""
    digest = {}
    for path in paths:
        for root, _, files in os.walk(path):
            for name in files:
                full = os.path.join(root, name)
                with open(full, "rb") as f:
                    digest[full] = hashlib.sha256(f.read()).hexdigest()
    return digest


def run_cli(capsys, args):
    status = main([str(a) for a in args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def assert_error(result, *words, status=2):
    code, _, err = result
    assert code == status, err[-2000:]
    lines = [line for line in err.splitlines() if line.startswith("tfpg: error:")]
    assert len(lines) == 1, err[-2000:]
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished tiny run: its export, checkpoint directory and tokenizer. Its prompts
    ("3 + 4 =" is 5 tokens with BOS) are cut to their last 4 tokens."""
    directory = tmp_path_factory.mktemp("trained")
    write_job(directory)
    config = pipeline.TrainConfig(
        train_file=str(directory / "add.tsv"), reward="exact_match", pretrain_epochs=1,
        epochs=1, max_new_tokens=4, output=str(directory / "model"),
        logdir=str(directory / "logs"), max_prompt_length=4, truncate_prompts="left",
        **TINY)
    warnings = []
    pipeline.run_training(config, log=lambda *_: None, warn=warnings.append)
    (directory / "warnings.txt").write_text("\n".join(warnings))
    return directory


@pytest.fixture(scope="module")
def tokenizer(trained):
    return tfpg.Tokenizer.load(str(trained / "model/tokenizer.json"))


# -------------------------------------------------------------- empty prompts


def test_an_empty_prompt_list_is_refused():
    tok = tfpg.Tokenizer.from_texts(["a b"])
    with pytest.raises(ValueError, match="prompts is empty"):
        tfpg.data.prompt_dataset([], tok)
    with pytest.raises(ValueError, match="texts is empty"):
        tfpg.data.language_model_dataset([], tok)


def test_an_empty_prompt_is_a_bos_only_prompt(trained, capsys):
    """Documented: "" encodes to [BOS]; the model completes it from scratch."""
    tok = tfpg.Tokenizer.from_texts(["a b"])
    batch = next(iter(tfpg.data.prompt_dataset(["", "a b"], tok)))
    assert batch["prompt"].numpy().tolist() == [[0, 0, 1], [1, 4, 5]]
    keras.utils.set_random_seed(0)
    agent = REINFORCE(tfpg.PolicyNetwork(tok.vocabulary_size, 8, 8),
                      lambda p, c, m, b: tf.reduce_sum(m, axis=1), max_new_tokens=3)
    agent.compile(optimizer="adam")
    history = agent.fit(tfpg.data.prompt_dataset(["", "a b"], tok), verbose=0).history
    assert np.isfinite(history["policy_loss"][0])

    generator = tfpg.load(str(trained / "model"))
    assert len(generator.generate([""])) == 1 and generator.generate([]) == []
    code, out, err = run_cli(capsys, ["generate", trained / "model", ""])
    assert code == 0, err
    assert len(out.splitlines()) <= 1


# ---------------------------------------------------------- over-long prompts


def test_over_long_prompts_are_refused_or_truncated_by_option():
    tok = tfpg.Tokenizer.from_texts(["a b c d"])
    with pytest.raises(ValueError, match="prompt 1: has 5 tokens.*max_prompt_length=3"):
        tfpg.data.prompt_dataset(["a", "a b c d"], tok, max_prompt_length=3)
    left = tfpg.data.prompt_dataset(["a b c d"], tok, max_prompt_length=3, truncate="left")
    right = tfpg.data.prompt_dataset(["a b c d"], tok, max_prompt_length=3, truncate="right")
    assert next(iter(left))["prompt"].numpy().tolist() == [[1, 6, 7]]     # keeps "c d"
    assert next(iter(right))["prompt"].numpy().tolist() == [[1, 4, 5]]    # keeps "a b"


def test_cli_refuses_over_long_prompts_before_training(tmp_path, capsys):
    write_job(tmp_path)
    before = set(os.listdir(tmp_path))
    line = assert_error(run_cli(capsys, train_args(tmp_path, "--max-prompt-length", "3")),
                        "has 5 tokens", "--max-prompt-length 3", "--truncate-prompts")
    assert "prompt" in line
    assert set(os.listdir(tmp_path)) == before


def test_truncated_prompts_give_a_warning_and_a_model_that_truncates(trained):
    warnings = (trained / "warnings.txt").read_text()
    assert "training prompt(s) longer than 4 tokens were truncated, keeping their left " \
        "part" in warnings, warnings
    info = tfpg.export.read_export_info(str(trained / "model"))
    assert info["max_prompt_length"] == 4
    generator = tfpg.load(str(trained / "model"))
    # The export keeps the last 4 tokens (BOS included) of a longer prompt.
    assert generator.generate(["9 9 9 9 9 1 + 2 ="]) == generator.generate(["1 + 2 ="])


def test_transformer_prompts_are_limited_to_its_positions(tmp_path):
    write_job(tmp_path)
    config = pipeline.TrainConfig(train_file=str(tmp_path / "add.tsv"), backbone="transformer",
                                  max_new_tokens=6, reward="exact_match")
    job = pipeline.make_job(config)
    assert job.max_prompt_length == pipeline.POLICY_MAX_LENGTH - 6
    job.train.prompts[0] = " ".join(["1"] * 300)
    with pytest.raises(pipeline.UsageError, match="more than --max-prompt-length 250"):
        pipeline.check_prompt_lengths(job, warn=print)


# -------------------------------------------------------------- unknown tokens


def test_unknown_tokens_become_unk_everywhere(trained, tokenizer, capsys):
    """Documented: words outside the vocabulary encode to <unk> (id 3), in Python
    and in the SavedModel's graph; nothing fails."""
    ids = tokenizer.encode("zebra 3 +")
    assert ids[:2] == [1, 3] and 3 not in ids[2:]
    assert tokenizer.decode([3]) == "<unk>"
    generator = tfpg.load(str(trained / "model"))
    with pytest.warns(UserWarning, match="words outside the model's vocabulary, read as "
                                         "<unk>: 'zebra', 'crossing'$"):
        assert len(generator.generate(["zebra crossing =", "3 + zebra ="])) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")              # known words: no warning
        generator.generate(["3 + 4 ="])
    code, out, err = run_cli(capsys, ["generate", trained / "model", "zebra crossing ="])
    assert code == 0, err
    assert err.splitlines() == ["tfpg: warning: prompts hold words outside the model's "
                                "vocabulary, read as <unk>: 'zebra', 'crossing'"]
    (trained / "unknown.tsv").write_text("zebra + 1 =\t7\n3 + 4 =\t7\n")
    code, out, err = run_cli(capsys, ["evaluate", trained / "model", "--eval-file",
                                      trained / "unknown.tsv"])
    assert code == 0, err
    assert set(json.loads(out)) == {"bleu", "exact_match"}


def test_unknown_tokens_are_found_in_order_once():
    words = tfpg.Tokenizer.from_texts(["1 + 2 = 3"])
    assert words.unknown_tokens(["9 + 1 = x", "x y"]) == ["9", "x", "y"]
    assert words.unknown_tokens("1 + 2") == []
    chars = tfpg.Tokenizer.from_texts(["12+34=46"], level="char")
    assert chars.unknown_tokens("12 + 34 =") == [" "]
    assert chars.unknown_tokens(["\uff19\uff19", "\u4e2d\u6587"]) == [
        "\uff19", "\u4e2d", "\u6587"]


def test_evaluate_refuses_a_task_whose_prompts_the_model_cannot_read(trained, capsys):
    line = assert_error(run_cli(capsys, ["evaluate", trained / "model", "--task",
                                         "translate"]), "translate", "trained on add")
    assert "does not know" in line
    assert "%" in line


# -------------------------------------------------------------- invalid UTF-8


def test_invalid_utf8_in_a_data_file_is_reported_with_its_line(tmp_path, capsys):
    write_job(tmp_path)
    (tmp_path / "add.tsv").write_bytes(b"1 + 1 =\t2\n\xff\xfe + 2 =\t3\n")
    before = set(os.listdir(tmp_path))
    assert_error(run_cli(capsys, train_args(tmp_path)), "add.tsv:2", "invalid UTF-8",
                 "0xff")
    assert set(os.listdir(tmp_path)) == before


def test_invalid_utf8_in_python_is_an_error_and_in_the_graph_a_replacement(trained,
                                                                             tokenizer):
    with pytest.raises(ValueError, match="not valid UTF-8"):
        tokenizer.encode(b"\xff 1 +")
    # Documented: a serving graph cannot raise per row; it decodes with U+FFFD.
    generator = tfpg.load(str(trained / "model"))
    out = generator.signatures["generate"](prompts=tf.constant([b"\xff 1 + 2 ="]))
    assert out["completions"].shape == [1]
    assert len(generator.generate([b"\xfe\xff"])) == 1


# -------------------------------------------------------------- empty dataset


@pytest.mark.parametrize("name,content", [
    ("empty.tsv", b""), ("blank.txt", b"\n  \n\t\n"), ("empty.jsonl", b"\n"),
])
def test_an_empty_data_file_is_refused(tmp_path, capsys, name, content):
    write_job(tmp_path)
    (tmp_path / name).write_bytes(content)
    before = set(os.listdir(tmp_path))
    args = train_args(tmp_path)
    args[2] = str(tmp_path / name)
    assert_error(run_cli(capsys, args), name, "no examples")
    assert set(os.listdir(tmp_path)) == before


def test_an_empty_eval_file_is_refused(trained, capsys):
    (trained / "empty-eval.tsv").write_text("")
    assert_error(run_cli(capsys, ["evaluate", trained / "model", "--eval-file",
                                  trained / "empty-eval.tsv"]), "no examples")


# ------------------------------------------------------- NaN / raising rewards


REWARDS_MODULE = '''
import numpy as np
import tensorflow as tf
import tfpg


def nan_reward(prompt_ids, completion_ids, completion_mask, batch):
    return tf.fill([tf.shape(completion_ids)[0]], {value})


def broken(prompt_ids, completion_ids, completion_mask, batch):
    return batch["no_such_column"]


def _explode(prompts, completions):
    raise RuntimeError("scorer crashed")


exploding = tfpg.rewards.PythonReward(_explode, name="exploding")
'''


def reward_module(directory, monkeypatch, value):
    name = f"bad_rewards_{directory.name}".replace("-", "_")
    (directory / f"{name}.py").write_text(REWARDS_MODULE.format(value=value))
    monkeypatch.syspath_prepend(str(directory))
    sys.modules.pop(name, None)                 # re-read after the file changed
    return name


def test_nan_rewards_fail_the_run_keeping_its_checkpoints_and_a_fixed_rerun_resumes(
        tmp_path, capsys, monkeypatch):
    write_job(tmp_path)
    module = reward_module(tmp_path, monkeypatch, 'float("nan")')
    args = train_args(tmp_path, "--pretrain-epochs", "1", "--epochs", "1")
    args[args.index("exact_match")] = f"{module}:nan_reward"
    line = assert_error(run_cli(capsys, args), "reward nan_reward returned nan for sample")
    assert "completion ids" in line
    state = json.loads((tmp_path / "out/model.checkpoint/state.json").read_text())
    assert state["pretrain_epochs_done"] == 1 and state["finetune_epochs_done"] == 0
    assert (tmp_path / f"out/model.checkpoint/{state['pretrain_checkpoint']}.index").exists()
    assert not (tmp_path / "out/model").exists()               # no half-written export

    module = reward_module(tmp_path, monkeypatch, "0.5")       # the reward is fixed
    code, out, err = run_cli(capsys, args)
    assert code == 0, err
    assert "resuming from" in out and "pre-training on" not in out
    assert tfpg.load(str(tmp_path / "out/model")).generate(["1 + 1 ="])


def test_nan_rewards_can_be_zeroed_or_skipped_instead():
    tok = tfpg.Tokenizer.from_texts(["a b"])
    prompts = tfpg.data.prompt_dataset(["a", "b", "a b", ""], tok)

    def half_nan(prompt_ids, completion_ids, completion_mask, batch):
        rows = tf.range(tf.shape(completion_ids)[0])
        return tf.where(rows % 2 == 0, 1.0, float("nan"))

    for mode in ("zero", "skip"):
        keras.utils.set_random_seed(0)
        agent = REINFORCE(tfpg.PolicyNetwork(tok.vocabulary_size, 8, 8), half_nan,
                          max_new_tokens=3, on_invalid_reward=mode)
        agent.compile(optimizer="adam")
        history = agent.fit(prompts, verbose=0).history
        assert history["invalid_rewards"] == [2.0]
        assert all(np.isfinite(v.numpy()).all() for v in agent.trainable_variables)


@pytest.mark.parametrize("reward,status,words", [
    ("broken", 2, ["reward", "broken", "KeyError", "no_such_column"]),
    ("exploding", 2, ["reward exploding raised RuntimeError: scorer crashed on sample 0"]),
])
def test_a_reward_that_raises_is_named_and_keeps_the_checkpoints(
        tmp_path, capsys, monkeypatch, reward, status, words):
    write_job(tmp_path)
    module = reward_module(tmp_path, monkeypatch, "1.0")
    args = train_args(tmp_path, "--pretrain-epochs", "1", "--epochs", "1")
    args[args.index("exact_match")] = f"{module}:{reward}"
    assert_error(run_cli(capsys, args), *words, status=status)
    state = json.loads((tmp_path / "out/model.checkpoint/state.json").read_text())
    assert state["pretrain_epochs_done"] == 1
    assert not (tmp_path / "out/model").exists()


# ------------------------------------------------------- vocabulary mismatch


def test_a_tokenizer_that_does_not_match_the_model_is_refused(trained, tmp_path, capsys):
    other = tfpg.Tokenizer.from_texts(["just a few other words here"])
    other.save(str(tmp_path / "other.json"))
    checkpoint = trained / "model.checkpoint"
    kept = snapshot(checkpoint)
    assert_error(run_cli(capsys, ["export", checkpoint, "--output", tmp_path / "copy",
                                  "--tokenizer", tmp_path / "other.json"]),
                 "tokenizer has", "do not belong together")
    assert not (tmp_path / "copy").exists() and snapshot(checkpoint) == kept

    policy = tfpg.PolicyNetwork(9, 8, 8)
    policy.build()
    policy.save(str(tmp_path / "model.keras"))
    shutil.copy(tmp_path / "other.json", tmp_path / "tokenizer.json")
    assert_error(run_cli(capsys, ["export", tmp_path / "model.keras", "--output",
                                  tmp_path / "copy"]), "do not belong together")
    with pytest.raises(ValueError, match="vocab_size=9 but the tokenizer has"):
        big = tfpg.Tokenizer.from_texts([" ".join(f"w{i}" for i in range(20))])
        tfpg.export_saved_model(policy, big, str(tmp_path / "copy"))
    assert not (tmp_path / "copy").exists()


# --------------------------------------------- half-written or foreign models


def _foreign_saved_model(path):
    module = tf.Module()
    module.f = tf.function(lambda x: x + 1, input_signature=[tf.TensorSpec([], tf.float32)])
    tf.saved_model.save(module, str(path))


@pytest.mark.parametrize("kind,words", [
    ("missing", ["no such directory"]),
    ("empty", ["empty directory"]),
    ("foreign_files", ["not a SavedModel"]),
    ("foreign_saved_model", ["not a complete tfpg export"]),
    ("half_written", ["not a complete tfpg export"]),
    ("corrupt", ["cannot load the SavedModel"]),
    ("keras_file", ["Keras model file"]),
])
def test_a_half_written_or_foreign_model_directory_is_refused(trained, tmp_path, capsys,
                                                              kind, words):
    path = tmp_path / "model"
    if kind == "empty":
        path.mkdir()
    elif kind == "foreign_files":
        path.mkdir()
        (path / "notes.txt").write_text("hello")
    elif kind == "foreign_saved_model":
        _foreign_saved_model(path)
    elif kind == "half_written":                 # what a killed export leaves aside
        shutil.copytree(trained / "model", path)
        os.remove(path / "tfpg_export.json")
    elif kind == "corrupt":
        shutil.copytree(trained / "model", path)
        data = (path / "saved_model.pb").read_bytes()
        (path / "saved_model.pb").write_bytes(data[:len(data) // 3])
    elif kind == "keras_file":
        path = tmp_path / "model.keras"
        policy = tfpg.PolicyNetwork(9, 8, 8)
        policy.build()
        policy.save(str(path))
    kept = snapshot(tmp_path)
    assert_error(run_cli(capsys, ["generate", path, "1 + 1 ="]), *words)
    assert_error(run_cli(capsys, ["evaluate", path, "--eval-file", trained / "add.tsv"]),
                 *words)
    assert snapshot(tmp_path) == kept


@pytest.mark.parametrize("kind,words", [
    ("no_state", ["not a tfpg checkpoint directory"]),
    ("corrupt_state", ["unreadable checkpoint state"]),
    ("no_epoch", ["no completed epoch"]),
    ("no_tokenizer", ["no tokenizer.json"]),
    ("truncated_data", ["cannot read checkpoint"]),
])
def test_a_half_written_checkpoint_is_refused_by_export(trained, tmp_path, capsys, kind,
                                                        words):
    source = tmp_path / "run.checkpoint"
    shutil.copytree(trained / "model.checkpoint", source)
    state = json.loads((source / "state.json").read_text())
    if kind == "no_state":
        os.remove(source / "state.json")
    elif kind == "corrupt_state":
        (source / "state.json").write_text('{"version": 1, "conf')
    elif kind == "no_epoch":
        for name in os.listdir(source):
            if name.startswith(("pretrain", "finetune")):
                os.remove(source / name)
    elif kind == "no_tokenizer":
        os.remove(source / "tokenizer.json")
    elif kind == "truncated_data":
        data = source / f"{state['finetune_checkpoint']}.data-00000-of-00001"
        data.write_bytes(data.read_bytes()[:100])
    assert_error(run_cli(capsys, ["export", source, "--output", tmp_path / "copy"]), *words)
    assert not (tmp_path / "copy").exists()


def test_train_and_export_refuse_a_foreign_output_before_doing_anything(trained, tmp_path,
                                                                        capsys):
    write_job(tmp_path)
    foreign = tmp_path / "out/model"
    foreign.mkdir(parents=True)
    (foreign / "precious.txt").write_text("not a model")
    kept = snapshot(tmp_path / "out")
    assert_error(run_cli(capsys, train_args(tmp_path)), "not a tfpg export")
    assert_error(run_cli(capsys, ["export", trained / "model.checkpoint", "--output",
                                  foreign]), "not a tfpg export")
    assert snapshot(tmp_path / "out") == kept
    assert sorted(os.listdir(tmp_path / "out")) == ["model"]     # no checkpoint, no logs

    shutil.rmtree(foreign)
    (tmp_path / "out/model.checkpoint").mkdir()
    (tmp_path / "out/model.checkpoint/precious.txt").write_text("mine")
    assert_error(run_cli(capsys, train_args(tmp_path)), "not a tfpg checkpoint")
    assert os.listdir(tmp_path / "out/model.checkpoint") == ["precious.txt"]


def test_a_failed_command_leaves_an_existing_export_loadable(trained, tmp_path, capsys):
    target = tmp_path / "export"
    shutil.copytree(trained / "model", target)
    kept = snapshot(target)
    bad = tmp_path / "bad.checkpoint"
    bad.mkdir()
    assert_error(run_cli(capsys, ["export", bad, "--output", target]), "state.json")
    assert snapshot(target) == kept
    assert tfpg.load(str(target)).generate(["1 + 1 ="])


def test_export_below_a_file_is_one_line(trained, tmp_path, capsys):
    (tmp_path / "blocker").write_text("a file")
    assert_error(run_cli(capsys, ["export", trained / "model.checkpoint", "--output",
                                  tmp_path / "blocker/sub"]), "blocker", "is a file")
    policy = tfpg.PolicyNetwork(8, 4, 4)
    with pytest.raises(ValueError, match="a file is in the way"):
        tfpg.export_saved_model(policy, tfpg.Tokenizer.from_texts(["a b"]),
                                str(tmp_path / "blocker/sub"))
    assert (tmp_path / "blocker").read_text() == "a file"


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o027, 0o640)])
def test_export_files_get_the_mode_of_the_umask(trained, tmp_path, capsys, umask, mode):
    """tokenizer.json (written through a temp file) like every other file."""
    previous = os.umask(umask)
    try:
        code, _, err = run_cli(capsys, ["export", trained / "model.checkpoint", "--output",
                                        tmp_path / "copy"])
    finally:
        os.umask(previous)
    assert code == 0, err
    modes = {os.path.relpath(os.path.join(root, name), tmp_path / "copy"):
             stat.S_IMODE(os.stat(os.path.join(root, name)).st_mode)
             for root, _, names in os.walk(tmp_path / "copy") for name in names}
    assert "tokenizer.json" in modes and "tfpg_export.json" in modes
    assert set(modes.values()) == {mode}, modes


def test_generate_takes_a_sampler(trained, capsys):
    model = trained / "model"
    prompts = ["3 + 4 =", "1 + 2 =", "5 + 5 ="]
    default = run_cli(capsys, ["generate", model, *prompts])
    greedy = run_cli(capsys, ["generate", model, *prompts, "--sampler", "greedy",
                              "--seed", "5"])
    assert default[0] == greedy[0] == 0 and greedy[1] == default[1]
    generator = tfpg.load(str(model))
    # jsonl: the completions as they are (text shows an empty one as "(empty)").
    as_json = run_cli(capsys, ["generate", model, *prompts, "--format", "jsonl"])
    assert [json.loads(line)["completion"] for line in as_json[1].splitlines()] == \
        generator.generate(prompts, sampler="greedy")
    sampled = [run_cli(capsys, ["generate", model, *prompts, "--sampler", sampler,
                                "--seed", "3", "--temperature", "5"])
               for sampler in ("top_k", "top_k", "sample")]
    assert sampled[0][0] == 0 and sampled[0][1] == sampled[1][1]       # seeded
    assert len(sampled[2][1].splitlines()) == 3
    assert_error(run_cli(capsys, ["generate", model, "3 + 4 =", "--sampler", "beam"]),
                 "--sampler", "beam")
    assert_error(run_cli(capsys, ["generate", model, "3 + 4 =", "--sampler", "greedy",
                                  "--temperature", "0.5"]), "greedy", "temperature")


# ------------------------------------------------ unwritable output, full disk


def test_an_output_below_a_file_is_refused(tmp_path, capsys):
    write_job(tmp_path)
    (tmp_path / "blocker").write_text("a file")
    args = train_args(tmp_path)
    args[args.index("--output") + 1] = str(tmp_path / "blocker/model")
    before = set(os.listdir(tmp_path))
    assert_error(run_cli(capsys, args), "is a file")
    assert set(os.listdir(tmp_path)) == before


def test_a_full_disk_is_reported_before_training(tmp_path, capsys, monkeypatch):
    write_job(tmp_path)
    monkeypatch.setenv("TFPG_MIN_FREE_MB", str(10**12))       # more than any disk has
    before = set(os.listdir(tmp_path))
    assert_error(run_cli(capsys, train_args(tmp_path)), "MiB free", "need at least")
    assert set(os.listdir(tmp_path)) == before


def _chmod_blocks_writes(directory):
    probe = directory / "probe"
    probe.mkdir()
    os.chmod(probe, 0o555)
    try:
        (probe / "x").write_text("")
    except PermissionError:
        return True
    finally:
        os.chmod(probe, 0o755)
        shutil.rmtree(probe)
    return False                                # root: permission bits do not apply


def _private_mount_works():
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--mount", "sh", "-c",
                            "mount -t tmpfs -o size=1m tmpfs /mnt"], capture_output=True)
    return probe.returncode == 0


def test_an_unwritable_output_directory_is_reported_before_training(tmp_path, capsys):
    """A read-only directory: by permission bits where they apply, else (as root) a
    read-only tmpfs mounted in a private mount namespace."""
    write_job(tmp_path)
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    args = train_args(tmp_path)
    args[args.index("--output") + 1] = str(readonly / "model")
    if _chmod_blocks_writes(tmp_path):
        os.chmod(readonly, 0o555)
        try:
            assert_error(run_cli(capsys, args), "not writable")
        finally:
            os.chmod(readonly, 0o755)
    elif _private_mount_works():
        command = (f"mount -t tmpfs -o ro,size=1m tmpfs {readonly} && "
                   f"exec {sys.executable} -m tfpg.run.cli " + " ".join(args))
        result = subprocess.run(["unshare", "--mount", "sh", "-c", command],
                                capture_output=True, text=True, env=ENV, timeout=300)
        assert_error((result.returncode, result.stdout, result.stderr), "not writable",
                     "Read-only file system")
    else:
        pytest.skip("running as root without mount namespaces: nothing is read-only")
    assert os.listdir(readonly) == []
    assert not (tmp_path / "out").exists()


def test_a_small_file_system_is_reported_before_training(tmp_path):
    """A real 1 MiB tmpfs (in a private mount namespace) as the output's disk."""
    if not _private_mount_works():
        pytest.skip("needs mount namespaces (unshare --mount)")
    write_job(tmp_path)
    small = tmp_path / "small"
    small.mkdir()
    args = train_args(tmp_path)
    args[args.index("--output") + 1] = str(small / "model")
    command = (f"mount -t tmpfs -o size=1m tmpfs {small} && "
               f"exec {sys.executable} -m tfpg.run.cli " + " ".join(args))
    result = subprocess.run(["unshare", "--mount", "sh", "-c", command],
                            capture_output=True, text=True, env=ENV, timeout=300)
    assert_error((result.returncode, result.stdout, result.stderr), "only 1 MiB free")
    assert os.listdir(small) == []
