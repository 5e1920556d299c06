"""`RewardModel`: a Keras scorer of token ids as a reward, and a small trainer.

A `RewardModel` that knows its tokenizer can be saved (`save(dir)`,
`RewardModel.load(dir)`) as one directory that is at once

* a TensorFlow SavedModel with the signature `score(prompts, completions) ->
  scores` (string [B], string [B] -> float32 [B]; also `serving_default`), the
  tokenizer inside the graph, so plain TensorFlow serves it:
  `tf.saved_model.load(dir).signatures["score"](prompts=..., completions=...)`;
* the Keras model (`model.keras`), the tokenizer (`tokenizer.json`) and
  `reward_model.json` (format marker, options, metadata), which `load` reads.

Saving is atomic like `tfpg.export_saved_model`: everything is written into a
sibling `DIR.tmp-<random>` and renamed into place (a previous reward model is
replaced only once the new one is complete), under the writer lock `DIR.lock`.
`reward_model.json` records a manifest (the SHA-256 of every other file), and
`load` verifies it and the ops of `saved_model.pb` like `tfpg.load` (`tfpg.guards.trust`).
"""

import inspect
import json
import os

import keras
import numpy as np
import tensorflow as tf

from tfpg.data import pad_ids
from tfpg.guards import trust
from tfpg.rewards.base import Reward
from tfpg.text.tokenizer import read_json_marker

FORMAT = "tfpg.RewardModel"
FORMAT_VERSION = 1
INFO_FILE = "reward_model.json"
MODEL_FILE = "model.keras"
TOKENIZER_FILE = "tokenizer.json"


@keras.saving.register_keras_serializable(package="tfpg")
class RewardModel(Reward):
    """Scores completions with a Keras model mapping ids int32 [B, T] -> [B] or [B, 1].

    The model sees the completion's tokens before EOS, right-padded with 0
    (the layout `train_reward_from_labels` trains on: `tokenizer.encode(texts,
    add_bos=False)`), or, with `include_prompt=True`, the left-padded prompt
    followed by them. Keras models are called with `training=False`; the output
    is cast to float32 and squeezed to [B].

    Args:
        model: `keras.Model` or callable. The `keras.Model` (or any callable with that
            signature).
        include_prompt: bool. Prepend the prompt ids.
        eos_id: int or None. Where completions stop.
        name: str or None. Defaults to "RewardModel".
        tokenizer: `tfpg.Tokenizer` or None. The `Tokenizer` whose ids the model reads;
            needed by `score` (strings in) and `save` (the SavedModel tokenizes
            in-graph).
        metadata: dict or None. JSON-serialisable dict saved with the model (e.g.
            held-out accuracy).

    Example:
    >>> import keras
    >>> inputs = keras.Input([None], dtype="int32")
    >>> count = keras.layers.Lambda(lambda x: keras.ops.sum(keras.ops.cast(x > 0, "float32"), 1))
    >>> reward = RewardModel(keras.Model(inputs, count(inputs)))
    >>> reward(None, tf.constant([[5, 6, 2, 7]]), tf.constant([[1., 1., 1., 0.]]), {}).numpy()
    array([2.], dtype=float32)
    """

    def __init__(self, model, include_prompt=False, eos_id=2, name=None, tokenizer=None,
                 metadata=None):
        super().__init__(name=name)
        if not callable(model):
            raise TypeError(f"model must be callable, got {type(model).__name__}")
        self.model = model
        self.include_prompt = include_prompt
        self.eos_id = eos_id
        self.tokenizer = tokenizer
        self.metadata = dict(metadata or {})
        self._id_map = None  # set by for_tokenizer

    def get_config(self):
        # The architecture only: weights travel with `model.save` (and a trainer's
        # `.keras` file), not configs.
        model = (keras.saving.serialize_keras_object(self.model)
                 if isinstance(self.model, keras.Model) else self.model)
        config = {"model": model, "include_prompt": self.include_prompt,
                  "eos_id": self.eos_id, "name": self.name, "tokenizer": self.tokenizer,
                  "metadata": dict(self.metadata)}
        if self._id_map is not None:        # a `for_tokenizer` remapping
            config["id_map"] = self._id_map.tolist()
        return config

    @classmethod
    def from_config(cls, config):
        from tfpg.text.tokenizer import Tokenizer
        config = dict(config)
        id_map = config.pop("id_map", None)
        tokenizer = config.get("tokenizer")
        if isinstance(tokenizer, dict) and "class_name" not in tokenizer:
            config["tokenizer"] = Tokenizer.from_config(tokenizer)   # an older config's form
        reward = super().from_config(config)
        if id_map is not None:
            reward._id_map = np.asarray(id_map, np.int32)
        return reward

    @property
    def pad_id(self):
        return getattr(self.tokenizer, "pad_id", None) or 0

    def _inputs(self, prompt_ids, completion_ids, completion_mask, batch):
        """The model's input: ids [B, T] and real-token mask [B, T] (bool) of the
        completion tokens before EOS, after the prompt if asked."""
        ids = tf.cast(completion_ids, tf.int32)                           # [B, N]
        real = tf.cast(completion_mask, tf.float32) > 0
        if self.eos_id is not None:
            is_eos = tf.cast(tf.equal(ids, self.eos_id), tf.int32)
            real &= tf.equal(tf.cumsum(is_eos, axis=1), 0)                # before EOS
        if self.include_prompt:
            prompt_ids = tf.cast(prompt_ids, tf.int32)                    # [B, P]
            prompt_mask = (batch or {}).get("prompt_mask")
            prompt_real = (tf.not_equal(prompt_ids, self.pad_id) if prompt_mask is None
                           else tf.cast(prompt_mask, tf.int32) > 0)
            ids = tf.concat([prompt_ids, ids], axis=1)                    # [B, P + N]
            real = tf.concat([prompt_real, real], axis=1)
        if self._id_map is not None:
            ids = tf.gather(tf.constant(self._id_map), ids)  # the caller's ids -> the model's
        return ids, real

    def for_tokenizer(self, tokenizer):
        """This reward for policies whose ids come from another `tokenizer`.

        Each of the caller's tokens is mapped in-graph to the model's id of the
        same string (unknown strings to `unk_id`), so a reward model trained with
        one vocabulary scores a policy trained with another of the same level.
        Returns `self` when the vocabularies are equal.
        """
        own = self._require_tokenizer("for_tokenizer")
        if getattr(own, "level", None) is None or getattr(tokenizer, "level", None) is None:
            # A KerasHub vocabulary: no mapping, the ids must be the same.
            if _tokenizer_identity(tokenizer) == _tokenizer_identity(own):
                return self
            raise ValueError(f"the reward model reads the ids of {_describe(own)} but the "
                             f"policy's tokenizer is {_describe(tokenizer)}; train the "
                             "reward model with the policy's tokenizer")
        if tokenizer.vocabulary == own.vocabulary:
            return self
        if tokenizer.level != own.level:
            raise ValueError(f"the reward model reads {own.level}-level tokens but the "
                             f"policy's tokenizer is {tokenizer.level}-level")
        id_map = np.array([i if i < 4 else own.token_to_id(token)
                           for i, token in enumerate(tokenizer.vocabulary)], np.int32)
        remapped = type(self)(self.model, self.include_prompt, tokenizer.eos_id, self.name,
                              own, self.metadata)
        remapped._id_map = id_map
        return remapped

    def _score_ids(self, ids, real):
        if accepts_padding_mask(self.model):
            ids = tf.where(real, ids, self.pad_id)
            scores = self.model(ids, padding_mask=real, training=False)
        else:  # a model that reads 0 as padding (Embedding(mask_zero=True))
            ids = tf.where(real, ids, 0)
            if isinstance(self.model, keras.Layer):
                scores = self.model(ids, training=False)
            else:
                scores = self.model(ids)
        scores = tf.cast(scores, tf.float32)  # [B] or [B, 1]
        if scores.shape.rank == 2 and scores.shape[1] == 1:
            scores = scores[:, 0]
        return scores  # [B]

    def __call__(self, prompt_ids, completion_ids, completion_mask, batch):
        return self._score_ids(*self._inputs(prompt_ids, completion_ids, completion_mask,
                                             batch))

    def _require_tokenizer(self, what):
        if self.tokenizer is None:
            raise ValueError(f"RewardModel.{what} needs the tokenizer: build the reward "
                             "model with tokenizer=...")
        return self.tokenizer

    def score(self, prompts, completions, batch_size=256):
        """Scores of completion strings given their prompts: float32 numpy [B].

        Tokenized as the trainers see them (prompt with BOS, completion without),
        so `score` equals the reward of the same ids and the saved `score`
        signature.
        """
        tokenizer = self._require_tokenizer("score")
        prompts, completions = list(prompts), list(completions)
        if len(prompts) != len(completions):
            raise ValueError(f"got {len(prompts)} prompts but {len(completions)} completions")
        out, pad = [], self.pad_id
        for start in range(0, len(prompts), batch_size):
            prompt_ids, prompt_mask = pad_ids(
                tokenizer.encode(prompts[start:start + batch_size]), "left", pad)
            ids, mask = pad_ids(tokenizer.encode(completions[start:start + batch_size],
                                                 add_bos=False), "right", pad)
            out.append(self(tf.constant(prompt_ids), tf.constant(ids),
                            tf.constant(mask, tf.float32),
                            {"prompt_mask": tf.constant(prompt_mask)}).numpy())
        return np.concatenate(out) if out else np.zeros([0], np.float32)

    def save(self, directory):
        """Writes the reward model to `directory` atomically (see the module
        docstring); returns `directory`. A directory holding anything but a
        previous reward model is refused, and so is one that another process is
        writing (it holds `DIR.lock`)."""
        from tfpg.export import normalize_path, write_directory

        tokenizer = self._require_tokenizer("save")
        if not isinstance(self.model, keras.Model):
            raise TypeError(f"RewardModel.save needs a keras.Model, got "
                            f"{type(self.model).__name__}")
        directory = normalize_path(directory)
        check_replaceable(directory)

        def write(tmp):
            _write_score_saved_model(self, tokenizer, tmp)
            self.model.save(os.path.join(tmp, MODEL_FILE))
            tokenizer.save(os.path.join(tmp, TOKENIZER_FILE))

        write_directory(directory, write, INFO_FILE, {
            "format": FORMAT, "version": FORMAT_VERSION, "name": self.name,
            "include_prompt": bool(self.include_prompt),
            "eos_id": None if self.eos_id is None else int(self.eos_id),
            "tokenizer": type(tokenizer).__name__, "metadata": self.metadata},
            kind="tfpg reward model")
        return directory

    @classmethod
    def load(cls, directory, trust_remote_code=False):
        """Reads a directory written by `save`; one-line errors for anything else.

        Verifies before it reads, as `tfpg.load` does: every file must match the
        manifest in `reward_model.json`, and `saved_model.pb` (the same directory
        served by `tf.saved_model.load`) may hold only ops of tfpg's own exports.
        A reward model written before manifests existed loads with a warning and
        the op check. `trust_remote_code=True` skips the op check, for a graph you
        built yourself. `model.keras` is read in Keras' safe mode either way.
        """
        import tfpg.models  # noqa: F401 - registers the tfpg layers for deserialising
        from tfpg.export import normalize_path, recover_if_unlocked
        from tfpg.text.tokenizer import Tokenizer
        directory = normalize_path(directory)
        recover_if_unlocked(directory)
        info = read_reward_model_info(directory)
        trust.verify_model_directory(
            directory, info, INFO_FILE, "reward model", trust_remote_code,
            anyway="RewardModel.load(..., trust_remote_code=True)")
        try:
            model = keras.saving.load_model(os.path.join(directory, MODEL_FILE))
        except Exception as e:  # noqa: BLE001 - any corrupt file, reported as one line
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ValueError(f"{directory}: cannot load {MODEL_FILE} ({first})") from None
        if info.get("tokenizer", "Tokenizer") == "Tokenizer":
            tokenizer = Tokenizer.load(os.path.join(directory, TOKENIZER_FILE))
        else:
            from tfpg.text.keras_hub_tokenizer import KerasHubTokenizer
            tokenizer = KerasHubTokenizer.load(os.path.join(directory, TOKENIZER_FILE))
        return cls(model, include_prompt=info["include_prompt"], eos_id=info["eos_id"],
                   name=info.get("name"), tokenizer=tokenizer, metadata=info.get("metadata"))


def accepts_padding_mask(model):
    """True for scorers whose `call` takes `padding_mask` (tfpg's reward networks)."""
    call = getattr(model, "call", None)
    try:
        return call is not None and "padding_mask" in inspect.signature(call).parameters
    except (TypeError, ValueError):
        return False


def _tokenizer_identity(tokenizer):
    hub = getattr(tokenizer, "hub_tokenizer", None)
    if hub is None:
        return (type(tokenizer).__name__, repr(getattr(tokenizer, "vocabulary", None)))
    return (type(hub).__name__, json.dumps(keras.saving.serialize_keras_object(hub),
                                           sort_keys=True, default=str),
            getattr(hub, "proto", None))


def _describe(tokenizer):
    hub = getattr(tokenizer, "hub_tokenizer", None)
    return (f"a {type(hub).__name__} ({tokenizer.vocabulary_size} tokens)" if hub is not None
            else f"a {tokenizer.level}-level tfpg Tokenizer ({tokenizer.vocabulary_size} tokens)")


def check_replaceable(directory):
    """Raises ValueError unless `directory` is absent, empty or a tfpg reward model."""
    from tfpg.export import check_replaceable as check_output
    check_output(directory, INFO_FILE, "tfpg reward model")


def read_reward_model_info(directory):
    """The `reward_model.json` of a saved reward model, or a one-line error."""
    trust.require_directory(directory, "tfpg reward model, written by `tfpg train-reward`")
    path = os.path.join(directory, INFO_FILE)
    if not os.path.isdir(directory) or not os.path.isfile(path):
        raise ValueError(f"{directory}: is not a tfpg reward model (no {INFO_FILE}; write "
                         "one with `tfpg train-reward` or RewardModel.save)")
    return read_json_marker(path, FORMAT, FORMAT_VERSION, "tfpg reward model",
                            "reward model", where=directory)


class _ScoreModule(tf.Module):
    """What the SavedModel holds: the scorer, the tokenizer layers, `score`."""

    def __init__(self, reward_model, tokenizer):
        super().__init__(name="tfpg_reward_model")
        # Untracked, as in tfpg.export: the traced functions' raw variables are
        # tracked instead, so session-based loaders restore the handles they read.
        self.__dict__["reward_model"] = reward_model
        # Padding is told by a mask where the tokenizer gives one (KerasHub: every id
        # may be a real token), else by id 0 (tfpg's Tokenizer).
        self._with_mask = bool(getattr(tokenizer, "encodes_with_mask", False))
        options = {"return_mask": True} if self._with_mask else {}
        self.text_to_ids = tokenizer.string_to_ids_layer(name="text_to_ids", **options)
        self.completion_to_ids = (tokenizer.string_to_ids_layer(
            name="completion_to_ids", add_bos=False, **options) if self._with_mask else None)
        self._bos_id = tokenizer.bos_id
        self._pad_id = reward_model.pad_id
        self.score = tf.function(self._score, input_signature=[
            tf.TensorSpec([None], tf.string, name="prompts"),
            tf.TensorSpec([None], tf.string, name="completions")])

    def _score(self, prompts, completions):
        if self._with_mask:
            prompt_ids, prompt_mask = self.text_to_ids(prompts)         # [B, P] left-padded
            ids, real = self.completion_to_ids(completions)             # [B, C] left-padded
            tokens = tf.ragged.boolean_mask(ids, real > 0)
        else:
            prompt_ids = self.text_to_ids(prompts)                      # [B, P] left-padded
            prompt_mask = tf.cast(prompt_ids != 0, tf.int32)
            with_bos = self.text_to_ids(completions)                    # [B, C] left-padded
            tokens = tf.ragged.boolean_mask(with_bos, with_bos > self._bos_id)
        completion_ids = tokens.to_tensor(self._pad_id)                 # [B, N] right-padded
        mask = tf.sequence_mask(tokens.row_lengths(), tf.shape(completion_ids)[1],
                                tf.float32)
        return {"scores": self.reward_model(prompt_ids, completion_ids, mask,
                                            {"prompt_mask": prompt_mask})}  # [B]


def _write_score_saved_model(reward_model, tokenizer, directory):
    from tfpg.export import save_traced
    module = _ScoreModule(reward_model, tokenizer)
    function = module.score.get_concrete_function()
    save_traced(module, directory, {"score": function, "serving_default": function})


def train_reward_from_labels(texts, labels, tokenizer, embedding_dim=32, hidden_dim=32,
                       max_length=64, epochs=20, batch_size=32, learning_rate=1e-2,
                       validation_split=0.0, seed=0, verbose=0):
    """Trains a small Embedding + mean-pooling scorer on labelled texts.

    Labels that are all 0/1 train a classifier (sigmoid output, binary
    cross-entropy): the reward is P(label = 1), in [0, 1]. Other numeric labels
    train a regressor (linear output, mean squared error).

    Args:
        texts: list of str. List of strings, encoded with `tokenizer.encode(...,
            add_bos=False)`.
        labels: list of float. One number per text.
        tokenizer: `tfpg.Tokenizer`. Encodes the texts.
        embedding_dim: int. The width of the embedding.
        hidden_dim: int. The width of the hidden layer.
        max_length: int. Texts are cut to this many tokens.
        epochs: int. As in Keras.
        batch_size: int. As in Keras.
        learning_rate: float. As in Keras.
        validation_split: float. As in Keras.
        verbose: int. As in Keras.
        seed: int. Seeds initialisers and shuffling (the global seed is untouched).

    Returns:
        A `RewardModel` (with `tokenizer`, so it can be saved); its `.model` is
        the trained `keras.Model` and `.history` the `fit` history.

    Example:
    >>> from tfpg.text import Tokenizer
    >>> texts = ["good film", "bad film", "good good", "bad bad"] * 8
    >>> tok = Tokenizer.from_texts(texts)
    >>> reward = train_reward_from_labels(texts, [1, 0, 1, 0] * 8, tok, epochs=30)
    >>> scores = reward(None, tf.constant(tok.encode(["good", "bad"], add_bos=False)),
    ...                 tf.ones([2, 1]), {}).numpy()
    >>> bool(scores[0] > 0.5 > scores[1])
    True
    """
    labels = np.asarray(labels, np.float32).reshape(-1)
    if len(texts) != labels.shape[0]:
        raise ValueError(f"got {len(texts)} texts but {labels.shape[0]} labels")
    if not len(texts):
        raise ValueError("train_reward_from_labels needs at least one labelled text")
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

    reward = RewardModel(model, eos_id=tokenizer.eos_id, tokenizer=tokenizer)
    reward.history = history
    return reward
