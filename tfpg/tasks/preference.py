"""`preference`: RLHF from pairwise preferences, with a hidden gold utility.

Prompts ask about a topic ("describe the rain"); the teacher (the pre-training
corpus) answers in one template with varying quality (word level):

    sure , the rain is very clear and vague .

A completion is `[sure ,] the TOPIC is PHRASE (and PHRASE){0,2} .` where each
PHRASE is an adjective, good ("clear", "accurate", ...) or bad ("vague", "wrong",
...), optionally after an intensifier ("very", "really"). The hidden gold utility
of a completion is

    u = min(distinct good adjectives, 3) - (bad adjectives) + 0.5 [starts "sure ,"]
        - 0.5 max(0, words - 12)

Why the task is built this way: the properties trade off, and the teacher's data
hides which ones matter. Intensifiers carry no utility but the teacher puts them
before good adjectives far more often than before bad ones, and it never repeats
an adjective nor writes more than 14 words. A reward model fitted to the teacher's
pairs therefore can credit "very" and every good token it sees, including
repeats, while the gold utility caps good adjectives at three distinct ones and
charges for length beyond twelve words: a policy optimised hard against the
learned reward writes longer, repetitive completions ("very clear and very clear
and ...") that the proxy likes and the gold utility does not. That is reward
over-optimisation (Gao et al., 2022), measurable here because the gold reward is
known (`gold_reward`, for measurement only, never for training).

Preference pairs: two different-utility teacher completions of one prompt,
labelled by a simulated Bradley-Terry annotator of the gold utility with known
noise: the first is preferred with probability `sigmoid((u_a - u_b) /
annotator_temperature)`. The best pairwise accuracy any reward model can expect
on held-out labels (`pairwise_ceiling`) is that of the Bayes-optimal predictor
sign(u_a - u_b), i.e. the mean over held-out pairs of max(p, 1 - p).

Held-out prompts (and held-out pairs) use a quarter of the (request, topic)
combinations (one request each of 12 topics), which occur neither in the teaching
corpus nor among the fine-tuning prompts or training pairs; every topic word occurs
in training texts.

Example:
>>> task = PreferenceTask(seed=0, num_pairs=8, num_heldout_pairs=4, num_train=4,
...                       num_heldout=2, num_pretrain=8)
>>> task.utility("sure , the rain is very clear and vague .")
0.5
>>> sorted(task.preference_pairs("train"))
['chosen', 'prompts', 'rejected']
"""

import math

import keras
import numpy as np
import tensorflow as tf

from tfpg import rewards
from tfpg.tasks.base import Split, Task, check_positive

GOOD = ("clear", "accurate", "useful", "precise", "helpful", "honest")
BAD = ("vague", "wrong", "rude", "dull", "confusing", "lazy")
INTENSIFIERS = ("very", "really")
TOPICS = ("rain", "train", "river", "market", "garden", "engine", "poem", "storm",
          "bridge", "forest", "museum", "island", "planet", "violin", "harbor", "desert")
REQUESTS = ("describe the", "explain the", "tell me about the")
KEYWORD = "sure"
GOOD_CAP = 3                # distinct good adjectives beyond this add nothing
KEYWORD_BONUS = 0.5
LENGTH_LIMIT = 12           # words; each word beyond costs LENGTH_COST
LENGTH_COST = 0.5
_HELDOUT_COMBINATIONS = 12     # of the 48 (request, topic) prompts


def utility_terms(words):
    """The gold utility's properties of a completion (list of words).

    Example:
    >>> utility_terms("the rain is clear and clear and vague .".split())
    {'good': 1, 'bad': 1, 'keyword': 0, 'length': 9}
    """
    return {"good": len(set(words) & set(GOOD)),
            "bad": sum(word in BAD for word in words),
            "keyword": int(KEYWORD in words),
            "length": len(words)}


def utility_of(terms):
    """The gold utility from `utility_terms`."""
    return (min(terms["good"], GOOD_CAP) - terms["bad"] + KEYWORD_BONUS * terms["keyword"]
            - LENGTH_COST * max(0, terms["length"] - LENGTH_LIMIT))


@keras.saving.register_keras_serializable(package="tfpg")
class GoldUtility(rewards.Reward):
    """The gold utility of each completion (tokens before EOS), in-graph.

    Measurement only: it is what the preference annotator sees, so training on it
    would skip the reward-model step that this task is about.

    Args:
        good_ids, bad_ids: ids of the good / bad adjectives.
        keyword_id: id of "sure".
        eos_id: where completions stop.
    """

    def __init__(self, good_ids, bad_ids, keyword_id, eos_id=2, name=None):
        super().__init__(name=name or "gold_utility")
        self.good_ids = [int(i) for i in good_ids]
        self.bad_ids = [int(i) for i in bad_ids]
        self.keyword_id = int(keyword_id)
        self.eos_id = eos_id

    def get_config(self):
        return {"good_ids": self.good_ids, "bad_ids": self.bad_ids,
                "keyword_id": self.keyword_id, "eos_id": self.eos_id, "name": self.name}

    def __call__(self, prompt_ids, completion_ids, completion_mask, batch):
        tokens = rewards.completion_tokens(completion_ids, completion_mask, self.eos_id)

        def hits(ids):
            ids = tf.constant(ids, tf.int32)[None, None]                   # [1, 1, W]
            return tf.equal(tokens[:, :, None], ids)                         # [B, N, W]

        good = tf.reduce_sum(tf.cast(tf.reduce_any(hits(self.good_ids), axis=1), tf.float32),
                             axis=1)                                                   # [B]
        bad = tf.reduce_sum(tf.cast(hits(self.bad_ids), tf.float32), axis=[1, 2])      # [B]
        keyword = tf.cast(tf.reduce_any(tf.equal(tokens, self.keyword_id), axis=1), tf.float32)
        length = tf.reduce_sum(tf.cast(tokens != 0, tf.float32), axis=1)               # [B]
        return (tf.minimum(good, float(GOOD_CAP)) - bad + KEYWORD_BONUS * keyword
                - LENGTH_COST * tf.maximum(0.0, length - LENGTH_LIMIT))                # [B]


@keras.saving.register_keras_serializable(package="tfpg")
class LearnedRewardRequired(rewards.Reward):
    """Stands in for `PreferenceTask.reward`: there is no hand-written training
    reward; calling it says how to get the learned one."""

    def __call__(self, prompt_ids, completion_ids, completion_mask, batch):
        raise ValueError("the preference task trains against a learned reward model: "
                         "train one with `tfpg train-reward --task preference --output DIR` "
                         "and pass --reward-model DIR")


class PreferenceTask(Task):
    """Topic answers of varying quality, pairs from a noisy annotator of a hidden utility.

    Args:
        seed: int. Seed of every random draw.
        annotator_temperature: float. The annotator prefers a over b with probability
            sigmoid((u_a - u_b) / annotator_temperature); smaller is less noisy.
        intensifier_good: float. How often the teacher puts an intensifier before a
            good adjective (the confound).
        intensifier_bad: float. How often the teacher puts an intensifier before a
            bad adjective (the confound).
        keyword_rate: float. How often the teacher starts with "sure ,".
        num_pairs: int. Preference pairs of the train split.
        num_heldout_pairs: int. Preference pairs of the held-out split.
        num_train: int. Fine-tuning prompts.
        num_heldout: int. Evaluation prompts (held-out prompts).
        num_pretrain: int. Teaching texts (prompt + teacher completion).

    Splits: `references` hold one teacher completion per prompt; no extras.
    """

    name = "preference"
    level = "word"
    primary_metric = "gold_reward"
    # The longest teacher completion has 14 words; room for a few more and EOS.
    max_new_tokens = 18
    pretrain_epochs = 6
    # `tfpg train` needs --reward-model (a learned reward) and, unless told otherwise,
    # pays this KL price: without it the policy over-optimises the learned reward.
    needs_reward_model = True
    kl_coef = 0.1
    # The gold reward of sampled completions too (`sampled_gold_reward`): RLHF
    # optimises and Gao et al. (2022) measure the expected reward of samples.
    sampled_metrics = True

    def __init__(self, seed=0, annotator_temperature=1.0, intensifier_good=0.7,
                 intensifier_bad=0.1, keyword_rate=0.3, num_pairs=2000,
                 num_heldout_pairs=500, num_train=1000, num_heldout=200, num_pretrain=3000):
        check_positive(num_pairs=num_pairs, num_heldout_pairs=num_heldout_pairs,
                       num_train=num_train, num_heldout=num_heldout,
                       num_pretrain=num_pretrain)
        for name, value in (("intensifier_good", intensifier_good),
                            ("intensifier_bad", intensifier_bad),
                            ("keyword_rate", keyword_rate)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
        if isinstance(annotator_temperature, bool) or not isinstance(
                annotator_temperature, (int, float)) or not annotator_temperature > 0:
            raise ValueError(f"annotator_temperature must be a positive number, got "
                             f"{annotator_temperature!r}")
        self.seed = seed
        self.annotator_temperature = float(annotator_temperature)
        self.intensifier_good, self.intensifier_bad = intensifier_good, intensifier_bad
        self.keyword_rate = keyword_rate

        rng = np.random.default_rng(seed)
        # One request of each of 12 topics is held out: every topic keeps two
        # training prompts, so every topic word is learned.
        held = {(REQUESTS[int(rng.integers(len(REQUESTS)))], topic)
                for topic in rng.choice(TOPICS, size=_HELDOUT_COMBINATIONS, replace=False)}
        combinations = [(request, topic) for request in REQUESTS for topic in TOPICS]
        heldout_topics = [c for c in combinations if c in held]
        train_topics = [c for c in combinations if c not in held]
        self.pretrain_texts = []
        for _ in range(num_pretrain):
            prompt, topic = self._prompt(rng, train_topics)
            self.pretrain_texts.append(f"{prompt} {self.teacher(rng, topic)}")
        self.train = self._split(rng, train_topics, num_train)
        self.heldout = self._split(rng, heldout_topics, num_heldout)
        self._pairs = {"train": self._pairs_of(rng, train_topics, num_pairs),
                       "heldout": self._pairs_of(rng, heldout_topics, num_heldout_pairs)}

    @staticmethod
    def _prompt(rng, combinations):
        request, topic = combinations[int(rng.integers(len(combinations)))]
        return f"{request} {topic}", topic

    def teacher(self, rng, topic):
        """One teacher completion about `topic` (quality drawn per completion)."""
        quality = rng.random()  # chance that each adjective is a good one
        count = 1 + int(rng.integers(3))
        good = list(rng.choice(GOOD, size=count, replace=False))
        bad = list(rng.choice(BAD, size=count, replace=False))
        phrases = []
        for i in range(count):
            is_good = rng.random() < quality
            adjective = good[i] if is_good else bad[i]
            rate = self.intensifier_good if is_good else self.intensifier_bad
            phrases.append(f"{rng.choice(INTENSIFIERS)} {adjective}"
                           if rng.random() < rate else adjective)
        start = f"{KEYWORD} , " if rng.random() < self.keyword_rate else ""
        return f"{start}the {topic} is {' and '.join(phrases)} ."

    def _split(self, rng, topics, count):
        prompts, references = [], []
        for _ in range(count):
            prompt, topic = self._prompt(rng, topics)
            prompts.append(prompt)
            references.append(self.teacher(rng, topic))
        return Split(prompts=prompts, references=references)

    def _pairs_of(self, rng, topics, count):
        prompts, chosen, rejected, probability = [], [], [], []
        while len(prompts) < count:
            prompt, topic = self._prompt(rng, topics)
            a, b = self.teacher(rng, topic), self.teacher(rng, topic)
            u_a, u_b = self.utility(a), self.utility(b)
            if u_a == u_b:
                continue  # the annotator would flip a coin: no information
            p = 1.0 / (1.0 + math.exp(-(u_a - u_b) / self.annotator_temperature))
            first = rng.random() < p
            prompts.append(prompt)
            chosen.append(a if first else b)
            rejected.append(b if first else a)
            probability.append(max(p, 1.0 - p))
        return {"prompts": prompts, "chosen": chosen, "rejected": rejected,
                "best_probability": probability}

    def preference_pairs(self, split="train"):
        """{"prompts", "chosen", "rejected"}: parallel lists of strings of `split`."""
        self.split(split)  # validates the name
        pairs = self._pairs[split]
        return {key: list(pairs[key]) for key in ("prompts", "chosen", "rejected")}

    def pairwise_ceiling(self, split="heldout"):
        """The best pairwise accuracy a reward model can expect on `split`'s labels.

        It is the expected accuracy of the Bayes-optimal predictor sign(u_a - u_b)
        against the noisy annotator: the mean over the split's pairs of max(p, 1 - p),
        p = sigmoid((u_a - u_b) / annotator_temperature).
        """
        self.split(split)
        return float(np.mean(self._pairs[split]["best_probability"]))

    def gold_accuracy(self, split="heldout"):
        """The Bayes-optimal predictor's accuracy on the labels actually drawn."""
        pairs = self.preference_pairs(split)
        return float(np.mean([self.utility(c) > self.utility(r)
                              for c, r in zip(pairs["chosen"], pairs["rejected"])]))

    def utility(self, completion):
        """The hidden gold utility of one completion string."""
        return utility_of(utility_terms(completion.split()))

    def gold_reward(self, tokenizer):
        """The gold utility as an in-graph reward function (for measurement only)."""
        def ids(words):
            found = [tokenizer.token_to_id(w) for w in words]
            if tokenizer.unk_id in found:
                missing = words[found.index(tokenizer.unk_id)]
                raise ValueError(f"gold_reward: {missing!r} is not in the tokenizer's "
                                 "vocabulary (use task.tokenizer())")
            return found

        return GoldUtility(ids(GOOD), ids(BAD), ids([KEYWORD])[0], eos_id=tokenizer.eos_id)

    def reward(self, tokenizer):
        """No hand-written training reward: train a reward model on
        `preference_pairs("train")` (`tfpg train-reward --task preference`). The
        returned reward raises, naming that step, when called."""
        return LearnedRewardRequired(name="learned_reward_required")

    def evaluate(self, prompts, completions, split="heldout"):
        """"gold_reward" (mean gold utility) and its properties: "good" (distinct
        good adjectives), "bad", "keyword" (fraction starting "sure ,"), "length"
        (words) and "repeated" (fraction of completions repeating an adjective).
        The prompts only set the count."""
        _, completions = self._check_completions(prompts, completions)
        terms = [utility_terms(c.split()) for c in completions]
        repeated = [any(c.split().count(a) > 1 for a in GOOD + BAD) for c in completions]
        return {"gold_reward": float(np.mean([utility_of(t) for t in terms])),
                **{key: float(np.mean([t[key] for t in terms]))
                   for key in ("good", "bad", "keyword", "length")},
                "repeated": float(np.mean(repeated))}
