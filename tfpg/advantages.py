"""Returns, advantages and baselines for policy-gradient training of language models.

Pure TensorFlow functions in the style of TF-Agents' ``value_ops``: no state, no Keras,
float32 in and out, usable eagerly or inside ``tf.function`` with an unknown batch
dimension (dynamic sizes come from ``tf.shape``; recursions over time use ``tf.scan``
on time-major tensors).

Conventions:

* Tensors are batch-major. ``B`` is the batch size, ``T`` the number of completion
  positions, ``K`` the group size.
* ``mask`` is float32 ``[B, T]`` with 1 for a real token and 0 elsewhere. Masked
  positions never influence anything: whatever ``rewards`` / ``values`` hold there
  (even inf or NaN) is ignored, and every per-token output is exactly 0 there.
* Recursions over time (returns, GAE) skip masked positions: the "next" state of a
  real token is the next *real* token in the row, and the discount is applied once
  per real token. For the usual right-padded completion mask (ones up to and including
  EOS, zeros after) this is the textbook recursion; for masks with holes (e.g. tokens
  written by an environment in the middle of a completion) the masked tokens are
  treated as not being actions of the policy.
* Episodes end at the last real token of a row. There is no bootstrap from the value
  after it: a completion that hit ``max_new_tokens`` without EOS ("truncated") is
  treated as terminal, exactly like one that ended with EOS. (Bootstrapping a
  truncated completion would need the value of a state the model never saw; the
  reward functions of this package score the completion as it is.)
* Groups (RLOO, GRPO) are consecutive rows: a batch of ``B * K`` completions made by
  ``tf.repeat(prompts, K, axis=0)``, so ``tf.reshape(x, [-1, K])`` puts each prompt's
  ``K`` samples in one row.
"""

import numbers

import tensorflow as tf

__all__ = [
    "discounted_returns",
    "generalized_advantage_estimation",
    "temporal_difference_advantages",
    "whiten",
    "update_moving_average",
    "leave_one_out_baseline",
    "rloo_advantages",
    "group_normalized_advantages",
    "resolve_scale_rewards",
    "standardize",
    "normalize_then_sum_advantages",
    "MULTI_OBJECTIVE_AGGREGATIONS",
    "SCALE_REWARDS",
    "sequence_score_to_token_rewards",
    "broadcast_sequence_advantages",
]


def _real(mask):
    """Boolean "is a real token" from a float mask."""
    return tf.convert_to_tensor(mask) > 0


def _time_major(x):
    """[B, T] -> [T, B]."""
    return tf.transpose(x, [1, 0])


def discounted_returns(rewards, mask, gamma=1.0):
    """Return-to-go of every real token.

    ``G_t = r_t + gamma * G_{t'}`` where ``t'`` is the next real token of the row
    (``G = 0`` after the last real token: no bootstrap).

    Args:
      rewards: float32 tensor ``[B, T]``. Per-token rewards.
      mask: float32 tensor ``[B, T]``. 1 = real token.
      gamma: float. Discount.

    Returns:
      float32 ``[B, T]`` returns, 0 at masked positions.
    """
    rewards = tf.convert_to_tensor(rewards, tf.float32)  # [B, T]
    real = _real(mask)  # [B, T]
    gamma = tf.cast(gamma, tf.float32)
    rewards = tf.where(real, rewards, 0.0)

    def step(next_return, inputs):
        # next_return: [B] return of the next real token (0 past the end).
        reward, is_real = inputs  # [B], [B]
        ret = reward + gamma * next_return
        return tf.where(is_real, ret, next_return)

    initial = tf.zeros([tf.shape(rewards)[0]], tf.float32)  # [B]
    carried = tf.scan(
        step, (_time_major(rewards), _time_major(real)), initializer=initial, reverse=True
    )  # [T, B]
    return tf.where(real, _time_major(carried), 0.0)  # [B, T]


def generalized_advantage_estimation(rewards, values, mask, gamma=1.0, lam=0.95):
    """Generalized advantage estimation (Schulman et al., 2016).

    ``delta_t = r_t + gamma * V_{t'} - V_t`` and ``A_t = delta_t + gamma * lam * A_{t'}``,
    with ``t'`` the next real token of the row; ``V`` and ``A`` after the last real
    token are 0 (the episode ends there, truncated or not). ``lam=1`` gives
    Monte-Carlo advantages ``G_t - V_t``; ``lam=0`` gives one-step TD advantages
    ``r_t + gamma * V_{t'} - V_t`` (A2C).

    Args:
      rewards: float32 tensor ``[B, T]``. Per-token rewards (e.g. a sequence score on
        the last real token plus a per-token KL penalty).
      values: float32 tensor ``[B, T]``. Value estimates ``V(s_t)`` of the state each
        token was sampled from.
      mask: float32 tensor ``[B, T]``. 1 = real token.
      gamma: float. Discount.
      lam: float. GAE lambda.

    Returns:
      advantages: float32 ``[B, T]``, 0 at masked positions.
      returns: float32 ``[B, T]`` = ``advantages + values`` (the value-function
        targets), 0 at masked positions.
    """
    rewards = tf.convert_to_tensor(rewards, tf.float32)  # [B, T]
    values = tf.convert_to_tensor(values, tf.float32)  # [B, T]
    real = _real(mask)  # [B, T]
    gamma = tf.cast(gamma, tf.float32)
    lam = tf.cast(lam, tf.float32)
    rewards = tf.where(real, rewards, 0.0)
    values = tf.where(real, values, 0.0)

    def step(carry, inputs):
        next_value, next_advantage = carry  # [B], [B]
        reward, value, is_real = inputs  # [B], [B], [B]
        delta = reward + gamma * next_value - value
        advantage = delta + gamma * lam * next_advantage
        return (
            tf.where(is_real, value, next_value),
            tf.where(is_real, advantage, next_advantage),
        )

    zeros = tf.zeros([tf.shape(rewards)[0]], tf.float32)  # [B]
    _, carried = tf.scan(
        step,
        (_time_major(rewards), _time_major(values), _time_major(real)),
        initializer=(zeros, zeros),
        reverse=True,
    )  # [T, B]
    advantages = tf.where(real, _time_major(carried), 0.0)  # [B, T]
    returns = tf.where(real, advantages + values, 0.0)  # [B, T]
    return advantages, returns


def temporal_difference_advantages(rewards, values, mask, gamma=1.0):
    """One-step TD advantages ``r_t + gamma * V_{t'} - V_t`` (A2C): GAE with ``lam=0``.

    Args:
      rewards: float32 tensor ``[B, T]``.
      values: float32 tensor ``[B, T]``.
      mask: float32 tensor ``[B, T]``. 1 = real token.
      gamma: float. Discount.

    Returns:
      advantages: float32 ``[B, T]``; returns: float32 ``[B, T]`` = TD targets
      ``r_t + gamma * V_{t'}``. Both 0 at masked positions.
    """
    return generalized_advantage_estimation(rewards, values, mask, gamma=gamma, lam=0.0)


def whiten(values, mask=None, shift_mean=True, epsilon=1e-8, sum_fn=None):
    """Normalises to zero mean and unit variance over the real entries.

    Mean and variance are taken over all entries with ``mask > 0`` (the whole tensor
    when ``mask`` is None); the variance is the population variance (``ddof=0``).

    Args:
      values: float32 tensor ``[B, T]`` or ``[B]``. Any shape.
      mask: float32 tensor or None. Same shape as ``values``, or None.
      shift_mean: bool. If False, the mean is added back (only the scale changes).
      epsilon: float. Added to the variance.
      sum_fn: callable or None. Applied to the local sums (count, sum, sum of squares)
        before they are divided; a cross-replica all-reduce here whitens with the
        statistics of the global batch. None keeps them local.

    Returns:
      float32, same shape as ``values``: ``(x - mean) / sqrt(var + epsilon)``
      (``+ mean`` when ``shift_mean=False``); 0 at masked positions. All-masked input
      gives all zeros.
    """
    values = tf.convert_to_tensor(values, tf.float32)
    if mask is None:
        real = tf.ones_like(values, tf.bool)
    else:
        real = tf.broadcast_to(_real(mask), tf.shape(values))
    weights = tf.cast(real, tf.float32)
    safe = tf.where(real, values, 0.0)
    sums = tf.stack([tf.reduce_sum(weights), tf.reduce_sum(safe)])  # [2]
    if sum_fn is not None:
        sums = sum_fn(sums)
    count = sums[0]  # []
    mean = tf.math.divide_no_nan(sums[1], count)  # []
    centered = tf.where(real, values - mean, 0.0)
    squares = tf.reduce_sum(tf.square(centered))  # []
    if sum_fn is not None:
        squares = sum_fn(squares)
    variance = tf.math.divide_no_nan(squares, count)  # []
    whitened = centered * tf.math.rsqrt(variance + epsilon)
    if not shift_mean:
        whitened = whitened + mean
    return tf.where(real, whitened, 0.0)


def update_moving_average(average, count, rewards, decay=0.9, weights=None):
    """Bias-corrected exponential moving average of batch-mean rewards.

    The state is ``(average, count)``: ``average`` is the bias-corrected average of
    the batch means seen so far, ``count`` the number of (non-empty) batches seen.
    Starting from ``(0, 0)``, the first update returns the first batch's mean (no
    bias towards the zero initialisation); afterwards the average is the
    ``decay``-weighted mean of all batch means, i.e. Adam-style bias correction of
    ``m_n = decay * m_{n-1} + (1 - decay) * mean_n`` with ``average_n = m_n / (1 - decay**n)``.
    Equivalently ``average += (1 - decay) / (1 - decay**(count + 1)) * (mean - average)``.

    As a REINFORCE baseline, use the average *before* the update for the current
    batch (so the baseline does not depend on the samples it is subtracted from).
    An empty batch leaves the state unchanged.

    Args:
      average: float32 tensor ``[]``. Current average.
      count: float tensor ``[]``. Number of updates so far (any real dtype; float32 fits
        a Keras variable).
      rewards: float32 tensor ``[B]``. This batch's rewards.
      decay: float. In ``[0, 1)``.
      weights: float32 tensor ``[B]`` or None. The batch mean is ``sum(w r) / sum(w)``
        (0 for skipped samples); a batch of total weight 0 is empty.

    Returns:
      new_average: float32 ``[]``.
      new_count: ``[]``, same dtype as ``count``.
    """
    average = tf.convert_to_tensor(average, tf.float32)  # []
    count = tf.convert_to_tensor(count)
    count_dtype = count.dtype
    count_f = tf.cast(count, tf.float32)  # []
    rewards = tf.reshape(tf.convert_to_tensor(rewards, tf.float32), [-1])  # [B]
    decay = tf.cast(decay, tf.float32)
    if weights is None:
        weights = tf.ones_like(rewards)
    weights = tf.reshape(tf.convert_to_tensor(weights, tf.float32), [-1])  # [B]
    total = tf.reduce_sum(weights)
    batch_mean = tf.math.divide_no_nan(
        tf.reduce_sum(tf.where(weights > 0, rewards * weights, 0.0)), total)
    step = (1.0 - decay) / (1.0 - tf.pow(decay, count_f + 1.0))  # 1 on the first update
    updated = average + step * (batch_mean - average)
    has_data = total > 0
    new_average = tf.where(has_data, updated, average)
    new_count = tf.where(has_data, count_f + 1.0, count_f)
    return new_average, tf.cast(new_count, count_dtype)


def _check_group_size(group_size, minimum=2):
    """Validates a static group size (Python or numpy int)."""
    if isinstance(group_size, bool) or not isinstance(group_size, numbers.Integral):
        raise ValueError(f"group_size must be an int >= {minimum}, got {group_size!r}")
    group_size = int(group_size)
    if group_size < minimum:
        raise ValueError(f"group_size must be >= {minimum}, got {group_size}")
    return group_size


def _grouped(rewards, group_size, valid=None):
    """(rewards float32 [B*K], rewards [B, K], valid [B, K], K) after checking K.

    ``valid`` (float32 ``[B*K]``, 1 = a scored sample, default all 1) leaves the
    invalid samples out of every group statistic; their rewards may hold anything.
    """
    k = _check_group_size(group_size)
    rewards = tf.convert_to_tensor(rewards, tf.float32)
    if valid is None:
        valid = tf.ones_like(rewards)
    valid = tf.reshape(tf.cast(tf.convert_to_tensor(valid) > 0, tf.float32), [-1, k])
    grouped = tf.where(valid > 0, tf.reshape(rewards, [-1, k]), 0.0)  # [B, K]
    return rewards, grouped, valid, k


def _leave_one_out(grouped, valid):
    """(baseline [B, K], has_others [B, K]): the mean of the other valid rewards."""
    total = tf.reduce_sum(grouped, axis=1, keepdims=True)  # [B, 1]
    others = tf.reduce_sum(valid, axis=1, keepdims=True) - valid  # [B, K]
    return tf.math.divide_no_nan(total - grouped, others), others > 0


def leave_one_out_baseline(rewards, group_size, valid=None):
    """Mean of the other ``K - 1`` rewards of each sample's group (RLOO baseline).

    Args:
      rewards: float32 tensor ``[B * K]``. Each prompt's ``K`` samples in consecutive
        rows.
      group_size: int. ``K >= 2``.
      valid: float32 tensor ``[B * K]`` or None. 0 for skipped samples: the mean is then
        over the other *valid* samples (0 where there is none).

    Returns:
      float32 ``[B * K]`` baselines ``(sum_group - r_i) / (K - 1)``.

    Raises:
      ValueError: if ``group_size`` is not an int >= 2.
    """
    rewards, grouped, valid, _ = _grouped(rewards, group_size, valid)  # [B*K], [B, K]
    baseline, _ = _leave_one_out(grouped, valid)  # [B, K]
    return tf.reshape(baseline, tf.shape(rewards))


def rloo_advantages(rewards, group_size, valid=None):
    """REINFORCE leave-one-out advantages ``r_i - mean_{j != i} r_j``.

    Equal to ``K / (K - 1) * (r_i - mean_group)``. With ``valid``, skipped samples
    get advantage 0 and count in no baseline; a sample with no other valid sample
    in its group has no baseline and gets 0 as well (TRL's RLOO on [1, 1, NaN, 0]:
    [0.5, 0.5, 0, -1]).

    Args:
      rewards: float32 tensor ``[B * K]``. Groups in consecutive rows.
      group_size: int. ``K >= 2``.
      valid: float32 tensor ``[B * K]`` or None. 1 = a scored sample.

    Returns:
      float32 ``[B * K]``.
    """
    rewards, grouped, valid, _ = _grouped(rewards, group_size, valid)  # [B*K], [B, K]
    baseline, has_others = _leave_one_out(grouped, valid)  # [B, K]
    advantages = tf.where((valid > 0) & has_others, grouped - baseline, 0.0)
    return tf.reshape(advantages, tf.shape(rewards))


SCALE_REWARDS = ("group", "batch", "none")


def resolve_scale_rewards(scale_rewards):
    """"group" / "batch" / "none" from those names or a bool (True = "group")."""
    if scale_rewards is True or scale_rewards is False:
        return "group" if scale_rewards else "none"
    if scale_rewards not in SCALE_REWARDS:
        raise ValueError(f"scale_rewards must be one of {SCALE_REWARDS} (or a bool), "
                         f"got {scale_rewards!r}")
    return scale_rewards


def _unbiased_std(centered, valid, axis=None, keepdims=False, sum_fn=None):
    """sqrt(sum(valid * centered**2) / (count - 1)), 0 for fewer than 2 samples."""
    sums = tf.stack([tf.reduce_sum(tf.square(centered) * valid, axis=axis, keepdims=keepdims),
                     tf.reduce_sum(valid, axis=axis, keepdims=keepdims)])
    if sum_fn is not None:
        sums = sum_fn(sums)
    return tf.sqrt(tf.math.divide_no_nan(sums[0], tf.maximum(sums[1] - 1.0, 0.0)))


def group_normalized_advantages(rewards, group_size, scale_by_std=True, epsilon=1e-4,
                                valid=None, sum_fn=None):
    """GRPO advantages: rewards normalised within each group.

    ``A_i = (r_i - mean_group) / (std + epsilon)``, where ``std`` is per
    ``scale_by_std`` (TRL's ``scale_rewards``): "group" (or True) the group's
    standard deviation; "batch" the standard deviation of all rewards of the batch
    (the group mean is still subtracted); "none" (or False, Dr. GRPO) no division,
    ``A_i = r_i - mean_group``. Standard deviations are *unbiased* (``ddof=1``), as
    ``torch.std`` in TRL's ``GRPOTrainer``, and ``epsilon`` is added to the standard
    deviation (not the variance), also as TRL.

    A group whose (valid) rewards are all exactly equal carries no learning signal:
    it is flagged in ``zero_std`` and its advantages are exactly 0 (rather than
    rounding noise from the mean divided by ``epsilon``).

    ``valid`` leaves skipped samples out of every mean and standard deviation
    (``on_invalid_reward="skip"``); their advantage is 0. Group [1, 1, skipped, 0]
    gives [0.577, 0.577, 0, -1.155], as TRL.

    Args:
      rewards: float32 tensor ``[B * K]``. Each prompt's ``K`` samples in consecutive
        rows.
      group_size: int. ``K >= 2``.
      scale_by_std: str or bool. "group" / "batch" / "none", or a bool (True = "group").
      epsilon: float. Added to the standard deviation.
      valid: float32 tensor ``[B * K]`` or None. 1 = a scored sample.
      sum_fn: callable or None. Applied to the batch sums of "batch" scaling (a
        cross-replica all-reduce takes the standard deviation of the global batch).

    Returns:
      advantages: float32 ``[B * K]``.
      zero_std: float32 ``[B]``, 1 for groups whose rewards are all equal (their mean
        is the ``zero_std_fraction`` metric).

    Raises:
      ValueError: if ``group_size`` is not an int >= 2 or ``scale_by_std`` unknown.
    """
    scale = resolve_scale_rewards(scale_by_std)
    rewards, grouped, valid, _ = _grouped(rewards, group_size, valid)  # [B*K], [B, K]
    count = tf.reduce_sum(valid, axis=1, keepdims=True)  # [B, 1]
    mean = tf.math.divide_no_nan(tf.reduce_sum(grouped, axis=1, keepdims=True), count)
    centered = tf.where(valid > 0, grouped - mean, 0.0)  # [B, K]
    big = tf.float32.max
    is_zero_std = tf.equal(
        tf.reduce_max(tf.where(valid > 0, grouped, -big), axis=1),
        tf.reduce_min(tf.where(valid > 0, grouped, big), axis=1),
    ) | (tf.reduce_sum(valid, axis=1) < 2)  # [B]
    if scale == "group":
        advantages = centered / (_unbiased_std(centered, valid, 1, True) + epsilon)
    elif scale == "batch":
        sums = tf.stack([tf.reduce_sum(grouped), tf.reduce_sum(valid)])
        sums = sum_fn(sums) if sum_fn is not None else sums
        batch_mean = tf.math.divide_no_nan(sums[0], sums[1])
        spread = tf.where(valid > 0, grouped - batch_mean, 0.0)
        advantages = centered / (_unbiased_std(spread, valid, sum_fn=sum_fn) + epsilon)
    else:
        advantages = centered
    advantages = tf.where(is_zero_std[:, None], 0.0, advantages)  # [B, K]
    return tf.reshape(advantages, tf.shape(rewards)), tf.cast(is_zero_std, tf.float32)


def standardize(values, valid=None, epsilon=1e-4, sum_fn=None):
    """``(x - mean) / (std + epsilon)`` over the valid entries of a batch, with the
    *unbiased* standard deviation (``ddof=1``) and ``epsilon`` added to it, as TRL's
    batch-level normalisations (RLOO's ``normalize_advantages``, GDPO's last step).

    Args:
      values: float32 tensor ``[B]``.
      valid: float32 tensor ``[B]`` or None. 1 = counted (default all); others give 0.
      epsilon: float. Added to the standard deviation.
      sum_fn: callable or None. Applied to the batch sums (a cross-replica all-reduce
        normalises over the global batch).

    Returns:
      float32 ``[B]``, 0 at invalid entries.
    """
    values = tf.convert_to_tensor(values, tf.float32)  # [B]
    valid = tf.ones_like(values) if valid is None else tf.cast(
        tf.convert_to_tensor(valid) > 0, tf.float32)
    sums = tf.stack([tf.reduce_sum(tf.where(valid > 0, values, 0.0)), tf.reduce_sum(valid)])
    sums = sum_fn(sums) if sum_fn is not None else sums
    mean = tf.math.divide_no_nan(sums[0], sums[1])
    centered = tf.where(valid > 0, values - mean, 0.0)  # [B]
    return centered / (_unbiased_std(centered, valid, sum_fn=sum_fn) + epsilon)


MULTI_OBJECTIVE_AGGREGATIONS = ("sum_then_normalize", "normalize_then_sum")


def normalize_then_sum_advantages(components, weights, group_size, valid=None,
                                  epsilon=1e-4, sum_fn=None):
    """GDPO (TRL's ``multi_objective_aggregation="normalize_then_sum"``) advantages.

    Each objective (column of ``components``) is normalised within each group,
    ``(r_k - mean_group) / (std_group + epsilon)``, so that an objective with a large
    scale or spread cannot drown the others; the normalised objectives are summed
    with ``weights``, and the sum is standardised over the batch (:func:`standardize`).
    Group statistics are TRL's (unbiased std, ``epsilon`` on the std); a group where
    an objective is constant contributes 0 for it.

    Args:
      components: float32 tensor ``[B * K, C]``. Each sample's unweighted objectives,
        groups in consecutive rows.
      weights: list of float. ``C`` floats.
      group_size: int. ``K >= 2``.
      valid: float32 tensor ``[B * K]`` or None. 1 = a scored sample.
      epsilon: float. Added to the standard deviations.
      sum_fn: callable or None. Cross-replica sum for the batch statistics.

    Returns:
      float32 ``[B * K]``.
    """
    components = tf.convert_to_tensor(components, tf.float32)  # [B*K, C]
    total = 0.0
    for index, weight in enumerate(weights):
        normalized, _ = group_normalized_advantages(components[:, index], group_size,
                                                    "group", epsilon, valid)  # [B*K]
        total += float(weight) * normalized
    return standardize(total, valid, epsilon, sum_fn)


def sequence_score_to_token_rewards(scores, mask):
    """Places each sequence's score on its last real token.

    Args:
      scores: float32 tensor ``[B]``. One score per completion.
      mask: float32 tensor ``[B, T]``. 1 = real token.

    Returns:
      float32 ``[B, T]``: ``scores[b]`` at the index of the last 1 of ``mask[b]``,
      0 elsewhere; an all-zero mask row gives an all-zero row.
    """
    scores = tf.convert_to_tensor(scores, tf.float32)  # [B]
    real = _real(mask)  # [B, T]
    length = tf.shape(real)[1]
    positions = tf.range(length)[None, :]  # [1, T]
    last = tf.reduce_max(tf.where(real, positions, -1), axis=1)  # [B], -1 if none
    at_last = tf.equal(positions, last[:, None])  # [B, T]
    return tf.where(at_last, scores[:, None], 0.0)


def broadcast_sequence_advantages(advantages, mask):
    """Gives every real token its sequence's advantage.

    Args:
      advantages: float32 tensor ``[B]``.
      mask: float32 tensor ``[B, T]``. 1 = real token.

    Returns:
      float32 ``[B, T]``: ``advantages[b]`` at real tokens, 0 elsewhere.
    """
    advantages = tf.convert_to_tensor(advantages, tf.float32)  # [B]
    return tf.where(_real(mask), advantages[:, None], 0.0)
