"""tfpg GRPO on a KerasHub GPT-2 against TRL's `GRPOTrainer` on a Hugging Face GPT-2.

Optional: without torch, transformers or trl importable it prints a skip line and exits
0. Both sides get the same random GPT-2 architecture (2 layers x 2 heads, width 64,
feed-forward 256, tied embeddings, no dropout, float32, CPU), a character-level
vocabulary built here (no downloads), the same batch (8 prompts of 8 characters x
group 4 = 32 samples), 16 sampled tokens per completion (TRL forced to the full
length with `min_new_tokens`; tfpg with no EOS), temperature 1, no top-k / top-p, the
same reward (fraction of completion tokens that are the character "a"), no KL
(`beta=0` / `kl_coef=0`), one gradient step per generation, DAPO token-mean loss (TRL's
default `loss_type`), clip 0.2, gradient clipping 1.0, Adam lr 1e-4 (TRL: AdamW,
weight decay 0) on a constant schedule, no gradient checkpointing, no vLLM.

A step is everything from sampling to the optimizer update: TRL's is timed from
`on_step_begin` to `on_step_end` of its own training loop (generation with
`model.generate`, reward, loss, backward, `optimizer.step`); tfpg's is one call of the
compiled `train_function` (the decode loop under XLA, tfpg's CPU default for KerasHub
policies; a second tfpg row keeps the decode loop a plain `tf.function`, a third
compiles the whole step with XLA, `compile(jit_compile=True)`, which tfpg offers for
in-graph rewards such as this one). They
alternate in one process: a TRL callback runs one timed step of each tfpg trainer after
each TRL step, so load from other processes slows all alike.

Threads: by default each library gets one CPU thread (`--threads 1`, the same for
both). With both libraries' default pools in one process on the 2-core machine at load
4, TRL's steps once took 0.4-3.4 s (median 1.6 s, against 0.05 s for TRL alone), a
24x "win" for tfpg that was thread contention, not speed; a rerun at lower load did
not show it. Equal explicit counts (1 or 2) gave steady steps. `--threads 0` keeps the
defaults.

The first `--warmup` steps of each are dropped (tracing, XLA compiling); the medians of
the rest are reported, and tfpg / TRL.

    pip install torch trl                # a CPU torch wheel is enough
    python benchmarks/vs_trl.py          # about 30 s on 2 cores
"""

import argparse
import os
import sys
import tempfile
import time

try:
    import torch
    import transformers
    import trl
    import datasets
    import tokenizers
except ImportError as error:
    print(f"vs_trl: skipped ({error.name} is not importable; pip install torch trl)")
    sys.exit(0)

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def set_threads(argv):
    """`--threads N` (default 1; 0 = each library's default) caps both libraries' CPU
    threads; done here, before either runs an op (TensorFlow fixes its thread pools at
    the first op)."""
    n = int(argv[argv.index("--threads") + 1]) if "--threads" in argv else 1
    if n > 0:
        tf.config.threading.set_intra_op_parallelism_threads(n)
        tf.config.threading.set_inter_op_parallelism_threads(n)
        torch.set_num_threads(n)
        torch.set_num_interop_threads(n)


set_threads(sys.argv)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

import tfpg  # noqa: E402

CHARS = "abcdefghijklmnopqrstuvwxyz0123456789 .,!?+-=*/()"
EOS = "<|endoftext|>"
TARGET = "a"


def char_tokenizer():
    """A character-level `PreTrainedTokenizerFast`: one id per character, EOS (= pad)
    last, left padding, no special tokens added to prompts."""
    vocabulary = {char: i for i, char in enumerate(CHARS)}
    vocabulary[EOS] = len(vocabulary)
    model = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocabulary, unk_token=EOS))
    model.pre_tokenizer = tokenizers.pre_tokenizers.Split(
        tokenizers.Regex("."), behavior="isolated")
    model.decoder = tokenizers.decoders.Fuse()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=model, eos_token=EOS, pad_token=EOS, padding_side="left")


def prompts(count, length, seed):
    rng = np.random.default_rng(seed)
    return ["".join(rng.choice(list(CHARS[:36]), length)) for _ in range(count)]


def hf_model(args, tokenizer):
    torch.manual_seed(0)
    eos = tokenizer.eos_token_id
    config = transformers.GPT2Config(
        vocab_size=len(tokenizer), bos_token_id=eos, eos_token_id=eos, pad_token_id=eos, n_positions=args.context, n_embd=args.width,
        n_layer=args.layers, n_head=args.heads, n_inner=4 * args.width, resid_pdrop=0.0,
        embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=True)
    return transformers.GPT2LMHeadModel(config)


def kerashub_policy(args, vocab_size):
    import keras_hub
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=vocab_size, num_layers=args.layers, num_heads=args.heads,
        hidden_dim=args.width, intermediate_dim=4 * args.width, dropout=0.0,
        max_sequence_length=args.context)
    causal_lm = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    return tfpg.KerasHubPolicy(causal_lm, eos_id=None)


def tfpg_step(args, tokenizer, xla_decode, jit_compile="auto"):
    """A zero-argument callable running one compiled tfpg GRPO step, and the policy;
    `xla_decode` None keeps tfpg's default (`jit_compile="auto"`: the decode loop in
    XLA); `jit_compile=True` compiles the whole step (the reward is in-graph)."""
    policy = kerashub_policy(args, len(tokenizer))
    ids = np.array([tokenizer(p)["input_ids"] for p in prompts(args.prompts, args.prompt_length, 1)],
                   np.int32)                                        # [P, prompt_length]
    data = iter(tf.data.Dataset.from_tensors(
        {"prompt": ids, "prompt_mask": np.ones_like(ids)}).repeat())
    target = tokenizer.convert_tokens_to_ids(TARGET)

    def reward(prompt_ids, completion_ids, completion_mask, batch):
        hits = tf.cast(completion_ids == target, tf.float32) * completion_mask
        return tf.reduce_sum(hits, 1) / tf.maximum(tf.reduce_sum(completion_mask, 1), 1.0)

    agent = tfpg.algorithms.GRPO(policy, reward_fn=reward, group_size=args.group,
                                 max_new_tokens=args.new_tokens, kl_coef=0.0,
                                 loss_type="dapo", clip_epsilon=0.2, max_grad_norm=1.0,
                                 seed=0)
    agent.compile(optimizer=keras.optimizers.Adam(args.learning_rate), jit_compile=jit_compile)
    if xla_decode is not None:
        agent.jit_decode = xla_decode
    agent.make_train_function()
    step = agent.train_function
    return lambda: step(data), policy


class Alternate(transformers.TrainerCallback):
    """Times each TRL step, then runs and times one step of each of `others` (name ->
    zero-argument callable) outside it."""

    def __init__(self, others):
        self.others = others
        self.times = {name: [] for name in ("TRL", *others)}

    def on_step_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times["TRL"].append(time.perf_counter() - self.start)
        for name, fn in self.others.items():
            start = time.perf_counter()
            common._block(fn())
            self.times[name].append(time.perf_counter() - start)


def trl_reward(completions, completion_ids, **kwargs):
    target = trl_reward.target
    return [sum(t == target for t in ids) / max(len(ids), 1) for ids in completion_ids]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--context", type=int, default=64)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--prompt-length", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--steps", type=int, default=20, help="timed steps of each")
    parser.add_argument("--warmup", type=int, default=3, help="untimed first steps of each")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads of each library, 0 = their own defaults (read "
                             "before argparse, by set_threads)")
    parser.add_argument("--output", default="benchmarks/results/vs_trl.json")
    args = parser.parse_args()
    started = time.perf_counter()
    tokenizer = char_tokenizer()
    trl_reward.target = tokenizer.convert_tokens_to_ids(TARGET)
    steps = {}
    steps["tfpg"], policy = tfpg_step(args, tokenizer, None)
    steps["tfpg, plain decode"], _ = tfpg_step(args, tokenizer, False)
    steps["tfpg, jit_compile=True"], _ = tfpg_step(args, tokenizer, None, jit_compile=True)
    model = hf_model(args, tokenizer)
    samples = args.prompts * args.group
    total = args.warmup + args.steps
    dataset = datasets.Dataset.from_dict(
        {"prompt": prompts(args.prompts * total, args.prompt_length, 1)})
    with tempfile.TemporaryDirectory() as output_dir:
        config = trl.GRPOConfig(
            output_dir=output_dir, per_device_train_batch_size=samples,
            gradient_accumulation_steps=1, num_generations=args.group,
            max_completion_length=args.new_tokens, steps_per_generation=1,
            num_iterations=1, beta=0.0, loss_type="dapo", epsilon=0.2, max_grad_norm=1.0,
            learning_rate=args.learning_rate, lr_scheduler_type="constant",
            temperature=1.0, top_k=0, top_p=1.0, use_vllm=False, use_cpu=True, bf16=False,
            fp16=False, gradient_checkpointing=False, report_to=[], logging_steps=10 ** 6,
            save_strategy="no", max_steps=total, seed=0, shuffle_dataset=False,
            dataloader_num_workers=0, disable_tqdm=True,
            generation_kwargs={"min_new_tokens": args.new_tokens})
        callback = Alternate(steps)
        trainer = trl.GRPOTrainer(model=model, reward_funcs=trl_reward, args=config,
                                  train_dataset=dataset, processing_class=tokenizer,
                                  callbacks=[callback])
        trainer.train()
    times = {name: seconds[args.warmup:] for name, seconds in callback.times.items()}
    parameters = {"tfpg": int(sum(np.prod(v.shape) for v in policy.trainable_variables)),
                  "TRL": int(sum(p.numel() for p in model.parameters() if p.requires_grad))}
    rows = [{"name": name, "median_s": float(np.median(seconds)),
             "min_s": float(min(seconds)),
             "samples_per_s": samples / float(np.median(seconds)),
             "parameters": parameters[name.split(",")[0]]}
            for name, seconds in times.items()]
    medians = {row["name"]: row["median_s"] for row in rows}
    ratio = medians["tfpg"] / medians["TRL"]
    print(f"GRPO step, GPT-2 {args.layers} layers x {args.heads} heads, width {args.width}, "
          f"vocabulary {len(tokenizer)}: {args.prompts} prompts x group {args.group} = "
          f"{samples} samples, {args.prompt_length} + {args.new_tokens} tokens, "
          f"median of {args.steps} alternating steps:")
    common.print_table([("", "name", None), ("median s", "median_s", "{:.3f}"),
                        ("min s", "min_s", "{:.3f}"),
                        ("samples/s", "samples_per_s", "{:.1f}"),
                        ("parameters", "parameters", "{:,}")], rows)
    whole = medians["tfpg, jit_compile=True"] / medians["TRL"]
    print(f"tfpg / TRL step time (medians): {ratio:.3f} (TRL / tfpg {1 / ratio:.1f}x); "
          f"with the plain decode loop {medians['tfpg, plain decode'] / medians['TRL']:.3f}; "
          f"the whole step in XLA (jit_compile=True) {whole:.3f} (TRL / tfpg "
          f"{1 / whole:.1f}x)")
    common.write_json(args.output, {
        "environment": dict(common.environment(), torch=torch.__version__,
                            transformers=transformers.__version__, trl=trl.__version__,
                            torch_threads=torch.get_num_threads(),
                            tensorflow_threads=[
                                tf.config.threading.get_intra_op_parallelism_threads(),
                                tf.config.threading.get_inter_op_parallelism_threads()]),
        "config": vars(args), "vocabulary": len(tokenizer), "samples": samples,
        "rows": rows, "tfpg_over_trl": ratio, "tfpg_jit_compile_true_over_trl": whole,
        "times_s": times,
        "seconds": time.perf_counter() - started})


if __name__ == "__main__":
    main()
