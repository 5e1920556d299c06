"""Per-token log-probs, entropies and sampling supports of completions, computed from
hidden states by a language-model head in chunks of positions.

A train step needs, for every completion token, a handful of numbers (the sampled
token's log-prob, the entropy, the temperature log-prob a KL uses), each a reduction
over the vocabulary. Projecting all positions at once builds float32 `[B, N, V]`
tensors, and automatic differentiation keeps several of them for the backward pass:
at V = 151,936 and N = 256 that is 5 GB each. Here the head runs over `chunk_size`
positions at a time (`[chunk, V]` logits live only inside one loop iteration), and the
backward pass recomputes each chunk's logits instead of keeping them (TRL's
`chunked_logprob`, Liger's fused linear cross-entropy do the same), with the softmax
gradient written out by hand:

    d log p(a) / d f  = onehot(a) - p                                  (sampled token)
    d H / d f         = -p * (log p + H)                               (entropy)

where `f` are the filtered logits of the sampled distribution (temperature, then
suppression / top-k / top-p as `FILTERED_LOGIT`: entries outside the support get no
gradient, as `tf.where` gives them none). Nothing of size V is kept from the forward
pass but the rollout's top-p support, packed to bits (V / 8 bytes a position).

Conventions: `R` positions (completion tokens of all rows, flattened), `H` hidden
size, `V` vocabulary, `C` chunks of `r` positions.
"""

from typing import NamedTuple, Optional

import tensorflow as tf

from tfpg.generation import FILTERED_LOGIT, filter_logits
from tfpg.models.chunked_attention import split_rows

# Default chunk: about 2^24 logits (64 MB in float32) per chunk, whatever V is.
CHUNK_LOGITS = 2 ** 24
# Bit weights of a packed mask (a list: a tensor made at import would start TensorFlow's
# runtime before a MultiWorkerMirroredStrategy could configure it).
_BITS = [1, 2, 4, 8, 16, 32, 64, 128]


class SamplingFilter(NamedTuple):
    """The distribution tokens were sampled from: softmax of the logits divided by
    `temperature`, restricted by `top_k`, `top_p` and `suppress_ids` (None: no such
    filter). `top_k` / `top_p` must be Python values here (they shape the support)."""
    temperature: float = 1.0
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    suppress_ids: Optional[tuple] = None

    @property
    def keeps_support(self):
        """Whether the support depends on the logits (top-k / top-p), so that a
        rollout must keep it for later epochs."""
        return self.top_k is not None or self.top_p is not None


class TokenScores(NamedTuple):
    """What `score_tokens` gives, each `[B, N]` float32 (None where not asked for).

    log_probs: log-prob of each token under the sampled distribution (filters on).
    entropy: entropy of the sampled distribution at each position.
    temperature_log_probs: log-prob under softmax(logits / temperature), no filters
        (what a KL between two models compares: a filter on the reference would make
        the KL infinite for the tokens it excludes).
    support: the sampling support as a rollout keeps it: top-k ids int32 [B, N, k]
        (-1: none), or a packed top-p mask uint8 [B, N, ceil(V / 8)].
    """
    log_probs: tf.Tensor
    entropy: Optional[tf.Tensor] = None
    temperature_log_probs: Optional[tf.Tensor] = None
    support: Optional[tf.Tensor] = None


def default_chunk_size(vocab_size):
    """Positions per chunk: about `CHUNK_LOGITS` logits per chunk."""
    return max(1, CHUNK_LOGITS // int(vocab_size))


# ------------------------------------------------------------------ supports


def pack_mask(mask):
    """bool [..., V] -> uint8 [..., ceil(V / 8)], bit i of byte j = entry 8 j + i."""
    vocab_size = mask.shape[-1]
    pad = -vocab_size % 8
    bits = tf.cast(mask, tf.uint8)
    if pad:
        bits = tf.pad(bits, [[0, 0]] * (len(mask.shape) - 1) + [[0, pad]])
    shape = tf.concat([tf.shape(bits)[:-1], [(vocab_size + pad) // 8, 8]], 0)
    return tf.reduce_sum(tf.reshape(bits, shape) * tf.constant(_BITS, tf.uint8), axis=-1)


def unpack_mask(packed, vocab_size):
    """uint8 [..., ceil(V / 8)] from `pack_mask` -> bool [..., V]."""
    bits = tf.bitwise.bitwise_and(packed[..., None], tf.constant(_BITS, tf.uint8))
    bits = bits > 0                                                         # [..., V8, 8]
    shape = tf.concat([tf.shape(packed)[:-1], [packed.shape[-1] * 8]], 0)
    return tf.reshape(bits, shape)[..., :vocab_size]


def support_mask(support, vocab_size):
    """bool [..., V] from a kept support: top-k ids int32 [..., k] (-1 = none) or a
    packed mask uint8 [..., ceil(V / 8)]."""
    if support.dtype == tf.uint8:
        return unpack_mask(support, vocab_size)
    ids = tf.reshape(support, [-1, tf.shape(support)[-1]])                  # [M, k]
    rows = tf.broadcast_to(tf.range(tf.shape(ids)[0])[:, None], tf.shape(ids))
    index = tf.stack([rows, tf.maximum(ids, 0)], axis=-1)                    # [M, k, 2]
    # Max, not update: the -1 entries all land on id 0 with a 0 and must not erase a 1.
    hits = tf.tensor_scatter_nd_max(tf.zeros([tf.shape(ids)[0], vocab_size], tf.int32),
                                    index, tf.cast(ids >= 0, tf.int32))
    shape = tf.concat([tf.shape(support)[:-1], [vocab_size]], 0)
    return tf.reshape(hits > 0, shape)


def kept_support(filtered, top_k, top_p):
    """The support of filtered logits [r, V] as a rollout keeps it: with top-k alone
    the ids of the kept tokens, int32 [r, k] (-1: none); with top-p a packed mask."""
    if top_p is None and isinstance(top_k, int):
        values, ids = tf.math.top_k(filtered, min(top_k, filtered.shape[-1]))
        return tf.where(values > FILTERED_LOGIT, ids, -1)
    return pack_mask(filtered > FILTERED_LOGIT)


# ------------------------------------------------------------------- chunks


def _filtered(logits, sampling, support):
    """(temperature-scaled logits, filtered logits, kept bool or None) of logits [r, V]:
    the sampled distribution, on the kept `support` [r, ...] where there is one."""
    scaled = logits
    if not (isinstance(sampling.temperature, (int, float)) and sampling.temperature == 1):
        scaled = logits / tf.cast(sampling.temperature, tf.float32)
    if support is not None:
        keep = support_mask(support, logits.shape[-1])
        return scaled, tf.where(keep, scaled, FILTERED_LOGIT)
    return scaled, filter_logits(scaled, 1.0, sampling.top_k, sampling.top_p,
                                 sampling.suppress_ids)


def _chunk_scores(logits, tokens, sampling, support, options):
    """The per-position outputs of one chunk: logits [r, V], tokens [r]."""
    scaled, filtered = _filtered(logits, sampling, support)
    out = {}
    if options["keep_support"]:
        out["support"] = kept_support(filtered, sampling.top_k, sampling.top_p)
        if out["support"].dtype != tf.uint8:
            # Scored on the kept ids, as every later epoch scores them (top-k keeps
            # every tie of the k-th logit, the ids exactly k): the first ratio is 1.
            filtered = tf.where(support_mask(out["support"], logits.shape[-1]), scaled,
                                FILTERED_LOGIT)
    log_p = tf.nn.log_softmax(filtered)                                     # [r, V]
    out["log_probs"] = tf.gather(log_p, tokens, batch_dims=1)               # [r]
    if options["entropy"]:
        # Entries outside the support have p == 0 and a finite log p: they add 0.
        out["entropy"] = -tf.reduce_sum(tf.exp(log_p) * log_p, -1)
    if options["temperature_log_probs"]:
        # As `log_probs` computes them (a reference's are its unfiltered log_probs):
        # two identical models then give a KL of exactly 0.
        out["temperature_log_probs"] = tf.gather(tf.nn.log_softmax(scaled), tokens,
                                                 batch_dims=1)
    return out


def _chunk_logit_gradient(logits, tokens, sampling, support, upstream, options):
    """d loss / d logits [r, V] of one chunk, from d loss / d outputs `upstream` [r]."""
    scaled, filtered = _filtered(logits, sampling, support)
    log_p = tf.nn.log_softmax(filtered)
    p = tf.exp(log_p)                                                       # [r, V]
    # d log p(a) / d f = onehot(a) - p; d H / d f = -p (log p + H). Entries outside
    # the support have p == 0: only the one-hot part needs their mask.
    weight = upstream["log_probs"][:, None]
    if options["entropy_gradient"]:
        entropy = -tf.reduce_sum(p * log_p, -1, keepdims=True)
        weight = weight + upstream["entropy"][:, None] * (log_p + entropy)
    d_scaled = -p * weight
    token_in_support = tf.gather(filtered, tokens, batch_dims=1) > FILTERED_LOGIT
    at_token = upstream["log_probs"] * tf.cast(token_in_support, tf.float32)   # [r]
    if options["temperature_log_probs"]:
        d_scaled -= upstream["temperature_log_probs"][:, None] * tf.nn.softmax(scaled)
        at_token += upstream["temperature_log_probs"]
    index = tf.stack([tf.range(tf.shape(tokens)[0]), tokens], axis=1)       # [r, 2]
    d_scaled = tf.tensor_scatter_nd_add(d_scaled, index, at_token)
    if not (isinstance(sampling.temperature, (int, float)) and sampling.temperature == 1):
        d_scaled /= tf.cast(sampling.temperature, tf.float32)
    return d_scaled


def _merge(tensor, rows):
    """[C, r, ...] -> the first `rows` of [C * r, ...]."""
    shape = tf.shape(tensor)
    return tf.reshape(tensor, tf.concat([[shape[0] * shape[1]], shape[2:]], 0))[:rows]


def score_tokens(head, hidden, token_ids, sampling=SamplingFilter(), support=None,
                 entropy=False, temperature_log_probs=False, keep_support=False,
                 entropy_gradient=False, chunk_size=None, vocab_size=None):
    """Scores tokens under a language-model head, `chunk_size` positions at a time.

    Args:
        head: `head(hidden [r, H]) -> float32 logits [r, V]` (reads its own weights;
            their gradients are computed too).
        hidden: [B, N, H] hidden states; position t predicts `token_ids[:, t]`.
        token_ids: int [B, N].
        sampling: the `SamplingFilter` the tokens were drawn with.
        support: a kept support [B, N, ...] (see `TokenScores`) that replaces the
            filters (later epochs score old tokens on the support they had).
        entropy, temperature_log_probs, keep_support: also compute these.
        entropy_gradient: differentiate the entropy (an entropy bonus in the loss);
            otherwise its gradient is taken as 0, so stop it yourself.
        chunk_size: positions per chunk; None: `default_chunk_size(V)`.
        vocab_size: V, for the default chunk size (else read off one logit row).

    Returns:
        `TokenScores` of [B, N] tensors; differentiable w.r.t. `hidden` and the
        head's weights (log-probs, temperature log-probs, the entropy if asked).
    """
    options = dict(entropy=entropy or entropy_gradient, entropy_gradient=entropy_gradient,
                   temperature_log_probs=temperature_log_probs,
                   keep_support=keep_support and sampling.keeps_support)
    if vocab_size is None:
        vocab_size = head(tf.zeros([1, hidden.shape[-1]], hidden.dtype)).shape[-1]
    chunk_size = int(chunk_size or default_chunk_size(vocab_size))
    batch_size, length = tf.shape(token_ids)[0], tf.shape(token_ids)[1]
    rows = batch_size * length                                              # R
    chunks = tf.maximum(-(-rows // chunk_size), 1)                          # C
    chunk = tf.maximum(-(-rows // chunks), 1)                               # r
    flat_hidden = tf.reshape(hidden, [-1, hidden.shape[-1]])                # [R, H]
    tokens = split_rows(tf.reshape(tf.cast(token_ids, tf.int32), [-1]), chunks, chunk)
    supports = None
    if support is not None:
        supports = split_rows(
            tf.reshape(support, tf.concat([[-1], tf.shape(support)[2:]], 0)), chunks, chunk)

    def chunk_support(i):
        return None if supports is None else supports[i]

    @tf.custom_gradient
    def scores(flat_hidden):
        split_hidden = split_rows(flat_hidden, chunks, chunk)                   # [C, r, H]

        def forward(i):
            return _chunk_scores(head(split_hidden[i]), tokens[i], sampling,
                                 chunk_support(i), options)

        outputs = _map_chunks(forward, chunks)
        outputs = {key: _merge(value, rows) for key, value in outputs.items()}
        # Only float outputs are differentiable; the support rides outside.
        support_out = outputs.pop("support", None)
        names = sorted(outputs)

        def gradient(*upstreams, variables=None):
            upstream = {name: split_rows(g, chunks, chunk)
                        for name, g in zip(names, upstreams)}
            variables = list(variables or [])

            def body(i, variable_grads, hidden_grads):
                with tf.GradientTape() as tape:
                    tape.watch(variables)
                    h = split_hidden[i]
                    tape.watch(h)
                    logits = head(h)
                d_logits = _chunk_logit_gradient(
                    tf.stop_gradient(logits), tokens[i], sampling, chunk_support(i),
                    {name: g[i] for name, g in upstream.items()}, options)
                grads = tape.gradient(logits, [h] + variables, output_gradients=d_logits)
                variable_grads = [total if g is None else total + tf.convert_to_tensor(g)
                                  for total, g in zip(variable_grads, grads[1:])]
                return i + 1, variable_grads, hidden_grads.write(i, grads[0])

            _, variable_grads, hidden_grads = tf.while_loop(
                lambda i, *_: i < chunks, body,
                [tf.constant(0), [tf.zeros_like(v) for v in variables],
                 tf.TensorArray(flat_hidden.dtype, size=chunks, element_shape=None)],
                parallel_iterations=1)
            d_hidden = _merge(hidden_grads.stack(), rows)
            return (d_hidden, variable_grads) if variables else d_hidden

        return tuple(outputs[name] for name in names) + (
            () if support_out is None else (tf.stop_gradient(support_out),)), gradient

    values = scores(flat_hidden)
    names = sorted(name for name in ("log_probs", "entropy", "temperature_log_probs")
                   if name == "log_probs" or options[name])
    by_name = dict(zip(names, values))
    shape = tf.stack([batch_size, length])
    result = {name: tf.reshape(value, shape) for name, value in by_name.items()}
    if options["keep_support"]:
        kept = values[len(names)]
        result["support"] = tf.reshape(kept, tf.concat([shape, tf.shape(kept)[1:]], 0))
    return TokenScores(**result)


def _map_chunks(fn, chunks):
    """Stacks fn(i) (a dict of [r, ...]) over i < chunks: a dict of [C, r, ...]; one
    chunk at a time, so one chunk's [r, V] tensors are alive at once."""
    first = fn(tf.constant(0))
    arrays = {key: tf.TensorArray(value.dtype, size=chunks, element_shape=value.shape)
              .write(0, value) for key, value in first.items()}

    def body(i, arrays):
        return i + 1, {key: arrays[key].write(i, value) for key, value in fn(i).items()}

    _, arrays = tf.while_loop(lambda i, _: i < chunks, body, [tf.constant(1), arrays],
                              parallel_iterations=1)
    return {key: array.stack() for key, array in arrays.items()}
