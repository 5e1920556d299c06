"""Every `>>>` example in tfpg's docstrings runs (one case per documented object), and no
module points at files outside the repository."""

import doctest
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
