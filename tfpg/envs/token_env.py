"""`TextGenerationEnv`: text generation as a Gymnasium-style environment.

For users who write the episode loop by hand::

    env = tfpg.envs.TextGenerationEnv(None, prompts, tok, reward_fn, max_new_tokens=8)
    observation, info = env.reset(seed=0)          # int32 [P]: BOS + prompt ids
    done = False
    while not done:
        logits = policy(observation[None])[:, -1]  # [1, V]
        action = int(tf.random.categorical(logits, 1)[0, 0])
        observation, reward, terminated, truncated, info = env.step(action)
        done = terminated or truncated

One episode is one completion of one prompt; one step appends one token. The reward
is 0.0 on every step but the last, where it is the reward of the whole completion,
computed with the same reward interface and the same tensor shapes as the trainers
(`reward_fn(prompt_ids [1, P], completion_ids [1, N], completion_mask [1, N], batch)`,
N = `max_new_tokens`, the prompt left-padded to the width of the prompt set, `batch`
the prompt's dataset row with a leading dimension of 1), so a reward scores an
episode exactly as it scores the same completion inside `fit`. The episode
terminates when the action is `eos_id` (EOS is part of the completion, as in
`tfpg.generate`) and is truncated after `max_new_tokens` tokens without EOS.

No dependency on the `gymnasium` package: the methods follow its API (`reset(seed=,
options=)` -> `(observation, info)`; `step(action)` -> `(observation, reward,
terminated, truncated, info)`; `action_space.n` / `.sample()` / `.contains()`;
`render()`; `close()`).

The env runs one token per Python call: it is for learning, debugging and custom
loops. `tfpg.algorithms.*.fit` generates whole batches in one compiled loop and is
much faster for the same samples (see `examples/reinforce_env_loop.py`).

Multi-turn episodes (a policy turn, an environment reply, ...) use the batched,
turn-level protocol of `TurnEnv` (`tfpg.envs.turn_env`) instead; `ToolEnv` (`tfpg.envs.tool_env`)
runs tool calls written in a turn. Both are exported here.
"""

import numpy as np
import tensorflow as tf

from tfpg import data as tfpg_data
from tfpg.models.policy import check_policy
from tfpg.rewards.base import ON_INVALID, compute_rewards

_TOKENIZER_EOS = object()  # default eos_id: the tokenizer's


class InvalidActionError(ValueError):
    """`step` got something that is not a token id of the vocabulary."""


class DiscreteTokens:
    """The action space: token ids `0 .. n - 1` (like `gymnasium.spaces.Discrete(n)`)."""

    def __init__(self, n, seed=None):
        self.n = int(n)
        self._rng = np.random.default_rng(seed)

    def seed(self, seed=None):
        self._rng = np.random.default_rng(seed)
        return [seed]

    def sample(self):
        """A uniformly random token id (np.int64)."""
        return np.int64(self._rng.integers(self.n))

    def contains(self, action):
        try:
            value = _as_action(action)
        except InvalidActionError:
            return False
        return 0 <= value < self.n

    __contains__ = contains

    def __repr__(self):
        return f"DiscreteTokens({self.n})"


def _as_action(action):
    """An int from a Python / numpy integer, or a 0-d / one-element integer array or
    tensor; InvalidActionError for anything else."""
    if isinstance(action, (tf.Tensor, tf.Variable)):
        action = action.numpy()
    if isinstance(action, (bool, np.bool_)):
        raise InvalidActionError(f"action must be an integer token id, got bool {action!r}")
    if isinstance(action, (int, np.integer)):
        return int(action)
    if isinstance(action, np.ndarray):
        if action.size != 1:
            raise InvalidActionError(f"action must be one token id, got an array of shape "
                                     f"{action.shape}")
        if action.dtype.kind not in "iu":
            raise InvalidActionError(f"action must be an integer token id, got dtype "
                                     f"{action.dtype}")
        return int(action.reshape(()))
    raise InvalidActionError(f"action must be an integer token id, got "
                             f"{type(action).__name__} {action!r:.40}")


def _concat_rows(arrays, left_pad=False):
    """Concatenates arrays [n_i, ...] along axis 0, zero-padding the other axes."""
    if not arrays:
        return np.zeros([0], np.int32)
    if arrays[0].ndim == 1 or all(a.shape[1:] == arrays[0].shape[1:] for a in arrays):
        return np.concatenate(arrays, axis=0)
    shape = np.max([a.shape[1:] for a in arrays], axis=0)
    padded = []
    for a in arrays:
        widths = [(0, 0)] + [((s - d, 0) if left_pad and axis == 0 else (0, s - d))
                             for axis, (d, s) in enumerate(zip(a.shape[1:], shape))]
        padded.append(np.pad(a, widths))
    return np.concatenate(padded, axis=0)


def _materialize(dataset):
    """A finite dataset of prompt dicts (batched or not) -> dict of numpy [N, ...]."""
    if not isinstance(dataset.element_spec, dict) or "prompt" not in dataset.element_spec:
        raise ValueError("dataset elements must be dicts with a 'prompt' column, as made "
                         "by tfpg.data.prompt_dataset")
    if int(dataset.cardinality()) == int(tf.data.INFINITE_CARDINALITY):
        raise ValueError("dataset is infinite (repeat()?); the env needs a finite prompt set")
    batched = dataset.element_spec["prompt"].shape.rank == 2
    columns = {key: [] for key in dataset.element_spec}
    for element in dataset.as_numpy_iterator():
        for key, value in element.items():
            value = np.asarray(value)
            columns[key].append(value if batched else value[None])
    if not columns["prompt"]:
        raise ValueError("dataset is empty: no prompts to start episodes from")
    return {key: _concat_rows(values, left_pad=key == "prompt")
            for key, values in columns.items()}


class TextGenerationEnv:
    """Token-level episodes of completing prompts, scored by a reward at the end.

    Args:
        policy: `tfpg.models.Policy` or None. The env never calls it (your loop does);
            when given, its `vocab_size` sets the action space and must match the
            tokenizer's vocabulary.
        prompts: list of str, `tfpg.tasks.Split` or `tf.data.Dataset`. The prompt set: a
            list of strings, a `tfpg.tasks.Split` (its references and extras are used),
            or a finite `tf.data.Dataset` of dicts with a "prompt" column (batched or
            not, e.g. `tfpg.data.prompt_dataset` or `task.prompt_dataset`); every column
            goes into the reward's `batch`.
        tokenizer: `tfpg.Tokenizer`. The `tfpg.Tokenizer` (encodes string prompts,
            decodes for `info`).
        reward_fn: callable or `tfpg.rewards.Reward`. `reward_fn(prompt_ids,
            completion_ids, completion_mask, batch) -> float32 [B]` (the `tfpg.rewards`
            interface).
        max_new_tokens: int. Completion tokens after which an episode is truncated.
        eos_id: int or None. The token that ends an episode (terminated); defaults to
            the tokenizer's; None never terminates (every episode is truncated).
        references: list or None. With string prompts, one reference (a string or a list
            of strings) per prompt, as `batch["reference"]` for the reward.
        extras: dict or None. With string prompts, a dict of extra columns (see
            `tfpg.data.prompt_dataset`).
        shuffle: bool. Visit the prompts in a seeded random order, reshuffled after each
            pass; False cycles through them in order.
        seed: int or None. Seed of the prompt order (and of `action_space.sample()`).
        on_invalid_reward: str. "raise" (the default: a NaN / inf reward fails naming
            the reward), "zero" (it becomes 0.0).

    Attributes:
        action_space: `DiscreteTokens(vocabulary_size)`.
        num_prompts: size of the prompt set.
    """

    metadata = {"render_modes": ["ansi"]}

    def __init__(self, policy, prompts, tokenizer, reward_fn, max_new_tokens=32,
                 eos_id=_TOKENIZER_EOS, references=None, extras=None, shuffle=True, seed=0,
                 on_invalid_reward="raise"):
        if tokenizer is None:
            raise ValueError("tokenizer is required")
        if not callable(reward_fn):
            raise TypeError(f"reward_fn must be callable, got {type(reward_fn).__name__}")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) \
                or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
        if on_invalid_reward not in ("raise", "zero"):
            raise ValueError(f"on_invalid_reward must be 'raise' or 'zero' "
                             f"(of {ON_INVALID}), got {on_invalid_reward!r}")
        vocabulary_size = tokenizer.vocabulary_size
        if policy is not None:
            policy_vocabulary = check_policy(policy).vocab_size
            if policy_vocabulary != vocabulary_size:
                raise ValueError(f"the policy has {policy_vocabulary} tokens but the "
                                 f"tokenizer {vocabulary_size}: they do not belong together")
        self.policy = policy
        self.tokenizer = tokenizer
        self.reward_fn = reward_fn
        self.max_new_tokens = int(max_new_tokens)
        eos_id = tokenizer.eos_id if eos_id is _TOKENIZER_EOS else eos_id
        if eos_id is not None and (isinstance(eos_id, bool)
                                   or not isinstance(eos_id, (int, np.integer))
                                   or not 0 <= eos_id < vocabulary_size):
            raise ValueError(f"eos_id must be None or a token id in [0, {vocabulary_size}), "
                             f"got {eos_id!r}")
        self.eos_id = None if eos_id is None else int(eos_id)
        self.shuffle = bool(shuffle)
        self.on_invalid_reward = on_invalid_reward
        self._columns = self._prompt_columns(prompts, tokenizer, references, extras)
        self.num_prompts = len(self._columns["prompt"])
        self.action_space = DiscreteTokens(vocabulary_size, seed)
        self._seed_order(seed)
        self._episode = None

    @staticmethod
    def _prompt_columns(prompts, tokenizer, references, extras):
        if isinstance(prompts, tf.data.Dataset):
            if references is not None or extras is not None:
                raise ValueError("references / extras go with string prompts; a dataset "
                                 "carries its own columns")
            return _materialize(prompts)
        if hasattr(prompts, "prompts") and hasattr(prompts, "references"):  # a tasks.Split
            if references is not None or extras is not None:
                raise ValueError("references / extras go with string prompts; a Split "
                                 "carries its own")
            prompts, references, extras = (prompts.prompts, prompts.references,
                                           prompts.extras or None)
        if isinstance(prompts, (str, bytes)):
            raise TypeError("prompts must be a list of strings, not a single string")
        prompts = list(prompts)
        if not prompts:
            raise ValueError("prompts is empty: no prompts to start episodes from")
        dataset = tfpg_data.prompt_dataset(prompts, tokenizer, references=references,
                                           extras=extras, batch_size=len(prompts))
        return _materialize(dataset)

    # ----------------------------------------------------------- prompt order

    def _seed_order(self, seed):
        self._rng = np.random.default_rng(seed)
        self._order = self._new_order()
        self._position = 0

    def _new_order(self):
        if self.shuffle:
            return self._rng.permutation(self.num_prompts)
        return np.arange(self.num_prompts)

    def _next_index(self):
        if self._position == self.num_prompts:
            self._order, self._position = self._new_order(), 0
        index = int(self._order[self._position])
        self._position += 1
        return index

    # -------------------------------------------------------------- episodes

    def reset(self, *, seed=None, options=None):
        """Starts an episode on the next prompt.

        Args:
            seed: int or None. Restarts the prompt order from this seed (same seed, same
                order).
            options: dict or None. {"index": i} starts on prompt i instead (the order is
                not advanced).

        Returns:
            (observation int32 [P]: BOS and the prompt's ids, no padding;
             info: {"prompt": str, "index": int}).
        """
        if seed is not None:
            self._seed_order(seed)
            self.action_space.seed(seed)
        options = options or {}
        unknown = sorted(set(options) - {"index"})
        if unknown:
            raise ValueError(f"unknown reset option(s) {unknown}; known: ['index']")
        if "index" in options:
            index = options["index"]
            if isinstance(index, bool) or not isinstance(index, (int, np.integer)) \
                    or not 0 <= index < self.num_prompts:
                raise ValueError(f"options['index'] must be an int in [0, {self.num_prompts}),"
                                 f" got {index!r}")
            index = int(index)
        else:
            index = self._next_index()
        row = self._columns["prompt"][index]                         # [P], left-padded
        # Padding is the mask's 0s (a KerasHub pad id can be a real token).
        real = (self._columns["prompt_mask"][index] > 0 if "prompt_mask" in self._columns
                else row != 0)
        prompt = row[np.argmax(real):] if np.any(real) else row[:0]
        self._episode = {"index": index, "prompt": prompt.astype(np.int32),
                         "completion": [], "done": None}
        return self._observation(), {"prompt": self.tokenizer.decode(prompt), "index": index}

    def step(self, action):
        """Appends `action` (a token id) to the completion.

        Returns:
            (observation int32 [P + t], reward float: 0.0 until the episode ends,
             then the reward of the completion, terminated bool: the action was EOS,
             truncated bool: `max_new_tokens` tokens without EOS, info dict). On the
            last step `info` also holds "completion" (decoded text), "completion_ids"
            (int32 [t], EOS included) and "episode": {"r": reward, "l": t}.
        """
        if self._episode is None:
            raise RuntimeError("call reset() before step()")
        if self._episode["done"] is not None:
            raise RuntimeError(f"the episode is over ({self._episode['done']}); "
                               "call reset() to start the next one")
        token = _as_action(action)
        if not 0 <= token < self.action_space.n:
            raise InvalidActionError(f"action {token} is not a token id: the vocabulary "
                                     f"has ids 0 .. {self.action_space.n - 1}")
        completion = self._episode["completion"]
        completion.append(token)
        terminated = self.eos_id is not None and token == self.eos_id
        truncated = not terminated and len(completion) >= self.max_new_tokens
        info = {"index": self._episode["index"]}
        reward = 0.0
        if terminated or truncated:
            self._episode["done"] = "terminated" if terminated else "truncated"
            reward = self._score()
            ids = np.asarray(completion, np.int32)
            info.update(completion=self.tokenizer.decode(ids), completion_ids=ids,
                        episode={"r": reward, "l": len(completion)})
        return self._observation(), reward, terminated, truncated, info

    def _observation(self):
        return np.concatenate([self._episode["prompt"],
                               np.asarray(self._episode["completion"], np.int32)])

    def _score(self):
        """The reward of the finished completion, with the trainers' shapes."""
        index = self._episode["index"]
        batch = {key: tf.constant(value[index:index + 1])
                 for key, value in self._columns.items()}
        completion = np.zeros([1, self.max_new_tokens], np.int32)
        mask = np.zeros([1, self.max_new_tokens], np.float32)
        length = len(self._episode["completion"])
        completion[0, :length] = self._episode["completion"]
        mask[0, :length] = 1.0
        result = compute_rewards(self.reward_fn, tf.cast(batch["prompt"], tf.int32),
                                 tf.constant(completion), tf.constant(mask), batch,
                                 self.on_invalid_reward)
        return float(result.rewards[0])

    # ------------------------------------------------------------------ misc

    def render(self):
        """The current episode as text: "prompt || completion so far"."""
        if self._episode is None:
            return ""
        prompt = self.tokenizer.decode(self._episode["prompt"])
        completion = self.tokenizer.decode(np.asarray(self._episode["completion"], np.int32))
        return f"{prompt} || {completion}"

    def close(self):
        """Nothing to release; for API compatibility."""

    @classmethod
    def from_task(cls, task, tokenizer=None, split="train", policy=None, **options):
        """An env over a bundled task's split with the task's reward and lengths.

        `task` is a `tfpg.tasks.Task` or its name; `tokenizer` defaults to
        `task.tokenizer()`; `options` go to the constructor (e.g. `seed`).
        """
        if isinstance(task, str):
            from tfpg.tasks import get_task
            task = get_task(task)
        tokenizer = tokenizer or task.tokenizer()
        options.setdefault("max_new_tokens", task.max_new_tokens)
        return cls(policy, task.split(split), tokenizer, task.reward(tokenizer), **options)

    def __repr__(self):
        return (f"TextGenerationEnv(prompts={self.num_prompts}, vocabulary="
                f"{self.action_space.n}, max_new_tokens={self.max_new_tokens}, "
                f"eos_id={self.eos_id})")
