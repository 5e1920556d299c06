"""Builds the backbone named by a `PolicyNetwork` / `ValueNetwork` constructor."""

from tfpg.models.recurrent_backbone import RecurrentBackbone
from tfpg.models.transformer_backbone import TransformerBackbone

BACKBONES = ("lstm", "gru", "transformer")


def make_backbone(vocab_size, embedding_dim, hidden_dim, backbone, num_layers, num_heads,
                  dropout, max_length):
    if backbone in ("lstm", "gru"):
        return RecurrentBackbone(vocab_size, embedding_dim, hidden_dim, cell=backbone,
                                 num_layers=num_layers, dropout=dropout, name="backbone")
    if backbone == "transformer":
        return TransformerBackbone(vocab_size, embedding_dim, hidden_dim, num_layers,
                                   num_heads, dropout, max_length, name="backbone")
    raise ValueError(f"backbone must be one of {', '.join(BACKBONES)}; got {backbone!r}")
