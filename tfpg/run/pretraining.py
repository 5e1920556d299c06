"""Maximum-likelihood pre-training of a policy with Keras `fit`.

`LanguageModelTrainer` (the trainer), `pretraining_dataset` (its windows), `pretrain`
(both as one call), and `EpochProgress` (console lines for a `fit` of many short
epochs). `copy_policy` (`tfpg.models`) stays importable from here.
"""

import math
import sys
import time

import keras
import tensorflow as tf

from tfpg import data as tfpg_data
from tfpg.distribution import DistributedFitMixin, apply_gradients, cross_replica_sum, scale_loss
from tfpg.models import PolicyNetwork, copy_policy  # noqa: F401 - tfpg <= 0.1 imported it here
from tfpg.run.config import POLICY_MAX_LENGTH


class LanguageModelTrainer(DistributedFitMixin, keras.Model):
    """Maximum-likelihood pre-training of a `PolicyNetwork` with `fit`.

    The same loss as `policy.compile(loss=SparseCategoricalCrossentropy(
    from_logits=True, ignore_class=0))` (mean over real target tokens), computed
    so that it also runs under `MultiWorkerMirroredStrategy` (see
    `DistributedFitMixin`): the token count is all-reduced, so the gradient is that
    of the global batch on any number of replicas, and under mixed_float16 the loss
    is scaled for the `LossScaleOptimizer`. Logs "loss".

    Gradients are applied dense, as in the policy-gradient trainers: Keras' own
    `train_step` hands Adam the embedding gradient as `IndexedSlices`, a lazy update
    (only the rows seen decay, repeated ids count twice in the second moment) that
    gives other numbers and cannot be the same on one device and on several.
    """

    def __init__(self, policy, **kwargs):
        super().__init__(**kwargs)
        self.policy = policy
        if not policy.built:
            policy.build()
        self._loss_tracker = keras.metrics.Mean(name="loss")
        self.built = True

    @property
    def metrics(self):
        return [self._loss_tracker]

    def compile(self, optimizer="adam", **kwargs):
        super().compile(optimizer=optimizer, **kwargs)
        self.optimizer.build(self.trainable_variables)

    def train_step(self, data):
        # (inputs, targets) padded with id 0, or (inputs, targets, mask) where id 0 is
        # a real token (KerasHub vocabularies): [B, L] each.
        inputs, targets, *mask = data
        options = {}
        if mask:
            mask = tf.cast(mask[0], tf.float32)                       # [B, L]
            options["padding_mask"] = mask > 0
        else:
            mask = tf.cast(tf.not_equal(targets, 0), tf.float32)      # [B, L]
        count = cross_replica_sum(tf.reduce_sum(mask))
        with tf.GradientTape() as tape:
            logits = self.policy(inputs, training=True, **options)    # [B, L, V] float32
            per_token = keras.losses.sparse_categorical_crossentropy(
                targets, tf.cast(logits, tf.float32), from_logits=True)
            loss = tf.math.divide_no_nan(tf.reduce_sum(per_token * mask), count)
            scaled = scale_loss(self.optimizer, loss)
        gradients = tape.gradient(scaled, self.trainable_variables)
        apply_gradients(self.optimizer, gradients, self.trainable_variables)
        self._loss_tracker.update_state(cross_replica_sum(loss))
        return self.finalize_logs({"loss": self._loss_tracker.result()})


def pretraining_dataset(texts, tokenizer, batch_size, seed, max_sequence_length=128,
                        shuffle=True):
    """`language_model_dataset` windows as long as the longest text (at most
    `max_sequence_length` pairs): padding to a fixed length would waste most of the
    compute on short texts. `shuffle=False` keeps the texts' order (`tfpg train`
    orders each epoch itself, see `tfpg.run.checkpoints.epoch_batches`).

    For a tokenizer whose id 0 is a real token (a KerasHub one: its `pad_id` is not
    0), batches are (inputs, targets, mask), inputs padded with `pad_id`."""
    longest = max((len(ids) for ids in tokenizer.encode(list(texts))), default=1)
    pad_id = getattr(tokenizer, "pad_id", 0)
    options = dict(sequence_length=min(longest, max_sequence_length),
                   batch_size=batch_size, seed=seed, shuffle=shuffle)
    if pad_id == 0:
        return tfpg_data.language_model_dataset(texts, tokenizer, **options)
    # The same windows of ids + 1, so that 0 marks padding; shifted back after.
    windows = tfpg_data.language_model_dataset(texts, _ShiftedIds(tokenizer), **options)

    def unshift(inputs, targets):
        real = targets > 0
        return (tf.where(real, inputs - 1, pad_id), tf.where(real, targets - 1, pad_id),
                tf.cast(real, tf.int32))
    return windows.map(unshift)


class _ShiftedIds:
    """A tokenizer's `encode` and `eos_id`, every id + 1 (0 is then free for padding)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.eos_id = tokenizer.eos_id + 1

    def encode(self, texts):
        return [[i + 1 for i in ids] for ids in self.tokenizer.encode(texts)]


def pretrain(texts, tokenizer, epochs, *, policy=None, seed=0, batch_size=64,
             learning_rate=3e-3, optimizer=None, max_sequence_length=128,
             embedding_dim=64, hidden_dim=128, backbone="lstm", num_layers=1,
             max_length=POLICY_MAX_LENGTH, callbacks=None, verbose=0):
    """Pre-trains a `PolicyNetwork` on `texts` with maximum likelihood; returns it.

    The pre-training of `tfpg train` as one call: `LanguageModelTrainer` (mean
    cross-entropy over real target tokens, dense Adam) fitted on
    `tfpg.data.language_model_dataset` windows as long as the longest text (at most
    `max_sequence_length` next-token pairs; longer texts are cut into windows).

    Args:
        texts: list of str. The training texts.
        tokenizer: `tfpg.Tokenizer`. Encodes the texts.
        epochs: int. Passes over `texts`.
        policy: `PolicyNetwork` or None. The policy to train (in place); None builds a new one of
            `tokenizer.vocabulary_size` tokens from `embedding_dim`, `hidden_dim`,
            `backbone`, `num_layers` and `max_length` (the `tfpg train` defaults).
        seed: int. Seeds Keras first (`keras.utils.set_random_seed`: a new policy's
            initial weights) and the order of the texts in every epoch.
        batch_size: int. Windows per batch.
        learning_rate: float. The learning rate of the Adam optimizer made when `optimizer` is None.
        optimizer: `keras.optimizers.Optimizer` or None. Used instead; give the same one to a later
            call to train on with its state (moments, step count).
        max_sequence_length: int. The longest window, in next-token pairs.
        callbacks: list of `keras.callbacks.Callback`. Passed to `fit`.
        verbose: int. Passed to `fit`.

    Example:
    >>> from tfpg import generate
    >>> from tfpg.tasks import get_task
    >>> task = get_task("arithmetic", seed=0, num_train=8, num_heldout=8, num_pretrain=64)
    >>> tokenizer = task.tokenizer()
    >>> policy = pretrain(task.pretrain_texts, tokenizer, epochs=1, hidden_dim=32)
    >>> out = generate(policy, [tokenizer.encode("12+34=")], max_new_tokens=4, seed=0)
    >>> out.token_ids.shape
    TensorShape([1, 4])
    """
    if isinstance(texts, (str, bytes)):
        raise TypeError("pretrain: texts must be a list of strings, not a single string")
    if policy is not None and policy.vocab_size != tokenizer.vocabulary_size:
        raise ValueError(f"tokenizer has {tokenizer.vocabulary_size} tokens but the policy "
                         f"{policy.vocab_size}: they do not belong together")
    dataset = pretraining_dataset(texts, tokenizer, batch_size, seed, max_sequence_length)
    keras.utils.set_random_seed(seed)
    if policy is None:
        policy = PolicyNetwork(tokenizer.vocabulary_size, embedding_dim, hidden_dim,
                               backbone=backbone, num_layers=num_layers,
                               max_length=max_length)
    trainer = LanguageModelTrainer(policy)
    trainer.compile(optimizer=optimizer or keras.optimizers.Adam(learning_rate))
    trainer.fit(dataset, epochs=epochs, verbose=verbose, callbacks=callbacks)
    return policy


class EpochProgress(keras.callbacks.Callback):
    """Console progress of a `fit` of many short epochs (pre-training runs tens):
    on a terminal one progress bar over the epochs; elsewhere a line every few
    epochs (about `lines` in all, plus the first epoch run and the last)."""

    def __init__(self, label, epochs, lines=10, log=print):
        super().__init__()
        self.label, self.epochs, self.log = label, epochs, log
        self.every = max(1, math.ceil(epochs / lines))
        self._bar = None
        self._first = True

    def on_train_begin(self, logs=None):
        self._started = time.time()
        if sys.stdout.isatty():
            self._bar = keras.utils.Progbar(self.epochs, unit_name="epoch",
                                            stateful_metrics=["loss"])

    def on_epoch_end(self, epoch, logs=None):
        values = {name: float(value) for name, value in (logs or {}).items()}
        if self._bar is not None:
            self._bar.update(epoch + 1, values=list(values.items()))
        elif self._first or (epoch + 1) % self.every == 0 or epoch + 1 == self.epochs:
            shown = " - ".join(f"{name} {value:.4f}" for name, value in values.items())
            self.log(f"{self.label} epoch {epoch + 1}/{self.epochs} - {shown} - "
                     f"{time.time() - self._started:.0f}s")
        self._first = False
