"""Smoke tests of the examples: they import, and their hand-written pieces work on tiny
inputs. (Running them whole takes minutes each; see their docstrings.)"""

import importlib.util
import json
import pathlib

import numpy as np
import pytest
import tensorflow as tf

import tfpg
import tfpg.tasks
from tfpg.envs import TextGenerationEnv

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"
NAMES = ["reinforce_env_loop", "translation_bleu", "arithmetic_verifier", "keyword_control",
         "logged_feedback", "compare_algorithms", "distillation"]


def load(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", NAMES)
def test_example_imports(name):
    assert callable(load(name).main)


def test_hand_written_reinforce_updates_the_policy():
    example = load("reinforce_env_loop")
    task = tfpg.tasks.get_task("arithmetic", seed=0, num_train=8, num_heldout=2,
                               num_pretrain=8)
    tok = task.tokenizer()
    policy = tfpg.PolicyNetwork(tok.vocabulary_size, embedding_dim=8, hidden_dim=8)
    policy.build()
    before = [w.copy() for w in policy.get_weights()]
    def length(prompt_ids, completion_ids, completion_mask, batch):   # never all zero
        return tf.reduce_sum(completion_mask, axis=1)

    env = TextGenerationEnv(policy, task.train, tok, length, max_new_tokens=3)
    example.hand_written_reinforce(policy, env, updates=1, episodes=2, learning_rate=1e-2)
    assert any(not np.allclose(a, b) for a, b in zip(before, policy.get_weights()))


def test_logged_feedback_targets_only_the_completion(tmp_path):
    example = load("logged_feedback")
    tok = tfpg.Tokenizer.from_texts(["12+34=46"], level="char")
    path = tmp_path / "log.jsonl"
    entries = [{"prompt": "12+34=", "completion": "46", "eos": True, "reward": 1.0},
               {"prompt": "12+34=", "completion": "4", "eos": False, "reward": 0.0}]
    path.write_text("".join(json.dumps(e) + "\n" for e in entries))
    x, y, advantages = example.read_log(str(path), tok)
    prompt = tok.encode("12+34=")
    assert x[0].tolist() == prompt + tok.encode("46", add_bos=False)
    assert y[0].tolist() == [0] * (len(prompt) - 1) + tok.encode("46", add_bos=False) + \
        [tok.eos_id]
    assert y[1].tolist() == [0] * (len(prompt) - 1) + tok.encode("4", add_bos=False) + [0, 0]
    assert advantages.tolist() == [0.5, -0.5]
