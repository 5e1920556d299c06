"""`export_transformers`: a `KerasHubPolicy` back out as a Hugging Face checkpoint or
as PEFT LoRA adapters.

`format="transformers"` writes what `AutoModelForCausalLM.from_pretrained(DIR)` and
vLLM read:

* `model.safetensors`: every weight under transformers' name and layout, in the
  policy's dtype (its variables' dtype: float32, bfloat16, ...). The names and
  layouts are KerasHub's own Transformers export maps,
  completed where they fall short: Gemma's key / value projections with more than
  one key-value head, Gemma 2's four norms, Qwen 3's query / key norms. A tied
  output embedding is not written twice (transformers ties `lm_head` itself).
  LoRA (`merge_lora=True`) is merged in float32 as Keras computes it,
  `W + (lora_alpha / rank) * A @ B`, then rounded once to the policy's dtype;
  `merge_lora=False` writes the pre-trained weights (the base of `format="peft"`).
* `config.json`: the source checkpoint's own config (`policy.hf_config`, kept by
  `KerasHubPolicy.from_preset(DIR)` of a transformers directory), so the values
  KerasHub does not model (epsilons, `max_position_embeddings`, rope scaling, token
  ids) go back out unchanged; only the dtype is the policy's. A policy built in
  KerasHub gets KerasHub's `export_to_transformers` config, completed as above.
* `generation_config.json` and the tokenizer files (`tokenizer.json`,
  `tokenizer_config.json`, `special_tokens_map.json`, `chat_template.jinja`, ...):
  the source's files byte for byte (`tokenizer.hf_files`), and for SentencePiece
  families the `tokenizer.model` the tokenizer encodes with (`sentencepiece_proto`:
  the checkpoint's own where it had one); without them what KerasHub's tokenizer
  export writes.

`format="peft"` (with `merge_lora=False`, on a LoRA policy) writes only the adapters,
as `PeftModel.save_pretrained` does: `adapter_model.safetensors` with the keys
`base_model.model.<module>.lora_A.weight` [r, in] and `.lora_B.weight` [out, r], and
`adapter_config.json` (`peft_type` LORA, `task_type` CAUSAL_LM, `r`, `lora_alpha`,
`target_modules`, `base_model_name_or_path`). Keras' LoRA on an attention projection
with kernel [hidden, heads, head_dim] has one A [hidden, r] per head and one B
[r, head_dim] shared by the heads, so as a LoRA of the [heads * head_dim, hidden]
torch weight it has rank `heads * r`: lora_A stacks the heads' A, lora_B is block
diagonal in B. GPT-2's query, key and value are one fused `c_attn` (a Conv1D,
`fan_in_fan_out`): its adapter stacks the query's and value's. Every module is padded
with zeros to one rank `r`, Keras' scale `lora_alpha / rank` is folded into lora_B and
`lora_alpha = r` (PEFT's scale 1): the adapters compute exactly the policy's update,
and one `r` / `lora_alpha` is what vLLM's LoRA serving takes.

Both are atomic like every tfpg export (`tfpg.export.write_directory`: a temporary
sibling renamed into place under the output's lock, `tfpg_export.json` naming it).
"""

import json
import os

import numpy as np

__all__ = ["export_transformers", "FORMATS"]

FORMATS = ("transformers", "peft")
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
SENTENCEPIECE_FILE = "tokenizer.model"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
ADAPTER_CONFIG_FILE = "adapter_config.json"
MARKER_FORMATS = {"transformers": "tfpg.transformers", "peft": "tfpg.peft"}
_SAFETENSORS_METADATA = {"format": "pt"}   # what transformers expects in the header


def export_transformers(policy, directory, tokenizer=None, merge_lora=True,
                        format="transformers", base_model_name_or_path=None):
    """Writes `policy` as a Hugging Face transformers checkpoint, or its LoRA adapters
    in PEFT's layout.

    Args:
        policy: `tfpg.KerasHubPolicy`. The policy (GPT-2, Gemma 1 / 2 / 3 text,
            Llama 3, Mistral, Qwen 2 / 3).
        directory: str or os.PathLike. The output directory; replaced atomically if
            it is a previous tfpg export, refused if it is any other non-empty
            directory.
        tokenizer: `tfpg.hf.tokenizer.HFTokenizer` or None. The policy's tokenizer
            (default `policy.tokenizer`); its `hf_files` (the source checkpoint's
            tokenizer files) are copied unchanged.
        merge_lora: bool. For a LoRA policy, True writes the weights with the
            adapters merged; False the pre-trained weights (`format="transformers"`)
            or the adapters alone (`format="peft"`, which requires it).
        format: `"transformers"` or `"peft"`. A full checkpoint or the LoRA adapters.
        base_model_name_or_path: str or None. Written to `adapter_config.json`
            (`peft`): the base checkpoint the adapters apply to (default: the
            directory the policy was loaded from, when known).

    Returns:
        `directory`.

    Example:
    >>> policy = tfpg.KerasHubPolicy.from_preset("hf/Qwen2.5-0.5B", lora_rank=8)  # doctest: +SKIP
    >>> tfpg.export_transformers(policy, "out/merged")  # doctest: +SKIP
    'out/merged'
    >>> # LoRA adapters alone:
    >>> tfpg.export_transformers(policy, "out/adapters", merge_lora=False,  # doctest: +SKIP
    ...                          format="peft")
    """
    _check_arguments(policy, format, merge_lora)
    from tfpg import __version__
    from tfpg.export import METADATA_FILE, check_replaceable, make_parent, write_directory
    directory = os.path.normpath(os.fspath(directory))
    kind = "tfpg export"
    check_replaceable(directory, METADATA_FILE, kind)      # before anything is made
    tokenizer = tokenizer if tokenizer is not None else policy.tokenizer
    spec = _spec_of(policy)
    if format == "peft":
        base = base_model_name_or_path or _source_directory(policy)
        tensors, config = peft_adapters(policy, spec, base)

        def write(tmp):
            os.makedirs(tmp)
            _write_safetensors(os.path.join(tmp, ADAPTER_WEIGHTS_FILE), tensors)
            _write_json(os.path.join(tmp, ADAPTER_CONFIG_FILE), config)
    else:
        tensors = checkpoint_weights(policy, spec, merge_lora=merge_lora)
        config = checkpoint_config(policy, spec, tokenizer)

        def write(tmp):
            os.makedirs(tmp)
            _write_safetensors(os.path.join(tmp, WEIGHTS_FILE), tensors)
            _write_json(os.path.join(tmp, CONFIG_FILE), config)
            _write_tokenizer_files(tmp, tokenizer, config)

    make_parent(directory)
    return write_directory(directory, write, METADATA_FILE, {
        "format": MARKER_FORMATS[format], "version": 1, "tfpg_version": __version__,
        "merge_lora": bool(merge_lora),
        "lora_rank": getattr(policy, "lora_rank", None)}, kind=kind)


# ------------------------------------------------------------------- checks


def _check_arguments(policy, format, merge_lora):
    """One-line ValueErrors before anything is computed or written."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    if not isinstance(merge_lora, bool):
        raise ValueError(f"merge_lora must be True or False, got {merge_lora!r}")
    from tfpg.models import KerasHubPolicy
    if not isinstance(policy, KerasHubPolicy):
        raise ValueError(f"export_transformers takes a tfpg.KerasHubPolicy, got "
                         f"{type(policy).__name__}; tfpg's own PolicyNetwork has no "
                         "transformers equivalent (use tfpg.export_saved_model)")
    if format == "peft":
        if merge_lora:
            raise ValueError("format='peft' writes the LoRA adapters alone: pass "
                             "merge_lora=False (merge_lora=True is format='transformers')")
        if policy.lora_rank is None:
            raise ValueError("format='peft' needs a LoRA policy (lora_rank=N); this "
                             "policy trains every weight: use format='transformers'")


def _source_directory(policy):
    """The transformers directory the policy was loaded from, when it says."""
    for name in ("hf_source", "preset"):
        value = getattr(policy, name, None)
        if isinstance(value, str) and os.path.isdir(value):
            return os.path.abspath(value)
    return None


# ------------------------------------------------------------------ families


class _Projection:
    """Where one attention projection's kernel goes in the transformers checkpoint."""

    def __init__(self, layer, key, module, column=None):
        self.layer = layer          # the Keras EinsumDense / Dense
        self.key = key              # its transformers weight, e.g. "...q_proj.weight"
        self.module = module        # the torch module PEFT targets ("q_proj", "c_attn")
        # GPT-2's fused c_attn (a Conv1D, weight [in, 3 * hidden]): the first column of
        # this projection; None for an nn.Linear of its own (weight [out, in]).
        self.column = column


class _Family:
    """What differs between the families in their transformers export."""

    def __init__(self, model_type, weights, config, projections):
        self.model_type = model_type
        self.weights = weights              # backbone -> {key: tensor} (no LoRA)
        self.config = config                # backbone -> transformers config dict
        self.projections = projections      # backbone -> [_Projection] (q, k, v)


def _hub_export(module, function):
    import importlib
    return getattr(importlib.import_module(
        f"keras_hub.src.utils.transformers.export.{module}"), function)


def _layers(backbone, name):
    return [backbone.get_layer(f"{name}_{i}") for i in range(backbone.num_layers)]


def _gpt2_projections(backbone):
    hidden = backbone.hidden_dim
    projections = []
    for i, block in enumerate(_layers(backbone, "transformer_layer")):
        attention = block._self_attention_layer
        for j, layer in enumerate((attention._query_dense, attention._key_dense,
                                   attention._value_dense)):
            projections.append(_Projection(layer, f"transformer.h.{i}.attn.c_attn.weight",
                                           "c_attn", column=j * hidden))
    return projections


def _qkv_projections(block_name, attention_name, dense_names):
    """The q / k / v projections of a decoder family whose blocks are the backbone's
    `block_name` layers, with attention `attention_name` holding `dense_names`."""
    def projections(backbone):
        found = []
        for i, block in enumerate(_layers(backbone, block_name)):
            attention = getattr(block, attention_name)
            for name, dense in zip(("q_proj", "k_proj", "v_proj"), dense_names):
                found.append(_Projection(getattr(attention, dense),
                                         f"model.layers.{i}.self_attn.{name}.weight", name))
        return found
    return projections


_decoder_projections = _qkv_projections(                  # Llama, Mistral, Qwen
    "transformer_layer", "_self_attention_layer", ("_query_dense", "_key_dense",
                                                   "_value_dense"))
_gemma_projections = _qkv_projections(
    "decoder_block", "attention", ("query_dense", "key_dense", "value_dense"))


def _qwen3_weights(backbone, include_lm_head=True):
    """Llama 3's map (no biases) and Qwen 3's per-head query / key RMS norms."""
    weights = _hub_export("llama3", "get_llama3_weights_map")(backbone, include_lm_head)
    for i, block in enumerate(_layers(backbone, "transformer_layer")):
        attention = block._self_attention_layer
        weights[f"model.layers.{i}.self_attn.q_norm.weight"] = (
            attention._query_dense_layer_norm.scale)
        weights[f"model.layers.{i}.self_attn.k_norm.weight"] = (
            attention._key_dense_layer_norm.scale)
    return weights


def _gemma_weights(backbone, include_lm_head=True):
    """KerasHub's Gemma map with the key / value projections of every key-value head
    (KerasHub's keeps the first head's only) and Gemma 2's norms."""
    weights = _hub_export("gemma", "get_gemma_weights_map")(backbone, include_lm_head)
    for projection in _gemma_projections(backbone):
        weights[projection.key] = torch_layout(projection.layer, projection.layer._kernel)
    for i, block in enumerate(_layers(backbone, "decoder_block")):
        prefix = f"model.layers.{i}."
        if block.use_post_attention_norm != block.use_post_ffw_norm:
            raise ValueError("a Gemma backbone with only one of use_post_attention_norm / "
                             "use_post_ffw_norm has no transformers equivalent")
        if block.use_post_attention_norm:          # Gemma 2
            weights[prefix + "post_attention_layernorm.weight"] = (
                block.post_attention_norm.scale)
            weights[prefix + "pre_feedforward_layernorm.weight"] = block.pre_ffw_norm.scale
            weights[prefix + "post_feedforward_layernorm.weight"] = block.post_ffw_norm.scale
    return weights


def _gemma_config(backbone):
    config = _hub_export("gemma", "get_gemma_config")(backbone)
    config.update(architectures=["GemmaForCausalLM"], rms_norm_eps=backbone.layer_norm_epsilon,
                  hidden_activation="gelu_pytorch_tanh")
    if backbone.use_post_attention_norm:
        config.update(
            model_type="gemma2", architectures=["Gemma2ForCausalLM"],
            query_pre_attn_scalar=(backbone.head_dim if backbone.query_head_dim_normalize
                                   else backbone.hidden_dim // backbone.num_query_heads),
            final_logit_softcapping=backbone.final_logit_soft_cap,
            attn_logit_softcapping=backbone.attention_logit_soft_cap,
            sliding_window=backbone.sliding_window_size)
    return config


def _qwen3_config(backbone):
    config = _hub_export("qwen", "get_qwen_config")(backbone)
    config.update(model_type="qwen3", architectures=["Qwen3ForCausalLM"],
                  head_dim=backbone.head_dim, attention_bias=False)
    return config


def _hub_family(module, model_type, projections, weights=None, config=None):
    return _Family(model_type,
                   weights or _hub_export(module, f"get_{module}_weights_map"),
                   config or _hub_export(module, f"get_{module}_config"), projections)


def _families():
    """{KerasHub backbone class name: _Family}, as in tfpg's `FAMILIES`."""
    return {
        "GPT2Backbone": _hub_family("gpt2", "gpt2", _gpt2_projections),
        "GemmaBackbone": _hub_family("gemma", "gemma", _gemma_projections,
                                     weights=_gemma_weights, config=_gemma_config),
        "Gemma3Backbone": _hub_family("gemma3", "gemma3_text", _gemma_projections),
        "LlamaBackbone": _hub_family("llama3", "llama", _decoder_projections),
        "MistralBackbone": _hub_family("mistral", "mistral", _decoder_projections),
        "QwenBackbone": _hub_family("qwen", "qwen2", _decoder_projections),
        "Qwen3Backbone": _hub_family("qwen", "qwen3", _decoder_projections,
                                     weights=_qwen3_weights, config=_qwen3_config),
    }


def _spec_of(policy):
    from tfpg.models.keras_hub_backbone import family_of
    family = family_of(policy.causal_lm.backbone)        # the supported ones, or one line
    return _families()[family.backbone_class]


# ------------------------------------------------------------------- layouts


def _input_axis(layer):
    """The axis of `layer`'s kernel that the input's features contract with."""
    equation = getattr(layer, "equation", None)
    if equation is None:                    # a Dense: kernel [in, out]
        return 0
    inputs, output = equation.split("->")
    kernel_spec = inputs.split(",")[1]
    (contracted,) = [c for c in kernel_spec if c not in output]
    return kernel_spec.index(contracted)


def torch_layout(layer, kernel):
    """A projection's Keras kernel (e.g. [hidden, heads, head_dim]) as the torch
    nn.Linear weight [out, in]: output axes in order (heads-major), input last."""
    kernel = _to_numpy(kernel)
    axis = _input_axis(layer)
    return np.moveaxis(kernel, axis, -1).reshape(-1, kernel.shape[axis])


def lora_factors(layer):
    """The LoRA of `layer` as PEFT factors of its torch weight [out, in]:
    (lora_A [O * r, in], lora_B [out, O * r]) in float32, with Keras' scale
    `lora_alpha / rank` folded into lora_B, so that lora_B @ lora_A is
    `torch_layout(scale * A @ B)` exactly (O: the kernel's output axes before the
    last, e.g. the heads, each of which has its own A)."""
    a = _to_numpy(layer.lora_kernel_a).astype(np.float32)       # [*P, r]
    b = _to_numpy(layer.lora_kernel_b).astype(np.float32)       # [r, last]
    rank = a.shape[-1]
    axis = _input_axis(layer)
    a = np.moveaxis(a, axis, -2)                                # [*O, in, r]
    inputs = a.shape[-2]
    a = a.reshape(-1, inputs, rank)                             # [O, in, r]
    groups = a.shape[0]
    lora_a = np.transpose(a, (0, 2, 1)).reshape(groups * rank, inputs)   # [O * r, in]
    scale = np.float32(layer.lora_alpha / layer.lora_rank)
    lora_b = np.kron(np.eye(groups, dtype=np.float32), b.T) * scale      # [O * last, O * r]
    return lora_a, lora_b.astype(np.float32)


def lora_delta(layer):
    """The merged update of `layer`'s LoRA as Keras computes it,
    `(lora_alpha / rank) * A @ B` in float32, in the torch layout [out, in]."""
    a = _to_numpy(layer.lora_kernel_a).astype(np.float32)
    b = _to_numpy(layer.lora_kernel_b).astype(np.float32)
    scale = np.float32(layer.lora_alpha / layer.lora_rank)
    return torch_layout(layer, scale * np.matmul(a, b))


def _to_numpy(value):
    import keras
    return np.asarray(keras.ops.convert_to_numpy(value))


# ------------------------------------------------------------------- weights


def _weight_dtype(policy):
    """The dtype the checkpoint is written in: the policy's variables' dtype."""
    return policy.causal_lm.backbone.dtype_policy.variable_dtype


def _lora_projections(policy, spec):
    """[(_Projection, layer)] of the policy's LoRA layers; a LoRA layer that is not an
    attention projection tfpg knows is refused in one line."""
    projections = {id(p.layer): p for p in spec.projections(policy.causal_lm.backbone)}
    found = []
    for layer in policy.lora_layers():
        if id(layer) not in projections:
            raise ValueError(f"LoRA on {layer.path} cannot be exported: tfpg exports LoRA "
                             "on the attention's query / key / value projections")
        found.append(projections[id(layer)])
    return found


def checkpoint_weights(policy, spec=None, merge_lora=True):
    """{transformers key: numpy array} of the policy, in the policy's dtype.

    Args:
        policy: a `KerasHubPolicy`.
        spec: its family (found from the backbone when None).
        merge_lora: add the LoRA updates (float32, then one rounding) or not.
    """
    import contextlib
    spec = spec or _spec_of(policy)
    backbone = policy.causal_lm.backbone
    lora = policy.lora_rank is not None
    # The maps read `.kernel`, which merges LoRA in the compute dtype: read the
    # pre-trained kernels, and merge here in float32.
    with policy.adapters_disabled() if lora else contextlib.nullcontext():
        weights = {key: _to_numpy(value)
                   for key, value in spec.weights(backbone, include_lm_head=True).items()}
    weights = {key: value.astype(np.float32) if value.dtype.kind == "f" else value
               for key, value in weights.items()}
    if backbone.token_embedding.tie_weights:
        # transformers ties lm_head to the embedding itself and never saves it.
        weights.pop("lm_head.weight", None)
    if lora and merge_lora:
        for projection in _lora_projections(policy, spec):
            delta = lora_delta(projection.layer)                     # [out, in]
            if projection.column is None:
                weights[projection.key] = weights[projection.key] + delta
            else:                                                    # Conv1D [in, out]
                columns = slice(projection.column, projection.column + delta.shape[0])
                weights[projection.key] = weights[projection.key].copy()
                weights[projection.key][:, columns] += delta.T
    dtype = _numpy_dtype(_weight_dtype(policy))
    return {key: np.ascontiguousarray(value.astype(dtype) if value.dtype.kind == "f"
                                      else value)
            for key, value in weights.items()}


def peft_adapters(policy, spec=None, base_model_name_or_path=None):
    """(tensors, adapter_config) of the policy's LoRA in PEFT's layout (module doc)."""
    spec = spec or _spec_of(policy)
    modules = {}            # torch module path -> (lora_A parts, lora_B placement)
    rows = {}               # torch module path -> out features (fused c_attn: 3 * hidden)
    for projection in _lora_projections(policy, spec):
        lora_a, lora_b = lora_factors(projection.layer)
        module = projection.key[: -len(".weight")]
        modules.setdefault(module, []).append((projection, lora_a, lora_b))
        out = lora_b.shape[0]
        rows[module] = 3 * out if projection.column is not None else out
    rank = 0
    factors = {}
    for module, parts in modules.items():
        lora_a = np.concatenate([a for _, a, _ in parts])               # [R, in]
        lora_b = np.zeros((rows[module], lora_a.shape[0]), np.float32)  # [out, R]
        start = 0
        for projection, a, b in parts:
            first = projection.column or 0
            lora_b[first:first + b.shape[0], start:start + a.shape[0]] = b
            start += a.shape[0]
        factors[module] = (lora_a, lora_b)
        rank = max(rank, lora_a.shape[0])
    tensors = {}
    for module, (lora_a, lora_b) in factors.items():
        # Zero rows of A / columns of B: one rank for every module changes nothing.
        pad = rank - lora_a.shape[0]
        tensors[f"base_model.model.{module}.lora_A.weight"] = np.pad(lora_a, ((0, pad), (0, 0)))
        tensors[f"base_model.model.{module}.lora_B.weight"] = np.pad(lora_b, ((0, 0), (0, pad)))
    target_modules = sorted({p.module for parts in modules.values() for p, _, _ in parts})
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "r": int(rank), "lora_alpha": int(rank),        # PEFT's scale alpha / r = 1
        "target_modules": target_modules,
        "fan_in_fan_out": any(p.column is not None for parts in modules.values()
                              for p, _, _ in parts),
        "lora_dropout": 0.0, "bias": "none", "use_rslora": False, "use_dora": False,
        "init_lora_weights": True, "inference_mode": True, "modules_to_save": None,
        "layers_to_transform": None, "layers_pattern": None, "rank_pattern": {},
        "alpha_pattern": {}, "revision": None,
    }
    return tensors, config


def _numpy_dtype(name):
    if name == "bfloat16":
        import ml_dtypes
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


# ------------------------------------------------------------------- config


def checkpoint_config(policy, spec=None, tokenizer=None):
    """The `config.json` dict: the source's own (`policy.hf_config`) or KerasHub's, with
    the policy's dtype."""
    spec = spec or _spec_of(policy)
    backbone = policy.causal_lm.backbone
    source = getattr(policy, "hf_config", None)
    if source:
        config = json.loads(json.dumps(source))
        _check_matches(config, backbone)
    else:
        config = dict(spec.config(backbone))
        config.setdefault("model_type", spec.model_type)
        config["tie_word_embeddings"] = bool(backbone.token_embedding.tie_weights)
        for name, value in (("bos_token_id", policy.bos_id), ("eos_token_id", policy.eos_id)):
            if value is not None:
                config[name] = int(value)
        config.pop("torch_dtype", None)         # transformers 4's name of "dtype"
    # transformers 5 names it "dtype", 4.x "torch_dtype": the source's spelling stays.
    config["torch_dtype" if "torch_dtype" in config else "dtype"] = _weight_dtype(policy)
    return config


def _check_matches(config, backbone):
    """The source config describes this backbone (same vocabulary and depth)."""
    vocabulary = config.get("vocab_size", config.get("text_config", {}).get("vocab_size"))
    layers = config.get("num_hidden_layers", config.get("n_layer"))
    if vocabulary not in (None, backbone.vocabulary_size) or layers not in (
            None, backbone.num_layers):
        raise ValueError(f"policy.hf_config (vocab_size={vocabulary}, layers={layers}) does "
                         f"not describe this backbone (vocab_size="
                         f"{backbone.vocabulary_size}, layers={backbone.num_layers})")


# ----------------------------------------------------------------- tokenizer


def _hf_files(tokenizer):
    files = getattr(tokenizer, "hf_files", None)
    if files is None:
        files = getattr(getattr(tokenizer, "hub_tokenizer", None), "hf_files", None)
    return files


def _write_tokenizer_files(directory, tokenizer, config):
    """The source's tokenizer files unchanged, or KerasHub's tokenizer export; and a
    generation_config.json when the source had none."""
    files = _hf_files(tokenizer) if tokenizer is not None else None
    if files:
        for name, text in files.items():
            if os.path.basename(name) != name or name in (CONFIG_FILE, WEIGHTS_FILE):
                raise ValueError(f"tokenizer.hf_files holds {name!r}, not a tokenizer file")
            # newline="" writes the text's own line ends: the bytes are the source's.
            with open(os.path.join(directory, name), "w", encoding="utf-8",
                      newline="") as f:
                f.write(text)
        # SentencePiece families (Gemma): the binary tokenizer.model beside them.
        proto = getattr(tokenizer, "sentencepiece_proto", None)
        if isinstance(proto, bytes):
            with open(os.path.join(directory, SENTENCEPIECE_FILE), "wb") as f:
                f.write(proto)
    elif tokenizer is not None and getattr(tokenizer, "hub_tokenizer", None) is not None:
        from keras_hub.src.utils.transformers.export.hf_exporter import (MODEL_TOKENIZER_CONFIGS,
                                                                         export_tokenizer)
        kind = type(tokenizer.hub_tokenizer).__name__
        if kind not in MODEL_TOKENIZER_CONFIGS:
            raise ValueError(f"KerasHub cannot write a {kind} as transformers tokenizer "
                             "files; load the policy from a transformers directory (its "
                             "tokenizer files are copied) or pass tokenizer=")
        export_tokenizer(tokenizer.hub_tokenizer, directory)
    if not os.path.exists(os.path.join(directory, GENERATION_CONFIG_FILE)):
        generation = {"_from_model_config": True}
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            if config.get(name) is not None:
                generation[name] = config[name]
        _write_json(os.path.join(directory, GENERATION_CONFIG_FILE), generation)


# ----------------------------------------------------------------- writing


def _write_safetensors(path, tensors):
    from tfpg.hf.safetensors import write_file
    write_file(path, tensors, metadata=_SAFETENSORS_METADATA)


def _write_json(path, payload):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=2, ensure_ascii=False)
        f.write("\n")
