"""When tfpg compiles with XLA (`jit_compile`), decided once, here.

`tfpg.generate(jit_compile=...)` and `PolicyGradientTrainer.compile(jit_compile=...)`
take "auto" by default, which this module resolves per device type to the faster
choice:

* CPU: off. Measured on the 2-core CI machine (docs/performance.md;
  `benchmarks/generation.py`, `benchmarks/training.py`): XLA generation runs at
  0.90-1.09x the plain graph for LSTM / GRU; for the Transformer 0.97-1.12x at 32
  new tokens but 0.72-0.78x at 128 (XLA's cache update is not in place); a
  train step at 0.98-1.04x compiled whole and 0.99-1.00x with only the decode loop
  compiled, after 5-40 s of compiling. The plain graph's big matmuls already run at
  70-85 % of the machine's matmul peak: XLA has little left to gain there.
* CPU, KerasHub policies (`KerasHubPolicy`, whose `xla_on_cpu` is True): XLA for the
  decode loop. A KerasHub decoder step is many small ops (per-layer cache slices,
  masks, RoPE, norms) that the plain graph runs one by one; measured here
  (`tfpg.generate`, tiny random GPT-2, batch 32 x 32 new tokens, interleaved):
  3.8x at width 64 (9.7k -> 36.4k tok/s), 1.2x at width 256 (1.4k -> 1.7k tok/s).
* GPU / TPU: XLA for the decode loop (the rollout). A decode step is dozens of small
  kernels per token; XLA fuses them and removes the per-op launch cost, which
  dominates on an accelerator (KerasHub's `generate` and Keras' own "auto" make the
  same choice). No GPU was available to this project's benchmarks: this half of the
  default follows those libraries, not a measurement of ours.
* Under a multi-replica `tf.distribute` strategy: off, as Keras' "auto" does.

Only the decode loop, not the whole train step, is compiled by "auto": a step that
calls a Python reward (`PythonReward`, BLEU with backend="nltk") cannot be compiled,
and inside XLA the reward checks cannot raise (`on_invalid_reward="raise"` would act
as "zero"). `compile(jit_compile=True)` compiles the whole step for rewards that are
in-graph (see `tfpg.rewards.base`).
"""

import tensorflow as tf

JIT_CHOICES = ("auto", True, False)


def has_accelerator():
    """True when TensorFlow sees a GPU or TPU."""
    return any(device.device_type in ("GPU", "TPU")
               for device in tf.config.list_logical_devices())


def resolve_jit_compile(jit_compile, policy=None):
    """"auto" -> the faster choice for this machine's device type (and `policy`, a
    `tfpg.models.Policy`, by its `xla_on_cpu`: see the module docstring); bools pass
    through."""
    if jit_compile == "auto":
        strategy = tf.distribute.get_strategy()
        faster = has_accelerator() or (policy is not None and bool(policy.xla_on_cpu))
        return faster and strategy.num_replicas_in_sync == 1
    if jit_compile not in (True, False):
        raise ValueError(f"jit_compile must be 'auto', True or False, got {jit_compile!r}")
    return bool(jit_compile)


def in_xla_context():
    """True while tracing a function that XLA will compile (jit_compile=True), also
    inside functions it calls.

    `tf.function(jit_compile=True)` traces under an XLA control-flow context, which
    `tf.__internal__.get_enclosing_xla_context` (TensorFlow's exported API for
    Keras, no `tensorflow.python` import) finds in the graph or its outer graphs.
    """
    return tf.__internal__.get_enclosing_xla_context() is not None
