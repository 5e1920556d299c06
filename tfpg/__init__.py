"""tfpg: policy-gradient fine-tuning of Keras language models."""

__version__ = "0.1.0"
