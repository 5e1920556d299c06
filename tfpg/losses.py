"""Per-token log-probabilities, entropies, KL estimators and policy-gradient losses.

Pure TensorFlow functions (plus one Keras loss class), float32 in and out, usable
eagerly or inside ``tf.function`` with an unknown batch dimension. Batch-major:
``B`` batch, ``T`` completion positions, ``V`` vocabulary.

Per-token functions return ``[B, T]`` and do not aggregate; the trainer reduces with
:func:`aggregate_loss` (losses) or :func:`masked_mean` (metrics). Masks are float32
``[B, T]`` with 1 = real token. The masked reductions here select with ``tf.where``
rather than multiplying, so an ``inf`` / ``NaN`` at a masked position (e.g. the
``-inf`` log-probability of a pad id outside the top-k support) never reaches the
result.

Logits are cast to float32 before any softmax (mixed-precision safety). Logits may
hold ``-inf`` (or very negative values) for entries removed by top-k / top-p
filtering; every function here stays exact and NaN-free, values and gradients, for
the entries that remain.
"""

import math

import keras
import tensorflow as tf

__all__ = [
    "token_log_probs",
    "entropy",
    "kl_penalty",
    "full_kl",
    "ppo_clipped_surrogate",
    "value_loss",
    "bradley_terry_loss",
    "masked_sum",
    "masked_mean",
    "aggregate_loss_terms",
    "aggregate_loss",
    "AdvantageWeightedCrossentropy",
    "high_entropy_mask",
    "importance_ratio",
    "clip_ratio_indicators",
    "cispo_loss",
    "sapo_loss",
    "vespo_weights",
    "off_policy_sequence_mask",
    "AGGREGATION_MODES",
    "IMPORTANCE_SAMPLING_LEVELS",
    "KL_ESTIMATORS",
]

AGGREGATION_MODES = ("token_mean", "sequence_mean", "sequence_sum", "constant",
                     "rollout_token_mean")
KL_ESTIMATORS = ("k1", "k2", "k3")
IMPORTANCE_SAMPLING_LEVELS = ("token", "sequence")


def _scaled_logits(logits, temperature):
    """float32 ``logits / temperature``; temperature 1 is skipped."""
    logits = tf.cast(logits, tf.float32)  # [B, T, V]
    if isinstance(temperature, (int, float)) and temperature == 1.0:
        return logits
    return logits / tf.cast(temperature, tf.float32)


def _real(mask, like):
    """Boolean "is a real token", broadcast to the shape of ``like``."""
    return tf.broadcast_to(tf.convert_to_tensor(mask) > 0, tf.shape(like))


def token_log_probs(logits, token_ids, temperature=1.0, mask=None):
    """Log-probability of each chosen token under ``softmax(logits / temperature)``.

    Use the same temperature (and the same top-k / top-p filtered logits) that the
    tokens were sampled with, so the log-probs are those of the sampling distribution.

    Args:
      logits: float tensor ``[B, T, V]``. Any float dtype; computed in float32. Entries
        may be ``-inf`` for filtered-out tokens.
      token_ids: int tensor ``[B, T]``. Chosen ids; ``logits[:, t]`` is the distribution
        ``token_ids[:, t]`` was drawn from.
      temperature: float. Scalar ``> 0``.
      mask: float32 tensor ``[B, T]`` or None. When given, masked positions return
        exactly 0 (recommended: a pad id after EOS may lie outside the top-k support,
        where its log-prob is ``-inf`` and ``exp`` / products of it give NaN gradients).

    Returns:
      float32 ``[B, T]``.
    """
    log_probs = tf.nn.log_softmax(_scaled_logits(logits, temperature), axis=-1)  # [B,T,V]
    token_ids = tf.cast(token_ids, tf.int32)  # [B, T]
    chosen = tf.gather(log_probs, token_ids[..., None], axis=-1, batch_dims=2)[..., 0]
    if mask is not None:
        chosen = tf.where(_real(mask, chosen), chosen, 0.0)
    return chosen  # [B, T]


def entropy(logits, temperature=1.0):
    """Entropy of ``softmax(logits / temperature)`` at every position.

    ``-inf`` logits (zero-probability entries) contribute 0, in value and gradient.

    Args:
      logits: float tensor ``[B, T, V]``. Any float dtype; computed in float32.
      temperature: float. Scalar ``> 0``.

    Returns:
      float32 ``[B, T]`` in nats.
    """
    logits = _scaled_logits(logits, temperature)  # [B, T, V]
    log_p = tf.nn.log_softmax(logits, axis=-1)
    p = tf.exp(log_p)
    safe_log_p = tf.where(p > 0, log_p, 0.0)  # no 0 * -inf, no NaN gradient
    return -tf.reduce_sum(p * safe_log_p, axis=-1)


def kl_penalty(log_probs, ref_log_probs, estimator="k1"):
    """Per-token sample estimate of ``KL(pi || ref)`` for tokens sampled from ``pi``.

    With ``log_r = ref_log_probs - log_probs`` (Schulman, "Approximating KL
    divergence", 2020):

    * ``"k1"``: ``-log_r = log_probs - ref_log_probs`` (unbiased, can be negative);
    * ``"k2"``: ``0.5 * log_r**2`` (biased, non-negative, low variance);
    * ``"k3"``: ``exp(log_r) - log_r - 1`` (unbiased, non-negative; GRPO's penalty).

    Gradients flow into both arguments; stop them yourself where needed (the
    reference model is normally frozen).

    Args:
      log_probs: float32 tensor ``[B, T]``. Log-probs under the policy.
      ref_log_probs: float32 tensor ``[B, T]``. Log-probs under the reference policy.
      estimator: str. One of ``KL_ESTIMATORS``.

    Returns:
      float32 ``[B, T]``.
    """
    log_probs = tf.cast(log_probs, tf.float32)
    ref_log_probs = tf.cast(ref_log_probs, tf.float32)
    log_ratio = ref_log_probs - log_probs  # [B, T] log(ref / pi)
    if estimator == "k1":
        return -log_ratio
    if estimator == "k2":
        return 0.5 * tf.square(log_ratio)
    if estimator == "k3":
        return tf.exp(log_ratio) - log_ratio - 1.0
    raise ValueError(f"estimator must be one of {KL_ESTIMATORS}, got {estimator!r}")


def full_kl(logits, ref_logits, temperature=1.0):
    """Exact ``KL(pi || ref) = sum_v pi(v) (log pi(v) - log ref(v))`` at every position.

    Args:
      logits: float tensor ``[B, T, V]``. Policy logits; ``-inf`` entries (probability 0)
        contribute 0.
      ref_logits: float tensor ``[B, T, V]``. Reference logits.
      temperature: float. Scalar ``> 0`` applied to both.

    Returns:
      float32 ``[B, T]`` (``inf`` where ``ref`` gives 0 probability to a token that
      ``pi`` can sample).
    """
    log_p = tf.nn.log_softmax(_scaled_logits(logits, temperature), axis=-1)  # [B,T,V]
    log_q = tf.nn.log_softmax(_scaled_logits(ref_logits, temperature), axis=-1)
    p = tf.exp(log_p)
    diff = tf.where(p > 0, log_p - log_q, 0.0)
    return tf.reduce_sum(p * diff, axis=-1)


def ppo_clipped_surrogate(log_probs, old_log_probs, advantages, clip_epsilon=0.2, mask=None,
                          clip_epsilon_high=None, importance_sampling_level="token",
                          delta=None):
    """PPO's clipped surrogate objective, per token, as a loss to minimise.

    ``ratio = exp(log_probs - old_log_probs)`` and
    ``loss = -min(ratio * A, clip(ratio, 1 - eps, 1 + eps_high) * A)``
    ``     = max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps_high))``
    (``eps_high = clip_epsilon_high``, DAPO's clip-higher; default ``eps``).

    ``delta`` (INTELLECT-2's two-sided clip, TRL's ``delta``): the unclipped term's
    ratio is capped at ``delta`` too, ``-min(min(ratio, delta) A, clip(ratio) A)``, so
    a token with ``A < 0`` and a huge ratio contributes at most ``delta * |A|``.

    ``importance_sampling_level="sequence"`` is GSPO (TRL's meaning): every token of
    a row gets the row's ratio ``exp(mean_t (log_probs - old_log_probs))`` over its
    real tokens, and the gradient flows through that mean.

    ``clipped`` is TRL's / CleanRL's clip-fraction indicator
    ``(-A * clip(ratio)) > (-A * ratio)``: the clipped term is the active one, which
    is ``(ratio > 1 + eps_high and A > 0) or (ratio < 1 - eps and A < 0)``. Where it
    is 1 the token gets no gradient.

    ``advantages`` and ``old_log_probs`` are wrapped in ``tf.stop_gradient``.

    Args:
      log_probs: float32 tensor ``[B, T]``. Under the current policy (differentiable).
      old_log_probs: float32 tensor ``[B, T]``. Under the policy that sampled the
        tokens.
      advantages: float32 tensor ``[B, T]``.
      clip_epsilon: float. The lower clip; also the upper one by default.
      mask: float32 tensor ``[B, T]`` or None. Masked positions get ``ratio = 1`` and
        ``loss = clipped = 0`` (guards against ``-inf`` log-probs there). Required for
        ``importance_sampling_level="sequence"``.
      clip_epsilon_high: float or None. Upper clip.
      importance_sampling_level: "token" or "sequence".
      delta: float or None. Cap of the unclipped ratio (two-sided clipping).

    Returns:
      loss: float32 ``[B, T]``.
      ratio: float32 ``[B, T]`` (not capped by ``delta``).
      clipped: float32 ``[B, T]`` in {0, 1}.
    """
    advantages = tf.stop_gradient(tf.cast(advantages, tf.float32))
    eps = tf.cast(clip_epsilon, tf.float32)
    eps_high = eps if clip_epsilon_high is None else tf.cast(clip_epsilon_high, tf.float32)
    ratio = importance_ratio(log_probs, old_log_probs, mask, importance_sampling_level)
    if mask is not None:
        advantages = tf.where(_real(mask, ratio), advantages, 0.0)
    capped = ratio if delta is None else tf.minimum(ratio, tf.cast(delta, tf.float32))
    unclipped_loss = -advantages * capped
    clipped_loss = -advantages * tf.clip_by_value(ratio, 1.0 - eps, 1.0 + eps_high)
    loss = tf.maximum(unclipped_loss, clipped_loss)
    clipped = tf.cast(clipped_loss > unclipped_loss, tf.float32)
    return loss, ratio, clipped


def importance_ratio(log_probs, old_log_probs, mask=None, importance_sampling_level="token"):
    """``pi / pi_old`` per token, differentiable in ``log_probs``.

    ``"token"``: ``exp(log_probs - old_log_probs)``; ``"sequence"`` (GSPO): every real
    token of a row gets ``exp(mean_t (log_probs - old_log_probs))`` over the row's real
    tokens. Masked positions get exactly 1 (no ``-inf`` reaches ``exp``).

    Args:
      log_probs: float32 tensor ``[B, T]``. Under the current policy (differentiable).
      old_log_probs: float32 tensor ``[B, T]``. Under the sampling policy (no gradient).
      mask: float32 tensor ``[B, T]`` or None. Required for ``"sequence"``.
      importance_sampling_level: "token" or "sequence".

    Returns:
      float32 ``[B, T]``.
    """
    if importance_sampling_level not in IMPORTANCE_SAMPLING_LEVELS:
        raise ValueError(f"importance_sampling_level must be one of "
                         f"{IMPORTANCE_SAMPLING_LEVELS}, got {importance_sampling_level!r}")
    log_ratio = (tf.cast(log_probs, tf.float32)
                 - tf.stop_gradient(tf.cast(old_log_probs, tf.float32)))  # [B, T]
    if mask is not None:
        real = _real(mask, log_ratio)
        log_ratio = tf.where(real, log_ratio, 0.0)
    if importance_sampling_level == "sequence":
        if mask is None:
            raise ValueError('importance_sampling_level="sequence" needs the mask')
        sequence = masked_mean(log_ratio, mask, axis=-1)[:, None]  # [B, 1]
        log_ratio = tf.where(real, sequence, 0.0)  # [B, T]
    return tf.exp(log_ratio)


def clip_ratio_indicators(ratio, advantages, clip_epsilon, clip_epsilon_high=None,
                          delta=None):
    """TRL's ``clip_ratio/low`` and ``clip_ratio/high`` indicators, per token.

    ``low = (r < 1 - eps) & (A < 0)``, ``high = (r > 1 + eps_high) & (A > 0)`` with
    ``r = min(ratio, delta)`` where ``delta`` is set (TRL tests the capped ratio).

    Args:
      ratio: float32 tensor ``[B, T]``. Importance ratios.
      advantages: float32 tensor ``[B, T]``.
      clip_epsilon: float. As :func:`ppo_clipped_surrogate`.
      clip_epsilon_high: float or None. As :func:`ppo_clipped_surrogate`.
      delta: float or None. As :func:`ppo_clipped_surrogate`.

    Returns:
      (low, high): float32 ``[B, T]`` each, in {0, 1}.
    """
    ratio = tf.stop_gradient(tf.cast(ratio, tf.float32))
    advantages = tf.cast(advantages, tf.float32)
    eps_high = clip_epsilon if clip_epsilon_high is None else clip_epsilon_high
    if delta is not None:
        ratio = tf.minimum(ratio, float(delta))
    low = (ratio < 1.0 - clip_epsilon) & (advantages < 0)
    high = (ratio > 1.0 + eps_high) & (advantages > 0)
    return tf.cast(low, tf.float32), tf.cast(high, tf.float32)


def cispo_loss(log_probs, ratio, advantages, clip_max):
    """CISPO (MiniMax-M1; ScaleRL): ``-sg(min(ratio, clip_max)) * A * log pi``, per token.

    The importance weight is clipped from above and detached, so every token keeps
    its REINFORCE gradient ``A * grad log pi`` (scaled by the weight) instead of
    losing it when PPO's clip is active. ``clip_max`` is an absolute bound (TRL:
    ``epsilon_high``, 5.0 in ScaleRL), not ``1 + eps``.

    Args:
      log_probs: float32 tensor ``[B, T]``. Differentiable; 0 at masked positions.
      ratio: float32 tensor ``[B, T]``. Importance ratios (no gradient is taken).
      advantages: float32 tensor ``[B, T]``.
      clip_max: float. Upper bound of the weight.

    Returns:
      loss: float32 ``[B, T]``; clipped: float32 ``[B, T]``, TRL's
      ``cispo_clip_ratio`` indicator ``(ratio > clip_max) & (A > 0)``.
    """
    ratio = tf.stop_gradient(tf.cast(ratio, tf.float32))
    advantages = tf.stop_gradient(tf.cast(advantages, tf.float32))
    weight = tf.minimum(ratio, float(clip_max))  # [B, T]
    loss = -weight * advantages * tf.cast(log_probs, tf.float32)
    clipped = tf.cast((ratio > clip_max) & (advantages > 0), tf.float32)
    return loss, clipped


def sapo_loss(ratio, advantages, temperature_pos=1.0, temperature_neg=1.05):
    """SAPO (soft adaptive policy optimisation): a temperature-controlled sigmoid
    gate instead of PPO's hard clip, per token:

    ``-sigmoid(tau (ratio - 1)) * 4 / tau * A``, ``tau = temperature_pos`` where
    ``A > 0`` else ``temperature_neg``. At ``ratio = 1`` its gradient is
    ``-A * grad ratio`` (the plain policy gradient); far from 1 it fades smoothly.

    Args:
      ratio: float32 tensor ``[B, T]``. Importance ratios (differentiable).
      advantages: float32 tensor ``[B, T]``.
      temperature_pos: float. The gate temperature where ``A > 0`` (> 0).
      temperature_neg: float. The gate temperature elsewhere (> 0).

    Returns:
      float32 ``[B, T]``.
    """
    ratio = tf.cast(ratio, tf.float32)
    advantages = tf.stop_gradient(tf.cast(advantages, tf.float32))
    tau = tf.where(advantages > 0, float(temperature_pos), float(temperature_neg))
    return -tf.sigmoid(tau * (ratio - 1.0)) * 4.0 / tau * advantages


def vespo_weights(log_probs, old_log_probs, advantages, mask, k_pos=2.0, lambda_pos=3.0,
                  k_neg=3.0, lambda_neg=2.0):
    """VESPO's gamma weight of each sequence, ``phi(w) = e^lam w^k e^(-lam w)``
    (``phi(1) = 1``), detached; the loss is ``-phi * A * log pi`` per token.

    ``w`` is the sequence's importance ratio ``exp(sum_t clip(log pi - log pi_old,
    -20, 20))`` with its log clipped to ``[log 1e-8, 20]``; ``k, lam`` are the
    ``_pos`` pair where ``A >= 0`` and the ``_neg`` pair elsewhere (TRL's
    ``get_gamma_weights``, computed in log space).

    Args:
      log_probs: float32 tensor ``[B, T]``.
      old_log_probs: float32 tensor ``[B, T]``.
      advantages: float32 tensor ``[B, T]``. A row's advantage on its real tokens.
      mask: float32 tensor ``[B, T]``.
      k_pos: float. The gamma shape ``k`` where ``A >= 0``.
      lambda_pos: float. The gamma shape ``lam`` where ``A >= 0``.
      k_neg: float. The gamma shape ``k`` where ``A < 0``.
      lambda_neg: float. The gamma shape ``lam`` where ``A < 0``.

    Returns:
      float32 ``[B, T]``: each row's weight on every position (no gradient).
    """
    log_ratio = tf.clip_by_value(tf.cast(log_probs, tf.float32)
                                 - tf.cast(old_log_probs, tf.float32), -20.0, 20.0)
    log_w = tf.clip_by_value(masked_sum(log_ratio, mask, axis=-1)[:, None],
                             math.log(1e-8), 20.0)  # [B, 1]
    # A row's sign: its advantage is the same on every real token.
    row_advantage = masked_sum(advantages, mask, axis=-1)[:, None]  # [B, 1]
    non_negative = row_advantage >= 0
    k = tf.where(non_negative, float(k_pos), float(k_neg))
    lam = tf.maximum(tf.where(non_negative, float(lambda_pos), float(lambda_neg)), 1e-4)
    phi = tf.exp(lam + k * log_w - lam * tf.exp(log_w))  # [B, 1]
    phi = tf.where(tf.math.is_finite(phi), phi, 0.0)
    return tf.stop_gradient(tf.broadcast_to(phi, tf.shape(log_ratio)))


def off_policy_sequence_mask(log_probs, old_log_probs, advantages, mask, threshold):
    """DeepSeek-V3.2's off-policy sequence mask (TRL's ``off_policy_mask_threshold``):
    a sequence leaves the loss when its advantage is negative *and* its mean token
    KL from the sampling policy, ``mean_t (log pi_old - log pi)``, exceeds
    ``threshold``. Learning from one's own bad samples that the policy has already
    moved away from is what destabilises; good samples are always kept.

    Args:
      log_probs: float32 tensor ``[B, T]``. Under the current policy (no gradient
        taken).
      old_log_probs: float32 tensor ``[B, T]``. Under the sampling policy.
      advantages: float32 tensor ``[B, T]``.
      mask: float32 tensor ``[B, T]``.
      threshold: float. ``delta`` of the paper (e.g. 0.5).

    Returns:
      float32 ``[B, T]`` in {0, 1}: 1 = kept (every position of a kept row).
    """
    kl = tf.cast(old_log_probs, tf.float32) - tf.stop_gradient(tf.cast(log_probs, tf.float32))
    real = tf.cast(mask, tf.float32)
    sequence_kl = masked_sum(kl, real, axis=-1) / tf.maximum(
        tf.reduce_sum(real, axis=-1), 1.0)  # [B]
    keep = (tf.cast(advantages, tf.float32) >= 0) | (sequence_kl[:, None] <= threshold)
    return tf.cast(keep, tf.float32)  # [B, T]


def high_entropy_mask(entropies, mask, quantile):
    """float32 ``[B, T]``: 1 for the real tokens whose entropy is in the top
    ``quantile`` of the real tokens' entropies (TRL's ``top_entropy_quantile``).

    The threshold is the ``1 - quantile`` quantile of the real tokens' entropies,
    linearly interpolated (``torch.quantile``); a token is kept when its entropy is
    >= the threshold. ``quantile=1`` keeps every real token.

    Args:
      entropies: float32 tensor ``[B, T]``. Per-token entropies (no gradient is taken).
      mask: float32 tensor ``[B, T]``. 1 = real token.
      quantile: float. In ``(0, 1]``.

    Returns:
      float32 ``[B, T]`` in {0, 1}, 0 at masked positions.
    """
    entropies = tf.stop_gradient(tf.cast(entropies, tf.float32))
    real = _real(mask, entropies)
    values = tf.sort(tf.boolean_mask(entropies, real))  # [n] ascending
    count = tf.size(values)
    position = (1.0 - float(quantile)) * tf.cast(tf.maximum(count - 1, 0), tf.float32)
    low = tf.cast(tf.floor(position), tf.int32)
    high = tf.minimum(low + 1, tf.maximum(count - 1, 0))
    safe = tf.concat([values, [0.0]], 0)  # an empty selection reads index 0
    fraction = position - tf.floor(position)
    threshold = safe[low] + fraction * (safe[high] - safe[low])
    return tf.cast(real & (entropies >= threshold), tf.float32)


def value_loss(values, returns, old_values=None, clip_range=None):
    """Squared-error value loss ``0.5 * (V - R)**2``, per token.

    With ``old_values`` and ``clip_range`` (PPO value clipping):
    ``0.5 * max((V - R)**2, (clip(V, old - c, old + c) - R)**2)``.
    ``returns`` and ``old_values`` are wrapped in ``tf.stop_gradient``.

    Args:
      values: float32 tensor ``[B, T]``. Current value predictions (differentiable).
      returns: float32 tensor ``[B, T]``. Targets.
      old_values: float32 tensor ``[B, T]`` or None. Predictions at rollout time.
      clip_range: float or None. The clip range ``c``; requires ``old_values``.

    Returns:
      float32 ``[B, T]``.
    """
    values = tf.cast(values, tf.float32)
    returns = tf.stop_gradient(tf.cast(returns, tf.float32))
    squared = tf.square(values - returns)
    if clip_range is None:
        return 0.5 * squared
    if old_values is None:
        raise ValueError("value clipping (clip_range) needs old_values")
    old_values = tf.stop_gradient(tf.cast(old_values, tf.float32))
    c = tf.cast(clip_range, tf.float32)
    clipped_values = old_values + tf.clip_by_value(values - old_values, -c, c)
    return 0.5 * tf.maximum(squared, tf.square(clipped_values - returns))


def bradley_terry_loss(chosen_scores, rejected_scores, margin=0.0):
    """Pairwise reward-model loss ``-log sigmoid(r_chosen - r_rejected - margin)``.

    The Bradley-Terry model says the chosen completion wins with probability
    ``sigmoid(r_chosen - r_rejected)``; this is its negative log-likelihood per
    pair. A ``margin`` (Llama 2's) asks the chosen score to lead by that much.
    Computed as ``softplus(-(d))``, exact for large ``|d|``.

    Args:
      chosen_scores: float32 tensor ``[B]``.
      rejected_scores: float32 tensor ``[B]``.
      margin: float or float32 tensor ``[B]``.

    Returns:
      float32 ``[B]``.

    Example:
    >>> round(float(bradley_terry_loss(tf.constant([1.0]), tf.constant([0.0]))[0]), 5)
    0.31326
    """
    difference = (tf.cast(chosen_scores, tf.float32) - tf.cast(rejected_scores, tf.float32)
                  - tf.cast(margin, tf.float32))  # [B]
    return tf.nn.softplus(-difference)


def masked_sum(x, mask, axis=None):
    """``sum(x * mask)`` over ``axis``, ignoring whatever ``x`` holds where mask is 0.

    Args:
      x: float tensor ``[B, T]``. Any shape.
      mask: float tensor. Broadcastable to ``x``'s shape.
      axis: int, tuple of int or None. Reduction axis / axes (None: all).

    Returns:
      float32, ``x``'s shape reduced over ``axis``.
    """
    x = tf.cast(x, tf.float32)
    mask = tf.broadcast_to(tf.cast(mask, tf.float32), tf.shape(x))
    return tf.reduce_sum(tf.where(mask != 0, x * mask, 0.0), axis=axis)


def masked_mean(x, mask, axis=None):
    """``sum(x * mask) / sum(mask)`` over ``axis``; 0 where ``sum(mask)`` is 0.
    Arguments and result as for `masked_sum`."""
    x = tf.cast(x, tf.float32)
    mask = tf.broadcast_to(tf.cast(mask, tf.float32), tf.shape(x))
    return tf.math.divide_no_nan(masked_sum(x, mask, axis), tf.reduce_sum(mask, axis=axis))


def aggregate_loss_terms(per_token, mask, mode="token_mean", normalizer=None):
    """Numerator and denominator of :func:`aggregate_loss` (for all-reducing).

    ==================  ================================  =====================
    mode                numerator                         denominator
    ==================  ================================  =====================
    ``token_mean``      ``sum_bt l*m``                    ``sum_bt m``
    ``sequence_mean``   ``sum_b (sum_t l*m / sum_t m)``   ``B``
    ``sequence_sum``    ``sum_bt l*m``                    ``B``
    ``constant``        ``sum_bt l*m``                    ``B * normalizer``
    ``rollout_token_    ``sum_bt l*m``                    ``normalizer``
    mean``
    ==================  ================================  =====================

    ``token_mean`` is DAPO's / TRL's "token-level" loss (long completions weigh
    more), ``sequence_mean`` the original GRPO loss (each sequence weighs the same;
    rows without real tokens contribute 0 and still count in ``B``, as in TRL),
    ``sequence_sum`` plain REINFORCE (``sum_t log pi`` per sequence), ``constant``
    Dr. GRPO (``normalizer`` a constant such as ``max_new_tokens``),
    ``rollout_token_mean`` DAPO as TRL (``normalizer`` the real-token count of the
    whole rollout the minibatch was drawn from, so with several minibatches each
    step's loss is its share of one token mean over the generation batch, where
    ``token_mean``, TRL's "bnpo", divides by the minibatch's own count).

    Args:
      per_token: float32 tensor ``[B, T]``. Per-token loss.
      mask: float32 tensor ``[B, T]``. 1 = real token.
      mode: str. One of ``AGGREGATION_MODES``.
      normalizer: float or None. Python / scalar constant, required for ``"constant"``
        and ``"rollout_token_mean"``.

    Returns:
      numerator: float32 ``[]``; denominator: float32 ``[]``.
    """
    per_token = tf.cast(per_token, tf.float32)  # [B, T]
    mask = tf.broadcast_to(tf.cast(mask, tf.float32), tf.shape(per_token))  # [B, T]
    batch_size = tf.cast(tf.shape(per_token)[0], tf.float32)
    if mode == "token_mean":
        return masked_sum(per_token, mask), tf.reduce_sum(mask)
    if mode == "sequence_mean":
        return tf.reduce_sum(masked_mean(per_token, mask, axis=-1)), batch_size
    if mode == "sequence_sum":
        return masked_sum(per_token, mask), batch_size
    if mode == "constant":
        if normalizer is None:
            raise ValueError('mode="constant" needs a normalizer (e.g. max_new_tokens)')
        return masked_sum(per_token, mask), batch_size * tf.cast(normalizer, tf.float32)
    if mode == "rollout_token_mean":
        if normalizer is None:
            raise ValueError('mode="rollout_token_mean" needs a normalizer (the '
                             "rollout's real-token count)")
        return masked_sum(per_token, mask), tf.cast(normalizer, tf.float32)
    raise ValueError(f"mode must be one of {AGGREGATION_MODES}, got {mode!r}")


def aggregate_loss(per_token, mask, mode="token_mean", normalizer=None, global_denominator=None):
    """Reduces a per-token loss to a scalar (see :func:`aggregate_loss_terms`).

    Returns ``numerator / denominator``, 0 when the denominator is 0 (all masked).

    Distributed training: pass ``global_denominator``, the denominator summed over
    all replicas (e.g. ``strategy``/``replica_ctx.all_reduce("SUM", denominator)``
    of the local denominators: global real-token count for ``token_mean``, global
    batch size for the other modes, times ``normalizer`` for ``constant``). Each
    replica then returns its share ``local_numerator / global_denominator``, and the
    replicas' losses (and gradients, which ``tf.distribute`` sums) add up to the
    single-device loss. Do not also divide by ``num_replicas_in_sync``.

    ``sequence_mean`` per replica then divides by the global batch size, which is
    exact; ``token_mean`` with per-replica denominators (no ``global_denominator``)
    would weight replicas unequally whenever their token counts differ.

    Args:
      per_token: float32 tensor ``[B, T]``.
      mask: float32 tensor ``[B, T]``.
      mode: str. One of ``AGGREGATION_MODES``.
      normalizer: float or None. Constant for ``"constant"`` mode.
      global_denominator: float32 tensor ``[]`` or None. Replaces the local denominator.

    Returns:
      float32 ``[]``.
    """
    numerator, denominator = aggregate_loss_terms(per_token, mask, mode, normalizer)
    if global_denominator is not None:
        denominator = tf.cast(global_denominator, tf.float32)
    return tf.math.divide_no_nan(numerator, denominator)


@keras.saving.register_keras_serializable(package="tfpg")
class AdvantageWeightedCrossentropy(keras.losses.Loss):
    """Token cross-entropy weighted by an advantage, for ``model.fit`` on logged data.

    REINFORCE from logged ``(prompt, completion, reward)`` triples with plain Keras::

        policy.compile(optimizer="adam", loss=tfpg.losses.AdvantageWeightedCrossentropy())
        policy.fit(input_ids, target_ids, sample_weight=advantages)   # advantages [B] or [B, T]

    ``y_true`` are the target ids ``int [B, T]`` (``ignore_class``, default 0 = pad,
    is ignored), ``y_pred`` the logits ``[B, T, V]`` (or probabilities with
    ``from_logits=False``). ``call`` returns the per-token cross-entropy ``[B, T]``,
    0 at ignored tokens; ``__call__`` weights and reduces it (the real tokens are
    those of ``y_true``; a Keras mask carried by ``y_pred`` is not used).

    ``sample_weight`` may be per sequence ``[B]`` (broadcast over time; plain Keras
    would fail to broadcast a ``[B]`` weight against a ``[B, T]`` loss, so this class
    expands it to ``[B, 1]``) or per token ``[B, T]``. With the default reduction
    ``"sum_over_batch_size"`` Keras divides by the number of real tokens, so::

        loss = -sum_{b,t} A_b * log pi(y_bt) * m_bt / sum_{b,t} m_bt

    i.e. the mean advantage-weighted negative log-likelihood per real token (with no
    ``sample_weight`` it equals ``SparseCategoricalCrossentropy(from_logits=True,
    ignore_class=0)``). Use ``reduction="sum"`` for the un-normalised sum. Avoid
    ``"mean_with_sample_weight"``: advantages sum to about 0.

    Off-policy caution: logged completions come from an older policy, and several
    epochs of signed advantages on one log push the probability of bad completions
    towards 0 without bound (on the bundled arithmetic task: exact match 0.40 -> 0.03,
    KL 15 nats). Keep the weights non-negative (``max(A, 0)`` or ``exp(A / beta)``,
    as in advantage-weighted regression) or take few steps per log;
    ``examples/logged_feedback.py`` shows both.

    Args:
      from_logits: bool. Whether ``y_pred`` are logits (default) or probabilities.
      ignore_class: int or None. Target id to ignore (default 0, the pad id); None
        ignores none.
      reduction: str. Keras reduction.
      name: str. Loss name.
      dtype: str or None. Keras loss dtype (default floatx, float32).
    """

    def __init__(
        self,
        from_logits=True,
        ignore_class=0,
        reduction="sum_over_batch_size",
        name="advantage_weighted_crossentropy",
        dtype=None,
    ):
        if dtype is None:  # older Keras 3 releases take no dtype argument
            super().__init__(name=name, reduction=reduction)
        else:
            super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.from_logits = from_logits
        self.ignore_class = ignore_class

    def __call__(self, y_true, y_pred, sample_weight=None):
        # The reduction is done here rather than by keras.losses.Loss.__call__ so
        # that a per-sequence [B] weight broadcasts over time and the mean runs over
        # real tokens, with public APIs only.
        with tf.name_scope(self.name):
            nll, valid = self._per_token(y_true, y_pred)  # [B, T], [B, T]
            weights = tf.cast(valid, tf.float32)  # [B, T]
            if sample_weight is not None:
                sample_weight = tf.cast(tf.convert_to_tensor(sample_weight), tf.float32)
                if sample_weight.shape.rank == 1:
                    sample_weight = sample_weight[:, None]  # [B] -> [B, 1]
                elif sample_weight.shape.rank == 3:
                    sample_weight = tf.squeeze(sample_weight, axis=-1)  # [B, T, 1]
                weights = weights * sample_weight
            weighted = tf.where(valid, nll * weights, 0.0)  # [B, T]
            if self.reduction is None or self.reduction == "none":
                return tf.cast(weighted, self.dtype)
            total = tf.reduce_sum(weighted)
            if self.reduction == "sum":
                return tf.cast(total, self.dtype)
            if self.reduction == "mean_with_sample_weight":
                divisor = tf.reduce_sum(weights)
            else:  # "sum_over_batch_size", "mean": per real token
                divisor = tf.reduce_sum(tf.cast(valid, tf.float32))
            loss = tf.math.divide_no_nan(total, divisor)
            # Same convention as Keras' own reductions: a replica's loss is scaled by
            # 1 / num_replicas, and tf.distribute sums the replicas' gradients.
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            if replicas > 1:
                loss = loss / float(replicas)
            return tf.cast(loss, self.dtype)

    def call(self, y_true, y_pred):
        """Per-token negative log-likelihood ``[B, T]``, 0 at ignored targets."""
        nll, _ = self._per_token(y_true, y_pred)
        return tf.cast(nll, self.dtype)

    def _per_token(self, y_true, y_pred):
        # y_true: [B, T] (or [B, T, 1]) ids, maybe as floats; y_pred: [B, T, V].
        ids = tf.convert_to_tensor(y_true)
        if ids.dtype.is_floating:
            ids = tf.round(ids)
        ids = tf.cast(ids, tf.int32)
        if ids.shape.rank == 3:
            ids = tf.squeeze(ids, axis=-1)
        if self.ignore_class is None:
            valid = tf.ones_like(ids, tf.bool)
        else:
            valid = tf.not_equal(ids, self.ignore_class)
        safe_ids = tf.where(valid, ids, 0)
        if self.from_logits:
            nll = -token_log_probs(y_pred, safe_ids)  # [B, T]
        else:
            probs = tf.cast(y_pred, tf.float32)
            eps = keras.config.epsilon()
            probs = tf.clip_by_value(probs, eps, 1.0 - eps)
            chosen = tf.gather(probs, safe_ids[..., None], axis=-1, batch_dims=2)[..., 0]
            nll = -tf.math.log(chosen)
        return tf.where(valid, nll, 0.0), valid

    def get_config(self):
        config = super().get_config()
        config.update({"from_logits": self.from_logits, "ignore_class": self.ignore_class})
        return config
