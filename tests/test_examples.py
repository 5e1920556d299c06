"""Smoke tests of the examples: they import, and their hand-written pieces work on tiny
inputs. (Running them whole takes minutes each; see their docstrings.)"""

import ast
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


# What an example may import: `tfpg`'s own names, its public subpackages (and a
# bundled task's module), never the run pipeline's modules or a private name.
PUBLIC_PACKAGES = ("algorithms", "rewards", "tasks", "envs", "callbacks", "data", "models",
                   "advantages", "losses", "testing")


def _tfpg_references(tree):
    """(dotted module, name) of every `from tfpg... import name` and `tfpg.a.b` use."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "tfpg":
            yield from ((node.module, alias.name) for alias in node.names)
        elif isinstance(node, ast.Import):
            yield from ((alias.name, None) for alias in node.names
                        if alias.name.split(".")[0] == "tfpg")
        elif isinstance(node, ast.Attribute):
            chain = []
            while isinstance(node, ast.Attribute):
                chain.append(node.attr)
                node = node.value
            if isinstance(node, ast.Name) and node.id == "tfpg":
                path = chain[::-1]              # tfpg.<path[0]>.<path[1]>...
                if path[0] in PUBLIC_PACKAGES and len(path) > 1:
                    yield f"tfpg.{path[0]}", path[1]
                else:
                    yield "tfpg", path[0]


def _is_public(module, name):
    parts = module.split(".")
    if any(part.startswith("_") or part == "base" for part in parts + [name or ""]):
        return False            # a private name, or a package's internals (`base`)
    if len(parts) == 1:
        return name is None or name in tfpg.__all__
    if parts[1] not in PUBLIC_PACKAGES:
        return False
    # tfpg.tasks.<task module> is documented as public.
    return len(parts) == 2 or parts[1] == "tasks"


@pytest.mark.parametrize("name", NAMES + ["keras_hub_policy", "pretrain_lm"])
def test_examples_use_only_the_public_api(name):
    tree = ast.parse((EXAMPLES / f"{name}.py").read_text())
    private = sorted({f"{module}:{name}" for module, name in _tfpg_references(tree)
                      if not _is_public(module, name)})
    assert private == []
    for bad in ("from tfpg.algorithms.base import frozen_copy", "tfpg.algorithms.base.x",
                "from tfpg.run.pipeline import make_job", "tfpg.run.cli.main()"):   # the rule bites
        assert not all(_is_public(*ref) for ref in _tfpg_references(ast.parse(bad))), bad


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
