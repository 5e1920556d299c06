"""Tests for tfpg.data: dataset builders and file readers."""

import re
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfpg.data import (DataError, language_model_dataset, prompt_dataset, read_file,
                       read_jsonl, read_tsv, read_txt)
from tfpg.text import Tokenizer


@pytest.fixture(scope="module")
def tok():
    # ids: a=4 b=5 c=6 d=7 e=8
    return Tokenizer.from_texts(["a b c d e"])


def as_lists(batch):
    return tf.nest.map_structure(lambda t: t.numpy().tolist(), batch)


def test_language_model_pairs_are_shifted_and_right_padded(tok):
    ds = language_model_dataset(["a b", "", "c d e"], tok, sequence_length=5, batch_size=8,
                                shuffle=False)
    inputs, targets = as_lists(next(iter(ds)))
    assert inputs == [[1, 4, 5, 0, 0], [1, 0, 0, 0, 0], [1, 6, 7, 8, 0]]
    assert targets == [[4, 5, 2, 0, 0], [2, 0, 0, 0, 0], [6, 7, 8, 2, 0]]
    spec = ds.element_spec
    assert spec[0].shape.as_list() == [None, 5] and spec[0].dtype == tf.int32
    assert spec[1].shape.as_list() == [None, 5] and spec[1].dtype == tf.int32


def test_language_model_chunks_long_texts(tok):
    # [bos a b c d e a b eos] has 8 next-token pairs -> windows of 3, 3 and 2 pairs.
    ds = language_model_dataset(["a b c d e a b", "e"], tok, sequence_length=3, batch_size=2,
                                shuffle=False)
    batches = [as_lists(b) for b in ds]
    assert batches == [
        ([[1, 4, 5], [6, 7, 8]], [[4, 5, 6], [7, 8, 4]]),
        ([[4, 5, 0], [1, 8, 0]], [[5, 2, 0], [8, 2, 0]]),
    ]


def test_language_model_shuffle_is_seeded_and_complete(tok):
    texts = ["a", "b", "c", "d", "e", "a b", "b c", "c d"]

    def rows(seed):
        ds = language_model_dataset(texts, tok, sequence_length=4, batch_size=3, seed=seed)
        return [row for x, _ in ds for row in x.numpy().tolist()]

    unshuffled = [row for x, _ in language_model_dataset(texts, tok, sequence_length=4,
                                                         shuffle=False)
                  for row in x.numpy().tolist()]
    assert rows(0) == rows(0)
    assert rows(0) != unshuffled
    assert sorted(rows(0)) == sorted(unshuffled)


def test_language_model_drop_remainder_and_errors(tok):
    ds = language_model_dataset(["a", "b", "c"], tok, sequence_length=2, batch_size=2,
                                drop_remainder=True)
    assert ds.element_spec[0].shape.as_list() == [2, 2]
    assert len(list(ds)) == 1
    with pytest.raises(ValueError, match="empty dataset"):
        language_model_dataset([], tok)
    with pytest.raises(ValueError, match="empty dataset"):
        language_model_dataset(["a"], tok, batch_size=2, drop_remainder=True)
    with pytest.raises(TypeError, match="not a single string"):
        language_model_dataset("a b", tok)


def test_language_model_padding_is_ignored_by_the_pretraining_loss(tok):
    inputs, targets = next(iter(language_model_dataset(["a b", "c d e"], tok, sequence_length=6,
                                                       shuffle=False)))
    logits = tf.random.stateless_normal([2, 6, tok.vocabulary_size], seed=[1, 2])
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=0)
    per_token = tf.nn.sparse_softmax_cross_entropy_with_logits(targets, logits)
    mask = tf.cast(targets != 0, tf.float32)
    # 3 + 4 real targets out of 12 positions.
    assert float(tf.reduce_sum(mask)) == 7.0
    expected = tf.reduce_sum(per_token * mask) / tf.reduce_sum(mask)
    np.testing.assert_allclose(float(loss(targets, logits)), float(expected), rtol=1e-6)


def test_prompt_dataset_left_pads_to_dataset_width(tok):
    prompts = ["a b c d", "e", "", "b c"]
    ds = prompt_dataset(prompts, tok, batch_size=2)
    assert ds.element_spec == {"prompt": tf.TensorSpec([None, 5], tf.int32),
                               "prompt_mask": tf.TensorSpec([None, 5], tf.int32)}
    batches = [as_lists(b) for b in ds]
    assert batches == [
        {"prompt": [[1, 4, 5, 6, 7], [0, 0, 0, 1, 8]],
         "prompt_mask": [[1, 1, 1, 1, 1], [0, 0, 0, 1, 1]]},
        {"prompt": [[0, 0, 0, 0, 1], [0, 0, 1, 5, 6]],
         "prompt_mask": [[0, 0, 0, 0, 1], [0, 0, 1, 1, 1]]},
    ]
    ds = prompt_dataset([b"a", "zz"], tok, batch_size=2, drop_remainder=True)
    assert ds.element_spec["prompt"].shape.as_list() == [2, 2]
    assert as_lists(next(iter(ds))) == {"prompt": [[1, 4], [1, 3]],
                                        "prompt_mask": [[1, 1], [1, 1]]}


def test_prompt_dataset_single_references(tok):
    ds = prompt_dataset(["a", "b"], tok, references=["c d e", ""], batch_size=2)
    assert ds.element_spec["reference"] == tf.TensorSpec([None, 3], tf.int32)
    assert as_lists(next(iter(ds)))["reference"] == [[6, 7, 8], [0, 0, 0]]
    # All-empty references still give a width of 1.
    ds = prompt_dataset(["a"], tok, references=[""])
    assert as_lists(next(iter(ds)))["reference"] == [[0]]


def test_prompt_dataset_multiple_references(tok):
    references = [["a b", "c"], "d e a", ["e"], []]
    ds = prompt_dataset(["a", "b", "c", "d"], tok, references=references, batch_size=4)
    assert ds.element_spec["reference"] == tf.TensorSpec([None, 2, 3], tf.int32)
    assert as_lists(next(iter(ds)))["reference"] == [
        [[4, 5, 0], [6, 0, 0]],
        [[7, 8, 4], [0, 0, 0]],
        [[8, 0, 0], [0, 0, 0]],
        [[0, 0, 0], [0, 0, 0]],
    ]


def test_prompt_dataset_extras_pass_through(tok):
    extras = {"answer": ["7", "12"], "id": [3, 4], "weight": [0.5, 2.0], "ok": [True, False],
              "pair": [[1, 2], [3, 4]]}
    ds = prompt_dataset(["a", "b"], tok, extras=extras, batch_size=2)
    spec = ds.element_spec
    assert (spec["answer"].dtype, spec["id"].dtype, spec["weight"].dtype, spec["ok"].dtype,
            spec["pair"].dtype) == (tf.string, tf.int32, tf.float32, tf.bool, tf.int32)
    assert spec["pair"].shape.as_list() == [None, 2]
    batch = as_lists(next(iter(ds)))
    assert batch["answer"] == [b"7", b"12"]
    assert batch["id"] == [3, 4]
    assert batch["weight"] == [0.5, 2.0]
    assert batch["ok"] == [True, False]
    assert batch["pair"] == [[1, 2], [3, 4]]


def test_prompt_dataset_truncation(tok):
    prompts = ["a b c d e", "b"]
    with pytest.raises(ValueError, match=r"^prompt 0: has 6 tokens \(BOS included\), more than "
                                         r"max_prompt_length=3"):
        prompt_dataset(prompts, tok, max_prompt_length=3)
    right = prompt_dataset(prompts, tok, max_prompt_length=3, truncate="right")
    left = prompt_dataset(prompts, tok, max_prompt_length=3, truncate="left")
    assert as_lists(next(iter(right)))["prompt"] == [[1, 4, 5], [0, 1, 5]]
    assert as_lists(next(iter(left)))["prompt"] == [[1, 7, 8], [0, 1, 5]]
    assert right.element_spec["prompt"].shape.as_list() == [None, 3]


def test_prompt_dataset_shuffle_and_repeat(tok):
    prompts = ["a", "b", "c", "d", "e"]
    ids = {"a": 4, "b": 5, "c": 6, "d": 7, "e": 8}

    def order(seed):
        ds = prompt_dataset(prompts, tok, batch_size=5, shuffle=True, seed=seed, repeat=True,
                            extras={"name": prompts})
        epochs = [as_lists(b) for b in ds.take(2)]
        for batch in epochs:  # extras stay aligned with their prompt under shuffling
            assert [row[-1] for row in batch["prompt"]] == [ids[n.decode()] for n in batch["name"]]
        return [row[-1] for b in epochs for row in b["prompt"]]

    first = order(3)
    assert first == order(3)
    assert sorted(first[:5]) == sorted(first[5:]) == [4, 5, 6, 7, 8]
    assert first[:5] != first[5:]  # reshuffled each repetition


def test_prompt_dataset_errors(tok):
    with pytest.raises(ValueError, match="prompts is empty"):
        prompt_dataset([], tok)
    with pytest.raises(ValueError, match="got 2 prompts but 1 references"):
        prompt_dataset(["a", "b"], tok, references=["c"])
    with pytest.raises(ValueError, match=r"got 2 prompts but 3 values in extras\['id'\]"):
        prompt_dataset(["a", "b"], tok, extras={"id": [1, 2, 3]})
    with pytest.raises(ValueError, match="reserved"):
        prompt_dataset(["a"], tok, extras={"reference": ["x"]})
    with pytest.raises(ValueError, match="mixes strings"):
        prompt_dataset(["a", "b"], tok, extras={"x": ["1", 2]})
    with pytest.raises(ValueError, match="must hold strings, ints, floats or bools"):
        prompt_dataset(["a", "b"], tok, extras={"x": [[1], [2, 3]]})
    with pytest.raises(ValueError, match="do not fit in int32"):
        prompt_dataset(["a"], tok, extras={"x": [2**40]})
    with pytest.raises(ValueError, match="^prompt 1: text is not valid UTF-8"):
        prompt_dataset(["a", b"\xff"], tok)
    with pytest.raises(TypeError, match="^reference 0: expected str, bytes or a list of them"):
        prompt_dataset(["a"], tok, references=[5])
    with pytest.raises(ValueError, match="truncate must be"):
        prompt_dataset(["a"], tok, truncate="middle")
    with pytest.raises(ValueError, match="empty dataset"):
        prompt_dataset(["a"], tok, batch_size=2, drop_remainder=True)


def write(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return str(path)


def test_read_txt_skips_blank_lines_and_handles_crlf_and_bom(tmp_path):
    path = write(tmp_path, "t.txt", b"\xef\xbb\xbffirst line\r\n\n   \n  indented\tx \nlast")
    assert read_txt(path) == ["first line", "  indented\tx ", "last"]


def test_read_tsv_single_and_multiple_references(tmp_path):
    path = write(tmp_path, "t.tsv", "3 + 4 =\t7\n\nhi\thello\they there\nempty ref\t\n")
    assert read_tsv(path) == (["3 + 4 =", "hi", "empty ref"], ["7", ["hello", "hey there"], ""])


def test_read_jsonl_columns(tmp_path):
    path = write(tmp_path, "t.jsonl",
                 '{"prompt": "2 + 2 =", "reference": ["4", "four"], "id": 1}\n'
                 '\n'
                 '{"id": 2, "reference": "x", "prompt": "hi"}\n')
    assert read_jsonl(path) == {"prompt": ["2 + 2 =", "hi"], "reference": [["4", "four"], "x"],
                                "id": [1, 2]}


@pytest.mark.parametrize("name, content, message", [
    ("t.tsv", "a\tb\nno tab here\n", "t.tsv:2: expected 'prompt<TAB>reference', found no tab"),
    ("t.txt", b"ok\nbad \xff byte\n", "t.txt:2: invalid UTF-8 (byte 0xff at column 5)"),
    ("t.tsv", b"ok\tfine\n\n\xc3\x28\tx\n", "t.tsv:3: invalid UTF-8 (byte 0xc3 at column 1)"),
    ("t.jsonl", '{"prompt": "a"}\n{"prompt": "b",}\n',
     "t.jsonl:2: invalid JSON (Expecting property name enclosed in double quotes at column 16)"),
    ("t.jsonl", '{"prompt": "a"}\n\n["a"]\n', "t.jsonl:3: expected a JSON object, found list"),
    ("t.jsonl", '{"reference": "a"}\n', "t.jsonl:1: missing required key 'prompt'"),
    ("t.jsonl", '{"prompt": 3}\n',
     "t.jsonl:1: 'prompt' must be a string or a list of {\"role\", \"content\"} messages, "
     "found int"),
    ("t.jsonl", '{"prompt": "a", "reference": [1]}\n',
     "t.jsonl:1: 'reference' must be a string or a list of strings"),
    ("t.jsonl", '{"prompt": "a", "id": 1}\n{"prompt": "b"}\n',
     "t.jsonl:2: missing key 'id' (every line needs the keys of line 1)"),
    ("t.jsonl", '{"prompt": "a"}\n{"prompt": "b", "extra": 1}\n',
     "t.jsonl:2: unexpected key 'extra' (every line needs the keys of line 1)"),
    ("t.txt", "\n  \n", "t.txt: no examples (the file is empty or has only blank lines)"),
    ("t.tsv", "", "t.tsv: no examples"),
    ("t.jsonl", "\n", "t.jsonl: no examples"),
    ("t.csv", "a,b\n", "t.csv: unsupported file type '.csv' (expected .txt, .tsv or .jsonl)"),
])
def test_reader_errors_name_file_and_line(tmp_path, name, content, message):
    path = write(tmp_path, name, content)
    with pytest.raises(DataError) as info:
        read_file(path)
    assert str(info.value).startswith(str(tmp_path / message.split(":")[0]))
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, ValueError)


def test_missing_file_and_directory(tmp_path):
    for reader in (read_txt, read_tsv, read_jsonl, read_file):
        missing = re.escape(str(tmp_path / "nope.txt"))
        with pytest.raises(DataError, match=f"^{missing}: file not found$"):
            reader(tmp_path / "nope.txt")
    with pytest.raises(DataError, match="is a directory"):
        read_txt(tmp_path)


def test_read_file_dispatch_feeds_prompt_dataset(tmp_path, tok):
    assert read_file(write(tmp_path, "p.TXT", "a b\nc\n")) == {"prompt": ["a b", "c"]}
    assert read_file(write(tmp_path, "p.tsv", "a\tb\n")) == {"prompt": ["a"], "reference": ["b"]}
    columns = read_file(write(tmp_path, "p.jsonl",
                              '{"prompt": "a b", "reference": ["c", "d e"], "answer": "7"}\n'
                              '{"prompt": "e", "reference": ["a"], "answer": "9"}\n'))
    ds = prompt_dataset(columns.pop("prompt"), tok, references=columns.pop("reference", None),
                        extras=columns, batch_size=2)
    assert as_lists(next(iter(ds))) == {
        "prompt": [[1, 4, 5], [0, 1, 8]],
        "prompt_mask": [[1, 1, 1], [0, 1, 1]],
        "reference": [[[6, 0], [7, 8]], [[4, 0], [0, 0]]],
        "reference_mask": [[[1, 0], [1, 1]], [[1, 0], [0, 0]]],
        "answer": [b"7", b"9"],
    }


def test_the_readers_run_without_tensorflow(tmp_path):
    # The command line reads --train-file before TensorFlow starts: tfpg.data imports
    # it only to build datasets.
    path = tmp_path / "t.tsv"
    path.write_text("1 + 1 =\t2\n")
    script = (f"import sys; from tfpg.data import read_file; print(read_file({str(path)!r}));"
              "print(sorted(m for m in sys.modules if m.split('.')[0] in "
              "('tensorflow', 'keras')))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines() == ["{'prompt': ['1 + 1 ='], 'reference': ['2']}", "[]"]
