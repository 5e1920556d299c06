"""Hugging Face checkpoints in and out.

Reading a transformers checkpoint directory (`config.json`, `*.safetensors`,
`tokenizer.json`, chat templates) into a tfpg policy, and writing a policy back as a
transformers checkpoint or PEFT adapters. Needs the `hub` extra
(`pip install "tfpg[hub]"`).
"""

import importlib

from tfpg.options import HUB_INSTALL_HINT


def import_hub_module(name, user):
    """The module `name` of the `hub` extra ("keras_hub", "tokenizers"), imported; where
    it is not installed, an ImportError in one line naming `user` and the install hint
    (`KerasHubPolicy needs keras-hub: pip install "tfpg[hub]"`)."""
    try:
        return importlib.import_module(name)
    except ImportError as error:
        if error.name != name:      # installed, but broken inside: its own error says why
            raise
        raise ImportError(f"{user} needs {name.replace('_', '-')}: {HUB_INSTALL_HINT}") \
            from None
