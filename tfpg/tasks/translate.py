"""`translate`: a synthetic language pair from a small synchronous grammar.

Source sentences are English-like, subject-verb-object, with at most one adjective:

    the big dog sees some cats            a girl sleeps

The target language differs the way real languages do:

* word order: subject-object-verb, the object followed by the marker "ka", and
  adjectives after their noun;
* agreement: determiners and adjectives take the gender of their noun
  (masculine "-o" / feminine "-a"; "lo/la/los/las", "un/una/unos/unas") and the
  verb the number of the subject ("vidas" / "vidan"); nouns mark number;
* synonyms: every verb and adjective has two translations ("vidas" / "miras",
  "grando" / "magno"), so each source has 2 (no adjective) or 4 valid references.

    the big dog sees some cats  =>  lo kano grando unas kataj ka vidas   (or miras,
                                    magno, ...)

Prompts are the source followed by "=>"; completions are the target sentence (word
level). Why it is built this way: the teaching data (`pretrain_texts`, one random
reference per source) is *flawed* like a careless human translator: in a fraction
`flaw_rate` of the examples with a feminine noun, gender agreement is dropped and
every determiner and adjective takes the masculine form ("lo kata" for "la kata").
Maximum likelihood learns word order, vocabulary and number agreement well (decent
BLEU) but also copies the teacher's agreement errors (imperfect BLEU); sentence BLEU
against the correct references rewards agreement, so fine-tuning can lift BLEU
further. Held-out sources never occur in the teaching data or the fine-tuning
prompts.

Example:
>>> task = TranslateTask(seed=0, num_train=4, num_heldout=2, num_pretrain=4)
>>> task.translations("the big cat sleeps")
['la kata granda dormas', 'la kata granda reposas', 'la kata magna dormas', \
'la kata magna reposas']
"""

import itertools

import numpy as np

from tfpg import rewards
from tfpg.tasks.base import Split, Task, check_positive, check_rate

SEPARATOR = "=>"
OBJECT_MARKER = "ka"

# source singular, source plural, target stem, gender
NOUNS = [
    ("dog", "dogs", "kan", "m"), ("horse", "horses", "ekv", "m"),
    ("boy", "boys", "knab", "m"), ("cat", "cats", "kat", "f"),
    ("bird", "birds", "bir", "f"), ("girl", "girls", "fil", "f"),
]
# source -> two target stems; the ending marks gender: "grand" + "o" / "a"
ADJECTIVES = {"big": ("grand", "magn"), "small": ("pikol", "mikr"),
              "old": ("veter", "antik"), "red": ("rub", "ros")}
# source singular, source plural -> two target stems; "-as" singular, "-an" plural
TRANSITIVE_VERBS = {("sees", "see"): ("vid", "mir"), ("likes", "like"): ("am", "gust"),
                    ("follows", "follow"): ("sekv", "trak")}
INTRANSITIVE_VERBS = {("sleeps", "sleep"): ("dorm", "repos")}
# (definite, plural, gender) -> target determiner
DETERMINERS = {
    (True, False, "m"): "lo", (True, False, "f"): "la",
    (True, True, "m"): "los", (True, True, "f"): "las",
    (False, False, "m"): "un", (False, False, "f"): "una",
    (False, True, "m"): "unos", (False, True, "f"): "unas",
}
_SOURCE_DETERMINERS = {(True, False): "the", (True, True): "the", (False, False): "a",
                       (False, True): "some"}
_INTRANSITIVE_RATE = 0.15


class _NounPhrase:
    """A determiner, a noun in some number and an optional adjective."""

    def __init__(self, noun, definite, plural, adjective=None):
        self.noun, self.definite, self.plural, self.adjective = noun, definite, plural, adjective

    def source(self):
        singular, plural_form = NOUNS[self.noun][:2]
        words = [_SOURCE_DETERMINERS[self.definite, self.plural]]
        if self.adjective:
            words.append(self.adjective)
        return words + [plural_form if self.plural else singular]

    def feminine(self):
        return NOUNS[self.noun][3] == "f"

    def targets(self, agree=True):
        """Every valid target rendering (a list of word lists, one per adjective synonym).

        With `agree=False` the determiner and adjective are masculine whatever the
        noun (the teacher's flaw).
        """
        stem, gender = NOUNS[self.noun][2:]
        agreement = gender if agree else "m"
        head = [DETERMINERS[self.definite, self.plural, agreement],
                stem + ("o" if gender == "m" else "a") + ("j" if self.plural else "")]
        if not self.adjective:
            return [head]
        ending = "o" if agreement == "m" else "a"
        return [head + [adj + ending] for adj in ADJECTIVES[self.adjective]]


class _Sentence:
    """Subject, verb (source singular/plural key) and optional object."""

    def __init__(self, subject, verb, obj=None):
        self.subject, self.verb, self.obj = subject, verb, obj

    def source(self):
        verb = self.verb[1] if self.subject.plural else self.verb[0]
        words = self.subject.source() + [verb]
        if self.obj:
            words += self.obj.source()
        return " ".join(words)

    def feminine(self):
        return self.subject.feminine() or bool(self.obj and self.obj.feminine())

    def targets(self, agree=True):
        """All valid translations as strings, in a fixed order (subject adjective,
        object adjective, verb synonyms); `agree=False` renders the teacher's flaw."""
        stems = {**TRANSITIVE_VERBS, **INTRANSITIVE_VERBS}[self.verb]
        verbs = [stem + ("an" if self.subject.plural else "as") for stem in stems]
        objects = self.obj.targets(agree) if self.obj else [[]]
        marker = [OBJECT_MARKER] if self.obj else []
        return [" ".join(s + o + marker + [v]) for s, o, v in
                itertools.product(self.subject.targets(agree), objects, verbs)]


def _parse_noun_phrase(words):
    """Source words of one noun phrase -> _NounPhrase (ValueError if malformed)."""
    forms = {form: (index, bool(plural)) for index, noun in enumerate(NOUNS)
             for plural, form in enumerate(noun[:2])}
    if len(words) not in (2, 3) or words[0] not in ("the", "a", "some") \
            or words[-1] not in forms or (len(words) == 3 and words[1] not in ADJECTIVES):
        raise ValueError(f"not a noun phrase of the translate grammar: {' '.join(words)!r}")
    noun, plural = forms[words[-1]]
    if (words[0] == "a" and plural) or (words[0] == "some" and not plural):
        raise ValueError(f"determiner and noun disagree in number: {' '.join(words)!r}")
    return _NounPhrase(noun, words[0] == "the", plural, words[1] if len(words) == 3 else None)


def parse_source(text):
    """Parses a source sentence of the grammar (without "=>") -> _Sentence.

    Raises ValueError for a sentence the grammar cannot produce.
    """
    words = text.split()
    verbs = {form: (key, bool(plural)) for key in {**TRANSITIVE_VERBS, **INTRANSITIVE_VERBS}
             for plural, form in enumerate(key)}
    positions = [i for i, word in enumerate(words) if word in verbs]
    if len(positions) != 1:
        raise ValueError(f"not a source sentence of the translate grammar: {text!r}")
    i = positions[0]
    subject = _parse_noun_phrase(words[:i])
    verb, plural = verbs[words[i]]
    if plural != subject.plural:
        raise ValueError(f"subject and verb disagree in number: {text!r}")
    if verb in INTRANSITIVE_VERBS:
        if len(words) > i + 1:
            raise ValueError(f"verb {words[i]!r} takes no object: {text!r}")
        return _Sentence(subject, verb)
    return _Sentence(subject, verb, _parse_noun_phrase(words[i + 1:]))


class TranslateTask(Task):
    """Translation into a synthetic SOV language with agreement and synonyms.

    Args:
        seed: int. Seed of every random draw.
        flaw_rate: float. Fraction of the teaching examples with a feminine noun whose
            target drops gender agreement (masculine determiners and adjectives).
        num_train: int. Fine-tuning prompts.
        num_heldout: int. Evaluation prompts.
        num_pretrain: int. Teaching examples (`pretrain_texts`).

    Splits: `references` hold every valid translation (a list of 2 or 4 strings);
    no extras.
    """

    name = "translate"
    level = "word"
    primary_metric = "bleu"
    # The longest target has 7 words: det noun adj det noun ka verb; +1 for EOS.
    max_new_tokens = 10
    pretrain_epochs = 15

    def __init__(self, seed=0, flaw_rate=0.6, num_train=2000, num_heldout=300,
                 num_pretrain=4000):
        check_positive(num_train=num_train, num_heldout=num_heldout,
                       num_pretrain=num_pretrain)
        check_rate(flaw_rate=flaw_rate)
        self.seed = seed
        self.flaw_rate = flaw_rate
        rng = np.random.default_rng(seed)
        sentences = self._unique_sentences(rng, num_heldout + num_train + num_pretrain)
        self.heldout = self._split(sentences[:num_heldout])
        self.train = self._split(sentences[num_heldout:num_heldout + num_train])
        self.pretrain_texts = []
        for sentence in sentences[num_heldout + num_train:]:
            flawed = sentence.feminine() and rng.random() < flaw_rate
            targets = sentence.targets(agree=not flawed)
            target = targets[rng.integers(len(targets))]
            self.pretrain_texts.append(f"{sentence.source()} {SEPARATOR} {target}")

    @staticmethod
    def _random_sentence(rng):
        def noun_phrase(adjective):
            return _NounPhrase(int(rng.integers(len(NOUNS))), bool(rng.integers(2)),
                               bool(rng.integers(2)), adjective)

        adjective = str(rng.choice(sorted(ADJECTIVES)))
        if rng.random() < _INTRANSITIVE_RATE:
            verb = next(iter(INTRANSITIVE_VERBS))
            return _Sentence(noun_phrase(adjective if rng.integers(2) else None), verb)
        verb = sorted(TRANSITIVE_VERBS)[rng.integers(len(TRANSITIVE_VERBS))]
        where = rng.integers(3)  # adjective on the subject, the object, or neither
        return _Sentence(noun_phrase(adjective if where == 0 else None), verb,
                         noun_phrase(adjective if where == 1 else None))

    @staticmethod
    def _unique_sentences(rng, count):
        sentences, seen = [], set()
        for _ in range(50 * count):
            sentence = TranslateTask._random_sentence(rng)
            if sentence.source() not in seen:
                seen.add(sentence.source())
                sentences.append(sentence)
                if len(sentences) == count:
                    return sentences
        raise ValueError(f"cannot draw {count} distinct sentences from the grammar")

    @staticmethod
    def _split(sentences):
        return Split(prompts=[f"{s.source()} {SEPARATOR}" for s in sentences],
                     references=[s.targets() for s in sentences])

    @staticmethod
    def translations(source):
        """Every valid translation of a source sentence (with or without "=>").

        Example:
        >>> TranslateTask.translations("some girls follow a dog =>")[:2]
        ['unas filaj un kano ka sekvan', 'unas filaj un kano ka trakan']
        """
        text = source.strip()
        if text.endswith(SEPARATOR):
            text = text[:-len(SEPARATOR)]
        return parse_source(text).targets()

    def reward(self, tokenizer):
        """Sentence BLEU (nltk smoothing method1) against all references, in-graph."""
        return rewards.BLEU(smoothing="method1", eos_id=tokenizer.eos_id, name="bleu")

    def evaluate(self, prompts, completions, split="heldout"):
        """Corpus BLEU and length metrics against every valid translation.

        References come from parsing each prompt with the grammar, so any source
        sentence of the grammar can be evaluated; `split` is not needed.

        Returns "bleu" (nltk corpus BLEU, no smoothing, 0-100), "length_ratio"
        (total completion words / total closest-reference words) and
        "exact_match" (fraction of completions equal to a valid translation).

        Example:
        >>> task = TranslateTask(num_train=2, num_heldout=2, num_pretrain=2)
        >>> refs = [r[0] for r in task.heldout.references]
        >>> task.evaluate(task.heldout.prompts, refs)
        {'bleu': 100.0, 'length_ratio': 1.0, 'exact_match': 1.0}
        """
        prompts, completions = self._check_completions(prompts, completions)
        references = [self.translations(p) for p in prompts]
        hypotheses = [c.split() for c in completions]
        tokenized = [[r.split() for r in refs] for refs in references]
        bleu = rewards.corpus_bleu(hypotheses, tokenized)
        closest = [min((len(r) for r in refs), key=lambda n: (abs(n - len(h)), n))
                   for h, refs in zip(hypotheses, tokenized)]
        words = sum(len(h) for h in hypotheses)
        return {
            "bleu": 100.0 * bleu,
            "length_ratio": words / max(sum(closest), 1),
            "exact_match": float(np.mean([" ".join(h) in refs
                                          for h, refs in zip(hypotheses, references)])),
        }
