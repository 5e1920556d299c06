"""`guess`: find a hidden number by asking a simulated user, in as few turns as possible.

Each episode hides a number in 1..`high`. The prompt is `"guess 1 to 16 :"` (word
level); each policy turn names a number and ends with `?`; the simulated user
(`GuessEnv`) answers "higher" or "lower" ("no" to anything that is not a number)
until the number is named. A whole teacher episode, as text:

    guess 1 to 16 : 5 ? higher 13 ? lower 9 ? higher 11 ?

Reward: `(max_turns - turns + 1) / max_turns` when the number is found in `turns`
turns (1.0 at the first guess), 0 when it is not found within `max_turns`.

Why the task is built this way: the teacher guesses a uniformly random number
among those still possible, which finds the number in about 2 ln(high) turns;
halving the interval (binary search) needs about log2(high). Maximum likelihood
learns the teacher's random guesses; the reward, falling with every turn, is what
pushes the policy towards the middle of the interval. Held-out metrics:
"success_rate" and "mean_turns" (episodes that fail count `max_turns`).

Example:
>>> task = GuessTask(seed=0, num_train=4, num_heldout=2, num_pretrain=4)
>>> task.heldout.extras["target"]
[5, 1]
>>> task.evaluate(task.heldout.prompts, ["8 ? lower 4 ? higher 5 ?", "8 ? lower"])
{'success_rate': 0.5, 'mean_turns': 5.5}
"""

import re

import numpy as np

from tfpg.envs.turn_env import TurnEnv
from tfpg.tasks.base import Split, check_positive
from tfpg.tasks.episodic import EpisodeTask, mean

HIGHER, LOWER, INVALID, END = "higher", "lower", "no", "?"


def feedback(guess, target):
    """The user's reply to `guess` (a string) when the hidden number is `target`:
    None when it is right."""
    if not re.fullmatch(r"\d+", guess or ""):
        return INVALID
    value = int(guess)
    if value == target:
        return None
    return HIGHER if value < target else LOWER


def first_word(text):
    """A turn's guess: its first word ("" for an empty turn)."""
    words = text.split()
    return words[0] if words else ""


class GuessEnv(TurnEnv):
    """The simulated user: reads `batch["target"]`, replies higher / lower.

    Args:
        tokenizer: the policy's (word-level) tokenizer.
        max_turns: the reward's horizon (the rollout's `max_turns`).
    """

    metric_names = ("success",)

    def __init__(self, tokenizer, max_turns=8):
        super().__init__(tokenizer, turn_end=END)
        self.max_turns = int(max_turns)

    def start(self, batch):
        if "target" not in batch:
            raise ValueError("GuessEnv needs a 'target' column (the hidden numbers)")
        self.targets = np.asarray(batch["target"]).astype(np.int64)
        return super().start(batch)

    def respond(self, rows, completions):
        replies = [feedback(first_word(text), self.targets[row])
                   for row, text in zip(rows, completions)]
        dones = np.asarray([reply is None for reply in replies])
        turns = self.turns[rows] + 1
        rewards = np.where(dones, (self.max_turns - turns + 1) / self.max_turns, 0.0)
        return [reply or "" for reply in replies], rewards, dones

    def episode_metrics(self):
        return {"success": self.done.astype(np.float32)}


class GuessTask(EpisodeTask):
    """Guess a hidden number in 1..`high` from higher / lower answers.

    Args:
        seed: int. Seed of every random draw.
        high: int. The largest hidden number.
        max_turns: int. Turns per episode at most.
        num_train: int. Fine-tuning episodes.
        num_heldout: int. Evaluation episodes.
        num_pretrain: int. Teacher episodes.

    Splits: every prompt is the same; `extras["target"]` holds the hidden number
    and `references` its string.
    """

    name = "guess"
    level = "word"
    primary_metric = "mean_turns"
    pretrain_epochs = 20
    max_new_tokens = 2      # a number and "?"

    def __init__(self, seed=0, high=16, max_turns=8, num_train=2000, num_heldout=400,
                 num_pretrain=4000):
        check_positive(high=high, max_turns=max_turns, num_train=num_train,
                       num_heldout=num_heldout, num_pretrain=num_pretrain)
        if high < 2:
            raise ValueError(f"high must be >= 2, got {high}")
        self.seed, self.high, self.max_turns = seed, high, max_turns
        self.prompt = f"guess 1 to {high} :"
        rng = np.random.default_rng(seed)
        self.train = self._split(rng.integers(1, high + 1, num_train))
        self.heldout = self._split(rng.integers(1, high + 1, num_heldout))
        self.pretrain_texts = [self.teacher(int(t), rng)
                               for t in rng.integers(1, high + 1, num_pretrain)]

    def teacher(self, target, rng):
        """One teacher episode as text: random guesses among the numbers still possible."""
        low, high, parts = 1, self.high, [self.prompt]
        for _ in range(self.max_turns):
            guess = int(rng.integers(low, high + 1))
            parts.append(f"{guess} {END}")
            reply = feedback(str(guess), target)
            if reply is None:
                break
            parts.append(reply)
            low, high = (guess + 1, high) if reply == HIGHER else (low, guess - 1)
        return " ".join(parts)

    def guesses(self, text):
        """The guesses of an episode's text, read as the rollout lays it out: a turn
        is up to `max_new_tokens` words ending at "?", then one reply word."""
        words, position, guesses = text.split(), 0, []
        while position < len(words):
            turn = words[position:position + self.max_new_tokens]
            if END in turn:
                turn = turn[:turn.index(END) + 1]
            guesses.append(turn[0])
            position += len(turn) + 1        # the turn and the user's reply
        return guesses

    def _split(self, targets):
        return Split(prompts=[self.prompt] * len(targets),
                     references=[str(int(t)) for t in targets],
                     extras={"target": [int(t) for t in targets]})

    def texts(self):
        return super().texts() + [" ".join(str(i) for i in range(1, self.high + 1)),
                                  f"{HIGHER} {LOWER} {INVALID} {END}"]

    def env(self, tokenizer):
        return GuessEnv(tokenizer, self.max_turns)

    def evaluate(self, prompts, completions, split="heldout"):
        """"success_rate" and "mean_turns" (failures count `max_turns`), from episode
        texts after the prompt; the hidden numbers come from `split`'s targets."""
        prompts, completions = self._check_completions(prompts, completions)
        targets = self.split(split).extras["target"]
        found, turns = [], []
        for target, text in zip(targets, completions):
            guesses = self.guesses(text)
            hit = [i for i, g in enumerate(guesses) if feedback(g, target) is None]
            found.append(bool(hit))
            turns.append(hit[0] + 1 if hit else self.max_turns)
        return {"success_rate": mean(found), "mean_turns": mean(turns)}
