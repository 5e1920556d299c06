"""`tfpg.export_transformers` (issue 21, item 4): a KerasHub policy back out as a
transformers checkpoint or PEFT adapters, checked without torch: the written
safetensors against the source checkpoint's tensors and against LoRA computed by hand
(numpy einsums of Keras' `W + (alpha / r) * A @ B`), PEFT's key names / shapes /
config, the source's config and tokenizer files byte for byte, atomic writes and
one-line errors. The live round trip through transformers and PEFT is
`benchmarks/hf_export_check.py`."""

import json
import os

import numpy as np
import pytest

from cli_batch import assert_usage_error, run_cli_cases

pytest.importorskip("keras_hub")

import tfpg  # noqa: E402
from keras_hub_models import build_causal_lm  # noqa: E402
from tfpg.hf.export import export_transformers  # noqa: E402
from tfpg.hf.safetensors import (SafetensorsReader, read_file, read_header,  # noqa: E402
                                  write_file)

FIXTURES = os.path.join(os.path.dirname(__file__), "data", "hf")
RANK = 2


def _lora_policy(family):
    """A tiny LoRA policy whose adapters are non-zero (B starts at zero in Keras)."""
    policy = tfpg.KerasHubPolicy(build_causal_lm(family), lora_rank=RANK)
    rng = np.random.default_rng(0)
    for layer in policy.lora_layers():
        layer.lora_kernel_b.assign(rng.normal(size=layer.lora_kernel_b.shape).astype("float32"))
    return policy


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    policy = _lora_policy("gpt2")
    root = tmp_path_factory.mktemp("gpt2")
    export_transformers(policy, root / "merged")
    export_transformers(policy, root / "peft", merge_lora=False, format="peft",
                        base_model_name_or_path="/models/base")
    export_transformers(policy, root / "base", merge_lora=False)
    return policy, root


@pytest.fixture(scope="module")
def llama3(tmp_path_factory):
    policy = _lora_policy("llama3")
    root = tmp_path_factory.mktemp("llama3")
    export_transformers(policy, root / "merged")
    export_transformers(policy, root / "peft", merge_lora=False, format="peft")
    export_transformers(policy, root / "base", merge_lora=False)
    return policy, root


def _blocks(policy, family):
    backbone = policy.causal_lm.backbone
    return [backbone.get_layer(f"transformer_layer_{i}")._self_attention_layer
            for i in range(backbone.num_layers)]


def _numpy(variable):
    return np.asarray(variable.numpy(), dtype=np.float32)


def _scale(layer):
    return layer.lora_alpha / layer.lora_rank


def test_llama_merged_weights_are_base_plus_scaled_lora(llama3):
    policy, root = llama3
    merged = read_file(root / "merged" / "model.safetensors")
    base = read_file(root / "base" / "model.safetensors")
    for i, attention in enumerate(_blocks(policy, "llama3")):
        for name, layer in (("q_proj", attention._query_dense),
                            ("v_proj", attention._value_dense)):
            kernel = _numpy(layer._kernel)                               # [m, u, h]
            a, b = _numpy(layer.lora_kernel_a), _numpy(layer.lora_kernel_b)  # [m, u, r], [r, h]
            want = kernel + _scale(layer) * np.einsum("mur,rh->muh", a, b)
            hidden = kernel.shape[0]
            want = want.reshape(hidden, -1).T                            # torch [u * h, m]
            key = f"model.layers.{i}.self_attn.{name}.weight"
            np.testing.assert_allclose(merged[key], want, rtol=0, atol=1e-6)
            np.testing.assert_array_equal(base[key], kernel.reshape(hidden, -1).T)
        # Untouched by LoRA: the same in both, and the pre-trained key projection.
        key = f"model.layers.{i}.self_attn.k_proj.weight"
        k = _numpy(attention._key_dense.kernel)
        np.testing.assert_array_equal(merged[key], k.reshape(k.shape[0], -1).T)
    assert not np.array_equal(merged["model.layers.0.self_attn.q_proj.weight"],
                              base["model.layers.0.self_attn.q_proj.weight"])
    embedding = policy.causal_lm.backbone.token_embedding
    assert not embedding.tie_weights            # KerasHub's Llama 3 default: an own head
    np.testing.assert_array_equal(merged["lm_head.weight"],
                                  _numpy(embedding.reverse_embeddings).T)
    np.testing.assert_array_equal(merged["model.embed_tokens.weight"],
                                  _numpy(embedding.embeddings))


def test_gpt2_fused_qkv_merge_and_peft_layout(gpt2):
    policy, root = gpt2
    merged = read_file(root / "merged" / "model.safetensors")
    # Tied output embedding: transformers ties lm_head itself and never saves it.
    assert "lm_head.weight" not in merged
    adapters = read_file(root / "peft" / "adapter_model.safetensors")
    config = json.loads((root / "peft" / "adapter_config.json").read_text())
    hidden = policy.causal_lm.backbone.hidden_dim
    heads = 2
    r_peft = 2 * heads * RANK              # query's and value's, one A per head each
    assert config["r"] == config["lora_alpha"] == r_peft
    assert config["target_modules"] == ["c_attn"] and config["fan_in_fan_out"] is True
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM"
    assert config["base_model_name_or_path"] == "/models/base"
    assert sorted(adapters) == sorted(
        f"base_model.model.transformer.h.{i}.attn.c_attn.lora_{ab}.weight"
        for i in range(2) for ab in "AB")
    for i, attention in enumerate(_blocks(policy, "gpt2")):
        prefix = f"base_model.model.transformer.h.{i}.attn.c_attn."
        lora_a, lora_b = adapters[prefix + "lora_A.weight"], adapters[prefix + "lora_B.weight"]
        assert lora_a.shape == (r_peft, hidden) and lora_b.shape == (3 * hidden, r_peft)
        # Conv1D weight [in, 3 * hidden]: query columns first, value last, key untouched.
        delta = np.zeros((hidden, 3 * hidden), np.float32)
        for column, layer in ((0, attention._query_dense), (2 * hidden, attention._value_dense)):
            a, b = _numpy(layer.lora_kernel_a), _numpy(layer.lora_kernel_b)
            delta[:, column:column + hidden] = _scale(layer) * np.einsum(
                "cdr,re->cde", a, b).reshape(hidden, hidden)
        np.testing.assert_allclose((lora_b @ lora_a).T, delta, rtol=0, atol=1e-6)
        kernels = [_numpy(layer._kernel).reshape(hidden, hidden) for layer in (
            attention._query_dense, attention._key_dense, attention._value_dense)]
        np.testing.assert_allclose(merged[f"transformer.h.{i}.attn.c_attn.weight"],
                                   np.concatenate(kernels, axis=1) + delta, rtol=0, atol=1e-6)


def test_llama_peft_layout_is_the_merged_update(llama3):
    policy, root = llama3
    adapters = read_file(root / "peft" / "adapter_model.safetensors")
    config = json.loads((root / "peft" / "adapter_config.json").read_text())
    merged = read_file(root / "merged" / "model.safetensors")
    base = read_file(root / "base" / "model.safetensors")
    # 2 query heads (rank 2 * r), 1 key-value head (r, zero-padded to one rank).
    assert config["r"] == config["lora_alpha"] == 2 * RANK
    assert config["target_modules"] == ["q_proj", "v_proj"]
    assert config["fan_in_fan_out"] is False and config["base_model_name_or_path"] is None
    assert sorted(os.listdir(root / "peft")) == [
        "adapter_config.json", "adapter_model.safetensors", "tfpg_export.json"]
    for i in range(2):
        for name in ("q_proj", "v_proj"):
            prefix = f"base_model.model.model.layers.{i}.self_attn.{name}."
            lora_a, lora_b = adapters[prefix + "lora_A.weight"], adapters[prefix + "lora_B.weight"]
            key = f"model.layers.{i}.self_attn.{name}.weight"
            assert lora_a.shape == (2 * RANK, 16) and lora_b.shape == (base[key].shape[0], 2 * RANK)
            assert lora_a.dtype == np.float32
            np.testing.assert_allclose(base[key] + lora_b @ lora_a, merged[key], rtol=0,
                                       atol=1e-6)
    assert read_header(root / "peft" / "adapter_model.safetensors")["__metadata__"] == {
        "format": "pt"}


def test_keras_hub_built_config_and_tokenizer(llama3):
    policy, root = llama3
    config = json.loads((root / "merged" / "config.json").read_text())
    backbone = policy.causal_lm.backbone
    assert config["model_type"] == "llama" and config["dtype"] == "float32"
    assert config["num_key_value_heads"] == 1 and config["hidden_size"] == 16
    assert config["rms_norm_eps"] == backbone.layer_norm_epsilon
    assert config["tie_word_embeddings"] is False       # an own lm_head, written
    assert (config["bos_token_id"], config["eos_token_id"]) == (policy.bos_id, policy.eos_id)
    generation = json.loads((root / "merged" / "generation_config.json").read_text())
    assert (generation["bos_token_id"], generation["eos_token_id"]) == (
        policy.bos_id, policy.eos_id)
    tokenizer = json.loads((root / "merged" / "tokenizer.json").read_text())
    assert "<|eot_id|>" in tokenizer["model"]["vocab"]       # KerasHub's tokenizer export
    marker = json.loads((root / "merged" / "tfpg_export.json").read_text())
    assert marker["format"] == "tfpg.transformers" and "model.safetensors" in marker["manifest"]


def test_every_family_writes_transformers_names(tmp_path):
    """Gemma (2): every key-value head (KerasHub's map keeps the first only) and the four
    norms; Qwen 3: per-head query / key norms; bfloat16 weights stay bfloat16."""
    import keras_hub
    backbone = keras_hub.models.GemmaBackbone(
        vocabulary_size=64, num_layers=2, num_query_heads=2, num_key_value_heads=2,
        hidden_dim=16, intermediate_dim=32, head_dim=8, final_logit_soft_cap=30.0,
        attention_logit_soft_cap=50.0, use_post_ffw_norm=True, use_post_attention_norm=True,
        use_sliding_window_attention=True, sliding_window_size=4)
    gemma = tfpg.KerasHubPolicy(keras_hub.models.GemmaCausalLM(backbone, preprocessor=None),
                                pad_id=0, bos_id=2, eos_id=1)
    export_transformers(gemma, tmp_path / "gemma")
    weights = read_file(tmp_path / "gemma" / "model.safetensors")
    block = gemma.causal_lm.backbone.get_layer("decoder_block_1")
    value = _numpy(block.attention.value_dense.kernel)                 # [k, d, h]
    np.testing.assert_array_equal(weights["model.layers.1.self_attn.v_proj.weight"],
                                  np.transpose(value, (0, 2, 1)).reshape(-1, value.shape[1]))
    for name, norm in (("post_attention_layernorm", block.post_attention_norm),
                       ("pre_feedforward_layernorm", block.pre_ffw_norm),
                       ("post_feedforward_layernorm", block.post_ffw_norm)):
        np.testing.assert_array_equal(weights[f"model.layers.1.{name}.weight"],
                                      _numpy(norm.scale))
    config = json.loads((tmp_path / "gemma" / "config.json").read_text())
    assert config["model_type"] == "gemma2" and config["final_logit_softcapping"] == 30.0

    qwen3 = tfpg.KerasHubPolicy(build_causal_lm("qwen3", dtype="bfloat16"))
    tensors = tfpg.hf.export.checkpoint_weights(qwen3)
    attention = qwen3.causal_lm.backbone.get_layer("transformer_layer_0")._self_attention_layer
    assert tensors["model.layers.0.self_attn.q_norm.weight"].dtype.name == "bfloat16"
    np.testing.assert_array_equal(
        tensors["model.layers.0.self_attn.k_norm.weight"].astype(np.float32),
        _numpy(attention._key_dense_layer_norm.scale))
    assert "model.layers.0.self_attn.q_proj.bias" not in tensors


# ------------------------------------------------------------ fixture checkpoints


def _fixture_policy(family, **options):
    try:
        return tfpg.KerasHubPolicy.from_preset(os.path.join(FIXTURES, family), **options)
    except ImportError as error:        # loading transformers directories: item 1
        pytest.skip(f"cannot load {family}: {error}")


@pytest.mark.parametrize("family, dtype", [("gpt2", None), ("llama3", None), ("qwen2", None),
                                           ("gemma", None), ("qwen2_bf16", "bfloat16")])
def test_untrained_fixture_round_trip_is_the_source(tmp_path, family, dtype):
    """An untrained policy from a transformers directory writes that directory back:
    the same tensors bit for bit (so transformers computes the same logits), the same
    config values, the tokenizer files byte for byte."""
    source = os.path.join(FIXTURES, family)
    policy = _fixture_policy(family, **({"dtype": dtype} if dtype else {}))
    export_transformers(policy, tmp_path / "out")
    want = read_header(os.path.join(source, "model.safetensors"))
    got = read_header(tmp_path / "out" / "model.safetensors")
    assert {k: (v["dtype"], v["shape"]) for k, v in got.items() if k != "__metadata__"} == {
        k: (v["dtype"], v["shape"]) for k, v in want.items() if k != "__metadata__"}
    source_tensors = read_file(os.path.join(source, "model.safetensors"))
    for key, value in read_file(tmp_path / "out" / "model.safetensors").items():
        assert value.tobytes() == source_tensors[key].tobytes(), key
    with open(os.path.join(source, "config.json")) as f:
        assert json.loads((tmp_path / "out" / "config.json").read_text()) == json.load(f)
    for name in os.listdir(source):
        if name not in ("model.safetensors", "config.json", "reference.npz"):
            with open(os.path.join(source, name), "rb") as f:
                assert (tmp_path / "out" / name).read_bytes() == f.read(), name


# ------------------------------------------------------------ atomicity, errors


def test_failed_export_leaves_the_previous_one(llama3, tmp_path, monkeypatch):
    policy, _ = llama3
    target = tmp_path / "out"
    export_transformers(policy, target, merge_lora=False)
    before = {name: (target / name).read_bytes() for name in os.listdir(target)}

    def fail(*args):
        raise OSError("disk full (simulated)")
    # After model.safetensors and config.json are in the temporary directory.
    monkeypatch.setattr(tfpg.hf.export, "_write_tokenizer_files", fail)
    with pytest.raises(OSError, match="simulated"):
        export_transformers(policy, target)
    assert {name: (target / name).read_bytes() for name in os.listdir(target)} == before
    assert sorted(os.listdir(tmp_path)) == ["out"]                  # no temporary left
    with pytest.raises(OSError, match="simulated"):
        export_transformers(policy, tmp_path / "new")
    assert sorted(os.listdir(tmp_path)) == ["out"]                  # nothing half-written


def test_one_line_errors(llama3, gpt2, tmp_path):
    lora, _ = llama3
    plain = tfpg.KerasHubPolicy(lora.causal_lm)                     # same weights, no LoRA
    cases = [
        (dict(policy=lora, format="peft"), "merge_lora=False"),
        (dict(policy=plain, format="peft", merge_lora=False), "needs a LoRA policy"),
        (dict(policy=lora, format="onnx"), "format must be one of transformers, peft"),
        (dict(policy=lora, merge_lora="yes"), "merge_lora must be True or False"),
        (dict(policy=tfpg.PolicyNetwork(8, 4, 4), format="transformers"), "KerasHubPolicy"),
    ]
    for options, words in cases:
        with pytest.raises(ValueError, match=words) as error:
            export_transformers(directory=tmp_path / "x", **options)
        assert "\n" not in str(error.value)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(ValueError, match="not a tfpg export; refusing to replace it"):
        export_transformers(lora, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    assert sorted(os.listdir(tmp_path)) == ["mine"]


def test_cli_export_format_checks_before_tensorflow(tmp_path):
    results = run_cli_cases([
        (["export", "run.checkpoint", "--output", "out", "--format", "onnx"], tmp_path),
        (["train", "--model", "gpt2_base_en", "--export-format", "peft"], tmp_path),
        (["train", "--export-format", "transformers"], tmp_path),
        (["train", "--model", "p.keras", "--export-format", "transformers"], tmp_path),
    ])
    assert_usage_error(results[0], "--format", "onnx")
    assert_usage_error(results[1], "peft", "--lora-rank")
    assert_usage_error(results[2], "transformers", "KerasHub --model")
    assert_usage_error(results[3], "transformers", "KerasHub --model")
    assert os.listdir(tmp_path) == []


def test_the_safetensors_module_reads_what_it_writes(tmp_path):
    """One module writes and reads the format: `read_file` gives every dtype back as
    written; `SafetensorsReader` reads the file as a checkpoint directory, bfloat16
    widened to float32 exactly; a dtype tfpg cannot read is a one-line error."""
    import ml_dtypes
    tensors = {"w": np.array([[1.5, -2.25], [0.0, 3.0]], ml_dtypes.bfloat16),
               "ids": np.arange(3, dtype=np.int64), "h": np.array([0.1], np.float16)}
    write_file(tmp_path / "model.safetensors", tensors, metadata={"format": "pt"})
    back = read_file(tmp_path / "model.safetensors")
    assert {name: (a.dtype, a.tolist()) for name, a in back.items()} == \
        {name: (a.dtype, a.tolist()) for name, a in tensors.items()}
    assert read_header(tmp_path / "model.safetensors")["__metadata__"] == {"format": "pt"}
    reader = SafetensorsReader(str(tmp_path))
    assert sorted(reader.keys()) == ["h", "ids", "w"] and reader.dtypes() == {"BF16", "F16",
                                                                              "I64"}
    widened = reader.get_tensor("w")
    assert widened.dtype == np.float32 and widened.tolist() == [[1.5, -2.25], [0.0, 3.0]]
    header = json.dumps({"x": {"dtype": "F8_E4M3", "shape": [1], "data_offsets": [0, 1]}})
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "model.safetensors").write_bytes(
        len(header).to_bytes(8, "little") + header.encode() + b"\0")
    with pytest.raises(ValueError, match="tensor x has dtype F8_E4M3, which tfpg cannot read"):
        SafetensorsReader(str(tmp_path / "odd")).get_tensor("x")
