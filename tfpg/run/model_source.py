"""The model a run starts from: a new `PolicyNetwork` of the run's options
(`new_policy`), or an existing one (`tfpg train --model`, `tfpg export F.keras`).

`load_policy(source)` takes a `.keras` file holding a `PolicyNetwork` (its tokenizer is
the `tokenizer.json` beside it, or `tokenizer_path`), a KerasHub preset (a name that
KerasHub downloads, or a local directory written by `save_to_preset`) or a Hugging
Face transformers checkpoint directory (`tfpg.hf.checkpoint`), which bring their own
tokenizer. Returns `(policy, tokenizer)`; anything unreadable is a UsageError
in one line.
"""

import os

import keras

from tfpg.models import PolicyNetwork
from tfpg.options import HUB_INSTALL_HINT, UsageError
from tfpg.run.config import POLICY_MAX_LENGTH
from tfpg.text.tokenizer import Tokenizer


def new_policy(config, vocab_size):
    """A new, built `PolicyNetwork` of `vocab_size` tokens shaped by a `TrainConfig`'s
    backbone options (call in the strategy's scope): what a run without `--model`
    trains, and what `tfpg export` reads its checkpoint into."""
    policy = PolicyNetwork(vocab_size, config.embedding_dim, config.hidden_dim,
                           backbone=config.backbone, num_layers=config.num_layers,
                           max_length=POLICY_MAX_LENGTH)
    policy.build()
    return policy


def load_policy(source, lora_rank=None, tokenizer_path=None):
    """(policy, tokenizer) of `source`: a `.keras` PolicyNetwork or a KerasHub preset
    (with `lora_rank`, LoRA adapters of that rank, the only trainable weights)."""
    if source.endswith(".keras"):
        if lora_rank is not None:
            raise UsageError("--lora-rank needs a KerasHub preset; a .keras policy has no "
                             "LoRA adapters")
        return _keras_file(source, tokenizer_path)
    return _keras_hub_preset(source, lora_rank)


def _keras_file(source, tokenizer_path):
    if not os.path.isfile(source):
        raise UsageError(f"{source}: file not found")
    tokenizer_path = tokenizer_path or os.path.join(os.path.dirname(source), "tokenizer.json")
    if not os.path.exists(tokenizer_path):
        raise UsageError(f"{source}: no tokenizer; pass --tokenizer F.json (or put "
                         "tokenizer.json beside it)")
    tokenizer = Tokenizer.load(tokenizer_path)
    try:
        policy = keras.models.load_model(source)
    except Exception as error:  # noqa: BLE001 - any unreadable file is a usage error
        raise UsageError(f"{source}: cannot load ({type(error).__name__})") from None
    if not isinstance(policy, PolicyNetwork):
        raise UsageError(f"{source}: holds a {type(policy).__name__}, not a PolicyNetwork")
    if policy.vocab_size != tokenizer.vocabulary_size:
        raise UsageError(f"tokenizer has {tokenizer.vocabulary_size} tokens but the model "
                         f"{policy.vocab_size}: they do not belong together")
    return policy, tokenizer


def _keras_hub_preset(source, lora_rank):
    from tfpg.hf import MissingExtraError
    try:
        from tfpg.models import KerasHubPolicy
        policy = KerasHubPolicy.from_preset(source, lora_rank=lora_rank)
    except MissingExtraError as error:         # it names the module and the install hint
        raise UsageError(f"--model {source}: {error}") from None
    except ImportError as error:               # keras-hub installed, a module it needs not
        raise UsageError(f"--model {source}: needs keras-hub ({HUB_INSTALL_HINT}): "
                         f"{error}") from None
    except Exception as error:  # noqa: BLE001 - KerasHub raises many types
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        from tfpg.hf.checkpoint import is_transformers_checkpoint
        if is_transformers_checkpoint(source):     # tfpg.hf's errors name the problem
            raise UsageError(f"--model {first}") from None
        raise UsageError(_preset_error(source, error, first)) from None
    if policy.tokenizer is None:
        raise UsageError(f"--model {source}: the preset has no tokenizer (preprocessor)")
    return policy, policy.tokenizer


def _preset_error(source, error, first):
    """One line saying what `--model source` was taken for and why it did not load
    (paths that do not exist were refused before: `tfpg.run.config.check_model_source`)."""
    if os.path.isdir(source):
        return f"--model {source}: a directory that does not load as a KerasHub preset ({first})"
    if "://" in source:
        return f"--model {source}: the preset handle did not load ({first})"
    import keras_hub
    known = keras_hub.models.CausalLM.presets
    if source in known:
        return (f"--model {source}: a KerasHub preset name, but it could not be downloaded "
                f"({type(error).__name__}; offline?): run once with a network, or give a "
                "local preset directory (save_to_preset)")
    # One name of each family tfpg supports best, as a user would type it.
    examples = [min(name for name in known if name.startswith(family))
                for family in ("gpt2_", "gemma_", "llama3_") if any(
                    name.startswith(family) for name in known)]
    return (f"--model {source}: no file or directory of that name here, and not a KerasHub "
            f"preset name (e.g. {', '.join(examples[:3])}; all: "
            "keras_hub.models.CausalLM.presets)")


def load_teacher(source, tokenizer=None):
    """(teacher, tokenizer) of `--teacher source` (what `load_policy` reads), the
    frozen model of on-policy distillation. `tokenizer` is the student's (a `--model`'s;
    None for a new student, which then takes the teacher's): distillation compares the
    two models' log-probs id by id, so another vocabulary is a UsageError."""
    try:
        teacher, teacher_tokenizer = load_policy(source)
    except UsageError as error:
        raise UsageError(str(error).replace("--model", "--teacher")) from None
    if tokenizer is not None and _vocabulary(tokenizer) != _vocabulary(teacher_tokenizer):
        raise UsageError(f"--teacher {source}: its tokenizer is not the student's "
                         f"({teacher_tokenizer.vocabulary_size} and "
                         f"{tokenizer.vocabulary_size} tokens); distillation needs the same one")
    return teacher, teacher_tokenizer


def _vocabulary(tokenizer):
    """What makes two tokenizers give the same ids: tfpg's level and token list, a
    KerasHub tokenizer's vocabulary, and the special ids."""
    if isinstance(tokenizer, Tokenizer):
        tokens = (tokenizer.level, tokenizer.vocabulary)
    else:
        hub = getattr(tokenizer, "hub_tokenizer", None)
        tokens = list(hub.get_vocabulary()) if hasattr(hub, "get_vocabulary") else None
    return (type(tokenizer).__name__, tokenizer.vocabulary_size, tokens,
            tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id)
