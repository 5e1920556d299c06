"""Properties the speed work relies on: in-place key/value cache, XLA-compatible decode,
one trace of the decode loop however often training and callbacks call it."""

import numpy as np
import pytest
import tensorflow as tf

import keras
import tfpg
from tfpg.generation import _compiled_decode, decode_loop, generate
from tfpg.testing import count_train_step_traces

VOCAB = 19


def make_policy(backbone):
    keras.utils.set_random_seed(3)
    policy = tfpg.PolicyNetwork(VOCAB, 16, 24, backbone=backbone, num_layers=2,
                                num_heads=2, max_length=40)
    policy.build()
    policy.lm_head.kernel.assign(policy.lm_head.kernel * 6.0)  # sharper, varied argmax
    return policy


PROMPTS = tf.constant([[0, 0, 1, 5, 6], [1, 7, 8, 9, 10], [0, 1, 4, 4, 12]])


def full_recompute_greedy(policy, prompt_ids, new_tokens):
    """Greedy completions by a full forward pass per token (no cache): [B, N]."""
    sequence = prompt_ids
    for _ in range(new_tokens):
        logits = policy(sequence)[:, -1]
        sequence = tf.concat([sequence, tf.argmax(logits, -1, output_type=tf.int32)[:, None]],
                             axis=1)
    return sequence[:, prompt_ids.shape[1]:].numpy()


def test_in_place_cache_gives_full_recompute_results_in_static_shape_graphs():
    # Static shapes let grappler constant-fold a tf.zeros cache; an in-place update of
    # a folded constant would leak one call's keys into the next. Two calls of the
    # same graph must therefore agree with each other and with full recomputation.
    policy = make_policy("transformer")

    @tf.function
    def greedy(prompt_ids):
        return decode_loop(policy, prompt_ids, 7, tf.constant([0, 0]), 1.0, None, None,
                           True, None, None).token_ids

    first = greedy(PROMPTS).numpy()
    second = greedy(PROMPTS).numpy()
    other = greedy(PROMPTS[::-1]).numpy()
    expected = full_recompute_greedy(policy, PROMPTS, 7)
    np.testing.assert_array_equal(first, expected)
    np.testing.assert_array_equal(second, expected)
    np.testing.assert_array_equal(other, expected[::-1])


def test_in_place_and_functional_cache_updates_agree():
    policy = make_policy("transformer")
    token_ids = tf.constant(np.random.default_rng(0).integers(1, VOCAB, (2, 9)), tf.int32)
    outputs = {}
    for in_place in (False, True):
        cache = policy.initial_cache(2, 9)
        logits, _, cache = policy.call_with_cache(token_ids[:, :4], cache, 0,
                                                  in_place=in_place)
        pieces = [logits]
        for index in range(4, 9):
            logits, _, cache = policy.call_with_cache(token_ids[:, index:index + 1], cache,
                                                      index, in_place=in_place)
            pieces.append(logits)
        outputs[in_place] = tf.concat(pieces, axis=1).numpy()
    np.testing.assert_allclose(outputs[True], outputs[False], atol=1e-6)
    np.testing.assert_allclose(outputs[True], policy(token_ids).numpy(), atol=1e-4)


@pytest.mark.parametrize("backbone", ["lstm", "transformer"])
def test_decode_loop_compiles_with_xla(backbone):
    policy = make_policy(backbone)

    def decode(prompt_ids, greedy):
        out = decode_loop(policy, prompt_ids, 6, tf.constant([4, 2]), 1.0, None, None,
                          greedy, 2, None)
        return out.token_ids, out.mask, out.log_probs

    graph = tf.function(decode)(PROMPTS, True)
    xla = tf.function(decode, jit_compile=True)(PROMPTS, True)
    for got, expected in zip(xla, graph):
        np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=1e-4)
    # Sampling: XLA's Philox streams differ from TensorFlow's, so only the
    # distribution is the same; the log-probs must be those of the sampled ids.
    ids, mask, log_probs = tf.function(decode, jit_compile=True)(PROMPTS, False)
    sequence = tf.concat([PROMPTS, ids], axis=1)
    padding = tf.concat([tf.not_equal(PROMPTS, 0), mask > 0], axis=1)
    logits = policy(sequence, padding_mask=padding)[:, PROMPTS.shape[1] - 1:-1]
    expected = tf.gather(tf.nn.log_softmax(logits), ids, batch_dims=2) * mask
    np.testing.assert_allclose(log_probs.numpy(), expected.numpy(), atol=1e-4)


def test_sample_logger_and_training_trace_generation_once_across_epochs(tmp_path):
    keras.utils.set_random_seed(0)
    tokenizer = tfpg.Tokenizer.from_texts(["a b c d e f g"], level="word")
    policy = tfpg.PolicyNetwork(tokenizer.vocabulary_size, 8, 16)
    agent = tfpg.algorithms.RLOO(
        policy, lambda p, c, m, b: tf.reduce_sum(m, axis=1), group_size=2,
        max_new_tokens=4, eos_id=None)
    agent.compile(optimizer=keras.optimizers.Adam(1e-3))
    traces = count_train_step_traces(agent)
    prompts = tf.constant([[0, 1, 4], [1, 5, 6], [0, 1, 7], [1, 8, 9]] * 4)
    dataset = tf.data.Dataset.from_tensor_slices({"prompt": prompts}).batch(4)
    logger = tfpg.callbacks.SampleLogger(str(tmp_path), tokenizer=tokenizer,
                                         prompts=["a b", "c"], every_n_epochs=1)
    agent.fit(dataset, epochs=4, verbose=0, callbacks=[logger])
    assert len(traces) == 1
    # SampleLogger's greedy generate: one compiled decode, traced once for 4 epochs,
    # and another batch size later does not retrace it either.
    compiled = _compiled_decode(policy, True, False, False, None, policy.structural_ids)
    assert compiled.experimental_get_tracing_count() == 1
    generate(policy, prompts[:3], 4, sampler="greedy", eos_id=None)
    assert compiled.experimental_get_tracing_count() == 1


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_sequence_path_equals_the_keras_layer_with_gradients(cell):
    """RecurrentBackbone runs whole sequences with its own loop and backward pass;
    outputs, final state and every gradient must equal the Keras layer's."""
    from tfpg.models.recurrent_backbone import _run_sequence
    keras.utils.set_random_seed(0)
    layer = {"lstm": keras.layers.LSTM, "gru": keras.layers.GRU}[cell](
        7, return_sequences=True, return_state=True)
    layer.build((None, None, 5))
    for weight in layer.weights:
        weight.assign(tf.random.normal(weight.shape, seed=1) * 0.5)
    x = tf.random.normal([6, 9, 5], seed=2)
    mask = tf.constant(np.random.default_rng(1).random([6, 9]) > 0.3)   # gaps anywhere
    state = tuple(tf.random.normal([6, 7], seed=3 + i)
                  for i in range(2 if cell == "lstm" else 1))
    output_weights = tf.random.normal([6, 9, 7], seed=5)

    def run(fn):
        with tf.GradientTape() as tape:
            tape.watch([x, *state])
            outputs, new_state = fn()
            loss = (tf.reduce_sum(outputs * output_weights)
                    + sum(tf.reduce_sum(s) * (i + 2) for i, s in enumerate(new_state)))
        return outputs, new_state, tape.gradient(loss, [x, *state, *layer.weights])

    def keras_layer():
        outputs, *new_state = layer(x, mask=mask, initial_state=list(state))
        return outputs, new_state

    for mode in (lambda f: f, tf.function):
        expected = mode(lambda: run(keras_layer))()
        got = mode(lambda: run(lambda: _run_sequence(layer.cell, x, mask, state)))()
        for a, b in zip(tf.nest.flatten(got), tf.nest.flatten(expected)):
            np.testing.assert_allclose(np.asarray(tf.convert_to_tensor(a)),
                                       np.asarray(tf.convert_to_tensor(b)), atol=1e-5)


# ----------------------------------------------------------------------------- XLA


def test_jit_compile_auto_follows_the_device_type():
    from tfpg.xla import has_accelerator, resolve_jit_compile
    # On CPU the plain graph is as fast or faster (docs/performance.md); with a GPU
    # or TPU the decode loop is compiled.
    assert resolve_jit_compile("auto") is has_accelerator()
    assert resolve_jit_compile(True) is True and resolve_jit_compile(False) is False
    with pytest.raises(ValueError, match="jit_compile"):
        resolve_jit_compile("yes")
    with tf.distribute.OneDeviceStrategy("/cpu:0").scope():
        assert resolve_jit_compile("auto") is has_accelerator()


@pytest.mark.parametrize("backbone", ["lstm", "transformer"])
def test_generate_with_xla_equals_the_plain_graph_for_greedy_decoding(backbone):
    policy = make_policy(backbone)
    plain = generate(policy, PROMPTS, 6, sampler="greedy", eos_id=2, jit_compile=False)
    xla = generate(policy, PROMPTS, 6, sampler="greedy", eos_id=2, jit_compile=True)
    np.testing.assert_array_equal(xla.token_ids.numpy(), plain.token_ids.numpy())
    np.testing.assert_array_equal(xla.mask.numpy(), plain.mask.numpy())
    np.testing.assert_allclose(xla.log_probs.numpy(), plain.log_probs.numpy(), atol=1e-4)
    # Another length and batch: XLA recompiles for the new sizes, the function is
    # still traced once.
    longer = generate(policy, PROMPTS[:2], 9, sampler="greedy", eos_id=2, jit_compile=True)
    assert longer.token_ids.shape == (2, 9)
    compiled = _compiled_decode(policy, True, False, False, 2, policy.structural_ids, True)
    assert compiled.experimental_get_tracing_count() == 1


def _xla_agent(algorithm, jit_compile, jit_decode):
    keras.utils.set_random_seed(5)
    policy = tfpg.PolicyNetwork(VOCAB, 16, 24)
    options = dict(max_new_tokens=5, eos_id=2, seed=3)
    if algorithm == "ppo":
        options.update(value_model=tfpg.ValueNetwork(VOCAB, 16, 24), num_epochs=2,
                       kl_coef=0.05)
    reward = tfpg.rewards.Keyword([7, 9])
    agent = tfpg.algorithms.ALGORITHMS[algorithm](policy, reward, **options)
    agent.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=jit_compile)
    agent.jit_decode = jit_decode
    return agent


# PPO: several update epochs and minibatches in the compiled step (REINFORCE's one update
# is a special case of it).
@pytest.mark.parametrize("algorithm", ["ppo"])
def test_train_step_compiled_whole_by_xla_equals_plain_step_with_xla_decoding(algorithm):
    # Both sample with XLA's Philox stream, so they see the same completions; the
    # update (forward, backward, clipping, Adam) must then agree.
    prompts = tf.constant([[0, 1, 4, 5], [1, 6, 7, 8], [0, 0, 1, 9], [1, 3, 4, 10]] * 2)
    dataset = tf.data.Dataset.from_tensor_slices({"prompt": prompts}).batch(8)
    whole = _xla_agent(algorithm, True, False)
    decode_only = _xla_agent(algorithm, False, True)
    before = [w.numpy() for w in whole.policy.weights]
    history = {}
    for name, agent in (("whole", whole), ("decode", decode_only)):
        history[name] = agent.fit(dataset, epochs=2, verbose=0).history
    assert whole.last_rollout == {}                  # not kept under a whole-step XLA
    assert decode_only.last_rollout["scores"].shape == (8,)
    np.testing.assert_allclose(history["whole"]["reward"], history["decode"]["reward"],
                               atol=1e-6)
    moved = max(np.abs(w.numpy() - b).max() for w, b in zip(whole.policy.weights, before))
    assert moved > 1e-3
    for a, b in zip(whole.policy.weights, decode_only.policy.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)
