"""Bradley-Terry reward models from pairwise preferences (the reward step of RLHF).

`train_preference_model(prompts, chosen, rejected, tokenizer)` fits a
`RewardNetwork` (tfpg's own LSTM / GRU / Transformer trunk with a scalar head read
at the last real token of prompt + completion) by maximising the Bradley-Terry
likelihood that each chosen completion beats its rejected one:
loss = -log sigmoid(r_chosen - r_rejected - margin). The scores are then shifted
and scaled to mean 0, std 1 over the training completions (both sides of every
pair), the two constants stored in the network, so that a policy-gradient
trainer sees rewards of a known scale whatever the run. The result is a
`tfpg.rewards.RewardModel`: a reward function, `save(dir)` / `RewardModel.load(dir)`,
and a SavedModel signature `score(prompts, completions) -> scores`.

`PreferenceTrainer` is the `keras.Model` that does the fitting (its own
`train_step` / `test_step`, `fit` history with `loss`, `pairwise_accuracy` and
`reward_margin`, `val_` versions on held-out pairs).

`read_preference_pairs(path)` reads JSONL lines `{"prompt", "chosen", "rejected"}`;
`check_pairs` is the validation both paths share (one-line `tfpg.data.DataError`s).
"""

import inspect
import math

import keras
import numpy as np
import tensorflow as tf

from tfpg.data import DataError, _lines, pad_ids, parse_json_line
from tfpg.losses import bradley_terry_loss
from tfpg.rewards.reward_model import RewardModel

# Pairs whose tokens are mostly unknown to the tokenizer are not in its language.
MAX_UNKNOWN_FRACTION = 0.5
PAIR_KEYS = ("prompt", "chosen", "rejected")


class PreferenceTrainer(keras.Model):
    """Fits a scorer to preference pairs with the Bradley-Terry loss.

    Dataset elements are dicts: "chosen" and "rejected" int32 [B, T] (prompt +
    completion ids), optionally "chosen_mask" / "rejected_mask" int32 [B, T] (1 =
    real token; without them id 0 is padding) and "margin" float32 [B].

    Args:
        scorer: `tfpg.models.RewardNetwork` or `tfpg.models.KerasHubRewardNetwork`.
            (called with `padding_mask` and `normalize=False`) or any Keras model
            mapping ids [B, T] -> [B].
        margin: float. Default margin for elements without a "margin" column.

    Logs: "loss" (mean -log sigmoid(r_c - r_r - margin)), "pairwise_accuracy"
    (fraction of pairs with r_c > r_r) and "reward_margin" (mean r_c - r_r).
    """

    def __init__(self, scorer, margin=0.0, **kwargs):
        super().__init__(**kwargs)
        self.scorer = scorer
        self.margin = float(margin)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.accuracy_tracker = keras.metrics.Mean(name="pairwise_accuracy")
        self.margin_tracker = keras.metrics.Mean(name="reward_margin")

    @property
    def metrics(self):
        return [self.loss_tracker, self.accuracy_tracker, self.margin_tracker]

    def get_config(self):
        return {"scorer": keras.saving.serialize_keras_object(self.scorer),
                "margin": self.margin, **super().get_config()}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["scorer"] = keras.saving.deserialize_keras_object(config["scorer"])
        return cls(**config)

    def _raw(self, ids, mask, training):
        parameters = inspect.signature(self.scorer.call).parameters
        if "normalize" in parameters:
            return self.scorer(ids, padding_mask=mask, training=training,
                               normalize=False)  # [B]
        return tf.reshape(self.scorer(ids, training=training), [-1])  # [B]

    def call(self, ids, padding_mask=None, training=None):
        return self._raw(ids, padding_mask, training)

    def _pair_losses(self, data, training):
        chosen = self._raw(data["chosen"], data.get("chosen_mask"), training)         # [B]
        rejected = self._raw(data["rejected"], data.get("rejected_mask"), training)   # [B]
        margin = data.get("margin", self.margin)
        return bradley_terry_loss(chosen, rejected, margin), chosen - rejected  # [B], [B]

    def _update(self, losses, difference):
        self.loss_tracker.update_state(losses)
        self.accuracy_tracker.update_state(tf.cast(difference > 0, tf.float32))
        self.margin_tracker.update_state(difference)
        return {m.name: m.result() for m in self.metrics}

    def train_step(self, data):
        with tf.GradientTape() as tape:
            losses, difference = self._pair_losses(data, training=True)
            loss = tf.reduce_mean(losses)
        variables = self.scorer.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return self._update(losses, difference)

    def test_step(self, data):
        losses, difference = self._pair_losses(data, training=False)
        return self._update(losses, difference)


def check_pairs(prompts, chosen, rejected, where="pairs"):
    """Validates parallel lists of preference pairs; returns them as lists of str.

    One-line `DataError`s: different lengths, no pairs, a value that is not a
    string, a pair whose chosen and rejected completions are equal (it carries no
    preference).
    """
    columns = {"prompts": prompts, "chosen": chosen, "rejected": rejected}
    for name, values in columns.items():
        if isinstance(values, (str, bytes)):
            raise DataError(f"{where}: {name} must be a list of strings, not a single string")
    prompts, chosen, rejected = (list(v) for v in columns.values())
    if not len(prompts) == len(chosen) == len(rejected):
        raise DataError(f"{where}: got {len(prompts)} prompts, {len(chosen)} chosen and "
                        f"{len(rejected)} rejected completions (one of each per pair)")
    if not prompts:
        raise DataError(f"{where}: no preference pairs")
    for i, row in enumerate(zip(prompts, chosen, rejected)):
        for key, value in zip(PAIR_KEYS, row):
            if not isinstance(value, str):
                raise DataError(f"{where}: pair {i}: {key!r} must be a string, found "
                                f"{type(value).__name__}")
        if row[1].split() == row[2].split():
            raise DataError(f"{where}: pair {i}: chosen and rejected are the same text "
                            f"({row[1][:40]!r}); a pair must differ")
    return prompts, chosen, rejected


def check_language(texts, tokenizer, where="pairs"):
    """Raises DataError when most tokens of `texts` are unknown to `tokenizer`
    (pairs written in another language than the tokenizer's). Byte-level
    vocabularies (no unknown token) read every text."""
    if getattr(tokenizer, "unk_id", None) is None:
        return
    total = unknown = 0
    for ids in tokenizer.encode(list(texts), add_bos=False):
        total += len(ids)
        unknown += sum(i == tokenizer.unk_id for i in ids)
    if total and unknown / total > MAX_UNKNOWN_FRACTION:
        raise DataError(f"{where}: {100 * unknown / total:.0f}% of the tokens are unknown to "
                        f"the tokenizer ({tokenizer.level} level, {tokenizer.vocabulary_size} "
                        "tokens); are the pairs in another language than its vocabulary?")


def read_preference_pairs(path):
    """Reads JSONL preference pairs: one `{"prompt", "chosen", "rejected"}` per line.

    Returns {"prompts", "chosen", "rejected"}; every problem is a one-line
    `DataError` naming the file and line (missing field, not a string, chosen ==
    rejected, invalid JSON, an empty file).
    """
    prompts, chosen, rejected = [], [], []
    for number, line in _lines(path):
        where = f"{path}:{number}"
        record = parse_json_line(line, where)      # invalid JSON, nesting too deep
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected a JSON object, found {type(record).__name__}")
        for key in PAIR_KEYS:
            if key not in record:
                raise DataError(f"{where}: missing required key {key!r} (each line needs "
                                f"{', '.join(PAIR_KEYS)})")
            if not isinstance(record[key], str):
                raise DataError(f"{where}: {key!r} must be a string, found "
                                f"{type(record[key]).__name__}")
        if record["chosen"].split() == record["rejected"].split():
            raise DataError(f"{where}: 'chosen' and 'rejected' are the same text; a pair "
                            "must differ")
        prompts.append(record["prompt"])
        chosen.append(record["chosen"])
        rejected.append(record["rejected"])
    if not prompts:
        raise DataError(f"{path}: no preference pairs (the file is empty or has only "
                        "blank lines)")
    return {"prompts": prompts, "chosen": chosen, "rejected": rejected}


def _pair_arrays(tokenizer, pairs, margin):
    """{"chosen", "rejected"}: prompt (with BOS) + completion ids int32 [N, T],
    right-padded with the pad id, with their "..._mask" int32 [N, T]."""
    prompts, chosen, rejected = pairs
    prompt_ids = tokenizer.encode(prompts)
    rows = {side: [p + c for p, c in zip(prompt_ids, tokenizer.encode(texts, add_bos=False))]
            for side, texts in (("chosen", chosen), ("rejected", rejected))}
    width = max(len(row) for side in rows.values() for row in side)
    arrays = {}
    for side, side_rows in rows.items():
        # One width for both sides: a dummy row makes pad_ids pad to it.
        ids, mask = pad_ids(side_rows + [[0] * width], "right", _pad_id(tokenizer))
        arrays[side], arrays[side + "_mask"] = ids[:-1], mask[:-1]
    if margin is not None:
        arrays["margin"] = margin
    return arrays


def _pad_id(tokenizer):
    return getattr(tokenizer, "pad_id", None) or 0


def _margins(margin, count):
    """None for a scalar margin (the trainer's default), else float32 [count]."""
    if np.isscalar(margin):
        if not math.isfinite(float(margin)):
            raise ValueError(f"margin must be finite, got {margin}")
        return None
    margin = np.asarray(margin, np.float32).reshape(-1)
    if margin.shape[0] != count or not np.all(np.isfinite(margin)):
        raise ValueError(f"margin must be a number or {count} finite numbers (one per pair)")
    return margin


def _as_pairs(value, what):
    if isinstance(value, dict):
        try:
            return value["prompts"], value["chosen"], value["rejected"]
        except KeyError as e:
            raise DataError(f"{what} needs the keys 'prompts', 'chosen', 'rejected' "
                            f"(missing {e})") from None
    return tuple(value)


def train_preference_model(prompts, chosen, rejected, tokenizer, backbone="lstm",
                           embedding_dim=32, hidden_dim=64, num_layers=1, num_heads=4,
                           max_length=512, init_from=None, scorer=None, margin=0.0, epochs=4,
                           batch_size=32, learning_rate=3e-3, validation_split=0.1,
                           heldout=None, seed=0, verbose=0):
    """Trains a Bradley-Terry reward model on preference pairs.

    Args:
        prompts: list of str. Parallel to `chosen` and `rejected`, one pair per
            index.
        chosen: list of str. The completions preferred for each prompt.
        rejected: list of str. The completions not preferred for each prompt.
        tokenizer: `tfpg.Tokenizer`. The `Tokenizer` of the policy the reward will score
            (the reward reads the policy's ids).
        backbone: str. The `RewardNetwork` trunk (as for `PolicyNetwork`).
        embedding_dim: int. The `RewardNetwork` trunk (as for `PolicyNetwork`).
        hidden_dim: int. The `RewardNetwork` trunk (as for `PolicyNetwork`).
        num_layers: int. The `RewardNetwork` trunk (as for `PolicyNetwork`).
        num_heads: int. The `RewardNetwork` trunk (as for `PolicyNetwork`).
        max_length: int. The `RewardNetwork` trunk (as for `PolicyNetwork`).
        init_from: `keras.Model` or None. A policy whose trunk weights the reward model
            starts from (a copy): a `PolicyNetwork` (its backbone options are then used
            instead) or a `KerasHubPolicy` (a `KerasHubRewardNetwork` on its trunk; give
            its `policy.tokenizer`).
        scorer: `keras.Model` or None. A ready scorer to train instead, e.g.
            `tfpg.models.KerasHubRewardNetwork.from_preset(preset)`.
        margin: float or list of float. A number, or one per pair, in -log sigmoid(r_c -
            r_r - margin).
        epochs: int. As in Keras `fit`.
        batch_size: int. As in Keras `fit`.
        learning_rate: float. As in Keras `fit`.
        verbose: int. As in Keras `fit`.
        validation_split: float. Fraction of the pairs held out for pairwise accuracy
            (ignored when `heldout` is given; 0 trains on everything).
        heldout: dict, tuple or None. Held-out pairs, {"prompts", "chosen", "rejected"}
            or a 3-tuple.
        seed: int. Seeds initialisers, the split and shuffling.

    Returns:
        A `RewardModel` (with `include_prompt=True` and `tokenizer`); `.model` is
        the `RewardNetwork`, `.history` the Keras history (`val_pairwise_accuracy`
        on held-out pairs) and `.metadata` holds "heldout_accuracy", the pair
        counts, the normalisation constants and the options.

    Raises:
        tfpg.data.DataError: empty or malformed pairs, chosen == rejected, pairs
            that are not in the tokenizer's language.
    """
    from tfpg.models import KerasHubPolicy, KerasHubRewardNetwork, RewardNetwork
    where = "pairs"
    pairs = check_pairs(prompts, chosen, rejected, where)
    check_language(pairs[0] + pairs[1] + pairs[2], tokenizer, where)
    margins = _margins(margin, len(pairs[0]))
    count = len(pairs[0])
    if heldout is not None:
        held = check_pairs(*_as_pairs(heldout, "heldout"), where="heldout pairs")
        check_language(held[0] + held[1] + held[2], tokenizer, "heldout pairs")
        train = pairs
        train_margins = margins
    else:
        if not 0.0 <= validation_split < 1.0:
            raise ValueError(f"validation_split must be in [0, 1), got {validation_split}")
        order = np.random.default_rng(seed).permutation(count)
        cut = int(count * validation_split)
        if validation_split and cut == 0 and count > 1:
            cut = 1
        if cut >= count:
            raise DataError(f"{where}: {count} pair(s) leave nothing to train on after "
                            "holding some out; give more pairs or validation_split=0")
        take = lambda rows, idx: [rows[i] for i in idx]  # noqa: E731
        held = tuple(take(column, order[:cut]) for column in pairs) if cut else None
        train = tuple(take(column, order[cut:]) for column in pairs)
        train_margins = None if margins is None else margins[order[cut:]]

    keras.utils.set_random_seed(seed)  # initialisers of the new layers
    if scorer is not None and init_from is not None:
        raise ValueError("give scorer or init_from, not both")
    if scorer is None and init_from is not None:
        if isinstance(init_from, KerasHubPolicy):
            scorer = KerasHubRewardNetwork.from_policy(init_from, name="reward_network")
        else:
            scorer = RewardNetwork.from_policy(init_from, name="reward_network")
    elif scorer is None:
        scorer = RewardNetwork(tokenizer.vocabulary_size, embedding_dim, hidden_dim, backbone,
                               num_layers, num_heads, 0.0, max_length, name="reward_network")
    vocab_size = getattr(scorer, "vocab_size", None)
    if vocab_size is not None and vocab_size < tokenizer.vocabulary_size:
        raise ValueError(f"the reward network has vocab_size={vocab_size} but the "
                         f"tokenizer has {tokenizer.vocabulary_size} tokens")
    if not hasattr(scorer, "set_normalization"):
        raise TypeError(f"scorer must be a RewardNetwork or KerasHubRewardNetwork, got "
                        f"{type(scorer).__name__}")
    if not scorer.built:
        scorer.build()
    trainer = PreferenceTrainer(scorer, margin=margin if margins is None else 0.0)
    trainer.compile(optimizer=keras.optimizers.Adam(learning_rate))
    arrays = _pair_arrays(tokenizer, train, train_margins)
    data = tf.data.Dataset.from_tensor_slices(arrays)
    data = data.shuffle(len(train[0]), seed=seed, reshuffle_each_iteration=True)
    data = data.batch(batch_size)
    validation = None
    if held is not None:
        validation = tf.data.Dataset.from_tensor_slices(
            _pair_arrays(tokenizer, held, None)).batch(256)
    history = trainer.fit(data, epochs=epochs, validation_data=validation, shuffle=False,
                          verbose=verbose)

    # Normalise over every training completion (both sides of each pair).
    raw = np.concatenate([_raw_scores(scorer, arrays[side], arrays[side + "_mask"])
                          for side in ("chosen", "rejected")])
    mean, std = float(raw.mean()), float(raw.std())
    scorer.set_normalization(mean, std if std > 1e-6 else 1.0)

    metadata = {"objective": "bradley_terry", "train_pairs": len(train[0]),
                "heldout_pairs": 0 if held is None else len(held[0]),
                "normalization": {"mean": mean, "std": std if std > 1e-6 else 1.0},
                "options": {"scorer": type(scorer).__name__,
                            **({key: value for key, value in scorer.backbone_config().items()
                                if key != "vocab_size"}
                               if hasattr(scorer, "backbone_config") else {}),
                            "epochs": epochs, "batch_size": batch_size,
                            "learning_rate": learning_rate,
                            "margin": margin if margins is None else "per pair",
                            "seed": seed, "init_from_policy": init_from is not None}}
    reward = RewardModel(scorer, include_prompt=True, eos_id=tokenizer.eos_id,
                         name="preference_reward", tokenizer=tokenizer, metadata=metadata)
    if held is not None:
        reward.metadata["heldout_accuracy"] = pairwise_accuracy(reward, *held)
    reward.metadata["train_accuracy"] = pairwise_accuracy(reward, *train)
    reward.history = history
    return reward


def _raw_scores(scorer, ids, mask, batch_size=512):
    return np.concatenate([scorer(tf.constant(ids[i:i + batch_size]),
                                  padding_mask=tf.constant(mask[i:i + batch_size]),
                                  normalize=False).numpy()
                           for i in range(0, len(ids), batch_size)])


def pairwise_accuracy(reward_model, prompts, chosen, rejected):
    """Fraction of pairs whose chosen completion the reward model scores higher."""
    chosen_scores = reward_model.score(prompts, chosen)
    rejected_scores = reward_model.score(prompts, rejected)
    return float(np.mean(chosen_scores > rejected_scores))
