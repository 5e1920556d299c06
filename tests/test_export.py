"""Tests for `tfpg.export`: SavedModel signatures, parity with the in-memory policy,
`saved_model_cli`, atomic replacement and clear errors for bad directories."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfpg import export as export_lib
from tfpg.export import export_saved_model, load, recover
from tfpg.generation import generate
from tfpg.losses import token_log_probs
from tfpg.models import PolicyNetwork
from tfpg.text import Tokenizer

WORDS = "one two three four five six seven eight nine ten plus minus is".split()
PROMPTS = ["one plus two is", "three", "", "ten minus nine minus eight is"]
COMPLETIONS = ["three", "", "four five", "nine nine unknownword"]
SUBPROCESS_ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")


def make_policy(tokenizer, backbone="lstm", max_length=512):
    keras.utils.set_random_seed(7)
    policy = PolicyNetwork(tokenizer.vocabulary_size, 16, 24, backbone=backbone,
                           num_heads=2, max_length=max_length)
    policy.build()
    # Sharper than a fresh init, so greedy and sampled completions differ by prompt.
    policy.lm_head.kernel.assign(policy.lm_head.kernel * 6.0)
    return policy


def left_pad(rows):
    width = max(len(r) for r in rows)
    return np.array([[0] * (width - len(r)) + r for r in rows], np.int32)


def in_memory_log_probs(policy, tokenizer, prompts, completions):
    """Per-token log-probs of completion + EOS given the prompt: list of arrays."""
    results = []
    for prompt, completion in zip(prompts, completions):
        prompt_ids = np.array([tokenizer.encode(prompt)], np.int32)
        ids = np.array([tokenizer.encode(completion, add_bos=False) + [tokenizer.eos_id]],
                       np.int32)
        logits = policy(np.concatenate([prompt_ids, ids], axis=1))
        step_logits = logits[:, prompt_ids.shape[1] - 1:-1]
        results.append(token_log_probs(step_logits, ids).numpy()[0])
    return results


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.from_texts([" ".join(WORDS)])


@pytest.fixture(scope="module")
def policy(tokenizer):
    return make_policy(tokenizer)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, policy, tokenizer):
    path = str(tmp_path_factory.mktemp("export") / "model")
    assert export_saved_model(policy, tokenizer, path, max_new_tokens=6) == path
    return path


def saved_model_cli():
    found = shutil.which("saved_model_cli") or os.path.join(os.path.dirname(sys.executable),
                                                            "saved_model_cli")
    if not os.path.exists(found):
        pytest.skip("saved_model_cli is not installed")
    return found


def test_directory_layout_and_metadata(exported, tokenizer):
    names = set(os.listdir(exported))
    assert {"saved_model.pb", "variables", "tokenizer.json", "tfpg_export.json"} <= names
    info = json.load(open(os.path.join(exported, "tfpg_export.json")))
    assert info["format"] == "tfpg.SavedModel" and info["version"] == 1
    assert info["vocabulary_size"] == tokenizer.vocabulary_size
    assert info["generation"] == {"max_new_tokens": 6, "sampler": "greedy",
                                  "temperature": 1.0, "top_k": None, "top_p": None,
                                  "eos_id": 2}
    assert Tokenizer.load(os.path.join(exported, "tokenizer.json")).vocabulary == \
        tokenizer.vocabulary
    # Nothing left beside the export.
    assert os.listdir(os.path.dirname(exported)) == ["model"]


def test_saved_model_cli_show_and_run(exported, policy, tokenizer):
    cli = saved_model_cli()
    # Both CLI processes start TensorFlow (seconds each): run them side by side.
    show = subprocess.Popen([cli, "show", "--dir", exported, "--all"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=SUBPROCESS_ENV)
    run = subprocess.Popen([cli, "run", "--dir", exported, "--tag_set", "serve",
                            "--signature_def", "generate",
                            "--input_exprs", 'prompts=["one plus two is","three"]'],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env=SUBPROCESS_ENV)
    expected = tokenizer.decode(generate(policy, left_pad(tokenizer.encode(PROMPTS[:2])),
                                         max_new_tokens=6, sampler="greedy").token_ids)
    shown_out, shown_err = show.communicate(timeout=120)
    ran_out, ran_err = run.communicate(timeout=120)
    assert show.returncode == 0, shown_err
    assert run.returncode == 0, ran_err
    generate_section = shown_out.split("signature_def['generate']")[1].split(
        "signature_def[")[0]
    assert "inputs['prompts']" in generate_section and "DT_STRING" in generate_section
    for name in ("generate_with_options", "log_probs", "serving_default"):
        assert f"signature_def['{name}']" in shown_out

    assert "Result for output key completions" in ran_out
    for completion in expected:
        assert repr(completion.encode()) in ran_out


def test_fresh_process_matches_in_memory_policy(exported, policy, tokenizer):
    script = textwrap.dedent("""
        import json, sys
        import tensorflow as tf
        loaded = tf.saved_model.load(sys.argv[1])
        prompts, completions = json.loads(sys.argv[2]), json.loads(sys.argv[3])
        gen = loaded.signatures["generate"](prompts=tf.constant(prompts))
        scored = loaded.signatures["log_probs"](prompts=tf.constant(prompts),
                                                completions=tf.constant(completions))
        print(json.dumps({"completions": [c.decode() for c in gen["completions"].numpy()],
                          "token_ids": gen["token_ids"].numpy().tolist(),
                          "log_probs": scored["log_probs"].numpy().tolist(),
                          "mask": scored["mask"].numpy().tolist()}))
    """)
    done = subprocess.run([sys.executable, "-c", script, exported, json.dumps(PROMPTS),
                           json.dumps(COMPLETIONS)], capture_output=True, text=True,
                          env=SUBPROCESS_ENV, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])

    out = generate(policy, left_pad(tokenizer.encode(PROMPTS)), max_new_tokens=6,
                   sampler="greedy", eos_id=tokenizer.eos_id)
    np.testing.assert_array_equal(result["token_ids"], out.token_ids.numpy())
    assert result["completions"] == tokenizer.decode(out.token_ids)

    expected = in_memory_log_probs(policy, tokenizer, PROMPTS, COMPLETIONS)
    log_probs, mask = np.array(result["log_probs"]), np.array(result["mask"])
    for row, m, want in zip(log_probs, mask, expected):
        assert m.sum() == len(want)
        np.testing.assert_allclose(row[:len(want)], want, atol=1e-5)
        assert np.all(row[len(want):] == 0)


def test_generator_model_options(exported, policy, tokenizer):
    gen = load(exported)
    prompt_ids = left_pad(tokenizer.encode(PROMPTS))
    greedy = tokenizer.decode(generate(policy, prompt_ids, max_new_tokens=6,
                                       sampler="greedy").token_ids)
    assert gen.generate(PROMPTS) == greedy
    # Explicit sentinels ("not given") are the defaults of the prompts-only signature.
    out = gen.signatures["generate_with_options"](
        prompts=tf.constant(PROMPTS), max_new_tokens=tf.constant(0),
        temperature=tf.constant(0.0), top_k=tf.constant(0), top_p=tf.constant(0.0),
        seed=tf.constant(-1, tf.int64))
    assert [c.decode() for c in out["completions"].numpy()] == greedy

    # Sampling options reproduce tfpg.generate with the same seed, bit for bit.
    sampled = generate(policy, prompt_ids, max_new_tokens=9, sampler="sample",
                       temperature=0.7, top_k=5, seed=11)
    assert gen.generate(PROMPTS, max_new_tokens=9, temperature=0.7, top_k=5, seed=11) == \
        tokenizer.decode(sampled.token_ids)
    nucleus = generate(policy, prompt_ids, max_new_tokens=6, sampler="sample",
                       top_p=0.8, seed=3)
    assert gen.generate(PROMPTS, top_p=0.8, seed=3) == tokenizer.decode(nucleus.token_ids)
    assert gen.generate(PROMPTS, seed=3) == gen.generate(PROMPTS, seed=3)
    out = gen.signatures["generate_with_options"](
        prompts=tf.constant(PROMPTS), max_new_tokens=tf.constant(2),
        temperature=tf.constant(0.0), top_k=tf.constant(0), top_p=tf.constant(0.0),
        seed=tf.constant(-1, tf.int64))
    assert out["token_ids"].shape == (len(PROMPTS), 2)

    scores = gen.score(PROMPTS, COMPLETIONS)
    expected = in_memory_log_probs(policy, tokenizer, PROMPTS, COMPLETIONS)
    np.testing.assert_allclose(scores, [row.sum() for row in expected], atol=1e-4)
    assert [len(row) for row in gen.log_probs(PROMPTS, COMPLETIONS)] == \
        [len(row) for row in expected]
    assert gen.generate([]) == []

    with pytest.raises(TypeError, match="not a single prompt"):
        gen.generate("one plus two")
    with pytest.raises(ValueError, match="temperature"):
        gen.generate(PROMPTS, temperature=-1.0)
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        gen.score(PROMPTS[:2], COMPLETIONS[:1])


def test_transformer_export_keeps_positions_in_range(tmp_path, tokenizer):
    policy = make_policy(tokenizer, backbone="transformer", max_length=12)
    path = export_saved_model(policy, tokenizer, str(tmp_path / "tr"), max_new_tokens=4)
    gen = load(path)
    assert gen.generate(PROMPTS) == tokenizer.decode(generate(
        policy, left_pad(tokenizer.encode(PROMPTS)), max_new_tokens=4,
        sampler="greedy").token_ids)
    # Asking for more tokens than the position table holds is clamped, not an error.
    out = gen.signatures["generate_with_options"](
        prompts=tf.constant(["one two three"]), max_new_tokens=tf.constant(50),
        temperature=tf.constant(0.0), top_k=tf.constant(0), top_p=tf.constant(0.0),
        seed=tf.constant(-1, tf.int64))
    assert out["token_ids"].shape == (1, 12 - 4)
    # Prompts longer than max_length - max_new_tokens keep their last tokens.
    long_prompt = " ".join(WORDS)
    assert gen.generate([long_prompt]) == gen.generate([" ".join(WORDS[-7:])])
    np.testing.assert_allclose(
        gen.score(PROMPTS, COMPLETIONS),
        [row.sum() for row in in_memory_log_probs(policy, tokenizer, PROMPTS, COMPLETIONS)],
        atol=1e-4)


def copy_export_then(source, action):
    """A stand-in for the SavedModel writer: copies `source` (no marker file), then acts."""
    def fake_write(policy, tokenizer, defaults, max_prompt_length, directory, chat=False):
        shutil.copytree(source, directory)
        os.remove(os.path.join(directory, "tfpg_export.json"))
        action(directory)
    return fake_write


def test_interrupted_export_leaves_previous_export_intact(exported, tmp_path, monkeypatch,
                                                          policy, tokenizer):
    target = str(tmp_path / "model")
    shutil.copytree(exported, target)

    def crash(path):
        with open(os.path.join(path, "saved_model.pb"), "wb") as f:
            f.write(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(export_lib, "_write_saved_model", copy_export_then(exported, crash))
    with pytest.raises(KeyboardInterrupt):
        export_saved_model(policy, tokenizer, target, max_new_tokens=3)
    assert sorted(os.listdir(tmp_path)) == ["model"]  # temp dir cleaned up
    monkeypatch.undo()
    gen = load(target)
    assert gen.generation_defaults["max_new_tokens"] == 6  # the old export
    assert len(gen.generate(["one"])) == 1


def test_crash_between_renames_is_recovered(exported, tmp_path, monkeypatch, policy,
                                            tokenizer):
    target = str(tmp_path / "model")
    shutil.copytree(exported, target)
    fake_write = copy_export_then(exported, lambda path: None)
    monkeypatch.setattr(export_lib, "_write_saved_model", fake_write)
    real_rename = os.rename

    def rename(src, dst):
        if ".tmp-" in os.fspath(src):  # the old export is already the backup
            raise KeyboardInterrupt
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        export_saved_model(policy, tokenizer, target, max_new_tokens=3)
    assert not os.path.exists(target)
    assert os.path.isdir(target + ".tfpg-backup")
    monkeypatch.undo()
    gen = load(target)  # restores the backup first
    assert gen.generation_defaults["max_new_tokens"] == 6
    assert sorted(os.listdir(tmp_path)) == ["model"]

    # A completed replacement swaps exports and leaves nothing else behind.
    monkeypatch.setattr(export_lib, "_write_saved_model", fake_write)
    export_saved_model(policy, tokenizer, target + "/", max_new_tokens=3,
                       metadata={"epoch": 2})
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["model"]
    info = export_lib.read_export_info(target)
    assert info["generation"]["max_new_tokens"] == 3 and info["metadata"] == {"epoch": 2}


def test_recover_drops_a_backup_whose_replacement_is_in_place(exported, tmp_path):
    target = str(tmp_path / "model")
    shutil.copytree(exported, target)
    shutil.copytree(exported, target + ".tfpg-backup")
    os.makedirs(target + ".tmp-dead")
    assert recover(target) is False
    assert sorted(os.listdir(tmp_path)) == ["model"]


def test_bad_directories_give_one_line_errors(exported, tmp_path, policy, tokenizer):
    def message(path, error=ValueError):
        with pytest.raises(error) as info:
            load(path)
        text = str(info.value)
        assert "\n" not in text and os.path.normpath(str(path)) in text
        return text

    assert "no such directory" in message(tmp_path / "missing", FileNotFoundError)
    (tmp_path / "empty").mkdir()
    assert "empty directory" in message(tmp_path / "empty")
    (tmp_path / "random").mkdir()
    (tmp_path / "random" / "notes.txt").write_text("hello")
    assert "not a SavedModel" in message(tmp_path / "random")
    keras_file = tmp_path / "policy.keras"
    with zipfile.ZipFile(keras_file, "w") as z:
        z.writestr("config.json", "{}")
    assert "Keras model file" in message(keras_file)
    (tmp_path / "plain.txt").write_text("x")
    assert "is a file" in message(tmp_path / "plain.txt")

    half = tmp_path / "half"
    shutil.copytree(exported, half)
    os.remove(half / "tfpg_export.json")
    assert "not a complete tfpg export" in message(half)
    broken = tmp_path / "broken"
    shutil.copytree(exported, broken)
    shutil.rmtree(broken / "variables")
    assert "cannot load the SavedModel" in message(broken)
    corrupt = tmp_path / "corrupt"
    shutil.copytree(exported, corrupt)
    (corrupt / "tfpg_export.json").write_text("{not json")
    assert "invalid JSON" in message(corrupt)

    with pytest.raises(ValueError, match="not a tfpg export; refusing"):
        export_saved_model(policy, tokenizer, tmp_path / "random")
    assert os.listdir(tmp_path / "random") == ["notes.txt"]
    with pytest.raises(ValueError, match="vocab_size=5"):
        export_saved_model(PolicyNetwork(5, 8, 8), tokenizer, tmp_path / "new")
    with pytest.raises(ValueError, match="sampler"):
        export_saved_model(policy, tokenizer, tmp_path / "new", sampler="beam")
