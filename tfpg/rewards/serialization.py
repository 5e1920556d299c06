"""Rewards in a trainer's Keras config, and the one-line refusal of those a config
cannot rebuild.

A reward is serialisable when Keras can write it and read it back: a `tfpg.rewards`
object (or any `Reward` subclass registered with
`keras.saving.register_keras_serializable`) whose configuration holds plain values,
Keras models, tokenizers with a config and other such rewards, or a function
registered with Keras. A plain Python function is not: Keras would write its name
(or, for a lambda, its bytecode) and could not load it back, so `serialize_reward`
refuses it, naming it.
"""

import inspect

import keras
import numpy as np

from tfpg.rewards.base import Reward, reward_name

_PLAIN = (type(None), bool, int, float, str, np.generic, np.ndarray)


def serialize_reward(reward_fn, argument="reward_fn"):
    """`keras.saving.serialize_keras_object(reward_fn)`, None for None.

    Raises:
        ValueError: (one line) naming the part of `reward_fn` a config cannot hold:
            a Python function, a `PythonReward` of one, an `ExactMatch` normalizer,
            a `Perplexity` reference that is not a Keras model, a tokenizer without
            a config, a `Reward` subclass not registered with Keras.
    """
    if reward_fn is None:
        return None
    found = _unserialisable(reward_fn, f"{argument} {reward_name(reward_fn)}", top=True)
    if found is not None:
        label, what = found
        raise ValueError(
            f"{label} ({what}) cannot be serialised; pass a tfpg.rewards object (or a "
            "class or function registered with keras.saving.register_keras_serializable), "
            "or rebuild the trainer with it")
    return keras.saving.serialize_keras_object(reward_fn)


def reward_layers(reward_fn):
    """The Keras layers a reward holds (a `RewardModel`'s scorer, a `Perplexity`
    reference model), through `WeightedSum` components: [] for none."""
    found = []

    def walk(value):
        if isinstance(value, keras.Layer):
            if not any(value is seen for seen in found):
                found.append(value)
        elif isinstance(value, Reward):
            for item in vars(value).values():
                walk(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)

    walk(reward_fn)
    return found


def _registered(target):
    """Whether Keras finds `target` (a class or function) again by its registered name."""
    try:
        name = keras.saving.get_registered_name(target)
    except AttributeError:      # no __name__: an instance of some callable class
        return False
    return keras.saving.get_registered_object(name) is target


def _unserialisable(value, label, top=False):
    """(label, what it is) of the first part of `value` that a Keras config cannot
    rebuild, or None when every part can."""
    if isinstance(value, _PLAIN) or isinstance(value, keras.Layer):
        return None
    if isinstance(value, (list, tuple, dict)):
        for item in (value.values() if isinstance(value, dict) else value):
            found = _unserialisable(item, label)
            if found is not None:
                return found
        return None
    if inspect.isroutine(value):
        if _registered(value):
            return None
        name = getattr(value, "__name__", "")
        return label, ("a Python function" if top or not name
                       else f"the Python function {name}")
    if not _registered(type(value)):
        return label, f"a {type(value).__name__} object"
    if isinstance(value, Reward):
        # A component of another reward is named after it: "mix's components short's fn".
        label = label if top else f"{label} {reward_name(value)}"
        for key, item in value.get_config().items():
            found = _unserialisable(item, f"{label}'s {key}")
            if found is not None:
                return found
    return None
