"""The job behind `tfpg train-reward`: preference pairs in, a saved reward model out.

    tfpg train-reward --task preference --output saved_models/preference-rm
    tfpg train-reward --pairs pairs.jsonl --output saved_models/my-rm [--tokenizer tok.json]

Pairs come from the bundled `preference` task (its train pairs, its held-out pairs
for accuracy, and the annotator's ceiling) or from a JSONL file of
`{"prompt", "chosen", "rejected"}` lines (a tenth held out). The tokenizer is the
task's, the one given (the policy's, so the reward reads the policy's ids), or
one built from the file. Everything is checked before training, and the output
directory is written once, whole, by rename: bad input leaves nothing behind. The
run holds the writer lock of its output (`OUTPUT.lock`, `tfpg.guards.locking`) from just
before training: a second run on the same output exits 2 naming the first's PID.
`tfpg train --reward-model DIR` then fine-tunes against the saved model.
"""

import os

from tfpg.guards.locking import output_lock
from tfpg.options import UsageError
from tfpg.run.config import check_writable


def run_reward_training(output, task=None, pairs=None, tokenizer=None, seed=0, epochs=None,
                 batch_size=32, learning_rate=3e-3, backbone="lstm", embedding_dim=32,
                 hidden_dim=64, num_layers=1, margin=0.0, validation_split=0.1, verbose=0):
    """Trains and saves a Bradley-Terry reward model; returns a summary dict.

    Args:
        output: str. The reward model directory (refused if it holds anything but a
            previous reward model).
        task: str or None. A bundled task with preference pairs ("preference"); the
            default when `pairs` is None.
        pairs: str or None. Path of a JSONL pairs file.
        tokenizer: str or None. Path of a tokenizer JSON (`Tokenizer.save`); default:
            the task's, or one built from the pairs file (word level).
        seed: int. See `tfpg.rewards.train_preference_model`.
        epochs: int or None. See `tfpg.rewards.train_preference_model`. None: 4.
        batch_size: int. See `tfpg.rewards.train_preference_model`.
        learning_rate: float. See `tfpg.rewards.train_preference_model`.
        backbone: str. See `tfpg.rewards.train_preference_model`.
        embedding_dim: int. See `tfpg.rewards.train_preference_model`.
        hidden_dim: int. See `tfpg.rewards.train_preference_model`.
        num_layers: int. See `tfpg.rewards.train_preference_model`.
        margin: float. See `tfpg.rewards.train_preference_model`.
        validation_split: float. See `tfpg.rewards.train_preference_model`.
        verbose: int. See `tfpg.rewards.train_preference_model`.

    Returns:
        {"output", "source", "train_pairs", "heldout_pairs", "heldout_accuracy",
        "train_accuracy", "seconds"} plus "ceiling" and "gold_accuracy" for a task.
    """
    import time

    from tfpg.rewards.preference import read_preference_pairs, train_preference_model
    from tfpg.rewards.reward_model import check_replaceable
    from tfpg.tasks import get_task
    from tfpg.text.tokenizer import Tokenizer

    start = time.time()
    if output is None:
        raise UsageError("train-reward needs --output DIR")
    if task is not None and pairs is not None:
        raise UsageError("give --task or --pairs, not both")
    output = os.path.normpath(output)
    try:
        check_replaceable(output)
    except ValueError as error:
        raise UsageError(str(error)) from None
    check_writable(output)
    if epochs is not None and epochs < 1:
        raise UsageError("--epochs must be >= 1")

    heldout, summary = None, {}
    if pairs is None:
        name = task or "preference"
        try:
            job = get_task(name, seed=seed)
        except ValueError as error:
            raise UsageError(str(error)) from None
        if not hasattr(job, "preference_pairs"):
            raise UsageError(f"task {name!r} has no preference pairs (use --task "
                               "preference or --pairs F.jsonl)")
        train = job.preference_pairs("train")
        heldout = job.preference_pairs("heldout")
        default_tokenizer = job.tokenizer
        summary.update(source=f"task {name}", ceiling=job.pairwise_ceiling("heldout"),
                       gold_accuracy=job.gold_accuracy("heldout"))
    else:
        train = read_preference_pairs(pairs)
        summary.update(source=pairs)

        def default_tokenizer():
            return Tokenizer.from_texts(train["prompts"] + train["chosen"] + train["rejected"])
    if tokenizer is not None:
        try:
            tok = Tokenizer.load(tokenizer)
        except FileNotFoundError:
            raise UsageError(f"{tokenizer}: file not found") from None
    else:
        tok = default_tokenizer()

    # One writer per output: a second run on it is refused here, before it trains.
    with output_lock(output):
        model = train_preference_model(
            train["prompts"], train["chosen"], train["rejected"], tok, backbone=backbone,
            embedding_dim=embedding_dim, hidden_dim=hidden_dim, num_layers=num_layers,
            margin=margin, epochs=4 if epochs is None else epochs, batch_size=batch_size,
            learning_rate=learning_rate, validation_split=validation_split, heldout=heldout,
            seed=seed, verbose=verbose)
        model.metadata.update({key: summary[key] for key in ("ceiling", "gold_accuracy")
                               if key in summary})
        model.metadata["source"] = summary["source"]
        model.save(output)
    summary.update(output=output, train_pairs=model.metadata["train_pairs"],
                   heldout_pairs=model.metadata["heldout_pairs"],
                   heldout_accuracy=model.metadata.get("heldout_accuracy"),
                   train_accuracy=model.metadata["train_accuracy"],
                   seconds=round(time.time() - start, 1))
    return summary


def format_summary(summary):
    """The lines `tfpg train-reward` prints."""
    lines = [f"reward model trained on {summary['train_pairs']} pairs from {summary['source']}"]
    if summary.get("heldout_accuracy") is not None:
        line = (f"held-out pairwise accuracy {summary['heldout_accuracy']:.3f} on "
                f"{summary['heldout_pairs']} pairs")
        if "ceiling" in summary:
            line += (f" (annotator ceiling {summary['ceiling']:.3f}; the gold utility "
                     f"itself scores {summary['gold_accuracy']:.3f} on these labels)")
        lines.append(line)
    lines.append(f"saved to {summary['output']} in {summary['seconds']} s "
                 f"(use it with: tfpg train --reward-model {summary['output']})")
    return "\n".join(lines)


def load_reward_model(directory, tokenizer, trust_remote_code=False):
    """The saved reward model at `directory` as a reward for a policy using
    `tokenizer` (ids mapped in-graph when the vocabularies differ); one-line
    usage errors for anything that is not a reward model, or that fails the checks
    of `RewardModel.load` (manifest, ops; `trust_remote_code` as there)."""
    from tfpg.rewards.reward_model import RewardModel
    try:
        return RewardModel.load(directory, trust_remote_code).for_tokenizer(tokenizer)
    except (FileNotFoundError, ValueError) as error:
        raise UsageError(f"--reward-model: {error}") from None
