"""Keras callbacks for policy-gradient runs: reward logs, sample tables, SavedModel exports.

* `RewardLogger` writes the trainer's `fit` logs (reward, reward_std, kl, entropy, ...)
  to a CSV file and to TensorBoard scalars (every N steps or per epoch), plus
  histograms of the last rollout's rewards and advantages.
* `LanguageModelLogger` does the same for pre-training: loss and perplexity.
* `SampleLogger` completes a fixed list of prompts every N epochs (or steps) and
  writes prompt | completion | reward | reference tables to TensorBoard (text
  plugin) and to markdown / JSONL files.
* `SavedModelExport` exports the policy with `tfpg.export_saved_model` at epoch end,
  atomically, optionally only when a monitored log improves.

They work with any `keras.Model` trainer that has a `policy` attribute (the
`tfpg.algorithms` trainers) and read optional trainer attributes when present
(`last_rollout`, `reward_fn`, `max_new_tokens`, `temperature`, `eos_id`, ...).
Under a multi-worker strategy only the chief writes files.

Example:
>>> agent.fit(dataset, epochs=5, callbacks=[  # doctest: +SKIP
...     tfpg.callbacks.RewardLogger(csv_path="logs/run/rewards.csv", logdir="logs/run"),
...     tfpg.callbacks.SampleLogger("logs/run", tokenizer=tok, prompts=["3 + 4 ="]),
...     tfpg.callbacks.SavedModelExport("saved_models/run", tokenizer=tok)])
"""

from tfpg.callbacks.reward_logger import LanguageModelLogger, RewardLogger
from tfpg.callbacks.sample_logger import SampleLogger
from tfpg.callbacks.saved_model_export import SavedModelExport

__all__ = ["RewardLogger", "LanguageModelLogger", "SampleLogger", "SavedModelExport"]
