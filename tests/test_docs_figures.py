"""Every measured figure in README.md and docs/ is read from a file under
benchmarks/results/, so the text cannot go stale.

Each check below formats figures from one results file the way the text shows
them (tables whole, rebuilt row by row; prose figures with their rounding) and
asserts that the document contains exactly that text: a results file that
changes a figure fails here until the text is updated. A markdown table in the
docs is either rebuilt by a check or listed in STATIC_TABLES (tables of names,
options and behaviour, no measurements), so a new table of figures cannot slip
in unchecked. Links must resolve to files of the repository, and the README
stays a front page (at most 12 KB).

`python tests/test_docs_figures.py` prints every generated text (to paste after
re-running a benchmark). No TensorFlow: this runs in well under a second.
"""

import functools
import importlib.util
import json
import os
import re
import statistics

import pytest

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)
RESULTS = os.path.join(ROOT, "benchmarks", "results")
README_LIMIT_BYTES = 12 * 1024
MINUS = "\u2212"


@functools.lru_cache(maxsize=None)
def result(name):
    with open(os.path.join(RESULTS, name), encoding="utf-8") as f:
        return json.load(f)


@functools.lru_cache(maxsize=None)
def document(path):
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        return f.read()


def documents():
    docs = sorted(os.path.join("docs", name) for name in os.listdir(os.path.join(ROOT, "docs"))
                  if name.endswith(".md"))
    return ["README.md"] + docs


# ------------------------------------------------------------------ formatting

def signed(value, digits=2):
    """+0.05 / −1.08 (a typographic minus, as the tables print it)."""
    return f"{value:+.{digits}f}".replace("-", MINUS)


def minus(text):
    return text.replace("-", MINUS)


def sci(value):
    """1 significant decimal in scientific notation: 7.9e-6."""
    mantissa, exponent = f"{value:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def mean(values):
    return statistics.fmean(values)


def pstdev(values):
    return statistics.pstdev(values)


def percent(fraction, digits=0):
    return f"{100 * fraction:.{digits}f} %"


def span(values, form="{:.0f}", dash="-"):
    low, high = form.format(min(values)), form.format(max(values))
    return low if low == high else f"{low}{dash}{high}"


def escape(cell):
    return cell.replace("|", "\\|")


# ------------------------------------------------------------------ docs/algorithms.md

def trl_parity():
    lines = ["| configuration | max \\|Δloss\\| | max \\|Δgrad\\| | \\|Δ‖grad‖\\| | note |",
             "|---|---|---|---|---|"]
    for row in result("trl_parity.json")["rows"]:
        lines.append(f"| {row['name']} | {row['loss']:.1e} | {row['gradient']:.1e} "
                     f"| {row['norm']:.1e} | {escape(row['note'])} |")
    return ["\n".join(lines)]


def distill_parity():
    lines = ["| comparison | loss | max \\|Δloss\\| | max \\|Δgrad\\| |", "|---|---:|---:|---:|"]
    for row in result("distill_parity.json")["rows"]:
        lines.append(f"| {row['name']} | {minus(format(row['reference_loss'], '.3f'))} "
                     f"| {row['loss']:.1e} | {row['gradient']:.1e} |")
    return ["\n".join(lines)]


def distillation():
    data = result("distillation.json")
    runs = data["runs"]
    lines = ["| seed | student before | distilled | GRPO | reverse KL to the teacher at the "
             "end, distilled / GRPO (nats/token) |", "|---:|---:|---:|---:|---:|"]
    for run in runs:
        lines.append(f"| {run['seed']} | {run['before']:.3f} | {run['distill']:.3f} "
                     f"| {run['grpo']:.3f} | {run['distill_reverse_kl'][-1][1]:.2f} / "
                     f"{run['grpo_reverse_kl'][-1][1]:.2f} |")
    means = {key: mean(run[key] for run in runs) for key in ("before", "distill", "grpo")}
    kls = [mean(run[f"{m}_reverse_kl"][-1][1] for run in runs) for m in ("distill", "grpo")]
    lines.append(f"| mean | {means['before']:.3f} | **{means['distill']:.3f}** "
                 f"| {means['grpo']:.3f} | {kls[0]:.2f} / {kls[1]:.2f} |")
    start = mean(run["distill_reverse_kl"][0][1] for run in runs)
    return ["\n".join(lines),
            f"held-out exact match {data['teacher']['exact_match']:.3f}",
            f"LSTM student ({data['student']['weights'] / 1000:.0f}k weights)",
            f"256-unit teacher ({data['teacher']['weights'] / 1000:.0f}k weights)",
            f"{data['seconds'] / 60:.0f} min on 2 shared cores",
            f"falls from about {start:.0f} nats per token"]


def distillation_summary():
    """The distillation figures the README's examples table quotes."""
    means = result("distillation.json")["mean_std"]
    return [f"student {means['before'][0]:.3f} → {means['distill'][0]:.3f} distilled, → "
            f"{means['grpo'][0]:.3f} with GRPO"]


# ------------------------------------------------------------------ docs/multi-turn.md

MULTI_TURN_NAMES = {"small": "64/128", "large": "512/1024", "constant": "constant reply",
                    "tool": "`ToolEnv`, a `calc` call every turn"}


def multi_turn_quality():
    data = result("multi_turn_quality.json")
    lines = ["| task | metric | maximum likelihood | GRPO with env= | PPO with env= |",
             "|---|---|---|---|---|"]
    for row in data["summary"]:
        cells = [f"{row['before'][0]:.3f} ± {row['before'][1]:.3f} ({row['seeds']})"]
        cells += [f"{row[a][0]:.3f} ± {row[a][1]:.3f} ({row[a][2]})" for a in ("grpo", "ppo")]
        lines.append(f"| {row['task']} | {row['metric']} | " + " | ".join(cells) + " |")
    accuracy = next(r for r in data["summary"] if r["metric"] == "accuracy")
    turns = next(r for r in data["summary"] if r["metric"] == "mean_turns")
    best_turns = min(turns["grpo"][0], turns["ppo"][0])
    gains = [100 * (accuracy[a][0] - accuracy["before"][0]) for a in ("grpo", "ppo")]
    return ["\n".join(lines),
            f"{span([run['train_s'] for run in data['runs']])} s of fine-tuning per run",
            f"+{gains[0]:.0f} (GRPO) and +{gains[1]:.0f} (PPO) points",
            # 3.375: the expected turns of binary search over 1-16 (not a measurement).
            f"gets within {best_turns - 3.375:.2f} of it"]


def multi_turn_throughput():
    data = result("multi_turn.json")
    steps = {(s["model"], s["env"]): s for s in data["train_steps"] if s["batch"] == 64}
    lines = ["| policy (LSTM) | env | policy tokens/s | 1-turn tokens/s | multi-turn / 1-turn "
             "time | time in the env | GRPO step, env share |", "|---|---|---|---|---|---|---|"]
    ratios = []
    for row in data["rollouts"]:
        if row["batch"] != 64:
            continue
        step = steps[row["model"], row["env"]]
        seconds = step["step_s"]
        ratios.append(1 / row["vs_same_length"])
        lines.append(
            f"| {MULTI_TURN_NAMES[row['model']]} | {MULTI_TURN_NAMES[row['env']]} "
            f"| {row['policy_tokens_per_s']:,.0f} | {row['single_same_length_tokens_per_s']:,.0f} "
            f"| {1 / row['vs_same_length']:.1f}x | {percent(row['env_share'], 1)} "
            f"| {seconds:.{2 if seconds < 1 else 1}f} s, {percent(step['env_share'], 1)} |")
    return ["\n".join(lines), f"takes {min(ratios):.1f}x to {max(ratios):.1f}x the time"]


# ------------------------------------------------------------------ docs/hugging-face.md

def keras_hub_policy():
    data = result("keras_hub_policy.json")
    gen = {row["name"]: row["tokens_per_s"] for row in data["generation"]}
    train = {row["name"]: row for row in data["training"]}
    return [f"`tfpg.generate` {gen['tfpg']:.0f} tok/s (XLA {gen['tfpg XLA']:.0f}) against "
            f"`CausalLM.generate` {gen['KerasHub']:.0f} (XLA {gen['KerasHub XLA']:.0f}): "
            f"{data['tfpg_over_kerashub']:.2f}x",
            f"the XLA decode loop ran {gen['tfpg XLA'] / gen['tfpg']:.2f}x as fast",
            f"{train['full']['samples_per_s']:.1f} samples/s full fine-tuning "
            f"({train['full']['trainable'] / 1e6:.1f}M trainable), "
            f"{train['LoRA r=8']['samples_per_s']:.1f} with LoRA r=8 "
            f"({train['LoRA r=8']['trainable'] / 1000:.0f}k trainable); "
            f"{train['full XLA decode']['samples_per_s']:.1f} / "
            f"{train['LoRA r=8 XLA decode']['samples_per_s']:.1f} with the XLA decode loop"]


def hf_compat():
    rows = result("hf_compat.json")
    families = [r for r in rows if "max_logit_diff" in r]

    def fraction(key):
        parts = [tuple(map(int, r[key].split("/"))) for r in rows if key in r]
        return sum(p[0] for p in parts), sum(p[1] for p in parts)

    conversations = fraction("template_agreement")
    corpus = {int(r["ids_python"].split("/")[1]) for r in families}
    assert len(corpus) == 1 and fraction("ids_python")[0] == fraction("ids_python")[1] \
        and fraction("ids_graph")[0] == fraction("ids_graph")[1] \
        and fraction("greedy")[0] == fraction("greedy")[1]
    return [f"{conversations[0]} of {conversations[1]} fixture conversations",
            f"logits within {sci(max(r['max_logit_diff'] for r in families))} of transformers'",
            f"token ids equal to `tokenizers` on a {corpus.pop():,}-string torture corpus",
            f"`AutoModelForCausalLM` within "
            f"{sci(max(r.get('export_max_abs_logit_diff', 0) for r in rows))}",
            f"PEFT adapters on the base within "
            f"{sci(max(r.get('peft_max_abs_logit_diff', 0) for r in rows))}"]


# ------------------------------------------------------------------ docs/rlhf.md

def quality_cell(value, digits):
    return f"{value['mean']:.{digits}f} ± {value['std']:.{digits}f}"


def reward_models():
    data = result("overoptimization-short.json")
    lines = ["| seed | held-out accuracy | ceiling (expected) | gold utility on these labels |",
             "|---:|---:|---:|---:|"]
    for model in data["reward_models"]:
        lines.append(f"| {model['seed']} | {model['heldout_accuracy']:.3f} "
                     f"| {model['ceiling']:.3f} | {model['gold_accuracy']:.3f} |")
    preference = result("quality.json")["summary"]["preference"]
    return ["\n".join(lines),
            f"{preference['maximum likelihood']['metric']['mean']:.2f} → "
            f"{quality_cell(preference['rloo']['metric'], 2)} with RLOO, "
            f"{quality_cell(preference['ppo']['metric'], 2)} with PPO"]


def overoptimization_short():
    runs = result("overoptimization-short.json")["runs"]
    lines = ["| run | gold start | gold peak (KL there) | proxy gain at the gold peak "
             "| end: gold, proxy gain, KL |", "|---|---:|---:|---:|---:|"]
    for algorithm in ("ppo", "rloo"):
        for kl_coef in (0.0, 0.1):
            mine = [r for r in runs if r["algorithm"] == algorithm and r["kl_coef"] == kl_coef]

            def m(key):
                return mean(r[key] for r in mine)

            peak = [r["gold_peak"] for r in mine]
            kl = [r["kl_at_gold_peak"] for r in mine]
            lines.append(
                f"| {algorithm.upper()}, kl_coef {kl_coef:g} | {signed(m('gold_start'))} "
                f"| {signed(mean(peak))} ± {pstdev(peak):.2f} "
                f"({mean(kl):.1f} ± {pstdev(kl):.1f}) "
                f"| {signed(m('proxy_gain_at_gold_peak'))} | {signed(m('gold_end'))}, "
                f"{signed(m('proxy_gain_end'))}, {m('kl_end'):.0f} |")
    free = [r for r in runs if r["kl_coef"] == 0]
    kept = [r for r in runs if r["kl_coef"] == 0.1]
    fell = sum(r["gold_end"] < r["gold_start"] for r in free)
    assert max(r["peak_step"] for r in free) <= 10
    gains = span([r["gold_gain_end"] for r in kept], "{:.1f}", " to ")
    return ["\n".join(lines),
            f"raise the held-out gold reward by {gains} "
            f"({sum(r['gold_gain_end'] > 0 for r in kept)} of {len(kept)} runs) at "
            f"{span([r['kl_end'] for r in kept], '{:.1f}', '–')} nats",
            f"peaks within the first 10 steps (at "
            f"{span([r['kl_at_gold_peak'] for r in free], '{:.0f}', '–')} nats)",
            f"below where it started in {fell} of the {len(free)} runs"]


def overoptimization_sweep():
    runs = result("overoptimization-sweep.json")["runs"]

    def kl(value):
        return f"{value:.1f}" if value < 2 else f"{value:.0f}"

    lines = ["| kl_coef | PPO gold: peak (KL), end | PPO proxy end | RLOO gold: peak (KL), end "
             "| RLOO proxy end |", "|---:|---:|---:|---:|---:|"]
    by = {(r["algorithm"], r["kl_coef"]): r for r in runs}
    for kl_coef in sorted({r["kl_coef"] for r in runs}):
        cells = []
        for algorithm in ("ppo", "rloo"):
            r = by[algorithm, kl_coef]
            cells += [f"{signed(r['gold_gain_at_peak'])} ({kl(r['kl_at_gold_peak'])}), "
                      f"{signed(r['gold_gain_end'])}", signed(r["proxy_gain_end"])]
        lines.append(f"| {kl_coef:g} | " + " | ".join(cells) + " |")
    weak = [r for r in runs if r["kl_coef"] < 0.1]
    strong = [r for r in runs if r["kl_coef"] == 0.5]
    best = [r for r in runs if r["kl_coef"] == 0.1]
    return ["\n".join(lines),
            f"about {mean(r['kl_at_gold_peak'] for r in best):.0f} nats from the pre-trained",
            f"run ahead (up to {signed(max(r['proxy_gain_end'] for r in weak), 1)})",
            f"stops short ({span([r['kl_at_gold_peak'] for r in strong], '{:.1f}', '–')} nats, "
            f"{span([r['gold_gain_at_peak'] for r in strong], '+{:.1f}', ' to ')})"]


# ------------------------------------------------------------------ docs/results.md

QUALITY_NAMES = {"reinforce": "REINFORCE", "scst": "SCST", "rloo": "RLOO", "grpo": "GRPO",
                 "a2c": "A2C", "ppo": "PPO", "dr_grpo": "Dr. GRPO", "dapo": "DAPO",
                 "gspo": "GSPO"}
QUALITY_TASKS = {"arithmetic": "arithmetic (exact match %)", "translate": "translate (BLEU)",
                 "keywords": "keywords (satisfaction %, kl_coef 0.1)",
                 "preference": "preference (gold reward of samples; learned reward model, "
                               "kl_coef 0.1; RLOO and PPO only)"}


def quality():
    summary = result("quality.json")["summary"]
    lines = ["| task (metric) | maximum likelihood | ML continued | best algorithm "
             "| GRPO / Dr. GRPO / DAPO / GSPO | KL over the algorithms (nats/seq) |",
             "|---|---:|---:|---:|---:|---:|"]
    for task, label in QUALITY_TASKS.items():
        rows = summary[task]
        digits = 2 if task == "preference" else 1
        algorithms = {m: v for m, v in rows.items() if m in QUALITY_NAMES}
        ranked = sorted(algorithms, key=lambda m: -algorithms[m]["metric"]["mean"])
        first, second = algorithms[ranked[0]]["metric"], algorithms[ranked[1]]["metric"]
        if first["mean"] == algorithms[ranked[-1]]["metric"]["mean"]:
            best = f"{first['mean']:.{digits}f} (all {len(ranked)})"
        else:
            best = (f"{quality_cell(first, digits)} ({QUALITY_NAMES[ranked[0]]}; "
                    f"{QUALITY_NAMES[ranked[1]]} {second['mean']:.{digits}f})")
        group = " / ".join(f"{rows[m]['metric']['mean']:.{digits}f}"
                           for m in ("grpo", "dr_grpo", "dapo", "gspo") if m in rows)
        kl = span([v["kl"]["mean"] for v in algorithms.values()], "{:.1f}", "–")
        lines.append(f"| {label} | {quality_cell(rows['maximum likelihood']['metric'], digits)} "
                     f"| {quality_cell(rows['ML continued']['metric'], digits)} | {best} "
                     f"| {group} | {kl} |")
    return ["\n".join(lines)]


# ------------------------------------------------------------------ docs/performance.md

def generation_table(name):
    data = result(name)
    lines = ["| backbone | batch x new tokens | tfpg tok/s | vs eager loop | vs KerasHub "
             "`GPT2CausalLM.generate` | MFU | XLA speed-up |", "|---|---|---|---|---|---|---|"]
    for row in data["rows"]:
        eager = f"{row['tfpg_over_eager']:.1f}x" if "tfpg_over_eager" in row else ""
        hub = f"{row['tfpg_over_kerashub']:.2f}x" if "tfpg_over_kerashub" in row else ""
        lines.append(f"| {row['backbone']} | {row['batch_size']} x {row['new_tokens']} "
                     f"| {row['tfpg_tokens_per_s']:,.0f} | {eager} | {hub} "
                     f"| {percent(row['mfu'])} | {row['xla_over_tfpg']:.2f}x |")
    return "\n".join(lines)


def generation():
    data = result("generation.json")
    flat = {(r["backbone"], r["implementation"]): r["long_over_short"] for r in data["flat"]}
    peaks = [row["peak_gflops"] for row in data["rows"]]
    return [generation_table("generation.json"), generation_table("generation-full.json"),
            f"(here {span(peaks)} GFLOP/s)",
            f"LSTM {flat['lstm', 'tfpg']:.2f}, Transformer {flat['transformer', 'tfpg']:.2f} "
            f"(KerasHub {flat['transformer', 'kerashub']:.2f}"]


def training():
    rows = result("training.json")["rows"]
    ppo_xla = result("training-ppo-xla.json")["rows"][0]
    lines = ["| algorithm | samples/s | sample | score | advantages | update | MFU "
             "| XLA speed-up: decode loop / whole step |", "|---|---|---|---|---|---|---|---|"]
    compile_seconds = []
    for row in rows:
        split = row["split_fraction"]
        whole = row.get("xla_step_over_no_xla")
        if whole is None and row["algorithm"] == "ppo":
            whole = ppo_xla["xla_step_over_no_xla"]
            compile_seconds.append(ppo_xla["xla_step_first_call_s"])
        elif "xla_step_first_call_s" in row:
            compile_seconds.append(row["xla_step_first_call_s"])
        xla = (f"{row['xla_decode_over_no_xla']:.2f}x / "
               + (f"{whole:.2f}x" if whole is not None else "-")
               if "xla_decode_over_no_xla" in row else "-")
        lines.append(f"| {row['algorithm']} | {row['samples_per_s']:.1f} "
                     f"| {percent(split['sample'])} | {percent(split['score'])} "
                     f"| {percent(split['advantages'])} | {percent(split['update'])} "
                     f"| {percent(row['mfu'])} | {xla} |")
    reward = max(row["split_fraction"]["reward"] for row in rows)
    return ["\n".join(lines), f"The reward takes at most {percent(reward, 1)} of a step",
            f"after {span(compile_seconds)} s of compiling"]


def memory():
    figures = []
    for name in ("memory-rloo-lstm.json", "memory-ppo-transformer.json"):
        data = result(name)
        figures.append(f"{data['algorithm'].upper()} / {data['backbone']} "
                       f"{signed(data['growth_percent'])} % (second half "
                       f"{signed(data['second_half_growth_percent'])} %, the train step traced "
                       f"{data['train_step_traces']}x)")
    return figures


def compare_commits():
    """docs/performance.md's before / after table (benchmarks/compare_commits.py)."""
    data = result("compare_commits.json")
    commits = {side: data["commits"][side][:7] for side in ("before", "after")}
    lines = [f"| median of 3 alternating runs | before ({commits['before']}) "
             f"| after ({commits['after']}) |", "|---|---|---|"]

    def cells(side):
        return ([c for c in data[side]["generation_quick"] if c["backbone"] == "lstm"]
                + data[side]["generation_transformer"])

    def show(cell):
        hub = f", {cell['vs_kerashub']:.2f}x KerasHub" if cell["vs_kerashub"] else ""
        return f"{percent(cell['mfu'])}{hub}"

    for before, after in zip(cells("before"), cells("after")):
        lines.append(f"| generation, {before['backbone']} {before['batch_size']} x "
                     f"{before['new_tokens']}: MFU | {show(before)} | {show(after)} |")
    for before, after in zip(data["before"]["training"], data["after"]["training"]):
        lines.append(f"| train step, {before['algorithm']}: MFU (one run each) "
                     f"| {percent(before['mfu'])} | {percent(after['mfu'])} |")
    peaks = [row["peak_gflops"] for side in ("before", "after")
             for step in ("generation", "training") for row in data[side][step]]
    return ["\n".join(lines), f"peak of {span(peaks)} GFLOP/s"]


VS_TRL_NAMES = {"TRL": "TRL `GRPOTrainer`",
                "tfpg": "tfpg (XLA decode loop, the default `jit_compile=\"auto\"`)",
                "tfpg, plain decode": "tfpg (plain `tf.function` decode)",
                "tfpg, jit_compile=True": "tfpg, `compile(jit_compile=True)` (the whole step "
                                          "in XLA)"}


def vs_trl():
    data = result("vs_trl.json")
    trl = data["rows"][0]["median_s"]
    lines = ["| GRPO step | median s | samples/s | tfpg / TRL |", "|---|---|---|---|"]
    for row in data["rows"]:
        ratio = "" if row["name"] == "TRL" else f"{row['median_s'] / trl:.2f}"
        lines.append(f"| {VS_TRL_NAMES[row['name']]} | {row['median_s']:.3f} "
                     f"| {row['samples_per_s']:,.0f} | {ratio} |")
    return ["\n".join(lines),
            f"{data['rows'][0]['parameters'] / 1000:.0f}k weights, character vocabulary of "
            f"{data['vocabulary']}"]


# ------------------------------------------------------------------ docs/real-sizes.md

@functools.lru_cache(maxsize=None)
def scale_module():
    """benchmarks/scale.py's own table writer (its module imports the standard library
    only; TensorFlow is imported inside the functions that run a cell)."""
    spec = importlib.util.spec_from_file_location(
        "scale_benchmark", os.path.join(ROOT, "benchmarks", "scale.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def scale():
    data = result("scale.json")
    rows = {(tuple(r["cell"]), r["gradient_checkpointing"]): r for r in data["rows"]}
    longest = rows[(50257, 2048, 0.04, 8), False]
    checkpointed = rows[(50257, 1024, 0.04, 8), True]
    plain = rows[(50257, 1024, 0.04, 8), False]
    first = rows[(50257, 64, 0.0, 8), False]
    per_element = data["bytes_per_bnv_element"]
    after = [r["tfpg"]["after_above_baseline_gib"] for r in data["rows"]]
    return [scale_module().markdown_table(data["rows"]),
            f"wall {longest['time_ratio']:.2f}x TRL's, CPU {longest['cpu_ratio']:.2f}x",
            f"{checkpointed['tfpg']['peak_above_baseline_gib']:.2f} GiB against "
            f"{plain['tfpg']['peak_above_baseline_gib']:.2f} without",
            f"tfpg {per_element['tfpg']:.3f}, TRL {per_element['trl']:.2f}",
            f"({span(after, '{:.1f}')} GiB here",
            f"{first['tfpg']['peak_above_baseline_gib']:.1f} GiB already at V = 50,257, N = 64"]


def scale_summary():
    """The figures docs/performance.md quotes from the real-sizes table."""
    data = result("scale.json")
    ratios = [r["memory_ratio"] for r in data["rows"] if "memory_ratio" in r]
    per_element = data["bytes_per_bnv_element"]
    return [f"{span(ratios, '{:.2f}')} of TRL's peak memory",
            f"tfpg {per_element['tfpg']:.3f} bytes per `B * N * V` element, TRL "
            f"{per_element['trl']:.2f}"]


# ------------------------------------------------------------------ docs/trust.md

def faults():
    data = result("faults.json")
    return [f"{data['equal_to_unbroken_run']} of {data['total']} resumed runs equal the "
            f"unbroken run",
            f"{data['finished_with_loadable_export']} of {data['total']} loadable",
            f"at {data['total']} random moments"]


CHECKS = {
    "trl_parity": ("docs/algorithms.md", trl_parity),
    "distill_parity": ("docs/algorithms.md", distill_parity),
    "distillation": ("docs/algorithms.md", distillation),
    "distillation_readme": ("README.md", distillation_summary),
    "multi_turn_quality": ("docs/multi-turn.md", multi_turn_quality),
    "multi_turn_throughput": ("docs/multi-turn.md", multi_turn_throughput),
    "keras_hub_policy": ("docs/hugging-face.md", keras_hub_policy),
    "hf_compat": ("docs/hugging-face.md", hf_compat),
    "reward_models": ("docs/rlhf.md", reward_models),
    "overoptimization_short": ("docs/rlhf.md", overoptimization_short),
    "overoptimization_sweep": ("docs/rlhf.md", overoptimization_sweep),
    "quality": ("docs/results.md", quality),
    "generation": ("docs/performance.md", generation),
    "training": ("docs/performance.md", training),
    "memory": ("docs/performance.md", memory),
    "vs_trl": ("docs/performance.md", vs_trl),
    "compare_commits": ("docs/performance.md", compare_commits),
    "scale_summary": ("docs/performance.md", scale_summary),
    "scale": ("docs/real-sizes.md", scale),
    "faults": ("docs/trust.md", faults),
}

# Tables without measurements: names, options, behaviour (by their header line).
STATIC_TABLES = {
    "| run | what |",
    "| script | what it shows |",
    "| signature | inputs | outputs |",
    "| file | what a line holds | example line |",
    "| page | what |",
    "| class | advantage | loss aggregation (default) | extra |",
    "| log | what | logged by |",
    "| option | what it does |",
    "| | text | tokens | loss mask |",
    "| input | what happens |",
}


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_figures_match_their_results_file(name):
    """The text shows exactly the figures its results file holds, as formatted here."""
    path, figures = CHECKS[name]
    text = document(path)
    prose = " ".join(text.split())         # a figure in prose may wrap across lines
    for figure in figures():
        found = figure in text if "\n" in figure else " ".join(figure.split()) in prose
        assert found, f"{path} does not show (from {name}):\n{figure}"


def tables(text):
    """Each markdown table of `text` (consecutive lines starting with '|')."""
    found, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            found.append("\n".join(current))
            current = []
    return found


def test_every_table_is_checked_or_holds_no_measurements():
    generated = [figure for _, figures in CHECKS.values() for figure in figures()]
    for path in documents():
        for table in tables(document(path)):
            header = table.splitlines()[0]
            assert header in STATIC_TABLES or any(table in g for g in generated), (
                f"{path}: a table neither rebuilt from benchmarks/results/ nor declared "
                f"free of measurements:\n{header}")


def test_links_resolve_to_files_of_the_repository():
    for path in documents():
        base = os.path.dirname(os.path.join(ROOT, path))
        for target in re.findall(r"\]\(([^)\s]+)\)", document(path)):
            if re.match(r"[a-z]+://", target) or target.startswith("#"):
                continue
            assert os.path.exists(os.path.join(base, target.split("#")[0])), (path, target)


def test_every_results_file_a_document_names_exists():
    for path in documents():
        for name in re.findall(r"benchmarks/results/([\w.-]+\.(?:json|md|png))", document(path)):
            assert os.path.exists(os.path.join(RESULTS, name)), (path, name)


def test_readme_is_a_front_page():
    size = os.path.getsize(os.path.join(ROOT, "README.md"))
    assert size <= README_LIMIT_BYTES, f"README.md is {size} bytes"
    readme = document("README.md")
    for page in sorted(os.listdir(os.path.join(ROOT, "docs"))):
        if page.endswith(".md"):
            assert f"(docs/{page})" in readme, f"README.md does not link docs/{page}"


if __name__ == "__main__":
    for check, (where, make) in sorted(CHECKS.items()):
        print(f"## {check} ({where})\n")
        for item in make():
            print(item, end="\n\n")
