"""On-policy distillation vs GRPO at equal steps (examples/distillation.py), 3 seeds:
writes benchmarks/results/distillation.json and distillation.png (the reverse KL to the
teacher over training) and prints the table.

    nice python benchmarks/distillation.py [--seeds 0 1 2] [--steps 150]
"""

import argparse
import importlib.util
import json
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")


def load_example():
    path = os.path.join(HERE, os.pardir, "examples", "distillation.py")
    spec = importlib.util.spec_from_file_location("example_distillation", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def plot(result, path):
    """Mean (lines) and per-seed (thin) reverse KL to the teacher over the steps."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, ax = plt.subplots(figsize=(6.5, 4.2))
    for method, color, label in (("distill", "tab:blue", "on-policy distillation"),
                                 ("grpo", "tab:orange", "GRPO (exact-match reward)")):
        curves = np.array([row[f"{method}_reverse_kl"] for row in result["runs"]])  # [S, P, 2]
        for curve in curves:
            ax.plot(curve[:, 0], curve[:, 1], color=color, lw=0.6, alpha=0.4)
        mean = curves.mean(axis=0)
        ax.plot(mean[:, 0], mean[:, 1], "-o", ms=3, color=color,
                label=f"{label}: exact match {result['mean_std'][method][0]:.3f}")
    ax.set_xlabel(f"optimizer step ({result['samples_per_step']} sampled completions each)")
    ax.set_ylabel("reverse KL to the teacher, nats / token")
    ax.set_title("Student (LSTM 128) vs teacher (LSTM 256), held-out prompts")
    ax.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--output", default=os.path.join(RESULTS, "distillation.json"))
    args = parser.parse_args(argv)
    example = load_example()
    result = example.run(seeds=args.seeds, steps=args.steps)
    print(example.format_table(result))
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(result, f, indent=1)
    png = os.path.splitext(args.output)[0] + ".png"
    plot(result, png)
    print(f"wrote {args.output} and {png}")


if __name__ == "__main__":
    main()
