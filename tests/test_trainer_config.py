"""Trainers round-trip: `from_config(get_config())` for every algorithm, a `.keras`
save / load that continues training step for step, and the one-line refusal of a
reward that a config cannot hold."""

import inspect
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfpg
from tfpg import rewards
from tfpg.algorithms import (A2C, GRPO, PPO, RLOO, SCST, OnPolicyDistillation,
                             PolicyGradientTrainer, REINFORCE)

VOCAB = 12
TOKENIZER = tfpg.Tokenizer(["<pad>", "<bos>", "<eos>", "<unk>"] + list("abcdefgh"), level="char")
PROMPTS = tf.constant([[1, 4, 5], [0, 1, 6]], tf.int32)


def policy(hidden=8, **options):
    return tfpg.PolicyNetwork(VOCAB, 8, hidden, **options)


def critic():
    return tfpg.ValueNetwork(VOCAB, 8, 8)


def scorer():
    """A small Keras reward model: ids [B, T] -> [B, 1]."""
    ids = keras.Input([None], dtype="int32")
    hidden = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(VOCAB, 4)(ids))
    return keras.Model(ids, keras.layers.Dense(1)(hidden))


# One trainer per algorithm, with options away from their defaults and every kind of
# serialisable reward: built-in ones (with tokenizers), a reward model, a Perplexity
# reference, a weighted sum; a critic and a given KL reference where they apply.
TRAINERS = {
    "REINFORCE": lambda: REINFORCE(
        policy(), rewards.BLEU(max_order=2, smoothing="method2"), baseline="value",
        value_model=critic(), gamma=0.9, max_new_tokens=3, temperature=0.8, top_k=5,
        suppress_ids=[3], seed=7, reward_timeout=None),
    "SCST": lambda: SCST(
        policy(), rewards.ExactMatch(answer_key="reference", tokenizer=TOKENIZER, pad_id=0),
        max_new_tokens=4, entropy_coef=0.01, max_grad_norm=None),
    "RLOO": lambda: RLOO(
        policy(), rewards.WeightedSum({"length": (rewards.Length(target=2), 0.5),
                                       "overlong": rewards.OverlongPenalty(4, 2)}),
        group_size=2, normalize_advantages=True, num_minibatches=2, clip_epsilon=0.3,
        max_new_tokens=4, kl_coef=0.02),
    "GRPO": lambda: GRPO(
        policy(), rewards.RewardModel(scorer(), include_prompt=True, eos_id=2,
                                      tokenizer=TOKENIZER, metadata={"accuracy": 0.75}),
        reference_model=policy(), group_size=2, loss_type="dapo", clip_epsilon_high=0.28,
        use_adaptive_entropy=True, max_new_tokens=3, sync_ref_model=True,
        ref_model_sync_steps=4),
    "A2C": lambda: A2C(
        policy(), rewards.Keyword(["ab", 7], tokenizer=TOKENIZER), value_model=critic(),
        gae_lambda=0.5, max_new_tokens=3, head_chunk_size=2),
    "PPO": lambda: PPO(
        policy(), rewards.Perplexity(policy(hidden=6), mode="neg_perplexity"),
        value_model=critic(), num_epochs=2, delta=3.0, target_kl=0.5, max_new_tokens=3,
        gradient_checkpointing=True),
    "OnPolicyDistillation": lambda: OnPolicyDistillation(
        policy(), policy(hidden=10), reward_fn=rewards.Length(), reward_weight=0.5,
        discount=1.0, max_new_tokens=3),
}


def constructor_arguments(cls):
    """Every named argument of the constructors from `cls` up to the base trainer."""
    names = set()
    for klass in cls.__mro__[:cls.__mro__.index(PolicyGradientTrainer) + 1]:
        if "__init__" in vars(klass):
            names |= {name for name, p in inspect.signature(klass.__init__).parameters.items()
                      if name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    return names


def serialized(obj):
    return keras.saving.serialize_keras_object(obj)


@pytest.mark.parametrize("name", sorted(TRAINERS))
def test_from_config_rebuilds_every_trainer(name):
    keras.utils.set_random_seed(0)
    trainer = TRAINERS[name]()
    config = trainer.get_config()
    as_json(config)                                           # a .keras file can hold it
    assert constructor_arguments(type(trainer)) - set(config) <= {"kl_in_reward"}
    clone = type(trainer).from_config(config)
    assert type(clone) is type(trainer)
    assert clone.get_config() == config
    # The reward, critic, KL reference (and teacher) come back with their types and
    # settings, the models with their architectures (weights are not in configs).
    assert type(clone.reward_fn) is type(trainer.reward_fn)
    assert serialized(clone.reward_fn) == serialized(trainer.reward_fn)
    for attribute in ("value_model", "reference_model", "teacher"):
        original, rebuilt = getattr(trainer, attribute, None), getattr(clone, attribute, None)
        assert type(rebuilt) is type(original), attribute
        if original is not None:
            assert rebuilt.get_config() == original.get_config(), attribute
            assert rebuilt.trainable == original.trainable, attribute
    assert clone.policy is not trainer.policy
    clone.policy.set_weights(trainer.policy.get_weights())
    np.testing.assert_array_equal(clone.policy(PROMPTS).numpy(), trainer.policy(PROMPTS).numpy())


def test_a_given_reference_round_trips_and_a_default_one_is_made_again():
    keras.utils.set_random_seed(0)
    given = GRPO(policy(), rewards.Length(), reference_model=policy(hidden=6), group_size=2)
    made = GRPO(policy(), rewards.Length(), group_size=2)
    assert given.get_config()["reference_model"]["config"]["hidden_dim"] == 6
    assert made.get_config()["reference_model"] is None
    clone = GRPO.from_config(made.get_config())
    # A frozen copy of the clone's policy, as the original's is of its own.
    assert clone.reference_model is not clone.policy and not clone.reference_model.trainable
    for mine, policy_weight in zip(clone.reference_model.weights, clone.policy.weights):
        np.testing.assert_array_equal(mine.numpy(), policy_weight.numpy())


def test_distillation_without_a_task_reward_round_trips():
    trainer = OnPolicyDistillation(policy(), policy(hidden=10), max_new_tokens=3)
    config = trainer.get_config()
    assert config["reward_fn"] is None
    clone = OnPolicyDistillation.from_config(config)
    assert not clone.has_task_reward and clone.get_config() == config


def one_batch():
    return tf.data.Dataset.from_tensors({"prompt": tf.constant([[1, 4], [1, 6]], tf.int32)})


KERAS_FILE_TRAINERS = {
    # A critic, two passes per rollout, the adaptive KL coefficient (a trainer weight).
    "PPO": lambda: PPO(policy(), rewards.Length(), value_model=critic(), kl_coef=0.1,
                       target_kl=0.01, num_epochs=2, max_new_tokens=3),
    # A KL reference in the loss and a reward model (whose weights the file keeps).
    "GRPO": lambda: GRPO(policy(), rewards.RewardModel(scorer()), group_size=2, kl_coef=0.1,
                         max_new_tokens=3),
}


def as_json(config):
    """`config` as a `.keras` file holds it (tuples become lists)."""
    return json.loads(json.dumps(config))


@pytest.mark.parametrize("name", sorted(KERAS_FILE_TRAINERS))
def test_a_keras_file_continues_training_identically(name, tmp_path):
    keras.utils.set_random_seed(0)
    trainer = KERAS_FILE_TRAINERS[name]()
    trainer.compile(optimizer=keras.optimizers.Adam(0.05))
    trainer.fit(one_batch(), epochs=1, verbose=0)
    path = str(tmp_path / "trainer.keras")
    trainer.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is type(trainer)
    assert as_json(loaded.get_config()) == as_json(trainer.get_config())

    def state(model):
        """Weights (policy, critic, reference, kl_coef, ...), the reward's layers and
        the optimizer's variables (its step count seeds the sampling)."""
        variables = model.weights + [w for layer in model.reward_layers for w in layer.weights]
        return [v.numpy() for v in variables + model.optimizer.variables]

    before = state(trainer)
    assert int(loaded.optimizer.iterations.numpy()) == int(trainer.optimizer.iterations.numpy()) > 0
    for mine, theirs in zip(state(loaded), before, strict=True):
        np.testing.assert_array_equal(mine, theirs)
    history = trainer.fit(one_batch(), epochs=1, verbose=0).history
    loaded_history = loaded.fit(one_batch(), epochs=1, verbose=0).history
    assert loaded_history.keys() == history.keys()
    for key, values in history.items():
        np.testing.assert_allclose(loaded_history[key], values, rtol=1e-6, atol=1e-6,
                                   err_msg=key)
    after = state(trainer)
    assert any(not np.array_equal(a, b) for a, b in zip(after, before))   # it did train
    for mine, theirs in zip(state(loaded), after, strict=True):
        np.testing.assert_allclose(mine, theirs, rtol=1e-6, atol=1e-6)


def count_fives(prompt_ids, completion_ids, completion_mask, batch):
    return tf.reduce_sum(tf.cast(tf.equal(completion_ids, 5), tf.float32) * completion_mask, 1)


@pytest.mark.parametrize("reward, words", [
    (count_fives, "reward_fn count_fives (a Python function) cannot be serialised"),
    (rewards.PythonReward(lambda prompts, completions: [0.0] * len(prompts), name="judge"),
     "reward_fn judge's fn (the Python function <lambda>) cannot be serialised"),
    (rewards.WeightedSum({"fives": (count_fives, 1.0), "length": rewards.Length()},
                         name="mix"),
     "reward_fn mix's components (the Python function count_fives) cannot be serialised"),
    (rewards.ExactMatch(tokenizer=TOKENIZER, normalizer=str.strip),
     "reward_fn ExactMatch's normalizer (the Python function strip) cannot be serialised"),
    (rewards.Perplexity(lambda ids: tf.zeros(tf.concat([tf.shape(ids), [VOCAB]], 0))),
     "reward_fn Perplexity's reference_model (the Python function <lambda>) cannot be "
     "serialised"),
])
def test_a_reward_a_config_cannot_hold_is_refused_in_one_line(reward, words, tmp_path):
    trainer = REINFORCE(policy(), reward, max_new_tokens=3)
    with pytest.raises(ValueError) as error:
        trainer.get_config()
    assert str(error.value).startswith(words) and "\n" not in str(error.value)
    with pytest.raises(ValueError, match="cannot be serialised"):
        trainer.save(str(tmp_path / "trainer.keras"))


@keras.saving.register_keras_serializable(package="tfpg_test")
def registered_length(prompt_ids, completion_ids, completion_mask, batch):
    return tf.reduce_sum(completion_mask, axis=1)


def test_a_function_registered_with_keras_round_trips():
    trainer = REINFORCE(policy(), registered_length, max_new_tokens=3)
    clone = REINFORCE.from_config(as_json(trainer.get_config()))
    assert clone.reward_fn is registered_length


def test_a_remapped_reward_model_keeps_its_id_map():
    # A reward model of another vocabulary (`for_tokenizer`) scores the policy's ids
    # through its id map: the config keeps the map.
    own = tfpg.Tokenizer(["<pad>", "<bos>", "<eos>", "<unk>"] + list("hgfedcba"), level="char")
    reward = rewards.RewardModel(scorer(), tokenizer=own).for_tokenizer(TOKENIZER)
    trainer = GRPO(policy(), reward, group_size=2, max_new_tokens=3)
    clone = GRPO.from_config(as_json(trainer.get_config()))
    np.testing.assert_array_equal(clone.reward_fn._id_map, reward._id_map)
    clone.reward_fn.model.set_weights(reward.model.get_weights())
    ids, mask = tf.constant([[4, 5, 2]]), tf.constant([[1.0, 1.0, 1.0]])
    np.testing.assert_array_equal(clone.reward_fn(PROMPTS[:1], ids, mask, {}).numpy(),
                                  reward(PROMPTS[:1], ids, mask, {}).numpy())
