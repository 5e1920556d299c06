"""`Perplexity`: how likely a reference language model finds the completion."""

import keras
import tensorflow as tf

from tfpg.rewards.base import Reward

MODES = ("mean_log_prob", "neg_perplexity")


@keras.saving.register_keras_serializable(package="tfpg")
class Perplexity(Reward):
    """Length-normalised log-likelihood of the completion under a reference LM.

    The reference model maps ids [B, T] -> logits [B, T, V] (a `PolicyNetwork`,
    e.g. a frozen copy of the pre-trained policy). It reads the prompt followed
    by the completion, exactly as the policy saw them (left-padded prompt), and
    each completion token j is scored with the logits at the position before it.
    Tokens with mask 0 (after EOS) are ignored; EOS itself counts.

    The sign is "higher is better" in both modes:

    * "mean_log_prob" (default): mean token log-probability, in (-inf, 0];
    * "neg_perplexity": `-exp(-mean_log_prob)`, in (-inf, -1].

    An empty completion (mask all 0) has mean log-prob 0 (perplexity 1).

    Args:
        reference_model: callable or `keras.Model`. Ids int32 [B, T] -> logits [B, T,
            V]; Keras layers and models are called with `training=False`.
        mode: "mean_log_prob" or "neg_perplexity".
        name: str or None. Defaults to "Perplexity".

    Example:
    >>> uniform = lambda ids: tf.zeros(tf.concat([tf.shape(ids), [4]], 0))  # 4-way uniform
    >>> Perplexity(uniform, mode="neg_perplexity")(
    ...     tf.constant([[1, 3]]), tf.constant([[3, 2]]), tf.ones([1, 2]), {}).numpy()
    array([-4.], dtype=float32)
    """

    def __init__(self, reference_model, mode="mean_log_prob", name=None):
        super().__init__(name=name)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if not callable(reference_model):
            raise TypeError("reference_model must map ids [B, T] to logits [B, T, V]")
        self.reference_model = reference_model
        self.mode = mode

    def get_config(self):
        return {"reference_model": self.reference_model, "mode": self.mode, "name": self.name}

    def __call__(self, prompt_ids, completion_ids, completion_mask, batch):
        prompt_ids = tf.cast(prompt_ids, tf.int32)  # [B, P]
        mask = tf.cast(completion_mask, tf.float32)  # [B, N]
        targets = tf.where(mask > 0, tf.cast(completion_ids, tf.int32), 0)  # [B, N]
        ids = tf.concat([prompt_ids, targets], axis=1)  # [B, P + N]
        if isinstance(self.reference_model, keras.Layer):
            logits = self.reference_model(ids, training=False)  # no dropout
        else:
            logits = self.reference_model(ids)
        p = tf.shape(prompt_ids)[1]
        n = tf.shape(targets)[1]
        # Logits at position t predict token t + 1; log_softmax in float32 always.
        logits = tf.cast(logits[:, p - 1:p - 1 + n], tf.float32)  # [B, N, V]
        log_probs = -tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=targets, logits=logits)  # [B, N]
        count = tf.reduce_sum(mask, axis=1)
        mean = tf.reduce_sum(log_probs * mask, axis=1) / tf.maximum(count, 1.0)  # [B]
        if self.mode == "mean_log_prob":
            return mean
        return -tf.exp(-mean)
