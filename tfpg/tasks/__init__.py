"""Bundled synthetic tasks: seeded data, a reward and held-out metrics each.

* "arithmetic": addition learned from teaching data that drops carries; an
  exact-match verifier reward fixes what maximum likelihood copied.
* "translate": a synthetic language pair (SOV order, gender/number agreement,
  synonyms giving several references); sentence-BLEU reward.
* "keywords": a small topic corpus; the reward asks for a positive word in the
  completion, to be balanced with a KL penalty to the reference model.
* "calculator" (multi-turn): 3-digit x 2-digit products with a `calc` tool the
  teacher seldom uses; exact-match reward from a `ToolEnv`.
* "guess" (multi-turn): find a hidden number from a simulated user's higher /
  lower answers; the reward falls with the number of turns.

Example:
>>> task = get_task("translate", seed=1, num_train=8, num_heldout=4, num_pretrain=16)
>>> task.name, task.level, task.primary_metric
('translate', 'word', 'bleu')
"""

from tfpg.options import TASK_NAMES
from tfpg.tasks.arithmetic import ArithmeticTask
from tfpg.tasks.base import Split, Task
from tfpg.tasks.calculator import CalculatorTask
from tfpg.tasks.episodic import EpisodeTask
from tfpg.tasks.guess import GuessTask
from tfpg.tasks.keywords import KeywordsTask
from tfpg.tasks.preference import PreferenceTask
from tfpg.tasks.translate import TranslateTask

# Names in `tfpg.options`: the command line lists them without importing TensorFlow.
TASKS = dict(zip(TASK_NAMES, (ArithmeticTask, TranslateTask, KeywordsTask, PreferenceTask,
                              CalculatorTask, GuessTask), strict=True))


def get_task(name, **options):
    """Builds the task called `name` with its `options` (e.g. `seed=0`).

    Example:
    >>> get_task("arithmetic", seed=3, flaw_rate=0.7, num_pretrain=10).flaw_rate
    0.7
    >>> get_task("chess")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: unknown task 'chess'; known tasks: arithmetic, calculator, guess, ...
    """
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name](**options)


__all__ = ["ArithmeticTask", "CalculatorTask", "EpisodeTask", "GuessTask", "KeywordsTask",
           "PreferenceTask", "Split", "TASKS", "Task", "TranslateTask", "get_task"]
