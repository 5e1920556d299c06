"""`generate`: compiled autoregressive sampling from a policy (`tfpg.models.Policy`).

One `tf.function` runs the whole decode: a prefill of the (left-padded) prompt, then a
`tf.while_loop` of single-token `call_with_cache` steps that stops as soon as every
sequence has emitted EOS. The function is traced once per (policy, static options);
batch size, prompt length and `max_new_tokens` are dynamic, so new shapes do not
retrace. Log-probs are taken from the distribution that was actually sampled (after
temperature, top-k, top-p and `suppress_ids`); `filter_logits` is that distribution
and the trainers reuse it to score completions the same way.

Speed (see benchmarks/generation.py): sampling is inverse-CDF with one uniform per row
(not one per logit), the prefill projects only the last prompt position onto the
vocabulary, the Transformer's key/value cache is updated in place, the loop runs one
iteration at a time (no early start of the next step's ops competing for the cores)
and skips the forward pass after the last token.
"""

import weakref
from typing import NamedTuple

import tensorflow as tf

from tfpg.guards import bounds
from tfpg.options import SAMPLERS  # noqa: F401 - the names `tfpg generate --sampler` offers
from tfpg.xla import resolve_jit_compile

DEFAULT_TOP_K = 50
DEFAULT_TOP_P = 0.9
# Finite rather than -inf so that masked entries never produce NaN (0 * inf) in
# entropies or KLs; exp(-1e9 - max) is exactly 0 in float32, so they are never sampled.
FILTERED_LOGIT = -1e9


class GenerationOutput(NamedTuple):
    """What `generate` returns; every field is `[B, N]`, N = `max_new_tokens`.

    token_ids: int32 sampled ids, including the EOS token; the policy's `pad_id` after
        it (0 for tfpg's models; for GPT-2, whose pad is its EOS, the EOS again).
    mask: float32, 1 for real completion tokens (up to and including EOS), else 0.
    log_probs: float32 log-prob of each sampled token under the sampled distribution
        (0 where mask is 0).
    """
    token_ids: tf.Tensor
    mask: tf.Tensor
    log_probs: tf.Tensor


def filter_logits(logits, temperature=1.0, top_k=None, top_p=None, suppress_ids=None):
    """Applies temperature, top-k, top-p and suppression to logits [..., V] (float32).

    Entries outside the support are set to `FILTERED_LOGIT`. `top_k` / `top_p` of
    None means no such filter; they may be Python numbers or scalar tensors.
    """
    logits = tf.cast(logits, tf.float32)
    if not (isinstance(temperature, (int, float)) and temperature == 1):
        logits = logits / tf.cast(temperature, tf.float32)
    if suppress_ids:
        vocab_size = tf.shape(logits)[-1]
        suppressed = tf.reduce_any(
            tf.equal(tf.range(vocab_size)[:, None], tf.constant(suppress_ids)[None, :]), -1)
        logits = tf.where(suppressed, FILTERED_LOGIT, logits)
    if top_k is not None:
        k = tf.minimum(tf.cast(top_k, tf.int32), tf.shape(logits)[-1])
        kth_largest = tf.math.top_k(logits, k).values[..., -1:]
        logits = tf.where(logits < kth_largest, FILTERED_LOGIT, logits)
    if top_p is not None:
        # Nucleus: the most likely tokens whose probabilities, summed in descending
        # order, first reach top_p (the top token is always kept).
        sorted_logits = tf.sort(logits, axis=-1, direction="DESCENDING")
        mass_before = tf.cumsum(tf.nn.softmax(sorted_logits), axis=-1, exclusive=True)
        in_nucleus = mass_before < tf.cast(top_p, tf.float32)
        cutoff = tf.reduce_min(tf.where(in_nucleus, sorted_logits, float("inf")),
                               axis=-1, keepdims=True)
        logits = tf.where(logits < cutoff, FILTERED_LOGIT, logits)
    return logits


def sampling_suppress_ids(policy, suppress_ids=None):
    """The ids sampling never draws: the policy's `structural_ids` (pad, BOS) and
    the caller's `suppress_ids`, as a sorted tuple (None when there are none)."""
    ids = set(policy.structural_ids or ()) | set(suppress_ids or ())
    return tuple(sorted(int(i) for i in ids)) or None


def _seed_tensor(seed):
    """An int32 [2] seed for stateless sampling from None, an int or a [2] tensor."""
    if seed is None:
        return tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int32)
    if isinstance(seed, int):
        return tf.constant([seed, 0], tf.int32)
    return tf.cast(seed, tf.int32)


# Ids per block of the two-level inverse-CDF search in `_sample`.
_BLOCK = 128


def _row_uniforms(seed, step, noise_rows, batch_size):
    """One uniform [0, 1) per row: rows offset..offset+B-1 of a [total_rows] draw."""
    offset, total_rows = noise_rows if noise_rows is not None else (0, batch_size)
    # Philox named explicitly, so that the stream does not depend on the device.
    # (XLA implements it differently: under jit_compile the draws differ.)
    step_seed = tf.random.experimental.stateless_fold_in(seed, step, alg="philox")
    uniform = tf.random.stateless_uniform([total_rows], step_seed, alg="philox")
    return uniform[offset:offset + batch_size]


def _first_positive(weights):
    """Index of the first entry > 0 along the last axis of weights [..., K]: int32 [...]."""
    return tf.argmax(weights > 0, axis=-1, output_type=tf.int32)


def _last_positive(weights):
    """Index of the last entry > 0 along the last axis of weights [..., K]: int32 [...]."""
    return weights.shape[-1] - 1 - _first_positive(tf.reverse(weights, [-1]))


def _sample(logits, seed, step, noise_rows):
    """Draws one id per row of logits [B, V]; returns (ids int32 [B], log-probs [B]).

    Inverse-CDF sampling with one uniform per row: the uniform of step `step` for row
    r is element offset + r of one [total_rows] draw from `seed`
    (`noise_rows = (offset, total_rows)`), so a replica holding a slice of a global
    batch draws exactly what a single device draws for the same rows. The search is
    two-level: the block of `_BLOCK` ids whose cumulative weight passes the threshold,
    then the id inside it, so only [B, V / _BLOCK] and [B, _BLOCK] cumulative sums
    are taken. Ids of weight exactly 0 (filtered: exp(-1e9) == 0) are never returned,
    rounding included. The sampling distribution is exactly softmax(logits), like the
    Gumbel-max trick, at one uniform per row instead of one per logit.
    """
    batch_size = tf.shape(logits)[0]
    vocab_size = logits.shape[-1]
    if vocab_size is None:
        raise ValueError("sampling needs a static vocabulary size")
    shifted = logits - tf.reduce_max(logits, axis=-1, keepdims=True)           # [B, V]
    weights = tf.exp(shifted)                                                  # [B, V]
    pad = -vocab_size % _BLOCK
    if pad:
        weights = tf.pad(weights, [[0, 0], [0, pad]])
    blocks = tf.reshape(weights, [batch_size, (vocab_size + pad) // _BLOCK, _BLOCK])
    block_sums = tf.reduce_sum(blocks, axis=-1)                                # [B, nb]
    block_cdf = tf.cumsum(block_sums, axis=-1)                                 # [B, nb]
    total = block_cdf[:, -1]                                                   # [B]
    threshold = _row_uniforms(seed, step, noise_rows, batch_size) * total      # [B]
    # The first block whose cumulative weight exceeds the threshold (it has weight
    # > 0); rounding can only push the count past the end, hence the clamp.
    passed = tf.reduce_sum(tf.cast(block_cdf <= threshold[:, None], tf.int32), -1)
    block = tf.minimum(passed, _last_positive(block_sums))                     # [B]
    within = tf.gather(blocks, block, batch_dims=1)                            # [B, K]
    before = tf.gather(tf.cumsum(block_sums, axis=-1, exclusive=True), block,
                       batch_dims=1)                                           # [B]
    local_cdf = tf.cumsum(within, axis=-1)                                     # [B, K]
    passed = tf.reduce_sum(tf.cast(local_cdf <= (threshold - before)[:, None], tf.int32), -1)
    # An id of weight 0 never ends the count (its cumulative sum equals its
    # predecessor's), except at the ends of the block, where rounding may land.
    index = tf.clip_by_value(passed, _first_positive(within), _last_positive(within))
    token = block * _BLOCK + index                                             # [B]
    log_prob = tf.gather(shifted, token, batch_dims=1) - tf.math.log(total)    # [B]
    return token, log_prob


def decode_loop(policy, prompt_ids, max_new_tokens, seed, temperature, top_k, top_p,
                greedy, eos_id, suppress_ids, noise_rows=None, prompt_mask=None):
    """The decode graph (call inside a `tf.function`). See `generate` for arguments.

    `noise_rows` = (offset, total_rows) places this batch inside a larger one for the
    sampling noise (see `_sample`); None means the batch stands alone.

    With `max_new_tokens` a Python int every shape is static given the prompt's, and
    the graph compiles with XLA (`tf.function(jit_compile=True)`).
    """
    batch_size = tf.shape(prompt_ids)[0]
    prompt_length = tf.shape(prompt_ids)[1]
    prompt_mask = prompt_padding_mask(policy, prompt_ids, prompt_mask)         # [B, P]
    cache = policy.initial_cache(batch_size, prompt_length + max_new_tokens)
    # The cache is this loop's own (in place); only the last prompt position's
    # logits are used.
    logits, _, cache = policy.call_with_cache(prompt_ids, cache, 0,
                                              padding_mask=prompt_mask,
                                              last_only=True, in_place=True)
    next_logits = logits[:, -1]                                                # [B, V]
    # Outputs by step: row `step` of each [N, B] buffer is written at step `step`;
    # rows of steps that never ran (every sequence ended) stay 0.
    buffers = [tf.zeros([max_new_tokens, batch_size], dtype)
               for dtype in (tf.int32, tf.float32, tf.float32)]

    def body(step, next_logits, cache, finished, ids, mask, log_probs):
        filtered = filter_logits(next_logits, temperature, top_k, top_p, suppress_ids)
        if greedy:
            token = tf.argmax(filtered, axis=-1, output_type=tf.int32)
            log_prob = (tf.gather(filtered, token, batch_dims=1)
                        - tf.reduce_logsumexp(filtered, axis=-1))
        else:
            token, log_prob = _sample(filtered, seed, step, noise_rows)
        alive = tf.logical_not(finished)
        token = tf.where(alive, token, policy.pad_id)
        alive_float = tf.cast(alive, tf.float32)
        row = tf.reshape(step, [1, 1])
        ids = tf.tensor_scatter_nd_update(ids, row, token[None])
        mask = tf.tensor_scatter_nd_update(mask, row, alive_float[None])
        log_probs = tf.tensor_scatter_nd_update(log_probs, row, (log_prob * alive_float)[None])
        if eos_id is not None:
            finished = tf.logical_or(finished, tf.equal(token, eos_id))

        def forward():
            logits, _, new_cache = policy.call_with_cache(
                token[:, None], cache, prompt_length + step,
                padding_mask=tf.ones([batch_size, 1], tf.bool), in_place=True)
            return logits[:, 0], new_cache

        # The logits after the last token are never used: skip that forward pass.
        next_logits, cache = tf.cond(step + 1 < max_new_tokens, forward,
                                     lambda: (next_logits, cache))
        return step + 1, next_logits, cache, finished, ids, mask, log_probs

    def keep_going(step, next_logits, cache, finished, *buffers):
        return tf.logical_and(step < max_new_tokens,
                              tf.logical_not(tf.reduce_all(finished)))

    finished = tf.zeros([batch_size], tf.bool)
    # One iteration at a time: a step depends on the previous one's token anyway, and
    # letting the executor start the next step's independent ops early only makes
    # them compete with this step's matmuls for the same cores.
    _, _, _, _, *buffers = tf.while_loop(
        keep_going, body, [tf.constant(0), next_logits, cache, finished, *buffers],
        parallel_iterations=1)
    return GenerationOutput(*(tf.transpose(buffer) for buffer in buffers))   # [B, N]


_COMPILED = weakref.WeakKeyDictionary()


def prompt_padding_mask(policy, prompt_ids, prompt_mask=None):
    """bool [B, P]: `prompt_mask` (1 = real token) or, without one, the ids that are
    not the policy's pad id (0 for tfpg's own models: in KerasHub vocabularies the
    pad id may also be a real token, so pass the mask there)."""
    if prompt_mask is None:
        return tf.not_equal(prompt_ids, policy.pad_id)
    return tf.cast(prompt_mask, tf.bool)


def resolve_eos_id(policy, eos_id):
    """"auto" -> the policy's `eos_id`; an int or None (never stop) passes through."""
    if isinstance(eos_id, str):
        if eos_id != "auto":
            raise ValueError(f"eos_id must be an int, None or 'auto', got {eos_id!r}")
        return policy.eos_id
    return eos_id


def _compiled_decode(policy, greedy, use_top_k, use_top_p, eos_id, suppress_ids,
                     jit_compile=False):
    per_policy = _COMPILED.setdefault(policy, {})
    key = (greedy, use_top_k, use_top_p, eos_id, suppress_ids, jit_compile)
    if key not in per_policy:
        # Under XLA, max_new_tokens sizes the output buffers: XLA compiles once per
        # value (and per batch / prompt shape), the tf.function still traces once.
        @tf.function(jit_compile=jit_compile, input_signature=[
            tf.TensorSpec([None, None], tf.int32, name="prompt_ids"),
            tf.TensorSpec([], tf.int32, name="max_new_tokens"),
            tf.TensorSpec([2], tf.int32, name="seed"),
            tf.TensorSpec([], tf.float32, name="temperature"),
            tf.TensorSpec([], tf.int32, name="top_k"),
            tf.TensorSpec([], tf.float32, name="top_p"),
            tf.TensorSpec([None, None], tf.bool, name="prompt_mask"),
        ])
        def compiled(prompt_ids, max_new_tokens, seed, temperature, top_k, top_p,
                     prompt_mask):
            return decode_loop(policy, prompt_ids, max_new_tokens, seed, temperature,
                               top_k if use_top_k else None, top_p if use_top_p else None,
                               greedy, eos_id, suppress_ids, prompt_mask=prompt_mask)
        per_policy[key] = compiled
    return per_policy[key]


def resolve_sampler(sampler, temperature, top_k, top_p):
    """Validates sampler options; returns (greedy, top_k or None, top_p or None).

    `temperature` must be > 0 and finite (NaN or inf would sample uniform noise),
    `top_k` an integer >= 1, `top_p` in (0, 1]; tensors are not checked here.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}; got {sampler!r}")
    if not isinstance(temperature, tf.Tensor):
        try:
            bounds.check_positive("temperature", temperature)
        except ValueError as error:
            raise ValueError(f"{error} (use sampler='greedy' for argmax decoding)") from None
    if sampler == "top_k" and top_k is None:
        top_k = DEFAULT_TOP_K
    if sampler == "top_p" and top_p is None:
        top_p = DEFAULT_TOP_P
    if top_k is not None and not isinstance(top_k, tf.Tensor):
        top_k = bounds.check_count("top_k", top_k)
    if top_p is not None and not isinstance(top_p, tf.Tensor):
        bounds.check_top_p("top_p", top_p)
    return sampler == "greedy", top_k, top_p


_CACHE_BYTES = weakref.WeakKeyDictionary()


def cache_bytes_per_token(policy):
    """Bytes the decoding cache of `policy` holds per sequence and position (the KV
    cache of a transformer; 0 for a recurrent state, whose size does not grow):
    measured from two tiny `initial_cache`s, so it holds for any policy. 0 when
    the policy is not built yet or the sizes are not static."""
    try:
        return _CACHE_BYTES[policy]
    except (KeyError, TypeError):
        pass
    if not policy.built:
        return 0                        # measured once built (not here: no side effects)
    with tf.init_scope():               # eager, also when called while tracing
        one, two = (_nbytes(policy.initial_cache(1, length)) for length in (1, 2))
    size = max(0, two - one) if one is not None and two is not None else 0
    try:
        _CACHE_BYTES[policy] = size
    except TypeError:
        pass                            # not weak-referenceable: measured every time
    return size


def _nbytes(structure):
    total = 0
    for tensor in tf.nest.flatten(structure):
        elements = tensor.shape.num_elements()
        if elements is None:
            return None
        total += elements * tensor.dtype.size
    return total


def check_decode_size(policy, batch_size, prompt_length, max_new_tokens,
                      name="max_new_tokens", minimum=1):
    """Refuses (ValueError, one line) a decode that cannot fit, before anything is
    allocated: `max_new_tokens` not an integer in [minimum, 2^31 - 1]; prompt + completion
    past the position table of a positional policy (tfpg's Transformer, KerasHub
    GPT-2: `max_length`); buffers and cache above `tfpg.guards.bounds.decode_memory_limit()`.
    `batch_size` / `prompt_length` may be None (unknown): then 1 and 0 bound them
    from below. Returns `max_new_tokens` as an int."""
    max_new_tokens = bounds.check_count(name, max_new_tokens, minimum)
    batch_size = 1 if batch_size is None else int(batch_size)
    prompt_length = 0 if prompt_length is None else int(prompt_length)
    max_length = policy.max_length
    if policy.is_positional and max_length is not None \
            and max(prompt_length, 1) + max_new_tokens > max_length:
        raise ValueError(f"prompt length {max(prompt_length, 1)} + {name} {max_new_tokens} "
                         f"exceeds the model's max_length {max_length} (its position "
                         "table)")
    bounds.check_decode_memory(batch_size, prompt_length, max_new_tokens,
                               cache_bytes_per_token(policy),
                               policy.vocab_size or 0, name)
    return max_new_tokens


def generate(policy, prompt_ids, max_new_tokens=32, sampler="sample", temperature=1.0,
             top_k=None, top_p=None, eos_id="auto", seed=None, suppress_ids=None,
             jit_compile="auto", prompt_mask=None):
    """Samples completions of left-padded prompts.

    Args:
        policy: `tfpg.models.Policy`. A `PolicyNetwork` or `KerasHubPolicy`; anything
            else is refused (TypeError, one line: `tfpg.models.check_policy`).
        prompt_ids: int tensor [B, P]. The prompts, left-padded.
        max_new_tokens: int or scalar tensor. The completion length N; 0 gives empty
            outputs. An int is bounded before anything is allocated
            (`check_decode_size`): >= 0, inside a positional policy's `max_length`
            with the prompt, and a decode that fits `tfpg.guards.bounds.decode_memory_limit()`.
        sampler: str. "greedy" (argmax), "sample" (full softmax), "top_k" or "top_p".
            `top_k` / `top_p` apply whenever given; the samplers of those names only
            supply defaults (50 and 0.9).
        temperature: float. The softmax temperature (> 0 and finite).
        top_k: int or None. Sample among the `top_k` most likely tokens.
        top_p: float or None. Sample among the most likely tokens whose probabilities
            sum to `top_p` (nucleus sampling).
        eos_id: int, None or "auto". A sequence stops after this token; None never
            stops early; "auto" (the default) takes the policy's `eos_id`.
        seed: int, int [2] tensor or None. For reproducible sampling; None draws a
            fresh one.
        suppress_ids: list of int or None. Ids that are never sampled, besides the
            policy's `structural_ids` (pad and BOS), which never are.
        jit_compile: bool or "auto". Compile the decode loop with XLA; "auto" picks
            the faster choice for the device type (off on CPU, on with a GPU / TPU: see
            `tfpg.xla`). XLA draws other random numbers than the plain graph for the
            same seed.
        prompt_mask: int or bool tensor [B, P], or None. 1 for real prompt tokens;
            None takes every id but the policy's `pad_id` (0 for tfpg's models) as real.

    Returns:
        `GenerationOutput(token_ids, mask, log_probs)`, each [B, N].

    Example:
    >>> policy = tfpg.PolicyNetwork(vocab_size=20, embedding_dim=16, hidden_dim=32)
    >>> out = tfpg.generate(policy, tf.constant([[0, 1, 5], [1, 6, 7]]), max_new_tokens=4,
    ...                     sampler="top_k", top_k=5, seed=0)
    >>> out.token_ids.shape
    TensorShape([2, 4])
    """
    from tfpg.models.policy import check_policy  # tfpg.models imports this module
    check_policy(policy)
    greedy, top_k, top_p = resolve_sampler(sampler, temperature, top_k, top_p)
    suppress_ids = sampling_suppress_ids(policy, suppress_ids)
    prompt_ids = tf.convert_to_tensor(prompt_ids)
    if prompt_ids.shape.rank != 2:
        raise ValueError(f"prompt_ids must be [batch, length], got shape {prompt_ids.shape}")
    if prompt_ids.shape[1] == 0:
        raise ValueError(f"prompt_ids has no tokens (shape {prompt_ids.shape.as_list()}); "
                         "a prompt needs at least its BOS")
    if not isinstance(max_new_tokens, (tf.Tensor, tf.Variable)):
        # 0 is allowed: an empty completion, as documented above.
        max_new_tokens = check_decode_size(policy, prompt_ids.shape[0], prompt_ids.shape[1],
                                           max_new_tokens, minimum=0)
    eos_id = resolve_eos_id(policy, eos_id)
    prompt_ids = tf.cast(prompt_ids, tf.int32)
    prompt_mask = prompt_padding_mask(policy, prompt_ids, prompt_mask)
    compiled = _compiled_decode(policy, greedy, top_k is not None, top_p is not None,
                                eos_id, suppress_ids, resolve_jit_compile(jit_compile, policy))
    output = compiled(tf.cast(prompt_ids, tf.int32), tf.cast(max_new_tokens, tf.int32),
                      _seed_tensor(seed), tf.cast(temperature, tf.float32),
                      tf.cast(top_k if top_k is not None else 0, tf.int32),
                      tf.cast(top_p if top_p is not None else 1.0, tf.float32), prompt_mask)
    if isinstance(max_new_tokens, int):
        shape = [prompt_ids.shape[0], max_new_tokens]
        output = GenerationOutput(*(tf.ensure_shape(t, shape) for t in output))
    return output
