"""`keywords`: steer a language model to use a positive word, without losing fluency.

The corpus is short sentences about four topics (food, weather, travel, music) from a
template grammar (word level):

    the soup at the market | was very warm and salty today .
    our concert in the park | seemed loud but wonderful .

The prompt is the sentence start (determiner, noun, optional place); the completion is
the rest (linking verb, optional adverb, one or two adjectives of the noun's topic,
optional time word, "."). The constraint: the completion must contain one of the
positive `keywords` ("wonderful", "lovely", "great", "perfect" by default).

Why the task is built this way: in the teaching corpus (`pretrain_texts`) only a
fraction `keyword_rate` (15% by default) of the sentences use a positive word, so the
pre-trained model satisfies the constraint about that often. The reward (1 if a
keyword occurs in the completion, else 0) is trivially hackable on its own: the
policy can collapse to "was wonderful ." for every prompt. It is meant to be
combined with a KL penalty to the pre-trained model (the trainer's `kl_coef`), and the
held-out metrics show both sides of that trade-off: "satisfaction" (the constraint)
and "distinct_1" / "distinct_2" (diversity, which collapse destroys). The KL itself
is measured by the trainer. A quarter of the (determiner, noun) pairs ("this album")
are held out: their sentence starts occur neither in the teaching corpus nor among
the fine-tuning prompts.

Example:
>>> task = KeywordsTask(seed=0, num_train=4, num_heldout=2, num_pretrain=4)
>>> task.evaluate(["the soup", "my song"], ["was lovely .", "seemed loud today ."])
{'satisfaction': 0.5, 'distinct_1': 0.8571428571428571, 'distinct_2': 1.0}
"""

import keras
import numpy as np
import tensorflow as tf

from tfpg import rewards
from tfpg.tasks.base import Split, Task, check_positive, check_rate

DEFAULT_KEYWORDS = ("wonderful", "lovely", "great", "perfect")

# topic -> (nouns, place phrases, adjectives)
TOPICS = {
    "food": (("soup", "bread", "cake", "coffee"), ("at the cafe", "at the market"),
             ("warm", "salty", "sweet", "fresh", "cold")),
    "weather": (("morning", "sky", "wind", "rain"), ("in the city", "in the hills"),
                ("grey", "windy", "cold", "mild", "quiet")),
    "travel": (("train", "trip", "road", "hotel"), ("to the coast", "to the north"),
               ("long", "slow", "busy", "quiet", "cheap")),
    "music": (("song", "concert", "band", "album"), ("at the club", "in the park"),
              ("loud", "slow", "short", "long", "new")),
}
DETERMINERS = ("the", "my", "our", "this", "that")
VERBS = ("was", "felt", "seemed")
ADVERBS = ("very", "quite", "rather")
CONNECTIVES = ("and", "but")
TIMES = ("today", "again", "tonight")
_HELDOUT_FRACTION = 0.25


@keras.saving.register_keras_serializable(package="tfpg")
class KeywordPresent(rewards.Reward):
    """1.0 when any of `keyword_ids` occurs in the completion (before EOS), else 0.0.

    Example:
    >>> reward = KeywordPresent([7, 9])
    >>> reward(None, tf.constant([[5, 9, 2, 0], [5, 6, 2, 7]]),
    ...        tf.constant([[1., 1., 1., 0.], [1., 1., 1., 0.]]), {}).numpy()
    array([1., 0.], dtype=float32)
    """

    def __init__(self, keyword_ids, eos_id=2, name=None):
        super().__init__(name=name)
        self.keyword_ids = [int(i) for i in keyword_ids]
        if not self.keyword_ids or min(self.keyword_ids) <= 0:
            raise ValueError(f"keyword_ids must be non-empty positive ids, got {keyword_ids!r}")
        self.eos_id = eos_id

    def get_config(self):
        return {"keyword_ids": self.keyword_ids, "eos_id": self.eos_id, "name": self.name}

    def __call__(self, prompt_ids, completion_ids, completion_mask, batch):
        tokens = rewards.completion_tokens(completion_ids, completion_mask, self.eos_id)
        keywords = tf.constant(self.keyword_ids, tf.int32)  # [W]
        hit = tf.equal(tokens[:, :, None], keywords[None, None, :])  # [B, N, W]
        return tf.cast(tf.reduce_any(hit, axis=[1, 2]), tf.float32)  # [B]


def distinct_n(completions, n):
    """Distinct n-grams over all completions / total n-grams (0.0 when there are none).

    Example:
    >>> distinct_n(["a b a", "a b"], 1), distinct_n(["a b a", "a b"], 2)
    (0.4, 0.6666666666666666)
    """
    grams = [tuple(words[i:i + n]) for words in (c.split() for c in completions)
             for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


class KeywordsTask(Task):
    """Topic sentences in which the model should use a positive keyword.

    Args:
        seed: int. Seed of every random draw.
        keyword_rate: float. Fraction of teaching sentences that use a keyword (one of
            their adjectives replaced by a random keyword).
        keywords: list of str. The words the completion should contain (any one); single
            words, positive ones by default. A keyword that is also a word of the
            grammar (e.g. "cold") occurs more often than `keyword_rate`.
        num_train: int. Fine-tuning prompts (drawn, with repeats, from the training
            sentence starts).
        num_heldout: int. Evaluation prompts (drawn, with repeats, from the held-out
            sentence starts: those of a quarter of the (determiner, noun) pairs).
        num_pretrain: int. Teaching sentences (`pretrain_texts`).

    Splits: `references` hold one corpus continuation per prompt (for rewards
    that want one, e.g. perplexity or BLEU); no extras.
    """

    name = "keywords"
    level = "word"
    primary_metric = "satisfaction"
    # The longest completion has 7 words: verb adverb adj and adj time "."; +1 EOS.
    max_new_tokens = 10
    pretrain_epochs = 10

    def __init__(self, seed=0, keyword_rate=0.15, keywords=DEFAULT_KEYWORDS, num_train=1000,
                 num_heldout=200, num_pretrain=3000):
        check_positive(num_train=num_train, num_heldout=num_heldout,
                       num_pretrain=num_pretrain)
        check_rate(keyword_rate=keyword_rate)
        keywords = tuple(keywords)
        if not keywords or not all(isinstance(k, str) and k and len(k.split()) == 1
                                   for k in keywords):
            raise ValueError(f"keywords must be single words, got {keywords!r}")
        self.seed = seed
        self.keyword_rate = keyword_rate
        self.keywords = keywords

        rng = np.random.default_rng(seed)
        # Held out by (determiner, noun): no held-out prompt begins any teaching text.
        heads = [(f"{det} {noun}", topic) for topic, (nouns, _, _) in TOPICS.items()
                 for noun in nouns for det in DETERMINERS]
        order = rng.permutation(len(heads))
        cut = int(round(_HELDOUT_FRACTION * len(heads)))
        heldout_starts = self._starts([heads[i] for i in order[:cut]])
        train_starts = self._starts([heads[i] for i in order[cut:]])
        self.heldout = self._split(rng, heldout_starts, num_heldout)
        self.train = self._split(rng, train_starts, num_train)
        self.pretrain_texts = []
        for i in rng.integers(len(train_starts), size=num_pretrain):
            start, topic = train_starts[i]
            keyword = rng.random() < keyword_rate
            self.pretrain_texts.append(f"{start} {self._continuation(rng, topic, keyword)}")

    @staticmethod
    def _starts(heads):
        """(start, topic) for each head alone and with each of its topic's places."""
        return [(head + (f" {place}" if place else ""), topic) for head, topic in heads
                for place in (None,) + TOPICS[topic][1]]

    def _continuation(self, rng, topic, keyword):
        """verb [adverb] adj [connective adj] [time] "." with one keyword if asked."""
        adjectives = list(rng.choice(TOPICS[topic][2], size=2, replace=False))
        count = 1 + int(rng.integers(2))
        adjectives = adjectives[:count]
        if keyword:
            adjectives[rng.integers(count)] = str(rng.choice(self.keywords))
        words = [str(rng.choice(VERBS))]
        if rng.random() < 0.3:
            words.append(str(rng.choice(ADVERBS)))
        words.append(adjectives[0])
        if count == 2:
            words += [str(rng.choice(CONNECTIVES)), adjectives[1]]
        if rng.random() < 0.3:
            words.append(str(rng.choice(TIMES)))
        return " ".join(words + ["."])

    def _split(self, rng, starts, count):
        prompts, references = [], []
        for i in rng.integers(len(starts), size=count):
            start, topic = starts[i]
            prompts.append(start)
            references.append(self._continuation(rng, topic, rng.random() < self.keyword_rate))
        return Split(prompts=prompts, references=references)

    def satisfied(self, completion):
        """True when the completion contains one of the keywords (as a word)."""
        return any(word in self.keywords for word in completion.split())

    def reward(self, tokenizer):
        """1.0 when the completion contains a keyword, else 0.0, in-graph.

        Use it with a KL penalty to the reference model (e.g. `kl_coef=0.05`):
        alone it is maximised by a single repeated sentence.
        """
        ids = [tokenizer.token_to_id(k) for k in self.keywords]
        if tokenizer.unk_id in ids:
            raise ValueError(f"keyword {self.keywords[ids.index(tokenizer.unk_id)]!r} is not "
                             "in the tokenizer's vocabulary")
        return KeywordPresent(ids, eos_id=tokenizer.eos_id, name="keyword")

    def evaluate(self, prompts, completions, split="heldout"):
        """"satisfaction" (fraction of completions with a keyword), "distinct_1" and
        "distinct_2" (distinct n-grams / all n-grams over the completions).

        The prompts only set the count; `split` is not needed.
        """
        _, completions = self._check_completions(prompts, completions)
        return {
            "satisfaction": float(np.mean([self.satisfied(c) for c in completions])),
            "distinct_1": distinct_n(completions, 1),
            "distinct_2": distinct_n(completions, 2),
        }
