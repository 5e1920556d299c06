"""Multi-turn rollouts: policy turns and environment replies in one trajectory.

`rollout_episodes(policy, env, batch, max_turns, max_new_tokens)` plays one episode
per row of a prompt batch against a `tfpg.envs.turn_env.TurnEnv`:

* each turn is one compiled generation (`tfpg.generate`, traced once: batch and
  context lengths are dynamic) for the unfinished rows only, up to the env's
  `turn_end` token, EOS or `max_new_tokens`. The context (prompt, earlier turns and
  replies) is prefilled again every turn: no cache is carried between turns;
* between turns the env runs in Python, one `env.step` call for all unfinished rows;
* a row stops when the env says it is done, after `max_turns` turns, or when its
  trajectory would outgrow `max_length`.

The result (`Episodes`) holds one trajectory per row: the first observation
left-padded (`prompt_ids`, as a prompt batch), then policy turns and env replies in
order, right-padded (`completion_ids`), with `completion_mask` 1 on every real token
and `policy_mask` 1 on the policy's tokens only (the loss mask); each turn's reward
sits on its last policy token (`token_rewards`).

With `env=` these episodes are the rollout source of a trainer of
`tfpg.algorithms` (`tfpg.algorithms.episodes`): the rollout in Python, eagerly, with
the compiled per-turn generation; then the trainer's own single-turn path, as one
`tf.function`, scores the trajectories (old log-probs, reference KL, values, over
the whole trajectory in one forward pass), computes the algorithm's advantages over
policy tokens only and runs its update. Environment tokens are context for the
model but carry no action: their log-probs, KL, entropy, values and advantages are
masked out of every loss term, so the gradient of the loss with respect to the
logits that predict them is exactly zero.
"""

import json
import time
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from tfpg.data import MESSAGES_COLUMN, encode_prompt, is_conversation, pad_ids
from tfpg.envs.turn_env import as_numpy_batch
from tfpg.generation import generate
from tfpg.models.policy import check_policy
from tfpg.xla import resolve_jit_compile

POLICY, ENV, PROMPT = "policy", "env", "prompt"


class Episodes(NamedTuple):
    """One trajectory per row (numpy). P: longest first observation; N: longest rest.

    prompt_ids: int32 [B, P], first observations, left-padded with the pad id.
    prompt_mask: int32 [B, P], 1 on real tokens.
    completion_ids: int32 [B, N], policy turns and env replies, right-padded.
    completion_mask: float32 [B, N], 1 on every real token.
    policy_mask: float32 [B, N], 1 on policy tokens (the loss mask).
    log_probs: float32 [B, N], log-probs of policy tokens under the sampled
        distribution (0 elsewhere).
    token_rewards: float32 [B, N], each turn's reward on its last policy token.
    rewards: float32 [B], the episode's total reward.
    turns: int64 [B], policy turns played.
    done: bool [B], False where the episode was cut (max_turns / max_length).
    segments: B lists of (role, ids): "prompt", then "policy" / "env" in order.
    env_seconds, generate_seconds: time in the env and in generation.
    """

    prompt_ids: np.ndarray
    prompt_mask: np.ndarray
    completion_ids: np.ndarray
    completion_mask: np.ndarray
    policy_mask: np.ndarray
    log_probs: np.ndarray
    token_rewards: np.ndarray
    rewards: np.ndarray
    turns: np.ndarray
    done: np.ndarray
    segments: list
    env_seconds: float
    generate_seconds: float

    @property
    def token_ids(self):
        """int32 [B, P + N]: the whole trajectories."""
        return np.concatenate([self.prompt_ids, self.completion_ids], axis=1)

    @property
    def loss_mask(self):
        """float32 [B, P + N]: 1 on policy tokens only."""
        return np.concatenate([np.zeros(self.prompt_ids.shape, np.float32),
                               self.policy_mask], axis=1)

    def text(self, tokenizer, row):
        """Row `row` after its prompt, as one text (turns and replies in order, EOS
        left out): the layout of a task's teacher episodes."""
        eos_id = getattr(tokenizer, "eos_id", None)
        ids = [i for i in self.completion_ids[row][self.completion_mask[row] > 0]
               if i != eos_id]
        return tokenizer.decode(np.asarray(ids, np.int32))

    def transcript(self, tokenizer, row):
        """Row `row` after its prompt, env replies in [brackets]: "turn [reply] turn"."""
        parts = []
        for role, ids in self.segments[row][1:]:
            text = tokenizer.decode(np.asarray(ids, np.int32)) if ids else ""
            parts.append(f"[{text}]" if role == ENV else text)
        return " ".join(parts)

    def render(self, tokenizer, row):
        """Row `row` as text: "prompt | turn [reply] turn"."""
        prompt = tokenizer.decode(np.asarray(self.segments[row][0][1], np.int32))
        return prompt + " | " + self.transcript(tokenizer, row)

    def records(self, tokenizer, limit=4):
        """Up to `limit` episodes of distinct prompts as sample records: "prompt",
        "completion" (the transcript), "reward" (the episode's), "reference" None."""
        records, seen = [], set()
        for row in range(len(self.turns)):
            prompt = tokenizer.decode(np.asarray(self.segments[row][0][1], np.int32))
            if prompt in seen:
                continue
            seen.add(prompt)
            records.append({"prompt": prompt, "completion": self.transcript(tokenizer, row),
                            "reward": float(self.rewards[row]), "reference": None})
            if len(records) == limit:
                break
        return records


def _encode(tokenizer, observation, first):
    if isinstance(observation, str):
        return list(tokenizer.encode(observation, add_bos=first))
    return [int(i) for i in np.asarray(observation).reshape([-1])]


def _token_text(tokenizer, token_id):
    """The text of one token id (None where the tokenizer cannot tell)."""
    to_token = getattr(getattr(tokenizer, "hub_tokenizer", tokenizer), "id_to_token", None)
    try:
        return None if to_token is None or token_id is None else to_token(int(token_id))
    except Exception:  # noqa: BLE001 - an id the vocabulary does not name
        return None


def reply_renderer(env, template, end_token=None):
    """How an env reply becomes the text after a policy turn: as it is, or with a
    chat template (conversational prompts) the template's next turn, in the env's
    `reply_role` ("user"; a `ToolEnv`'s replies are "tool" messages), followed by
    the next assistant header (`ChatTemplate.reply_text`). `end_token`: the text of
    the token that ended the policy's turn, which the template's end of turn starts
    with (the policy wrote it)."""
    if template is None:
        return lambda text: text
    role = getattr(env, "reply_role", "user")
    return lambda text: template.reply_text(text, role, end_token)


def _turn_seed(seed, turn):
    seed = tf.cast(tf.reshape(tf.convert_to_tensor(
        [seed, 0] if isinstance(seed, int) else seed), [2]), tf.int64)
    return tf.cast(tf.random.experimental.stateless_fold_in(seed, turn), tf.int32)


def rollout_episodes(policy, env, batch, max_turns, max_new_tokens, sampler="sample",
                     temperature=1.0, top_k=None, top_p=None, suppress_ids=None, seed=0,
                     max_length=None, jit_compile=False):
    """Plays one episode per row of `batch` (see the module docstring).

    Args:
        policy: a `tfpg.models.Policy`.
        env: a `tfpg.envs.turn_env.TurnEnv` (its `tokenizer` encodes and decodes).
        batch: a prompt batch: dict with "prompt" int [B, P] (and "prompt_mask", and
            any columns the env reads).
        max_turns: policy turns per episode at most.
        max_new_tokens: token budget of one turn.
        sampler, temperature, top_k, top_p, suppress_ids, jit_compile: as in
            `tfpg.generate`.
        seed: int or int [2]; each turn folds in its index.
        max_length: longest trajectory; default the policy's `max_length` for a
            policy with a position table, else unbounded.

    Returns:
        `Episodes`.
    """
    check_policy(policy)
    if not isinstance(max_turns, (int, np.integer)) or max_turns < 1:
        raise ValueError(f"max_turns must be a positive int, got {max_turns!r}")
    if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    tokenizer = env.tokenizer
    pad_id, eos_id = policy.pad_id, policy.eos_id
    stop_id = eos_id if env.turn_end_id is None else env.turn_end_id
    if max_length is None and policy.is_positional:
        max_length = policy.max_length
    jit_compile = resolve_jit_compile(jit_compile)
    batch = as_numpy_batch(batch)

    started = time.perf_counter()
    first = env.reset(batch)
    env_seconds = time.perf_counter() - started
    # Conversational prompts: replies are turns of the same chat template.
    template = getattr(tokenizer, "chat_template", None) if MESSAGES_COLUMN in batch else None
    render = reply_renderer(env, template, _token_text(tokenizer, stop_id))
    size = len(first)
    prompts = [_encode(tokenizer, observation, True) for observation in first]
    if any(not prompt for prompt in prompts):
        raise ValueError("every first observation needs at least one token")
    rest = [[] for _ in range(size)]          # completion ids per row
    roles = [[] for _ in range(size)]         # POLICY / ENV per completion token
    log_probs = [[] for _ in range(size)]
    rewards_at = [[] for _ in range(size)]    # (completion index, reward)
    segments = [[(PROMPT, prompt)] for prompt in prompts]
    cut = np.zeros([size], bool)
    generate_seconds = 0.0

    for turn in range(max_turns):
        alive = np.asarray([row for row in env.unfinished if not cut[row]], np.int64)
        if max_length is not None:
            room = np.asarray([max_length - len(prompts[r]) - len(rest[r]) for r in alive])
            cut[alive[room < 1]] = True
            alive = alive[room >= 1]
        if not alive.size:
            break
        contexts = [prompts[r] + rest[r] for r in alive]
        # Under XLA every new shape compiles again: context widths in steps of 32.
        multiple = 32 if jit_compile else 1
        longest = max(len(context) for context in contexts)
        if max_length is not None and -(-longest // multiple) * multiple >= max_length:
            multiple = 1
        ids, mask = pad_ids(contexts, "left", pad_id, multiple)
        budget = max_new_tokens
        if max_length is not None:   # the longest context bounds every row's turn
            budget = int(min(budget, max_length - ids.shape[1]))
        started = time.perf_counter()
        out = generate(policy, ids, max_new_tokens=budget, sampler=sampler,
                       temperature=temperature, top_k=top_k, top_p=top_p, eos_id=stop_id,
                       seed=_turn_seed(seed, turn), suppress_ids=suppress_ids,
                       jit_compile=jit_compile, prompt_mask=mask)
        tokens, token_mask, token_log_probs = (t.numpy() for t in out)
        generate_seconds += time.perf_counter() - started

        texts = []
        for i, row in enumerate(alive):
            ids_i = tokens[i, :int(token_mask[i].sum())].tolist()
            if stop_id != eos_id and eos_id in ids_i:   # EOS ends a turn too
                ids_i = ids_i[:ids_i.index(eos_id) + 1]
            texts.append(tokenizer.decode(np.asarray(ids_i, np.int32)))
            rest[row] += ids_i
            roles[row] += [POLICY] * len(ids_i)
            log_probs[row] += token_log_probs[i, :len(ids_i)].tolist()
            segments[row].append((POLICY, ids_i))

        started = time.perf_counter()
        observations, rewards, dones = env.step(texts, rows=alive)
        env_seconds += time.perf_counter() - started
        for i, row in enumerate(alive):
            rewards_at[row].append((len(rest[row]) - 1, float(rewards[i])))
            if dones[i] or turn + 1 == max_turns:
                continue   # no policy token follows: the reply is not part of it
            observation = observations[i]
            reply = _encode(tokenizer, render(observation) if isinstance(observation, str)
                            else observation, False)
            if max_length is not None:     # cut to fit; the row then ends (no room)
                reply = reply[:max(max_length - len(prompts[row]) - len(rest[row]), 0)]
            rest[row] += reply
            roles[row] += [ENV] * len(reply)
            log_probs[row] += [0.0] * len(reply)
            segments[row].append((ENV, reply))

    prompt_ids, prompt_mask = pad_ids(prompts, "left", pad_id)
    width = max(max((len(r) for r in rest), default=0), 1)
    completion_ids = np.full([size, width], pad_id, np.int32)
    completion_mask = np.zeros([size, width], np.float32)
    policy_mask = np.zeros([size, width], np.float32)
    sampled = np.zeros([size, width], np.float32)
    token_rewards = np.zeros([size, width], np.float32)
    for row in range(size):
        n = len(rest[row])
        completion_ids[row, :n] = rest[row]
        completion_mask[row, :n] = 1.0
        policy_mask[row, :n] = [role == POLICY for role in roles[row]]
        sampled[row, :n] = log_probs[row]
        for index, reward in rewards_at[row]:
            token_rewards[row, index] += reward
    return Episodes(prompt_ids, prompt_mask, completion_ids, completion_mask, policy_mask,
                    sampled, token_rewards, token_rewards.sum(axis=1), env.turns.copy(),
                    env.done.copy(), segments, env_seconds, generate_seconds)


# ------------------------------------------------------------------ trainers

def metric_names(env):
    """Logs a trainer adds with `env=`: per-episode turn statistics and the env's."""
    return ["turns", "turn_length", "env_tokens", "env_time_fraction",
            *env.metric_names]


def check_env(env, max_turns, reward_fn, algorithm=None):
    """Validates a trainer's `env=` / `max_turns` / `reward_fn` (`algorithm`: the
    trainer's class); returns max_turns."""
    if env is None:
        if max_turns is not None:
            raise ValueError("max_turns is for multi-turn episodes: pass env= too")
        return None
    if not getattr(algorithm, "supports_env", True):
        raise ValueError(f"{algorithm.__name__} does not run multi-turn episodes (env=); "
                         "use REINFORCE, RLOO, GRPO, A2C or PPO")
    if not all(callable(getattr(env, name, None)) for name in ("reset", "step")) \
            or not hasattr(env, "tokenizer"):
        raise TypeError(f"env must be a tfpg.envs.turn_env.TurnEnv (reset / step / "
                        f"tokenizer), got {type(env).__name__}")
    if reward_fn is not None:
        raise ValueError("with env= the environment gives the rewards: pass "
                         "reward_fn=None")
    max_turns = 4 if max_turns is None else max_turns
    if isinstance(max_turns, bool) or not isinstance(max_turns, (int, np.integer)) \
            or max_turns < 1:
        raise ValueError(f"max_turns must be a positive int, got {max_turns!r}")
    return int(max_turns)


def episode_rewards(token_rewards, on_invalid):
    """Non-finite env rewards per `on_invalid` ("raise" / "zero" / "skip").

    Returns (token_rewards float32 [B, N] finite, valid float32 [B], invalid count).
    """
    finite = np.isfinite(token_rewards)
    invalid = ~finite.all(axis=1)                                         # [B]
    if invalid.any() and on_invalid == "raise":
        raise ValueError(f"the env gave non-finite rewards in rows "
                         f"{np.flatnonzero(invalid).tolist()}; pass "
                         "on_invalid_reward='zero' or 'skip' to go on")
    valid = np.ones(invalid.shape, np.float32)
    if on_invalid == "skip":
        valid[invalid] = 0.0
    return np.where(finite, token_rewards, 0.0).astype(np.float32), valid, int(invalid.sum())


# ------------------------------------------------------------- text episodes

def play_text_episodes(generate, env, prompts, max_turns, extras=None, chat_template=None,
                       **options):
    """Episodes driven by a text generator, e.g. an export's `tfpg.load(dir).generate`.

    The same episodes as `rollout_episodes`, at the level of strings: each turn calls
    `generate(contexts, **options)` once for the unfinished rows (a context is the
    prompt, earlier turns and replies joined as the tokenizer joins tokens) and cuts
    each completion after the env's `turn_end` token; the env runs between turns.

    Conversations (prompts that are message lists) are rendered with `chat_template`
    (default: the tokenizer's) and each reply becomes the template's next turn
    (`reply_renderer`); the contexts are then joined with nothing between them and
    `generate` gets them rendered.

    Args:
        generate: callable(list[str], **options) -> list[str], stopping at EOS.
        env: the `TurnEnv` (with the generator's tokenizer).
        prompts: list of prompt strings, or of conversations.
        max_turns: policy turns per episode at most.
        extras: dict of extra batch columns for the env (e.g. {"answer": [...]}).
        chat_template: the `ChatTemplate` conversations are rendered with.

    Returns:
        One dict per prompt: "prompt", "turns" (list of (role, text), role "policy"
        or "env"), "reward" (total) and "done".
    """
    tokenizer = env.tokenizer
    joiner = "" if getattr(tokenizer, "level", None) == "char" else " "
    chat = bool(prompts) and is_conversation(prompts[0])
    template = (chat_template or getattr(tokenizer, "chat_template", None)) if chat else None
    if chat and template is None:
        raise ValueError("conversational prompts need a chat template (the tokenizer has "
                         "none): give chat_template=")
    rendered = [template.render(p) for p in prompts] if chat else None
    ids, mask = pad_ids([tokenizer.encode(text, add_bos=getattr(
        tokenizer, "chat_adds_bos", False)) for text in rendered] if chat else
        [encode_prompt(p, tokenizer) for p in prompts], "left",
        getattr(tokenizer, "pad_id", 0))
    batch = {"prompt": ids, "prompt_mask": mask,
             **{key: np.asarray(value) for key, value in (extras or {}).items()}}
    render = reply_renderer(env, template)
    if chat:
        batch[MESSAGES_COLUMN] = np.asarray([json.dumps(p) for p in prompts], dtype=object)
        joiner = ""                 # the template's text is the whole context

    def as_text(observation):
        if isinstance(observation, str):
            return observation
        return tokenizer.decode(np.asarray(observation, np.int32))

    # A chat's first context is its rendered prompt (decoding the ids would drop the
    # BOS text the template wrote).
    contexts = [rendered[row] if chat and not isinstance(observation, str)
                else as_text(observation) for row, observation in enumerate(env.reset(batch))]
    turn_end = None if env.turn_end_id is None else tokenizer.decode(
        np.asarray([env.turn_end_id], np.int32))
    episodes = [{"prompt": prompt, "turns": [], "reward": 0.0, "done": False}
                for prompt in prompts]
    for turn in range(max_turns):
        alive = env.unfinished
        if not alive.size:
            break
        texts = list(generate([contexts[row] for row in alive], **options))
        if turn_end:
            texts = [text[:text.index(turn_end) + len(turn_end)] if turn_end in text
                     else text for text in texts]
        observations, rewards, dones = env.step(texts, rows=alive)
        for row, text, observation, reward, done in zip(alive, texts, observations,
                                                        rewards, dones):
            episode = episodes[row]
            episode["turns"].append((POLICY, text))
            episode["reward"] += float(reward)
            episode["done"] = bool(done)
            contexts[row] = joiner.join(part for part in (contexts[row], text) if part)
            if not done and turn + 1 < max_turns:
                reply = as_text(observation)
                episode["turns"].append((ENV, reply))
                contexts[row] = joiner.join(part for part in (contexts[row], render(reply))
                                            if part)
    return episodes
