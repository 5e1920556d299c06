"""The common shape of a bundled task: seeded data, a reward and held-out metrics.

A task is everything `tfpg train --task NAME` needs besides the model and the
algorithm:

* `pretrain_texts`: the maximum-likelihood teaching data (full prompt + answer
  strings, exactly as the language model should learn to write them);
* two `Split`s, `train` (prompts for policy-gradient fine-tuning) and `heldout`
  (prompts for before/after evaluation), with disjoint prompts;
* `tokenizer()`: one vocabulary over all of the task's text, so held-out data has
  no unknown tokens;
* `reward(tokenizer)`: an in-graph reward with the `tfpg.rewards` interface;
* `evaluate(prompts, completions, split)`: Python-side metrics on decoded strings,
  `primary_metric` naming the one the CLI reports as "before/after".

Every generator draws from `numpy.random.default_rng(seed)` only, so the same
options give the same data on every machine.

Example:
>>> from tfpg.tasks import get_task
>>> task = get_task("arithmetic", seed=0, num_train=8, num_heldout=4, num_pretrain=16)
>>> len(task.train), len(task.heldout), task.primary_metric
(8, 4, 'exact_match')
"""

import dataclasses

from tfpg import data
from tfpg.text.tokenizer import Tokenizer


@dataclasses.dataclass(frozen=True)
class Split:
    """One split of a task: parallel lists of prompts, references and extra columns.

    Attributes:
        prompts: list[str].
        references: list[str] (one reference per prompt) or list[list[str]]
            (several valid references per prompt).
        extras: dict column name -> list of values, one per prompt; these become
            batch columns of `Task.prompt_dataset` (e.g. "answer").
    """

    prompts: list
    references: list
    extras: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if len(self.references) != len(self.prompts):
            raise ValueError(f"{len(self.prompts)} prompts but {len(self.references)} "
                             "references")
        for name, values in self.extras.items():
            if len(values) != len(self.prompts):
                raise ValueError(f"{len(self.prompts)} prompts but {len(values)} values "
                                 f"in extras[{name!r}]")

    def __len__(self):
        return len(self.prompts)


def _flatten(references):
    for reference in references:
        if isinstance(reference, (list, tuple)):
            yield from reference
        else:
            yield reference


def check_positive(**values):
    """Raises ValueError naming the first option that is not a positive int."""
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def check_rate(**values):
    """Raises ValueError naming the first option outside [0, 1]."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")


class Task:
    """Base class of the bundled tasks (see the module docstring).

    Subclasses set the class attributes `name`, `level` ("word" or "char"),
    `primary_metric`, `max_new_tokens` (room for the longest answer and its EOS)
    and `pretrain_epochs` (maximum-likelihood epochs after which a 128-unit LSTM
    has learned the teaching data, flaws included: a default for the CLI), fill
    `pretrain_texts`, `train` and `heldout` in their constructor, and implement
    `reward` and `evaluate`.
    """

    name = None
    level = None
    primary_metric = None
    max_new_tokens = None
    pretrain_epochs = None

    pretrain_texts: list
    train: Split
    heldout: Split

    def split(self, name):
        """The `Split` called `name` ("train" or "heldout")."""
        if name not in ("train", "heldout"):
            raise ValueError(f"split must be 'train' or 'heldout', got {name!r}")
        return getattr(self, name)

    def texts(self):
        """Every text of the task: teaching data, prompts and references of both splits."""
        texts = list(self.pretrain_texts)
        for split in (self.train, self.heldout):
            texts += split.prompts
            texts += list(_flatten(split.references))
        return texts

    def tokenizer(self):
        """A `Tokenizer` at `self.level` over `texts()`: no unknown tokens in any split."""
        return Tokenizer.from_texts(self.texts(), level=self.level)

    def reward(self, tokenizer):
        """The task's reward_fn(prompt_ids, completion_ids, completion_mask, batch) -> [B]."""
        raise NotImplementedError

    def evaluate(self, prompts, completions, split="heldout"):
        """Metrics (name -> float) of decoded `completions` for `prompts` of `split`.

        `split` names where the prompts come from, for tasks that look answers up
        there; the bundled tasks derive the answers from the prompts themselves.
        """
        raise NotImplementedError

    def prompt_dataset(self, tokenizer, split="train", batch_size=32, **options):
        """`tfpg.data.prompt_dataset` over a split, with its references and extras.

        `options` go to `tfpg.data.prompt_dataset` (e.g. `shuffle=True`, `seed`,
        `repeat`, `drop_remainder`).
        """
        part = self.split(split)
        return data.prompt_dataset(part.prompts, tokenizer, references=part.references,
                                   extras=part.extras or None, batch_size=batch_size,
                                   **options)

    def _check_completions(self, prompts, completions):
        prompts, completions = list(prompts), list(completions)
        if len(prompts) != len(completions):
            raise ValueError(f"got {len(prompts)} prompts but {len(completions)} completions")
        if not prompts:
            raise ValueError(f"{self.name}.evaluate: no completions to evaluate")
        return prompts, completions

    def __repr__(self):
        return (f"{type(self).__name__}(train={len(self.train)}, heldout={len(self.heldout)}, "
                f"pretrain_texts={len(self.pretrain_texts)})")
