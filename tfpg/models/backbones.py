"""Builds the backbone named by a `PolicyNetwork` / `ValueNetwork` constructor, and
the base class the two share."""

import keras

from tfpg.models.recurrent_backbone import RecurrentBackbone
from tfpg.models.transformer_backbone import TransformerBackbone
from tfpg.options import BACKBONES


def make_backbone(vocab_size, embedding_dim, hidden_dim, backbone, num_layers, num_heads,
                  dropout, max_length):
    if backbone in ("lstm", "gru"):
        return RecurrentBackbone(vocab_size, embedding_dim, hidden_dim, cell=backbone,
                                 num_layers=num_layers, dropout=dropout, name="backbone")
    if backbone == "transformer":
        return TransformerBackbone(vocab_size, embedding_dim, hidden_dim, num_layers,
                                   num_heads, dropout, max_length, name="backbone")
    raise ValueError(f"backbone must be one of {', '.join(BACKBONES)}; got {backbone!r}")


class BackboneModel(keras.Model):
    """What `PolicyNetwork`, `ValueNetwork` and `RewardNetwork` share: the backbone
    options (the one constructor signature of the three), the backbone, a float32
    Dense head on it, and the config. Subclasses name their head (`head_name`, also
    its attribute) and its width (`head_units`; None: the vocabulary) and define
    `call`.

    Args:
        vocab_size: int. The number of token ids.
        embedding_dim: int. The embedding width (the Transformer's model width).
        hidden_dim: int. The recurrent state size (the Transformer's feed-forward width).
        backbone: str. One of "lstm", "gru", "transformer".
        num_layers: int. Stacked recurrent layers or Transformer blocks.
        num_heads: int. Attention heads (Transformer).
        dropout: float. Dropout rate inside the backbone.
        max_length: int. The longest sequence (the Transformer's position table).
        **kwargs: `keras.Model` arguments (`name`, `dtype`, ...).
    """

    head_name = None
    head_units = 1

    def __init__(self, vocab_size, embedding_dim=128, hidden_dim=256, backbone="lstm",
                 num_layers=1, num_heads=4, dropout=0.0, max_length=512, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.embedding_dim = embedding_dim
        self.hidden_dim = hidden_dim
        self.backbone_type = backbone
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.dropout = dropout
        self.max_length = max_length
        self.backbone = make_backbone(vocab_size, embedding_dim, hidden_dim, backbone,
                                      num_layers, num_heads, dropout, max_length)
        # float32 outputs also under mixed precision (logits feed a float32 softmax).
        units = vocab_size if self.head_units is None else self.head_units
        setattr(self, self.head_name,
                keras.layers.Dense(units, dtype="float32", name=self.head_name))

    @property
    def head(self):
        return getattr(self, self.head_name)

    def backbone_config(self):
        """The constructor arguments that describe the backbone."""
        return dict(vocab_size=self.vocab_size, embedding_dim=self.embedding_dim,
                    hidden_dim=self.hidden_dim, backbone=self.backbone_type,
                    num_layers=self.num_layers, num_heads=self.num_heads,
                    dropout=self.dropout, max_length=self.max_length)

    def build(self, input_shape=None):
        if not self.backbone.built:  # a shared trunk is already built
            self.backbone.build(input_shape)
        self.head.build((None, None, self.backbone.output_dim))
        self.built = True

    def get_config(self):
        config = super().get_config()
        config.update(self.backbone_config())
        return config
