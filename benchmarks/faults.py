"""Fault tolerance: SIGKILL `tfpg train` at random points, rerun it, check the export.

    python benchmarks/faults.py                 # 10 kills, about 10 minutes on 2 cores
    python benchmarks/faults.py --runs 3 --workdir /tmp/faults

One uninterrupted run of a small `tfpg train` job measures its duration T. Then each
of `--runs` runs starts the same job in a fresh output directory and is killed with
SIGKILL at a random moment, run i in the i-th of `--runs` equal slices of [0, T] (so
the kills cover start-up, pre-training, evaluation, fine-tuning, export and the
checkpoint writes in between). The same command is then run again, to completion,
and must exit 0 with a SavedModel that `tfpg.load` opens and that generates, and a
`metrics.json`. A run that the kill missed (it finished first) is retried with an
earlier kill.

Writes benchmarks/results/faults.json and prints one row per run: when it was
killed, what it was doing (from the checkpoint state and the export folders), and
whether the rerun resumed and ended with a loadable export.
"""

import argparse
import glob
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

JOB = ["train", "--task", "arithmetic", "--pretrain-epochs", "3", "--epochs", "2",
       "--steps-per-epoch", "5", "--batch-size", "128"]
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "faults.json")


def command(directory):
    return [sys.executable, "-m", "tfpg.cli"] + JOB + [
        "--output", os.path.join(directory, "model"), "--logdir", os.path.join(directory, "logs")]


def environment():
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")


def phase_at_kill(directory):
    """What the killed run had completed, read from what it left on disk."""
    output = os.path.join(directory, "model")
    if glob.glob(output + ".tmp-*") or os.path.isdir(output + ".tfpg-backup"):
        return "exporting"
    if os.path.isdir(output):
        return "export written" + ("" if os.path.exists(os.path.join(output, "metrics.json"))
                                   else ", metrics.json not yet")
    state_path = os.path.join(output + ".checkpoint", "state.json")
    if not os.path.exists(state_path):
        return "starting (no state yet)"
    with open(state_path) as f:
        state = json.load(f)
    if state["finetune_epochs_done"] == int(JOB[JOB.index("--epochs") + 1]):
        return "evaluating after fine-tuning"
    if state["finetune_epochs_done"]:
        return f"fine-tuning, {state['finetune_epochs_done']} epoch(s) done"
    if state.get("before") is not None:
        return "fine-tuning, 0 epochs done"
    done = state["pretrain_epochs_done"]
    if done == int(JOB[JOB.index("--pretrain-epochs") + 1]):
        return "evaluating before fine-tuning"
    return f"pre-training, {done} epoch(s) done"


def check_export(path):
    """Opens the export in a fresh process, as a user would; returns (ok, detail)."""
    code = ("import json, sys, tfpg\n"
            "g = tfpg.load(sys.argv[1])\n"
            "out = g.generate(['12+34=', '57+68='])\n"
            "assert len(out) == 2\n"
            "m = json.load(open(sys.argv[1] + '/metrics.json'))\n"
            "print(json.dumps({'sample': out[0], 'exact_match': m['after']['exact_match']}))\n")
    result = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True,
                            env=environment(), timeout=300)
    if result.returncode != 0:
        return False, (result.stderr.strip().splitlines() or ["?"])[-1]
    return True, json.loads(result.stdout.strip().splitlines()[-1])


def kill_and_resume(directory, kill_at):
    """Starts the job, SIGKILLs it `kill_at` seconds in, reruns it; a result dict."""
    started = time.time()
    process = subprocess.Popen(command(directory), env=environment(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        process.wait(timeout=kill_at)
        return None                               # finished before the kill
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        process.wait()
    killed_after = time.time() - started
    phase = phase_at_kill(directory)

    started = time.time()
    rerun = subprocess.run(command(directory), env=environment(), capture_output=True,
                           text=True, timeout=1800)
    resume_seconds = time.time() - started
    ok, detail = (False, (rerun.stderr.strip().splitlines() or ["?"])[-1])
    if rerun.returncode == 0:
        ok, detail = check_export(os.path.join(directory, "model"))
    return {"killed_after_s": round(killed_after, 1), "phase_at_kill": phase,
            "resumed": "resuming from" in rerun.stdout, "rerun_exit": rerun.returncode,
            "rerun_s": round(resume_seconds, 1), "loadable_export": ok, "detail": detail}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", help="where the runs go (default: a temporary folder)")
    parser.add_argument("--output", default=RESULTS)
    args = parser.parse_args(argv)
    workdir = args.workdir or tempfile.mkdtemp(prefix="tfpg-faults-")
    os.makedirs(workdir, exist_ok=True)
    rng = random.Random(args.seed)

    calibration = os.path.join(workdir, "uninterrupted")
    shutil.rmtree(calibration, ignore_errors=True)
    started = time.time()
    result = subprocess.run(command(calibration), env=environment(), capture_output=True,
                            text=True, timeout=1800)
    duration = time.time() - started
    if result.returncode != 0:
        sys.exit(f"the uninterrupted run failed: {result.stderr[-2000:]}")
    print(f"uninterrupted run: {duration:.1f} s; killing {args.runs} runs", flush=True)

    rows = []
    for i in range(args.runs):
        low, high = duration * i / args.runs, duration * (i + 1) / args.runs
        kill_at = rng.uniform(max(low, 0.5), high * 0.97)
        for attempt in range(4):
            directory = os.path.join(workdir, f"run-{i}")
            shutil.rmtree(directory, ignore_errors=True)
            row = kill_and_resume(directory, kill_at)
            if row is not None:
                break
            kill_at *= 0.8                            # it finished first: kill earlier
        if row is None:
            row = {"killed_after_s": None, "phase_at_kill": "finished before every kill",
                   "resumed": False, "rerun_exit": None, "rerun_s": None,
                   "loadable_export": False, "detail": "not killed"}
        row["run"] = i
        rows.append(row)
        print(f"run {i}: killed after {row['killed_after_s']} s ({row['phase_at_kill']}); "
              f"rerun exit {row['rerun_exit']} in {row['rerun_s']} s, resumed="
              f"{row['resumed']}, loadable export: {row['loadable_export']}", flush=True)

    survived = sum(row["loadable_export"] for row in rows)
    report = {"job": " ".join(["tfpg"] + JOB), "uninterrupted_s": round(duration, 1),
              "runs": rows, "finished_with_loadable_export": survived, "total": len(rows)}
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(report, f, indent=2)

    print()
    print(f"{'run':>3}  {'killed at':>9}  {'phase at kill':<40}{'resumed':>8}  "
          f"{'rerun':>7}  loadable export")
    for row in rows:
        killed = f"{row['killed_after_s']:.1f} s" if row["killed_after_s"] is not None else "-"
        rerun = f"{row['rerun_s']:.1f} s" if row["rerun_s"] is not None else "-"
        print(f"{row['run']:>3}  {killed:>9}  {row['phase_at_kill']:<40}"
              f"{'yes' if row['resumed'] else 'no':>8}  {rerun:>7}  "
              f"{'yes' if row['loadable_export'] else 'NO: ' + str(row['detail'])}")
    print(f"\n{survived} of {len(rows)} killed runs finished with a loadable export "
          f"(results in {args.output})")
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if survived == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
