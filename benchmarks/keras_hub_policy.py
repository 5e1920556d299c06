"""KerasHub GPT-2 as a tfpg policy: generation vs `CausalLM.generate`, train-step speed.

One random GPT-2 (vocabulary 8192, width 256, 2 layers x 4 heads, feed-forward 1024;
`--width`, `--layers` to change), in one process, interleaved round-robin with a
dense-matmul peak:

* generation, batch 32 x 32 new tokens after an 8-token prompt, full-softmax sampling:
  `tfpg.generate(KerasHubPolicy)` (plain graph and XLA) against KerasHub's own
  `CausalLM.generate` (compiled with `jit_compile` False and True, the "random"
  sampler), tokens/s and tfpg / KerasHub in the faster mode of each;
* GRPO train steps (group 4 x 8 prompts, 16 new tokens): full fine-tuning and LoRA
  rank 8, samples/s and the trainable parameter count, decode loop plain and XLA.

    python benchmarks/keras_hub_policy.py            # about 3 minutes on 2 idle cores
"""

import argparse
import os
import sys
import time

import keras
import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

import tfpg  # noqa: E402

VOCAB = 8192
PROMPT = 8


def causal_lm(width, layers, jit_compile):
    import keras_hub
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=VOCAB, num_layers=layers, num_heads=4, hidden_dim=width,
        intermediate_dim=4 * width, dropout=0.0, max_sequence_length=128)
    model = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    model.compile(sampler="random", jit_compile=jit_compile)
    return model


def generation(args, timer):
    batch, new = 32, 32
    prompt = np.random.default_rng(0).integers(0, VOCAB, [batch, PROMPT]).astype(np.int32)
    mask = np.ones_like(prompt)
    plain_lm, xla_lm = causal_lm(args.width, args.layers, False), causal_lm(
        args.width, args.layers, True)
    xla_lm.set_weights(plain_lm.get_weights())
    policy = tfpg.KerasHubPolicy(plain_lm, eos_id=None)
    ids = np.zeros([batch, PROMPT + new], np.int32)
    ids[:, :PROMPT] = prompt
    # KerasHub's generate continues where the padding mask ends (right padding).
    real = np.zeros_like(ids, bool)
    real[:, :PROMPT] = True
    inputs = {"token_ids": tf.constant(ids), "padding_mask": tf.constant(real)}
    fns = {
        "tfpg": lambda: tfpg.generate(policy, prompt, new, prompt_mask=mask, eos_id=None,
                                      seed=0, jit_compile=False).token_ids,
        "tfpg XLA": lambda: tfpg.generate(policy, prompt, new, prompt_mask=mask,
                                          eos_id=None, seed=0, jit_compile=True).token_ids,
        "KerasHub": lambda: plain_lm.generate(inputs, stop_token_ids=None)["token_ids"],
        "KerasHub XLA": lambda: xla_lm.generate(inputs, stop_token_ids=None)["token_ids"],
    }
    times, _ = timer.run(fns, args.repeats)
    rows = [{"name": name, "tokens_per_s": batch * new / min(seconds),
             "median_s": float(np.median(seconds))} for name, seconds in times.items()]
    best = {name: batch * new / min(seconds) for name, seconds in times.items()}
    ratio = max(best["tfpg"], best["tfpg XLA"]) / max(best["KerasHub"], best["KerasHub XLA"])
    return rows, ratio


def training(args, timer):
    rows = []
    fns = {}
    agents = {}
    for name, rank in (("full", None), ("LoRA r=8", 8)):
        for jit in (False, True):
            policy = tfpg.KerasHubPolicy(causal_lm(args.width, args.layers, False),
                                         lora_rank=rank, eos_id=None)
            prompts = np.random.default_rng(1).integers(0, VOCAB, [8, PROMPT]).astype(np.int32)
            data = iter(tf.data.Dataset.from_tensors(
                {"prompt": prompts, "prompt_mask": np.ones_like(prompts)}).repeat())
            reward = lambda p, c, m, b: tf.reduce_mean(tf.cast(c < VOCAB // 2, tf.float32), 1)
            agent = tfpg.algorithms.GRPO(policy, reward_fn=reward, group_size=4,
                                         max_new_tokens=16, kl_coef=0.04)
            agent.compile(optimizer=keras.optimizers.Adam(1e-4), jit_compile="auto")
            agent.jit_decode = jit              # the decode loop plain or compiled
            agent.make_train_function()
            step = agent.train_function
            label = f"{name}{' XLA decode' if jit else ''}"
            fns[label] = (lambda step=step, data=data: step(data))
            agents[label] = sum(int(np.prod(v.shape)) for v in policy.trainable_variables)
    times, _ = timer.run(fns, args.repeats)
    for name, seconds in times.items():
        rows.append({"name": name, "samples_per_s": 32 / min(seconds),
                     "median_s": float(np.median(seconds)), "trainable": agents[name]})
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default="benchmarks/results/keras_hub_policy.json")
    args = parser.parse_args()
    started = time.perf_counter()
    timer = common.Timer()
    generation_rows, ratio = generation(args, timer)
    print(f"generation, batch 32 x 32 new tokens (GPT-2 width {args.width}, "
          f"{args.layers} layers, vocabulary {VOCAB}):")
    common.print_table([("", "name", None), ("tokens/s", "tokens_per_s", "{:.0f}"),
                        ("median s", "median_s", "{:.3f}")], generation_rows)
    print(f"tfpg / KerasHub, each in its faster mode: {ratio:.2f}x")
    training_rows = training(args, timer)
    print("GRPO train step (32 samples x 16 new tokens):")
    common.print_table([("", "name", None), ("samples/s", "samples_per_s", "{:.1f}"),
                        ("median s", "median_s", "{:.2f}"),
                        ("trainable", "trainable", "{:,}")], training_rows)
    common.write_json(args.output, {
        "environment": common.environment(), "width": args.width, "layers": args.layers,
        "generation": generation_rows, "tfpg_over_kerashub": ratio,
        "training": training_rows, "seconds": time.perf_counter() - started})


if __name__ == "__main__":
    main()
