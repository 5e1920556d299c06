"""Start-up of the `tfpg` command: wall time of `tfpg --help` and of each bad input
that needs no model (goal: under 0.5 s each).

    python benchmarks/cli_startup.py            # 5 runs of each command
    python benchmarks/cli_startup.py --runs 10

`--help`, `CMD --help` and every check that needs no model (`tfpg.run.config.check_config`:
a value out of range, an unknown name, a missing file or `--model` path) never import
TensorFlow, so they answer in the time Python takes to start; nor does a malformed
`--train-file` (`tfpg.run.config.check_train_file` reads it first). For scale, the same runs
of `python -c "import tensorflow"` (what every command paid before). Prints the median
and the minimum wall time of each, and its exit status (2 for the errors); a benchmark,
not a test (the figures depend on the machine's load).
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

TFPG = [sys.executable, "-m", "tfpg"]
# Malformed files the commands below name: a line that is not JSON, a line without a tab.
FILES = {"bad.jsonl": '{"prompt": "1 + 1 =", "reference": "2"}\n{prompt: "2 + 2 ="}\n',
         "no_tab.tsv": "1 + 1 =\t2\n2 + 2 = 4\n"}
COMMANDS = {
    "tfpg --help": TFPG + ["--help"],
    "tfpg train --help": TFPG + ["train", "--help"],
    "tfpg train --epochs many": TFPG + ["train", "--epochs", "many"],
    "tfpg train --epoch 2": TFPG + ["train", "--epoch", "2"],
    "tfpg train --epochs -1": TFPG + ["train", "--epochs", "-1"],
    "tfpg train --algorithm dpo": TFPG + ["train", "--algorithm", "dpo"],
    "tfpg train --train-file missing.tsv": TFPG + ["train", "--train-file", "missing.tsv"],
    "tfpg train --train-file bad.jsonl": TFPG + ["train", "--train-file", "bad.jsonl"],
    "tfpg train --train-file no_tab.tsv": TFPG + ["train", "--train-file", "no_tab.tsv"],
    "tfpg train --model nonexistent_dir/": TFPG + ["train", "--model", "nonexistent_dir/"],
    "tfpg generate nowhere hi": TFPG + ["generate", "nowhere", "hi"],
    "python -c 'import tensorflow'": [sys.executable, "-c", "import tensorflow"],
}


def wall_times(command, runs, cwd):
    """(wall seconds of each run, the exit status of the last)."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env=dict(os.environ), cwd=cwd)
        times.append(time.perf_counter() - start)
    return times, done.returncode


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print(f"{'command':<40}{'median s':>10}{'min s':>10}{'exit':>6}")
    with tempfile.TemporaryDirectory() as cwd:      # where missing.tsv is missing
        for name, text in FILES.items():
            with open(os.path.join(cwd, name), "w", encoding="utf-8") as f:
                f.write(text)
        for name, command in COMMANDS.items():
            times, status = wall_times(command, args.runs, cwd)
            print(f"{name:<40}{statistics.median(times):>10.3f}{min(times):>10.3f}"
                  f"{status:>6}")


if __name__ == "__main__":
    main()
