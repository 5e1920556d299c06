"""Tokenizers (tfpg's own, KerasHub's) and their in-graph string <-> id layers."""

__all__ = ["Tokenizer"]


def __getattr__(name):
    # Imported on first use (PEP 562): `tfpg.text.truncation` serves the file readers
    # of `tfpg.data` without starting TensorFlow, which `tfpg.text.tokenizer` imports.
    if name == "Tokenizer":
        from tfpg.text.tokenizer import Tokenizer
        return Tokenizer
    raise AttributeError(f"module 'tfpg.text' has no attribute {name!r}")
