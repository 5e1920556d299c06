"""Tokenization of Hugging Face checkpoints equal to `tokenizers` (issue 21, item 2).

The reference ids are transformers' (`tokenizer(text)["input_ids"]`, each checkpoint's
own special-token policy) on a 2,200-string torture corpus, committed in
tests/data/hf/<family>/reference.npz by benchmarks/hf_fixtures.py. Training side
(`HFTokenizer.encode`, which runs `tokenizers`) and in-graph side (`HFStringToIds`, the
export's encoder, and the export's `tokenize` signature) must both give them.
"""

import json
import os
import sys

import numpy as np
import pytest
import tensorflow as tf

pytest.importorskip("keras_hub")
pytest.importorskip("tokenizers")

import tfpg  # noqa: E402
from tfpg.hf.tokenizer import HFTokenizer, translate_split_pattern  # noqa: E402
from tfpg.text.keras_hub_tokenizer import KerasHubTokenizer  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from hf_reference import checkpoint, corpus, corpus_ids, mismatches, reference  # noqa: E402

FAMILIES = ["gpt2", "llama3", "llama3_noeot", "qwen2", "gemma", "mistral"]
# Strings whose in-graph ids may differ from tokenizers' (none in the corpus): texts
# with U+E000 / U+E001, the private-use characters the graph uses as marker and NUL
# stand-in (tfpg/hf/tokenizer.py).
IN_GRAPH_EXCEPTIONS = {}


@pytest.fixture(scope="module")
def tokenizers_of():
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = HFTokenizer.from_directory(checkpoint(name))
        return cache[name]
    return get


def test_corpus_is_the_torture_corpus():
    texts = corpus()
    assert len(texts) >= 2000 and len(set(texts)) > 1900
    for piece in ("1234567890", "I'M SURE", "YOU'RE", "  \n", "\n  ", "\t", "你好世界",
                  "👨‍👩‍👧", "e\u0301", "\x00", "\x1b[31m", "<|endoftext|>", "<|eot_id|>",
                  "<start_of_turn>", "<|im_start|>"):
        assert any(piece in text for text in texts), piece


@pytest.mark.parametrize("name", FAMILIES)
def test_training_side_ids_equal_transformers(tokenizers_of, name):
    tokenizer = tokenizers_of(name)
    assert mismatches(tokenizer.encode(list(corpus())), corpus_ids(name)) == []


# Gemma's in-graph ids are checked through the export's `tokenize` signature below;
# llama3_noeot splits as llama3 does. Mistral: SentencePiece with a dummy prefix that
# tokenizers' Metaspace adds only to a text's first piece not opening with a space. (Each family's first in-graph run merges ~1,500
# words with KerasHub's BPE loop: a few seconds.)
@pytest.mark.parametrize("name", ["gpt2", "llama3", "qwen2", "mistral"])
def test_in_graph_ids_equal_transformers(tokenizers_of, name):
    tokenizer = tokenizers_of(name)
    layer = tokenizer.string_to_ids_layer(return_mask=True)
    ids, mask = layer(tf.constant(corpus()))
    got = [row[m > 0].tolist() for row, m in zip(ids.numpy(), mask.numpy())]
    bad = mismatches(got, corpus_ids(name))
    assert [text for text, _, _ in bad] == list(IN_GRAPH_EXCEPTIONS.get(name, [])), bad[:5]


@pytest.mark.parametrize("name, bos, eos, pad", [
    # GPT-2: <|endoftext|> is EOS (and pad), not prepended (add_bos_token false), as in
    # HF and TRL; tfpg used to prepend it.
    ("gpt2", None, "<|endoftext|>", "<|endoftext|>"),
    # Llama 3: the post-processor prepends <|begin_of_text|>; the instruct EOS.
    ("llama3", "<|begin_of_text|>", "<|eot_id|>", "<|eot_id|>"),
    ("llama3_noeot", "<|begin_of_text|>", "<|end_of_text|>", "<|end_of_text|>"),
    ("qwen2", None, "<|im_end|>", "<|endoftext|>"),
    ("gemma", "<bos>", "<eos>", "<pad>"),
    ("mistral", "<s>", "</s>", "</s>"),
])
def test_special_ids_are_the_checkpoints(tokenizers_of, name, bos, eos, pad):
    tokenizer = tokenizers_of(name)
    token_id = tokenizer.backend.token_to_id
    assert tokenizer.bos_id == (None if bos is None else token_id(bos))
    assert tokenizer.eos_id == token_id(eos)
    assert tokenizer.pad_id == token_id(pad)
    assert reference(name)["special_ids"].tolist() == [
        tokenizer.pad_id, -1 if tokenizer.bos_id is None else tokenizer.bos_id,
        tokenizer.eos_id]
    text = "Hello world"
    plain = tokenizer.backend.encode(text, add_special_tokens=False).ids
    assert tokenizer.encode(text) == ([] if bos is None else [token_id(bos)]) + plain
    assert tokenizer.encode(text, add_bos=False) == plain


def test_add_bos_and_eos_tokens_of_tokenizer_config_decide(tokenizers_of):
    files = dict(tokenizers_of("qwen2").hf_files)
    config = json.loads(files["tokenizer_config.json"])
    config.update(bos_token="<|endoftext|>", add_bos_token=True, add_eos_token=True)
    files["tokenizer_config.json"] = json.dumps(config)
    tokenizer = HFTokenizer(files)
    start, end = tokenizer.backend.token_to_id("<|endoftext|>"), tokenizer.eos_id
    plain = tokenizer.backend.encode("a b", add_special_tokens=False).ids
    assert tokenizer.encode("a b") == [start] + plain + [end]
    # max_length keeps both ends.
    assert tokenizer.encode("a b c d e", max_length=3) == [start, plain[0], end]
    layer = tokenizer.string_to_ids_layer(return_mask=True)
    ids, mask = layer(tf.constant(["a b", "a"]))
    assert ids.numpy()[0].tolist() == [start] + plain + [end]
    assert mask.numpy().tolist()[1] == [0] * (len(plain) - 1) + [1, 1, 1]


def test_save_load_keeps_the_files_byte_for_byte(tokenizers_of, tmp_path):
    tokenizer = tokenizers_of("gemma")
    path = tmp_path / "tokenizer.json"
    tokenizer.save(path)
    loaded = KerasHubTokenizer.load(path)
    assert isinstance(loaded, HFTokenizer)
    assert loaded.hf_files == tokenizer.hf_files
    for name, text in loaded.hf_files.items():
        with open(os.path.join(checkpoint("gemma"), name), encoding="utf-8", newline="") as f:
            assert f.read() == text
    assert loaded.sentencepiece_proto == tokenizer.sentencepiece_proto
    assert loaded.encode(list(corpus()[:50])) == tokenizer.encode(list(corpus()[:50]))
    assert loaded.decode(tokenizer.encode("café 12345")) == "café 12345"



def test_save_load_keeps_a_chat_template_set_on_the_tokenizer(tmp_path):
    # A fresh tokenizer: the module fixture's must not get a template set on it.
    tokenizer = HFTokenizer.from_directory(checkpoint("gpt2"))
    tokenizer.save(tmp_path / "plain.json")
    plain = json.loads((tmp_path / "plain.json").read_text(encoding="utf-8"))
    assert "chat_template" not in plain           # none set: only the files are kept
    template = tmp_path / "t.jinja"
    template.write_text("{{ eos_token }}{% for m in messages %}<{{ m.role }}>{{ m.content }}"
                        "{% endfor %}")
    tokenizer.chat_template = str(template)
    tokenizer.save(tmp_path / "templated.json")
    loaded = KerasHubTokenizer.load(tmp_path / "templated.json")
    assert isinstance(loaded, HFTokenizer)
    assert loaded.chat_template.source == template.read_text()
    assert loaded.apply_chat_template([{"role": "user", "content": "hi"}]) == \
        "<|endoftext|><user>hi"
    assert KerasHubTokenizer.load(tmp_path / "plain.json").chat_template_config() is None

@pytest.mark.parametrize("text, pieces", [
    # Llama 3's split, hand-derived: digits in threes, case-insensitive contractions,
    # a whitespace run before a word leaves its last space to the word, a run ending
    # in a newline is one piece.
    ("1234567890", ["123", "456", "789", "0"]),
    ("I'M SURE", ["I", "'M", " SURE"]),
    ("a  b", ["a", " ", " b"]),
    ("a \n  b", ["a", " \n", " ", " b"]),
    ("x\t!", ["x", "\t", "!"]),
    ("end  ", ["end", "  "]),
])
def test_llama3_split_in_re2_is_the_lookahead_regex(text, pieces):
    import tensorflow_text as tf_text
    from tfpg.hf.tokenizer import MARKER
    with open(os.path.join(checkpoint("llama3"), "tokenizer.json"), encoding="utf-8") as f:
        spec = json.load(f)
    pattern, marker_at = translate_split_pattern(
        spec["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"])
    marked = tf.strings.regex_replace(tf.constant([text]), marker_at, MARKER + r"\1\2")
    got = [p.decode() for p in tf_text.regex_split(marked, pattern, pattern)[0].numpy()
           if p.decode() != MARKER]
    assert got == pieces


def test_export_tokenize_signature_gives_transformers_ids(tmp_path):
    """One export (Gemma: SentencePiece, its special tokens written as text split out
    first): its `tokenize` signature (a SavedModel signature, callable from plain
    TensorFlow; here through tfpg.load, which also checks its ops) gives transformers'
    ids on the whole corpus."""
    policy = tfpg.KerasHubPolicy.from_preset(checkpoint("gemma"))
    path = str(tmp_path / "export")
    tfpg.export_saved_model(policy, policy.tokenizer, path, max_new_tokens=2)
    tokenize = tfpg.load(path).signatures["tokenize"]
    out = tokenize(prompts=tf.constant(corpus()))
    ids, mask = out["token_ids"].numpy(), out["mask"].numpy()
    got = [row[m > 0].tolist() for row, m in zip(ids, mask)]
    assert mismatches(got, corpus_ids("gemma")) == []
    assert (ids[mask == 0] == policy.tokenizer.pad_id).all()


def test_ignore_merges_takes_a_whole_word_token_in_graph_too(tokenizers_of):
    """Llama 3's tokenizer.json has `ignore_merges`: a word that is a token is that
    token even where no merge reaches it (here "ĠSURE", added to the vocabulary)."""
    files = dict(tokenizers_of("llama3").hf_files)
    spec = json.loads(files["tokenizer.json"])
    spec["model"]["ignore_merges"] = True
    for token in spec["added_tokens"]:      # the new token takes the first added id
        token["id"] += 1
    spec["model"]["vocab"]["ĠSURE"] = sure = len(spec["model"]["vocab"])
    tokenizer = HFTokenizer(dict(files, **{"tokenizer.json": json.dumps(spec)}))
    texts = ["I'M SURE", " SURE"] + list(corpus()[:100])
    want = [e.ids for e in tokenizer.backend.encode_batch(texts, add_special_tokens=False)]
    assert want[1] == [sure]
    got = tf.function(tokenizer.in_graph_encoder())(tf.constant(texts)).to_list()
    assert got == want
