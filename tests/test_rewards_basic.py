"""ExactMatch, Length, Keyword, Perplexity, RewardModel on hand-made examples."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfpg.rewards import (ExactMatch, Keyword, Length, Perplexity, RewardModel,
                          compute_rewards, train_reward_from_labels)
from tfpg.text import Tokenizer

TOK = Tokenizer.from_texts(["the cat sat on the mat", "a dog ran", "seven 7 Seven"])
EOS = 2


def ids_of(text):
    return TOK.encode(text, add_bos=False)


def completions(rows, width=6):
    """Each row is token ids; EOS is appended, junk after it; mask covers EOS."""
    ids = np.full([len(rows), width], ids_of("dog")[0], np.int32)
    mask = np.zeros([len(rows), width], np.float32)
    for b, row in enumerate(rows):
        ids[b, :len(row) + 1] = list(row) + [EOS]
        mask[b, :len(row) + 1] = 1.0
    return tf.constant(ids), tf.constant(mask)


def padded(rows, width):
    return tf.constant([list(r) + [0] * (width - len(r)) for r in rows], tf.int32)


# ExactMatch ----------------------------------------------------------------

def test_exact_match_ids_one_reference():
    ids, mask = completions([ids_of("the cat"), ids_of("the cat sat"), [], ids_of("cat the")])
    refs = padded([ids_of("the cat"), ids_of("the cat"), [], ids_of("the cat")], 4)
    out = ExactMatch(answer_key="reference")(None, ids, mask, {"reference": refs})
    assert out.dtype == tf.float32
    # Exact, not a prefix or a bag of words; an empty completion equals an empty answer.
    assert out.numpy().tolist() == [1.0, 0.0, 1.0, 0.0]


def test_exact_match_ids_several_references_ignores_missing_rows():
    ids, mask = completions([ids_of("a dog"), [], ids_of("the mat")])
    refs = tf.constant([[ids_of("the cat") + [0], ids_of("a dog") + [0], [0, 0, 0]],
                        [[0, 0, 0], [0, 0, 0], ids_of("a dog ran")],
                        [ids_of("the mat") + [0], [0, 0, 0], [0, 0, 0]]])
    out = ExactMatch(answer_key="reference")(None, ids, mask, {"reference": refs})
    assert out.numpy().tolist() == [1.0, 0.0, 1.0]


def test_exact_match_strings_in_graph():
    ids, mask = completions([ids_of("seven"), ids_of("Seven"), ids_of("seven 7")])
    answers = tf.constant(["seven", "seven", "seven"])
    reward = ExactMatch(tokenizer=TOK)

    @tf.function
    def score(i, m, a):
        return reward(None, i, m, {"answer": a})

    assert score(ids, mask, answers).numpy().tolist() == [1.0, 0.0, 0.0]


def test_exact_match_normalizer_both_sides():
    ids, mask = completions([ids_of("Seven"), ids_of("seven 7"), ids_of("cat")])
    reward = ExactMatch(tokenizer=TOK, normalizer=lambda s: s.lower().split(" ")[0])
    out = reward(None, ids, mask, {"answer": tf.constant([" seven", "SEVEN", "dog"])})
    # " seven".split(" ")[0] == "": normalisation is applied to both sides verbatim.
    assert out.numpy().tolist() == [0.0, 1.0, 0.0]
    strip = ExactMatch(tokenizer=TOK, normalizer=str.strip)
    assert strip(None, ids[:1], mask[:1], {"answer": tf.constant([" Seven "])}).numpy() == [1.0]
    # Id answers go through the tokenizer when there is a normalizer.
    by_ids = ExactMatch(answer_key="reference", tokenizer=TOK, normalizer=str.lower)
    refs = padded([ids_of("seven"), ids_of("seven"), ids_of("dog")], 2)
    assert by_ids(None, ids, mask, {"reference": refs}).numpy().tolist() == [1.0, 0.0, 0.0]


def test_exact_match_errors():
    ids, mask = completions([ids_of("cat")])
    with pytest.raises(ValueError, match="needs tokenizer="):
        ExactMatch()(None, ids, mask, {"answer": tf.constant(["cat"])})
    with pytest.raises(KeyError, match=r"needs batch\['answer'\]"):
        ExactMatch()(None, ids, mask, {"reference": ids})
    with pytest.raises(ValueError, match="normalizer needs a tokenizer"):
        ExactMatch(normalizer=str.strip)
    config = ExactMatch(answer_key="reference").get_config()
    assert config["answer_key"] == "reference" and config["normalizer"] is None


# Length --------------------------------------------------------------------

def test_length():
    ids, mask = completions([[5, 6, 7], [], [5]])
    unfinished = tf.constant([[5, 6, 7, 8, 9, 5]])  # hit max_new_tokens, no EOS
    assert Length()(None, ids, mask, {}).numpy().tolist() == [3.0, 0.0, 1.0]
    assert Length(target=2)(None, ids, mask, {}).numpy().tolist() == [-1.0, -2.0, -1.0]
    assert Length()(None, unfinished, tf.ones([1, 6]), {}).numpy().tolist() == [6.0]
    assert Length(eos_id=None)(None, ids, mask, {}).numpy().tolist() == [4.0, 1.0, 2.0]
    with pytest.raises(ValueError, match="target"):
        Length(target=-1)
    assert Length(target=4).get_config() == {"target": 4, "eos_id": 2, "name": "Length"}


# Keyword -------------------------------------------------------------------

def test_keyword_ids_and_multi_token_runs():
    ids, mask = completions([[7, 8, 9], [8, 7, 9], [9], []])
    reward = Keyword([7, [8, 9], [9, 8]])
    # Row 0: 7 and the run 8 9; row 1: 7 only (8 9 not contiguous); row 2: nothing.
    assert reward(None, ids, mask, {}).numpy().tolist() == pytest.approx([2 / 3, 1 / 3, 0, 0])


def test_keyword_ignores_tokens_after_eos():
    ids = tf.constant([[5, 2, 7, 7]])
    assert Keyword([7])(None, ids, tf.ones([1, 4]), {}).numpy().tolist() == [0.0]


def test_keyword_words_with_tokenizer():
    reward = Keyword(["cat", "mat"], tokenizer=TOK)
    ids, mask = completions([ids_of("the cat sat"), ids_of("on the mat cat")])
    assert reward(None, ids, mask, {}).numpy().tolist() == [0.5, 1.0]
    with pytest.raises(ValueError, match="not in the tokenizer's vocabulary"):
        Keyword(["zebra"], tokenizer=TOK)
    with pytest.raises(ValueError, match="pass tokenizer="):
        Keyword(["cat"])


def test_keyword_per_prompt_column():
    reward = Keyword(keywords_key="keywords")
    ids, mask = completions([[7, 8], [7, 8], [7]])
    batch = {"keywords": tf.constant([[7, 9], [8, 0], [0, 0]])}
    assert reward(None, ids, mask, batch).numpy().tolist() == [0.5, 1.0, 0.0]
    with pytest.raises(ValueError, match="exactly one of"):
        Keyword()


# Perplexity ----------------------------------------------------------------

def bigram_model(vocab, seed=0):
    """An LM whose logits at t depend only on token t: logits = table[token]."""
    table = np.random.default_rng(seed).normal(size=[vocab, vocab]).astype(np.float32)
    model = keras.Sequential([keras.Input([None], dtype="int32"),
                              keras.layers.Embedding(vocab, vocab)])
    model.layers[0].set_weights([table])
    return model, table


def log_softmax(x):
    x = x - x.max()
    return x - np.log(np.exp(x).sum())


def test_perplexity_matches_hand_computation():
    model, table = bigram_model(10)
    prompt = tf.constant([[0, 1, 4], [1, 5, 6]])  # left-padded, BOS first
    ids, mask = completions([[7, 8], []], width=4)
    out = Perplexity(model)(prompt, ids, mask, {}).numpy()
    # Row 0 scores 7 after 4, 8 after 7, EOS after 8; row 1 only EOS after 6.
    row0 = np.mean([log_softmax(table[4])[7], log_softmax(table[7])[8],
                    log_softmax(table[8])[EOS]])
    row1 = log_softmax(table[6])[EOS]
    np.testing.assert_allclose(out, [row0, row1], rtol=1e-5)
    neg_ppl = Perplexity(model, mode="neg_perplexity")(prompt, ids, mask, {}).numpy()
    np.testing.assert_allclose(neg_ppl, -np.exp(-np.array([row0, row1])), rtol=1e-5)
    assert np.all(out <= 0) and np.all(neg_ppl <= -1)  # higher is better, both modes


def test_perplexity_empty_completion_and_tf_function():
    model, _ = bigram_model(10)
    reward = Perplexity(model)
    prompt = tf.constant([[1, 4]])
    empty = reward(prompt, tf.constant([[0, 0]]), tf.zeros([1, 2]), {})
    assert empty.numpy().tolist() == [0.0]

    @tf.function
    def score(p, c, m):
        return compute_rewards(reward, p, c, m, {}).rewards

    ids, mask = completions([[7]], width=3)
    np.testing.assert_allclose(score(prompt, ids, mask), reward(prompt, ids, mask, {}))
    with pytest.raises(ValueError, match="mode"):
        Perplexity(model, mode="ppl")


# RewardModel ---------------------------------------------------------------

def test_reward_model_sees_tokens_before_eos():
    inputs = keras.Input([None], dtype="int32")
    total = keras.layers.Lambda(lambda x: keras.ops.sum(keras.ops.cast(x, "float32"), axis=1,
                                                        keepdims=True))(inputs)  # [B, 1]
    reward = RewardModel(keras.Model(inputs, total))
    ids, mask = completions([[5, 6], [7]])
    assert reward(None, ids, mask, {}).numpy().tolist() == [11.0, 7.0]  # EOS/junk excluded
    with_prompt = RewardModel(keras.Model(inputs, total), include_prompt=True)
    prompt = tf.constant([[1, 4], [0, 1]])
    assert with_prompt(prompt, ids, mask, {}).numpy().tolist() == [16.0, 8.0]
    config = reward.get_config()
    assert config["include_prompt"] is False and config["model"]["class_name"] == "Functional"


def test_train_reward_model_learns_labels():
    texts = ["the cat sat", "a dog ran", "the cat", "a dog", "cat sat on the mat",
             "dog ran a dog"] * 6
    labels = [1, 0, 1, 0, 1, 0] * 6
    reward = train_reward_from_labels(texts, labels, TOK, epochs=30, seed=1)
    assert isinstance(reward, RewardModel)
    ids, mask = completions([ids_of("the cat"), ids_of("a dog"), ids_of("cat mat")])
    scores = compute_rewards(reward, None, ids, mask, {}).rewards.numpy()
    assert scores.shape == (3,) and np.all((scores >= 0) & (scores <= 1))
    assert scores[0] > 0.8 and scores[1] < 0.2 and scores[2] > 0.5
    # Same seed, same model.
    again = train_reward_from_labels(texts, labels, TOK, epochs=30, seed=1)
    np.testing.assert_allclose(again(None, ids, mask, {}).numpy(), scores, rtol=1e-5)


def test_train_reward_model_regression_and_errors():
    texts = ["the cat", "a dog", "the mat"] * 4
    reward = train_reward_from_labels(texts, [2.0, -1.0, 0.5] * 4, TOK, epochs=60)
    ids, mask = completions([ids_of("the cat"), ids_of("a dog")])
    scores = reward(None, ids, mask, {}).numpy()
    assert scores[0] > 1.0 and scores[1] < 0.0  # linear head, not a probability
    with pytest.raises(ValueError, match="2 texts but 1 labels"):
        train_reward_from_labels(["a", "b"], [1], TOK)
