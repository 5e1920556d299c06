"""Vectorised BLEU on padded token-id tensors, equal to nltk's BLEU to 1e-6.

`sentence_bleu` scores a whole batch with TensorFlow ops (no Python per sentence,
usable inside `tf.function`); `corpus_bleu` sums the same per-sentence statistics
and scores them once, with nltk's corpus semantics, for evaluation.

Both follow `nltk.translate.bleu_score` exactly, including its corner cases:

* clipped n-gram counts: a hypothesis n-gram counts at most as often as it occurs
  in the reference where it occurs most often;
* precision denominators are `max(1, number of hypothesis n-grams)`, so orders
  longer than the hypothesis have precision 0/1 (what smoothing then does with
  them differs per method, as in nltk);
* brevity penalty against the closest reference length, ties to the shorter one;
  BP = 0 for an empty hypothesis;
* no unigram match -> 0 before any smoothing;
* smoothing "none" (nltk `method0`) puts `sys.float_info.min` in place of a zero
  precision, which makes the score 0 up to ~1e-77 (nltk also warns; we do not);
* "method4" uses the hypothesis length (the corpus length for `corpus_bleu`) and
  leaves zero precisions alone when that length is 1, which drops them from the
  geometric mean.

Token ids are non-negative. Which ids count comes from masks (`hypothesis_mask`,
`reference_mask`, 1 = real token, anywhere in a row): a row stands for its
masked-in ids in order, so id 0 can be a real token (KerasHub vocabularies).
Without a mask, id 0 is padding (tfpg's `Tokenizer`). References are `[B, R]`
(one per hypothesis) or `[B, K, R]` (up to K per hypothesis; rows without a real
token are missing references, not empty ones). A hypothesis whose references are
all missing scores 0.

`BLEU` is the reward: `sentence_bleu` of each completion (cut before EOS, masked
by the completion mask) against `batch["reference"]` (masked by
`batch["reference_mask"]`).
"""

import math
import sys
import warnings

import keras
import numpy as np
import tensorflow as tf

from tfpg.rewards.base import Reward, compact_ids, completion_token_mask, id_mask

SMOOTHING_METHODS = ("none", "method1", "method2", "method3", "method4")

# nltk's SmoothingFunction defaults: epsilon for method1, k for method4.
_EPSILON = 0.1
_K = 5.0
# log of what nltk's method0 substitutes for a zero precision.
_LOG_FLOAT_MIN = math.log(sys.float_info.min)


def _check_smoothing(smoothing):
    """None means "none", as nltk's smoothing_function=None."""
    smoothing = "none" if smoothing is None else smoothing
    if smoothing not in SMOOTHING_METHODS:
        raise ValueError(f"smoothing must be one of {SMOOTHING_METHODS}, got {smoothing!r}")
    return smoothing


def _check_max_order(max_order):
    if not isinstance(max_order, (int, np.integer)) or max_order < 1:
        raise ValueError(f"max_order must be a positive int, got {max_order!r}")
    return int(max_order)


def _ngram_keys(tokens, max_order):
    """Exact int64 keys of the n-grams starting at every position.

    Args:
        tokens: int32 [B, L], each row the concatenation of one hypothesis and
            its references (compacted, so each sequence's n-grams lie within it).
        max_order: longest n-gram.

    Returns:
        int64 [B, max_order, L]; within a row, two positions have equal order-n
        keys exactly when their n-token windows are equal.

    With V = max id + 1, the key of (a, b, c) is (a V + b) V + c while V^max_order
    fits in int64 (any vocabulary up to 55k for BLEU-4). For larger vocabularies
    each order's keys are first replaced by their rank within the row (sort +
    searchsorted), which keeps the next order's keys below L V, so keys stay
    exact (never hashed with collisions) at a higher cost.
    """
    length = tf.shape(tokens)[1]
    padded = tf.cast(tf.pad(tokens, [[0, 0], [0, max_order]]), tf.int64)  # [B, L + max_order]
    vocab = tf.reduce_max(padded) + 1

    def extend(key, n):  # order n-1 keys -> order n keys
        return key * vocab + padded[:, n - 1:n - 1 + length]

    def packed():
        keys = [padded[:, :length]]
        for n in range(2, max_order + 1):
            keys.append(extend(keys[-1], n))
        return tf.stack(keys, axis=1)

    def ranked():
        keys = [padded[:, :length]]
        for n in range(2, max_order + 1):
            rank = tf.searchsorted(tf.sort(keys[-1], axis=1), keys[-1], out_type=tf.int64)
            keys.append(extend(rank, n))
        return tf.stack(keys, axis=1)

    if max_order == 1:
        return packed()
    fits = tf.cast(vocab, tf.float64) ** max_order < 2.0 ** 62
    return tf.cond(fits, packed, ranked)


def bleu_statistics(hypothesis_ids, reference_ids, max_order=4, hypothesis_mask=None,
                    reference_mask=None):
    """Per-sentence BLEU sufficient statistics, as nltk computes them.

    `sentence_bleu` scores them row by row, `corpus_bleu` sums them first.

    Args:
        hypothesis_ids: int [B, T].
        reference_ids: int [B, R] or [B, K, R]; rows of a [B, K, R] tensor
            without a real token are missing references.
        max_order: longest n-gram.
        hypothesis_mask: [B, T], 1 = real token; None: the nonzero ids.
        reference_mask: the shape of `reference_ids`; None: the nonzero ids.

    Returns:
        A tuple of float64 tensors:
        numerators [B, max_order]: clipped n-gram matches per order;
        denominators [B, max_order]: max(1, hypothesis n-gram count) per order;
        hypothesis_lengths [B];
        reference_lengths [B]: closest reference length (ties -> shorter; 0
        when every reference is missing).

    All orders are computed at once by comparing exact int64 n-gram keys (see
    `_ngram_keys`) pairwise: hypothesis x hypothesis [B, max_order, T, T] and
    hypothesis x references [B, max_order, T, K * R]; few large ops beat a loop
    of small ones on CPU. Memory grows as B * max_order * T * (T + K * R).
    """
    max_order = _check_max_order(max_order)
    hyp = tf.cast(tf.convert_to_tensor(hypothesis_ids), tf.int32)
    refs = tf.cast(tf.convert_to_tensor(reference_ids), tf.int32)
    hyp.shape.assert_has_rank(2)
    if refs.shape.rank not in (2, 3):
        raise ValueError(
            f"reference_ids must have shape [B, R] or [B, K, R], got {refs.shape}")
    one_reference = refs.shape.rank == 2
    if reference_mask is not None:
        reference_mask = tf.convert_to_tensor(reference_mask)
        reference_mask.shape.assert_is_compatible_with(refs.shape)
    if one_reference:
        refs = refs[:, None, :]  # [B, 1, R]
        reference_mask = None if reference_mask is None else reference_mask[:, None, :]

    hyp, hyp_len = compact_ids(hyp, hypothesis_mask)  # [B, T], [B]
    refs, ref_len = compact_ids(refs, reference_mask)  # [B, K, R], [B, K]
    b, t = tf.shape(hyp)[0], tf.shape(hyp)[1]
    k, r = tf.shape(refs)[1], tf.shape(refs)[2]
    keys = _ngram_keys(tf.concat([hyp, tf.reshape(refs, [b, k * r])], axis=1), max_order)

    orders = tf.range(1, max_order + 1)  # [N]
    positions = tf.range(t)  # [T]
    ref_positions = tf.tile(tf.range(r), [k])  # [K * R]
    hyp_valid = (positions[None, None, :] + orders[None, :, None]
                 <= hyp_len[:, None, None])  # [B, N, T]
    ref_valid = (ref_positions[None, None, :] + orders[None, :, None]
                 <= tf.repeat(ref_len, r, axis=1)[:, None, :])  # [B, N, K * R]
    # Windows running past a sequence's end get keys that match nothing real
    # (real keys are >= 0); invalid hypothesis windows are never counted anyway.
    hyp_key = tf.where(hyp_valid, keys[:, :, :t], tf.constant(-1, tf.int64))  # [B, N, T]
    ref_key = tf.where(ref_valid, keys[:, :, t:], tf.constant(-2, tf.int64))  # [B, N, K * R]

    # Clipping without finding distinct n-grams: the j-th occurrence (from 0) of
    # an n-gram in the hypothesis is matched iff some reference holds it more
    # than j times, which sums to min(count, max reference count) per n-gram.
    # int16 counts halve the memory traffic; they need T, R < 32768, far beyond
    # what the pairwise tensors could hold anyway.
    earlier = positions[None, :] < positions[:, None]  # [T(i), T(j)]: j < i
    same_before = tf.equal(hyp_key[..., :, None], hyp_key[..., None, :]) & earlier
    occurrence = tf.reduce_sum(tf.cast(same_before, tf.int16), axis=-1)  # [B, N, T]
    in_ref = tf.cast(tf.equal(hyp_key[..., :, None], ref_key[..., None, :]), tf.int16)
    in_ref = tf.reshape(in_ref, [b, max_order, t, k, r])  # [B, N, T, K, R]
    ref_count = tf.reduce_max(tf.reduce_sum(in_ref, axis=-1), axis=-1)  # [B, N, T]
    matched = hyp_valid & (occurrence < ref_count)
    numerators = tf.reduce_sum(tf.cast(matched, tf.int32), axis=-1)  # [B, N]
    denominators = tf.maximum(1, hyp_len[:, None] - orders[None, :] + 1)  # [B, N]

    if one_reference:
        closest = ref_len[:, 0]
    else:
        present = ref_len > 0  # [B, K]
        distance = tf.abs(ref_len - hyp_len[:, None])  # [B, K]
        big = tf.int32.max
        best = tf.reduce_min(tf.where(present, distance, big), axis=1, keepdims=True)
        closest = tf.reduce_min(tf.where(present & tf.equal(distance, best), ref_len, big),
                                axis=1)
        closest = tf.where(tf.reduce_any(present, axis=1), closest, 0)  # [B]

    as64 = lambda x: tf.cast(x, tf.float64)  # noqa: E731
    return as64(numerators), as64(denominators), as64(hyp_len), as64(closest)


def bleu_from_statistics(numerators, denominators, hypothesis_lengths, reference_lengths,
                         smoothing="method1"):
    """BLEU from (summed) statistics, following nltk's `corpus_bleu` formula.

    Args:
        numerators: float64 [B, N] clipped matches per order.
        denominators: float64 [B, N].
        hypothesis_lengths: float64 [B].
        reference_lengths: float64 [B].
        smoothing: "none", "method1", ..., "method4".

    Returns:
        float64 [B] with uniform weights 1/N.
    """
    smoothing = _check_smoothing(smoothing)
    num, den = numerators, denominators
    h, r = hypothesis_lengths, reference_lengths
    max_order = num.shape[-1]
    h_safe = tf.maximum(h, 1.0)
    bp = tf.where(h > r, tf.ones_like(h), tf.where(h > 0, tf.exp(1.0 - r / h_safe), 0.0))

    zero = tf.equal(num, 0.0)  # [B, N]
    precision = num / den
    if smoothing == "none":
        log_p = tf.where(zero, tf.constant(_LOG_FLOAT_MIN, tf.float64), tf.math.log(precision))
        used = tf.ones_like(zero)
    else:
        if smoothing == "method1":
            p = tf.where(zero, _EPSILON / den, precision)
        elif smoothing == "method2":
            p = tf.concat([precision[:, :1], (num[:, 1:] + 1.0) / (den[:, 1:] + 1.0)], axis=1)
        elif smoothing == "method3":
            # k-th zero order gets 1 / (2^k * denominator).
            k = tf.cumsum(tf.cast(zero, tf.float64), axis=1, exclusive=True) + 1.0
            p = tf.where(zero, 1.0 / (2.0 ** k * den), precision)
        else:  # method4
            smoothed = zero & (h[:, None] > 1.0)
            k = tf.cumsum(tf.cast(smoothed, tf.float64), axis=1, exclusive=True) + 1.0
            log_h = tf.math.log(tf.maximum(h, 2.0))[:, None]
            p = tf.where(smoothed, 1.0 / (2.0 ** k * _K / log_h) / den, precision)
        # nltk leaves out non-positive precisions (method4 with length 1).
        used = p > 0.0
        log_p = tf.math.log(tf.where(used, p, 1.0))
    weight = 1.0 / max_order
    log_mean = tf.reduce_sum(tf.where(used, weight * log_p, 0.0), axis=1)
    score = bp * tf.exp(log_mean)
    return tf.where(tf.equal(num[:, 0], 0.0), tf.zeros_like(score), score)


def sentence_bleu(hypothesis_ids, reference_ids, max_order=4, smoothing="method1",
                  hypothesis_mask=None, reference_mask=None):
    """Sentence-level BLEU of every row, equal to nltk's `sentence_bleu` to 1e-6.

    Args:
        hypothesis_ids: int [B, T].
        reference_ids: int tensor [B, R] or [B, K, R]. [B, R] (one reference each) or
            [B, K, R] (several; rows without a real token are missing references).
        max_order: int. Longest n-gram; weights are uniform, 1 / max_order.
        smoothing: str. "none" (nltk's default, `method0`), or nltk's
            `SmoothingFunction().method1` ... `method4` with nltk's defaults (epsilon =
            0.1, k = 5).
        hypothesis_mask: tensor [B, T] or None. 1 = real token (anywhere in the row);
            None: id 0 is padding (tfpg's `Tokenizer`).
        reference_mask: tensor or None. The shape of `reference_ids`; None: id 0 is
            padding.

    Returns:
        float32 [B]. The computation runs in float64; rounding the result to
        float32 changes it by less than 6e-8, well inside the 1e-6 parity.

    Example:
    >>> hyp = tf.constant([[4, 5, 6, 7, 8], [4, 4, 0, 0, 0]])
    >>> refs = tf.constant([[4, 5, 6, 7, 8], [4, 5, 0, 0, 0]])
    >>> [round(float(x), 4) for x in sentence_bleu(hyp, refs)]
    [1.0, 0.1495]
    >>> float(sentence_bleu([[0, 5, 9]], [[0, 5, 7]], max_order=2,
    ...                     hypothesis_mask=[[1, 1, 0]], reference_mask=[[1, 1, 0]])[0])
    1.0
    """
    max_order, smoothing = _check_max_order(max_order), _check_smoothing(smoothing)
    stats = bleu_statistics(hypothesis_ids, reference_ids, max_order, hypothesis_mask,
                            reference_mask)
    return tf.cast(bleu_from_statistics(*stats, smoothing=smoothing), tf.float32)


def _to_id_arrays(hypotheses, references):
    """Turns nltk-style token lists (any hashable tokens) into padded id arrays.

    Returns (hyp int32 [B, T], refs int32 [B, K, R]). Arrays and tensors of ids
    pass through unchanged.
    """
    arrays = [isinstance(x, (np.ndarray, tf.Tensor)) for x in (hypotheses, references)]
    if all(arrays):
        return hypotheses, references
    if any(arrays):
        # A padded id array's zeros would otherwise become tokens.
        raise TypeError("corpus_bleu needs hypotheses and references both as padded id "
                        "arrays or both as lists of token sequences")
    hypotheses = [list(h) for h in hypotheses]
    references = [[list(r) for r in refs] for refs in references]
    if len(hypotheses) != len(references):
        raise ValueError(f"got {len(hypotheses)} hypotheses but {len(references)} "
                         "reference lists")
    vocab = {}
    as_id = lambda token: vocab.setdefault(token, len(vocab) + 1)  # noqa: E731
    width = max([len(h) for h in hypotheses] + [1])
    ref_width = max([len(r) for refs in references for r in refs] + [1])
    num_refs = max([len(refs) for refs in references] + [1])
    hyp = np.zeros([len(hypotheses), width], np.int32)
    refs = np.zeros([len(hypotheses), num_refs, ref_width], np.int32)
    for b, (h, rs) in enumerate(zip(hypotheses, references)):
        hyp[b, :len(h)] = [as_id(t) for t in h]
        for k, r in enumerate(rs):
            refs[b, k, :len(r)] = [as_id(t) for t in r]
    return hyp, refs


@tf.function(reduce_retracing=True)
def _corpus_statistics(hyp, refs, max_order, hyp_mask, ref_mask):
    # Evaluation calls this with many small corpora: one graph beats eager ops.
    return bleu_statistics(hyp, refs, max_order, hyp_mask, ref_mask)


def corpus_bleu(hypotheses, references, max_order=4, smoothing="none",
                hypothesis_mask=None, reference_mask=None):
    """Corpus-level BLEU with nltk's `corpus_bleu` semantics, for evaluation.

    Clipped matches, n-gram counts, hypothesis lengths and closest reference
    lengths are summed over the corpus before one BLEU is computed (not the mean
    of sentence scores). As in nltk, "method4" uses the corpus hypothesis length.

    Args:
        hypotheses: int tensor [B, T] or list. Ids, or a list of token sequences (ids or
            strings, as nltk takes them).
        references: int tensor [B, R] or [B, K, R], or list. Ids matching an id array of
            hypotheses, or a list (one per hypothesis) of lists of token sequences.
        max_order: int. Longest n-gram; uniform weights.
        smoothing: str. "none" (nltk's default) or "method1" ... "method4".
        hypothesis_mask: int tensor or None. For id arrays, 1 = real token, as in
            `sentence_bleu`; None: id 0 is padding.
        reference_mask: int tensor or None. The same for the references.

    Returns:
        Python float.

    Note the argument order (hypotheses first) differs from nltk's.

    Example:
    >>> corpus_bleu([["a", "b", "c", "d"], ["a", "b"]], [[["a", "b", "c", "d"]], [["a", "c"]]])
    0.6756000774035172
    """
    max_order, smoothing = _check_max_order(max_order), _check_smoothing(smoothing)
    hyp, refs = _to_id_arrays(hypotheses, references)
    if (hypothesis_mask is not None or reference_mask is not None) and hyp is not hypotheses:
        raise TypeError("corpus_bleu takes hypothesis_mask / reference_mask only with id "
                        "arrays, not with lists of token sequences")
    refs = tf.cast(refs, tf.int32)
    if refs.shape.rank == 2:
        refs = refs[:, None, :]
        if reference_mask is not None:
            reference_mask = tf.convert_to_tensor(reference_mask)[:, None, :]
    as_mask = lambda m: None if m is None else tf.cast(m, tf.float32)  # noqa: E731
    num, den, h, r = _corpus_statistics(tf.cast(hyp, tf.int32), refs, max_order,
                                        as_mask(hypothesis_mask), as_mask(reference_mask))
    totals = [tf.reduce_sum(x, axis=0, keepdims=True) for x in (num, den, h, r)]
    return float(bleu_from_statistics(*totals, smoothing=smoothing)[0])


def _nltk_sentence_bleu(hyp, hyp_mask, refs, ref_mask, max_order, smoothing):
    """nltk's own sentence_bleu on numpy id arrays and their masks, row by row (the
    reference implementation)."""
    from nltk.translate import bleu_score  # a slow import that only this backend needs

    smoothing_function = None if smoothing == "none" else getattr(
        bleu_score.SmoothingFunction(), smoothing)
    weights = (1.0 / max_order,) * max_order
    if refs.ndim == 2:
        refs, ref_mask = refs[:, None, :], ref_mask[:, None, :]
    scores = np.zeros([hyp.shape[0]], np.float32)
    with warnings.catch_warnings():
        # method0's "0 counts of n-gram overlaps" warning, once per sentence.
        warnings.simplefilter("ignore")
        for b in range(hyp.shape[0]):
            hypothesis = [int(t) for t, m in zip(hyp[b], hyp_mask[b]) if m > 0]
            references = [[int(t) for t, m in zip(r, rm) if m > 0]
                          for r, rm in zip(refs[b], ref_mask[b])]
            references = [r for r in references if r] or [[]]
            scores[b] = bleu_score.sentence_bleu(references, hypothesis, weights,
                                                 smoothing_function)
    return scores


@keras.saving.register_keras_serializable(package="tfpg")
class BLEU(Reward):
    """Sentence BLEU of each completion against `batch[reference_key]`.

    The completion's tokens are those of `completion_mask` before its EOS;
    references are int [B, R] or [B, K, R] (no BOS/EOS), e.g. `prompt_dataset`'s
    "reference", whose real tokens are `batch[reference_key + "_mask"]` when the
    batch has that column ("reference_mask"), else the ids other than `pad_id`.
    Ids are never padding by value otherwise: id 0 is a real token in KerasHub
    vocabularies.

    Args:
        max_order: int. Longest n-gram (uniform weights).
        smoothing: str. "none", "method1" (default) ... "method4", as nltk.
        reference_key: str. Batch column holding the reference ids.
        backend: str. "tf" (vectorised, in-graph) or "nltk" (nltk itself through
            `tf.numpy_function`, one sentence at a time: the reference implementation,
            slow, not XLA-compatible).
        eos_id: int or None. Where completions stop: the tokenizer's / policy's EOS id
            (2 for tfpg's `Tokenizer`; None: use every masked-in token).
        pad_id: int. The references' padding id when the batch has no mask column (0 for
            tfpg's `Tokenizer`).
        name: str or None. Defaults to "BLEU".

    Example:
    >>> reward = BLEU()
    >>> completion = tf.constant([[4, 5, 6, 7, 2, 0]])
    >>> reward(None, completion, tf.constant([[1., 1., 1., 1., 1., 0.]]),
    ...        {"reference": tf.constant([[4, 5, 6, 7]])}).numpy()
    array([1.], dtype=float32)
    """

    def __init__(self, max_order=4, smoothing="method1", reference_key="reference",
                 backend="tf", eos_id=2, pad_id=0, name=None):
        super().__init__(name=name)
        self.max_order = _check_max_order(max_order)
        self.smoothing = _check_smoothing(smoothing)
        if backend not in ("tf", "nltk"):
            raise ValueError(f"backend must be 'tf' or 'nltk', got {backend!r}")
        self.reference_key = reference_key
        self.backend = backend
        self.eos_id = eos_id
        self.pad_id = pad_id

    def get_config(self):
        return {"max_order": self.max_order, "smoothing": self.smoothing,
                "reference_key": self.reference_key, "backend": self.backend,
                "eos_id": self.eos_id, "pad_id": self.pad_id, "name": self.name}

    def __call__(self, prompt_ids, completion_ids, completion_mask, batch):
        if self.reference_key not in batch:
            raise KeyError(f"reward {self.name} needs batch[{self.reference_key!r}] "
                           f"(reference token ids); the batch has {sorted(batch)}")
        hyp = tf.cast(completion_ids, tf.int32)  # [B, N]
        hyp_mask = completion_token_mask(hyp, completion_mask, self.eos_id)  # [B, N]
        refs = tf.cast(batch[self.reference_key], tf.int32)  # [B, R] or [B, K, R]
        ref_mask = id_mask(batch, self.reference_key, self.pad_id)  # like refs
        if self.backend == "tf":
            return sentence_bleu(hyp, refs, self.max_order, self.smoothing, hyp_mask, ref_mask)
        scores = tf.numpy_function(
            lambda h, hm, r, rm: _nltk_sentence_bleu(h, hm, r, rm, self.max_order,
                                                     self.smoothing),
            [hyp, hyp_mask, refs, ref_mask], tf.float32, name="nltk_bleu")
        scores.set_shape(hyp.shape[:1])
        return scores  # [B]
