"""The speed figures of two commits on the same machine, their runs alternating.

A table measured months ago on another load (or another host) cannot tell whether a
change made tfpg slower: this runs the same benchmark scripts from a checkout of
each commit (`git worktree`, each run with its own checkout first on PYTHONPATH),
one after the other, and reports both side by side. MFU is against the matmul peak
measured inside each run, so it moves less with the machine than tokens/s does.

* generation, default grid (`benchmarks/generation.py --flat-kerashub`), once each;
* generation, `--rounds` times alternating, the medians: batch 64 x 32 tokens
  (`--quick`, LSTM and Transformer, 5 repeats, no eager loop or XLA), then the
  Transformer at batch 64 / 256 x 32 / 128 tokens (3 repeats): MFU and tfpg / KerasHub
  `GPT2CausalLM.generate`;
* the train step of every algorithm (`benchmarks/training.py`), once each.

    python benchmarks/compare_commits.py --before e3f6c08 --after HEAD   # ~30 min

Writes benchmarks/results/compare_commits.json (and every run's own JSON beside it
under --workdir).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The alternating runs time tfpg (and KerasHub) only: no eager loop, no XLA column.
TFPG_ONLY = ["--eager-max-tokens", "0", "--xla-new-tokens", "0"]
QUICK = ["--quick", "--backbones", "lstm", "transformer", "--repeats", "5"] + TFPG_ONLY
# The Transformer against KerasHub on the grid where KerasHub runs by default.
TRANSFORMER = ["--backbones", "transformer", "--batch-sizes", "64", "256", "--new-tokens",
               "32", "128", "--repeats", "3"] + TFPG_ONLY + ["--flat-tokens", "32"]
STEPS = {"generation": ["benchmarks/generation.py", "--flat-kerashub"],
         "training": ["benchmarks/training.py"],
         "generation_quick": ["benchmarks/generation.py"] + QUICK,
         "generation_transformer": ["benchmarks/generation.py"] + TRANSFORMER}
ALTERNATING = ("generation_quick", "generation_transformer")


def checkout(commit, directory):
    """A detached worktree of `commit` at `directory`; returns its full hash."""
    subprocess.run(["git", "worktree", "add", "--detach", "-f", directory, commit], cwd=ROOT,
                   check=True, capture_output=True)
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=directory, check=True,
                          capture_output=True, text=True).stdout.strip()


def run_step(tree, step, output):
    """Runs one benchmark script of `tree` with `tree` first on the path."""
    command = [sys.executable] + STEPS[step] + ["--output", output]
    env = dict(os.environ, PYTHONPATH=tree, TF_CPP_MIN_LOG_LEVEL="3")
    subprocess.run(command, cwd=tree, env=env, check=True, stdout=subprocess.DEVNULL)
    with open(output) as f:
        return json.load(f)


def generation_rows(data):
    return [{"backbone": r["backbone"], "batch_size": r["batch_size"],
             "new_tokens": r["new_tokens"], "tokens_per_s": r["tfpg_tokens_per_s"],
             "mfu": r["mfu"], "vs_kerashub": r.get("tfpg_over_kerashub"),
             "peak_gflops": r["peak_gflops"]} for r in data["rows"]]


def training_rows(data):
    return [{"algorithm": r["algorithm"], "samples_per_s": r["samples_per_s"],
             "mfu": r["mfu"], "peak_gflops": r["peak_gflops"]} for r in data["rows"]]


def medians(runs):
    """Per (backbone, batch, new tokens): the median over rounds of MFU and of
    tfpg / KerasHub (where KerasHub ran)."""
    cells = {}
    for data in runs:
        for row in generation_rows(data):
            key = (row["backbone"], row["batch_size"], row["new_tokens"])
            cells.setdefault(key, []).append(row)
    return [{"backbone": b, "batch_size": n, "new_tokens": t, "rounds": len(rows),
             "mfu": statistics.median(r["mfu"] for r in rows),
             "vs_kerashub": (statistics.median(r["vs_kerashub"] for r in rows)
                             if rows[0]["vs_kerashub"] is not None else None)}
            for (b, n, t), rows in cells.items()]


def summarize(commits, runs):
    """runs: {side: {"generation": json, "training": json, step: [json] for ALTERNATING}}."""
    result = {"commits": commits, "steps": {name: " ".join(command)
                                            for name, command in STEPS.items()}}
    for side, data in runs.items():
        result[side] = {"generation": generation_rows(data["generation"]),
                        "training": training_rows(data["training"])}
        for step in ALTERNATING:
            result[side][step] = medians(data[step])
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", required=True)
    parser.add_argument("--after", default="HEAD")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--output", default=os.path.join(ROOT, "benchmarks", "results",
                                                         "compare_commits.json"))
    args = parser.parse_args()
    workdir = args.workdir or tempfile.mkdtemp(prefix="tfpg-compare-")
    trees = {side: os.path.join(workdir, side) for side in ("before", "after")}
    commits = {side: checkout(getattr(args, side), tree) for side, tree in trees.items()}
    runs = {side: {step: [] for step in ALTERNATING} for side in trees}
    try:
        for step in ("generation", "training"):
            for side, tree in trees.items():
                runs[side][step] = run_step(tree, step, os.path.join(workdir,
                                                                     f"{step}-{side}.json"))
        for step in ALTERNATING:
            for round_ in range(args.rounds):
                for side, tree in trees.items():
                    runs[side][step].append(run_step(
                        tree, step, os.path.join(workdir, f"{step}-{side}-{round_}.json")))
    finally:
        for tree in trees.values():
            subprocess.run(["git", "worktree", "remove", "--force", tree], cwd=ROOT,
                           capture_output=True)
    result = summarize(commits, runs)
    with open(args.output, "w") as f:
        json.dump(result, f, indent=1)
    for side in ("before", "after"):
        cells = result[side]["generation_quick"] + result[side]["generation_transformer"]
        print(f"{side} {commits[side][:7]}: generation "
              + ", ".join(f"{c['backbone']} {c['batch_size']}x{c['new_tokens']} MFU "
                          f"{c['mfu']:.0%}" + (f" ({c['vs_kerashub']:.2f}x KerasHub)"
                                               if c["vs_kerashub"] else "") for c in cells)
              + "; train MFU "
              + " / ".join(f"{r['algorithm']} {r['mfu']:.0%}" for r in result[side]["training"]))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
