"""The policy interface (`tfpg.models.Policy`): what generation, the trainers and the
export accept, checked once in one line; both of tfpg's policies satisfy it; no
module of tfpg reaches into private Keras / TensorFlow modules."""

import ast
import os
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfpg
from tfpg.models import Policy, check_policy
from tfpg.xla import in_xla_context

PACKAGE = os.path.dirname(tfpg.__file__)
REFUSAL = ("policy must be a tfpg.models.Policy (PolicyNetwork, KerasHubPolicy or a "
           "subclass); got keras.Sequential")


def constant_reward(prompt_ids, completion_ids, completion_mask, batch):
    return tf.zeros([tf.shape(completion_ids)[0]])


@pytest.fixture(scope="module")
def word_tokenizer():
    return tfpg.Tokenizer.from_texts(["one plus two is three"], level="word")


def refusal(call):
    with pytest.raises(TypeError) as error:
        call()
    return str(error.value)


@pytest.mark.parametrize("call", [
    lambda tok, path: tfpg.generate(keras.Sequential(), [[1, 4]], max_new_tokens=2),
    lambda tok, path: tfpg.algorithms.REINFORCE(keras.Sequential(), constant_reward),
    lambda tok, path: tfpg.algorithms.OnPolicyDistillation(keras.Sequential(), None),
    lambda tok, path: tfpg.export_saved_model(keras.Sequential(), tok, path),
], ids=["generate", "trainer", "distillation", "export"])
def test_a_model_that_is_no_policy_is_refused_in_one_line(call, word_tokenizer, tmp_path):
    path = tmp_path / "export"
    assert refusal(lambda: call(word_tokenizer, str(path))) == REFUSAL
    assert not path.exists()                  # refused before anything is written


def test_a_reference_or_teacher_that_is_no_policy_is_named(word_tokenizer):
    policy = tfpg.PolicyNetwork(word_tokenizer.vocabulary_size, 8, 8)
    message = refusal(lambda: tfpg.algorithms.REINFORCE(
        policy, constant_reward, kl_coef=0.1, reference_model=keras.Sequential()))
    assert message == REFUSAL.replace("policy must", "reference_model must")
    message = refusal(lambda: tfpg.algorithms.OnPolicyDistillation(policy, "teacher"))
    assert message.startswith("teacher must be a tfpg.models.Policy") and message.endswith(
        "got str")


class Logits(Policy):
    """A subclass that defines only `call` and the cached step: logits from a table."""

    def __init__(self, vocab_size, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.table = self.add_weight(shape=(vocab_size, vocab_size), name="table",
                                     initializer="zeros")

    def call(self, token_ids, padding_mask=None, training=None):
        return tf.gather(self.table, token_ids)                            # [B, T, V]

    def initial_cache(self, batch_size, max_length):
        return tf.zeros([batch_size])

    def call_with_cache(self, token_ids, cache, index, padding_mask=None, training=None,
                        last_only=False, in_place=False):
        logits = self(token_ids[:, -1:] if last_only else token_ids)
        return logits, logits, cache


class Incomplete(Policy):
    """A subclass with a trunk but no head and no decoding step."""

    def hidden_states(self, token_ids, padding_mask=None, training=None):
        return tf.cast(token_ids, tf.float32)[..., None]


def test_a_subclass_missing_part_of_the_interface_is_told_what():
    assert refusal(lambda: check_policy(Incomplete())) == (
        "policy Incomplete does not define initial_cache, call_with_cache, head_logits, "
        "vocab_size (an int) (see tfpg.models.Policy)")
    assert refusal(lambda: tfpg.generate(Incomplete(), [[1]])).startswith(
        "policy Incomplete does not define initial_cache")


def test_a_subclass_defining_call_is_generated_from_and_scored():
    """Its logits stand in for the hidden states (identity head): the trainers' scoring
    and generation agree with a table whose row 4 prefers id 7, then 7 prefers 3."""
    policy = Logits(9)
    table = np.zeros([9, 9], np.float32)
    table[4, 7] = table[7, 3] = 20.0
    policy.table.assign(table)
    assert check_policy(policy) is policy
    out = tfpg.generate(policy, [[1, 4]], max_new_tokens=2, sampler="greedy", eos_id=None)
    np.testing.assert_array_equal(out.token_ids, [[7, 3]])
    hidden = policy.hidden_states(tf.constant([[4, 7]]))
    np.testing.assert_array_equal(policy.head_logits(hidden), table[[[4, 7]]])
    assert (policy.pad_id, policy.bos_id, policy.eos_id, policy.structural_ids) == (0, 1, 2,
                                                                                   (0, 1))
    assert not policy.is_positional and policy.tokenizer is None and not policy.xla_on_cpu


@pytest.mark.parametrize("backbone, positional", [("lstm", False), ("transformer", True)])
def test_policy_network_satisfies_the_interface(word_tokenizer, backbone, positional):
    policy = tfpg.PolicyNetwork(word_tokenizer.vocabulary_size, 8, 8, backbone=backbone,
                                num_heads=2, max_length=16)
    assert isinstance(policy, Policy) and check_policy(policy) is policy
    tok = word_tokenizer
    assert (policy.pad_id, policy.bos_id, policy.eos_id) == (tok.pad_id, tok.bos_id,
                                                            tok.eos_id) == (0, 1, 2)
    assert policy.structural_ids == (0, 1)
    assert policy.is_positional is positional and policy.max_length == 16
    assert policy.tokenizer is None and policy.xla_on_cpu is False
    assert policy.lora_reference() is None
    logits = policy(tf.constant([[1, 4, 5]]))
    assert logits.dtype == tf.float32 and logits.shape == (1, 3, tok.vocabulary_size)


def test_keras_hub_policy_satisfies_the_interface():
    pytest.importorskip("keras_hub")
    sys.path.insert(0, os.path.dirname(__file__))
    from keras_hub_models import build_causal_lm
    policy = tfpg.KerasHubPolicy(build_causal_lm("gpt2", seed=0), lora_rank=2)
    assert isinstance(policy, Policy) and check_policy(policy) is policy
    # The tiny GPT-2's vocabulary: 256 bytes, 7 merges, then "<|endoftext|>" (263),
    # which is its BOS, EOS and pad: nothing is structural (the EOS must be sampled).
    assert policy.vocab_size == 264
    assert (policy.pad_id, policy.bos_id, policy.eos_id, policy.structural_ids) == (
        263, 263, 263, ())
    assert policy.is_positional and policy.max_length == 64      # a position table
    assert policy.xla_on_cpu is True
    assert isinstance(policy.tokenizer, tfpg.KerasHubTokenizer)
    assert policy.tokenizer.eos_id == policy.eos_id
    reference = policy.lora_reference()
    assert reference is not None and reference.policy is policy
    agent = tfpg.algorithms.REINFORCE(policy, constant_reward, kl_coef=0.1,
                                      reference_model=reference, max_new_tokens=2)
    assert agent.reference_model is reference


def test_in_xla_context_only_while_tracing_for_xla():
    seen = {}

    def probe(key):
        seen[key] = in_xla_context()

    @tf.function(jit_compile=True)
    def compiled(x):
        probe("xla")
        return nested(x)

    @tf.function
    def nested(x):                  # traced inside the XLA function: compiled with it
        probe("nested")
        return x + 1

    @tf.function
    def plain(x):
        probe("plain")
        return x + 1

    compiled(tf.constant(1))
    plain(tf.constant(2))
    probe("eager")
    assert seen == {"xla": True, "nested": True, "plain": False, "eager": False}


def _private_imports(path):
    """(line, module) of each import of a private Keras / TensorFlow module in `path`."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name.startswith(("tensorflow.python", "keras.src")):
                yield node.lineno, name
                break


def test_no_module_imports_private_keras_or_tensorflow():
    found = [f"{os.path.relpath(os.path.join(root, name), PACKAGE)}:{line} {module}"
             for root, _, files in os.walk(PACKAGE) for name in files if name.endswith(".py")
             for line, module in _private_imports(os.path.join(root, name))]
    assert found == []
