import numpy as np
import pytest
import tensorflow as tf

import keras
from tfpg.generation import _compiled_decode, filter_logits, generate
from tfpg.models import PolicyNetwork

BACKBONES = ["lstm", "gru", "transformer"]


def make_policy(backbone="lstm", vocab_size=17):
    keras.utils.set_random_seed(1)
    policy = PolicyNetwork(vocab_size, 16, 24, backbone=backbone, num_heads=2, max_length=48)
    # Sharper logits than a fresh init, so that top-k / top-p filtering matters.
    policy.build()
    kernel = policy.lm_head.kernel
    kernel.assign(kernel * 8.0)
    return policy


def step_logits(policy, prompt_ids, completion_ids):
    """Full-recompute logits that predicted each completion token: [B, N, V], with the
    structural ids (pad, BOS), which sampling never draws, at -1e9."""
    sequence = tf.concat([prompt_ids, completion_ids], axis=1)
    mask = tf.concat([tf.not_equal(prompt_ids, 0), tf.ones_like(completion_ids, tf.bool)], 1)
    logits = policy(sequence, padding_mask=mask)
    prompt_length = prompt_ids.shape[1]
    logits = logits[:, prompt_length - 1:-1].numpy()
    logits[..., list(policy.structural_ids)] = -1e9
    return logits


PROMPTS = tf.constant([[0, 0, 1, 5, 6], [1, 7, 8, 9, 10], [0, 1, 4, 4, 12]])


@pytest.mark.parametrize("backbone", BACKBONES)
def test_log_probs_come_from_the_sampled_distribution(backbone):
    policy = make_policy(backbone)
    out = generate(policy, PROMPTS, max_new_tokens=6, sampler="top_k", top_k=4,
                   temperature=0.7, eos_id=None, seed=3)
    logits = step_logits(policy, PROMPTS, out.token_ids)
    filtered = filter_logits(logits, temperature=0.7, top_k=4)
    expected = tf.gather(tf.nn.log_softmax(filtered), out.token_ids, batch_dims=2)
    np.testing.assert_allclose(out.log_probs.numpy(), expected.numpy(), atol=1e-4)


def test_top_k_never_samples_outside_the_k_most_likely():
    policy = make_policy("lstm")
    prompts = tf.tile(PROMPTS, [40, 1])
    out = generate(policy, prompts, max_new_tokens=5, sampler="top_k", top_k=3,
                   eos_id=None, seed=0)
    logits = step_logits(policy, prompts, out.token_ids)
    rank = (logits > np.take_along_axis(logits, out.token_ids.numpy()[..., None], -1)).sum(-1)
    assert rank.max() < 3
    assert len(np.unique(out.token_ids.numpy())) > 3   # it does sample, not just argmax


def test_top_p_never_samples_outside_the_nucleus():
    policy = make_policy("gru")
    prompts = tf.tile(PROMPTS, [40, 1])
    top_p = 0.6
    out = generate(policy, prompts, max_new_tokens=5, sampler="top_p", top_p=top_p,
                   eos_id=None, seed=0)
    logits = step_logits(policy, prompts, out.token_ids)
    probs = tf.nn.softmax(logits).numpy()
    sampled_prob = np.take_along_axis(probs, out.token_ids.numpy()[..., None], -1)[..., 0]
    # Mass of the tokens strictly more likely than the sampled one must be < top_p.
    mass_above = np.where(probs > sampled_prob[..., None], probs, 0).sum(-1)
    assert (mass_above < top_p + 1e-6).all()
    assert (mass_above > 0).any()


def test_greedy_is_deterministic_and_matches_argmax():
    policy = make_policy("transformer")
    first = generate(policy, PROMPTS, 6, sampler="greedy", eos_id=None, seed=1)
    second = generate(policy, PROMPTS, 6, sampler="greedy", eos_id=None, seed=2)
    np.testing.assert_array_equal(first.token_ids, second.token_ids)
    logits = step_logits(policy, PROMPTS, first.token_ids)
    np.testing.assert_array_equal(first.token_ids.numpy(), logits.argmax(-1))


@pytest.mark.parametrize("backbone", BACKBONES)
def test_left_padded_batch_gives_same_greedy_completions_as_alone(backbone):
    policy = make_policy(backbone)
    batch = generate(policy, PROMPTS, 7, sampler="greedy", eos_id=None)
    for row, prompt in enumerate(PROMPTS.numpy()):
        alone = generate(policy, tf.constant([prompt[prompt != 0]]), 7, sampler="greedy",
                         eos_id=None)
        np.testing.assert_array_equal(alone.token_ids[0], batch.token_ids[row])


def test_seed_makes_sampling_reproducible():
    policy = make_policy("lstm")
    a = generate(policy, PROMPTS, 8, seed=11)
    b = generate(policy, PROMPTS, 8, seed=11)
    c = generate(policy, PROMPTS, 8, seed=12)
    np.testing.assert_array_equal(a.token_ids, b.token_ids)
    assert not np.array_equal(a.token_ids, c.token_ids)


def test_everything_after_eos_is_masked():
    policy = make_policy("lstm", vocab_size=6)     # small vocab: EOS (2) comes quickly
    out = generate(policy, tf.tile(PROMPTS[:, -2:] % 6, [10, 1]), 12, eos_id=2, seed=5)
    ids, mask, log_probs = (t.numpy() for t in out)
    stopped = 0
    for row in range(ids.shape[0]):
        eos = np.flatnonzero(ids[row] == 2)
        end = eos[0] + 1 if len(eos) and mask[row, eos[0]] else ids.shape[1]
        stopped += end < ids.shape[1]
        np.testing.assert_array_equal(mask[row], np.arange(ids.shape[1]) < end)
        assert (ids[row, end:] == 0).all() and (log_probs[row, end:] == 0).all()
        assert (log_probs[row, :end] < 0).all()
    assert stopped > 0

    never = generate(policy, PROMPTS % 6, 12, eos_id=None, seed=5)
    assert never.mask.numpy().min() == 1.0


def test_second_call_with_new_shapes_does_not_retrace():
    policy = make_policy("transformer")
    generate(policy, PROMPTS, 4, sampler="top_k", top_k=5, seed=0)
    generate(policy, PROMPTS[:2, 1:], 9, sampler="top_k", top_k=3, temperature=0.5, seed=1)
    compiled = _compiled_decode(policy, False, True, False, 2, policy.structural_ids)
    assert compiled.experimental_get_tracing_count() == 1


def test_bad_options_are_clear_errors():
    policy = make_policy("transformer")
    with pytest.raises(ValueError, match="sampler must be one of"):
        generate(policy, PROMPTS, 4, sampler="beam")
    with pytest.raises(ValueError, match="temperature must be > 0"):
        generate(policy, PROMPTS, 4, temperature=0)
    with pytest.raises(ValueError, match="exceeds the model's max_length"):
        generate(policy, PROMPTS, 100)


def test_empty_batch_and_zero_new_tokens_give_empty_outputs():
    policy = make_policy("lstm")
    none = generate(policy, PROMPTS, 0)
    assert none.token_ids.shape == (3, 0) and none.mask.shape == (3, 0)
    empty = generate(policy, tf.zeros([0, 5], tf.int32), 4)
    assert empty.token_ids.shape == (0, 4)
