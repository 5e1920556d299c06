"""Environments for hand-written episode loops and multi-turn training:
`TextGenerationEnv` (one token a step), `TurnEnv` (one reply a step), `ToolEnv`
(tool calls run between turns), and the episode rollout of the trainers."""

from tfpg.envs.token_env import DiscreteTokens, InvalidActionError, TextGenerationEnv
from tfpg.envs.tool_env import ToolEnv, calculator
from tfpg.envs.turn_env import TurnEnv

__all__ = ["TextGenerationEnv", "DiscreteTokens", "InvalidActionError", "TurnEnv",
           "ToolEnv", "calculator"]
