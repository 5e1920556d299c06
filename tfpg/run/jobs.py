"""The data side of a run (`Job`): what to learn from, what to reward, how to evaluate.

`make_job(config)` reads a bundled task (`tfpg.tasks`) or the user's `.tsv` /
`.jsonl` / `.txt` file, builds its tokenizer, resolves `--reward` and applies the
prompt length limit. Before any training it also refuses what cannot work: a
decode that would not fit in memory (`tfpg.guards.bounds`), a prompt line far longer than
`--max-prompt-length` (cut or refused as it is read, never tokenized whole) and a
reward that returns something other than numbers (`check_job_reward`).
"""

import dataclasses
import functools
import importlib
import inspect

from tfpg import data as tfpg_data
from tfpg import rewards
from tfpg.guards import bounds
from tfpg.hf.chat_template import is_conversation
from tfpg.options import UsageError
from tfpg.run.config import (POLICY_MAX_LENGTH, TASK_FINETUNE_EPOCHS, check_reward_spec,
                             read_chat_template, read_train_file)
from tfpg.run.evaluation import reference_metrics
from tfpg.tasks import EpisodeTask, get_task
from tfpg.text.tokenizer import Tokenizer


@dataclasses.dataclass
class Job:
    """The data side of a run: what to learn from, what to reward, how to evaluate."""

    name: str
    pretrain_texts: list
    train: object                   # a tasks.Split
    heldout: object                 # a tasks.Split
    tokenizer: Tokenizer
    reward_fn: object
    evaluate: object                # (prompts, completions) -> dict
    primary_metric: str
    max_new_tokens: int
    pretrain_epochs: int
    finetune_epochs: int
    max_prompt_length: int = None   # tokens, BOS included; None: no limit
    truncate: str = "error"         # "error", "left" or "right"
    kl_coef: float = None           # the task's default kl_coef; None: the algorithm's
    episodes: object = None         # a multi-turn task (tfpg.tasks.EpisodeTask): its env
    sampled_metrics: bool = False   # also evaluate sampled completions ("sampled_" keys)
    conversational: bool = False    # prompts are message lists, rendered with the
                                    # tokenizer's chat template (which the export keeps)
    on_invalid_reward: str = "raise"  # how evaluations treat a failing Python reward
    reward_timeout: float = None    # seconds a Python reward may take; None: no limit


def load_reward(spec, tokenizer, task_reward):
    """The reward named by `--reward`: a built-in name, `module:function`, or the task's."""
    if spec is None:
        return task_reward
    # EOS and pad come from the run's tokenizer (a KerasHub model's are not 2 and 0).
    eos_id, pad_id = tokenizer.eos_id, tokenizer.pad_id
    if spec == "bleu":
        return rewards.BLEU(eos_id=eos_id, pad_id=pad_id)
    if spec == "exact_match":
        return rewards.ExactMatch(answer_key="reference", eos_id=eos_id, pad_id=pad_id)
    if spec == "length":
        return rewards.Length(eos_id=eos_id)
    check_reward_spec(spec)
    module_name, _, attribute = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise UsageError(f"--reward {spec}: cannot import {module_name!r} ({error})") from None
    reward_fn = getattr(module, attribute, None)
    if not callable(reward_fn):
        raise UsageError(f"--reward {spec}: {module_name} has no callable {attribute!r}")
    return _named_reward(reward_fn, spec)


def _named_reward(reward_fn, spec):
    """A plain function reward whose exceptions (raised while `fit` traces the step)
    name the reward; reward objects (`PythonReward`, `WeightedSum`) report their own."""
    if not inspect.isfunction(reward_fn):
        return reward_fn

    @functools.wraps(reward_fn)
    def reward(*args):
        try:
            return reward_fn(*args)
        except Exception as error:  # noqa: BLE001 - any failure of user code
            raise UsageError(f"reward {spec} failed: {type(error).__name__}: "
                             f"{error}") from error

    return reward


def use_chat_template(config, tokenizer):
    """Sets `--chat-template` on the run's tokenizer (with the model's special
    tokens), which its checkpoint and export then keep."""
    if config.chat_template is not None:
        tokenizer.chat_template = read_chat_template(config.chat_template,
                                                     tokenizer.template_special_tokens())
    return tokenizer


def _conversation_texts(config, prompts, tokenizer):
    """The prompts of a conversational file rendered with the run's chat template
    (--chat-template, else the --model checkpoint's); a one-line UsageError without
    one. A new tokenizer (no --model) is then made from these texts."""
    template = (tokenizer.chat_template if tokenizer is not None else
                None if config.chat_template is None else
                read_chat_template(config.chat_template))
    if template is None:
        raise UsageError(f"{config.train_file}: conversational prompts need a chat template "
                         f"and {'the model has' if tokenizer is not None else 'there is'} "
                         "none; give --chat-template F.jinja")
    try:
        return [template.render(p, add_generation_prompt=True) for p in prompts]
    except ValueError as error:
        raise UsageError(f"{config.train_file}: {error}") from None


def _file_job(config, tokenizer=None):
    from tfpg.tasks.base import Split
    columns = read_train_file(config)
    prompts = columns.pop("prompt")
    references = columns.pop("reference", None)
    texts = list(prompts)
    conversational = bool(prompts) and is_conversation(prompts[0])
    if conversational:
        if tokenizer is not None:
            use_chat_template(config, tokenizer)
        texts = _conversation_texts(config, prompts, tokenizer)
    first = [r if isinstance(r, str) else r[0] for r in references] if references else None
    pretrain_texts = [f"{p} {r}" for p, r in zip(texts, first)] if first else texts
    if tokenizer is None:
        tokenizer = use_chat_template(config, Tokenizer.from_texts(pretrain_texts + [
            r for refs in (references or [])
            for r in ([refs] if isinstance(refs, str) else refs)]))
    cut = max(1, len(prompts) // 10)
    references = references or [""] * len(prompts)
    heldout = Split(prompts[:cut], references[:cut], {k: v[:cut] for k, v in columns.items()})
    train = Split(prompts[cut:] or prompts, references[cut:] or references,
                  {k: (v[cut:] or v) for k, v in columns.items()})

    def evaluate(prompts, completions):
        return reference_metrics(completions, heldout.references)

    return Job(config.run_name, pretrain_texts, train, heldout, tokenizer,
               load_reward(config.reward or "bleu", tokenizer, None), evaluate, "bleu",
               config.max_new_tokens or 32,
               10 if config.pretrain_epochs is None else config.pretrain_epochs,
               3 if config.epochs is None else config.epochs, conversational=conversational)


def make_job(config, tokenizer=None):
    """The job of `config`. `tokenizer`: that of a model the run starts from (`--model`),
    which then encodes the data instead of a tokenizer made for it; such a model is
    pre-trained only when `--pretrain-epochs` asks."""
    if config.train_file is not None:
        job = _file_job(config, tokenizer)
    else:
        task = get_task(config.task, seed=config.seed)
        tokenizer = tokenizer or task.tokenizer()
        job = Job(config.task, task.pretrain_texts, task.train, task.heldout, tokenizer,
                  load_reward(config.reward, tokenizer, task.reward(tokenizer)),
                  lambda prompts, completions: task.evaluate(prompts, completions, "heldout"),
                  task.primary_metric, config.max_new_tokens or task.max_new_tokens,
                  task.pretrain_epochs if config.pretrain_epochs is None
                  else config.pretrain_epochs,
                  TASK_FINETUNE_EPOCHS[config.task] if config.epochs is None else config.epochs)
        job.kl_coef = getattr(task, "kl_coef", None)
        job.sampled_metrics = bool(getattr(task, "sampled_metrics", False))
        if isinstance(task, EpisodeTask):
            if config.reward is not None or config.reward_model is not None:
                raise UsageError(f"the {config.task} task is scored by its environment: "
                                 "drop --reward / --reward-model")
            if config.algorithm == "scst":
                raise UsageError(f"scst does not run the {config.task} task's multi-turn "
                                 "episodes (its baseline is a single-turn greedy decode)")
            job.episodes = task
        if getattr(task, "needs_reward_model", False) and config.reward_model is None \
                and config.reward is None:
            raise UsageError(f"the {config.task} task trains against a learned reward: run "
                             f"`tfpg train-reward --task {config.task} --output DIR` first, "
                             "then give --reward-model DIR")
    if config.chat_template is not None and not job.conversational:
        raise UsageError("--chat-template renders conversational prompts (a .jsonl whose "
                         "\"prompt\" is a list of {\"role\", \"content\"} messages); this "
                         "run's prompts are strings")
    if config.reward_model is not None:
        from tfpg.run.reward_pipeline import load_reward_model
        job.reward_fn = load_reward_model(config.reward_model, job.tokenizer)
    if config.model is not None and config.pretrain_epochs is None:
        job.pretrain_epochs = 0
    job.max_prompt_length = config.max_prompt_length
    if job.max_prompt_length is None and config.backbone == "transformer" \
            and config.model is None:
        # Position ids must stay inside the Transformer's table.
        job.max_prompt_length = POLICY_MAX_LENGTH - job.max_new_tokens
        if job.max_prompt_length < 2:
            raise UsageError(f"--max-new-tokens {job.max_new_tokens} leaves no room for a "
                             f"prompt in the Transformer's {POLICY_MAX_LENGTH} positions")
    job.truncate = config.truncate_prompts
    job.on_invalid_reward = config.on_invalid_reward
    job.reward_timeout = config.reward_timeout
    _check_decode_memory(config, job)
    check_job_reward(job)
    return job


def _check_decode_memory(config, job):
    """Refuses, before anything is allocated, a fine-tuning decode whose buffers
    (and a new Transformer's KV cache) would not fit (`tfpg.guards.bounds`); the trainer
    checks the policy's own cache again when its step is traced."""
    rows = config.batch_size * (max(2, config.group_size)
                                if config.algorithm in ("rloo", "grpo") else 1)
    cache = 0
    if config.backbone == "transformer" and config.model is None:
        # Keys and values of every layer (float32), and the key mask (bool).
        cache = 2 * config.num_layers * config.embedding_dim * 4 + 1
    try:
        bounds.check_decode_memory(rows, job.max_prompt_length or 1, job.max_new_tokens,
                                   cache, job.tokenizer.vocabulary_size,
                                   name="--max-new-tokens")
    except ValueError as error:
        raise UsageError(str(error)) from None


# Completion tokens of the batch `check_job_reward` scores.
_PROBE_TOKENS = 16


def check_job_reward(job):
    """Scores two training prompts (with their references as the completions) once,
    before any training, and raises UsageError when the reward returns something
    that is not a batch of numbers (None, a str, a string tensor, the wrong shape),
    naming the reward and what it returned; with --on-invalid-reward raise also
    when it does not return within --reward-timeout. Whatever else goes wrong on
    this batch is left to the training step (see `tfpg.rewards.check_reward`)."""
    count = min(2, len(job.train))
    if job.episodes is not None or count == 0:
        return          # the task's env gives the rewards / nothing to score
    import tensorflow as tf
    references = list(job.train.references[:count])
    batch = next(iter(tfpg_data.prompt_dataset(
        list(job.train.prompts[:count]), job.tokenizer, references=references,
        extras={k: v[:count] for k, v in job.train.extras.items()} or None,
        batch_size=count, max_prompt_length=job.max_prompt_length,
        truncate="error" if job.max_prompt_length is None else "left")))
    length = min(job.max_new_tokens, _PROBE_TOKENS)
    rows = [(ids + [job.tokenizer.eos_id])[:length] for ids in job.tokenizer.encode(
        [r if isinstance(r, str) else (r[0] if r else "") for r in references],
        add_bos=False)]
    pad_id = getattr(job.tokenizer, "pad_id", 0)
    ids = [row + [pad_id] * (length - len(row)) for row in rows]
    mask = [[1.0] * len(row) + [0.0] * (length - len(row)) for row in rows]
    try:
        rewards.check_reward(job.reward_fn, batch["prompt"], tf.constant(ids, tf.int32),
                             tf.constant(mask, tf.float32), batch, job.on_invalid_reward,
                             job.reward_timeout)
    except rewards.InvalidRewardError as error:
        raise UsageError(str(error)) from None


def check_prompt_lengths(job, warn):
    """Applies the prompt length limit: a UsageError naming the first over-long
    prompt, or (with `truncate` "left" / "right") a warning counting them."""
    limit = job.max_prompt_length
    if limit is None:
        return
    for split_name, split in (("training", job.train), ("held-out", job.heldout)):
        lengths = [len(tfpg_data.encode_prompt(p, job.tokenizer)) for p in split.prompts]
        long = [i for i, n in enumerate(lengths) if n > limit]
        if not long:
            continue
        if job.truncate == "error":
            first = long[0]
            raise UsageError(
                f"{split_name} prompt {first} ({split.prompts[first][:40]!r}) has "
                f"{lengths[first]} tokens, more than --max-prompt-length {limit} (BOS "
                "included); shorten it or pass --truncate-prompts left|right")
        warn(f"{len(long)} {split_name} prompt(s) longer than {limit} tokens were "
             f"truncated, keeping their {job.truncate} part")
