"""`calculator`: 3-digit x 2-digit products, solvable with a `calc` tool.

The model reads `"417*38="` and ends the episode with the product and EOS. A small
character-level LSTM cannot multiply, but it can call the tool: a turn that
writes `calc(417*38)` (the `ToolEnv` tags `open_tag="{name}("`, `close_tag=")"`;
the closing ")" also ends the turn) gets the observation `=15846` and a newline,
and the next turn copies the answer. A whole teacher episode, as text:

    417*38=calc(417*38)=15846
    15846

Why the task is built this way: the teacher calls the tool in only a fraction
`tool_rate` (30% by default) of its demonstrations; in the others it answers at
once with a rough estimate (the first operand times the second rounded to tens,
`417*40=16680`), which is wrong unless the second operand ends in 0. Maximum
likelihood copies that habit: the pre-trained model calls the tool about
`tool_rate` of the time, and is right about as often. The reward is exact match of
the final answer, so policy-gradient fine-tuning is what makes the model use the
tool every time. Held-out metrics: "accuracy", "tool_call_rate" (episodes with at
least one call) and "calls_per_episode".

Example:
>>> task = CalculatorTask(seed=0, num_train=4, num_heldout=2, num_pretrain=4)
>>> task.evaluate(["417*38=", "417*38="], ["calc(417*38)=15846\\n15846", "16680"])
{'accuracy': 0.5, 'tool_call_rate': 0.5, 'calls_per_episode': 0.5}
"""

import re

import numpy as np

from tfpg.envs.tool_env import ToolEnv, calculator
from tfpg.tasks.base import Split, check_positive, check_rate
from tfpg.tasks.episodic import EpisodeTask, mean

_PROMPT = re.compile(r"^(\d+)\*(\d+)=$")
_CALL = "calc("
_ERROR = "=error\n"


def parse_prompt(prompt):
    """`"417*38="` -> (417, 38); ValueError for anything else."""
    match = _PROMPT.match(prompt.strip())
    if not match:
        raise ValueError(f"calculator prompt must look like '417*38=', got {prompt!r}")
    return int(match.group(1)), int(match.group(2))


def estimate(a, b):
    """The teacher's answer without the tool: b rounded to tens (417*38 -> 16680)."""
    return a * (int(round(b, -1)) or 10)


def final_answer(text):
    """The last line of an episode's text (its final answer), stripped."""
    return text.rstrip("\n").rsplit("\n", 1)[-1].strip()


class CalculatorTask(EpisodeTask):
    """Products of a 3-digit and a 2-digit number, with a `calc` tool.

    Args:
        seed: int. Seed of every random draw.
        tool_rate: float. Fraction of the teacher's episodes that call the tool.
        num_train: int. Fine-tuning prompts.
        num_heldout: int. Evaluation prompts.
        num_pretrain: int. Teacher episodes.
        timeout: float. Seconds a tool call may take.

    Splits: `references` and `extras["answer"]` hold the product as a string.
    """

    name = "calculator"
    level = "char"
    primary_metric = "accuracy"
    pretrain_epochs = 30
    max_turns = 3
    max_new_tokens = 14     # "calc(417*38)" is 12 characters; an answer 5 and EOS

    def __init__(self, seed=0, tool_rate=0.3, num_train=2000, num_heldout=400,
                 num_pretrain=4000, timeout=1.0):
        check_positive(num_train=num_train, num_heldout=num_heldout,
                       num_pretrain=num_pretrain)
        check_rate(tool_rate=tool_rate)
        self.seed, self.tool_rate, self.timeout = seed, tool_rate, timeout
        rng = np.random.default_rng(seed)
        space = 900 * 90
        drawn = rng.choice(space, size=num_heldout + max(num_train, num_pretrain),
                           replace=False)
        heldout = drawn[:num_heldout]
        rest = drawn[num_heldout:]

        def pairs(indices):
            return [(100 + int(i) // 90, 10 + int(i) % 90) for i in indices]

        self.heldout = self._split(pairs(heldout))
        self.train = self._split(pairs(rng.permutation(rest)[:num_train]))
        uses_tool = rng.random(num_pretrain) < tool_rate
        self.pretrain_texts = [self.teacher(a, b, tool)
                               for (a, b), tool in zip(pairs(rest[:num_pretrain]), uses_tool)]

    @staticmethod
    def teacher(a, b, use_tool):
        """One teacher episode as text (see the module docstring)."""
        if use_tool:
            return f"{a}*{b}=calc({a}*{b})={a * b}\n{a * b}"
        return f"{a}*{b}={estimate(a, b)}"

    @staticmethod
    def _split(pairs):
        answers = [str(a * b) for a, b in pairs]
        return Split(prompts=[f"{a}*{b}=" for a, b in pairs], references=answers,
                     extras={"answer": list(answers)})

    def texts(self):
        return super().texts() + [_ERROR]

    def env(self, tokenizer):
        """A `ToolEnv` with the `calc` tool; reward 1 for the exact product."""
        def exact(answers, batch):
            expected = [value.decode() if isinstance(value, bytes) else str(value)
                        for value in batch["answer"]]
            return [float(final_answer(text) == answer)
                    for text, answer in zip(answers, expected)]

        return ToolEnv({"calc": calculator}, tokenizer, reward_fn=exact, turn_end=")",
                       timeout=self.timeout, open_tag="{name}(", close_tag=")",
                       result_format="={output}\n", error_format=_ERROR)

    def evaluate(self, prompts, completions, split="heldout"):
        """"accuracy" (final answer == product), "tool_call_rate" (episodes with a
        call) and "calls_per_episode", from episode texts after the prompt."""
        prompts, completions = self._check_completions(prompts, completions)
        correct, calls = [], []
        for prompt, text in zip(prompts, completions):
            a, b = parse_prompt(prompt)
            calls.append(text.count(_CALL))
            correct.append(final_answer(text) == str(a * b))
        return {"accuracy": mean(correct), "tool_call_rate": mean([c > 0 for c in calls]),
                "calls_per_episode": mean(calls)}
