"""Gradient checkpointing (rematerialisation) of transformer trunks, switched on for
the span of a forward pass that will be differentiated.

Under `gradient_checkpointing()`, the transformer backbones (tfpg's and KerasHub's)
run each block through `tf.recompute_grad`: the backward pass recomputes a block's
activations (attention scores, feed-forward) from its input instead of keeping them,
so a long sequence holds one block's activations at a time, for about one more
forward pass of compute. The switch is read while tracing: the trainers set it
around their update's forward pass only (the rollout's passes keep nothing anyway).
"""

import contextlib
import threading

import tensorflow as tf

_STATE = threading.local()


@contextlib.contextmanager
def gradient_checkpointing(enabled=True):
    """Within it, `checkpointed` blocks are rematerialised in the backward pass."""
    previous = getattr(_STATE, "enabled", False)
    _STATE.enabled = bool(enabled)
    try:
        yield
    finally:
        _STATE.enabled = previous


def checkpointed(block):
    """`block` (a function of tensors) itself, or rematerialised where enabled."""
    if getattr(_STATE, "enabled", False):
        return tf.recompute_grad(block)
    return block
