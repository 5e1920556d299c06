"""BLEU parity with nltk: sentence_bleu, corpus_bleu and the BLEU reward."""

import math
import warnings

import numpy as np
import pytest
import tensorflow as tf
from nltk.translate import bleu_score as nltk_bleu

from tfpg.rewards import BLEU, SMOOTHING_METHODS, corpus_bleu, sentence_bleu
from tfpg.rewards.bleu import bleu_from_statistics, bleu_statistics

NUM_CASES = 2500


def nltk_smoothing(method):
    return None if method == "none" else getattr(nltk_bleu.SmoothingFunction(), method)


def nltk_sentence(references, hypothesis, method="method1", max_order=4):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # method0 warns on every zero order
        return nltk_bleu.sentence_bleu(references, hypothesis, (1.0 / max_order,) * max_order,
                                       nltk_smoothing(method))


def random_cases(count, seed, vocab=6, max_len=20, max_refs=3, holes=False):
    """Random hypotheses (length 0..20, a third of them 0..4) with 1..3 references
    (length 1..20, a third 1..4) from a small vocabulary, so n-grams repeat.

    Returns padded arrays hyp [count, 20], refs [count, 3, 20] (missing rows all
    zero) and the same cases as nltk-style lists. With `holes`, padding zeros are
    also scattered inside rows (they must be ignored).
    """
    rng = np.random.default_rng(seed)
    width = max_len + (8 if holes else 0)
    hyp = np.zeros([count, width], np.int32)
    refs = np.zeros([count, max_refs, width], np.int32)
    hyps, ref_lists = [], []

    def place(row, tokens):
        slots = np.sort(rng.choice(width, len(tokens), replace=False)) if holes else \
            np.arange(len(tokens))
        row[slots] = tokens

    for b in range(count):
        length = rng.integers(0, 5) if rng.random() < 1 / 3 else rng.integers(0, max_len + 1)
        tokens = rng.integers(4, 4 + vocab, length)
        place(hyp[b], tokens)
        hyps.append(tokens.tolist())
        references = []
        for k in range(rng.integers(1, max_refs + 1)):
            length = rng.integers(1, 5) if rng.random() < 1 / 3 else rng.integers(1, max_len + 1)
            tokens = rng.integers(4, 4 + vocab, length)
            place(refs[b, k], tokens)
            references.append(tokens.tolist())
        ref_lists.append(references)
    return hyp, refs, hyps, ref_lists


@pytest.fixture(scope="module")
def cases():
    return random_cases(NUM_CASES, seed=0)


@pytest.mark.parametrize("method", SMOOTHING_METHODS)
def test_sentence_bleu_matches_nltk_on_random_cases(cases, method):
    hyp, refs, hyps, ref_lists = cases
    ours = sentence_bleu(hyp, refs, smoothing=method).numpy()
    expected = np.array([nltk_sentence(r, h, method) for h, r in zip(hyps, ref_lists)])
    assert ours.dtype == np.float32 and ours.shape == (NUM_CASES,)
    assert np.max(np.abs(ours.astype(np.float64) - expected)) <= 1e-6
    # The cases exercise the corner cases, not just zeros.
    assert np.sum(expected > 0.3) > 20 and np.sum(expected == 0) > 100
    assert sum(len(h) < 4 for h in hyps) > 300 and sum(len(h) == 0 for h in hyps) > 20


@pytest.mark.parametrize("method", SMOOTHING_METHODS)
def test_float64_statistics_match_nltk_to_machine_precision(cases, method):
    hyp, refs, hyps, ref_lists = cases
    ours = bleu_from_statistics(*bleu_statistics(hyp, refs), smoothing=method).numpy()
    expected = np.array([nltk_sentence(r, h, method) for h, r in zip(hyps, ref_lists)])
    assert ours.dtype == np.float64
    np.testing.assert_allclose(ours, expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("max_order", [1, 2, 3, 5])
@pytest.mark.parametrize("method", ["none", "method1", "method4"])
def test_other_orders_match_nltk_weights(max_order, method):
    hyp, refs, hyps, ref_lists = random_cases(400, seed=max_order)
    ours = sentence_bleu(hyp, refs, max_order=max_order, smoothing=method).numpy()
    expected = [nltk_sentence(r, h, method, max_order) for h, r in zip(hyps, ref_lists)]
    assert np.max(np.abs(ours - expected)) <= 1e-6


@pytest.mark.parametrize("method", ["none", "method2", "method3"])
def test_single_reference_rank2_and_padding_holes(method):
    hyp, refs, hyps, ref_lists = random_cases(600, seed=7, max_refs=1, holes=True)
    ours = sentence_bleu(hyp, refs[:, 0, :], smoothing=method).numpy()
    expected = [nltk_sentence(r, h, method) for h, r in zip(hyps, ref_lists)]
    assert np.max(np.abs(ours - expected)) <= 1e-6


@pytest.mark.parametrize("scale", [1, 10_000, 60_000, 2 ** 28])
def test_large_token_ids_stay_exact(scale):
    # Ids up to 2^30: from 60_000 on, packed 4-gram keys would overflow int64, so
    # they are ranked per row first (10_000 still packs); results must not change.
    hyp, refs, hyps, ref_lists = random_cases(500, seed=5, vocab=4)
    ids = lambda x: np.where(x > 0, (x - 3) * scale + 3, 0)  # noqa: E731
    ours = sentence_bleu(ids(hyp), ids(refs), smoothing="method1").numpy()
    expected = [nltk_sentence(r, h, "method1") for h, r in zip(hyps, ref_lists)]
    assert np.max(np.abs(ours - expected)) <= 1e-6


def test_works_inside_tf_function_with_unknown_shapes(cases):
    hyp, refs, hyps, ref_lists = cases

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32),
                                  tf.TensorSpec([None, None, None], tf.int32)])
    def score(h, r):
        return sentence_bleu(h, r, smoothing="method3")

    ours = score(hyp[:500], refs[:500]).numpy()
    expected = [nltk_sentence(r, h, "method3") for h, r in zip(hyps[:500], ref_lists[:500])]
    assert np.max(np.abs(ours - expected)) <= 1e-6
    assert score.experimental_get_tracing_count() == 1
    # Shorter rows than max_order and a batch of one reuse the same graph.
    # method3 on a 1-token match: p = 1, 1/2, 1/4, 1/8.
    assert score(tf.constant([[4]]), tf.constant([[[4]]])).numpy()[0] == pytest.approx(
        64 ** -0.25, abs=1e-7)
    assert score.experimental_get_tracing_count() == 1


def test_hand_made_corner_cases():
    # (hypothesis, references, smoothing, nltk value computed by hand)
    rows = [
        ([4, 5, 6, 7], [[4, 5, 6, 7]], "none", 1.0),
        ([], [[4, 5]], "method1", 0.0),  # empty hypothesis: 0 whatever smoothing
        ([9, 9], [[4, 5]], "method2", 0.0),  # no unigram match -> 0 before smoothing
        # Shorter than max_order: zero orders are 0/1, smoothing decides.
        ([4, 5], [[4, 5]], "method1", math.exp(0.25 * (2 * math.log(0.1)))),
        ([4, 5], [[4, 5]], "method2", math.exp(0.25 * (2 * math.log(1 / 2)))),
        ([4, 5], [[4, 5]], "method3", math.exp(0.25 * (math.log(1 / 2) + math.log(1 / 4)))),
        # method4, length 2: p = ln(2) / (2^k * 5) for k = 1, 2.
        ([4, 5], [[4, 5]], "method4",
         math.exp(0.25 * (math.log(math.log(2) / 10) + math.log(math.log(2) / 20)))),
        # method4, length 1: zero orders are left at 0 and dropped from the mean.
        ([4], [[4]], "method4", 1.0),
        ([4], [[4, 5]], "method4", math.exp(1 - 2) * 1.0),
        # Brevity penalty: closest reference length, ties to the shorter one.
        ([4, 4, 4, 4, 4, 4], [[4] * 7, [4] * 5], "method1", 1.0),
        ([4, 4, 4, 4, 4, 4], [[4] * 7, [4] * 9], "method1", math.exp(1 - 7 / 6)),
        # Clipping: "the the the" against one "the"; p4 has no 4-gram at all (0/1).
        ([4, 4, 4], [[4, 5, 6]], "method1",
         math.exp(0.25 * (math.log(1 / 3) + math.log(0.1 / 2) + 2 * math.log(0.1)))),
    ]
    width = 10
    for hypothesis, references, method, value in rows:
        h = np.zeros([1, width], np.int32)
        h[0, :len(hypothesis)] = hypothesis
        r = np.zeros([1, 3, width], np.int32)
        for k, ref in enumerate(references):
            r[0, k, :len(ref)] = ref
        ours = float(sentence_bleu(h, r, smoothing=method)[0])
        assert abs(ours - value) <= 1e-6, (hypothesis, references, method)
        assert abs(nltk_sentence(references, hypothesis, method) - value) <= 1e-12


def test_no_smoothing_zero_order_gives_zero():
    # 3-gram and 4-gram have no match: nltk warns and returns ~1e-77 (exactly as ours).
    ours = sentence_bleu([[4, 5, 6, 4, 5]], [[4, 5, 7, 4, 5]], smoothing="none").numpy()
    assert ours[0] == 0.0
    assert nltk_sentence([[4, 5, 7, 4, 5]], [4, 5, 6, 4, 5], "none") < 1e-70


def test_missing_references_are_ignored_and_all_missing_scores_zero():
    hyp = tf.constant([[4, 5, 6, 7], [4, 5, 6, 7]])
    refs = tf.constant([[[0, 0, 0, 0, 0, 0], [4, 5, 6, 7, 0, 0]],
                        [[0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]]])
    assert sentence_bleu(hyp, refs).numpy().tolist() == [1.0, 0.0]


def test_argument_errors():
    with pytest.raises(ValueError, match="smoothing must be one of"):
        sentence_bleu([[4]], [[4]], smoothing="method7")
    with pytest.raises(ValueError, match="max_order"):
        sentence_bleu([[4]], [[4]], max_order=0)
    with pytest.raises(ValueError, match=r"\[B, R\] or \[B, K, R\]"):
        sentence_bleu([[4]], [4])


@pytest.mark.parametrize("method", SMOOTHING_METHODS)
def test_corpus_bleu_matches_nltk(cases, method):
    hyp, refs, hyps, ref_lists = cases
    for start in range(0, 2000, 250):
        chunk = slice(start, start + 250)
        ours = corpus_bleu(hyp[chunk], refs[chunk], smoothing=method)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = nltk_bleu.corpus_bleu(ref_lists[chunk], hyps[chunk],
                                             smoothing_function=nltk_smoothing(method))
        assert isinstance(ours, float)
        assert abs(ours - expected) <= 1e-9


@pytest.mark.parametrize("method", SMOOTHING_METHODS)
def test_corpus_bleu_small_corpora_and_token_lists(method):
    # Tiny corpora hit the corner cases: short totals, zero orders, method4's corpus length.
    hyp, refs, hyps, ref_lists = random_cases(300, seed=11, max_len=4)
    for start in range(0, 300, 3):
        chunk = slice(start, start + 3)
        words = [[f"w{t}" for t in h] for h in hyps[chunk]]
        word_refs = [[[f"w{t}" for t in r] for r in rs] for rs in ref_lists[chunk]]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = nltk_bleu.corpus_bleu(word_refs, words,
                                             smoothing_function=nltk_smoothing(method))
        assert abs(corpus_bleu(words, word_refs, smoothing=method) - expected) <= 1e-9
        assert abs(corpus_bleu(hyp[chunk], refs[chunk], smoothing=method) - expected) <= 1e-9


def test_corpus_bleu_is_not_the_mean_of_sentence_scores():
    hyps = [list("abcd"), list("ab")]
    refs = [[list("abcd")], [list("ac")]]
    assert corpus_bleu(hyps, refs) == pytest.approx(0.6756000774035172, abs=1e-12)
    with pytest.raises(ValueError, match="2 hypotheses but 1 reference"):
        corpus_bleu(hyps, refs[:1])


def completions_with_eos(hyp, seed=0):
    """Appends EOS and random junk after it; mask covers the tokens and the EOS."""
    rng = np.random.default_rng(seed)
    count, width = hyp.shape
    ids = rng.integers(4, 10, [count, width + 3]).astype(np.int32)
    mask = np.zeros([count, width + 3], np.float32)
    for b in range(count):
        tokens = hyp[b][hyp[b] > 0]
        ids[b, :len(tokens)] = tokens
        ids[b, len(tokens)] = 2
        mask[b, :len(tokens) + 1] = 1.0
    return ids, mask


@pytest.mark.parametrize("method", ["method1", "none"])
def test_bleu_reward_tf_and_nltk_backends_agree(cases, method):
    hyp, refs, hyps, ref_lists = cases
    hyp, refs = hyp[:300], refs[:300]
    ids, mask = completions_with_eos(hyp)
    prompt = tf.ones([300, 2], tf.int32)
    batch = {"reference": tf.constant(refs)}
    fast = BLEU(smoothing=method)(prompt, ids, mask, batch).numpy()
    slow = BLEU(smoothing=method, backend="nltk")(prompt, ids, mask, batch).numpy()
    expected = [nltk_sentence(r, h, method) for h, r in zip(hyps[:300], ref_lists[:300])]
    assert fast.dtype == np.float32 and slow.dtype == np.float32
    assert np.max(np.abs(fast - expected)) <= 1e-6
    assert np.max(np.abs(slow - expected)) <= 1e-6

    @tf.function
    def in_graph(p, c, m, b):
        return BLEU(smoothing=method, backend="nltk")(p, c, m, b)

    assert np.max(np.abs(in_graph(prompt, ids, mask, batch).numpy() - slow)) == 0


def test_bleu_reward_cuts_at_eos_and_reads_its_key():
    reward = BLEU(reference_key="target", max_order=2, smoothing="none")
    ids = tf.constant([[4, 5, 2, 4, 5], [4, 5, 6, 0, 0]])  # 2nd never stopped
    mask = tf.constant([[1., 1., 1., 0., 0.], [1., 1., 1., 0., 0.]])
    out = reward(None, ids, mask, {"target": tf.constant([[4, 5], [4, 5]], tf.int64)})
    assert out.numpy().tolist() == pytest.approx([1.0, math.sqrt(2 / 3 * 1 / 2)])
    with pytest.raises(KeyError, match=r"needs batch\['target'\]"):
        reward(None, ids, mask, {"reference": ids})
    assert BLEU.from_config(reward.get_config()).get_config() == reward.get_config()
    with pytest.raises(ValueError, match="backend"):
        BLEU(backend="torch")
