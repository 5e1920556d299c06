"""Tests for the bundled tasks: seeded data, the teachers' flaws, rewards, metrics."""

import re

import numpy as np
import pytest
import tensorflow as tf
from nltk.translate.bleu_score import SmoothingFunction
from nltk.translate.bleu_score import sentence_bleu as nltk_sentence_bleu

from tfpg.tasks import TASKS, EpisodeTask, get_task
from tfpg.tasks.arithmetic import carry_free_sum, has_carry, parse_prompt
from tfpg.tasks.keywords import DEFAULT_KEYWORDS, distinct_n
from tfpg.tasks.translate import ADJECTIVES, NOUNS, TranslateTask, parse_source

SMALL = {"num_train": 200, "num_heldout": 100, "num_pretrain": 400}
# Single-turn tasks: one prompt per example. (The multi-turn tasks, whose episodes
# may share a prompt, are tested in test_multi_turn.py.)
PROMPT_TASKS = sorted(name for name in TASKS if not issubclass(TASKS[name], EpisodeTask))


@pytest.fixture(scope="module")
def tasks():
    """Each task with its default sizes and seed 0."""
    return {name: get_task(name, seed=0) for name in TASKS}


def _snapshot(task):
    return (task.pretrain_texts, task.train.prompts, task.train.references, task.train.extras,
            task.heldout.prompts, task.heldout.references, task.heldout.extras)


def _pad(rows):
    """Right-pads lists of ids with 0 -> int32 [B, T]."""
    width = max(len(r) for r in rows)
    return tf.constant([r + [0] * (width - len(r)) for r in rows], tf.int32)


def _completion(tokenizer, texts, width):
    """Completion ids for texts: tokens, EOS, then zeros -> (ids [B, width], mask)."""
    rows = [tokenizer.encode(t, add_bos=False) + [tokenizer.eos_id] for t in texts]
    ids = [r + [0] * (width - len(r)) for r in rows]
    mask = [[1.0] * len(r) + [0.0] * (width - len(r)) for r in rows]
    return tf.constant(ids, tf.int32), tf.constant(mask, tf.float32)


# --- every task ---------------------------------------------------------------------

@pytest.mark.parametrize("name", PROMPT_TASKS)
def test_generators_are_seeded(name):
    first = get_task(name, seed=3, **SMALL)
    again = get_task(name, seed=3, **SMALL)
    other = get_task(name, seed=4, **SMALL)
    assert _snapshot(first) == _snapshot(again)
    assert first.pretrain_texts != other.pretrain_texts
    assert first.train.prompts != other.train.prompts
    assert first.heldout.prompts != other.heldout.prompts
    assert (len(first.train), len(first.heldout), len(first.pretrain_texts)) == (200, 100, 400)


@pytest.mark.parametrize("name", PROMPT_TASKS)
def test_heldout_prompts_are_unseen(name, tasks):
    task = tasks[name]
    heldout = set(task.heldout.prompts)
    assert not heldout & set(task.train.prompts)
    # No teaching text starts with a held-out prompt.
    if name == "preference":  # prompts of 3 or 4 words, each a whole (request, topic)
        assert not any(t.startswith(p + " ") for t in task.pretrain_texts for p in heldout)
        return
    separator = {"arithmetic": "=", "translate": "=>", "keywords": None}[name]
    if separator:
        taught = {t[:t.index(separator) + len(separator)] for t in task.pretrain_texts}
        assert not heldout & taught
    else:
        heads = {" ".join(p.split()[:2]) for p in heldout}
        assert not heads & {" ".join(t.split()[:2]) for t in task.pretrain_texts}
        assert not heads & {" ".join(p.split()[:2]) for p in task.train.prompts}


@pytest.mark.parametrize("name", sorted(TASKS))
def test_tokenizer_covers_all_text_without_unk(name, tasks):
    task = tasks[name]
    tokenizer = task.tokenizer()
    assert tokenizer.level == task.level
    assert tokenizer.vocabulary_size < 100
    for text in task.texts():
        assert tokenizer.unk_id not in tokenizer.encode(text), text
    for references in task.heldout.references:
        for reference in references if isinstance(references, list) else [references]:
            assert tokenizer.decode(tokenizer.encode(reference)) == reference


@pytest.mark.parametrize("name", sorted(TASKS))
def test_interface_attributes(name, tasks):
    task = tasks[name]
    assert task.name == name
    assert task.level in ("word", "char")
    assert isinstance(task.pretrain_epochs, int) and task.pretrain_epochs > 0
    assert task.primary_metric in task.evaluate(task.heldout.prompts[:4],
                                                 ["x"] * 4, "heldout")
    tokenizer = task.tokenizer()
    longest = max(len(tokenizer.encode(r[0] if isinstance(r, list) else r, add_bos=False))
                  for r in task.heldout.references)
    assert task.max_new_tokens > longest  # room for the answer and its EOS


def test_get_task_unknown_name_lists_known_ones():
    with pytest.raises(ValueError, match="unknown task 'chess'.*arithmetic.*keywords.*translate"):
        get_task("chess")


def test_split_must_be_known(tasks):
    with pytest.raises(ValueError, match="split must be"):
        tasks["arithmetic"].split("test")


# --- arithmetic ---------------------------------------------------------------------

def test_carry_helpers():
    assert carry_free_sum(457, 38) == 485 and has_carry(457, 38)
    assert carry_free_sum(999, 1) == 990 and has_carry(999, 1)
    assert carry_free_sum(12, 34) == 46 and not has_carry(12, 34)
    assert carry_free_sum(55, 45) == 90  # 5+5 -> 0, 5+4 -> 9
    assert parse_prompt("123+459=") == (123, 459)
    with pytest.raises(ValueError, match="457\\+38="):
        parse_prompt("what is 2+2")


@pytest.mark.parametrize("flaw_rate", [0.0, 0.6, 1.0])
def test_arithmetic_teacher_drops_carries_at_the_requested_rate(flaw_rate):
    task = get_task("arithmetic", seed=1, flaw_rate=flaw_rate, num_pretrain=4000)
    flawed, carries = 0, 0
    for text in task.pretrain_texts:
        a, b, written = map(int, re.fullmatch(r"(\d+)\+(\d+)=(\d+)", text).groups())
        assert 10 <= a <= 999 and 10 <= b <= 999
        if not has_carry(a, b):
            assert written == a + b, text  # only carry examples are flawed
            continue
        carries += 1
        assert written in (a + b, carry_free_sum(a, b)), text
        flawed += written == carry_free_sum(a, b)
    assert carries > 2000
    assert abs(flawed / carries - flaw_rate) < 0.04


def test_arithmetic_references_and_extras_are_correct(tasks):
    task = tasks["arithmetic"]
    for split in (task.train, task.heldout):
        for prompt, reference, answer, carry in zip(split.prompts, split.references,
                                                    split.extras["answer"],
                                                    split.extras["carry"]):
            a, b = parse_prompt(prompt)
            assert reference == answer == str(a + b)
            assert carry == has_carry(a, b)
    assert 0.6 < np.mean(task.heldout.extras["carry"]) < 0.9


def test_arithmetic_reward_in_graph(tasks):
    task = tasks["arithmetic"]
    tokenizer = task.tokenizer()
    batch = next(iter(task.prompt_dataset(tokenizer, split="heldout", batch_size=64)))
    assert set(batch) == {"prompt", "prompt_mask", "reference", "reference_mask", "answer",
                          "carry"}
    carry = np.flatnonzero(batch["carry"].numpy())[:3]
    batch = {k: tf.gather(v, carry) for k, v in batch.items()}
    pairs = [parse_prompt(p) for p in tokenizer.decode(batch["prompt"].numpy())]
    correct = [str(a + b) for a, b in pairs]
    dropped = [str(carry_free_sum(a, b)) for a, b in pairs]
    reward = tf.function(task.reward(tokenizer))
    width = task.max_new_tokens + 2

    ids, mask = _completion(tokenizer, correct, width)
    assert ids.numpy()[:, -2:].tolist() == [[0, 0]] * 3  # EOS, then padding
    np.testing.assert_array_equal(reward(batch["prompt"], ids, mask, batch), [1, 1, 1])
    ids, mask = _completion(tokenizer, dropped, width)
    np.testing.assert_array_equal(reward(batch["prompt"], ids, mask, batch), [0, 0, 0])
    # Digits after the EOS (masked out) do not count; a longer answer does.
    ids, mask = _completion(tokenizer, [correct[0], correct[1] + "1", correct[2][:-1]], width)
    ids = tf.tensor_scatter_nd_update(ids, [[0, width - 1]], [tokenizer.token_to_id("7")])
    np.testing.assert_array_equal(reward(batch["prompt"], ids, mask, batch), [1, 0, 0])


def test_arithmetic_evaluate_splits_carry_and_no_carry():
    task = get_task("arithmetic", **SMALL)
    prompts = ["12+34=", "40+50=", "457+38=", "999+1=", "19+19="]
    completions = ["46", "91", "485", "1000", "38 "]
    metrics = task.evaluate(prompts, completions, "heldout")
    assert metrics == {"exact_match": 0.6, "exact_match_no_carry": 0.5,
                       "exact_match_carry": 2 / 3, "dropped_carry": 1 / 3}
    only_carry = task.evaluate(["457+38="], ["495"])
    assert only_carry["exact_match_carry"] == 1.0
    assert np.isnan(only_carry["exact_match_no_carry"])
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        task.evaluate(["1+2=", "3+4="], ["3"])


# --- translate ----------------------------------------------------------------------

def test_translate_hand_checked_examples():
    assert TranslateTask.translations("the big cat sleeps =>") == [
        "la kata granda dormas", "la kata granda reposas",
        "la kata magna dormas", "la kata magna reposas"]
    # SOV, object marker, adjective after its (feminine) noun, plural verb.
    assert TranslateTask.translations("some boys see a small bird") == [
        "unos knaboj una bira pikola ka vidan", "unos knaboj una bira pikola ka miran",
        "unos knaboj una bira mikra ka vidan", "unos knaboj una bira mikra ka miran"]
    assert TranslateTask.translations("the red girls follow the horse") == [
        "las filaj ruba lo ekvo ka sekvan", "las filaj ruba lo ekvo ka trakan",
        "las filaj rosa lo ekvo ka sekvan", "las filaj rosa lo ekvo ka trakan"]
    assert TranslateTask.translations("a dog likes some cats") == [
        "un kano unas kataj ka amas", "un kano unas kataj ka gustas"]
    for bad in ("a dogs sleeps", "the dog sleep", "the dog sleeps a cat", "the dog sees",
                "dog sees cat", "hello"):
        with pytest.raises(ValueError):
            parse_source(bad)


def test_translate_references_differ_by_synonyms_and_reorder(tasks):
    task = tasks["translate"]
    nouns = {stem + ("o" if g == "m" else "a") + j for *_, stem, g in NOUNS for j in ("", "j")}
    counts = set()
    for prompt, references in zip(task.heldout.prompts, task.heldout.references):
        source = prompt.split()
        assert source[-1] == "=>"
        counts.add(len(references))
        assert len(set(references)) == len(references)
        first = references[0].split()
        for reference in references[1:]:
            words = reference.split()
            assert len(words) == len(first)
            # Synonyms only: the nouns, determiners and the marker stay put.
            assert [w for w in words if w in nouns] == [w for w in first if w in nouns]
            differ = [i for i, (x, y) in enumerate(zip(first, words)) if x != y]
            assert 1 <= len(differ) <= 2
        # Subject-object-verb: the verb is last, after the object marker.
        if len([w for w in first if w in nouns]) == 2:
            assert first[-2] == "ka"
        assert first[-1].endswith(("as", "an"))
        # Source words never appear in the target.
        assert not set(source) & set(first)
    assert counts == {2, 4}


def _agrees(reference):
    """True when every determiner and adjective has the gender of its noun."""
    genders = {stem: gender for *_, stem, gender in NOUNS}
    adjectives = {stem for stems in ADJECTIVES.values() for stem in stems}
    feminine_determiners = {"la", "las", "una", "unas"}
    words = reference.split()
    for i, word in enumerate(words):
        stem = word.rstrip("j")[:-1]
        if stem not in genders:
            continue
        feminine = genders[stem] == "f"
        if (words[i - 1] in feminine_determiners) != feminine:
            return False
        following = words[i + 1] if i + 1 < len(words) else ""
        if following[:-1] in adjectives and (following[-1] == "a") != feminine:
            return False
    return True


def test_translate_agreement_holds_in_references(tasks):
    task = tasks["translate"]
    for references in task.heldout.references + task.train.references:
        for reference in references:
            assert _agrees(reference), reference
    assert not _agrees("lo kata granda dormas") and not _agrees("la kata grando dormas")


def test_translate_teacher_drops_agreement_at_the_requested_rate():
    task = get_task("translate", seed=2, flaw_rate=0.6, num_pretrain=3000)
    flawed, feminine = 0, 0
    for text in task.pretrain_texts:
        source, target = text.split(" => ")
        sentence = parse_source(source)
        correct = target in sentence.targets()
        if not sentence.feminine():
            assert correct, text
            continue
        feminine += 1
        if not correct:
            assert target in sentence.targets(agree=False), text
            assert not re.search(r"\b(la|las|una|unas)\b", target)
            flawed += 1
    assert feminine > 1500
    assert abs(flawed / feminine - 0.6) < 0.05


def test_translate_reward_equals_nltk_sentence_bleu(tasks):
    task = tasks["translate"]
    tokenizer = task.tokenizer()
    batch = next(iter(task.prompt_dataset(tokenizer, split="heldout", batch_size=4)))
    assert batch["reference"].shape[:2] == [4, 4]  # [B, K, R]: up to 4 references
    references = task.heldout.references[:4]
    hypotheses = [references[0][1],                                 # perfect
                  " ".join(references[1][0].split()[:-1]),           # verb dropped
                  references[2][0].replace("la ", "lo ").replace("una ", "un "),
                  "ka ka ka"]
    ids, mask = _completion(tokenizer, hypotheses, task.max_new_tokens)
    got = tf.function(task.reward(tokenizer))(batch["prompt"], ids, mask, batch).numpy()
    expected = [nltk_sentence_bleu([r.split() for r in refs], h.split(),
                                   smoothing_function=SmoothingFunction().method1)
                for h, refs in zip(hypotheses, references)]
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert got[0] == pytest.approx(1.0) and got[1] < 1.0


def test_translate_evaluate():
    task = get_task("translate", seed=0, **SMALL)
    prompts = task.heldout.prompts
    rng = np.random.default_rng(0)
    perfect = [refs[rng.integers(len(refs))] for refs in task.heldout.references]
    metrics = task.evaluate(prompts, perfect, "heldout")
    assert metrics == {"bleu": pytest.approx(100.0), "length_ratio": 1.0, "exact_match": 1.0}
    short = [" ".join(p.split()[:-1]) for p in perfect]
    metrics = task.evaluate(prompts, short)
    assert metrics["length_ratio"] < 1.0 and metrics["bleu"] < 100.0
    assert metrics["exact_match"] == 0.0


# --- keywords -----------------------------------------------------------------------

def test_keywords_rare_in_teaching_data_and_absent_from_prompts(tasks):
    task = tasks["keywords"]
    rate = np.mean([task.satisfied(t) for t in task.pretrain_texts])
    assert 0.10 <= rate <= 0.20
    for prompt in task.train.prompts + task.heldout.prompts:
        assert not task.satisfied(prompt)
    never = get_task("keywords", keyword_rate=0.0, **SMALL)
    assert not any(never.satisfied(t) for t in never.pretrain_texts)


def test_keywords_evaluate_on_hand_made_completions():
    task = get_task("keywords", **SMALL)
    completions = ["was lovely .", "was cold .", "felt great and warm today .",
                   "seemed perfectly fine ."]
    metrics = task.evaluate(["the soup"] * 4, completions, "heldout")
    assert metrics["satisfaction"] == 0.5
    # 16 words, 12 distinct ("was" and "." repeat); 12 bigrams, all distinct.
    assert metrics["distinct_1"] == pytest.approx(12 / 16)
    assert metrics["distinct_2"] == 1.0
    assert distinct_n(["was lovely ."] * 4, 1) == 0.25
    assert distinct_n(["", "a"], 2) == 0.0


def test_keywords_reward_in_graph():
    task = get_task("keywords", **SMALL)
    tokenizer = task.tokenizer()
    ids, mask = _completion(tokenizer, ["was very lovely .", "was cold .", "felt great ."], 6)
    # A keyword after the EOS does not count.
    ids = tf.tensor_scatter_nd_update(ids, [[1, 5]], [tokenizer.token_to_id("wonderful")])
    prompts = _pad([tokenizer.encode("the soup")] * 3)
    reward = tf.function(task.reward(tokenizer))
    np.testing.assert_array_equal(reward(prompts, ids, mask, {}), [1, 0, 1])
    assert task.keywords == DEFAULT_KEYWORDS
