"""Generation throughput: tfpg vs the source documents' eager loop vs KerasHub.

For each backbone (LSTM, GRU, Transformer; a small LM: vocabulary 8192, width 512,
LSTM/GRU state 1024, Transformer 2 layers x 8 heads with feed-forward 2048), batch
size and completion length, in one process and interleaved round-robin:

* tfpg: `tfpg.generate` (one tf.function: prefill, then a tf.while_loop of cached
  single-token steps), sampling from the full softmax;
* eager: the loop the source documents write by hand, `logits = policy(state)` on
  the whole sequence at every step, `tf.random.categorical`, append (same model);
* kerashub: `keras_hub.models.GPT2CausalLM.generate` with the "random" sampler on a
  GPT-2 of the Transformer's size (same width, layers, heads, feed-forward, vocabulary;
  FLOPs per token equal) -- only with the optional `bench` extra installed;
* tfpg XLA: the same, `tfpg.generate(..., jit_compile=True)` (the decode graph
  compiled by XLA). The "tfpg" column is the plain graph; `jit_compile="auto"`
  picks the plain graph on CPU and XLA with a GPU (printed, and in the JSON).

Reported per row: tokens/s (new tokens, best run), ratios tfpg / eager and
tfpg / KerasHub, achieved matmul FLOP/s of tfpg and its fraction of the dense matmul
peak measured between the runs (MFU; FLOP formulas in benchmarks/common.py), and
XLA / no-XLA. A second table gives tokens/s at 32 vs 256 new tokens (cost per token
flat in position thanks to the cache; the eager loop is quadratic). Prints tables and
writes JSON.

The eager loop is quadratic in length and KerasHub's per-step cost grows with the
cache, so by default they run on part of the grid only (eager: batch 64, 32 tokens;
KerasHub: not at batch 256 x 128 tokens nor in the flatness table); `--full` runs
them everywhere (eager up to 32 tokens; `--eager-max-tokens 128` for more).

    python benchmarks/generation.py            # default grid (~5 min on 2 idle cores)
    python benchmarks/generation.py --quick    # batch 64, 32 tokens (~1.5 min)
    python benchmarks/generation.py --full     # every column everywhere (~20 min)
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
from tfpg.xla import resolve_jit_compile  # noqa: E402

VOCAB, WIDTH, PROMPT = 8192, 512, 8
MODELS = {
    "lstm": dict(backbone="lstm", embedding_dim=WIDTH, hidden_dim=1024),
    "gru": dict(backbone="gru", embedding_dim=WIDTH, hidden_dim=1024),
    "transformer": dict(backbone="transformer", embedding_dim=WIDTH, hidden_dim=2048,
                        num_layers=2, num_heads=8, max_length=512),
}


def model_config(backbone):
    config = {"vocab_size": VOCAB, "num_layers": 1, **MODELS[backbone]}
    return config


def make_policy(backbone):
    keras.utils.set_random_seed(0)
    policy = tfpg.PolicyNetwork(**model_config(backbone))
    policy.build()
    return policy


def eager_loop(policy, prompt_ids, new_tokens):
    """The seed documents' episode loop: full forward pass per sampled token."""
    sequence = prompt_ids
    for _ in range(new_tokens):
        logits = policy(sequence)[:, -1]
        action = tf.random.categorical(logits, 1, dtype=tf.int32)
        sequence = tf.concat([sequence, action], axis=1)
    return sequence[:, prompt_ids.shape[1]:]


def tfpg_fn(policy, prompt_ids, new_tokens, jit_compile=False):
    """`tfpg.generate`, the plain graph or (jit_compile=True) compiled by XLA."""
    return lambda: tfpg.generate(policy, prompt_ids, new_tokens, sampler="sample",
                                 eos_id=None, seed=0, jit_compile=jit_compile).token_ids


def kerashub_model():
    """A GPT-2 of the benchmark Transformer's size, or None without keras-hub."""
    try:
        import keras_hub
    except ImportError:
        return None
    config = model_config("transformer")
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=VOCAB, num_layers=config["num_layers"],
        num_heads=config["num_heads"], hidden_dim=config["embedding_dim"],
        intermediate_dim=config["hidden_dim"], dropout=0.0,
        max_sequence_length=config["max_length"])
    causal_lm = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    causal_lm.compile(sampler="random")      # full-softmax sampling, like tfpg's "sample"
    return causal_lm


def kerashub_fn(causal_lm, prompt_ids, new_tokens):
    batch = prompt_ids.shape[0]
    ids = np.zeros([batch, PROMPT + new_tokens], np.int32)
    ids[:, :PROMPT] = prompt_ids.numpy()
    mask = np.zeros_like(ids, bool)
    mask[:, :PROMPT] = True
    inputs = {"token_ids": tf.constant(ids), "padding_mask": tf.constant(mask)}
    return lambda: causal_lm.generate(inputs, stop_token_ids=None)["token_ids"]


def measure(timer, fns, repeats, warmups):
    """Round-robin timing; `repeats` and `warmups` are per name. Returns the times,
    the first-call (trace / compile + run) times and the peak FLOP/s of this round."""
    compile_s = {}
    for name, fn in fns.items():
        start = time.perf_counter()
        common._block(warmups.get(name, fn)())
        compile_s[name] = time.perf_counter() - start
    times = {name: [] for name in fns}
    first_peak = len(timer.peak_times)
    for round_index in range(max(repeats.values())):
        timer.peak()
        for name, fn in fns.items():
            if round_index < repeats[name]:
                start = time.perf_counter()
                common._block(fn())
                times[name].append(time.perf_counter() - start)
    timer.peak()
    peak = 2 * common.PEAK_SIZE ** 3 / min(timer.peak_times[first_peak:])
    return times, compile_s, peak


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=list(MODELS))
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[64, 256])
    parser.add_argument("--new-tokens", nargs="+", type=int, default=[32, 128])
    parser.add_argument("--repeats", type=int, default=2,
                        help="timed runs per cell, after one warm-up run")
    parser.add_argument("--eager-max-tokens", type=int, default=32,
                        help="run the (quadratic) eager loop up to this length")
    parser.add_argument("--eager-batch-sizes", nargs="+", type=int, default=[64])
    parser.add_argument("--eager-repeats", type=int, default=1)
    parser.add_argument("--kerashub-max-rows", type=int, default=256 * 32,
                        help="run KerasHub where batch x new tokens is at most this")
    parser.add_argument("--xla-new-tokens", nargs="+", type=int, default=[32, 128],
                        help="lengths at which the XLA variant is measured too")
    parser.add_argument("--flat-tokens", nargs="+", type=int, default=[32, 256])
    parser.add_argument("--flat-batch", type=int, default=64)
    parser.add_argument("--flat-kerashub", action="store_true")
    parser.add_argument("--no-kerashub", action="store_true")
    parser.add_argument("--quick", action="store_true",
                        help="batch 64, 32 new tokens, no flatness table")
    parser.add_argument("--full", action="store_true",
                        help="eager at every batch size, KerasHub everywhere")
    parser.add_argument("--output", default="benchmarks/results/generation.json")
    args = parser.parse_args()
    if args.quick:
        args.batch_sizes, args.new_tokens, args.flat_tokens = [64], [32], []
    if args.full:
        args.eager_batch_sizes = args.batch_sizes
        args.kerashub_max_rows = 10**9
        args.flat_kerashub = True

    timer = common.Timer()
    causal_lm = None if args.no_kerashub else kerashub_model()
    rows, flat_rows = [], []
    for backbone in args.backbones:
        policy = make_policy(backbone)
        config = model_config(backbone)
        for batch_size in args.batch_sizes:
            prompt_ids = tf.random.uniform([batch_size, PROMPT], 4, VOCAB, tf.int32, seed=1)
            for new_tokens in args.new_tokens:
                fns = {"tfpg": tfpg_fn(policy, prompt_ids, new_tokens)}
                repeats = {"tfpg": args.repeats}
                warmups = {}
                if (new_tokens <= args.eager_max_tokens
                        and batch_size in args.eager_batch_sizes):
                    fns["eager"] = lambda n=new_tokens: eager_loop(policy, prompt_ids, n)
                    warmups["eager"] = lambda: eager_loop(policy, prompt_ids, 2)
                    repeats["eager"] = args.eager_repeats
                if (causal_lm is not None and backbone == "transformer"
                        and batch_size * new_tokens <= args.kerashub_max_rows):
                    fns["kerashub"] = kerashub_fn(causal_lm, prompt_ids, new_tokens)
                    repeats["kerashub"] = args.repeats
                if new_tokens in args.xla_new_tokens:
                    fns["tfpg_xla"] = tfpg_fn(policy, prompt_ids, new_tokens, True)
                    repeats["tfpg_xla"] = args.repeats
                times, compile_s, peak = measure(timer, fns, repeats, warmups)
                tokens = batch_size * new_tokens
                flops = batch_size * common.generation_flops(config, PROMPT, new_tokens)
                row = {"backbone": backbone, "batch_size": batch_size,
                       "new_tokens": new_tokens,
                       "times": {name: common.summary(t) for name, t in times.items()},
                       "first_call_s": compile_s}
                for name, t in times.items():
                    row[f"{name}_tokens_per_s"] = tokens / min(t)
                best = min(times["tfpg"])
                for name in ("eager", "kerashub", "tfpg_xla"):
                    if name in times:
                        row[f"tfpg_over_{name}"] = min(times[name]) / best
                        row[f"tfpg_over_{name}_median"] = (
                            common.summary(times[name])["median_s"]
                            / common.summary(times["tfpg"])["median_s"])
                row["xla_over_tfpg"] = (1 / row["tfpg_over_tfpg_xla"]
                                        if "tfpg_over_tfpg_xla" in row else None)
                row["tfpg_gflops"] = flops / best / 1e9
                row["peak_gflops"] = peak / 1e9              # measured between these runs
                row["mfu"] = flops / best / peak
                if "tfpg_xla" in times:
                    row["xla_mfu"] = flops / min(times["tfpg_xla"]) / peak
                rows.append(row)
                print(f"{backbone} B={batch_size} N={new_tokens}: "
                      + ", ".join(f"{k} {v:.0f} tok/s" for k, v in row.items()
                                  if k.endswith("tokens_per_s"))
                      + f", MFU {row['mfu']:.2f}", flush=True)

        if args.flat_tokens and backbone in ("transformer", "lstm"):
            prompt_ids = tf.random.uniform([args.flat_batch, PROMPT], 4, VOCAB, tf.int32,
                                           seed=2)
            fns, repeats = {}, {}
            for n in args.flat_tokens:
                fns[f"tfpg_{n}"] = tfpg_fn(policy, prompt_ids, n)
                repeats[f"tfpg_{n}"] = args.repeats
                if causal_lm is not None and backbone == "transformer" and args.flat_kerashub:
                    fns[f"kerashub_{n}"] = kerashub_fn(causal_lm, prompt_ids, n)
                    repeats[f"kerashub_{n}"] = 1
            times, _, _ = measure(timer, fns, repeats, {})
            short, long = min(args.flat_tokens), max(args.flat_tokens)
            for impl in ("tfpg", "kerashub"):
                if f"{impl}_{short}" not in times:
                    continue
                rate = {n: args.flat_batch * n / min(times[f"{impl}_{n}"])
                        for n in args.flat_tokens}
                flat_rows.append({
                    "backbone": backbone, "implementation": impl,
                    "batch_size": args.flat_batch,
                    **{f"tokens_per_s_{n}": rate[n] for n in args.flat_tokens},
                    "long_over_short": rate[long] / rate[short],
                    "times": {n: common.summary(times[f"{impl}_{n}"])
                              for n in args.flat_tokens}})

    print(f"\nGeneration, tokens/s (best of {args.repeats}; eager best of "
          f"{args.eager_repeats}); MFU against the matmul peak measured between the "
          f"same runs (best overall {timer.peak_flops / 1e9:.0f} GFLOP/s)")
    common.print_table([
        ("backbone", "backbone", None), ("batch", "batch_size", None),
        ("new", "new_tokens", None), ("tfpg", "tfpg_tokens_per_s", "{:.0f}"),
        ("eager", "eager_tokens_per_s", "{:.0f}"),
        ("kerashub", "kerashub_tokens_per_s", "{:.0f}"),
        ("tfpg/eager", "tfpg_over_eager", "{:.1f}x"),
        ("tfpg/kerashub", "tfpg_over_kerashub", "{:.2f}x"),
        ("GFLOP/s", "tfpg_gflops", "{:.0f}"), ("peak", "peak_gflops", "{:.0f}"),
        ("MFU", "mfu", "{:.0%}"),
        ("xla tok/s", "tfpg_xla_tokens_per_s", "{:.0f}"),
        ("xla/no-xla", "xla_over_tfpg", "{:.2f}x")], rows)
    print(f'tfpg.generate(jit_compile="auto") on this device: '
          f'{"XLA" if resolve_jit_compile("auto") else "plain graph (the tfpg column)"}')
    if flat_rows:
        short, long = min(args.flat_tokens), max(args.flat_tokens)
        print(f"\nCost per token vs position: tokens/s at {short} and {long} new tokens, "
              f"batch {args.flat_batch}")
        common.print_table([
            ("backbone", "backbone", None), ("impl", "implementation", None),
            (f"tok/s@{short}", f"tokens_per_s_{short}", "{:.0f}"),
            (f"tok/s@{long}", f"tokens_per_s_{long}", "{:.0f}"),
            (f"{long}/{short}", "long_over_short", "{:.2f}")], flat_rows)
    common.write_json(args.output, {
        "models": {name: model_config(name) for name in args.backbones},
        "prompt_length": PROMPT, "environment": common.environment(),
        "peak_gflops": timer.peak_flops / 1e9,
        "peak_runs_s": timer.peak_times, "rows": rows, "flat": flat_rows,
        "kerashub": None if causal_lm is None else "GPT2CausalLM, sampler=random",
        "auto_jit_compile_on_this_device": resolve_jit_compile("auto"),
        "args": vars(args)})


if __name__ == "__main__":
    main()
