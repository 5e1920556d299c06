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


def run_in_fresh_directories(tmp_path_factory, commands, make_directory, env=None):
    """Each command in a new directory of its own, prepared by `make_directory(path)`,
    all in one subprocess: [(directory, its files before, result)] in order."""
    directories = [make_directory(tmp_path_factory.mktemp(f"case{i}"))
                   for i in range(len(commands))]
    before = [set(os.listdir(directory)) for directory in directories]
    results = run_cli_cases(list(zip(commands, directories)), env=env)
    return list(zip(directories, before, results))


def assert_usage_error(result, *words):
    """Exit status 2, exactly one `tfpg: error:` line naming `words`, no traceback."""
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("tfpg: error:")]
    assert len(lines) == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], lines[0]
