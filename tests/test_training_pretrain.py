"""`tfpg.run.pretraining.pretrain` (maximum likelihood as one call) and `copy_policy`."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfpg
from tfpg.run import pipeline
from tfpg.tasks import get_task

SMALL = {"embedding_dim": 16, "hidden_dim": 32}


@pytest.fixture(scope="module")
def task():
    task = get_task("arithmetic", seed=0, num_train=8, num_heldout=8, num_pretrain=256)
    return task, task.tokenizer()


def mean_nll(policy, texts, tokenizer):
    """Mean cross-entropy per real target token over `texts`."""
    dataset = tfpg.data.language_model_dataset(texts, tokenizer, sequence_length=16,
                                               batch_size=len(texts), shuffle=False)
    total, count = 0.0, 0.0
    for inputs, targets in dataset:
        mask = tf.cast(targets != 0, tf.float32)
        per_token = tf.keras.losses.sparse_categorical_crossentropy(
            targets, policy(inputs), from_logits=True)
        total += float(tf.reduce_sum(per_token * mask))
        count += float(tf.reduce_sum(mask))
    return total / count


def test_pretrain_lowers_the_loss_of_a_given_policy_and_keeps_the_optimizer(task):
    task, tok = task
    policy = tfpg.PolicyNetwork(tok.vocabulary_size, **SMALL)
    policy.build()
    before = mean_nll(policy, task.pretrain_texts, tok)
    optimizer = tf.keras.optimizers.Adam(1e-2)
    returned = pipeline.pretrain(task.pretrain_texts, tok, 3, policy=policy,
                                 optimizer=optimizer, seed=1)
    assert returned is policy
    after = mean_nll(policy, task.pretrain_texts, tok)
    assert after < 0.9 * before, (before, after)
    steps = int(optimizer.iterations)
    assert steps == 3 * 4                                   # 256 texts / batches of 64
    pipeline.pretrain(task.pretrain_texts, tok, 1, policy=policy, optimizer=optimizer,
                      seed=2)
    assert int(optimizer.iterations) == steps + 4           # same optimizer, same state
    assert mean_nll(policy, task.pretrain_texts, tok) < after


def test_pretrain_builds_a_seeded_policy_that_generates(task):
    task, tok = task
    policy = pipeline.pretrain(task.pretrain_texts[:64], tok, 1, seed=3, **SMALL)
    assert isinstance(policy, tfpg.PolicyNetwork)
    assert (policy.vocab_size, policy.hidden_dim) == (tok.vocabulary_size, 32)
    again = pipeline.pretrain(task.pretrain_texts[:64], tok, 1, seed=3, **SMALL)
    for a, b in zip(policy.get_weights(), again.get_weights()):   # same seed, same run
        np.testing.assert_allclose(a, b, atol=1e-6)                # (up to thread order)
    out = tfpg.generate(policy, [tok.encode("12+34=")], max_new_tokens=4,
                        eos_id=tok.eos_id, seed=0)
    assert out.token_ids.shape == (1, 4)
    assert 0 <= int(tf.reduce_min(out.token_ids)) <= int(tf.reduce_max(out.token_ids)) \
        < tok.vocabulary_size


def test_pretrain_refuses_bad_input(task):
    task, tok = task
    other = tfpg.PolicyNetwork(tok.vocabulary_size + 1, **SMALL)
    with pytest.raises(ValueError, match="do not belong together"):
        pipeline.pretrain(task.pretrain_texts, tok, 1, policy=other)
    with pytest.raises(TypeError, match="list of strings"):
        pipeline.pretrain("12+34=46", tok, 1)
    with pytest.raises(ValueError, match="empty"):
        pipeline.pretrain([], tok, 1)


def test_copy_policy_is_trainable_or_frozen(task):
    _, tok = task
    policy = tfpg.PolicyNetwork(tok.vocabulary_size, **SMALL)
    policy.build()
    trainable = pipeline.copy_policy(policy)
    frozen = pipeline.copy_policy(policy, trainable=False)
    assert trainable.trainable and trainable.trainable_variables
    assert not frozen.trainable and not frozen.trainable_variables
    for copy in (trainable, frozen):
        assert copy is not policy
        assert {**copy.get_config(), "trainable": True} == policy.get_config()
        for a, b in zip(policy.get_weights(), copy.get_weights()):
            np.testing.assert_array_equal(a, b)
    trainable.variables[0].assign(trainable.variables[0] + 1.0)     # its own variables
    assert not np.allclose(trainable.get_weights()[0], policy.get_weights()[0])


def test_a_float32_copy_of_a_mixed_precision_policy(task):
    """`copy_policy(..., dtype="float32")` (evaluation, export): the same weights, float32
    compute in every layer, and the global dtype policy left as it was."""
    _, tok = task
    ids = tf.constant([tok.encode("12+34=")])
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        policy = tfpg.PolicyNetwork(tok.vocabulary_size, **SMALL)
        policy.build()
        copy = tfpg.copy_policy(policy, dtype="float32")
        assert keras.mixed_precision.global_policy().name == "mixed_float16"
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert policy.hidden_states(ids).dtype == tf.float16
    assert copy.hidden_states(ids).dtype == tf.float32          # the trunk computes in float32
    for a, b in zip(policy.get_weights(), copy.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(copy(ids), policy(ids), atol=0.05)     # float16 rounding
