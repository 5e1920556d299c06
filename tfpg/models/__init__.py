"""Policies (`Policy`, the interface they share), value networks and their backbones."""

from tfpg.models.copying import copy_policy
from tfpg.models.keras_hub_backbone import KerasHubBackbone
from tfpg.models.keras_hub_policy import KerasHubPolicy
from tfpg.models.keras_hub_reward_network import KerasHubRewardNetwork
from tfpg.models.keras_hub_value_network import KerasHubValueNetwork
from tfpg.models.policy import Policy, check_policy
from tfpg.models.policy_network import PolicyNetwork
from tfpg.models.recurrent_backbone import RecurrentBackbone
from tfpg.models.reward_network import RewardNetwork
from tfpg.models.transformer_backbone import TransformerBackbone
from tfpg.models.value_network import ValueNetwork

__all__ = ["Policy", "check_policy", "PolicyNetwork", "ValueNetwork", "RewardNetwork",
           "RecurrentBackbone", "TransformerBackbone", "KerasHubPolicy", "KerasHubValueNetwork",
           "KerasHubBackbone", "KerasHubRewardNetwork", "copy_policy"]
