"""KerasHub causal LMs as tfpg policies (issue 12): tiny random models of every
supported family, saved as local presets (tests/keras_hub_models.py)."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

keras_hub = pytest.importorskip("keras_hub")

import tfpg  # noqa: E402
from tfpg.data import pad_ids  # noqa: E402
from tfpg.generation import filter_logits  # noqa: E402
from tfpg.text.keras_hub_tokenizer import KerasHubTokenizer  # noqa: E402
from tfpg.xla import resolve_jit_compile  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from keras_hub_models import FAMILIES, save_preset  # noqa: E402


@pytest.fixture(scope="module")
def presets(tmp_path_factory):
    """family -> local preset directory, each written once per module."""
    root = tmp_path_factory.mktemp("presets")
    cache = {}

    def get(family):
        if family not in cache:
            cache[family] = save_preset(family, root)
        return cache[family]
    return get


def left_pad(rows, pad_id):
    """(ids int32 [B, P] left-padded with pad_id, mask int32 [B, P])."""
    return pad_ids(rows, "left", pad_id)


def toy_reward(prompt_ids, completion_ids, completion_mask, batch):
    """Fraction of completion tokens in the lower half of the vocabulary: [B]."""
    low = tf.cast(completion_ids < 128, tf.float32) * completion_mask
    return tf.reduce_sum(low, 1) / tf.maximum(tf.reduce_sum(completion_mask, 1), 1.0)


PROMPTS = ["1 + 2 =", "the cat", "a dog ran home", "!"]


# --------------------------------------------------------------- left padding


@pytest.mark.parametrize("family", FAMILIES)
def test_left_padded_batch_decodes_like_each_prompt_alone(presets, family):
    policy = tfpg.KerasHubPolicy.from_preset(presets(family))
    bos = [] if policy.bos_id is None else [policy.bos_id]
    # Real id-0 tokens inside the prompts ("!" in the byte-pair vocabularies).
    prompts = [bos + [0, 5, 0, 7, 9, 11], bos + [0, 9], bos + [12, 0, 0]]
    ids, mask = left_pad(prompts, policy.pad_id)
    new = 5
    # The plain graph here (fast to trace); test_xla_decoding_matches_the_plain_graph
    # covers the XLA loop that jit_compile="auto" picks for KerasHub models.
    out = tfpg.generate(policy, ids, prompt_mask=mask, max_new_tokens=new,
                        sampler="greedy", eos_id=None, jit_compile=False)
    suppress = policy.structural_ids or None
    for row, prompt in enumerate(prompts):
        completion = out.token_ids.numpy()[row].tolist()
        # Full recompute of the prompt alone (no padding) plus the completion.
        logits = policy(tf.constant([prompt + completion]))[0, len(prompt) - 1:-1]
        filtered = filter_logits(logits, suppress_ids=suppress)             # [N, V]
        assert tf.argmax(filtered, -1).numpy().tolist() == completion
        log_probs = tf.gather(tf.nn.log_softmax(filtered), completion, batch_dims=1)
        np.testing.assert_allclose(out.log_probs.numpy()[row], log_probs.numpy(), atol=1e-5)
    # The padded rows' logits do depend on the mask: without it they differ.
    masked = policy(tf.constant(ids), padding_mask=tf.constant(mask))
    unmasked = policy(tf.constant(ids))
    assert np.abs(masked[1, -1] - unmasked[1, -1]).max() > 1e-3


@pytest.mark.parametrize("family", ["gpt2", "gemma3"])
def test_xla_decoding_matches_the_plain_graph(presets, family):
    policy = tfpg.KerasHubPolicy.from_preset(presets(family))
    assert resolve_jit_compile("auto", policy)           # XLA by default, also on CPU
    ids, mask = left_pad([[policy.bos_id, 0, 5, 0, 7], [policy.bos_id, 9]], policy.pad_id)
    plain, xla = (tfpg.generate(policy, ids, prompt_mask=mask, max_new_tokens=4,
                                sampler="greedy", eos_id=None, jit_compile=jit)
                  for jit in (False, True))
    assert xla.token_ids.numpy().tolist() == plain.token_ids.numpy().tolist()
    np.testing.assert_allclose(xla.log_probs, plain.log_probs, atol=1e-5)


def test_attributes_come_from_the_tokenizer(presets):
    gpt2 = tfpg.KerasHubPolicy.from_preset(presets("gpt2"))
    end = gpt2.tokenizer.hub_tokenizer.token_to_id("<|endoftext|>")
    assert (gpt2.pad_id, gpt2.bos_id, gpt2.eos_id, gpt2.structural_ids) == (end, end, end, ())
    gemma = tfpg.KerasHubPolicy.from_preset(presets("gemma"))
    assert (gemma.pad_id, gemma.bos_id, gemma.eos_id, gemma.structural_ids) == (0, 2, 1, (0, 2))
    qwen = tfpg.KerasHubPolicy.from_preset(presets("qwen2"))
    assert qwen.bos_id is None and qwen.pad_id == qwen.eos_id
    # eos_id="auto" (the default) stops at the policy's own EOS.
    assert tfpg.algorithms.GRPO(gemma, reward_fn=toy_reward, group_size=2).eos_id == 1


def test_unsupported_family_is_one_clear_error():
    backbone = keras_hub.models.OPTBackbone(vocabulary_size=20, num_layers=1, num_heads=2,
                                            hidden_dim=8, intermediate_dim=16,
                                            max_sequence_length=16)
    with pytest.raises(ValueError, match="OPTBackbone is not a supported.*GPT-2.*Gemma.*Qwen 3"):
        tfpg.KerasHubPolicy(keras_hub.models.OPTCausalLM(backbone, preprocessor=None))
    with pytest.raises(ValueError, match="takes a keras_hub.models.CausalLM"):
        tfpg.KerasHubPolicy(backbone)


def test_bfloat16_weights_give_float32_logits(presets):
    policy = tfpg.KerasHubPolicy.from_preset(presets("llama3"), dtype="bfloat16")
    assert policy.causal_lm.backbone.token_embedding.compute_dtype == "bfloat16"
    ids, mask = left_pad([[policy.bos_id, 5, 6], [policy.bos_id, 7]], policy.pad_id)
    logits = policy(ids, padding_mask=mask)
    assert logits.dtype == tf.float32 and logits.shape == (2, 3, policy.vocab_size)
    cache = policy.initial_cache(2, 4)
    assert cache["kv"].dtype == tf.bfloat16
    step, _, _ = policy.call_with_cache(ids, cache, 0, padding_mask=mask, last_only=True)
    assert step.dtype == tf.float32 and step.shape == (2, 1, policy.vocab_size)
    # bfloat16 rounding only: the cached step agrees with the full forward.
    np.testing.assert_allclose(step[:, 0], logits[:, -1], atol=0.05)


# ------------------------------------------------------------------ tokenizer


@pytest.mark.parametrize("family", ["gpt2", "gemma"])
def test_tokenizer_matches_the_interface_and_its_graph_layers(presets, family, tmp_path):
    tok = KerasHubTokenizer.from_preset(presets(family))
    assert tok.vocabulary_size == tok.hub_tokenizer.vocabulary_size()
    texts = ["the cat sat", "1 + 2 = 3"]
    encoded = tok.encode(texts)
    assert all(row[0] == tok.bos_id for row in encoded)
    assert tok.decode(encoded) == texts
    assert tok.encode("the cat sat", add_bos=False) == encoded[0][1:]
    assert tok.encode("the cat sat", max_length=3) == encoded[0][:3]
    assert tok.encode("the cat sat", max_length=3, truncate="left") == \
        [tok.bos_id] + encoded[0][-2:]
    # A completion: text, EOS, then the pad id decode_loop writes after EOS.
    completion = tok.encode("the mat", add_bos=False) + [tok.eos_id, tok.pad_id]
    assert tok.decode(completion) == "the mat"
    assert tok.decode([tok.eos_id, tok.pad_id, tok.pad_id]) == ""
    ids, mask = tok.string_to_ids_layer(return_mask=True)(tf.constant(texts))
    expected_ids, expected_mask = left_pad(encoded, tok.pad_id)
    assert ids.numpy().tolist() == expected_ids.tolist()
    assert mask.numpy().tolist() == expected_mask.tolist()
    strings = tok.ids_to_string_layer()(tf.constant(left_pad([completion, encoded[1]],
                                                             tok.pad_id)[0]))
    assert [s.decode() for s in strings.numpy()] == ["the mat", texts[1]]
    tok.save(tmp_path / "tok.json")
    assert KerasHubTokenizer.load(tmp_path / "tok.json").encode(texts) == encoded
    policy = tfpg.KerasHubPolicy.from_preset(presets(family))
    assert policy.tokenizer.encode(texts) == encoded


def test_text_rewards_read_keras_hub_completions(presets):
    tok = KerasHubTokenizer.from_preset(presets("gpt2"))
    seen = []
    reward = tfpg.rewards.PythonReward(lambda prompts, completions: seen.extend(
        zip(prompts, completions)) or [1.0] * len(prompts), tokenizer=tok)
    ids, mask = left_pad([tok.encode("1 + 2 ="), tok.encode("!")], tok.pad_id)
    completion = tok.encode(" 3", add_bos=False)
    completions = tf.constant([completion + [tok.eos_id, 0, 0], [0, 0, tok.eos_id] + completion])
    completion_mask = tf.constant([[1.0] * (len(completion) + 1) + [0.0, 0.0],
                                   [1.0] * 3 + [0.0] * len(completion)])
    reward(tf.constant(ids), completions, completion_mask, {"prompt": tf.constant(ids)})
    # Id 0 is GPT-2's "!": a real token in a completion, never padding.
    assert seen == [("1 + 2 =", " 3"), ("!", "!!")]
    exact = tfpg.rewards.ExactMatch(answer_key="answer", tokenizer=tok, eos_id=tok.eos_id)
    scores = exact(None, completions, completion_mask, {"answer": tf.constant([" 3", "!!"])})
    assert scores.numpy().tolist() == [1.0, 1.0]


def test_prompt_dataset_masks_gpt2_padding(presets):
    tok = KerasHubTokenizer.from_preset(presets("gpt2"))
    batch = next(iter(tfpg.data.prompt_dataset(["!", "the cat"], tok, batch_size=2)))
    long_row = tok.encode("the cat")
    assert batch["prompt"].numpy()[0, -2:].tolist() == [tok.bos_id, 0]    # "!" is id 0
    assert batch["prompt_mask"].numpy().tolist() == [
        [0] * (len(long_row) - 2) + [1, 1], [1] * len(long_row)]


# ----------------------------------------------------------------- training


def grpo(policy, **options):
    tok = policy.tokenizer
    dataset = tfpg.data.prompt_dataset(PROMPTS, tok, batch_size=4, repeat=True)
    options = {"group_size": 4, "max_new_tokens": 4, **options}
    agent = tfpg.algorithms.GRPO(policy, reward_fn=toy_reward, **options)
    return agent, dataset


def test_sampled_log_probs_equal_the_trainers_scoring(presets):
    policy = tfpg.KerasHubPolicy.from_preset(presets("gpt2"))
    agent, dataset = grpo(policy, top_k=20, temperature=0.7)
    agent.compile(optimizer="sgd", jit_compile=False)
    batch = next(iter(dataset))
    sampled = agent.sample(batch["prompt"], agent.sampling_seed(),
                           prompt_mask=batch["prompt_mask"])
    rollout = {"prompt_ids": batch["prompt"], "prompt_mask": batch["prompt_mask"],
               "completion_ids": sampled.token_ids, "completion_mask": sampled.mask}
    scored = agent.score_completions(policy, rollout, sampled.mask).log_probs
    assert float(tf.reduce_sum(sampled.mask)) > 4
    np.testing.assert_allclose(scored.numpy(), sampled.log_probs.numpy(), atol=1e-5)


def test_lora_trains_only_the_adapters_and_the_reference_stays_the_base(presets, tmp_path):
    preset = presets("gpt2")
    policy = tfpg.KerasHubPolicy.from_preset(preset, lora_rank=2)
    base = tfpg.KerasHubPolicy.from_preset(preset)
    adapters = {id(v) for v in policy.trainable_variables}
    assert adapters and all("lora_kernel" in v.path for v in policy.trainable_variables)
    before = {v.path: v.numpy().copy() for v in policy.weights}
    agent, dataset = grpo(policy, kl_coef=0.1)
    assert not isinstance(agent.reference_model, keras.Model)      # a view, no copy
    agent.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=False)
    agent.fit(dataset, epochs=1, steps_per_epoch=2, verbose=0)
    moved = [v.path for v in policy.weights if not np.array_equal(before[v.path], v.numpy())]
    assert moved and all("lora_kernel" in path for path in moved), moved
    assert any(not np.array_equal(before[v.path], v.numpy()) for v in policy.weights
               if "lora_kernel" in v.path)
    ids, mask = left_pad([[policy.bos_id, 5, 0, 7], [policy.bos_id, 9]], policy.pad_id)
    reference = agent.reference_model(ids, padding_mask=mask)
    np.testing.assert_allclose(reference, base(ids, padding_mask=mask), atol=1e-6)
    assert np.abs(policy(ids, padding_mask=mask) - reference).max() > 1e-4
    # A frozen copy and a checkpoint round trip keep the adapters.
    copy = tfpg.copy_policy(policy, trainable=False)
    np.testing.assert_allclose(copy(ids, padding_mask=mask), policy(ids, padding_mask=mask),
                               atol=1e-6)
    path = tf.train.Checkpoint(policy=policy).save(str(tmp_path / "ckpt"))
    fresh = tfpg.KerasHubPolicy.from_preset(preset, lora_rank=2)
    tf.train.Checkpoint(policy=fresh).restore(path).assert_existing_objects_matched()
    np.testing.assert_allclose(fresh(ids, padding_mask=mask), policy(ids, padding_mask=mask),
                               atol=1e-6)


def test_grpo_raises_a_toy_reward(presets):
    policy = tfpg.KerasHubPolicy.from_preset(presets("gpt2"))
    agent, dataset = grpo(policy, kl_coef=0.0)
    # A tiny, nearly uniform model: a large step. The plain graph: tracing is faster.
    agent.compile(optimizer=keras.optimizers.Adam(0.1), jit_compile=False)
    history = agent.fit(dataset, epochs=5, steps_per_epoch=3, verbose=0).history["reward"]
    assert history[-1] > history[0] + 0.2, history


def test_ppo_with_a_shared_trunk_critic_raises_a_toy_reward(presets):
    policy = tfpg.KerasHubPolicy.from_preset(presets("gpt2"))
    critic = tfpg.ValueNetwork.from_policy(policy)
    assert critic.backbone is policy.backbone
    agent = tfpg.algorithms.PPO(policy, value_model=critic, reward_fn=toy_reward,
                                max_new_tokens=4, num_epochs=2, kl_coef=0.0)
    dataset = tfpg.data.prompt_dataset(PROMPTS * 2, policy.tokenizer, batch_size=8,
                                       repeat=True)
    agent.compile(optimizer=keras.optimizers.Adam(0.1), jit_compile=False)
    history = agent.fit(dataset, epochs=5, steps_per_epoch=3, verbose=0).history["reward"]
    assert history[-1] > history[0] + 0.2, history


def test_a2c_with_a_separate_keras_hub_critic(presets):
    preset = presets("qwen3")
    policy = tfpg.KerasHubPolicy.from_preset(preset)
    critic = tfpg.models.KerasHubValueNetwork.from_preset(preset)
    assert not set(map(id, critic.weights)) & set(map(id, policy.weights))
    agent = tfpg.algorithms.A2C(policy, value_model=critic, reward_fn=toy_reward,
                                max_new_tokens=3)
    dataset = tfpg.data.prompt_dataset(PROMPTS, policy.tokenizer, batch_size=4, repeat=True)
    agent.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=False)
    head = critic.value_head.kernel.numpy().copy()
    logs = agent.fit(dataset, epochs=1, steps_per_epoch=2, verbose=0).history
    assert np.isfinite(logs["value_loss"][-1])
    assert not np.array_equal(head, critic.value_head.kernel.numpy())


# ------------------------------------------------------------ saving, export


@pytest.mark.parametrize("lora_rank", [None, 2])
def test_keras_file_round_trip(presets, tmp_path, lora_rank):
    policy = tfpg.KerasHubPolicy.from_preset(presets("gemma3"), lora_rank=lora_rank)
    if lora_rank:      # make the adapters matter
        for layer in policy.lora_layers():
            layer.lora_kernel_b.assign(tf.random.normal(layer.lora_kernel_b.shape, seed=1))
    path = str(tmp_path / "policy.keras")
    policy.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, tfpg.KerasHubPolicy) and loaded.lora_rank == lora_rank
    ids, mask = left_pad([[2, 5, 0, 7], [2, 9]], policy.pad_id)
    np.testing.assert_allclose(loaded(ids, padding_mask=mask), policy(ids, padding_mask=mask),
                               atol=1e-5)
    assert loaded.tokenizer.encode("the cat") == policy.tokenizer.encode("the cat")


SERVE = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (registers the tokenizer ops)
    loaded = tf.saved_model.load(sys.argv[1])
    out = loaded.signatures["generate"](prompts=tf.constant(json.loads(sys.argv[2])))
    print(json.dumps([t.decode("utf-8", "replace") for t in out["completions"].numpy()]))
    print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("tfpg", "keras_hub"))))
""")


def test_export_serves_in_a_fresh_process_without_tfpg(presets, tmp_path):
    policy = tfpg.KerasHubPolicy.from_preset(presets("gpt2"))
    tok = policy.tokenizer
    prompts = ["1 + 2 =", "the cat sat on"]
    ids, mask = left_pad(tok.encode(prompts), tok.pad_id)
    greedy = tfpg.generate(policy, ids, prompt_mask=mask, max_new_tokens=6, sampler="greedy",
                           jit_compile=False)
    expected = tok.decode(greedy.token_ids)
    path = tfpg.export_saved_model(policy, tok, str(tmp_path / "export"), max_new_tokens=6)
    # The fresh process starts TensorFlow (seconds) while this one loads the export.
    serve = subprocess.Popen([sys.executable, "-c", SERVE, path, json.dumps(prompts)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert tfpg.load(path).generate(prompts) == expected
    out, err = serve.communicate(timeout=300)
    assert serve.returncode == 0, err[-2000:]
    completions, imported = [json.loads(line) for line in out.strip().splitlines()[-2:]]
    assert completions == expected
    assert imported == []


def test_mirrored_lora_step_equals_one_device():
    """One GRPO step (LoRA, KL to the adapters-off reference) on 2 logical CPUs under
    MirroredStrategy vs one device (the script configures the devices first)."""
    script = os.path.join(os.path.dirname(__file__), "scripts", "mirrored_keras_hub_step.py")
    result = subprocess.run([sys.executable, script, "lora"], capture_output=True, text=True,
                            timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-2000:]
    name, difference, update = result.stdout.split()[-3:]
    assert name == "lora" and float(update) > 1e-4
    assert float(difference) < 1e-6


def test_example_vocabulary_builds_a_gpt2_tokenizer():
    import importlib.util
    path = os.path.join(os.path.dirname(__file__), "..", "examples", "keras_hub_policy.py")
    spec = importlib.util.spec_from_file_location("example_keras_hub_policy", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    vocabulary, merges = example.train_vocabulary(["12+34=46", "57+38=85"] * 5)
    assert len(vocabulary) == 258 and len(merges) == 1
    tok = KerasHubTokenizer(keras_hub.models.GPT2Tokenizer(vocabulary=vocabulary,
                                                           merges=merges))
    assert tok.decode(tok.encode("57+38=")) == "57+38="
