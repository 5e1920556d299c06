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
from tfpg.options import ALGORITHM_NAMES, TRAINER_NAMES

# The trainers of a reward: each takes (policy, reward_fn, **options). Their names
# are in `tfpg.options` (the command line lists them without importing TensorFlow).
ALGORITHMS = dict(zip(ALGORITHM_NAMES, (REINFORCE, SCST, RLOO, GRPO, A2C, PPO), strict=True))
# Every trainer `tfpg train --algorithm` names: those, and on-policy distillation,
# which takes (policy, teacher, reward_fn=None, **options).
TRAINERS = dict(zip(TRAINER_NAMES, (*ALGORITHMS.values(), OnPolicyDistillation), strict=True))

__all__ = ["REINFORCE", "SCST", "RLOO", "GRPO", "A2C", "PPO", "OnPolicyDistillation",
           "PolicyGradientTrainer", "ALGORITHMS", "TRAINERS"]
