"""Policy and value networks and their backbones."""

from tfpg.models.policy_network import PolicyNetwork
from tfpg.models.recurrent_backbone import RecurrentBackbone
from tfpg.models.reward_network import RewardNetwork
from tfpg.models.transformer_backbone import TransformerBackbone
from tfpg.models.value_network import ValueNetwork

__all__ = ["PolicyNetwork", "ValueNetwork", "RewardNetwork", "RecurrentBackbone",
           "TransformerBackbone"]
