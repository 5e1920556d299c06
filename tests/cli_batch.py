"""Many `tfpg` command lines in one subprocess (tests/scripts/cli_cases.py): the
bad-input cases each exit in a fraction of a second, so starting one Python (and
TensorFlow) per case would cost most of their time."""

import json
import os
import subprocess
import sys
import types

SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "cli_cases.py")


def run_cli_cases(cases, env=None, timeout=600):
    """cases: [(args, cwd)] -> one result per case, with .returncode, .stdout, .stderr."""
    payload = json.dumps([{"args": list(args), "cwd": str(cwd)} for args, cwd in cases])
    done = subprocess.run([sys.executable, SCRIPT], input=payload, capture_output=True,
                          text=True, timeout=timeout, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return [types.SimpleNamespace(**result) for result in json.loads(done.stdout)]
