"""Hugging Face transformers checkpoints in (issue 21, item 1): tiny random checkpoints
written by transformers 5.25 (tests/data/hf, benchmarks/hf_fixtures.py) load as
`KerasHubPolicy`s that compute transformers' logits and greedy completions."""

import json
import os
import shutil
import sys

import keras
import numpy as np
import pytest

pytest.importorskip("keras_hub")
pytest.importorskip("tokenizers")

import tfpg  # noqa: E402
from tfpg.run import cli  # noqa: E402
from tfpg.hf import checkpoint as hf_checkpoint  # noqa: E402
from tfpg.hf.tokenizer import HFTokenizer  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from hf_reference import checkpoint, reference  # noqa: E402

FAMILIES = ["gpt2", "llama3", "qwen2", "gemma"]
# Logits within this of transformers' (float32 both sides; measured <= 8e-6).
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def policies():
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = tfpg.KerasHubPolicy.from_preset(checkpoint(name))
        return cache[name]
    return get


def max_logit_difference(policy, name):
    values = reference(name)
    logits = policy(values["batch_ids"], padding_mask=values["batch_mask"]).numpy()
    real = values["batch_mask"].astype(bool)            # left padding: real positions
    return float(np.abs(logits - values["logits"])[real].max())


# qwen3 and mistral are stored in bfloat16 (read exactly into float32).
@pytest.mark.parametrize("name", FAMILIES + ["llama3_noeot", "qwen3", "mistral"])
def test_logits_equal_transformers_on_a_left_padded_batch(policies, name):
    assert max_logit_difference(policies(name), name) < TOLERANCE


@pytest.mark.parametrize("name", FAMILIES)
def test_transformers_greedy_completions_are_the_policys_argmax(policies, name):
    """Teacher-forced: fed prompt + transformers' greedy completion, the policy's argmax
    at every step (pad and BOS never chosen, as in tfpg.generate) is the next token."""
    values = reference(name)
    policy = policies(name)
    greedy, eos = values["greedy"], policy.eos_id
    ids = np.concatenate([values["batch_ids"], greedy], axis=1)
    mask = np.concatenate([values["batch_mask"], np.ones_like(greedy)], axis=1)
    for row in range(len(greedy)):
        ended = np.flatnonzero(greedy[row] == eos)
        if ended.size:      # after EOS: padding, as transformers writes it
            mask[row, values["batch_ids"].shape[1] + ended[0] + 1:] = 0
    logits = policy(ids, padding_mask=mask).numpy()
    logits[..., list(policy.structural_ids)] = -np.inf
    steps = logits[:, values["batch_ids"].shape[1] - 1:-1].argmax(-1)      # [B, N]
    real = mask[:, values["batch_ids"].shape[1]:] > 0
    assert (steps[real] == greedy[real]).all()
    assert real.sum() > len(greedy)       # more than one step decided per prompt


def test_greedy_generate_equals_transformers(policies):
    """tfpg.generate (the decoding cache, left padding, BOS suppressed) on Llama 3."""
    values = reference("llama3")
    out = tfpg.generate(policies("llama3"), values["batch_ids"],
                        prompt_mask=values["batch_mask"], jit_compile=False,
                        max_new_tokens=values["greedy"].shape[1], sampler="greedy")
    assert out.token_ids.numpy().tolist() == values["greedy"].tolist()


def test_the_backbone_takes_the_checkpoints_values(policies):
    # What KerasHub 0.32's converters miss: Llama 3's epsilon (1e-5, not 1e-6) and its
    # "llama3" rope scaling of transformers 5's rope_parameters; GPT-2's n_inner.
    llama = policies("llama3").causal_lm.backbone.get_config()
    assert llama["layer_norm_epsilon"] == 1e-5
    assert llama["rope_max_wavelength"] == 500000.0
    assert (llama["rope_frequency_adjustment_factor"], llama["rope_low_freq_factor"],
            llama["rope_high_freq_factor"], llama["rope_pretraining_sequence_length"]) == \
        (32.0, 1.0, 4.0, 8192)
    assert policies("llama3").causal_lm.backbone.tie_word_embeddings is True
    assert policies("gpt2").causal_lm.backbone.get_config()["intermediate_dim"] == 128
    # Qwen 3's query / key norms: the checkpoint's 1e-6 (KerasHub builds 1e-5).
    attention = policies("qwen3").causal_lm.backbone.transformer_layers[0]._self_attention_layer
    assert attention._query_dense_layer_norm.epsilon == 1e-6
    gemma = policies("gemma").causal_lm.backbone.get_config()
    assert (gemma["layer_norm_epsilon"], gemma["intermediate_dim"]) == (1e-6, 2 * 96)


def test_transformers_4_configs_give_the_same_backbone():
    """transformers 4.x writes rope_theta + rope_scaling where 5 writes rope_parameters."""
    config = hf_checkpoint.read_config(checkpoint("llama3"))
    old = {k: v for k, v in config.items() if k != "rope_parameters"}
    old.update(rope_theta=500000.0, rope_scaling={
        "rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
    assert hf_checkpoint.backbone_config("old", old) == hf_checkpoint.backbone_config(
        "new", config)
    assert hf_checkpoint.backbone_config("old", dict(old, rope_scaling={
        "type": "linear", "factor": 2.0}))["rope_position_scaling_factor"] == 2.0


def test_policy_carries_the_source_config_and_tokenizer_files(policies, tmp_path):
    policy = policies("llama3")
    with open(os.path.join(checkpoint("llama3"), "config.json")) as f:
        assert policy.hf_config == json.load(f) == hf_checkpoint.read_config(
            checkpoint("llama3"))
    assert isinstance(policy.tokenizer, HFTokenizer)
    assert sorted(policy.tokenizer.hf_files) == ["chat_template.jinja",
                                                 "generation_config.json",
                                                 "tokenizer.json", "tokenizer_config.json"]
    # Special ids: the checkpoint's (Llama 3 prepends BOS; GPT-2 has none).
    assert (policy.pad_id, policy.bos_id, policy.eos_id) == (387, 380, 387)
    assert policies("gpt2").bos_id is None and policies("gpt2").structural_ids == ()
    # get_config keeps hf_config through a .keras round trip.
    path = str(tmp_path / "policy.keras")
    policy.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.hf_config == policy.hf_config
    assert (loaded.pad_id, loaded.bos_id, loaded.eos_id) == (387, 380, 387)


def test_transformers_checkpoint_is_told_from_a_keras_hub_preset(tmp_path):
    assert hf_checkpoint.is_transformers_checkpoint(checkpoint("gpt2"))
    assert not hf_checkpoint.is_transformers_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"module": "keras_hub.src.models",
                                                      "class_name": "GPT2Backbone"}))
    assert not hf_checkpoint.is_transformers_checkpoint(tmp_path)


def copy_of(tmp_path, name, **config_changes):
    directory = tmp_path / name
    shutil.copytree(checkpoint(name), directory)
    if config_changes:
        config = hf_checkpoint.read_config(directory)
        config.update(config_changes)
        (directory / "config.json").write_text(json.dumps(config))
    return directory


def test_bad_checkpoints_are_one_line(tmp_path):
    cases = [
        (copy_of(tmp_path, "gpt2", model_type="bert"), ["'bert' is not supported",
                                                       "gpt2, llama, mistral, qwen2"]),
        (copy_of(tmp_path, "gemma", rope_theta=20000.0,
                 rope_parameters={"rope_type": "default", "rope_theta": 20000.0}),
         ["rope theta 20000.0"]),
        (copy_of(tmp_path, "qwen2", rope_parameters={"rope_type": "yarn", "factor": 4.0,
                                                     "rope_theta": 1e6}),
         ["rope_type 'yarn'"]),
    ]
    no_tokenizer = copy_of(tmp_path, "llama3")
    os.remove(no_tokenizer / "tokenizer.json")
    os.rename(no_tokenizer, tmp_path / "no_tokenizer")
    cases.append((tmp_path / "no_tokenizer", ["no tokenizer.json"]))
    no_weights = copy_of(tmp_path, "llama3_noeot")
    os.remove(no_weights / "model.safetensors")
    cases.append((no_weights, ["no model.safetensors"]))
    for directory, words in cases:
        with pytest.raises(ValueError) as error:
            tfpg.KerasHubPolicy.from_preset(str(directory))
        message = str(error.value)
        assert "\n" not in message and all(w in message for w in words), message


def test_cli_model_directory_errors_are_one_line(tmp_path, capsys):
    directory = copy_of(tmp_path, "gpt2", model_type="bert")
    status = cli.main(["train", "--model", str(directory), "--task", "arithmetic",
                       "--output", str(tmp_path / "run")])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("tfpg: error:")]
    assert status == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert "'bert' is not supported" in lines[0]
