"""Hugging Face checkpoints in and out.

Reading a transformers checkpoint directory (`config.json`, `*.safetensors`,
`tokenizer.json`, chat templates) into a tfpg policy, and writing a policy back as a
transformers checkpoint or PEFT adapters. Needs the `hub` extra
(`pip install "tfpg[hub]"`).
"""

import importlib

from tfpg.options import HUB_INSTALL_HINT


class MissingExtraError(ImportError):
    """A module of the `hub` extra is not installed; the message, one line, says who
    needs it and how to install it."""


def import_hub_module(name, user):
    """The module `name` of the `hub` extra ("keras_hub", "tokenizers"), imported; where
    it is not installed, a `MissingExtraError` in one line naming `user` and the
    install hint (`KerasHubPolicy needs keras-hub: pip install "tfpg[hub]"`)."""
    try:
        return importlib.import_module(name)
    except ImportError as error:
        if error.name != name:      # installed, but broken inside: its own error says why
            raise
        raise MissingExtraError(f"{user} needs {name.replace('_', '-')}: "
                                f"{HUB_INSTALL_HINT}") from None
