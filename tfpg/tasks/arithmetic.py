"""`arithmetic`: multi-digit addition, learned from a teacher who drops carries.

The model reads a prompt such as `"457+38="` and writes the sum, `"495"`, followed by
EOS (character level, so every digit is one token).

Why the task is built this way: the maximum-likelihood teaching data is *flawed*.
In a fraction `flaw_rate` of the teaching examples whose sum involves a carry, the
answer is written with every carry dropped (each column's digit sum mod 10:
`457+38=485` instead of `495`). Examples without a carry are always right. Cross-
entropy faithfully learns the teacher, flaw included: with `flaw_rate > 0.5` greedy
decoding prefers the carry-dropped answer, and sampling gives it about `flaw_rate` of
the time. More teaching data cannot fix that; a verifier can. The reward is exact
match against the correct sum (computed in-graph from `batch["reference"]`), so
policy-gradient fine-tuning is what turns a flawed adder into a correct one, and the
held-out metrics split by carry / no carry show where the gain comes from
(`dropped_carry` tracks how often the model still writes the teacher's flawed answer).

Held-out operand pairs occur neither in the teaching data nor among the fine-tuning
prompts, so held-out accuracy measures the learned rule, not memory. Two-digit
operands by default: a 128-unit LSTM learns them (most-significant digit first, as
people write sums) from the 6000 teaching examples in about 40 epochs, a minute on
two CPU cores; three digits take several times longer.

Example:
>>> task = ArithmeticTask(seed=0, num_train=4, num_heldout=2, num_pretrain=6)
>>> task.train.prompts[0], task.train.references[0]
('34+96=', '130')
>>> task.evaluate(["457+38=", "12+34="], ["485", "46"])
{'exact_match': 0.5, 'exact_match_carry': 0.0, 'exact_match_no_carry': 1.0, 'dropped_carry': 1.0}
"""

import math
import re

import numpy as np

from tfpg import rewards
from tfpg.tasks.base import Split, Task, check_positive, check_rate

_PROMPT = re.compile(r"^\s*(\d+)\+(\d+)=\s*$")


def carry_free_sum(a, b):
    """The sum written column by column without carrying (each digit sum mod 10).

    Example:
    >>> carry_free_sum(457, 38), carry_free_sum(500, 500), carry_free_sum(12, 34)
    (485, 0, 46)
    """
    total, place = 0, 1
    while a or b:
        total += (a % 10 + b % 10) % 10 * place
        a, b, place = a // 10, b // 10, place * 10
    return total


def has_carry(a, b):
    """True when adding a and b carries in at least one column.

    Example:
    >>> has_carry(457, 38), has_carry(12, 34)
    (True, False)
    """
    return carry_free_sum(a, b) != a + b


def parse_prompt(prompt):
    """`"457+38="` -> (457, 38); ValueError for anything else."""
    match = _PROMPT.match(prompt)
    if not match:
        raise ValueError(f"arithmetic prompt must look like '457+38=', got {prompt!r}")
    return int(match.group(1)), int(match.group(2))


class ArithmeticTask(Task):
    """Addition of `min_digits`..`max_digits`-digit operands with flawed teaching data.

    Args:
        seed: int. Seed of every random draw.
        min_digits: int. The smallest operand size in digits (operands are uniform
            over all numbers of the sizes from `min_digits` to `max_digits`).
        max_digits: int. The largest operand size in digits.
        flaw_rate: float. Fraction of the teaching examples *with a carry* whose answer
            drops every carry; examples without a carry are never flawed.
        num_train: int. Fine-tuning prompts.
        num_heldout: int. Evaluation prompts.
        num_pretrain: int. Teaching examples (`pretrain_texts`).

    Splits: `references` hold the correct sum as a string; `extras` hold
    "answer" (the same string) and "carry" (bool: does the sum carry?).
    """

    name = "arithmetic"
    level = "char"
    primary_metric = "exact_match"
    pretrain_epochs = 40

    def __init__(self, seed=0, min_digits=2, max_digits=2, flaw_rate=0.7, num_train=2000,
                 num_heldout=400, num_pretrain=6000):
        check_positive(min_digits=min_digits, max_digits=max_digits, num_train=num_train,
                       num_heldout=num_heldout, num_pretrain=num_pretrain)
        check_rate(flaw_rate=flaw_rate)
        if min_digits > max_digits:
            raise ValueError(f"min_digits ({min_digits}) must not exceed max_digits "
                             f"({max_digits})")
        self.seed = seed
        self.min_digits, self.max_digits = min_digits, max_digits
        self.flaw_rate = flaw_rate
        # The longest sum has max_digits + 1 digits; one more step for EOS.
        self.max_new_tokens = max_digits + 2

        rng = np.random.default_rng(seed)
        first = 10 ** (min_digits - 1)
        operands = 10 ** max_digits - first
        space = operands ** 2
        needed = num_heldout + max(num_train, num_pretrain)
        if needed > space:
            raise ValueError(f"operands of {min_digits} to {max_digits} digits give only "
                             f"{space} distinct pairs, fewer than num_heldout + "
                             f"max(num_train, num_pretrain) = {needed}")

        def pairs(indices):
            """Pair index i <-> operands (first + i // operands, first + i % operands)."""
            return [(first + int(i) // operands, first + int(i) % operands) for i in indices]

        drawn = rng.choice(space, size=num_heldout + num_pretrain, replace=False)
        heldout, teaching = drawn[:num_heldout], drawn[num_heldout:]
        # Fine-tuning prompts avoid the held-out pairs (they may repeat teaching pairs).
        train = rng.choice(space, size=num_heldout + num_train, replace=False)
        train = train[~np.isin(train, heldout)][:num_train]
        self.heldout = self._split(pairs(heldout))
        self.train = self._split(pairs(train))
        flawed = rng.random(num_pretrain) < flaw_rate
        self.pretrain_texts = [
            f"{a}+{b}={carry_free_sum(a, b) if flaw and has_carry(a, b) else a + b}"
            for (a, b), flaw in zip(pairs(teaching), flawed)]

    @staticmethod
    def _split(pairs):
        answers = [str(a + b) for a, b in pairs]
        return Split(prompts=[f"{a}+{b}=" for a, b in pairs], references=answers,
                     extras={"answer": list(answers),
                             "carry": [has_carry(a, b) for a, b in pairs]})

    def reward(self, tokenizer):
        """Exact match of the completion (cut at EOS) with `batch["reference"]`, in-graph.

        1.0 for the correct sum, 0.0 otherwise (the carry-dropped answer included).
        """
        return rewards.ExactMatch(answer_key="reference", eos_id=tokenizer.eos_id,
                                  name="exact_match")

    def evaluate(self, prompts, completions, split="heldout"):
        """Exact-match metrics; the correct sum is read off each prompt.

        Returns "exact_match" (all prompts), "exact_match_carry" and
        "exact_match_no_carry" (prompts whose sum does / does not carry; NaN when
        there are none) and "dropped_carry" (fraction of carry prompts answered
        with the carry-dropped sum, the teacher's flaw). `split` is not needed:
        the answers follow from the prompts.

        Example:
        >>> task = ArithmeticTask(num_train=1, num_heldout=1, num_pretrain=1)
        >>> metrics = task.evaluate(["15+17=", "15+17=", "11+22="], ["32", "22", "33"])
        >>> [metrics[k] for k in ("exact_match_carry", "exact_match_no_carry", "dropped_carry")]
        [0.5, 1.0, 0.5]
        """
        prompts, completions = self._check_completions(prompts, completions)
        correct, carry, dropped = [], [], []
        for prompt, completion in zip(prompts, completions):
            a, b = parse_prompt(prompt)
            answer = completion.strip()
            correct.append(answer == str(a + b))
            carry.append(has_carry(a, b))
            dropped.append(carry[-1] and answer == str(carry_free_sum(a, b)))
        correct, carry, dropped = (np.asarray(x, bool) for x in (correct, carry, dropped))
        return {
            "exact_match": float(correct.mean()),
            "exact_match_carry": _mean(correct[carry]),
            "exact_match_no_carry": _mean(correct[~carry]),
            "dropped_carry": _mean(dropped[carry]),
        }


def _mean(values):
    return float(values.mean()) if values.size else math.nan
