"""Fault tolerance: SIGKILL `tfpg train` at random points, rerun it, compare it with the
unbroken run.

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

The job runs with `--deterministic`, under which a resumed run must be the unbroken
run exactly: the variables of its last checkpoint (weights, optimizer slots and
iterations, critic, KL reference, kl_coef) with a largest difference of 0, the
"before" / "after" figures and samples of `metrics.json`, and the texts its export
generates (greedy and sampled) all equal to the uninterrupted run's.

Writes benchmarks/results/faults.json and prints one row per run: when it was
killed, what it was doing (from the checkpoint state and the export folders),
whether the rerun resumed and ended with a loadable export, and whether it equals
the unbroken run (the largest weight difference, and which of metrics / texts differ).
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

import numpy as np

JOB = ["train", "--task", "arithmetic", "--pretrain-epochs", "3", "--epochs", "2",
       "--steps-per-epoch", "5", "--batch-size", "128", "--deterministic"]
PROMPTS = ["12+34=", "57+68=", "3+9=", "40+41="]
# metrics.json fields that measure the model (the rest name the run or time it).
COMPARED_METRICS = ("before", "after", "samples")
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "faults.json")


def command(directory):
    return [sys.executable, "-m", "tfpg.run.cli"] + JOB + [
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


# Run in a fresh process, as a user would: opens the export (argv[1]) and generates
# greedily and sampled; writes the variables of the run's last checkpoint to argv[2].
CHECK = """
import json, os, sys
import numpy as np
import tensorflow as tf
import tfpg
export, weights = sys.argv[1], sys.argv[2]
prompts = json.loads(sys.argv[3])
generator = tfpg.load(export)
texts = {"greedy": generator.generate(prompts),
         "sampled": generator.generate(prompts, sampler="sample", seed=7)}
assert len(texts["greedy"]) == len(prompts)
metrics = json.load(open(os.path.join(export, "metrics.json")))
checkpoints = export + ".checkpoint"
state = json.load(open(os.path.join(checkpoints, "state.json")))
reader = tf.train.load_checkpoint(os.path.join(checkpoints, state["finetune_checkpoint"]))
np.savez(weights, **{key.replace("/", "|"): reader.get_tensor(key)
                     for key in reader.get_variable_to_shape_map()
                     if key != "_CHECKPOINTABLE_OBJECT_GRAPH"})
print(json.dumps({"texts": texts, "metrics": {key: metrics[key] for key in sys.argv[4:]}}))
"""


def check_export(directory):
    """Opens the export of the run in `directory` in a fresh process; returns (ok,
    detail): detail is the error line, or {"texts", "metrics"} (its generated texts
    and the compared fields of metrics.json), the last checkpoint's variables written
    to `directory/weights.npz`."""
    result = subprocess.run(
        [sys.executable, "-c", CHECK, os.path.join(directory, "model"),
         os.path.join(directory, "weights.npz"), json.dumps(PROMPTS), *COMPARED_METRICS],
        capture_output=True, text=True, env=environment(), timeout=300)
    if result.returncode != 0:
        return False, (result.stderr.strip().splitlines() or ["?"])[-1]
    return True, json.loads(result.stdout.strip().splitlines()[-1])


def compare(directory, reference, detail):
    """How the run in `directory` differs from the unbroken run (its `reference`
    directory and check `detail`): the largest difference over the checkpoint's
    variables (None when they are not the same variables) and whether metrics.json's
    compared fields and the generated texts are equal."""
    with np.load(os.path.join(reference["directory"], "weights.npz")) as expected, \
            np.load(os.path.join(directory, "weights.npz")) as got:
        if set(expected.files) != set(got.files):
            difference = None
        else:
            difference = max((float(np.max(np.abs(expected[key].astype(np.float64) -
                                                  got[key].astype(np.float64))))
                              if expected[key].size and expected[key].dtype.kind in "fiu"
                              else float(not np.array_equal(expected[key], got[key])))
                             for key in expected.files)
    return {"max_weight_difference": difference,
            "metrics_equal": detail["metrics"] == reference["detail"]["metrics"],
            "texts_equal": detail["texts"] == reference["detail"]["texts"]}


def kill_and_resume(directory, kill_at, reference):
    """Starts the job, SIGKILLs it `kill_at` seconds in, reruns it, compares it with
    the unbroken run (`reference`, see `main`); a result dict."""
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
        ok, detail = check_export(directory)
    row = {"killed_after_s": round(killed_after, 1), "phase_at_kill": phase,
           "resumed": "resuming from" in rerun.stdout, "rerun_exit": rerun.returncode,
           "rerun_s": round(resume_seconds, 1), "loadable_export": ok,
           "max_weight_difference": None, "metrics_equal": False, "texts_equal": False}
    if ok:
        row.update(compare(directory, reference, detail))
    row["equal"] = (row["max_weight_difference"] == 0.0 and row["metrics_equal"]
                    and row["texts_equal"])
    row["detail"] = detail if not ok else {"texts": detail["texts"]["greedy"][:2],
                                           "after": detail["metrics"]["after"]}
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
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
    ok, detail = check_export(calibration)
    if not ok:
        sys.exit(f"the uninterrupted run's export does not load: {detail}")
    reference = {"directory": calibration, "detail": detail}
    print(f"uninterrupted run: {duration:.1f} s; killing {args.runs} runs", flush=True)

    rows = []
    for i in range(args.runs):
        low, high = duration * i / args.runs, duration * (i + 1) / args.runs
        kill_at = rng.uniform(max(low, 0.5), high * 0.97)
        for attempt in range(4):
            directory = os.path.join(workdir, f"run-{i}")
            shutil.rmtree(directory, ignore_errors=True)
            row = kill_and_resume(directory, kill_at, reference)
            if row is not None:
                break
            kill_at *= 0.8                            # it finished first: kill earlier
        if row is None:
            row = {"killed_after_s": None, "phase_at_kill": "finished before every kill",
                   "resumed": False, "rerun_exit": None, "rerun_s": None,
                   "loadable_export": False, "max_weight_difference": None,
                   "metrics_equal": False, "texts_equal": False, "equal": False,
                   "detail": "not killed"}
        row["run"] = i
        rows.append(row)
        print(f"run {i}: killed after {row['killed_after_s']} s ({row['phase_at_kill']}); "
              f"rerun exit {row['rerun_exit']} in {row['rerun_s']} s, resumed="
              f"{row['resumed']}, loadable export: {row['loadable_export']}, equal to the "
              f"unbroken run: {row['equal']}", flush=True)

    survived = sum(row["loadable_export"] for row in rows)
    equal = sum(row["equal"] for row in rows)
    report = {"job": " ".join(["tfpg"] + JOB), "uninterrupted_s": round(duration, 1),
              "runs": rows, "finished_with_loadable_export": survived,
              "equal_to_unbroken_run": equal, "total": len(rows)}
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(report, f, indent=2)

    print()
    print(f"{'run':>3}  {'killed at':>9}  {'phase at kill':<40}{'resumed':>8}  "
          f"{'rerun':>7}  {'loadable':>8}  equal to the unbroken run")
    for row in rows:
        killed = f"{row['killed_after_s']:.1f} s" if row["killed_after_s"] is not None else "-"
        rerun = f"{row['rerun_s']:.1f} s" if row["rerun_s"] is not None else "-"
        print(f"{row['run']:>3}  {killed:>9}  {row['phase_at_kill']:<40}"
              f"{'yes' if row['resumed'] else 'no':>8}  {rerun:>7}  "
              f"{'yes' if row['loadable_export'] else 'NO':>8}  {equality(row)}")
    print(f"\n{survived} of {len(rows)} killed runs finished with a loadable export; "
          f"{equal} of {len(rows)} equal to the unbroken run (weights max difference 0, "
          f"metrics.json, generated texts) (results in {args.output})")
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if survived == equal == len(rows) else 1


def equality(row):
    """The last column: "yes", or what differs from the unbroken run."""
    if not row["loadable_export"]:
        return f"NO: {row['detail']}"
    if row["equal"]:
        return "yes (max weight difference 0)"
    differs = [name for name in ("metrics", "texts") if not row[f"{name}_equal"]]
    weights = row["max_weight_difference"]
    if weights is None or weights > 0:
        differs.insert(0, "weights" + (f" by up to {weights:.3g}" if weights else
                                       " (other variables)"))
    return "NO: " + ", ".join(differs) + " differ"


if __name__ == "__main__":
    sys.exit(main())
