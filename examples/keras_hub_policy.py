"""A KerasHub GPT-2 as the policy: pre-train with KerasHub, fine-tune with tfpg GRPO.

The `arithmetic` task's teacher drops the carry in 70% of its carry examples. A small
GPT-2 (random init, a byte-pair vocabulary trained here on the teaching texts) is
pre-trained with KerasHub's own preprocessor and `fit`, written with
`save_to_preset`, and fine-tuned through `tfpg.KerasHubPolicy.from_preset` with GRPO on
the exact-match verifier: once training every weight, once LoRA adapters only (the KL
reference is then the same weights with the adapters off). Held-out exact match,
greedy decoding, before / after.

This GPT-2 learns the sums late: its loss sits near 1.02 for about 40 epochs (the
answer digits not yet aligned with the operands), then falls; 60 epochs at Adam 3e-3
reach the teacher's level (held-out exact match 0.03 after 40 epochs, 0.30 after 50,
0.38 after 60 on seed 0); 1e-2 does not learn at all in 40.

    python examples/keras_hub_policy.py [--epochs 6] [--pretrain-epochs 60] [--seed 0]
"""

import argparse
import json
import os
import tempfile
import time

import keras
import keras_hub
import numpy as np
import tensorflow as tf

import tfpg


def train_vocabulary(texts, vocabulary_size=258):
    """A GPT-2 style byte-level BPE (vocabulary, merges) trained on `texts`.

    The default size is the 256 bytes, `<|endoftext|>` and one merge (KerasHub needs
    at least one): more merges would join digits into tokens like "35", and a sum is
    easier to learn digit by digit.
    """
    from tokenizers import ByteLevelBPETokenizer
    trainer = ByteLevelBPETokenizer()       # starts from all 256 byte symbols, like GPT-2
    trainer.train_from_iterator(texts, vocab_size=vocabulary_size,
                                special_tokens=["<|endoftext|>"], show_progress=False)
    model = json.loads(trainer.to_str())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return model["vocab"], merges


def pretrain(task, preset, epochs, seed):
    vocabulary, merges = train_vocabulary(task.pretrain_texts)
    tokenizer = keras_hub.models.GPT2Tokenizer(vocabulary=vocabulary, merges=merges)
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=tokenizer.vocabulary_size(), num_layers=2, num_heads=4,
        hidden_dim=64, intermediate_dim=128, max_sequence_length=32)
    preprocessor = keras_hub.models.GPT2CausalLMPreprocessor(tokenizer, sequence_length=12)
    causal_lm = keras_hub.models.GPT2CausalLM(backbone, preprocessor)
    causal_lm.compile(optimizer=keras.optimizers.Adam(3e-3))
    # KerasHub's preprocessor runs once, cached: re-splitting the byte pairs of every
    # batch in every epoch took longer than this tiny model's training steps.
    windows = (tf.data.Dataset.from_tensor_slices(task.pretrain_texts).batch(256)
               .map(preprocessor).unbatch().cache())
    causal_lm.preprocessor = None           # the windows are preprocessed already
    causal_lm.fit(windows.shuffle(len(task.pretrain_texts), seed=seed).batch(64),
                  epochs=epochs, verbose=0, shuffle=False)     # the dataset shuffles
    causal_lm.preprocessor = preprocessor   # saved with the preset
    causal_lm.save_to_preset(preset)


def evaluate(policy, task):
    """Held-out exact match of greedy completions."""
    tok = policy.tokenizer
    completions = []
    for batch in tfpg.data.prompt_dataset(task.heldout.prompts, tok, batch_size=200):
        out = tfpg.generate(policy, batch["prompt"], prompt_mask=batch["prompt_mask"],
                            max_new_tokens=task.max_new_tokens, sampler="greedy")
        completions += tok.decode(out.token_ids)
    return task.evaluate(task.heldout.prompts, completions)["exact_match"]


def fine_tune(preset, task, lora_rank, epochs, seed):
    policy = tfpg.KerasHubPolicy.from_preset(preset, lora_rank=lora_rank)
    tok = policy.tokenizer
    before = evaluate(policy, task)
    agent = tfpg.algorithms.GRPO(policy, reward_fn=task.reward(tok), group_size=4,
                                 max_new_tokens=task.max_new_tokens, seed=seed)
    agent.compile(optimizer=keras.optimizers.Adam(1e-2 if lora_rank else 1e-3))
    data = tfpg.data.prompt_dataset(task.train.prompts, tok, references=task.train.references,
                                    batch_size=16, shuffle=True, seed=seed,
                                    drop_remainder=True)
    start = time.perf_counter()
    agent.fit(data.repeat().take(40), epochs=epochs, verbose=0)
    seconds = time.perf_counter() - start
    trainable = sum(int(np.prod(v.shape)) for v in policy.trainable_variables)
    return before, evaluate(policy, task), seconds, trainable


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--pretrain-epochs", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.perf_counter()
    task = tfpg.tasks.get_task("arithmetic", seed=args.seed)
    preset = os.path.join(tempfile.mkdtemp(), "gpt2_arithmetic")
    print(f"pre-training a GPT-2 with KerasHub on {len(task.pretrain_texts)} sums from a "
          f"carry-dropping teacher ({args.pretrain_epochs} epochs) ...", flush=True)
    pretrain(task, preset, args.pretrain_epochs, args.seed)
    print(f"pre-trained in {time.perf_counter() - started:.0f} s", flush=True)
    rows = []
    for name, rank in (("GRPO, full", None), ("GRPO, LoRA r=4", 4)):
        print(f"fine-tuning ({name}, {args.epochs} x 40 steps of 64 samples) ...", flush=True)
        rows.append((name, *fine_tune(preset, task, rank, args.epochs, args.seed)))
    print()
    print(f"held-out exact match ({len(task.heldout)} sums), greedy decoding:")
    print(f"{'':<18}{'before':>8}{'after':>8}{'seconds':>9}{'trainable':>11}")
    for name, before, after, seconds, trainable in rows:
        print(f"{name:<18}{before:>8.3f}{after:>8.3f}{seconds:>9.0f}{trainable:>11,}")
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
