"""The reward interface, and the checks the trainers run on every reward.

A reward is any callable

    reward_fn(prompt_ids, completion_ids, completion_mask, batch) -> float32 [B]

with `prompt_ids` int32 [B, P] (left-padded, BOS first), `completion_ids` int32
[B, N] (EOS included where generation stopped), `completion_mask` float32 [B, N]
(1 on real tokens, EOS included) and `batch` the dataset element dict. Plain
functions work; classes subclass `Reward` for a name and a config.

Trainers never call a reward directly: they call `compute_rewards`, which

* checks the result's type, dtype and shape when the step is traced, raising
  `TypeError` / `ValueError` that name the reward (no value exists yet to mask,
  so these always raise);
* casts to float32 and squeezes `[B, 1]` to `[B]`;
* finds non-finite rewards (NaN, +-inf) at run time and, per `on_invalid`:

  - "raise" (default): fails with "reward BLEU returned nan for sample 3
    (completion ids [...])". Eagerly this is an `InvalidRewardError`; inside
    `tf.function` / `model.fit` it is a `tf.errors.InvalidArgumentError` with the
    same text. XLA (`jit_compile=True`) compiles assertions away, so there
    "raise" cannot stop the step: it acts as "zero" (the count still shows);
  - "zero": the sample's reward becomes 0 and it stays in the loss
    (`valid` = 1);
  - "skip": the sample's reward becomes 0 and `valid` = 0, so the trainer
    drops it from the loss;

  and counts them in `invalid_count`. Invalid values are replaced with
  `tf.where`, never multiplied by a mask, so a NaN cannot reach the gradients,
  in every mode.
* evaluates the components of a `WeightedSum` one by one (each checked under its
  own name) and reports them in `RewardResult.components`.

`PythonReward` follows `on_invalid` too: with "raise" an exception inside the
user function fails the step naming the reward and the offending prompt and
completion; with "zero" / "skip" the sample gets NaN, which is then masked. It
also follows `compute_rewards(..., timeout=)`: a call that has not returned after
`timeout` seconds fails the step ("raise": "reward score did not return within
600 s (reward_timeout)") or scores its batch as invalid ("zero" / "skip").

`check_reward` calls a reward once, eagerly, on a small batch, and raises
`RewardOutputError` when what it returns is not a batch of numbers (None, a `str`,
a string tensor, the wrong shape): `tfpg train` runs it before any training.

The in-graph rewards (`BLEU` with backend="tf", `ExactMatch` on ids, `Length`,
`Keyword`, `Perplexity`, `RewardModel`, `WeightedSum` of those) also compile
under XLA; rewards that run Python (`PythonReward`, backend="nltk", a
normalizer) need `jit_compile=False`.
"""

import contextlib
import contextvars
import copy
import typing

import keras
import numpy as np
import tensorflow as tf

from tfpg.options import ON_INVALID_REWARD as ON_INVALID
from tfpg.xla import in_xla_context

_ON_INVALID = contextvars.ContextVar("tfpg_rewards_on_invalid", default="raise")
_TIMEOUT = contextvars.ContextVar("tfpg_rewards_timeout", default=None)


class InvalidRewardError(ValueError):
    """A reward returned an unusable value (raised eagerly; inside a graph the
    same message arrives as `tf.errors.InvalidArgumentError`)."""


class RewardOutputError(InvalidRewardError, TypeError):
    """A reward returned something that is not a batch of numbers: None, a `str`, a
    string tensor, the wrong shape. A `TypeError` and a `ValueError` both."""


class RewardTimeoutError(InvalidRewardError):
    """A Python reward did not return within the timeout of `compute_rewards`."""


class Reward:
    """Base class for rewards: a name, `__call__` and `get_config`.

    Subclasses implement `__call__(prompt_ids, completion_ids, completion_mask,
    batch) -> float32 [B]` with TensorFlow ops (or `tf.numpy_function`), so
    they work inside `tf.function`.

    Example:
    >>> class Ones(Reward):
    ...     def __call__(self, prompt_ids, completion_ids, completion_mask, batch):
    ...         return tf.ones(tf.shape(completion_ids)[:1])
    >>> Ones().name, Ones(name="one").get_config()
    ('Ones', {'name': 'one'})
    """

    def __init__(self, name=None):
        self.name = name or type(self).__name__

    def __call__(self, prompt_ids, completion_ids, completion_mask, batch):
        raise NotImplementedError(f"{type(self).__name__} must implement __call__")

    def get_config(self):
        return {"name": self.name}

    @classmethod
    def from_config(cls, config):
        """The reward of `get_config()`, or of its Keras-serialised form (what a
        trainer's config holds): nested Keras objects are deserialised."""
        return cls(**{key: deserialize_nested(value) for key, value in config.items()})

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


def deserialize_nested(value):
    """`value` with each Keras-serialised object in it (a dict with "class_name" and
    "config": a model, a reward, a tokenizer) rebuilt, through lists and tuples."""
    if isinstance(value, dict) and "class_name" in value and "config" in value:
        # A copy: deserialising a functional model consumes its config.
        return keras.saving.deserialize_keras_object(copy.deepcopy(value))
    if isinstance(value, (list, tuple)):
        return type(value)(deserialize_nested(item) for item in value)
    return value


def reward_name(reward_fn):
    """The name errors and metrics use: `.name`, else `__name__`, else the class."""
    name = getattr(reward_fn, "name", None)
    if isinstance(name, str) and name:
        return name
    return getattr(reward_fn, "__name__", None) or type(reward_fn).__name__


def current_on_invalid():
    """The `on_invalid` policy of the enclosing `compute_rewards` ("raise" outside).

    Rewards that run Python code (`PythonReward`) read it while being traced to
    decide whether an exception fails the step or yields NaN for the sample.
    """
    return _ON_INVALID.get()


def current_timeout():
    """The `timeout` (seconds, None: no limit) of the enclosing `compute_rewards`:
    rewards that run Python code (`PythonReward`) read it while being traced."""
    return _TIMEOUT.get()


@contextlib.contextmanager
def _on_invalid_scope(on_invalid, timeout=None):
    token = _ON_INVALID.set(on_invalid)
    timeout_token = _TIMEOUT.set(timeout)
    try:
        yield
    finally:
        _TIMEOUT.reset(timeout_token)
        _ON_INVALID.reset(token)


def completion_token_mask(completion_ids, completion_mask, eos_id=2):
    """Which completion positions are text tokens: masked in and before the first EOS.

    Args:
        completion_ids: int [B, N].
        completion_mask: float tensor [B, N]. 1 on generated tokens (EOS included).
        eos_id: int or None. The tokenizer's / policy's EOS id (the first one in a row
            is cut, with everything after it); None keeps every masked-in id.

    Returns:
        float32 [B, N], 1 = text token. Which ids those are never matters: in
        KerasHub vocabularies id 0 is a real token.

    Example:
    >>> completion_token_mask(tf.constant([[0, 6, 2, 7]]), tf.constant([[1., 1., 1., 0.]])).numpy()
    array([[1., 1., 0., 0.]], dtype=float32)
    """
    ids = tf.cast(completion_ids, tf.int32)
    keep = tf.cast(completion_mask, tf.float32) > 0  # [B, N]
    if eos_id is not None:
        is_eos = tf.cast(tf.equal(ids, eos_id), tf.int32)
        keep &= tf.equal(tf.cumsum(is_eos, axis=1), 0)
    return tf.cast(keep, tf.float32)


def completion_tokens(completion_ids, completion_mask, eos_id=2, pad_id=0):
    """The completion's text tokens: ids with EOS and everything after it set to
    `pad_id` (0; a KerasHub tokenizer's own pad id where 0 is a real token).

    For decoding to text. Rewards that compare ids use `completion_token_mask`
    instead: a filler id cannot tell padding from a real token.

    Args:
        completion_ids: int [B, N].
        completion_mask: float tensor [B, N]. 1 on generated tokens (EOS included).
        eos_id: int or None. Id to cut at (the first one in a row); None keeps every
            masked-in id.
        pad_id: int. What replaces the cut ids.

    Returns:
        int32 [B, N], still aligned with the input.

    Example:
    >>> completion_tokens(tf.constant([[5, 6, 2, 7]]), tf.constant([[1., 1., 1., 0.]])).numpy()
    array([[5, 6, 0, 0]], dtype=int32)
    """
    keep = completion_token_mask(completion_ids, completion_mask, eos_id) > 0  # [B, N]
    return tf.where(keep, tf.cast(completion_ids, tf.int32), pad_id)


def id_mask(batch, key, pad_id=0):
    """The mask of the id column `batch[key]`: `batch[key + "_mask"]` when the batch
    has it (`prompt_dataset`'s "reference_mask"), else `batch[key] != pad_id`.

    Args:
        batch: dict. The dataset element dict.
        key: str. An int column, [B, R] or [B, K, R].
        pad_id: int. The fallback's padding id (0 for tfpg's `Tokenizer`).

    Returns:
        float32, the shape of `batch[key]`, 1 = real token.
    """
    ids = tf.convert_to_tensor(batch[key])
    mask_key = f"{key}_mask"
    if mask_key not in batch:
        return tf.cast(tf.not_equal(ids, tf.cast(pad_id, ids.dtype)), tf.float32)
    mask = tf.cast(batch[mask_key], tf.float32)
    if (ids.shape.rank is not None and mask.shape.rank is not None
            and not ids.shape.is_compatible_with(mask.shape)):
        raise ValueError(f"batch[{mask_key!r}] has shape {mask.shape} but batch[{key!r}] "
                         f"has shape {ids.shape}; they must match")
    return mask


def compact_ids(ids, mask=None):
    """Moves the real ids of each row to the front, keeping their order.

    Args:
        ids: int32 tensor [..., T].
        mask: tensor [..., T] or None. Nonzero = real token, anywhere in a row; None:
            the nonzero ids are real (0 = padding, tfpg's `Tokenizer`).

    Returns:
        (compacted int32 [..., T], lengths int32 [...]); positions from a row's
        length on hold 0, which can be a real id: tell them by the length.

    Example:
    >>> [x.numpy().tolist() for x in compact_ids(tf.constant([[0, 5, 0, 6]]))]
    [[[5, 6, 0, 0]], [2]]
    >>> [x.numpy().tolist() for x in compact_ids(tf.constant([[9, 0, 5, 9]]),
    ...                                          tf.constant([[0, 1, 1, 0]]))]
    [[[0, 5, 0, 0]], [2]]
    """
    ids = tf.convert_to_tensor(ids)
    real = tf.not_equal(ids, 0) if mask is None else tf.cast(mask, tf.float32) > 0
    ids = tf.where(real, ids, tf.zeros_like(ids))
    is_pad = 1 - tf.cast(real, tf.int32)
    lengths = tf.reduce_sum(1 - is_pad, axis=-1)
    # Usually rows are already right-padded: skip the sort then.
    compact = tf.reduce_all(is_pad[..., 1:] >= is_pad[..., :-1])
    return tf.cond(
        compact, lambda: tf.identity(ids),
        lambda: tf.gather(ids, tf.argsort(is_pad, axis=-1, stable=True),
                          batch_dims=ids.shape.rank - 1)), lengths


class RewardResult(typing.NamedTuple):
    """What `compute_rewards` returns.

    Attributes:
        rewards: float32 [B], finite; invalid samples hold 0.
        valid: float32 [B]; 0 for samples dropped by on_invalid="skip", else 1
            (with "zero" an invalid sample stays in the loss with reward 0).
            Trainers multiply per-sample losses by it and should leave invalid
            samples out of baselines and group statistics too.
        invalid_count: float32 scalar, number of samples with a non-finite reward
            (any component), whatever `on_invalid` did with them.
        components: dict name -> float32 [B] for each `WeightedSum` component
            (unweighted, invalid samples 0); empty for other rewards.
    """

    rewards: tf.Tensor
    valid: tf.Tensor
    invalid_count: tf.Tensor
    components: dict

    def metrics(self):
        """Scalars to log: `reward/<name>` (mean of each component over valid
        samples) and `invalid_rewards`."""
        denominator = tf.maximum(tf.reduce_sum(self.valid), 1.0)
        logs = {f"reward/{name}": tf.reduce_sum(value * self.valid) / denominator
                for name, value in self.components.items()}
        logs["invalid_rewards"] = self.invalid_count
        return logs


def compute_rewards(reward_fn, prompt_ids, completion_ids, completion_mask, batch,
                    on_invalid="raise", timeout=None):
    """Calls `reward_fn`, validates its output and masks invalid samples.

    Args:
        reward_fn: callable or `tfpg.rewards.Reward`. A `Reward`, a `WeightedSum` or any
            callable with the reward signature.
        prompt_ids: int32 tensor [B, P].
        completion_ids: int32 tensor [B, N].
        completion_mask: float32 tensor [B, N].
        batch: dict. Each with leading dim B.
        on_invalid: str. "raise", "zero" or "skip" (see the module docstring).
        timeout: float or None. Seconds a Python reward (`PythonReward`) may take per
            call; None waits for ever (see the module docstring).

    Returns:
        A `RewardResult`.

    Example:
    >>> result = compute_rewards(lambda p, c, m, b: tf.constant([1.0, float("nan")]),
    ...                          tf.ones([2, 1], tf.int32), tf.ones([2, 3], tf.int32),
    ...                          tf.ones([2, 3]), {}, on_invalid="skip")
    >>> result.rewards.numpy(), result.valid.numpy(), float(result.invalid_count)
    (array([1., 0.], dtype=float32), array([1., 0.], dtype=float32), 1.0)
    """
    if on_invalid not in ON_INVALID:
        raise ValueError(f"on_invalid must be one of {ON_INVALID}, got {on_invalid!r}")
    if not callable(reward_fn):
        raise TypeError(f"reward_fn must be callable, got {type(reward_fn).__name__}")
    batch = {} if batch is None else batch
    args = (prompt_ids, completion_ids, completion_mask, batch)

    parts = getattr(reward_fn, "weighted_components", None)
    if parts is None:
        parts = [(reward_name(reward_fn), reward_fn, 1.0)]
        report = False
    else:
        report = True

    total, finite, components = None, None, {}
    for name, fn, weight in parts:
        described = _describe(fn, name if report else None)
        with _on_invalid_scope(on_invalid, timeout):
            value = fn(*args)
        value = _as_rewards(value, described, completion_ids)  # float32 [B]
        ok = tf.math.is_finite(value)
        if on_invalid == "raise":
            value = _assert_finite(value, ok, described, completion_ids)
        value = tf.where(ok, value, 0.0)
        finite = ok if finite is None else finite & ok
        total = weight * value if total is None else total + weight * value
        if report:
            components[name] = value

    total = tf.where(finite, total, 0.0)  # [B]
    invalid = 1.0 - tf.cast(finite, tf.float32)
    valid = 1.0 - invalid if on_invalid == "skip" else tf.ones_like(invalid)
    return RewardResult(rewards=total, valid=valid, invalid_count=tf.reduce_sum(invalid),
                        components=components)


def call_reward(reward_fn, prompt_ids, completion_ids, completion_mask, batch,
                on_invalid="raise", timeout=None):
    """`reward_fn`'s values as float32 [B], checked like `compute_rewards` checks
    them (type, dtype, shape: `RewardOutputError` naming the reward) but with
    non-finite values kept: for evaluations that report a mean as it is. A Python
    reward follows `on_invalid` and `timeout` as under `compute_rewards`."""
    with _on_invalid_scope(on_invalid, timeout):
        value = reward_fn(prompt_ids, completion_ids, completion_mask, batch)
    return _as_rewards(value, reward_name(reward_fn), completion_ids)


def check_reward(reward_fn, prompt_ids, completion_ids, completion_mask, batch,
                 on_invalid="raise", timeout=None):
    """Calls `reward_fn` once, eagerly, through `compute_rewards`, to refuse a reward
    that cannot work before a run trains with it.

    Raises `RewardOutputError` when the reward returns something that is not a batch
    of numbers (None, a `str`, a string tensor, the wrong shape), and, with
    `on_invalid` "raise", `RewardTimeoutError` when it does not return within
    `timeout` seconds. Every other failure on this batch (a NaN, an exception of
    the reward's own code) is left to the training step, which reports or masks it
    per `on_invalid` on real completions.

    Args: as `compute_rewards` (a small batch: the call is eager).
    """
    try:
        compute_rewards(reward_fn, prompt_ids, completion_ids, completion_mask, batch,
                        on_invalid="raise", timeout=timeout)
    except RewardOutputError:
        raise
    except RewardTimeoutError:
        if on_invalid == "raise":
            raise
    except Exception:  # noqa: BLE001 - left to the step (see the docstring)
        pass


def _describe(fn, component=None):
    """"BLEU" for a plain reward, "'bleu' (BLEU)" for a named component."""
    name = reward_name(fn)
    if component is None or component == name:
        return name
    return f"'{component}' ({name})"


def _as_rewards(value, name, completion_ids):
    """Checks and casts: any float/int/bool tensor [B] or [B, 1] -> float32 [B].

    Type, dtype and rank are checked when traced; B against `completion_ids`
    [B, N] when traced if both are static, else when run.
    """
    if value is None:
        raise RewardOutputError(f"reward {name} returned None; expected a float32 tensor "
                                "of shape [B] (did the function forget to return?)")
    if not isinstance(value, (tf.Tensor, tf.Variable, np.ndarray)):
        raise RewardOutputError(f"reward {name} returned {type(value).__name__} "
                                f"{value!r:.80}; expected a float32 tensor of shape [B]")
    if isinstance(value, np.ndarray) and value.dtype.kind not in "biuf":
        raise RewardOutputError(f"reward {name} returned a numpy array of dtype "
                                f"{value.dtype}; expected float32 (or another real "
                                "dtype, which is cast)")
    value = tf.convert_to_tensor(value)
    if not (value.dtype.is_floating or value.dtype.is_integer or value.dtype == tf.bool):
        raise RewardOutputError(f"reward {name} returned dtype {value.dtype.name}; "
                                "expected float32 (or another real dtype, which is cast)")
    value = tf.cast(value, tf.float32)
    rank = value.shape.rank
    if rank == 2 and value.shape[1] == 1:
        value = value[:, 0]  # [B, 1] scorers (Dense(1) heads) are accepted
    elif rank is not None and rank != 1:
        raise RewardOutputError(f"reward {name} returned shape {value.shape}; expected [B]")
    if rank is None:
        value = tf.reshape(value, [-1])
    message = (f"reward {name} returned the wrong number of values; expected one per "
               "completion, shape [B]")
    size, batch_size = value.shape[0], completion_ids.shape[0]
    if size is not None and batch_size is not None:
        if size != batch_size:
            raise RewardOutputError(f"{message}, got {size} for B = {batch_size}")
        return value
    # Checked through a control dependency, not a reshape to [B]: grappler's
    # constant folding can drop a Reshape feeding tf.where(is_finite(x), x, 0).
    check = tf.debugging.assert_equal(tf.size(value), tf.shape(completion_ids)[0],
                                      message=message)
    with tf.control_dependencies([check]):
        return tf.identity(value)


def _assert_finite(value, ok, name, completion_ids):
    """Fails naming the reward, the first bad sample, its value and its completion."""
    if tf.executing_eagerly():
        if not bool(tf.reduce_all(ok)):
            i = int(tf.argmin(tf.cast(ok, tf.int32)))
            raise InvalidRewardError(
                f"reward {name} returned {float(value[i])} for sample {i} "
                f"(completion ids {np.asarray(completion_ids[i]).tolist()})")
        return value
    all_ok = tf.reduce_all(ok)
    if in_xla_context():
        # XLA has no string ops and compiles Assert away: the values are still
        # zeroed by the caller and counted in `invalid_count`.
        i = tf.argmin(tf.cast(ok, tf.int32))
        data = [f"reward {name} returned a non-finite value for sample", i, "value", value[i],
                "completion ids", completion_ids[i]]
    else:
        # The message is built only on failure: a healthy step pays one reduce_all.
        data = [tf.cond(all_ok, lambda: tf.constant(""),
                        lambda: _failure_message(value, ok, name, completion_ids))]
    check = tf.debugging.Assert(all_ok, data, summarize=-1)
    with tf.control_dependencies([check]):
        return tf.identity(value)


def _failure_message(value, ok, name, completion_ids):
    i = tf.argmin(tf.cast(ok, tf.int32))  # the first non-finite sample
    escaped = name.replace("{", "{{").replace("}", "}}")  # braces are placeholders
    template = f"reward {escaped} returned {{}} for sample {{}} (completion ids {{}})"
    return tf.strings.format(template, (value[i], i, completion_ids[i]), summarize=-1)
