"""Rewards for policy-gradient fine-tuning.

Every reward is a callable `reward_fn(prompt_ids, completion_ids, completion_mask,
batch) -> float32 [B]`; trainers call it through `compute_rewards`, which
validates the result and masks invalid samples (see `tfpg.rewards.base`).
"""

from tfpg.rewards.base import (ON_INVALID, InvalidRewardError, Reward, RewardOutputError,
                               RewardResult, RewardTimeoutError, check_reward, compact_ids,
                               completion_token_mask, completion_tokens, compute_rewards, id_mask,
                               reward_name)
from tfpg.rewards.bleu import BLEU, SMOOTHING_METHODS, corpus_bleu, sentence_bleu
from tfpg.rewards.combine import WeightedSum
from tfpg.rewards.keyword import Keyword
from tfpg.rewards.length import Length
from tfpg.rewards.match import ExactMatch
from tfpg.rewards.overlong import OverlongPenalty
from tfpg.rewards.perplexity import Perplexity
from tfpg.rewards.preference import (PreferenceTrainer, pairwise_accuracy, read_preference_pairs,
                                     train_preference_model)
from tfpg.rewards.python_reward import PythonReward
from tfpg.rewards.reward_model import RewardModel, train_reward_from_labels

__all__ = [
    "BLEU", "ExactMatch", "InvalidRewardError", "Keyword", "Length", "ON_INVALID",
    "OverlongPenalty",
    "Perplexity", "PreferenceTrainer", "PythonReward", "Reward", "RewardModel",
    "RewardOutputError", "RewardResult", "RewardTimeoutError",
    "SMOOTHING_METHODS", "WeightedSum", "check_reward", "compact_ids", "completion_token_mask",
    "completion_tokens", "compute_rewards", "corpus_bleu", "id_mask", "pairwise_accuracy",
    "read_preference_pairs",
    "reward_name", "sentence_bleu", "train_preference_model", "train_reward_from_labels",
]
