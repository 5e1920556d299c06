"""`PythonReward`: a batched Python/numpy function of decoded strings as a reward."""

import inspect
import json
import threading
import time

import keras
import numpy as np
import tensorflow as tf

from tfpg.data import MESSAGES_COLUMN
from tfpg.rewards.base import (InvalidRewardError, Reward, RewardOutputError, RewardTimeoutError,
                               completion_tokens, current_on_invalid, current_timeout)


def _to_python(column):
    """numpy column from `tf.numpy_function` -> list (bytes decoded to str)."""
    if column.dtype == object:
        return np.vectorize(
            lambda x: x.decode("utf-8", "replace") if isinstance(x, bytes) else x,
            otypes=[object])(column).tolist()
    return column.tolist()


def _item_types(values):
    """"items of type str" for the non-number items of a reward's output."""
    try:
        items = list(np.asarray(values, dtype=object).reshape(-1))
    except (TypeError, ValueError):
        return f"a {type(values).__name__}"
    kinds = sorted({type(v).__name__ for v in items
                    if not isinstance(v, (int, float, np.number, type(None)))})
    return f"items of type {', '.join(kinds)}" if kinds else f"a {type(values).__name__}"


def _accepted_columns(fn, columns):
    """The batch columns `fn` takes by keyword: all of them if it has **kwargs."""
    try:
        parameters = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # builtins without a signature
        return list(columns)
    if any(p.kind == p.VAR_KEYWORD for p in parameters):
        return list(columns)
    names = {p.name for p in parameters[2:]
             if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return [c for c in columns if c in names]


@keras.saving.register_keras_serializable(package="tfpg")
class PythonReward(Reward):
    """Wraps `fn(prompts, completions, **columns) -> sequence of B floats`.

    `fn` gets the whole batch at once: `prompts` and `completions` as lists of
    strings decoded with `tokenizer` (pad and BOS dropped, completions cut before
    EOS), and every other column of the dataset element it names as a keyword
    parameter (all of them if it takes `**kwargs`), as Python lists (strings
    decoded from UTF-8). Without a tokenizer, prompts and completions are lists of
    token ids instead. It runs through `tf.numpy_function`, so it works inside
    `tf.function` (not under XLA).

    For conversational data (a batch with the "prompt_messages" column of
    `prompt_dataset`) `fn` gets what TRL's reward functions get: each prompt as its
    list of messages and each completion as `[{"role": "assistant", "content":
    text}]`.

    Errors follow `compute_rewards(..., on_invalid=...)`: with "raise" an
    exception, a None or a non-finite value fails the step with the reward's name
    and the offending prompt and completion; with "zero" / "skip" the offending
    samples get NaN (the whole batch when the output itself is unusable), which
    `compute_rewards` then masks.

    Under `compute_rewards(..., timeout=T)` (the trainers' `reward_timeout`) `fn`
    runs in a worker thread and the step waits at most T seconds for it: then
    "raise" fails the step naming the reward and T, "zero" / "skip" score the
    batch as invalid. Python cannot stop a thread, so a call that never returns
    is left running (a daemon thread: it does not keep the process alive), and
    while it runs `fn` is not called again (it may not be safe to call twice at
    once): each batch meanwhile is refused the same way.

    Args:
        fn: callable. The Python function.
        tokenizer: `tfpg.Tokenizer`. (or anything with `decode(ids [B, T]) ->
            list[str]`); None passes token ids.
        name: str or None. Defaults to the function's name.

    Example:
    >>> def short(prompts, completions):
    ...     return [1.0 if len(c) < 3 else 0.0 for c in completions]
    >>> reward = PythonReward(short)
    >>> reward(tf.constant([[1, 4]]), tf.constant([[5, 6, 2]]), tf.ones([1, 3]), {}).numpy()
    array([1.], dtype=float32)
    """

    def __init__(self, fn, tokenizer=None, name=None):
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        super().__init__(name=name or getattr(fn, "__name__", None) or type(fn).__name__)
        self.fn = fn
        self.tokenizer = tokenizer
        self._overdue = None      # the worker thread of a call that timed out

    def get_config(self):
        return {"fn": self.fn, "tokenizer": self.tokenizer, "name": self.name}

    def __call__(self, prompt_ids, completion_ids, completion_mask, batch):
        on_invalid = current_on_invalid()  # fixed when traced, like the graph itself
        timeout = current_timeout()
        # The messages are the prompt itself, not a column of their own.
        columns = _accepted_columns(self.fn, sorted(k for k in batch
                                                    if k not in ("prompt", MESSAGES_COLUMN)))
        conversational = MESSAGES_COLUMN in batch and self.tokenizer is not None
        messages = [batch[MESSAGES_COLUMN]] if conversational else []
        # Cut at the tokenizer's EOS, padded with its pad id (KerasHub: not 0).
        text_ids = completion_tokens(completion_ids, completion_mask,
                                     getattr(self.tokenizer, "eos_id", 2),
                                     getattr(self.tokenizer, "pad_id", 0))  # [B, N]

        def run(prompt, completion, *values):
            prompts, completions = self._decode(prompt), self._decode(completion)
            if conversational:     # as TRL: message lists in, assistant messages out
                prompts = [json.loads(text) for text in _to_python(values[0])]
                completions = [[{"role": "assistant", "content": text}]
                               for text in completions]
                values = values[1:]
            extras = {c: _to_python(v) for c, v in zip(columns, values)}
            return self._run(prompts, completions, extras, on_invalid, timeout)

        out = tf.numpy_function(
            run, [tf.cast(prompt_ids, tf.int32), text_ids] + messages +
            [batch[c] for c in columns], tf.float32, stateful=True, name="python_reward")
        out.set_shape(completion_ids.shape[:1])
        return out  # [B]

    def _decode(self, ids):
        if self.tokenizer is not None:
            return list(self.tokenizer.decode(ids))
        return [[int(i) for i in row if i > 1] for row in ids]  # drop pad (0) and BOS (1)

    def _values(self, values, size):
        """`fn`'s output as float32 [size]; InvalidRewardError when unusable."""
        if values is None:
            raise RewardOutputError(f"reward {self.name} returned None; expected a "
                                    f"sequence of {size} floats")
        if isinstance(values, (str, bytes)):
            raise RewardOutputError(f"reward {self.name} returned {type(values).__name__} "
                                    f"{values!r:.40}; expected a sequence of {size} floats")
        try:
            values = np.asarray(values, dtype=np.float64).reshape(-1)  # None items -> nan
        except (TypeError, ValueError) as error:
            raise RewardOutputError(f"reward {self.name} returned values that are not "
                                    f"numbers ({error}; {_item_types(values)})") from None
        if values.shape != (size,):
            raise RewardOutputError(f"reward {self.name} returned {values.size} values for "
                                    f"a batch of {size}")
        return values.astype(np.float32)

    def _call(self, deadline, timeout, *args, **kwargs):
        """`fn(*args, **kwargs)`; with a `deadline` (time.monotonic()) in a worker
        thread, waited for until then (RewardTimeoutError after it)."""
        if deadline is None:
            return self.fn(*args, **kwargs)
        if self._overdue is not None and self._overdue.is_alive():
            raise RewardTimeoutError(
                f"reward {self.name} is still running a call that took longer than "
                f"reward_timeout={timeout:g} s; it is not called again until that returns")
        outcome = {}

        def work():
            try:
                outcome["value"] = self.fn(*args, **kwargs)
            except BaseException as error:  # noqa: BLE001 - re-raised in the caller
                outcome["error"] = error

        worker = threading.Thread(target=work, name=f"tfpg-reward-{self.name}", daemon=True)
        worker.start()
        worker.join(max(0.0, deadline - time.monotonic()))
        if worker.is_alive():
            self._overdue = worker
            raise RewardTimeoutError(f"reward {self.name} did not return within {timeout:g} "
                                     f"s (reward_timeout={timeout:g}; None waits for ever)")
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]

    def _run(self, prompts, completions, extras, on_invalid, timeout=None):
        size = len(completions)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            values = self._call(deadline, timeout, prompts, completions, **extras)
        except RewardTimeoutError:
            if on_invalid == "raise":
                raise
            return np.full([size], np.nan, np.float32)    # the batch is invalid
        except Exception as error:  # noqa: BLE001 -- reported or masked per sample below
            values = self._run_one_by_one(prompts, completions, extras, on_invalid, error,
                                          deadline, timeout)
        try:
            values = self._values(values, size)
        except InvalidRewardError:
            if on_invalid == "raise":
                raise
            values = np.full([size], np.nan, np.float32)  # the whole batch is unusable
        bad = np.flatnonzero(~np.isfinite(values))
        if on_invalid == "raise" and bad.size:
            i = int(bad[0])
            raise InvalidRewardError(
                f"reward {self.name} returned {values[i]} for sample {i}: "
                f"prompt={prompts[i]!r} completion={completions[i]!r}")
        return values

    def _run_one_by_one(self, prompts, completions, extras, on_invalid, batch_error,
                        deadline=None, timeout=None):
        """After `fn` raised on the batch: finds the failing samples (NaN, or raise),
        all within the batch's `deadline`."""
        values = np.full([len(completions)], np.nan, np.float32)
        failed = False
        for i in range(len(completions)):
            one = {k: v[i:i + 1] for k, v in extras.items()}
            try:
                values[i] = self._values(self._call(
                    deadline, timeout, prompts[i:i + 1], completions[i:i + 1], **one), 1)[0]
            except RewardTimeoutError:
                if on_invalid == "raise":
                    raise
                return np.full([len(completions)], np.nan, np.float32)
            except Exception as error:  # noqa: BLE001
                if on_invalid == "raise":
                    raise InvalidRewardError(
                        f"reward {self.name} raised {type(error).__name__}: {error} on "
                        f"sample {i}: prompt={prompts[i]!r} completion={completions[i]!r}"
                    ) from error
                failed = True
        if failed:
            return values
        # Every sample works alone, so the batch as a whole is the problem.
        if on_invalid == "raise":
            raise InvalidRewardError(
                f"reward {self.name} raised {type(batch_error).__name__}: {batch_error} "
                f"on a batch of {len(completions)} (first prompt={prompts[0]!r} "
                f"completion={completions[0]!r})") from batch_error
        return np.full([len(completions)], np.nan, np.float32)
