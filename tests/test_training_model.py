"""`tfpg train --model`: a run that starts from a KerasHub preset (with LoRA) or a
`.keras` policy instead of a new PolicyNetwork; its tokenizer encodes the data,
pre-training is skipped, and resume and export work as for a new policy."""

import json
import os
import sys

import numpy as np
import pytest

from tfpg.run import pipeline
from tfpg.run.model_source import load_policy
from tfpg.run.cli import main

keras_hub = pytest.importorskip("keras_hub")
sys.path.insert(0, os.path.dirname(__file__))
from keras_hub_models import save_preset  # noqa: E402

import tfpg  # noqa: E402

TINY = {"batch_size": 8, "steps_per_epoch": 2, "max_new_tokens": 3, "seed": 0}


@pytest.fixture(scope="module")
def job_file(tmp_path_factory):
    directory = tmp_path_factory.mktemp("model_runs")
    rng = np.random.default_rng(0)
    lines = [f"{a} + {b} =\t{a + b}" for a, b in rng.integers(0, 5, (40, 2))]
    (directory / "add.tsv").write_text("\n".join(lines) + "\n")
    return directory


@pytest.fixture(scope="module")
def preset(job_file):
    return save_preset("gpt2", job_file / "presets")


def config(directory, name, **options):
    return pipeline.TrainConfig(train_file=str(directory / "add.tsv"), reward="exact_match",
                                output=str(directory / name / "model"),
                                logdir=str(directory / name / "logs"), **dict(TINY, **options))


def test_pretraining_windows_of_a_keras_hub_tokenizer_mark_padding_by_mask(preset):
    """GPT-2's id 0 is "!": padding is told by a mask, never by the id."""
    _, tokenizer = load_policy(preset)
    texts = ["1 + 2 = 3", "4 + 4 = 8 ! !"]
    inputs, targets, mask = next(iter(pipeline.pretraining_dataset(texts, tokenizer, 4, 0)))
    windows = set()
    for row_inputs, row_targets, row_mask in zip(inputs.numpy(), targets.numpy(),
                                                 mask.numpy()):
        real = row_mask > 0
        assert (row_inputs[~real] == tokenizer.pad_id).all()
        windows.add((tuple(row_inputs[real]), tuple(row_targets[real])))
    expected = {(tuple(ids), tuple(ids[1:] + [tokenizer.eos_id]))
                for ids in tokenizer.encode(texts)}
    assert windows == expected
    assert 0 in {i for ids in tokenizer.encode(texts) for i in ids}      # "!" is id 0


def test_a_lora_run_from_a_keras_hub_preset_resumes_and_exports(job_file, preset,
                                                                 monkeypatch):
    log = []
    run = config(job_file, "gpt2", model=preset, lora_rank=2, epochs=2, steps_per_epoch=1)

    def killed(*args):
        raise KeyboardInterrupt             # as if killed before the final evaluation

    with monkeypatch.context() as patch:
        patch.setattr(pipeline, "evaluate_and_export", killed)
        with pytest.raises(KeyboardInterrupt):
            pipeline.run_training(run, log=log.append)
    assert not [line for line in log if line.startswith("pre-training")]   # skipped
    assert not (job_file / "gpt2/model").exists()

    # As if killed after epoch 1 (its checkpoint then named in the state): the same
    # command restores the checkpoint into the rebuilt preset and trains epoch 2.
    state_path = job_file / "gpt2/model.checkpoint/state.json"
    state = json.loads(state_path.read_text())
    assert state["pretrain_epochs_done"] == 0 and state["finetune_epochs_done"] == 2
    state_path.write_text(json.dumps(dict(state, finetune_epochs_done=1)))
    log.clear()
    metrics = pipeline.run_training(run, log=log.append)
    assert "fine-tuning epoch 1/2" in log[0], log
    assert metrics["model"] == preset and metrics["lora_rank"] == 2
    assert np.isfinite(metrics["after"]["kl"])

    # `tfpg export` of the checkpoint rebuilds the preset and gives the same model.
    assert main(["export", str(job_file / "gpt2/model.checkpoint"), "--output",
                 str(job_file / "gpt2/copy")]) == 0
    completions = tfpg.load(str(job_file / "gpt2/model")).generate(["1 + 2 =", "3 + 4 ="])
    assert len(completions) == 2 and all(isinstance(c, str) for c in completions)
    assert tfpg.load(str(job_file / "gpt2/copy")).generate(["1 + 2 =", "3 + 4 ="]) == \
        completions


def test_a_keras_hub_preset_pre_trains_on_masked_windows(preset):
    """What `--pretrain-epochs` runs for a preset: LanguageModelTrainer on the
    (inputs, targets, mask) windows; the loss over real tokens falls."""
    import keras
    keras.utils.set_random_seed(0)
    policy, tokenizer = load_policy(preset)
    texts = [f"{a} + {b} = {a + b}" for a in range(5) for b in range(5)]
    trainer = pipeline.LanguageModelTrainer(policy)
    trainer.compile(optimizer=keras.optimizers.Adam(1e-2))
    history = trainer.fit(pipeline.pretraining_dataset(texts, tokenizer, 25, 0), epochs=3,
                          verbose=0).history
    assert history["loss"][-1] < history["loss"][0]


@pytest.mark.parametrize("options,words", [
    ({"lora_rank": 2}, ["--lora-rank needs --model"]),
    ({"model": "missing.keras"}, ["missing.keras", "not found"]),
    ({"model": "no/such/preset"}, ["--model no/such/preset: no such file or directory"]),
    ({"model": "no_such_preset"}, ["--model no_such_preset: no file or directory",
                                   "not a KerasHub preset name", "gpt2_base_en"]),
])
def test_bad_model_options_are_one_line(job_file, options, words):
    with pytest.raises(pipeline.UsageError) as error:
        pipeline.run_training(config(job_file, "bad", epochs=1, **options),
                              log=lambda *_: None)
    for word in words:
        assert word in str(error.value)
    assert "\n" not in str(error.value)
    assert not (job_file / "bad").exists()


def test_a_preset_name_that_cannot_be_downloaded_says_so():
    """Offline, a built-in preset name fails in KerasHub's download: the error says
    the name was taken for a preset and what to do (tested without a network call)."""
    from tfpg.run.model_source import _preset_error
    message = _preset_error("gpt2_base_en", ConnectionError("Max retries exceeded"), "")
    assert message.startswith("--model gpt2_base_en: a KerasHub preset name, but it could "
                              "not be downloaded (ConnectionError; offline?)")
