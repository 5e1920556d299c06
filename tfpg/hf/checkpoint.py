"""Reading a Hugging Face transformers checkpoint directory into a KerasHub CausalLM.

A transformers checkpoint is a directory with `config.json` naming a `model_type`,
`model.safetensors` (or shards with `model.safetensors.index.json`) and
`tokenizer.json` (+ `tokenizer_config.json`, ...). `load_causal_lm(DIR)` builds the
KerasHub backbone of the family from the checkpoint's own values and ports the weights
with KerasHub 0.32's Transformers checkpoint converters,
read through `tfpg.hf.safetensors` (float32, bfloat16 and float16 files).

What tfpg reads itself, because those converters miss it or get it wrong:

* every family: the backbone config is built here from `config.json`: RMS / layer
  norm epsilons (the Llama and Gemma converters leave KerasHub's 1e-6 where Llama 3
  has 1e-5), rope theta and scaling from `rope_parameters` (transformers 5) or
  `rope_scaling` + `rope_theta` (4.x) (the Llama converter reads only the latter, so
  Llama 3.1+ loses its "llama3" scaling under transformers 5), tied embeddings;
  values KerasHub cannot model (attention / MLP biases where the family has none,
  another activation, dynamic / YaRN rope, a GPT-2 epsilon other than 1e-5) are
  refused in one line rather than silently changed;
* GPT-2: the MLP width `n_inner` (the converter assumes 4 x width);
* the tokenizer: from `tokenizer.json` by `tfpg.hf.tokenizer.HFTokenizer` (transformers
  5 saves GPT-2 without `vocab.json` / `merges.txt`, which KerasHub's converter
  needs; Llama 3 need not have `<|eot_id|>`);
* Mistral: KerasHub's converter rounds every weight to float16; tfpg keeps the
  file's precision;
* Qwen 3: the query / key norms' epsilon is the checkpoint's `rms_norm_eps`, not
  KerasHub's 1e-5 (`patch_backbone`).
"""

import json
import os

import numpy as np

from tfpg.hf import import_hub_module
from tfpg.hf.safetensors import SafetensorsReader

SUPPORTED = ("gpt2", "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text")
CONFIG_FILE = "config.json"


def read_config(path):
    """The `config.json` of a transformers checkpoint directory, as a dict."""
    config_path = os.path.join(os.fspath(path), CONFIG_FILE)
    try:
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"{path}: no {CONFIG_FILE}; not a transformers checkpoint "
                         "directory") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{config_path}: not valid JSON ({error})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{config_path}: not a JSON object")
    return config


def is_transformers_checkpoint(path):
    """True for a directory whose `config.json` names a `model_type` (a KerasHub
    preset's `config.json` names a `class_name` instead)."""
    path = os.fspath(path)
    if not os.path.isfile(os.path.join(path, CONFIG_FILE)):
        return False
    try:
        config = read_config(path)
    except ValueError:
        return False
    return "model_type" in config


def _rope(config):
    """(theta, rope_type, parameters) from `rope_parameters` (transformers 5) or
    `rope_theta` + `rope_scaling` (4.x)."""
    params = config.get("rope_parameters") or {}
    if "full_attention" in params:       # per layer type (Gemma 3): the global one
        params = params["full_attention"] or {}
    scaling = config.get("rope_scaling") or {}
    merged = {**scaling, **params}
    theta = merged.get("rope_theta", config.get("rope_theta", 10000.0))
    kind = merged.get("rope_type", merged.get("type", "default"))
    return float(theta), kind, merged


def _refuse(path, what):
    raise ValueError(f"{path}: {what}; tfpg cannot build this checkpoint exactly in KerasHub")


def _require(path, config, key):
    if key not in config:
        raise ValueError(f"{path}: {CONFIG_FILE} has no {key!r}")
    return config[key]


def _check_activation(path, config, allowed, key="hidden_act"):
    activation = config.get(key) or config.get("hidden_act")
    if activation is not None and activation not in allowed:
        _refuse(path, f"activation {activation!r} (KerasHub's {'/'.join(allowed)})")


def _heads(path, config):
    hidden = _require(path, config, "hidden_size")
    heads = _require(path, config, "num_attention_heads")
    return hidden, heads, config.get("num_key_value_heads") or heads


def _decoder_config(path, config, bias_keys=("attention_bias", "mlp_bias")):
    """What Llama-like backbones share (Llama 3, Mistral, Qwen 2 / 3)."""
    for key in bias_keys:
        if config.get(key):
            _refuse(path, f"{key} is true")
    _check_activation(path, config, ("silu",))
    hidden, heads, kv_heads = _heads(path, config)
    return {"vocabulary_size": _require(path, config, "vocab_size"),
            "num_layers": _require(path, config, "num_hidden_layers"),
            "num_query_heads": heads, "num_key_value_heads": kv_heads,
            "hidden_dim": hidden,
            "intermediate_dim": _require(path, config, "intermediate_size"),
            "layer_norm_epsilon": float(config.get("rms_norm_eps", 1e-6))}


def _plain_head_dim(path, config):
    hidden, heads, _ = _heads(path, config)
    head_dim = config.get("head_dim") or hidden // heads
    if head_dim * heads != hidden:
        _refuse(path, f"head_dim {head_dim} x {heads} heads != hidden_size {hidden}")


def _linear_rope(path, config, key):
    theta, kind, params = _rope(config)
    out = {"rope_max_wavelength": theta}
    if kind == "linear":
        out[key] = float(params["factor"])
    elif kind != "default":
        _refuse(path, f"rope_type {kind!r} (KerasHub's {'default, linear'})")
    return out


def _gpt2(path, config):
    _check_activation(path, config, ("gelu_new", "gelu_pytorch_tanh"), "activation_function")
    epsilon = float(config.get("layer_norm_epsilon", 1e-5))
    if abs(epsilon - 1e-5) > 1e-12:
        _refuse(path, f"layer_norm_epsilon {epsilon} (KerasHub's GPT-2 has 1e-5)")
    width = _require(path, config, "n_embd")
    return {"vocabulary_size": _require(path, config, "vocab_size"),
            "num_layers": _require(path, config, "n_layer"),
            "num_heads": _require(path, config, "n_head"), "hidden_dim": width,
            "intermediate_dim": config.get("n_inner") or 4 * width,
            "dropout": float(config.get("resid_pdrop", 0.1)),
            "max_sequence_length": _require(path, config, "n_positions")}


def _llama(path, config):
    _plain_head_dim(path, config)
    out = _decoder_config(path, config)
    theta, kind, params = _rope(config)
    out.update(rope_max_wavelength=theta,
               tie_word_embeddings=bool(config.get("tie_word_embeddings", False)))
    if kind == "llama3":
        out.update(rope_frequency_adjustment_factor=float(params["factor"]),
                   rope_low_freq_factor=float(params["low_freq_factor"]),
                   rope_high_freq_factor=float(params["high_freq_factor"]),
                   rope_pretraining_sequence_length=int(
                       params["original_max_position_embeddings"]))
    elif kind == "linear":
        out["rope_position_scaling_factor"] = float(params["factor"])
    elif kind != "default":
        _refuse(path, f"rope_type {kind!r} (KerasHub's default, linear, llama3)")
    return out


def _mistral(path, config):
    out = _decoder_config(path, config)
    out.update(_linear_rope(path, config, "rope_scaling_factor"))
    window = config.get("sliding_window")
    # No window: one longer than any sequence (KerasHub's default is 512).
    out.update(sliding_window=int(window) if window else
               int(config.get("max_position_embeddings", 32768)),
               head_dim=config.get("head_dim"))
    if config.get("tie_word_embeddings"):
        _refuse(path, "tie_word_embeddings is true (KerasHub's Mistral is untied)")
    return out


def _qwen2(path, config):
    _plain_head_dim(path, config)
    out = _decoder_config(path, config, bias_keys=())
    out.update(_linear_rope(path, config, "rope_scaling_factor"))
    out.update(tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
               use_sliding_window_attention=bool(config.get("use_sliding_window", False)),
               sliding_window_size=int(config.get("sliding_window") or 32768))
    return out


def _qwen3(path, config):
    out = _decoder_config(path, config)
    out.update(_linear_rope(path, config, "rope_scaling_factor"))
    hidden, heads, _ = _heads(path, config)
    out.update(head_dim=int(config.get("head_dim") or hidden // heads),
               tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
               sliding_window_size=(int(config["sliding_window"])
                                    if config.get("use_sliding_window") else None))
    return out


def _gemma(path, config):
    _check_activation(path, config, ("gelu_pytorch_tanh", "gelu"), "hidden_activation")
    theta, kind, _ = _rope(config)
    if kind != "default" or abs(theta - 10000.0) > 1e-6:
        _refuse(path, f"rope theta {theta} / type {kind!r} (KerasHub's Gemma has 10000)")
    if config.get("attention_bias"):
        _refuse(path, "attention_bias is true")
    hidden, heads, kv_heads = _heads(path, config)
    out = {"vocabulary_size": _require(path, config, "vocab_size"),
           "num_layers": _require(path, config, "num_hidden_layers"),
           "num_query_heads": heads, "num_key_value_heads": kv_heads, "hidden_dim": hidden,
           # KerasHub's Gemma MLP width counts gate and up projections together.
           "intermediate_dim": 2 * _require(path, config, "intermediate_size"),
           "head_dim": _require(path, config, "head_dim"),
           "layer_norm_epsilon": float(config.get("rms_norm_eps", 1e-6))}
    if config["model_type"] == "gemma2":
        out.update(query_head_dim_normalize=config.get("query_pre_attn_scalar",
                                                       out["head_dim"]) == out["head_dim"],
                   use_post_ffw_norm=True, use_post_attention_norm=True,
                   final_logit_soft_cap=config.get("final_logit_softcapping"),
                   attention_logit_soft_cap=config.get("attn_logit_softcapping"),
                   sliding_window_size=int(config.get("sliding_window") or 4096),
                   use_sliding_window_attention=True)
    return out


def _gemma3(path, config):
    from keras_hub.src.utils.transformers import convert_gemma3

    # KerasHub's Gemma 3: layer i is local (sliding, rope 10,000) unless i % 6 == 5
    # (global, rope 1,000,000), the released models' pattern.
    layers = _require(path, config, "num_hidden_layers")
    kerashub_types = ["sliding_attention" if i % 6 < 5 else "full_attention"
                      for i in range(layers)]
    if config.get("layer_types") not in (None, kerashub_types):
        _refuse(path, "layer_types other than 5 local : 1 global (KerasHub's Gemma 3)")
    params = config.get("rope_parameters") or {}
    local = (params.get("sliding_attention") or {}).get(
        "rope_theta", config.get("rope_local_base_freq", 10000.0))
    global_theta, kind, _ = _rope(config)
    if abs(local - 10000.0) > 1e-6 or abs(global_theta - 1e6) > 1e-3:
        _refuse(path, f"rope theta {local} local / {global_theta} global (KerasHub's Gemma 3 "
                      "has 10000 / 1000000)")
    out = convert_gemma3.convert_backbone_config(config)
    out["layer_norm_epsilon"] = float(config.get("rms_norm_eps", 1e-6))
    return out


# model_type -> (KerasHub backbone / CausalLM name prefix, converter module, config).
_FAMILIES = {
    "gpt2": ("GPT2", "convert_gpt2", _gpt2),
    "llama": ("Llama3", "convert_llama3", _llama),
    "mistral": ("Mistral", "convert_mistral", _mistral),
    "qwen2": ("Qwen", "convert_qwen", _qwen2),
    "qwen3": ("Qwen3", "convert_qwen3", _qwen3),
    "gemma": ("Gemma", "convert_gemma", _gemma),
    "gemma2": ("Gemma", "convert_gemma", _gemma),
    "gemma3_text": ("Gemma3", "convert_gemma3", _gemma3),
}


def family(path, config=None):
    """The KerasHub family name ("GPT2", "Llama3", ...) of a checkpoint; ValueError
    naming the supported `model_type`s for any other."""
    config = read_config(path) if config is None else config
    model_type = config.get("model_type")
    if model_type not in _FAMILIES:
        raise ValueError(f"{path}: model_type {model_type!r} is not supported; tfpg reads "
                         f"{', '.join(SUPPORTED)}")
    return _FAMILIES[model_type][0]


def backbone_config(path, config=None):
    """The KerasHub backbone arguments of a checkpoint, from its own `config.json`."""
    config = read_config(path) if config is None else config
    family(path, config)
    return _FAMILIES[config["model_type"]][2](path, config)


def patch_backbone(backbone, config):
    """Sets what a KerasHub backbone's constructor cannot take from `config`: Qwen 3's
    query / key RMS norms use KerasHub 0.32's 1e-5, transformers `rms_norm_eps`.
    Idempotent; `KerasHubPolicy` reapplies it after a reload (its `hf_config`)."""
    if config.get("model_type") == "qwen3":
        epsilon = float(config.get("rms_norm_eps", 1e-6))
        for layer in backbone.transformer_layers:
            attention = layer._self_attention_layer
            attention._query_dense_layer_norm.epsilon = epsilon
            attention._key_dense_layer_norm.epsilon = epsilon
    return backbone


class _Kept(np.ndarray):
    """An array whose `astype(float16)` keeps the values (see `_FullPrecision`)."""

    def astype(self, dtype, *args, **kwargs):
        if np.dtype(dtype) == np.float16:
            return self
        return np.asarray(self).astype(dtype, *args, **kwargs)


class _FullPrecision(SafetensorsReader):
    """A reader that hands KerasHub's converters arrays whose `astype(float16)` keeps
    the values: the Mistral converter of keras_hub 0.32 rounds every weight to
    float16 on the way in."""

    def get_tensor(self, name):
        return np.asarray(super().get_tensor(name)).view(_Kept)


def load_causal_lm(path, dtype=None):
    """(KerasHub CausalLM without a preprocessor, `HFTokenizer`, config dict) of a
    transformers checkpoint directory; `dtype` e.g. "bfloat16" for the weights (None:
    Keras' default, float32)."""
    import importlib

    from tfpg.hf.tokenizer import HFTokenizer

    keras_hub = import_hub_module("keras_hub", "a transformers checkpoint")

    path = os.fspath(path)
    config = read_config(path)
    name, converter_name, _ = _FAMILIES.get(config.get("model_type"), (None,) * 3)
    if name is None:
        family(path, config)     # raises with the supported model types
    arguments = backbone_config(path, config)
    reader = (_FullPrecision if converter_name == "convert_mistral" else SafetensorsReader)(path)
    tokenizer = HFTokenizer.from_directory(path)
    if tokenizer.vocabulary_size > arguments["vocabulary_size"]:
        raise ValueError(f"{path}: tokenizer.json has {tokenizer.vocabulary_size} tokens but "
                         f"the model {arguments['vocabulary_size']}: they do not belong "
                         "together")
    backbone_class = getattr(keras_hub.models, name + "Backbone")
    options = {} if dtype is None else {"dtype": dtype}
    backbone = backbone_class(**arguments, **options)
    converter = importlib.import_module(
        f"keras_hub.src.utils.transformers.{converter_name}")
    try:
        converter.convert_weights(backbone, reader, config)
    except KeyError as error:
        raise ValueError(f"{path}: a weight is missing from the safetensors files "
                         f"({error.args[0]})") from None
    patch_backbone(backbone, config)
    causal_lm = getattr(keras_hub.models, name + "CausalLM")(backbone=backbone,
                                                              preprocessor=None)
    return causal_lm, tokenizer, config
