"""`SampleLogger`: completions of fixed prompts as TensorBoard text and markdown / JSONL tables."""

import collections.abc
import json
import os
import warnings

import tensorflow as tf

from tfpg import data as tfpg_data
from tfpg.callbacks.base import _GlobalStep, _is_chief, _numpy, _policy_of
from tfpg.generation import generate
from tfpg.rewards.base import call_reward


def _markdown_cell(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    # Pipes would split the cell and newlines the row.
    return str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\n", "<br>")


class SampleLogger(_GlobalStep):
    """Completes fixed evaluation prompts during training and logs the results.

    Every `every_n_epochs` epochs (or, when `every_n_steps` is given, every that
    many batches instead) it generates completions with `model.policy` (or the model
    itself when it is a `PolicyNetwork`) via `tfpg.generate`, scores them with the
    reward, and writes a markdown table prompt | completion | reward | reference:

    * TensorBoard text summary `samples` in the run `logdir/samples` at the global
      train step (that of `RewardLogger`'s scalars: an epoch's table at its last step);
    * `logdir/samples/epoch_0001.md` (after the first epoch) or `step_00000100.md`;
    * one JSON line per sample appended to `logdir/samples/samples.jsonl`.

    With a multi-turn trainer (`env=`) the rows are whole episodes of the last
    training batch instead: prompt | turns with the env's replies in [brackets] |
    the episode's reward.

    Args:
        logdir: str. TensorBoard log directory.
        tokenizer: `tfpg.Tokenizer`. The `Tokenizer` of the policy.
        prompts: list or None. Evaluation prompts (strings, or conversations rendered
            with the tokenizer's chat template). None takes up to 4 distinct prompts of
            the first rollout (`model.last_rollout["prompt_ids"]`, see `RewardLogger`)
            and keeps them; without one, the empty prompt (samples from BOS).
        references: list of str or None. Reference strings, one per prompt (shown in the
            table and passed to the reward as `batch["reference"]`, encoded without BOS
            and right-padded with 0).
        every_n_steps: int or None. Log every N training batches instead of every N
            epochs.
        every_n_epochs: int. Log every N epochs.
        max_new_tokens: int or None. Completion length; default the trainer's
            `max_new_tokens` (else 32).
        sampler: str. "greedy" (default, comparable across epochs) or a sampler of
            `tfpg.generate`; sampling uses the trainer's `temperature`, `top_k` and
            `top_p` and the fixed `seed`.
        reward_fn: callable or None. `reward_fn(prompt_ids, completion_ids,
            completion_mask, batch)`; default the trainer's `reward_fn`. A reward that
            fails here (e.g. it needs dataset columns this callback cannot supply) is
            reported in a warning once and the reward column is left empty.
        seed: int. Sampling seed.

    Example:
    >>> tok = tfpg.Tokenizer.from_texts(["3 + 4 = 7", "2 + 5 = 7"], level="char")
    >>> logger = SampleLogger("logs/run", tokenizer=tok, prompts=["3 + 4 =", "2 + 5 ="],
    ...                       references=["7", "7"], every_n_epochs=1)
    """

    def __init__(self, logdir, tokenizer, prompts=None, references=None, every_n_steps=None,
                 every_n_epochs=1, max_new_tokens=None, sampler="greedy", reward_fn=None,
                 seed=0):
        super().__init__()
        if isinstance(prompts, str) or isinstance(references, str):
            raise TypeError("prompts and references must be lists of strings")
        if references is not None and prompts is None:
            raise ValueError("references need prompts (one reference per prompt)")
        if references is not None and len(references) != len(prompts):
            raise ValueError(f"got {len(prompts)} prompts but {len(references)} references")
        if prompts is not None and not prompts:
            raise ValueError("prompts is empty")
        for name, value in (("every_n_steps", every_n_steps),
                            ("every_n_epochs", every_n_epochs)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive int or None, got {value!r}")
        self.logdir = os.fspath(logdir)
        self.tokenizer = tokenizer
        self.prompts = None if prompts is None else list(prompts)
        self.references = None if references is None else list(references)
        self.every_n_steps = every_n_steps
        self.every_n_epochs = every_n_epochs
        self.max_new_tokens = max_new_tokens
        self.sampler = sampler
        self.reward_fn = reward_fn
        self.seed = seed
        # Conversations (message lists) are rendered with the tokenizer's chat template.
        self._prompt_ids = None if prompts is None else [
            tfpg_data.encode_prompt(prompt, tokenizer) for prompt in self.prompts]
        self._step = 0
        self._writer = None
        self._reward_warned = False

    @property
    def sample_dir(self):
        """Where the markdown and JSONL files go: `logdir/samples`."""
        return os.path.join(self.logdir, "samples")

    def on_train_begin(self, logs=None):
        if _is_chief(self.model) and self._writer is None:
            self._writer = tf.summary.create_file_writer(self.sample_dir)

    def on_train_batch_end(self, batch, logs=None):
        super().on_train_batch_end(batch, logs)
        if self.every_n_steps and self._step % self.every_n_steps == 0:
            self.log_samples(tb_step=self._step, name=f"step_{self._step:08d}",
                             title=f"step {self._step}")

    def on_epoch_end(self, epoch, logs=None):
        if (not self.every_n_steps and self.every_n_epochs
                and (epoch + 1) % self.every_n_epochs == 0):
            self.log_samples(tb_step=self._step, name=f"epoch_{epoch + 1:04d}",
                             title=f"epoch {epoch + 1} (step {self._step})", epoch=epoch + 1)

    def log_samples(self, tb_step, name, title, epoch=None):
        """Generates, scores and writes one table; returns the sample records."""
        if self._writer is None:
            return []
        records = self._samples()
        for record in records:
            record.update(epoch=epoch, step=self._step)
        table = self._markdown(title, records)
        os.makedirs(self.sample_dir, exist_ok=True)
        with open(os.path.join(self.sample_dir, name + ".md"), "w", encoding="utf-8") as f:
            f.write(table)
        with open(os.path.join(self.sample_dir, "samples.jsonl"), "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        with self._writer.as_default():
            tf.summary.text("samples", table, step=tb_step)
        self._writer.flush()
        return records

    def _default_prompt_ids(self):
        rollout = getattr(self.model, "last_rollout", None)
        if isinstance(rollout, collections.abc.Mapping) and rollout.get("prompt_ids") is not None:
            rows = []
            ids = _numpy(rollout["prompt_ids"]).tolist()
            masks = (_numpy(rollout["prompt_mask"]).tolist() if "prompt_mask" in rollout
                     else [[i != 0 for i in row] for row in ids])
            for row, mask in zip(ids, masks):
                row = [i for i, real in zip(row, mask) if real]
                if row and row not in rows:
                    rows.append(row)
                if len(rows) == 4:
                    break
            if rows:
                return rows
        return [self.tokenizer.encode("")]

    def _samples(self):
        model = self.model
        episodes = getattr(model, "last_episodes", None)
        if getattr(model, "env", None) is not None and episodes is not None:
            # Multi-turn trainers: whole episodes of the last training batch (turns
            # and env replies), which carry the env's columns a prompt list lacks.
            return episodes.records(self.tokenizer)
        if self._prompt_ids is None:
            self._prompt_ids = self._default_prompt_ids()
        policy = _policy_of(model)
        prompt_ids, prompt_mask = tfpg_data.pad_ids(self._prompt_ids, "left",
                                                    policy.pad_id)
        prompt_ids = tf.constant(prompt_ids)
        sampling = {} if self.sampler == "greedy" else {
            "temperature": getattr(model, "temperature", 1.0),
            "top_k": getattr(model, "top_k", None), "top_p": getattr(model, "top_p", None)}
        out = generate(policy, prompt_ids, prompt_mask=prompt_mask,
                       max_new_tokens=self.max_new_tokens or getattr(model, "max_new_tokens", 32),
                       sampler=self.sampler,
                       eos_id=getattr(model, "eos_id", self.tokenizer.eos_id),
                       seed=self.seed, suppress_ids=getattr(model, "suppress_ids", None),
                       **sampling)
        rewards = self._rewards(prompt_ids, out)
        completions = self.tokenizer.decode(out.token_ids.numpy())
        prompts = self.prompts or self.tokenizer.decode(self._prompt_ids)
        return [{"prompt": prompts[i], "completion": completions[i],
                 "reward": None if rewards is None else float(rewards[i]),
                 "reference": None if self.references is None else self.references[i]}
                for i in range(len(prompts))]

    def _rewards(self, prompt_ids, out):
        reward_fn = self.reward_fn or getattr(self.model, "reward_fn", None)
        if reward_fn is None:
            return None
        batch = {"prompt": prompt_ids}
        if self.prompts and tfpg_data.is_conversation(self.prompts[0]):
            # As prompt_dataset gives them: the reward reads the conversations.
            batch[tfpg_data.MESSAGES_COLUMN] = tf.constant(
                [json.dumps(p, ensure_ascii=False) for p in self.prompts])
        if self.references is not None:
            batch["reference"] = tf.constant(tfpg_data.pad_ids(
                self.tokenizer.encode(self.references, add_bos=False), "right",
                min_width=1)[0])
        try:
            # Within the trainer's reward_timeout: a hung reward must not hang `fit`.
            rewards = _numpy(call_reward(
                reward_fn, prompt_ids, out.token_ids, out.mask, batch,
                getattr(self.model, "on_invalid_reward", "raise"),
                getattr(self.model, "reward_timeout", None)))
            return rewards.reshape(len(self._prompt_ids))
        except Exception as e:  # a logging callback must not end the training run
            if not self._reward_warned:
                warnings.warn(f"SampleLogger: the reward failed on the evaluation prompts, "
                              f"logging samples without rewards ({type(e).__name__}: {e})")
                self._reward_warned = True
            return None

    def _markdown(self, title, records):
        columns = ["prompt", "completion"]
        if any(r["reward"] is not None for r in records):
            columns.append("reward")
        if self.references is not None:
            columns.append("reference")
        lines = [f"**{title}**", "", "| " + " | ".join(columns) + " |",
                 "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(_markdown_cell(r[c]) for c in columns) + " |"
                  for r in records]
        return "\n".join(lines) + "\n"
