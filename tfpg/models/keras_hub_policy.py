"""`KerasHubPolicy`: a pre-trained KerasHub `CausalLM` as a tfpg policy."""

import contextlib

import keras
import tensorflow as tf

from tfpg.guards import bounds
from tfpg.hf import import_hub_module
from tfpg.models.keras_hub_backbone import KerasHubBackbone, deserialize_entry, supported_families
from tfpg.models.policy import Policy
from tfpg.text.keras_hub_tokenizer import KerasHubTokenizer, special_ids, structural_ids


def _check_causal_lm(causal_lm):
    keras_hub = import_hub_module("keras_hub", "KerasHubPolicy")
    if not isinstance(causal_lm, keras_hub.models.CausalLM):
        raise ValueError(f"KerasHubPolicy takes a keras_hub.models.CausalLM, got "
                         f"{type(causal_lm).__name__}; supported families: "
                         f"{supported_families()}")


def _keep_tied_embeddings(serialized, backbone):
    """KerasHub 0.32's Llama backbones leave `tie_word_embeddings` out of `get_config`:
    a tied Llama 3 (3.2 1B / 3B) would come back untied and fail to load its weights.
    Writes it into the serialized CausalLM's backbone config."""
    config = serialized.get("config", {}).get("backbone", {}).get("config")
    if (config is not None and "tie_word_embeddings" not in config
            and hasattr(backbone, "tie_word_embeddings")):
        config["tie_word_embeddings"] = bool(backbone.tie_word_embeddings)


def _check_lora_rank(lora_rank):
    """None (no LoRA) or an integer >= 1, as an int."""
    if lora_rank is None:
        return None
    return bounds.check_count("lora_rank", lora_rank)


@keras.saving.register_keras_serializable(package="tfpg")
class KerasHubPolicy(Policy):
    """A KerasHub causal LM (GPT-2, Gemma 1-3 text, Llama / Llama 3, Mistral, Qwen 2 / 3)
    as a `tfpg.models.Policy`.

    `call(token_ids, padding_mask=None)` -> float32 logits [B, T, V];
    `initial_cache` / `call_with_cache` decode one token at a time, correct for
    left-padded prompts (see `KerasHubBackbone`). `padding_mask=None` means every
    token is real: in these vocabularies the pad id can be a real token, so pass the
    mask (`prompt_dataset`'s "prompt_mask") with padded batches.

    Special ids come from the CausalLM's tokenizer (`tfpg.KerasHubTokenizer`'s
    rules): `pad_id`, `bos_id` (None without one), `eos_id`, `structural_ids` (never
    sampled). Without a preprocessor pass them as arguments.

    LoRA (`lora_rank=r`): `backbone.enable_lora(r)` on the attention's query / value
    projections; only the adapters train (the projections' biases are frozen too), and
    `lora_reference()` is the KL reference: the same weights with the adapters off,
    no second copy. Saved as `.keras`, Keras merges the adapters into the kernels.

    A Hugging Face transformers checkpoint directory (`from_preset(DIR)`, see
    `tfpg.hf.checkpoint`) gives a CausalLM without a KerasHub preprocessor: the
    tokenizer is a `tfpg.hf.tokenizer.HFTokenizer` of the checkpoint's `tokenizer.json`, its
    special ids are the checkpoint's (GPT-2 then has no BOS), and `hf_config` is the
    source `config.json` (kept by `get_config`, for the export back out).

    Args:
        causal_lm: `keras_hub.models.CausalLM`. A CausalLM of a supported family.
        lora_rank: int or None. The LoRA rank; None trains every weight.
        pad_id: int or None. Overrides the tokenizer's pad id.
        bos_id: int or None. Overrides the tokenizer's BOS id.
        eos_id: int or None. Overrides the tokenizer's EOS id.
        hf_config: dict or None. The `config.json` dict of the transformers checkpoint
            it came from (None otherwise).
        tokenizer: `tfpg.KerasHubTokenizer`, `tfpg.hf.tokenizer.HFTokenizer` or None.
            The tfpg tokenizer to report as `policy.tokenizer` (None: the CausalLM
            preprocessor's).

    Example:
    >>> policy = tfpg.KerasHubPolicy.from_preset("gpt2_base_en", lora_rank=8)  # doctest: +SKIP
    >>> # logits: [B, T, 50257] float32
    >>> logits = policy(ids, padding_mask=mask)  # doctest: +SKIP
    """

    # jit_compile="auto" compiles the decode loop with XLA on CPU too (tfpg.xla).
    xla_on_cpu = True

    def __init__(self, causal_lm, lora_rank=None, pad_id=None, bos_id=None, eos_id=None,
                 hf_config=None, tokenizer=None, **kwargs):
        lora_rank = _check_lora_rank(lora_rank)
        _check_causal_lm(causal_lm)
        kwargs.setdefault("dtype", causal_lm.dtype_policy)
        super().__init__(**kwargs)
        self.causal_lm = causal_lm
        self.hf_config = None if hf_config is None else dict(hf_config)
        if self.hf_config is not None:     # what KerasHub's config does not keep
            from tfpg.hf.checkpoint import patch_backbone
            patch_backbone(causal_lm.backbone, self.hf_config)
        self._tokenizer = tokenizer
        self.backbone = KerasHubBackbone(causal_lm.backbone, name="trunk")
        self.lora_rank = lora_rank
        if self.lora_rank is not None:
            self._enable_lora(self.lora_rank)
        hub_tokenizer = getattr(causal_lm.preprocessor, "tokenizer", None)
        ids = special_ids(hub_tokenizer) if hub_tokenizer is not None else (None,) * 3
        self.pad_id = pad_id if pad_id is not None else (ids[0] if ids[0] is not None else 0)
        self.bos_id = bos_id if bos_id is not None else ids[1]
        self.eos_id = eos_id if eos_id is not None else ids[2]
        self.structural_ids = structural_ids(self.pad_id, self.bos_id, self.eos_id)
        self.vocab_size = int(causal_lm.backbone.vocabulary_size)
        self.max_length = self.backbone.max_length
        self.built = True

    @classmethod
    def from_preset(cls, preset, lora_rank=None, dtype=None, **kwargs):
        """A policy from a KerasHub preset name, a local preset directory
        (`save_to_preset`) or a Hugging Face transformers checkpoint directory
        (`tfpg.hf.checkpoint`); `dtype` e.g. "bfloat16" for the weights. A `lora_rank`
        that is not None or an integer >= 1 is refused (ValueError) before the
        preset is read."""
        lora_rank = _check_lora_rank(lora_rank)
        from tfpg.hf.checkpoint import is_transformers_checkpoint, load_causal_lm
        if is_transformers_checkpoint(preset):
            causal_lm, tokenizer, hf_config = load_causal_lm(preset, dtype=dtype)
            ids = dict(pad_id=tokenizer.pad_id, bos_id=tokenizer.bos_id,
                       eos_id=tokenizer.eos_id)
            return cls(causal_lm, lora_rank=lora_rank, hf_config=hf_config,
                       tokenizer=tokenizer, **{**ids, **kwargs})
        keras_hub = import_hub_module("keras_hub", "KerasHubPolicy")
        options = {} if dtype is None else {"dtype": dtype}
        return cls(keras_hub.models.CausalLM.from_preset(preset, **options),
                   lora_rank=lora_rank, **kwargs)

    # ----------------------------------------------------------------- LoRA

    def _enable_lora(self, rank):
        hub_backbone = self.causal_lm.backbone
        if not self.lora_layers():
            hub_backbone.enable_lora(rank)
        for layer in self.lora_layers():
            # Only the adapters train: a bias that moved would also move the
            # adapters-off reference away from the pre-trained model.
            if getattr(layer, "bias", None) is not None:
                layer.bias.trainable = False

    def lora_layers(self):
        """The layers with LoRA adapters (empty without LoRA)."""
        return [layer for layer in self.causal_lm.backbone._flatten_layers(include_self=False)
                if getattr(layer, "lora_enabled", False)]

    @contextlib.contextmanager
    def adapters_disabled(self):
        """Within it (while tracing, too), the policy computes the pre-trained model:
        the LoRA layers use their frozen kernels only."""
        layers = self.lora_layers()
        for layer in layers:
            layer.lora_enabled = False
        try:
            yield self
        finally:
            for layer in layers:
                layer.lora_enabled = True

    def lora_reference(self):
        """The KL reference of a LoRA policy: a callable view of these weights with the
        adapters off (no copy); None without LoRA (the trainers then copy)."""
        return AdaptersOff(self) if self.lora_rank is not None else None

    # ------------------------------------------------------------- forward

    @property
    def is_positional(self):
        """True for learned absolute positions (GPT-2): `max_length` bounds a sequence."""
        return self.backbone.has_position_table

    @property
    def tokenizer(self):
        """The tokenizer given (a transformers checkpoint's `HFTokenizer`), else a
        `tfpg.KerasHubTokenizer` of the CausalLM's preprocessor (None without one)."""
        if self._tokenizer is not None:
            return self._tokenizer
        hub_tokenizer = getattr(self.causal_lm.preprocessor, "tokenizer", None)
        return None if hub_tokenizer is None else KerasHubTokenizer(hub_tokenizer)

    def build(self, input_shape=None):
        self.built = True

    def head_logits(self, hidden):
        """Hidden states [..., H] -> logits float32 [..., V]: the (tied or untied)
        reverse embedding, with the family's soft-capping where it has one."""
        logits = self.causal_lm.backbone.token_embedding(hidden, reverse=True)
        return tf.cast(logits, tf.float32)

    def hidden_states(self, token_ids, padding_mask=None, training=None):
        """token_ids int [B, T] (padding_mask [B, T], 1 = real) -> the final-norm
        hidden states [B, T, H] (compute dtype)."""
        return self.backbone(token_ids, padding_mask=padding_mask, training=training)

    def initial_cache(self, batch_size, max_length):
        """An empty decoding cache for `batch_size` sequences of up to `max_length` tokens."""
        return self.backbone.initial_cache(batch_size, max_length)

    def call_with_cache(self, token_ids, cache, index, padding_mask=None, training=None,
                        last_only=False, in_place=False):
        """Feeds token_ids [B, T] at position `index`: (logits float32 [B, T, V], hidden
        [B, T, H], cache). `last_only=True` gives the last position's only (a prefill).
        `in_place` is ignored: KerasHub's cache update is functional."""
        hidden, cache = self.backbone.call_with_cache(token_ids, cache, index,
                                                      padding_mask, training)
        if last_only:
            hidden = hidden[:, -1:]
        return self.head_logits(hidden), hidden, cache

    def get_config(self):
        config = super().get_config()
        causal_lm = keras.saving.serialize_keras_object(self.causal_lm)
        # KerasHub compiles a CausalLM for its own fit; tfpg's trainers never use that.
        causal_lm.pop("compile_config", None)
        _keep_tied_embeddings(causal_lm, self.causal_lm.backbone)
        config.update(causal_lm=causal_lm,
                      lora_rank=self.lora_rank, pad_id=self.pad_id, bos_id=self.bos_id,
                      eos_id=self.eos_id, hf_config=self.hf_config)
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**deserialize_entry(config, "causal_lm"))


class AdaptersOff:
    """A LoRA `KerasHubPolicy` with its adapters off, called like the policy.

    A plain object (not a Keras layer): a trainer holding it as `reference_model`
    neither tracks nor checkpoints the policy's weights a second time.
    """

    built = True
    trainable = False

    def __init__(self, policy):
        self.policy = policy

    @property
    def vocab_size(self):
        return self.policy.vocab_size

    def __call__(self, token_ids, padding_mask=None, training=None):
        with self.policy.adapters_disabled():
            return self.policy(token_ids, padding_mask=padding_mask, training=training)

    def hidden_states(self, token_ids, padding_mask=None, training=None):
        with self.policy.adapters_disabled():
            return self.policy.hidden_states(token_ids, padding_mask, training)

    def head_logits(self, hidden):
        with self.policy.adapters_disabled():
            return self.policy.head_logits(hidden)
