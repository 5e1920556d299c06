"""Keeps TensorFlow's native (C++ / absl) log lines off the console.

TensorFlow's C++ runtime writes its log lines straight to file descriptor 2: at import
(`oneDNN custom operations are on`, `Could not find cuda drivers`, the CPU feature
notice), when the runtime starts (`E0000 ... failed call to cuInit`) and when some ops
first run (`oneDNN supports DT_INT64 only on platforms with AVX-512`). Most of them
come before absl's logging is initialised, so `TF_CPP_MIN_LOG_LEVEL` does not reach
them. `filter_native_logs()` routes descriptor 2 through a small filter process that
drops lines in absl's format (`I0000 00:00:... file.cc:12] ...`) and passes everything
else (Python's own messages and tracebacks, fatal `F` lines) to the real stderr.

A process rather than a thread: if TensorFlow aborts the interpreter, the filter still
reads the pipe to its end, so the last words of a crash are not lost.
"""

import atexit
import os
import re
import signal
import sys
import time

# absl / glog line prefix: severity (not F: fatal lines stay), MMDD, time (absl writes
# 00:00:<seconds since the epoch> before it is initialised), thread id, file:line]. Plus the two lines TensorFlow prints without that prefix.
NATIVE_LOG_LINE = re.compile(
    rb"^(?:[IWE]\d{4} [\d:.]+\s+\d+ [^\s\]]+:\d+\]"
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called"
    rb"|To enable the following instructions: .* rebuild TensorFlow)")

_installed = {}


def quiet_environment():
    """Environment for a quiet TensorFlow start: set before TensorFlow is imported."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


def filter_native_logs():
    """Filters native log lines out of descriptor 2 for the rest of the process.

    Only before TensorFlow is imported (later its threads run, and forking is unsafe)
    and only where `os.fork` exists; otherwise nothing changes. Returns True when the
    filter is on.
    """
    if _installed or "tensorflow" in sys.modules or not hasattr(os, "fork"):
        return bool(_installed)
    sys.stderr.flush()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:                                    # the filter process
        try:
            os.close(write_fd)
            signal.signal(signal.SIGINT, signal.SIG_IGN)    # Ctrl-C is for the parent
            for fd in (0, 1):
                os.close(fd)
            _copy_filtered(read_fd, 2)
        finally:
            os._exit(0)
    original = os.dup(2)
    os.dup2(write_fd, 2)
    os.close(write_fd)
    os.close(read_fd)
    _installed.update(original=original, pid=pid)
    atexit.register(_restore)
    return True


def _copy_filtered(read_fd, out_fd):
    pending = b""
    while True:
        try:
            chunk = os.read(read_fd, 65536)
        except InterruptedError:
            continue
        if not chunk:
            break
        pending += chunk
        *lines, pending = pending.split(b"\n")
        kept = b"".join(line + b"\n" for line in lines if not NATIVE_LOG_LINE.match(line))
        _write_all(out_fd, kept)
    if pending and not NATIVE_LOG_LINE.match(pending):
        _write_all(out_fd, pending)


def _write_all(fd, data):
    while data:
        try:
            data = data[os.write(fd, data):]
        except OSError:
            return                                  # stderr closed: nothing to do


def _restore():
    """At exit: the real stderr back on descriptor 2, then wait (briefly) until the
    filter has written what it still holds, so that it comes before the shell prompt."""
    sys.stderr.flush()
    os.dup2(_installed["original"], 2)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:              # a child process may hold the pipe
        done, _ = os.waitpid(_installed["pid"], os.WNOHANG)
        if done:
            break
        time.sleep(0.01)
