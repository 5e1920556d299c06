"""tfpg: policy-gradient fine-tuning of Keras language models.

Example:
>>> import tfpg
>>> tok = tfpg.Tokenizer.from_texts(["one plus two is three"], level="word")
>>> policy = tfpg.PolicyNetwork(tok.vocabulary_size, embedding_dim=32, hidden_dim=64)
>>> out = tfpg.generate(policy, [tok.encode("one plus")], max_new_tokens=4, seed=0)
"""

__version__ = "0.1.0"

# Names are imported on first use (PEP 562), so that `import tfpg.run.cli` (the `tfpg`
# command) parses its arguments without starting TensorFlow.
_SUBMODULES = ("advantages", "algorithms", "callbacks", "data", "envs", "losses", "models",
               "rewards", "tasks", "testing")
_NAMES = {
    "export_saved_model": "tfpg.export", "load": "tfpg.export",
    "export_transformers": "tfpg.hf.export",
    "GenerationOutput": "tfpg.generation", "generate": "tfpg.generation",
    "PolicyNetwork": "tfpg.models", "ValueNetwork": "tfpg.models",
    "Tokenizer": "tfpg.text",
    "KerasHubPolicy": "tfpg.models", "KerasHubTokenizer": "tfpg.text.keras_hub_tokenizer",
    "copy_policy": "tfpg.models", "pretrain": "tfpg.run.pretraining",
    # The pieces of `tfpg train` a script reuses: a task's or file's job (tokenizer,
    # data, reward, metrics) from the command's options, and its held-out evaluation.
    "TrainConfig": "tfpg.run.config", "make_job": "tfpg.run.jobs",
    "evaluate_policy": "tfpg.run.evaluation",
}

__all__ = [
    "Tokenizer", "PolicyNetwork", "ValueNetwork", "KerasHubPolicy", "KerasHubTokenizer",
    "generate", "GenerationOutput", "copy_policy", "pretrain",
    "TrainConfig", "make_job", "evaluate_policy",
    "export_saved_model", "export_transformers", "load", "advantages", "algorithms",
    "callbacks", "data", "envs", "losses", "models", "rewards", "tasks", "testing",
]


def __getattr__(name):
    import importlib
    if name in _SUBMODULES:
        return importlib.import_module(f"tfpg.{name}")
    if name in _NAMES:
        value = getattr(importlib.import_module(_NAMES[name]), name)
        globals()[name] = value          # later lookups skip this function
        return value
    raise AttributeError(f"module 'tfpg' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
