"""`copy_policy`: a new model of a policy's class and config holding its weights."""

import keras


def copy_policy(policy, trainable=True, dtype=None):
    """A copy of `policy` (a `PolicyNetwork`, `KerasHubPolicy` with its LoRA adapters,
    or any model with `get_config` / `from_config`): a new model of its class and
    config, built in the current strategy's scope, holding a copy of its weights.

    Args:
        policy: `keras.Model`. The model to copy (built first if it is not).
        trainable: bool. False for a frozen copy, e.g. the KL reference of a
            fine-tuning run; True to fine-tune a copy of a pre-trained policy.
        dtype: str or None. The copy's dtype policy, e.g. "float32" to evaluate or
            export a mixed-precision policy (its weights are float32 already; only
            the compute dtype changes); None: the policy's own.

    Returns:
        The copy, built.

    Example:
    >>> import tfpg
    >>> policy = tfpg.PolicyNetwork(vocab_size=20, embedding_dim=8, hidden_dim=8)
    >>> reference = copy_policy(policy, trainable=False)
    >>> reference.trainable, len(reference.weights) == len(policy.weights)
    (False, True)
    """
    if not policy.built:
        policy.build()
    config = policy.get_config()
    previous = keras.mixed_precision.global_policy().name
    if dtype is not None:
        # The layers a model makes in its constructor take the global policy.
        config = dict(config, dtype=dtype)
        keras.mixed_precision.set_global_policy(dtype)
    try:
        copy = type(policy).from_config(config)
        copy.build()
    finally:
        keras.mixed_precision.set_global_policy(previous)
    copy.set_weights(policy.get_weights())
    copy.trainable = trainable
    return copy
