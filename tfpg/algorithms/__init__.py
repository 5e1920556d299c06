"""Policy-gradient algorithms, each a `keras.Model` with its own `train_step`.

All share `PolicyGradientTrainer` (rollout, rewards, update loop, distribution);
each module holds only its advantages and loss.
"""

from tfpg.algorithms.a2c import A2C
from tfpg.algorithms.base import PolicyGradientTrainer
from tfpg.algorithms.distillation import OnPolicyDistillation
from tfpg.algorithms.grpo import GRPO
from tfpg.algorithms.ppo import PPO
from tfpg.algorithms.reinforce import REINFORCE
from tfpg.algorithms.rloo import RLOO
from tfpg.algorithms.scst import SCST

# The trainers of a reward: each takes (policy, reward_fn, **options).
ALGORITHMS = {"reinforce": REINFORCE, "scst": SCST, "rloo": RLOO, "grpo": GRPO,
              "a2c": A2C, "ppo": PPO}
# Every trainer `tfpg train --algorithm` names: those, and on-policy distillation,
# which takes (policy, teacher, reward_fn=None, **options).
TRAINERS = {**ALGORITHMS, "distill": OnPolicyDistillation}

__all__ = ["REINFORCE", "SCST", "RLOO", "GRPO", "A2C", "PPO", "OnPolicyDistillation",
           "PolicyGradientTrainer", "ALGORITHMS", "TRAINERS"]
