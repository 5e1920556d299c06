"""Dot-product attention over chunks of queries, recomputed in the backward pass.

A full-sequence pass (the trainers' scoring and update passes) of plain attention
builds `[B, heads, T, T]` float32 logits and probabilities, and automatic
differentiation keeps them for the backward pass: at B = 32, T = 2,080 that is 1.1 GB
a tensor, several per layer. Here the queries run `chunk` at a time (`[B, heads, r,
S]` tensors live only inside one loop iteration), and the backward pass recomputes a
chunk's probabilities from its queries and the keys instead of keeping them, with the
softmax gradient written out (the memory-saving half of FlashAttention; every chunk
still sees all S keys, so no running softmax is needed):

    dV += P^T dO;   dP = dO V^T;   dS = P * (dP - rowsum(dP * P));
    dQ = dS K * scale;   dK += dS^T Q * scale

Numerically the same as Keras' `ops.dot_product_attention` on TensorFlow (masked
logits set to the same large negative value, softmax in float32).
"""

import tensorflow as tf

# About 2^24 attention logits (64 MB in float32) per chunk of queries.
CHUNK_LOGITS = 2 ** 24


def split_rows(tensor, chunks, chunk):
    """[R, ...] -> [C, r, ...], padded with zeros to C * r rows."""
    pad = chunks * chunk - tf.shape(tensor)[0]
    tensor = tf.pad(tensor, [[0, pad]] + [[0, 0]] * (len(tensor.shape) - 1))
    return tf.reshape(tensor, tf.concat([[chunks, chunk], tf.shape(tensor)[1:]], 0))


def _large_negative(dtype):
    # Keras' value for masked logits (its TensorFlow backend's).
    return tf.constant(tf.as_dtype(dtype).max * -0.7, dtype)


def chunked_dot_product_attention(query, key, value, mask, scale, chunk_logits=None):
    """softmax(Q K^T * scale, masked) V, `chunk` queries at a time.

    Args:
        query: [B, T, N, D]; key, value: [B, S, N, D] (as many heads as the query).
        mask: bool [B, 1 or N, T, S] (True: attend), or None.
        scale: the logits' scale (a Python float or scalar).
        chunk_logits: logits per chunk (default `CHUNK_LOGITS`).

    Returns:
        [B, T, N, D] in the query's dtype; differentiable w.r.t. query, key, value.
    """
    batch, length, heads = tf.shape(query)[0], tf.shape(query)[1], tf.shape(query)[2]
    keys = tf.shape(key)[1]
    per_query = batch * heads * keys
    chunks = tf.maximum(-(-(per_query * length) // (chunk_logits or CHUNK_LOGITS)), 1)
    chunks = tf.minimum(chunks, tf.maximum(length, 1))
    chunk = tf.maximum(-(-length // chunks), 1)
    queries = split_rows(tf.transpose(query, [1, 0, 2, 3]), chunks, chunk)  # [C,r,B,N,D]
    masks = None
    if mask is not None:
        mask = tf.broadcast_to(mask, tf.stack([batch, tf.shape(mask)[1], length, keys]))
        masks = split_rows(tf.transpose(mask, [2, 0, 1, 3]), chunks, chunk)  # [C,r,B,n,S]

    def probabilities(queries, i, key):
        logits = tf.einsum("RBNH,BSNH->BNRS", queries[i], key)
        logits = tf.cast(logits, tf.float32) * tf.cast(scale, tf.float32)   # [B, N, r, S]
        if masks is not None:
            logits = tf.where(tf.transpose(masks[i], [1, 2, 0, 3]), logits,
                              _large_negative(tf.float32))
        return tf.nn.softmax(logits, axis=-1)

    @tf.custom_gradient
    def attend(queries, key, value):
        def forward(i):
            p = tf.cast(probabilities(queries, i, key), value.dtype)
            return tf.einsum("BNRS,BSNH->RBNH", p, value)                   # [r, B, N, D]

        outputs = tf.map_fn(forward, tf.range(chunks), fn_output_signature=value.dtype,
                            parallel_iterations=1)                          # [C, r, B, N, D]

        def gradient(d_outputs):
            def body(i, d_queries, d_key, d_value):
                p = probabilities(queries, i, key)                          # float32
                d_out = d_outputs[i]                                        # [r, B, N, D]
                d_value += tf.einsum("BNRS,RBNH->BSNH", tf.cast(p, value.dtype), d_out)
                d_p = tf.cast(tf.einsum("RBNH,BSNH->BNRS", d_out, value), tf.float32)
                d_logits = p * (d_p - tf.reduce_sum(d_p * p, -1, keepdims=True))
                if masks is not None:     # masked logits are constants: no gradient
                    d_logits = tf.where(tf.transpose(masks[i], [1, 2, 0, 3]), d_logits, 0.0)
                d_logits = tf.cast(d_logits * tf.cast(scale, tf.float32), key.dtype)
                d_queries = d_queries.write(i, tf.einsum("BNRS,BSNH->RBNH", d_logits, key))
                d_key += tf.einsum("BNRS,RBNH->BSNH", d_logits, queries[i])
                return i + 1, d_queries, d_key, d_value

            _, d_queries, d_key, d_value = tf.while_loop(
                lambda i, *_: i < chunks, body,
                [tf.constant(0), tf.TensorArray(queries.dtype, size=chunks),
                 tf.zeros_like(key), tf.zeros_like(value)], parallel_iterations=1)
            return d_queries.stack(), d_key, d_value

        return outputs, gradient

    outputs = attend(queries, key, value)                                   # [C, r, B, N, D]
    outputs = tf.reshape(outputs, tf.concat([[-1], tf.shape(outputs)[2:]], 0))[:length]
    return tf.transpose(outputs, [1, 0, 2, 3])                              # [B, T, N, D]
