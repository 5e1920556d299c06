"""`Rollout`: what one train step samples, scores and learns from, as a typed structure.

A rollout is made in three stages, each adding fields (None until then):

1. sampled, by the trainer's rollout source (`PolicyGradientTrainer.sample_rollout`:
   in-graph decoding and `reward_fn` for single completions, or multi-turn episodes
   against an env, `tfpg.algorithms.episodes`): ids, masks, rewards;
2. scored (`PolicyGradientTrainer.finish_rollout`): behaviour and reference
   log-probs and KL (`score_rollout`), the KL penalty in the token rewards, values;
3. given advantages (the algorithm's `compute_advantages`).

`Rollout` is a dataclass that `tf.nest` flattens (into its non-None fields) and
rebuilds, so it passes through `tf.function` arguments and results, `tf.distribute`
and XLA as a dict of tensors does. Fields are also read by name (`rollout["kl"]`,
`rollout.get("values")`, `"kl" in rollout`: present and not None), as the dict of
earlier versions was.

Shapes: `B` rows (prompts x group_size), `P` prompt length, `N` completion length
(`max_new_tokens`, or the longest trajectory after the first observation with an
env), `C` reward components, `k` top-k ids, `V` vocabulary.
"""

import dataclasses
from typing import Optional

import tensorflow as tf


@dataclasses.dataclass
class Rollout:
    """One step's rollout, batch-major (see the module docstring for the stages).

    Every field defaults to None (not made yet, or not used by this trainer), so a
    partial rollout (e.g. of a test) is built by naming what it has.

    Sampled:
        prompt_ids: int32 [B, P], left-padded prompts (first observations with an env).
        prompt_mask: bool [B, P], True on real prompt tokens.
        completion_ids: int32 [B, N], completions (policy turns and env replies in
            order with an env), right-padded.
        completion_mask: float32 [B, N], 1 on every real completion token (EOS
            included): the model's padding.
        loss_mask: float32 [B, N], the tokens the loss acts on: the policy's tokens
            of valid rows (an algorithm's `compute_advantages` may narrow it).
        scores: float32 [B], each row's reward (an episode's total with an env).
        valid: float32 [B], 0 for rows whose reward was invalid and skipped.
        token_rewards: float32 [B, N], the per-token reward (the score on the last
            token, each turn's reward on its last policy token with an env), minus
            `kl_coef * kl` once scored where the KL is in the reward.
        truncated: float32 [B], 1 for rows cut short: a completion that hit
            `max_new_tokens` without EOS, an episode cut by `max_turns` / length.
        policy_mask: float32 [B, N] with an env, 1 on the policy's tokens only (env
            replies are context, not actions); None: every completion token is the
            policy's (`action_mask` is then `completion_mask`).
        reward_components: float32 [B, C], each objective of a `WeightedSum`
            (GDPO's "normalize_then_sum"); None otherwise.
    Scored:
        old_log_probs: float32 [B, N], log-probs of the sampled tokens under the
            sampling distribution (None where the update's own forward pass gives
            them: one step per rollout and no reference, see `scores_rollout`).
        support: the top-k / top-p support sampled from (int32 [B, N, k] ids or a
            packed uint8 [B, N, ceil(V / 8)] mask), kept for later epochs.
        ref_log_probs: float32 [B, N], the reference's log-probs (with a reference).
        kl: float32 [B, N], the per-token KL estimate to the reference.
        values: float32 [B, N], V(s_t) of the critic (with a value model).
        teacher_log_probs, teacher_kl: float32 [B, N], `OnPolicyDistillation`'s
            teacher log-probs and its k1 reverse-KL estimate.
    Learned from:
        advantages: float32 [B, N].
        returns: float32 [B, N], the critic's targets (with a value model).
    """

    prompt_ids: Optional[tf.Tensor] = None
    prompt_mask: Optional[tf.Tensor] = None
    completion_ids: Optional[tf.Tensor] = None
    completion_mask: Optional[tf.Tensor] = None
    loss_mask: Optional[tf.Tensor] = None
    scores: Optional[tf.Tensor] = None
    valid: Optional[tf.Tensor] = None
    token_rewards: Optional[tf.Tensor] = None
    truncated: Optional[tf.Tensor] = None
    policy_mask: Optional[tf.Tensor] = None
    reward_components: Optional[tf.Tensor] = None
    old_log_probs: Optional[tf.Tensor] = None
    support: Optional[tf.Tensor] = None
    ref_log_probs: Optional[tf.Tensor] = None
    kl: Optional[tf.Tensor] = None
    values: Optional[tf.Tensor] = None
    teacher_log_probs: Optional[tf.Tensor] = None
    teacher_kl: Optional[tf.Tensor] = None
    advantages: Optional[tf.Tensor] = None
    returns: Optional[tf.Tensor] = None

    # ------------------------------------------------------------- tf.nest
    # tf.nest's CustomNestProtocol: the non-None fields are the components, their
    # names the metadata (None is a leaf to tf.nest, which tf.function would reject).

    def __tf_flatten__(self):
        names = tuple(name for name in self.keys())
        return names, tuple(getattr(self, name) for name in names)

    @classmethod
    def __tf_unflatten__(cls, metadata, components):
        return cls(**dict(zip(metadata, components)))

    # ------------------------------------------------------------ by name

    def keys(self):
        """The names of the fields that are set (not None), in declaration order."""
        return [field.name for field in dataclasses.fields(self)
                if getattr(self, field.name) is not None]

    def items(self):
        return [(name, getattr(self, name)) for name in self.keys()]

    def __contains__(self, name):
        return getattr(self, name, None) is not None

    def __getitem__(self, name):
        if name not in self:
            raise KeyError(name)
        return getattr(self, name)

    def get(self, name, default=None):
        return getattr(self, name) if name in self else default

    def replace(self, **fields):
        """A copy with `fields` replaced (an unknown name is a TypeError)."""
        return dataclasses.replace(self, **fields)

    def update(self, fields):
        """Sets `fields` (a mapping, e.g. `compute_advantages`' result) in place."""
        for name, value in dict(fields).items():
            if name not in _FIELDS:
                raise KeyError(f"Rollout has no field {name!r}")
            setattr(self, name, value)

    # ------------------------------------------------------------ views

    @property
    def action_mask(self):
        """float32 [B, N]: the tokens the policy sampled (with an env, its turns)."""
        return self.completion_mask if self.policy_mask is None else self.policy_mask

    def for_advantages(self):
        """The rollout as `compute_advantages` sees it: with an env, the env's
        tokens are no steps of the recursions (returns, GAE) and carry no
        advantage, so `completion_mask` is the loss mask (the policy's tokens of
        valid rows); single completions as they are."""
        if self.policy_mask is None:
            return self
        return self.replace(completion_mask=self.loss_mask)



_FIELDS = frozenset(field.name for field in dataclasses.fields(Rollout))


def sequence_return(rollout):
    """Total reward of each completion, any KL penalty in the reward included: [B]."""
    return tf.reduce_sum(rollout.token_rewards * rollout.completion_mask, axis=1)


def truncated_completions(rollout, max_new_tokens, eos_id):
    """float32 [B]: 1 for completions that hit `max_new_tokens` without ending in EOS
    (every full-length one when `eos_id` is None)."""
    lengths = tf.reduce_sum(rollout.completion_mask, axis=1)                   # [B]
    truncated = tf.cast(lengths >= max_new_tokens, tf.float32)
    if eos_id is not None:
        last = tf.gather(rollout.completion_ids,
                         tf.maximum(tf.cast(lengths, tf.int32) - 1, 0), batch_dims=1)
        truncated *= tf.cast(tf.not_equal(last, eos_id), tf.float32)
    return truncated


def as_rollout(rollout):
    """`rollout` as a `Rollout` (a mapping of field names becomes one; an unknown
    name is a TypeError)."""
    return rollout if isinstance(rollout, Rollout) else Rollout(**rollout)
