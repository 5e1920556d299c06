"""`RewardModel`: a Keras scorer of token ids as a reward, and a small trainer."""

import keras
import numpy as np
import tensorflow as tf

from tfpg.rewards.base import Reward, completion_tokens


class RewardModel(Reward):
    """Scores completions with a Keras model mapping ids int32 [B, T] -> [B] or [B, 1].

    The model sees the completion's tokens before EOS, right-padded with 0
    (the layout `train_reward_model` trains on: `tokenizer.encode(texts,
    add_bos=False)`), or, with `include_prompt=True`, the left-padded prompt
    followed by them. Keras models are called with `training=False`; the output
    is cast to float32 and squeezed to [B].

    Args:
        model: the `keras.Model` (or any callable with that signature).
        include_prompt: prepend the prompt ids.
        eos_id: where completions stop.
        name: defaults to "RewardModel".

    >>> import keras
    >>> inputs = keras.Input([None], dtype="int32")
    >>> count = keras.layers.Lambda(lambda x: keras.ops.sum(keras.ops.cast(x > 0, "float32"), 1))
    >>> reward = RewardModel(keras.Model(inputs, count(inputs)))
    >>> reward(None, tf.constant([[5, 6, 2, 7]]), tf.constant([[1., 1., 1., 0.]]), {}).numpy()
    array([2.], dtype=float32)
    """

    def __init__(self, model, include_prompt=False, eos_id=2, name=None):
        super().__init__(name=name)
        if not callable(model):
            raise TypeError(f"model must be callable, got {type(model).__name__}")
        self.model = model
        self.include_prompt = include_prompt
        self.eos_id = eos_id

    def get_config(self):
        # The architecture only: weights travel with `model.save`, not configs.
        model = (keras.saving.serialize_keras_object(self.model)
                 if isinstance(self.model, keras.Model) else self.model)
        return {"model": model, "include_prompt": self.include_prompt,
                "eos_id": self.eos_id, "name": self.name}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config["model"], dict):
            config["model"] = keras.saving.deserialize_keras_object(config["model"])
        return cls(**config)

    def __call__(self, prompt_ids, completion_ids, completion_mask, batch):
        ids = completion_tokens(completion_ids, completion_mask, self.eos_id)  # [B, N]
        if self.include_prompt:
            ids = tf.concat([tf.cast(prompt_ids, tf.int32), ids], axis=1)  # [B, P + N]
        if isinstance(self.model, keras.Layer):
            scores = self.model(ids, training=False)
        else:
            scores = self.model(ids)
        scores = tf.cast(scores, tf.float32)  # [B] or [B, 1]
        if scores.shape.rank == 2 and scores.shape[1] == 1:
            scores = scores[:, 0]
        return scores  # [B]


def train_reward_model(texts, labels, tokenizer, embedding_dim=32, hidden_dim=32,
                       max_length=64, epochs=20, batch_size=32, learning_rate=1e-2,
                       validation_split=0.0, seed=0, verbose=0):
    """Trains a small Embedding + mean-pooling scorer on labelled texts.

    Labels that are all 0/1 train a classifier (sigmoid output, binary
    cross-entropy): the reward is P(label = 1), in [0, 1]. Other numeric labels
    train a regressor (linear output, mean squared error).

    Args:
        texts: list of strings, encoded with `tokenizer.encode(..., add_bos=False)`.
        labels: one number per text.
        tokenizer: a `tfpg.Tokenizer`.
        embedding_dim, hidden_dim: widths of the embedding and the hidden layer.
        max_length: texts are cut to this many tokens.
        epochs, batch_size, learning_rate, validation_split, verbose: as in Keras.
        seed: seeds initialisers and shuffling (the global seed is untouched).

    Returns:
        A `RewardModel`; its `.model` is the trained `keras.Model` and
        `.history` the `fit` history.

    >>> from tfpg.text import Tokenizer
    >>> texts = ["good film", "bad film", "good good", "bad bad"] * 8
    >>> tok = Tokenizer.from_texts(texts)
    >>> reward = train_reward_model(texts, [1, 0, 1, 0] * 8, tok, epochs=30)
    >>> scores = reward(None, tf.constant(tok.encode(["good", "bad"], add_bos=False)),
    ...                 tf.ones([2, 1]), {}).numpy()
    >>> bool(scores[0] > 0.5 > scores[1])
    True
    """
    labels = np.asarray(labels, np.float32).reshape(-1)
    if len(texts) != labels.shape[0]:
        raise ValueError(f"got {len(texts)} texts but {labels.shape[0]} labels")
    if not len(texts):
        raise ValueError("train_reward_model needs at least one labelled text")
    binary = bool(np.all((labels == 0) | (labels == 1)))
    ids = tokenizer.encode(list(texts), max_length=max_length, add_bos=False)
    width = max(1, max(len(row) for row in ids))
    x = np.zeros([len(ids), width], np.int32)
    for i, row in enumerate(ids):
        x[i, :len(row)] = row

    inputs = keras.Input([None], dtype="int32", name="token_ids")
    hidden = keras.layers.Embedding(
        tokenizer.vocabulary_size, embedding_dim, mask_zero=True,
        embeddings_initializer=keras.initializers.RandomUniform(-0.05, 0.05, seed=seed))(inputs)
    hidden = keras.layers.GlobalAveragePooling1D()(hidden)  # mask-aware mean over tokens
    hidden = keras.layers.Dense(hidden_dim, activation="relu",
                                kernel_initializer=keras.initializers.GlorotUniform(seed))(hidden)
    outputs = keras.layers.Dense(1, activation="sigmoid" if binary else None,
                                 kernel_initializer=keras.initializers.GlorotUniform(seed + 1))(
        hidden)  # [B, 1]
    model = keras.Model(inputs, outputs, name="reward_model")
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss="binary_crossentropy" if binary else "mse")

    count = len(x)
    validation = int(count * validation_split)
    order = np.random.default_rng(seed).permutation(count)
    train, held_out = order[validation:], order[:validation]
    data = tf.data.Dataset.from_tensor_slices((x[train], labels[train]))
    data = data.shuffle(len(train), seed=seed).batch(batch_size)
    validation_data = (x[held_out], labels[held_out]) if validation else None
    history = model.fit(data, epochs=epochs, validation_data=validation_data, shuffle=False,
                        verbose=verbose)

    reward = RewardModel(model)
    reward.history = history
    return reward
