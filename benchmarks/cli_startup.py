"""Start-up of the `tfpg` command: wall time of `tfpg --help` (goal: under 0.5 s).

    python benchmarks/cli_startup.py            # 5 runs of each command
    python benchmarks/cli_startup.py --runs 10

`--help`, `CMD --help` and argument errors never import TensorFlow, so they answer
in the time Python takes to start. For scale, the same runs of `python -c "import
tensorflow"` (what every command paid before). Prints the median and the minimum
wall time of each; a benchmark, not a test (the figures depend on the machine's load).
"""

import argparse
import os
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "tfpg --help": [sys.executable, "-m", "tfpg.cli", "--help"],
    "tfpg train --help": [sys.executable, "-m", "tfpg.cli", "train", "--help"],
    "tfpg train --epochs many (error)": [sys.executable, "-m", "tfpg.cli", "train",
                                         "--epochs", "many"],
    "python -c 'import tensorflow'": [sys.executable, "-c", "import tensorflow"],
}


def wall_times(command, runs):
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       env=dict(os.environ))
        times.append(time.perf_counter() - start)
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print(f"{'command':<36}{'median s':>10}{'min s':>10}")
    for name, command in COMMANDS.items():
        times = wall_times(command, args.runs)
        print(f"{name:<36}{statistics.median(times):>10.3f}{min(times):>10.3f}")


if __name__ == "__main__":
    main()
