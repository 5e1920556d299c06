"""The Hugging Face fixtures of tests/data/hf/ (written by benchmarks/hf_fixtures.py
with transformers 5.25): checkpoint directories and the values transformers computed."""

import functools
import json
import os

import numpy as np

DATA = os.path.join(os.path.dirname(__file__), "data", "hf")


def checkpoint(name):
    """The fixture directory `tests/data/hf/<name>`."""
    return os.path.join(DATA, name)


@functools.lru_cache(maxsize=None)
def corpus():
    """The torture corpus (2,200 strings)."""
    with open(os.path.join(DATA, "corpus.json"), encoding="utf-8") as f:
        return tuple(json.load(f))


@functools.lru_cache(maxsize=None)
def reference(name):
    """The arrays of `<name>/reference.npz` (see benchmarks/hf_fixtures.py)."""
    with np.load(os.path.join(DATA, name, "reference.npz")) as values:
        return {key: values[key] for key in values.files}


def corpus_ids(name):
    """transformers' ids of each corpus string (the checkpoint's special tokens)."""
    values = reference(name)
    ids, offsets = values["corpus_ids"], values["corpus_offsets"]
    return [ids[offsets[i]:offsets[i + 1]].tolist() for i in range(len(offsets) - 1)]


def mismatches(got, want):
    """The corpus strings whose ids differ, with both id lists."""
    return [(text, g, w) for text, g, w in zip(corpus(), got, want) if list(g) != list(w)]
