"""The chunked language-model head of the train step (`tfpg.algorithms.token_scores`).

The step's loss and gradients are checked against the computation it replaced: the
head on every position at once, the log-softmax, entropy and KL through automatic
differentiation of `[B, N, V]` logits (`whole_logits_scores` below), for every
algorithm, sampler and KL estimator, with many chunks of positions.
"""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

import keras
import tfpg
from tfpg import losses
from tfpg.algorithms import token_scores
from tfpg.algorithms import A2C, GRPO, PPO, REINFORCE, RLOO, SCST
from tfpg.generation import FILTERED_LOGIT, filter_logits

sys.path.insert(0, os.path.dirname(__file__))

VOCAB = 23
CHUNK = 3          # positions per chunk: 32 rows x 5 tokens make 54 chunks


def whole_logits_scores(head, hidden, token_ids, sampling=token_scores.SamplingFilter(),
                        support=None, entropy=False, temperature_log_probs=False,
                        keep_support=False, entropy_gradient=False, chunk_size=None,
                        vocab_size=None):
    """`score_tokens` as the step computed it before chunking: all logits at once."""
    logits = head(hidden)                                                  # [B, N, V]
    scaled = filter_logits(logits, sampling.temperature)
    if support is not None:
        filtered = tf.where(token_scores.support_mask(support, logits.shape[-1]),
                            scaled, FILTERED_LOGIT)
    else:
        filtered = filter_logits(logits, sampling.temperature, sampling.top_k,
                                 sampling.top_p, sampling.suppress_ids)
    result = {}
    if keep_support and sampling.keeps_support:
        flat = tf.reshape(filtered, [-1, filtered.shape[-1]])
        kept = token_scores.kept_support(flat, sampling.top_k, sampling.top_p)
        result["support"] = tf.reshape(kept, tf.concat([tf.shape(token_ids),
                                                        tf.shape(kept)[1:]], 0))
        filtered = tf.where(token_scores.support_mask(result["support"], logits.shape[-1]),
                            scaled, FILTERED_LOGIT)
    result["log_probs"] = losses.token_log_probs(filtered, token_ids)
    if entropy or entropy_gradient:
        result["entropy"] = losses.entropy(filtered)
    if temperature_log_probs:
        result["temperature_log_probs"] = losses.token_log_probs(logits, token_ids,
                                                                 sampling.temperature)
    return token_scores.TokenScores(**result)


def count_fives(prompt_ids, completion_ids, completion_mask, batch):
    hits = tf.cast(tf.equal(completion_ids, 5), tf.float32) * completion_mask
    return tf.reduce_sum(hits, axis=1)


def prompts(rows=8):
    return tf.constant(np.random.default_rng(0).integers(3, VOCAB, (rows, 3)), tf.int32)


def step_loss_and_gradients(agent, chunked, batch=None):
    """(loss, gradients) of one rollout + update, chunked or with whole logits."""
    total, gradients = _step_tensors(agent, chunked, batch)
    return float(total), [g.numpy() for g in gradients]


def make(algorithm, **options):
    options = dict(options)
    keras.utils.set_random_seed(0)
    policy = tfpg.PolicyNetwork(VOCAB, 8, 16, backbone=options.pop("backbone", "lstm"))
    if algorithm in (A2C, PPO):
        options["value_model"] = tfpg.ValueNetwork(VOCAB, 8, 16)
    agent = algorithm(policy, count_fives, max_new_tokens=5, eos_id=2, seed=3,
                      head_chunk_size=CHUNK, **options)
    agent.compile(optimizer="sgd")
    return agent


def assert_same_step(algorithm, **options):
    """Two identical trainers (a rollout may move state: moving averages)."""
    chunked = step_loss_and_gradients(make(algorithm, **options), chunked=True)
    whole = step_loss_and_gradients(make(algorithm, **options), chunked=False)
    assert abs(chunked[0] - whole[0]) <= 1e-6
    for got, want in zip(chunked[1], whole[1]):
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("algorithm, options", [
    (REINFORCE, {"baseline": "moving_average", "kl_coef": 0.1, "entropy_coef": 0.05}),
    (SCST, {"kl_coef": 0.1, "kl_estimator": "k2"}),
    (A2C, {"entropy_coef": 0.05, "temperature": 0.8}),
    (PPO, {"kl_coef": 0.1, "entropy_coef": 0.05, "num_epochs": 1}),
    (RLOO, {"group_size": 4, "kl_coef": 0.1, "top_k": 6}),
    (GRPO, {"group_size": 4, "kl_coef": 0.1, "entropy_coef": 0.05, "top_p": 0.8,
            "backbone": "transformer"}),
], ids=lambda value: getattr(value, "__name__", ""))
def test_each_algorithm_steps_as_with_whole_logits(algorithm, options):
    assert_same_step(algorithm, **options)


# Each sampler once and each KL estimator at least once (the estimator acts on the
# scores after the sampler's filter: the pairs, not the whole cross, cover the code).
@pytest.mark.parametrize("sampling, kl_estimator", [
    ({"sampler": "greedy"}, "k1"), ({"temperature": 0.7}, "k2"), ({"top_k": 4}, "k3"),
    ({"top_p": 0.7}, "k1"), ({"top_k": 9, "top_p": 0.9, "temperature": 1.3}, "k3")])
def test_each_sampler_and_kl_estimator_steps_as_with_whole_logits(sampling, kl_estimator):
    """GRPO with its KL in the loss (temperature log-probs differentiated) and an
    entropy bonus; 2 epochs, so the rollout keeps its support and the update scores
    on it. (Not `top_entropy_quantile`: the rows of a group tie on their first
    token's entropy, and a last-bit difference between matmul kernels of different
    sizes decides which of them the quantile keeps.)"""
    assert_same_step(GRPO, group_size=4, kl_coef=0.2, kl_estimator=kl_estimator,
                     entropy_coef=0.05, num_epochs=2, **sampling)


def hub_policy(family="gpt2"):
    from keras_hub_models import build_causal_lm
    return tfpg.KerasHubPolicy(build_causal_lm(family))


def hub_prompts(policy):
    ids = np.random.default_rng(0).integers(3, 40, (8, 3)).astype(np.int32)
    return {"prompt": ids, "prompt_mask": np.ones_like(ids)}


@pytest.mark.parametrize("family", ["gpt2", "gemma", "gemma3", "llama3"])
def test_keras_hub_heads_step_as_with_whole_logits(family):
    """The head is the family's own reverse embedding, run per chunk: Gemma 2's final
    soft-capping, Gemma 3's untied... every transform kept exact (GRPO with a KL)."""
    def agent():
        keras.utils.set_random_seed(0)
        trainer = GRPO(hub_policy(family), count_fives, group_size=4, kl_coef=0.1,
                       max_new_tokens=4, seed=3, head_chunk_size=CHUNK, entropy_coef=0.05)
        trainer.compile(optimizer="sgd")
        return trainer

    got = step_loss_and_gradients(agent(), True, hub_prompts(None))
    want = step_loss_and_gradients(agent(), False, hub_prompts(None))
    assert abs(got[0] - want[0]) <= 1e-6
    for a, b in zip(got[1], want[1]):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)


def test_lora_xla_and_mixed_precision_steps_as_with_whole_logits():
    """A LoRA policy against its adapters-off reference, the step compiled by XLA
    (`jit_compile=True`), and a mixed_bfloat16 Transformer (float32 head, float32
    log-softmax): chunked equals whole logits."""
    def lora_agent():
        keras.utils.set_random_seed(0)
        policy = tfpg.KerasHubPolicy(hub_policy().causal_lm, lora_rank=2)
        trainer = GRPO(policy, count_fives, group_size=4, kl_coef=0.1, max_new_tokens=4,
                       seed=3, head_chunk_size=CHUNK)
        trainer.compile(optimizer="sgd")
        return trainer

    def compare(make_agent, batch=None, jit=False, atol=1e-6):
        results = []
        for chunked in (True, False):
            agent = make_agent()
            step = lambda: step_loss_and_gradients(agent, chunked, batch)  # noqa: E731
            if jit:
                function = tf.function(lambda: _step_tensors(agent, chunked),
                                       jit_compile=True)
                total, gradients = function()
                step = lambda: (float(total), [g.numpy() for g in gradients])  # noqa: E731
            results.append(step())
        assert abs(results[0][0] - results[1][0]) <= atol
        for a, b in zip(results[0][1], results[1][1]):
            np.testing.assert_allclose(a, b, atol=atol, rtol=0)

    compare(lora_agent, hub_prompts(None))
    compare(lambda: make(GRPO, group_size=4, kl_coef=0.1, top_k=6, num_epochs=2,
                         backbone="transformer"), jit=True)
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        compare(lambda: make(PPO, kl_coef=0.1, entropy_coef=0.05, num_epochs=1,
                             backbone="transformer"))
    finally:
        keras.mixed_precision.set_global_policy("float32")


def _step_tensors(agent, chunked, batch=None):
    if not chunked:
        original = tfpg.algorithms.collect.score_tokens
        tfpg.algorithms.collect.score_tokens = whole_logits_scores
    try:
        rollout, batch = agent.collect_rollout(batch or {"prompt": prompts()})
        rollout.update(agent.compute_advantages(rollout, batch))
        total, gradients, _ = agent.loss_and_gradients(rollout)
    finally:
        if not chunked:
            tfpg.algorithms.collect.score_tokens = original
    return total, [tf.convert_to_tensor(g) for g in gradients]


def test_keras_hub_attention_in_chunks_equals_keras_attention(monkeypatch):
    """GPT-2's full passes attend in chunks of queries (`chunked_attention`): the same
    step (loss, gradients) as Keras' own attention, on left-padded prompts."""
    from tfpg.models import chunked_attention, keras_hub_backbone
    monkeypatch.setattr(chunked_attention, "CHUNK_LOGITS", 64)      # many chunks
    ids = np.random.default_rng(1).integers(3, 40, (8, 5)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[:3, :2] = 0                                                  # left padding
    results = []
    for chunked in (True, False):
        monkeypatch.setattr(keras_hub_backbone, "CHUNKED_ATTENTION", chunked)
        keras.utils.set_random_seed(0)
        trainer = GRPO(hub_policy(), count_fives, group_size=4, kl_coef=0.1,
                       max_new_tokens=4, seed=3)
        trainer.compile(optimizer="sgd")
        results.append(step_loss_and_gradients(trainer, True, {"prompt": ids,
                                                               "prompt_mask": mask}))
    assert abs(results[0][0] - results[1][0]) <= 1e-6
    for a, b in zip(results[0][1], results[1][1]):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)


@pytest.mark.parametrize("hub", [False, True])
def test_gradient_checkpointing_gives_the_same_step(hub):
    """The trunk rematerialised block by block: the same loss and gradients (tfpg's
    Transformer; a KerasHub GPT-2 with a critic on its trunk)."""
    def agent(checkpointing):
        keras.utils.set_random_seed(0)
        if not hub:
            return make(GRPO, group_size=4, kl_coef=0.1, backbone="transformer",
                        gradient_checkpointing=checkpointing)
        policy = hub_policy()
        trainer = PPO(policy, count_fives, value_model=tfpg.ValueNetwork.from_policy(policy),
                      max_new_tokens=4, seed=3, num_epochs=1,
                      gradient_checkpointing=checkpointing)
        trainer.compile(optimizer="sgd")
        return trainer

    batch = hub_prompts(None) if hub else None
    got = step_loss_and_gradients(agent(True), True, batch)
    want = step_loss_and_gradients(agent(False), True, batch)
    assert abs(got[0] - want[0]) <= 1e-6
    for a, b in zip(got[1], want[1]):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)


def test_the_kept_support_is_packed_and_unpacks_exactly():
    rng = np.random.default_rng(0)
    mask = rng.random((3, 4, 21)) < 0.3
    packed = token_scores.pack_mask(tf.constant(mask))
    assert packed.dtype == tf.uint8 and packed.shape == (3, 4, 3)
    np.testing.assert_array_equal(token_scores.unpack_mask(packed, 21).numpy(), mask)
    ids = token_scores.support_mask(tf.constant([[[4, -1, 6]]]), 8).numpy()
    assert ids.tolist() == [[[i in (4, 6) for i in range(8)]]]


def test_chunk_size_changes_memory_not_results():
    """One chunk, 3 positions and 1 position a chunk: the same scores, in the graph
    and under XLA."""
    keras.utils.set_random_seed(0)
    head = keras.layers.Dense(VOCAB)
    hidden = tf.random.normal([4, 6, 8])
    tokens = tf.random.uniform([4, 6], 0, VOCAB, tf.int32)
    sampling = token_scores.SamplingFilter(0.9, None, 0.95, (0, 1))
    results = []
    for chunk_size, jit in ((10**6, False), (3, False), (1, True)):
        function = tf.function(lambda h, t, c=chunk_size: token_scores.score_tokens(
            head, h, t, sampling, entropy=True, temperature_log_probs=True,
            keep_support=True, chunk_size=c), jit_compile=jit)
        results.append(function(hidden, tokens))
    for other in results[1:]:
        for got, want in zip(other, results[0]):
            np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-6)


MEMORY_SCRIPT = textwrap.dedent("""
    import os, sys, threading, time
    import numpy as np, tensorflow as tf, keras, tfpg

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    chunk = int(sys.argv[1])
    vocab, new_tokens = 32768, 128
    keras.utils.set_random_seed(0)
    policy = tfpg.PolicyNetwork(vocab, 16, 16)
    def reward(prompt_ids, completion_ids, completion_mask, batch):
        return tf.reduce_mean(completion_mask, axis=1)
    agent = tfpg.algorithms.GRPO(policy, reward, group_size=4, kl_coef=0.04,
                                 max_new_tokens=new_tokens, eos_id=None,
                                 head_chunk_size=chunk)
    agent.compile(optimizer="adam")
    prompts = tf.constant(np.random.default_rng(0).integers(3, vocab, (4, 8)), tf.int32)
    data = tf.data.Dataset.from_tensors({"prompt": prompts})
    # The resident set sampled every 10 ms through the step, above its value before.
    before, peak, done = rss(), [0], threading.Event()
    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.01)
    sampler = threading.Thread(target=sample)
    sampler.start()
    agent.fit(data, epochs=1, verbose=0)
    done.set()
    sampler.join()
    print((max(peak[0], rss()) - before) / 2 ** 20)
""")


def peak_mib_of_a_step(chunk):
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    result = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(chunk)],
                            capture_output=True, text=True, env=environment, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    return float(result.stdout.split()[-1])


def test_the_step_holds_one_chunk_of_logits_not_all():
    """A GRPO step with a reference at V = 32,768, N = 128, 16 rows: its peak resident
    memory grows with the chunk, not with B * N * V (2,048 positions: 256 MiB a
    float32 [B, N, V] tensor). 128 positions a chunk make 16 MiB [r, V] tensors; the
    step's peak stays under 24 of them (384 MiB), where the whole projection at once
    (one chunk of all 2,048) needs more than 3 [B, N, V] tensors."""
    chunked = peak_mib_of_a_step(128)
    whole = peak_mib_of_a_step(2048)
    print(f"peak above baseline: {chunked:.0f} MiB chunked, {whole:.0f} MiB whole")
    assert chunked < 24 * 16
    assert whole > 3 * 256
