"""Tests for tfpg.text: Tokenizer and the in-graph StringToIds / IdsToString layers."""

import json
import os
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfpg.text import tokenizer as text
from tfpg.text.tokenizer import IdsToString, StringToIds
from tfpg.text import Tokenizer

CORPUS = ["the cat sat on the mat", "the dog sat", "a cat"]
# the:3 cat:2 sat:2 a:1 dog:1 mat:1 on:1 -> ties broken alphabetically
WORD_VOCAB = ["<pad>", "<bos>", "<eos>", "<unk>", "the", "cat", "sat", "a", "dog", "mat", "on"]


@pytest.fixture(scope="module")
def word_tok():
    return Tokenizer.from_texts(CORPUS, level="word")


@pytest.fixture(scope="module")
def char_tok():
    return Tokenizer.from_texts(["abc ab a\n", "xyz"], level="char")


def left_pad(rows):
    width = max(len(r) for r in rows)
    return [[0] * (width - len(r)) + r for r in rows]


def test_special_ids():
    assert (Tokenizer.pad_id, Tokenizer.bos_id, Tokenizer.eos_id, Tokenizer.unk_id) == (0, 1, 2, 3)
    assert text.SPECIAL_TOKENS == ("<pad>", "<bos>", "<eos>", "<unk>")


def test_word_vocabulary_ordered_by_frequency_then_token(word_tok):
    assert word_tok.vocabulary == WORD_VOCAB
    assert word_tok.vocabulary_size == 11
    assert word_tok.level == "word"
    assert word_tok.token_to_id("sat") == 6
    assert word_tok.token_to_id("<eos>") == 2
    assert word_tok.token_to_id("zebra") == 3
    assert word_tok.id_to_token(9) == "mat"
    with pytest.raises(ValueError, match="out of range"):
        word_tok.id_to_token(11)


def test_max_vocab_and_min_frequency():
    tok = Tokenizer.from_texts(CORPUS, max_vocab=6)
    assert tok.vocabulary == WORD_VOCAB[:6]
    tok = Tokenizer.from_texts(CORPUS, min_frequency=2)
    assert tok.vocabulary == WORD_VOCAB[:7]
    assert Tokenizer.from_texts(CORPUS, max_vocab=4).vocabulary == WORD_VOCAB[:4]
    with pytest.raises(ValueError, match="max_vocab must be >= 4"):
        Tokenizer.from_texts(CORPUS, max_vocab=3)
    with pytest.raises(ValueError, match="min_frequency"):
        Tokenizer.from_texts(CORPUS, min_frequency=0)
    with pytest.raises(TypeError, match="not a single string"):
        Tokenizer.from_texts("the cat")


def test_special_strings_in_text_are_not_control_tokens():
    tok = Tokenizer.from_texts(["<eos> x <pad>", "x"])
    assert tok.vocabulary == ["<pad>", "<bos>", "<eos>", "<unk>", "x"]
    assert tok.encode("x <eos> <pad> <bos> <unk>") == [1, 4, 3, 3, 3, 3]


def test_encode_single_list_unknown_and_empty(word_tok):
    assert word_tok.encode("the cat ran") == [1, 4, 5, 3]
    assert word_tok.encode(["the  dog\t", "", " \n\u3000 ", "zebra"]) == [
        [1, 4, 8], [1], [1], [1, 3]]
    assert word_tok.encode(np.array(["a cat"])) == [[1, 7, 5]]
    assert word_tok.encode(tf.constant(["a cat", "on"])) == [[1, 7, 5], [1, 10]]
    assert word_tok.encode("the cat", add_bos=False) == [4, 5]
    assert word_tok.encode("", add_bos=False) == []


def test_encode_bytes_and_invalid_utf8(word_tok):
    assert word_tok.encode(b"the cat") == [1, 4, 5]
    assert word_tok.encode([b"on", "a"]) == [[1, 10], [1, 7]]
    with pytest.raises(ValueError, match=r"not valid UTF-8: byte 4 of b'the \\xffcat'"):
        word_tok.encode(b"the \xffcat")
    with pytest.raises(TypeError, match="expected str or bytes, got int"):
        word_tok.encode([3])
    with pytest.raises(TypeError, match="expected str, bytes or a list of them, got int"):
        word_tok.encode(3)
    assert word_tok.encode(tf.constant("a cat")) == [1, 7, 5]


def test_encode_max_length_truncation(word_tok):
    s = "the cat sat on the mat"
    assert word_tok.encode(s, max_length=3) == [1, 4, 5]
    assert word_tok.encode(s, max_length=3, truncate="left") == [1, 4, 9]
    assert word_tok.encode(s, max_length=1) == [1]
    assert word_tok.encode(s, max_length=2, add_bos=False, truncate="left") == [4, 9]
    assert word_tok.encode("a", max_length=5) == [1, 7]
    with pytest.raises(ValueError, match="max_length"):
        word_tok.encode(s, max_length=0)
    with pytest.raises(ValueError, match="truncate"):
        word_tok.encode(s, max_length=2, truncate="middle")


def test_char_level_keeps_whitespace_and_round_trips(char_tok):
    # a:3, then " " and b (2 each), then "\n" c x y z (1 each): ties by code point
    assert char_tok.vocabulary[4:] == ["a", " ", "b", "\n", "c", "x", "y", "z"]
    assert char_tok.encode(" ab\n") == [1, 5, 4, 6, 7]
    assert char_tok.encode("") == [1]
    assert char_tok.encode("  ") == [1, 5, 5]
    assert char_tok.encode("aé") == [1, 4, 3]
    s = "ab c\nxyz  a"
    assert char_tok.decode(char_tok.encode(s)) == s
    assert char_tok.decode(char_tok.encode("aéz")) == "a<unk>z"


def test_decode_drops_pad_bos_and_stops_at_eos(word_tok):
    assert word_tok.decode([0, 0, 1, 4, 0, 5, 1, 3, 2, 6, 7]) == "the cat <unk>"
    assert word_tok.decode([]) == ""
    assert word_tok.decode([2, 4]) == ""
    batch = [[0, 1, 4, 5], [1, 6, 2, 9]]
    expected = ["the cat", "sat"]
    assert word_tok.decode(batch) == expected
    assert word_tok.decode(np.array(batch, np.int64)) == expected
    assert word_tok.decode(tf.constant(batch, tf.int32)) == expected
    assert word_tok.decode(np.array([4, 9])) == "the mat"
    assert word_tok.decode(np.zeros([0, 3], np.int32)) == []


def test_decode_rejects_bad_ids(word_tok):
    with pytest.raises(ValueError, match="token id 11 is out of range for a vocabulary of size 11"):
        word_tok.decode([1, 4, 2, 11])
    with pytest.raises(ValueError, match="token id -1 is out of range"):
        word_tok.decode(np.array([[1, -1]]))
    with pytest.raises(ValueError, match="1-D or 2-D"):
        word_tok.decode(np.zeros([1, 1, 1], np.int32))
    with pytest.raises(ValueError, match="integers"):
        word_tok.decode([1.5])


def test_constructor_validates_vocabulary():
    with pytest.raises(ValueError, match="must start with"):
        Tokenizer(["a", "b"])
    with pytest.raises(ValueError, match="duplicate tokens: \\['x'\\]"):
        Tokenizer(list(text.SPECIAL_TOKENS) + ["x", "x"])
    with pytest.raises(ValueError, match="single characters"):
        Tokenizer(list(text.SPECIAL_TOKENS) + ["ab"], level="char")
    with pytest.raises(ValueError, match="without whitespace"):
        Tokenizer(list(text.SPECIAL_TOKENS) + ["a b"])
    with pytest.raises(ValueError, match="level"):
        Tokenizer(list(text.SPECIAL_TOKENS), level="byte")


def test_save_load_round_trip(tmp_path, word_tok, char_tok):
    for tok in (word_tok, char_tok):
        path = tmp_path / f"{tok.level}.json"
        tok.save(path)
        payload = json.loads(path.read_text(encoding="utf-8"))
        assert payload == {"format": "tfpg.Tokenizer", "version": 1, "level": tok.level,
                           "vocabulary": tok.vocabulary}
        loaded = Tokenizer.load(str(path))
        assert (loaded.level, loaded.vocabulary) == (tok.level, tok.vocabulary)
    # Overwrite in place; the temp file is renamed away, never left behind.
    word_tok.save(tmp_path / "word.json")
    assert sorted(os.listdir(tmp_path)) == ["char.json", "word.json"]
    restored = Tokenizer.from_config(word_tok.get_config())
    assert restored.vocabulary == WORD_VOCAB and restored.level == "word"


@pytest.mark.parametrize("content, message", [
    (b"\x89PNG\r\n", "not a tfpg tokenizer file \\(invalid JSON"),
    (b"{\"format\": ", "not a tfpg tokenizer file \\(invalid JSON"),
    (b"[1, 2]", "not a tfpg tokenizer file \\(missing \"format\""),
    (b"{\"format\": \"keras\", \"version\": 1}", "not a tfpg tokenizer file"),
    (b"{\"format\": \"tfpg.Tokenizer\", \"version\": 7, \"level\": \"word\", \"vocabulary\": []}",
     "unsupported tokenizer version 7"),
    (b"{\"format\": \"tfpg.Tokenizer\", \"version\": 1, \"level\": \"word\"}",
     "corrupt tokenizer file"),
    (b'{"format": "tfpg.Tokenizer", "version": 1, "level": "word", "vocabulary": ["a"]}',
     "corrupt tokenizer file \\(vocabulary must start with"),
])
def test_load_rejects_bad_files_with_one_line_error(tmp_path, content, message):
    path = tmp_path / "tok.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as info:
        Tokenizer.load(path)
    assert str(info.value).startswith(str(path) + ": ")
    assert "\n" not in str(info.value)



@pytest.mark.parametrize("content, kind", [
    (b"\x89PNG\r\n", "invalid JSON: 'utf-8' codec can't decode byte 0x89"),
    (b"{\"format\": ", "invalid JSON: Expecting value"),
    (b"[1, 2]", "missing \"format\""),
])
def test_tokenizer_and_marker_files_are_read_by_one_parser(tmp_path, content, kind):
    from tfpg.text.tokenizer import read_json_marker
    path = tmp_path / "f.json"
    path.write_bytes(content)
    for read, what in [
            (Tokenizer.load, "tfpg tokenizer file"),
            (lambda p: read_json_marker(p, "tfpg.SavedModel", 1, "tfpg export", "export"),
             "tfpg export marker")]:
        with pytest.raises(ValueError) as info:
            read(str(path))
        assert str(info.value).startswith(f"{path}: not a {what} ({kind}"), str(info.value)
    path.write_text('{"format": "tfpg.SavedModel", "version": 3}')
    with pytest.raises(ValueError, match=r"^M: unsupported export version 3 \(this tfpg "
                                         r"reads version 1\)$"):
        read_json_marker(str(path), "tfpg.SavedModel", 1, "tfpg export", "export", where="M")

def test_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        Tokenizer.load(tmp_path / "nope.json")


def _random_texts(rng, tokens, unknown, separators, count, joiner):
    texts = []
    for _ in range(count):
        n = int(rng.integers(0, 9))
        pool = tokens + unknown
        picks = [pool[i] for i in rng.integers(0, len(pool), n)]
        if joiner is None:  # word level: random whitespace between and around words
            seps = [separators[i] for i in rng.integers(0, len(separators), n + 1)]
            texts.append("".join(s + w for s, w in zip(seps, picks + [""])))
        else:
            texts.append(joiner.join(picks))
    return texts



def test_one_cut_serves_lists_strings_and_tensor_rows():
    from tfpg.text.truncation import check_truncate, cut
    ids = [1, 5, 6, 7]
    assert [cut(ids, k, "right") for k in (0, 2, 9)] == [[], [1, 5], ids]
    assert [cut(ids, k, "left") for k in (0, 2, 9)] == [[], [6, 7], ids]
    assert (cut("abcdef", 4, "left"), cut("abcdef", 4, "right")) == ("cdef", "abcd")
    rows = tf.ragged.constant([[1, 2, 3], [4], []])
    assert cut(rows, 2, "left").to_list() == [[2, 3], [4], []]
    assert cut(rows, 2, "right").to_list() == [[1, 2], [4], []]
    assert cut(rows, 0, "left").to_list() == [[], [], []]      # not rows[:, -0:]
    assert cut(tf.constant([[1, 2, 3]]), 1, "left").numpy().tolist() == [[3]]
    with pytest.raises(ValueError, match=r"^truncate must be 'right' or 'left', got 'middle'$"):
        check_truncate("middle")
    with pytest.raises(ValueError, match=r"^truncate must be 'error', 'left' or 'right', "
                                         r"got 'up'$"):
        check_truncate("up", ("error", "left", "right"))

@pytest.mark.parametrize("max_length, truncate", [(None, "right"), (4, "right"), (4, "left"),
                                                  (1, "left")])
def test_string_to_ids_matches_encode_word_level(word_tok, max_length, truncate):
    rng = np.random.default_rng(0)
    texts = _random_texts(rng, WORD_VOCAB[4:] + ["<eos>"], ["zebra", "Cat", "naïve"],
                          [" ", "  ", "\t", "\n", "\u3000", "\xa0", "\x1c", "\u2029", ""],
                          64, joiner=None)
    texts += ["", "   ", "\u2003\n"]
    layer = word_tok.string_to_ids_layer(max_length=max_length, truncate=truncate)
    got = layer(tf.constant(texts))
    assert got.dtype == tf.int32
    assert got.numpy().tolist() == left_pad(
        word_tok.encode(texts, max_length=max_length, truncate=truncate))


@pytest.mark.parametrize("max_length, truncate", [(None, "right"), (3, "left")])
def test_string_to_ids_matches_encode_char_level(char_tok, max_length, truncate):
    rng = np.random.default_rng(1)
    texts = _random_texts(rng, list("abcxyz \n"), ["é", "中", "\t", "😀"], [], 64, joiner="")
    texts += ["", "  "]
    layer = char_tok.string_to_ids_layer(max_length=max_length, truncate=truncate)
    assert layer(tf.constant(texts)).numpy().tolist() == left_pad(
        char_tok.encode(texts, max_length=max_length, truncate=truncate))


def test_string_to_ids_layout_and_invalid_utf8(word_tok, char_tok):
    layer = word_tok.string_to_ids_layer()
    assert layer(tf.constant(["the cat sat", "", "dog"])).numpy().tolist() == [
        [1, 4, 5, 6], [0, 0, 0, 1], [0, 0, 1, 8]]
    assert layer(tf.constant([], tf.string)).shape == (0, 0)
    # In-graph, invalid UTF-8 becomes U+FFFD instead of an error (documented).
    assert layer(tf.constant([b"the \xff cat\xff"])).numpy().tolist() == [[1, 4, 3, 3]]
    assert char_tok.string_to_ids_layer()(tf.constant([b"a\xffb"])).numpy().tolist() == [
        [1, 4, 3, 6]]


@pytest.mark.parametrize("level", ["word", "char"])
def test_ids_to_string_matches_decode(word_tok, char_tok, level):
    tok = word_tok if level == "word" else char_tok
    rng = np.random.default_rng(2)
    # Specials are over-represented so pad/bos/eos show up in the middle of rows.
    ids = rng.integers(0, tok.vocabulary_size, size=[200, 12])
    specials = rng.integers(0, 4, size=ids.shape)
    ids = np.where(rng.random(ids.shape) < 0.3, specials, ids).astype(np.int32)
    got = tok.ids_to_string_layer()(tf.constant(ids)).numpy()
    assert [s.decode("utf-8") for s in got] == tok.decode(ids)


def test_ids_to_string_edge_cases(word_tok):
    layer = word_tok.ids_to_string_layer()
    out = layer(tf.constant([[0, 1, 4, 5, 2, 4], [1, 11, 2**32 + 4, 9, 0, 0], [2, 4, 5, 6, 7, 8]],
                            tf.int64))
    # Out-of-range ids become "<unk>" in-graph rather than failing a serving request.
    assert out.numpy().tolist() == [b"the cat", b"<unk> <unk> mat", b""]
    assert layer(tf.zeros([2, 0], tf.int32)).numpy().tolist() == [b"", b""]


def test_layer_configs_round_trip(word_tok):
    layer = word_tok.string_to_ids_layer(max_length=3, truncate="left", name="s2i")
    config = layer.get_config()
    assert {k: config[k] for k in ("vocabulary", "level", "max_length", "truncate", "name")} == {
        "vocabulary": WORD_VOCAB, "level": "word", "max_length": 3, "truncate": "left",
        "name": "s2i"}
    clone = StringToIds.from_config(config)
    assert clone(tf.constant(["the cat sat on"])).numpy().tolist() == [[1, 6, 10]]
    back = IdsToString.from_config(word_tok.ids_to_string_layer().get_config())
    assert back(tf.constant([[1, 6, 10]])).numpy().tolist() == [b"sat on"]
    with pytest.raises(ValueError, match="must start with"):
        StringToIds(["a"])


def test_layers_inside_saved_model(tmp_path, word_tok):
    class RoundTrip(tf.Module):
        def __init__(self):
            super().__init__()
            self.to_ids = word_tok.string_to_ids_layer(max_length=4)
            self.to_string = word_tok.ids_to_string_layer()

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def encode(self, texts):
            return self.to_ids(texts)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def round_trip(self, texts):
            return self.to_string(self.to_ids(texts))

    tf.saved_model.save(RoundTrip(), str(tmp_path / "model"))
    loaded = tf.saved_model.load(str(tmp_path / "model"))
    texts = tf.constant(["the cat sat on the mat", "dog zebra", ""])
    assert loaded.encode(texts).numpy().tolist() == [[1, 4, 5, 6], [0, 1, 8, 3], [0, 0, 0, 1]]
    assert loaded.round_trip(texts).numpy().tolist() == [b"the cat sat", b"dog <unk>", b""]


def test_layers_in_functional_model_and_empty_vocabulary(word_tok):
    texts = keras.Input(shape=(), dtype="string")
    ids = word_tok.string_to_ids_layer()(texts)
    assert (ids.shape, ids.dtype) == ((None, None), "int32")
    model = keras.Model(texts, [ids, word_tok.ids_to_string_layer()(ids)])
    got_ids, got_text = model(tf.constant(["a zebra", "on"]))
    assert got_ids.numpy().tolist() == [[1, 7, 3], [0, 1, 10]]
    assert got_text.numpy().tolist() == [b"a <unk>", b"on"]
    empty = Tokenizer.from_texts([""])
    assert empty.vocabulary_size == 4
    assert empty.string_to_ids_layer()(tf.constant(["x y", ""])).numpy().tolist() == [
        [1, 3, 3], [0, 0, 1]]


def test_keras_hub_classes_without_keras_hub_say_how_to_install_it(tmp_path, monkeypatch):
    import tfpg
    from tfpg.hf.tokenizer import HFTokenizer
    from tfpg.options import HUB_INSTALL_HINT
    saved = tmp_path / "hub.json"
    saved.write_text('{"format": "tfpg.KerasHubTokenizer", "version": 1}')
    monkeypatch.setitem(sys.modules, "keras_hub", None)       # as if not installed
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    for call, user in [
            (lambda: tfpg.KerasHubPolicy.from_preset("gpt2_base_en"), "KerasHubPolicy"),
            (lambda: tfpg.KerasHubPolicy(object()), "KerasHubPolicy"),
            (lambda: tfpg.KerasHubTokenizer.from_preset("gpt2_base_en"), "KerasHubTokenizer"),
            (lambda: tfpg.KerasHubTokenizer.load(saved), "KerasHubTokenizer")]:
        with pytest.raises(ImportError) as info:
            call()
        assert str(info.value) == f"{user} needs keras-hub: {HUB_INSTALL_HINT}"
    with pytest.raises(ImportError, match=r'^HFTokenizer needs tokenizers: pip install '
                                          r'"tfpg\[hub\]"$'):
        HFTokenizer({"tokenizer.json": "{}"})
    # `tfpg train --model`'s one line names the hint once.
    from tfpg.options import UsageError
    from tfpg.run.model_source import load_policy
    with pytest.raises(UsageError) as info:
        load_policy("gpt2_base_en")
    assert str(info.value) == f"--model gpt2_base_en: KerasHubPolicy needs keras-hub: " \
                              f"{HUB_INSTALL_HINT}"
