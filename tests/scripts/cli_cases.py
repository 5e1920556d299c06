"""Runs several `tfpg` command lines in this one process, as `tests/cli_batch.py` asks.

Reads a JSON list of {"args": [...], "cwd": DIR} on stdin; writes a JSON list of
{"returncode", "stdout", "stderr"} on stdout, one per command, in order. Each command
runs as `tfpg.run.cli.main(args)` in its own directory, its Python-level output captured
(the native log filter, installed by the first command, keeps TensorFlow's C++ lines
off the real stderr as it does for one command).
"""

import contextlib
import io
import json
import os
import sys

from tfpg.run.cli import main


def run(args, cwd):
    os.chdir(cwd)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(args)
        except SystemExit as exit:          # argparse's own errors (exit 2)
            code = exit.code if isinstance(exit.code, int) else 1
    return {"returncode": code, "stdout": out.getvalue(), "stderr": err.getvalue()}


if __name__ == "__main__":
    cases = json.load(sys.stdin)
    results = [run(case["args"], case["cwd"]) for case in cases]
    sys.__stdout__.write(json.dumps(results))
