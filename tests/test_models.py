import numpy as np
import pytest
import tensorflow as tf

import keras
from tfpg.models import PolicyNetwork, ValueNetwork

BACKBONES = ["lstm", "gru", "transformer"]


def make_policy(backbone, **kwargs):
    keras.utils.set_random_seed(0)
    options = dict(vocab_size=23, embedding_dim=16, hidden_dim=24, backbone=backbone,
                   num_layers=2, num_heads=2, max_length=40)
    options.update(kwargs)
    return PolicyNetwork(**options)


def test_seed_document_signature_works_as_written():
    policy = PolicyNetwork(50, 8, 16)          # PolicyNetwork(vocab_size, embedding_dim, hidden_dim)
    logits = policy(tf.constant([[1, 4, 5, 6]]))
    assert logits.shape == (1, 4, 50)
    assert logits.dtype == tf.float32


@pytest.mark.parametrize("backbone", BACKBONES)
def test_cached_decoding_equals_full_recompute(backbone):
    policy = make_policy(backbone)
    rng = np.random.default_rng(0)
    token_ids = tf.constant(rng.integers(4, 23, size=(3, 12)), tf.int32)
    token_ids = tf.concat([tf.ones([3, 1], tf.int32), token_ids], axis=1)   # BOS first
    full = policy(token_ids).numpy()
    cache = policy.initial_cache(3, 13)
    logits, _, cache = policy.call_with_cache(token_ids[:, :5], cache, 0)   # prefill
    pieces = [logits]
    for index in range(5, 13):
        logits, _, cache = policy.call_with_cache(token_ids[:, index:index + 1], cache, index)
        pieces.append(logits)
    incremental = tf.concat(pieces, axis=1).numpy()
    assert np.abs(full - incremental).max() <= 1e-4


@pytest.mark.parametrize("backbone", BACKBONES)
def test_left_padding_does_not_change_predictions(backbone):
    policy = make_policy(backbone)
    prompt = [1, 7, 8, 9]
    alone = policy(tf.constant([prompt])).numpy()[0]
    padded = policy(tf.constant([[0, 0, 0] + prompt])).numpy()[0, 3:]
    np.testing.assert_allclose(padded, alone, atol=1e-5)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_keras_file_round_trip_gives_identical_logits(backbone, tmp_path):
    policy = make_policy(backbone, dropout=0.1)
    token_ids = tf.constant([[0, 1, 5, 6, 7], [1, 9, 10, 11, 12]])
    before = policy(token_ids).numpy()
    path = str(tmp_path / "policy.keras")
    policy.save(path)
    reloaded = keras.models.load_model(path)
    assert isinstance(reloaded, PolicyNetwork)
    assert reloaded.get_config() == policy.get_config()
    np.testing.assert_array_equal(reloaded(token_ids).numpy(), before)


def test_config_round_trip_rebuilds_same_architecture():
    policy = make_policy("transformer")
    policy.build()
    clone = PolicyNetwork.from_config(policy.get_config())
    clone.build()
    assert [w.shape for w in clone.weights] == [w.shape for w in policy.weights]
    assert clone.get_config() == policy.get_config()


@pytest.mark.parametrize("backbone", BACKBONES)
def test_value_network_shapes_and_shared_trunk(backbone):
    keras.utils.set_random_seed(0)
    critic = ValueNetwork(23, 16, 24, backbone=backbone, num_heads=2, max_length=40)
    token_ids = tf.constant([[0, 1, 5, 6], [1, 9, 10, 11]])
    values = critic(token_ids)
    assert values.shape == (2, 4) and values.dtype == tf.float32

    policy = make_policy(backbone)
    policy(token_ids)
    shared = ValueNetwork.from_policy(policy)
    shared(token_ids)
    policy_backbone_ids = {id(w) for w in policy.backbone.weights}
    assert policy_backbone_ids <= {id(w) for w in shared.weights}
    assert len(shared.trainable_weights) == len(policy.backbone.weights) + 2  # + head W, b


def test_unknown_backbone_is_a_clear_error():
    with pytest.raises(ValueError, match="backbone must be one of"):
        PolicyNetwork(10, 8, 8, backbone="mamba")
