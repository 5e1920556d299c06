"""Id rewards tell padding by masks, never by id 0 (a real token in KerasHub
vocabularies, GPT-2's "!"): BLEU, ExactMatch, Keyword and prompt_dataset's
"reference_mask"."""

import warnings

import numpy as np
import pytest
import tensorflow as tf
from nltk.translate import bleu_score as nltk_bleu

from tfpg.data import prompt_dataset
from tfpg.rewards import (BLEU, SMOOTHING_METHODS, ExactMatch, Keyword, compact_ids,
                          completion_token_mask, corpus_bleu, sentence_bleu)

EOS = 9  # not tfpg's 2: the EOS id comes from the tokenizer / policy


def nltk_sentence(references, hypothesis, method):
    smoothing = None if method == "none" else getattr(nltk_bleu.SmoothingFunction(), method)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return nltk_bleu.sentence_bleu(references, hypothesis, (0.25,) * 4, smoothing)


def zero_heavy_cases(count=300, seed=3, width=14, max_refs=3):
    """Random cases over ids 0..4 (0 in most rows, so n-grams with 0 repeat), real
    tokens scattered anywhere in padded rows whose filler is also 0.

    Returns hyp [count, width], hyp_mask, refs [count, max_refs, width], ref_mask
    and the same cases as nltk lists.
    """
    rng = np.random.default_rng(seed)
    hyp = np.zeros([count, width], np.int32)
    hyp_mask = np.zeros([count, width], np.float32)
    refs = np.zeros([count, max_refs, width], np.int32)
    ref_mask = np.zeros([count, max_refs, width], np.float32)
    hyps, ref_lists = [], []

    def place(row, mask, length):
        tokens = rng.integers(0, 5, length)
        slots = np.sort(rng.choice(width, length, replace=False))
        row[slots], mask[slots] = tokens, 1.0
        return tokens.tolist()

    for b in range(count):
        hyps.append(place(hyp[b], hyp_mask[b], rng.integers(0, width - 3)))
        ref_lists.append([place(refs[b, k], ref_mask[b, k], rng.integers(1, width - 3))
                          for k in range(rng.integers(1, max_refs + 1))])
    return hyp, hyp_mask, refs, ref_mask, hyps, ref_lists


@pytest.fixture(scope="module")
def cases():
    return zero_heavy_cases()


def test_compact_ids_by_mask_keeps_real_zeros():
    ids = tf.constant([[0, 7, 0, 5, 0], [3, 0, 0, 0, 0]])
    mask = tf.constant([[1, 0, 1, 1, 0], [0, 1, 1, 0, 0]])
    compact, lengths = compact_ids(ids, mask)
    assert lengths.numpy().tolist() == [3, 2]
    assert compact.numpy()[0, :3].tolist() == [0, 0, 5]
    assert compact.numpy()[1, :2].tolist() == [0, 0]


def test_completion_token_mask_eos_from_caller():
    ids = tf.constant([[0, 2, 9, 0], [0, 0, 0, 0]])
    mask = tf.constant([[1., 1., 1., 0.], [1., 1., 0., 0.]])
    assert completion_token_mask(ids, mask, eos_id=EOS).numpy().tolist() == [
        [1, 1, 0, 0], [1, 1, 0, 0]]  # 2 is an ordinary token here
    assert completion_token_mask(ids, mask, eos_id=None).numpy().tolist() == [
        [1, 1, 1, 0], [1, 1, 0, 0]]


@pytest.mark.parametrize("method", SMOOTHING_METHODS)
def test_sentence_bleu_with_real_zero_ids_equals_nltk(cases, method):
    hyp, hyp_mask, refs, ref_mask, hyps, ref_lists = cases
    assert sum(0 in h for h in hyps) > 100  # id 0 really is in the hypotheses ...
    assert sum(0 in r for rs in ref_lists for r in rs) > 200  # ... and references
    ours = sentence_bleu(hyp, refs, smoothing=method, hypothesis_mask=hyp_mask,
                         reference_mask=ref_mask).numpy()
    expected = [nltk_sentence(r, h, method) for h, r in zip(hyps, ref_lists)]
    assert np.max(np.abs(ours - expected)) <= 1e-6
    # Masking differs from treating 0 as padding on these cases.
    assert np.max(np.abs(sentence_bleu(hyp, refs, smoothing=method).numpy() - ours)) > 0.1
    # One reference each ([B, R]) and corpus BLEU take the masks too.
    one = sentence_bleu(hyp, refs[:, 0], smoothing=method, hypothesis_mask=hyp_mask,
                        reference_mask=ref_mask[:, 0]).numpy()
    expected = [nltk_sentence(r[:1], h, method) for h, r in zip(hyps, ref_lists)]
    assert np.max(np.abs(one - expected)) <= 1e-6
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        corpus = nltk_bleu.corpus_bleu(ref_lists, hyps)
    assert corpus_bleu(hyp, refs, hypothesis_mask=hyp_mask,
                       reference_mask=ref_mask) == pytest.approx(corpus, abs=1e-6)


def completions_with_eos(hyps, width, filler=0):
    """Tokens, then EOS, then `filler` (0, a real id); the mask covers EOS."""
    ids = np.full([len(hyps), width], filler, np.int32)
    mask = np.zeros([len(hyps), width], np.float32)
    for b, tokens in enumerate(hyps):
        ids[b, :len(tokens) + 1] = list(tokens) + [EOS]
        mask[b, :len(tokens) + 1] = 1.0
    return tf.constant(ids), tf.constant(mask)


@pytest.mark.parametrize("backend", ["tf", "nltk"])
def test_bleu_reward_reads_reference_mask_and_eos_id(cases, backend):
    _, _, refs, ref_mask, hyps, ref_lists = cases
    ids, mask = completions_with_eos(hyps, refs.shape[-1] + 1)
    batch = {"reference": tf.constant(refs), "reference_mask": tf.constant(ref_mask)}
    reward = BLEU(backend=backend, eos_id=EOS)
    ours = reward(None, ids, mask, batch).numpy()
    expected = [nltk_sentence(r, h, "method1") for h, r in zip(hyps, ref_lists)]
    assert np.max(np.abs(ours - expected)) <= 1e-6
    # eos_id=None: every masked-in token counts; here the mask stops before EOS.
    no_eos = tf.cast(tf.not_equal(ids, EOS), tf.float32) * mask
    assert np.max(np.abs(
        BLEU(backend=backend, eos_id=None)(None, ids, no_eos, batch).numpy() - ours)) == 0


def test_bleu_reward_without_mask_column_uses_pad_id():
    # Reference [0, 5, 6, 7] padded with 8, no "reference_mask": pad_id tells.
    ids, mask = completions_with_eos([[0, 5, 6, 7], [0, 5, 6, 7]], 6)
    batch = {"reference": tf.constant([[0, 5, 6, 7, 8], [0, 5, 6, 8, 8]])}
    reward = BLEU(eos_id=EOS, pad_id=8, smoothing="none")
    out = reward(None, ids, mask, batch).numpy()
    assert out[0] == pytest.approx(1.0)
    assert out[1] == pytest.approx(nltk_sentence([[0, 5, 6]], [0, 5, 6, 7], "none"))
    config = reward.get_config()
    assert config["pad_id"] == 8 and config["eos_id"] == EOS
    assert BLEU.from_config(config).get_config() == config


def test_exact_match_counts_a_real_zero():
    reward = ExactMatch(answer_key="reference", eos_id=EOS)
    ids, mask = completions_with_eos([[0, 5], [5, 0], [5], [], [0]], 4)
    refs = tf.constant([[0, 5], [5, 0], [5, 0], [0, 0], [0, 0]])
    refs_mask = tf.constant([[1, 1], [1, 0], [1, 1], [0, 0], [1, 0]])
    out = reward(None, ids, mask, {"reference": refs, "reference_mask": refs_mask})
    # [5, 0] != [5] and [5] != [5, 0]: the 0 is a token, not padding.
    assert out.numpy().tolist() == [1.0, 0.0, 0.0, 1.0, 1.0]
    # Several answers: a missing one (no real token) matches nothing, not "".
    several = tf.constant([[[5, 0], [0, 0]], [[7, 7], [0, 0]]])
    several_mask = tf.constant([[[1, 1], [0, 0]], [[1, 1], [0, 0]]])
    ids, mask = completions_with_eos([[5, 0], []], 4)
    out = reward(None, ids, mask, {"reference": several, "reference_mask": several_mask})
    assert out.numpy().tolist() == [1.0, 0.0]
    # Without a mask column the answers' pad_id tells; get_config has it.
    by_pad = ExactMatch(answer_key="reference", eos_id=EOS, pad_id=8)
    ids, mask = completions_with_eos([[0, 5], [0]], 4)
    out = by_pad(None, ids, mask, {"reference": tf.constant([[0, 5, 8], [0, 5, 8]])})
    assert out.numpy().tolist() == [1.0, 0.0]
    assert by_pad.get_config()["pad_id"] == 8
    assert ExactMatch.from_config(by_pad.get_config()).get_config() == by_pad.get_config()


def test_keyword_counts_a_real_zero():
    reward = Keyword([0, [5, 0]], eos_id=EOS)
    ids, mask = completions_with_eos([[5, 0], [0, 5], [5], []], 5)  # filler after EOS is 0
    assert reward(None, ids, mask, {}).numpy().tolist() == [1.0, 0.5, 0.0, 0.0]
    # Per-prompt keywords: the mask column (or pad_id) tells padding, not 0.
    per_prompt = Keyword(keywords_key="keywords", eos_id=EOS)
    batch = {"keywords": tf.constant([[0, 7], [0, 5], [0, 0]]),
             "keywords_mask": tf.constant([[1, 0], [1, 1], [0, 0]])}
    ids, mask = completions_with_eos([[0], [5], [0]], 3)
    assert per_prompt(None, ids, mask, batch).numpy().tolist() == [1.0, 0.5, 0.0]
    by_pad = Keyword(keywords_key="keywords", eos_id=EOS, pad_id=8)
    out = by_pad(None, ids, mask, {"keywords": tf.constant([[0, 8], [0, 5], [8, 8]])})
    assert out.numpy().tolist() == [1.0, 0.5, 0.0]
    assert by_pad.get_config()["pad_id"] == 8
    with pytest.raises(ValueError, match="non-negative"):
        Keyword([-1])


class BangTokenizer:
    """GPT-2-like: "!" is id 0, pad = BOS = EOS = 9 (only what prompt_dataset uses)."""

    pad_id, bos_id, eos_id = EOS, EOS, EOS
    _ids = {"!": 0, "a": 5, "b": 6}

    def encode(self, text, add_bos=True, max_length=None, truncate=None):
        ids = [self._ids[word] for word in text.split()]
        return [self.bos_id] + ids if add_bos else ids


def test_prompt_dataset_reference_mask_feeds_the_rewards():
    tok = BangTokenizer()
    ds = prompt_dataset(["a", "b"], tok, references=["a !", "!"])
    batch = next(iter(ds))
    assert batch["reference"].numpy().tolist() == [[5, 0], [0, EOS]]  # pad with pad_id
    assert batch["reference_mask"].numpy().tolist() == [[1, 1], [1, 0]]
    ids, mask = completions_with_eos([[5, 0], [0, 0]], 3)
    match = ExactMatch(answer_key="reference", eos_id=tok.eos_id)(None, ids, mask, batch)
    assert match.numpy().tolist() == [1.0, 0.0]
    bleu = BLEU(max_order=1, smoothing="none", eos_id=tok.eos_id)(None, ids, mask, batch)
    assert bleu.numpy().tolist() == pytest.approx([1.0, 0.5])  # 1 of [0, 0] clipped to 1
    several = next(iter(prompt_dataset(["a", "b"], tok, references=[["a !", "!"], ["b"]])))
    assert several["reference"].numpy().tolist() == [[[5, 0], [0, EOS]], [[6, EOS], [EOS, EOS]]]
    assert several["reference_mask"].numpy().tolist() == [[[1, 1], [1, 0]], [[1, 0], [0, 0]]]
    with pytest.raises(ValueError, match="reserved"):
        prompt_dataset(["a"], tok, extras={"reference_mask": [1]})
