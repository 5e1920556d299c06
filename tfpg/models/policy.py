"""`Policy`: the interface every tfpg policy gives generation, the trainers and the
export; `check_policy` refuses anything else in one line."""

import numbers

import keras

# What a subclass must define itself (the base's versions only raise).
_DECODING = ("initial_cache", "call_with_cache")
_FORWARD = ("hidden_states", "head_logits")


class Policy(keras.Model):
    """Base class of tfpg's policies: a causal language model whose softmax over the
    next token is the policy.

    `tfpg.generate`, the trainers (`tfpg.algorithms`: sampling, scoring, the KL
    reference) and `tfpg.export_saved_model` use a policy through this interface
    only, and refuse anything that is not a `Policy` (`check_policy`). tfpg's own are
    `tfpg.PolicyNetwork` (LSTM, GRU or Transformer) and `tfpg.KerasHubPolicy` (a
    pre-trained KerasHub `CausalLM`); a model of your own is accepted when it
    subclasses `Policy` and defines the following (a critic or reward network on a
    policy's trunk, `ValueNetwork.from_policy`, needs one of tfpg's own):

    * `initial_cache(batch_size, max_length)` and `call_with_cache(token_ids, cache,
      index, padding_mask=None, training=None, last_only=False, in_place=False)`:
      the cached decoding step (see below);
    * either `hidden_states(token_ids, padding_mask=None, training=None)` -> [B, T, H]
      and `head_logits(hidden)` -> float32 logits [..., V] (the trainers then run
      the vocabulary projection on completion positions only, in chunks:
      `tfpg.algorithms.token_scores`), or only `call`: its logits then stand in for the hidden
      states and the head is the identity;
    * `vocab_size`, the number of token ids (an int).

    The attributes below have defaults (tfpg's `Tokenizer` convention: pad 0, BOS 1,
    EOS 2) that a subclass overrides as class or instance attributes.

    Attributes:
        vocab_size: V, the number of token ids.
        pad_id: the id written after a sequence's EOS (and the padding of prompts
            given without a mask).
        bos_id: the id a prompt starts with (None without one).
        eos_id: the id that ends a completion ("auto" in `tfpg.generate` takes it).
        structural_ids: ids sampling never draws (pad, BOS).
        max_length: the longest sequence (prompt and completion); only bounds
            decoding where `is_positional`.
        is_positional: True when a learned position table bounds a sequence to
            `max_length` (tfpg's Transformer, KerasHub GPT-2).
        xla_on_cpu: True when `jit_compile="auto"` should compile the decode loop with
            XLA on a CPU too (see `tfpg.xla`).
        tokenizer: the tokenizer the policy brings (a KerasHub preset's), else None.

    Example:
    >>> import keras, tensorflow as tf, tfpg
    >>> class Bigram(tfpg.models.Policy):
    ...     '''Next-token logits from the last token alone: a [V, V] table.'''
    ...     def __init__(self, vocab_size, **kwargs):
    ...         super().__init__(**kwargs)
    ...         self.vocab_size = vocab_size
    ...         self.table = self.add_weight(shape=(vocab_size, vocab_size), name="table")
    ...     def call(self, token_ids, padding_mask=None, training=None):
    ...         return tf.gather(self.table, token_ids)                 # [B, T, V]
    ...     def initial_cache(self, batch_size, max_length):
    ...         return tf.zeros([batch_size])                           # no state
    ...     def call_with_cache(self, token_ids, cache, index, padding_mask=None,
    ...                         training=None, last_only=False, in_place=False):
    ...         logits = self(token_ids[:, -1:] if last_only else token_ids)
    ...         return logits, logits, cache
    >>> out = tfpg.generate(Bigram(10), tf.constant([[1, 5]]), max_new_tokens=3, seed=0)
    >>> out.token_ids.shape
    TensorShape([1, 3])
    >>> tfpg.generate(keras.Sequential(), tf.constant([[1, 5]]))   # not a Policy
    Traceback (most recent call last):
    TypeError: policy must be a tfpg.models.Policy (PolicyNetwork, KerasHubPolicy or ...
    """

    pad_id = 0
    bos_id = 1
    eos_id = 2
    structural_ids = (0, 1)
    vocab_size = None               # set by every subclass
    max_length = None
    xla_on_cpu = False

    @property
    def is_positional(self):
        """Whether a position table bounds a sequence to `max_length` (default False)."""
        return False

    @property
    def tokenizer(self):
        """The tokenizer the policy brings (default None: pass one of your own)."""
        return None

    def call(self, token_ids, padding_mask=None, training=None):
        """token_ids int [B, T] (padding_mask [B, T], 1 = real) -> logits float32 [B, T, V]."""
        return self.head_logits(self.hidden_states(token_ids, padding_mask, training))

    def hidden_states(self, token_ids, padding_mask=None, training=None):
        """token_ids int [B, T] -> the states the head maps to logits, [B, T, H]; by
        default (a subclass that defines only `call`) the logits themselves."""
        if _defines(self, "call"):
            return self(token_ids, padding_mask=padding_mask, training=training)
        raise NotImplementedError(f"{type(self).__name__} defines neither call nor "
                                  "hidden_states")

    def head_logits(self, hidden):
        """Hidden states [..., H] -> logits float32 [..., V]; by default (with the
        default `hidden_states`) the identity."""
        if _defines(self, "call"):
            return keras.ops.cast(hidden, "float32")
        raise NotImplementedError(f"{type(self).__name__} defines no head_logits")

    def initial_cache(self, batch_size, max_length):
        """An empty decoding cache for `batch_size` sequences of up to `max_length`
        tokens (any nest of tensors)."""
        raise NotImplementedError(f"{type(self).__name__} defines no initial_cache")

    def call_with_cache(self, token_ids, cache, index, padding_mask=None, training=None,
                        last_only=False, in_place=False):
        """Feeds token_ids [B, T] at position `index` of the cache.

        Returns (logits float32 [B, T, V], hidden [B, T, H], updated cache); with
        `last_only=True` those of the last position only ([B, 1, ...]: a prompt
        prefill). `in_place=True` allows updating the buffers of `cache` instead of
        copying them (the cache passed in is not used again); a policy may ignore it.
        """
        raise NotImplementedError(f"{type(self).__name__} defines no call_with_cache")

    def lora_reference(self):
        """The KL reference of a policy that trains adapters: a callable view of its
        weights with the adapters off (no copy); None (the default): the trainers
        copy the policy."""
        return None


def _defines(policy, name):
    """Whether `policy`'s class overrides `Policy.name`."""
    return getattr(type(policy), name) is not getattr(Policy, name)


def _type_name(value):
    cls = type(value)
    module = cls.__module__.split(".")[0]
    return cls.__name__ if module == "builtins" else f"{module}.{cls.__name__}"


def check_policy(policy, name="policy"):
    """Refuses (TypeError, one line) what is not a complete `Policy`: another kind of
    object, or a subclass that leaves out part of the interface (named in the
    message). Returns `policy`."""
    if not isinstance(policy, Policy):
        raise TypeError(f"{name} must be a tfpg.models.Policy (PolicyNetwork, "
                        f"KerasHubPolicy or a subclass); got {_type_name(policy)}")
    missing = [method for method in _DECODING if not _defines(policy, method)]
    if not _defines(policy, "call"):
        missing += [method for method in _FORWARD if not _defines(policy, method)]
    if not isinstance(policy.vocab_size, numbers.Integral):
        missing.append("vocab_size (an int)")
    if missing:
        raise TypeError(f"{name} {type(policy).__name__} does not define "
                        f"{', '.join(missing)} (see tfpg.models.Policy)")
    return policy
