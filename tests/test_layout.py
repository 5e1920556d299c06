"""The package's layout holds (docs/layout.md): a small core at the top level, the
command line only in `tfpg.run`, and a trainer's private state only in `tfpg.algorithms`."""

import ast
import os

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tfpg")


def modules():
    """(path relative to tfpg/, parsed module) of every Python file of the package."""
    for directory, _, files in os.walk(PACKAGE):
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                with open(path, encoding="utf-8") as f:
                    yield os.path.relpath(path, PACKAGE), ast.parse(f.read(), path)


def imported_modules(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
            if node.module == "tfpg":
                yield from (f"tfpg.{alias.name}" for alias in node.names)


def test_the_top_level_holds_at_most_ten_modules_besides_subpackages():
    top = sorted(name for name in os.listdir(PACKAGE)
                 if name.endswith(".py") and name != "__init__.py")
    assert len(top) <= 10, top
    packages = sorted(name for name in os.listdir(PACKAGE)
                      if os.path.isfile(os.path.join(PACKAGE, name, "__init__.py")))
    assert packages == ["algorithms", "callbacks", "envs", "guards", "hf", "models", "rewards",
                        "run", "tasks", "text"]


def test_only_the_command_line_package_imports_it():
    outside = [(path, module) for path, tree in modules()
               if not path.startswith("run" + os.sep) and path != "__main__.py"
               for module in imported_modules(tree)
               if module == "tfpg.run" or module.startswith("tfpg.run.")]
    assert outside == []


TRAINER_NAMES = {"trainer", "agent"}


def private_trainer_attributes(tree):
    """`trainer._x`, `agent._x`, `run.agent._x` and a callback's `self.model._x`."""
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                and not node.attr.startswith("__")):
            continue
        owner = node.value
        if isinstance(owner, ast.Name) and owner.id in TRAINER_NAMES:
            yield f"{owner.id}.{node.attr}"
        elif isinstance(owner, ast.Attribute) and (
                owner.attr in TRAINER_NAMES
                or (owner.attr == "model" and isinstance(owner.value, ast.Name)
                    and owner.value.id == "self")):
            yield f"{ast.unparse(owner)}.{node.attr}"


def test_no_module_outside_algorithms_touches_a_trainers_private_attribute():
    found = [(path, use) for path, tree in modules()
             if not path.startswith("algorithms" + os.sep)
             for use in private_trainer_attributes(tree)]
    assert found == []


@pytest.mark.parametrize("source,expected", [
    ("trainer._record(logs)", ["trainer._record"]),
    ("self.model._last_rollout", ["self.model._last_rollout"]),
    ("run.agent._update_kl_coef()", ["run.agent._update_kl_coef"]),
    ("trainer.record(logs); self._cache; trainer.__class__", []),
])
def test_the_private_attribute_check_sees_what_it_looks_for(source, expected):
    assert list(private_trainer_attributes(ast.parse(source))) == expected
