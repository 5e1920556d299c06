"""Tokenizers (tfpg's own, KerasHub's) and their in-graph string <-> id layers."""

from tfpg.text.tokenizer import Tokenizer

__all__ = ["Tokenizer"]
