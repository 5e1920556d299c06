"""`ToolEnv`: tool calls inside a multi-turn episode.

Tag format: a policy turn calls tool NAME by writing `<NAME>ARGUMENTS</NAME>`
anywhere in it, e.g. `<calc>417*38</calc>` (the tags are `open_tag` / `close_tag`
format strings, so a small vocabulary can use others, e.g. `open_tag="[{name}:"`,
`close_tag="]"`). The first call of a turn runs `tools[NAME](ARGUMENTS)` (the
arguments as one string) and its output, formatted with `result_format`, is the
next observation. A turn without a call is the episode's final answer: the row is
done and `reward_fn` scores it.

A call never crashes the run. A tool that raises, runs longer than `timeout`
seconds, returns something `str()` cannot print, or a call of an unknown tool or
without its closing tag gives an error observation (`error_format`, e.g.
"error: timeout") and the episode goes on. Every call of a turn runs at once on a
pool of daemon worker threads (`ToolWorkers`): Python cannot stop a thread, so a
tool that hangs is abandoned (its worker is left behind and replaced, and never
keeps the process alive at exit) and the turn waits at most `timeout` seconds in
all. Outputs longer than
`max_output_chars` are cut. Tool outputs are observations: they are tokenised
with the policy's tokenizer and never trained on.

Example:
>>> from tfpg.text import Tokenizer
>>> tok = Tokenizer.from_texts(["<calc>0123456789*</calc> error:timeout"], level="char")
>>> env = ToolEnv({"calc": calculator}, tok)
>>> _ = env.reset({"prompt": [tok.encode("7*6")]})
>>> env.step(["<calc>7*6</calc>"])
(['42'], array([0.], dtype=float32), array([False]))
"""

import ast
import operator
import queue
import re
import threading
import time

import numpy as np

from tfpg.envs.turn_env import TurnEnv, rows_of

_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
              ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
              ast.USub: operator.neg, ast.UAdd: operator.pos}


def calculator(expression, max_digits=30):
    """Integer arithmetic on a string: + - * // % and parentheses, no names.

    A safe `eval` for the `calc` tool: anything but integer literals and those
    operators raises ValueError, and so do results longer than `max_digits` digits.

    Example:
    >>> calculator("417*38"), calculator("(7 - 9) * 3")
    (15846, -6)
    """
    if not isinstance(expression, str) or len(expression) > 200:
        raise ValueError("expression must be a string of at most 200 characters")
    tree = ast.parse(expression.strip(), mode="eval")

    def value(node):
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            result = _OPERATORS[type(node.op)](value(node.left), value(node.right))
        elif isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
            result = _OPERATORS[type(node.op)](value(node.operand))
        else:
            raise ValueError(f"unsupported expression element {type(node).__name__}")
        if len(str(abs(result))) > max_digits:
            raise ValueError("result too large")
        return result

    return value(tree.body)


class _Slot:
    """Where a worker leaves one call's (ok, value)."""

    __slots__ = ("done", "result")

    def __init__(self):
        self.done = threading.Event()
        self.result = None


class ToolWorkers:
    """Long-lived daemon threads that run tool calls, all of a turn's calls at once.

    Starting a thread per call costs more than a cheap tool; these workers wait on a
    queue instead. A worker stuck in a tool that hangs is left to it: `run` starts
    new workers whenever fewer are idle than calls are waiting, so a hang never
    delays a later call, and daemon threads never keep the process alive at exit.
    """

    def __init__(self):
        self._tasks = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0        # workers waiting for a task
        self._queued = 0      # tasks no worker has taken yet

    def _work(self):
        while True:
            slot, fn, argument = self._tasks.get()
            with self._lock:
                self._idle -= 1
                self._queued -= 1
            try:
                slot.result = (True, fn(argument))
            except BaseException as error:   # noqa: B036 -- a tool must never end the run
                slot.result = (False, type(error).__name__)
            slot.done.set()
            with self._lock:
                self._idle += 1

    def run(self, calls, timeout):
        """Runs calls [(fn, argument)]; returns [(ok, output or error name)], with
        (False, "timeout") for those not finished `timeout` seconds after the start."""
        slots = [_Slot() for _ in calls]
        with self._lock:
            missing = len(calls) - (self._idle - self._queued)
            self._queued += len(calls)
            self._idle += max(missing, 0)     # counted before they start: no double start
        for _ in range(max(missing, 0)):
            threading.Thread(target=self._work, daemon=True, name="tfpg-tool").start()
        deadline = time.monotonic() + timeout
        for slot, (fn, argument) in zip(slots, calls):
            self._tasks.put((slot, fn, argument))
        for slot in slots:
            slot.done.wait(max(deadline - time.monotonic(), 0.0))
        return [slot.result if slot.done.is_set() else (False, "timeout") for slot in slots]


_WORKERS = ToolWorkers()


def run_calls(calls, timeout):
    """Runs calls [(fn, argument)] concurrently on the shared `ToolWorkers`.

    Returns a list of (ok, value): (True, output) or (False, error name), with
    (False, "timeout") for calls not finished `timeout` seconds after the start.
    """
    return _WORKERS.run(calls, timeout)


class ToolEnv(TurnEnv):
    """Episodes in which the policy may call tools before it answers.

    Args:
        tools: dict. Dict name -> callable(arguments: str) -> output (printed with
            `str`).
        tokenizer: `tfpg.Tokenizer`. The policy's tokenizer.
        reward_fn: callable or None. Scores final answers, once per turn for all rows
            that answered: `reward_fn(answers: list[str], batch: dict of numpy columns
            of those rows) -> float [n]`; None gives 0.
        turn_end: str or None. Token that ends a turn besides EOS (see `TurnEnv`).
        timeout: float. Seconds a turn's tool calls may take together.
        open_tag: str. Format string of the opening call tag ({name}: the tool).
        close_tag: str. Format string of the closing call tag ({name}: the tool).
        result_format: str. Observation of a call that worked ({output}).
        error_format: str. Observation of one that did not ({error}).
        max_output_chars: int. Outputs and errors are cut to this many characters.
        call_reward: float. Reward of a turn with a well-formed call that worked (0:
            only the answer is rewarded).

    Per-episode statistics (`episode_metrics`): "tool_calls" and "tool_errors".
    `answers` holds each row's final answer (None while it has not answered).
    """

    metric_names = ("tool_calls", "tool_errors")
    reply_role = "tool"     # in a chat, tool outputs are "tool" messages

    def __init__(self, tools, tokenizer, reward_fn=None, turn_end=None, timeout=1.0,
                 open_tag="<{name}>", close_tag="</{name}>", result_format="{output}",
                 error_format="error: {error}", max_output_chars=64, call_reward=0.0):
        super().__init__(tokenizer, turn_end)
        if not isinstance(tools, dict) or not tools:
            raise ValueError("tools must be a non-empty dict name -> callable")
        for name, fn in tools.items():
            if not isinstance(name, str) or not re.fullmatch(r"\w+", name):
                raise ValueError(f"tool names must be words (letters, digits, _), "
                                 f"got {name!r}")
            if not callable(fn):
                raise TypeError(f"tool {name!r} is not callable")
        if reward_fn is not None and not callable(reward_fn):
            raise TypeError("reward_fn must be callable or None")
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        if "{name}" not in open_tag or not close_tag:
            raise ValueError(f"open_tag must contain '{{name}}' and close_tag must not be "
                             f"empty, got {open_tag!r}, {close_tag!r}")
        self.tools = dict(tools)
        self.reward_fn = reward_fn
        self.timeout = float(timeout)
        self.open_tag, self.close_tag = open_tag, close_tag
        self.result_format, self.error_format = result_format, error_format
        self.max_output_chars = int(max_output_chars)
        self.call_reward = float(call_reward)
        # Any name in the opening tag, to tell "unknown tool" from "no call".
        before, after = (re.escape(part) for part in open_tag.split("{name}", 1))
        self._open = re.compile(f"{before}(\\w+){after}")
        self.answers = []
        self.calls = np.zeros([0], np.int64)
        self.errors = np.zeros([0], np.int64)

    def start(self, batch):
        size = len(batch["prompt"])
        self.answers = [None] * size
        self.calls = np.zeros([size], np.int64)
        self.errors = np.zeros([size], np.int64)
        return super().start(batch)

    def parse(self, text):
        """The first tool call in `text`: (name, arguments) for a well-formed call,
        (None, error) for a malformed one, None when there is no call."""
        opened = self._open.search(text)
        if opened is None:
            return None
        name = opened.group(1)
        if name not in self.tools:
            return None, f"unknown tool {name}"
        close = self.close_tag.format(name=name)
        end = text.find(close, opened.end())
        if end < 0:
            return None, f"no {close}"
        return name, text[opened.end():end]

    def respond(self, rows, completions):
        observations = [None] * len(rows)
        rewards = np.zeros([len(rows)], np.float32)
        dones = np.zeros([len(rows)], bool)
        pending, answered = [], []
        for i, text in enumerate(completions):
            call = self.parse(text)
            if call is None:
                answered.append(i)
            elif call[0] is None:
                observations[i] = self._error(rows[i], call[1])
            else:
                pending.append((i, call))
        if pending:
            results = run_calls([(self.tools[name], arguments)
                                 for _, (name, arguments) in pending], self.timeout)
            for (i, _), (ok, output) in zip(pending, results):
                self.calls[rows[i]] += 1
                text = _printed(output) if ok else None
                if text is None:
                    observations[i] = self._error(rows[i], output if not ok else "output")
                else:
                    observations[i] = self.result_format.format(
                        output=text[:self.max_output_chars])
                    rewards[i] = self.call_reward
        if answered:
            answered = np.asarray(answered)
            texts = [completions[i] for i in answered]
            for i, text in zip(answered, texts):
                self.answers[rows[i]] = text
                observations[i] = ""
            dones[answered] = True
            if self.reward_fn is not None:
                scores = np.asarray(self.reward_fn(texts, rows_of(self.batch, rows[answered])),
                                    np.float32).reshape([-1])
                if scores.size != len(texts):
                    raise ValueError(f"reward_fn gave {scores.size} rewards for "
                                     f"{len(texts)} answers")
                rewards[answered] = scores
        return observations, rewards, dones

    def _error(self, row, error):
        self.errors[row] += 1
        return self.error_format.format(error=error)[:self.max_output_chars]

    def episode_metrics(self):
        return {"tool_calls": self.calls.astype(np.float32),
                "tool_errors": self.errors.astype(np.float32)}

    def __repr__(self):
        return (f"ToolEnv(tools={sorted(self.tools)}, timeout={self.timeout}, "
                f"turn_end={self.turn_end!r})")


def _printed(output):
    """`str(output)`, or None when even that fails (a garbage object)."""
    try:
        text = output if isinstance(output, str) else str(output)
    except Exception:   # noqa: BLE001 -- a tool's output must never end the run
        return None
    return text if isinstance(text, str) else None
