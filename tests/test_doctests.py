"""Every `>>>` example in tfpg's docstrings runs (one case per documented object), and no
module points at files outside the repository."""

import doctest
import inspect
import importlib
import pathlib
import pkgutil
import re

import pytest

import tfpg

PACKAGE_DIR = pathlib.Path(tfpg.__file__).parent
OPTIONS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def module_names():
    names = ["tfpg"]
    names += [name for _, name, _ in pkgutil.walk_packages(tfpg.__path__, "tfpg.")]
    return sorted(names)


def examples_globs():
    # What the examples assume without importing it themselves.
    import keras
    import numpy as np
    import tensorflow as tf
    return {"tfpg": tfpg, "keras": keras, "tf": tf, "np": np}


def collect():
    """The doctests of every module, each object once (the module that defines it)."""
    finder = doctest.DocTestFinder(exclude_empty=True)
    tests = []
    for name in module_names():
        module = importlib.import_module(name)
        tests += [t for t in finder.find(module, name, extraglobs=examples_globs()) if t.examples]
    return sorted(tests, key=lambda t: t.name)


DOCTESTS = collect()


def all_skipped(test):
    return all(example.options.get(doctest.SKIP) for example in test.examples)


def test_examples_were_collected():
    assert len(DOCTESTS) > 50
    assert "tfpg" in {t.name for t in DOCTESTS}          # the package's own example


@pytest.mark.parametrize("test", DOCTESTS, ids=[t.name for t in DOCTESTS])
def test_docstring_examples_run(test):
    if all_skipped(test):
        pytest.skip("every example is +SKIP (downloads, a user's files, or minutes of work)")
    report = []
    runner = doctest.DocTestRunner(optionflags=OPTIONS)
    test.globs = dict(test.globs)            # each case starts from the module's namespace
    try:
        result = runner.run(test, out=report.append, clear_globs=True)
    finally:
        import keras
        keras.mixed_precision.set_global_policy("float32")
    assert result.failed == 0, "".join(report)


# Documents of the development setup and paths of one machine or of installed libraries.
OUTSIDE_REFERENCE = re.compile(r"\.\./shared|DESIGN\.md|(?<![\w.])/(?:work|tmp|home|root)/"
                               r"|site-packages|keras_hub/src/")


def test_no_module_refers_to_files_outside_the_repository():
    offenders = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if OUTSIDE_REFERENCE.search(line):
                offenders.append(f"{path.relative_to(PACKAGE_DIR.parent)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


# KerasHub-style Args: `name: type. Description.`, one name per entry, the type a short
# phrase of type words (`int`, `list of str`, `tf.Tensor`, `tfpg.rewards.Reward`,
# `float32 tensor [B, T]`, `int or None`, `"auto"`, ...).
STYLED_NAMESPACES = ["tfpg", "tfpg.algorithms", "tfpg.rewards", "tfpg.models", "tfpg.callbacks",
                     "tfpg.envs", "tfpg.tasks", "tfpg.losses", "tfpg.advantages",
                     "tfpg.generation", "tfpg.export", "tfpg.data"]
# Packages whose every module is a namespace (`tfpg.run` exports nothing itself).
STYLED_PACKAGES = ["tfpg.text", "tfpg.hf", "tfpg.run"]
TYPE_WORD = re.compile(
    r"(?:int|float|str|bool|bytes|callable|dict|tuple|list|set|None|of|or|tensor|array|scalar"
    r"|(?:float|int|bfloat)(?:8|16|32|64)|[A-Za-z_]\w*(?:\.\w+)+|[A-Z]\w*|T)$")
ARGS_ENTRY = re.compile(r"(\*{0,2})([A-Za-z_]\w*): (.*)$", re.S)


def styled_namespaces():
    names = list(STYLED_NAMESPACES)
    for package in STYLED_PACKAGES:
        path = importlib.import_module(package).__path__
        names += [package] + [name for _, name, _ in pkgutil.walk_packages(path, package + ".")]
    return names


def public_objects():
    objects = {}
    for namespace in styled_namespaces():
        module = importlib.import_module(namespace)
        names = getattr(module, "__all__", None)
        for name in names or dir(module):
            value = getattr(module, name)
            if name.startswith("_") or not (inspect.isclass(value) or inspect.isfunction(value)):
                continue
            owner = getattr(value, "__module__", "")
            if not owner.startswith("tfpg"):
                continue
            if names is None and owner != namespace:       # an import, not the module's own
                continue
            objects[f"{owner}.{value.__qualname__}"] = value
    return objects


def documented_callables(value):
    """(docstring holder, function whose signature the Args name) of a public object."""
    if inspect.isfunction(value):
        return [(value, value)]
    pairs = [(value, value.__init__)]
    if "__init__" in vars(value) and value.__init__.__doc__:
        pairs.append((value.__init__, value.__init__))
    for name, member in vars(value).items():
        function = getattr(member, "__func__", member)
        if not name.startswith("_") and inspect.isfunction(function):
            pairs.append((function, function))
    return pairs


def args_entries(doc):
    """The Args section's entries, each with its continuation lines joined."""
    lines = inspect.cleandoc(doc).splitlines()
    entries = []
    for number, line in enumerate(lines):
        if line.strip() != "Args:":
            continue
        header_indent = len(line) - len(line.lstrip())
        entry_indent = None
        for item in lines[number + 1:]:
            if not item.strip():
                continue
            indent = len(item) - len(item.lstrip())
            if indent <= header_indent:
                break
            entry_indent = entry_indent or indent
            if indent == entry_indent:
                entries.append(item.strip())
            elif entries:
                entries[-1] += " " + item.strip()
    return entries


def is_type_phrase(text):
    match = re.match(r"(.+?)\.(?: |$)", text)
    if not match or len(match.group(1)) > 100:
        return False
    phrase = re.sub(r"``[^`]*``|`[^`]*`|\"[^\"]*\"|\[[^\]]*\]", " T ", match.group(1))
    words = re.split(r"[\s,]+", phrase.strip())
    return all(TYPE_WORD.match(word) for word in words)


def args_style_problems(value):
    problems = []
    for holder, function in documented_callables(value):
        if not holder.__doc__ or "Args:" not in holder.__doc__:
            continue
        parameters = inspect.signature(function).parameters
        for entry in args_entries(holder.__doc__):
            match = ARGS_ENTRY.match(entry)
            if not match:
                problems.append(f"{holder.__qualname__}: not `name: type. ...`: {entry[:70]}")
                continue
            stars, name, rest = match.groups()
            if name not in parameters:
                problems.append(f"{holder.__qualname__}: {name} is not a parameter")
            if not stars and not is_type_phrase(rest):
                problems.append(f"{holder.__qualname__}: {name} has no type: {rest[:60]}")
    return problems


PUBLIC_OBJECTS = public_objects()


def test_public_objects_were_collected():
    assert len(PUBLIC_OBJECTS) > 60
    for name in ["tfpg.algorithms.base.PolicyGradientTrainer", "tfpg.data.prompt_dataset",
                 "tfpg.text.tokenizer.Tokenizer", "tfpg.hf.export.export_transformers",
                 "tfpg.run.pipeline.run_training", "tfpg.run.jobs.make_job",
                 "tfpg.run.evaluation.evaluate_policy", "tfpg.run.config.TrainConfig",
                 "tfpg.models.keras_hub_policy.KerasHubPolicy"]:
        assert name in PUBLIC_OBJECTS, name


def trainer_classes():
    from tfpg.algorithms.base import PolicyGradientTrainer
    return {name: value for name, value in PUBLIC_OBJECTS.items()
            if inspect.isclass(value) and issubclass(value, PolicyGradientTrainer)
            and value is not PolicyGradientTrainer}


def test_trainers_document_their_own_arguments():
    """Each algorithm's Args name the arguments it adds (those of its `__init__` that
    `PolicyGradientTrainer.__init__` lacks) and send the reader to the base for the rest."""
    from tfpg.algorithms.base import PolicyGradientTrainer
    trainers = trainer_classes()
    assert {"PPO", "GRPO", "RLOO", "REINFORCE", "SCST", "A2C", "OnPolicyDistillation"} <= \
        {value.__name__ for value in trainers.values()}
    base = set(inspect.signature(PolicyGradientTrainer.__init__).parameters)
    for name, value in trainers.items():
        documented = {ARGS_ENTRY.match(entry).group(2) for entry in args_entries(value.__doc__)}
        assert documented, f"{name} has no Args"
        own = {parameter.name for parameter in inspect.signature(value.__init__).parameters
               .values() if parameter.kind not in (parameter.VAR_POSITIONAL,
                                                   parameter.VAR_KEYWORD)} - base
        assert own <= documented, f"{name} does not document {sorted(own - documented)}"
        assert "Other arguments: see `PolicyGradientTrainer`" in value.__doc__, name


@pytest.mark.parametrize("value", PUBLIC_OBJECTS.values(), ids=list(PUBLIC_OBJECTS))
def test_args_are_typed_and_name_parameters(value):
    problems = args_style_problems(value)
    assert not problems, "\n".join(problems)


def test_args_style_check_finds_old_style_and_stale_entries():
    def example(rate, names=None):
        """Example.

        Args:
            rate: the learning rate.
            names, others: grouped.
            gone: int. Not a parameter.
            names: list of str or None. Fine.
        """
    problems = args_style_problems(example)
    assert len(problems) == 3
    assert "rate has no type" in problems[0] and "not `name: type" in problems[1]
    assert "gone is not a parameter" in problems[2]
    assert is_type_phrase('int, None or "auto". The id.')
    assert is_type_phrase("float32 tensor ``[B, T]`` or None. A mask.")
    assert is_type_phrase("`tfpg.models.Policy`. The policy.")
    assert not is_type_phrase("the number of token ids.")
