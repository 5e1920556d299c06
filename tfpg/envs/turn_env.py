"""`TurnEnv`: batched, turn-level episodes (the protocol of multi-turn rollouts).

A multi-turn episode alternates policy turns and environment replies::

    observations = env.reset(batch)              # one first observation per row
    while rows are unfinished and turns < max_turns:
        texts = <one generated turn per unfinished row>
        observations, rewards, dones = env.step(texts)

`reset(batch)` takes a prompt batch (a dict of numpy / tensor columns with "prompt"
int [B, P] and optionally "prompt_mask", as made by `tfpg.data.prompt_dataset`) and
returns B first observations; `step(completions)` takes the decoded turns of the
unfinished rows (in the order of `env.unfinished`) and returns, for those rows, the
next observations, the turn's rewards (float32 [n]) and dones (bool [n]). A row is
finished once its `done` came back True; later steps leave it out. Both calls are
made once per turn for the whole batch, never once per row, so an environment can
batch its own work (a reward model, a pool of tool calls).

An observation is a string (tokenised with `env.tokenizer`: the first one with BOS,
the later ones without) or a sequence of token ids used as they are. Subclasses
implement `respond(rows, completions)` (and may override `start(batch)`, which by
default returns each row's prompt ids without padding). The rollout
(`tfpg.envs.multi_turn.rollout_episodes`) ends a turn at `env.turn_end` (a token of the
tokenizer, or None for EOS), at EOS, or after its per-turn token budget.

`TurnEnv` is Gymnasium-like but batched and turn-level; `tfpg.envs.TextGenerationEnv`
is the one-token-per-call single-episode environment for hand-written loops.
"""

import numpy as np


def as_numpy_batch(batch):
    """dict of tensors / arrays / lists -> dict of numpy arrays (strings as bytes)."""
    if not isinstance(batch, dict) or "prompt" not in batch:
        raise ValueError("batch must be a dict with a 'prompt' column (int [B, P]), as "
                         "made by tfpg.data.prompt_dataset")
    columns = {}
    for key, value in batch.items():
        columns[key] = value.numpy() if hasattr(value, "numpy") else np.asarray(value)
    prompt = columns["prompt"]
    if prompt.ndim != 2:
        raise ValueError(f"batch['prompt'] must be [batch, length], got shape {prompt.shape}")
    return columns


def prompt_rows(batch, pad_id=0):
    """Each row's prompt ids without padding: list of B lists of ints.

    Padding is told by `batch["prompt_mask"]` when present, else by `pad_id`.
    """
    prompt = np.asarray(batch["prompt"])
    mask = batch.get("prompt_mask")
    mask = prompt != pad_id if mask is None else np.asarray(mask) > 0
    return [row[keep].astype(np.int64).tolist() for row, keep in zip(prompt, mask)]


def rows_of(batch, rows):
    """The rows `rows` (int [n]) of every column of a numpy batch."""
    return {key: value[rows] for key, value in batch.items()}


class TurnEnv:
    """Base class of batched turn-level environments (see the module docstring).

    Args:
        tokenizer: `tfpg.Tokenizer`. The policy's tokenizer (`encode` / `decode`);
            observations that are strings are tokenised with it and turns are decoded
            with it.
        turn_end: str, int or None. The token (a string of the vocabulary, or an id)
            that ends a policy turn besides EOS; None: turns end at EOS only.

    Attributes:
        batch: the numpy columns of the batch given to `reset`.
        done: bool [B], the rows whose episode is over.
        turns: int [B], policy turns stepped per row.
        metric_names: names of the per-episode statistics `episode_metrics` gives
            (the trainers log them).
        reply_role: the chat role of the replies when the prompts are conversations:
            each reply is rendered as that role's turn of the chat template.
    """

    metric_names = ()
    # The role of the env's replies when the episode is a chat (conversational
    # prompts, rendered with the tokenizer's chat template): the next user turn.
    reply_role = "user"

    def __init__(self, tokenizer, turn_end=None):
        if tokenizer is None or not hasattr(tokenizer, "encode"):
            raise ValueError("tokenizer is required (the policy's: it encodes "
                             "observations and decodes turns)")
        self.tokenizer = tokenizer
        self.turn_end = turn_end
        self.turn_end_id = self._token_id(turn_end)
        self.batch = None
        self.done = np.zeros([0], bool)
        self.turns = np.zeros([0], np.int64)

    def _token_id(self, token):
        if token is None:
            return None
        if isinstance(token, (int, np.integer)) and not isinstance(token, bool):
            token_id = int(token)
        elif isinstance(token, str):
            ids = self.tokenizer.encode(token, add_bos=False)
            if len(ids) != 1 or ids[0] == getattr(self.tokenizer, "unk_id", None):
                raise ValueError(f"turn_end {token!r} must be one token of the "
                                 f"vocabulary; it encodes to {ids}")
            token_id = ids[0]
        else:
            raise TypeError(f"turn_end must be None, a token string or an id, "
                            f"got {type(token).__name__}")
        size = getattr(self.tokenizer, "vocabulary_size", None)
        if token_id < 0 or (size is not None and token_id >= size):
            raise ValueError(f"turn_end id {token_id} is outside the vocabulary")
        return token_id

    # -------------------------------------------------------------- protocol

    def reset(self, batch):
        """Starts one episode per row of `batch`; returns B first observations."""
        self.batch = as_numpy_batch(batch)
        size = len(self.batch["prompt"])
        self.done = np.zeros([size], bool)
        self.turns = np.zeros([size], np.int64)
        observations = list(self.start(self.batch))
        if len(observations) != size:
            raise ValueError(f"{type(self).__name__}.start gave {len(observations)} "
                             f"observations for {size} rows")
        return observations

    @property
    def unfinished(self):
        """int64 [n]: the rows whose episode goes on, in the order `step` expects."""
        return np.flatnonzero(~self.done)

    def step(self, completions, rows=None):
        """One policy turn for the unfinished rows (or for `rows`, a subset of them).

        Args:
            completions: list of str. List of n decoded turn texts.
            rows: int array [n] or None. The batch rows they belong to; None:
                `self.unfinished`.

        Returns:
            (observations: list of n, rewards: float32 [n], dones: bool [n]).
        """
        if self.batch is None:
            raise RuntimeError("call reset(batch) before step()")
        rows = self.unfinished if rows is None else np.asarray(rows, np.int64).reshape([-1])
        completions = list(completions)
        if len(completions) != len(rows):
            raise ValueError(f"step got {len(completions)} completions for {len(rows)} "
                             "unfinished rows")
        if rows.size and self.done[rows].any():
            raise ValueError(f"rows {rows[self.done[rows]].tolist()} are already done")
        if not rows.size:
            return [], np.zeros([0], np.float32), np.zeros([0], bool)
        observations, rewards, dones = self.respond(rows, completions)
        observations = list(observations)
        rewards = np.asarray(rewards, np.float32).reshape([-1])
        dones = np.asarray(dones, bool).reshape([-1])
        if not len(observations) == rewards.size == dones.size == len(rows):
            raise ValueError(f"{type(self).__name__}.respond must give one observation, "
                             f"reward and done per row ({len(rows)}); got "
                             f"{len(observations)}, {rewards.size}, {dones.size}")
        self.turns[rows] += 1
        self.done[rows] |= dones
        return observations, rewards, dones

    def start(self, batch):
        """First observations: each row's prompt ids (padding removed)."""
        return prompt_rows(batch, getattr(self.tokenizer, "pad_id", 0))

    def respond(self, rows, completions):
        """(observations, rewards, dones) of the turns `completions` of batch `rows`."""
        raise NotImplementedError

    def episode_metrics(self):
        """name -> float [B] per-episode statistics of the last batch (see
        `metric_names`); called once the rollout is over."""
        return {}

    def close(self):
        """Releases what the environment holds (nothing here)."""

    def __repr__(self):
        return f"{type(self).__name__}(turn_end={self.turn_end!r})"
