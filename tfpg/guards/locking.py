"""One writer per output: an exclusive lock on `OUTPUT.lock`, beside the output.

`tfpg train` (for the whole run: checkpoints, export, metrics), `tfpg train-reward`,
`export_saved_model` (so `tfpg export` and `SavedModelExport`) and `RewardModel.save`
hold `output_lock(OUTPUT)`: `fcntl.flock(LOCK_EX | LOCK_NB)` on `OUTPUT.lock` in the
output's parent directory, which holds the writer's PID. A second writer is refused
at once, in one line naming that PID. The kernel drops the lock when its process
dies, so a SIGKILLed run leaves no stale lock, only (at worst) an unlocked file that
the next writer takes over.

Recovering an interrupted export (`tfpg.export.recover`: deleting `OUTPUT.tmp-*`,
putting back `OUTPUT.tfpg-backup`) happens only under this lock, so a reader never
deletes the folder a live writer is filling.

The lock is re-entrant within a process (the run's lock covers its own export), and
the file is deleted when the lock is released: a writer that opened it just before
checks, once it holds the lock, that the file it locked is still the one at that
path, and tries again otherwise.

A single file is replaced whole (`write_file_atomically`, `write_json_atomically`:
a temporary sibling, fsync, rename), so that a reader or a crash never sees half of
it; a directory is replaced whole by `tfpg.export.write_directory`.

Imports no TensorFlow.
"""

import contextlib
import fcntl
import json
import os
import tempfile
import threading

from tfpg.options import UsageError

__all__ = ["OutputLockedError", "output_lock", "lock_path", "try_output_lock",
           "write_file_atomically", "write_json_atomically", "check_replaceable"]

# The temporary sibling of a file being replaced (a crash may leave one behind).
TMP_PREFIX = ".tfpg-write-"
# The marker file of a tfpg SavedModel export (`tfpg.export.METADATA_FILE`).
EXPORT_MARKER = "tfpg_export.json"

LOCK_SUFFIX = ".lock"
_held = {}   # lock file path -> [fd, depth, directories made for it] of this process
_guard = threading.Lock()


class OutputLockedError(UsageError):
    """Another process writes the output: the CLI exits 2 with this one line."""


def check_replaceable(path, marker_file=EXPORT_MARKER, kind="tfpg export"):
    """Raises ValueError unless `path` is absent, empty or a `kind` (a directory
    holding `marker_file`): tfpg replaces only what it wrote."""
    if not os.path.exists(path):
        return
    if not os.path.isdir(path):
        raise ValueError(f"{path}: exists and is not a directory; refusing to replace it")
    if os.listdir(path) and not os.path.isfile(os.path.join(path, marker_file)):
        raise ValueError(f"{path}: is a non-empty directory that is not a {kind}; "
                         "refusing to replace it (choose another path or empty it)")


def write_file_atomically(path, contents):
    """Replaces the file `path` with `contents` (str, UTF-8, or bytes) as one step:
    written to a temporary sibling, flushed to disk, then renamed over `path`. A
    reader sees the old file or the new one, never a part; on failure `path` is as it
    was and the sibling is removed. The file gets the mode `open` would give it."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=".tmp", dir=directory)
    try:
        # mkstemp makes the file 0600; give it the mode `open` would (0644 under the
        # usual umask 022), like the other files of an output.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        data = contents.encode("utf-8") if isinstance(contents, str) else contents
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_json_atomically(path, payload, indent=1):
    """`write_file_atomically` of `payload` as JSON (non-ASCII characters kept)."""
    write_file_atomically(path, json.dumps(payload, ensure_ascii=False, indent=indent))


def lock_path(output):
    """`OUTPUT.lock`, beside `output` (its parent resolved, so that two spellings of
    one output share one lock)."""
    output = os.path.normpath(os.fspath(output))
    parent = os.path.realpath(os.path.dirname(os.path.abspath(output)))
    return os.path.join(parent, os.path.basename(output) + LOCK_SUFFIX)


@contextlib.contextmanager
def output_lock(output):
    """Holds the writer lock of `output` for the `with` block; raises
    OutputLockedError, naming the holder's PID, when another process holds it.

    The output's parent directory is created if needed, and removed again on release
    if it is still empty (a run refused after taking the lock leaves nothing)."""
    path = lock_path(output)
    _acquire(path, output)
    try:
        yield path
    finally:
        _release(path)


@contextlib.contextmanager
def try_output_lock(output):
    """Like `output_lock`, but yields False instead of raising when another process
    holds the lock, or when no lock file can be made (a missing or read-only parent
    directory: nobody writes there then). Creates no directory."""
    path = lock_path(output)
    held = os.path.isdir(os.path.dirname(path))
    if held:
        try:
            _acquire(path, output, make_parent=False)
        except (OutputLockedError, OSError):
            held = False
    try:
        yield held
    finally:
        if held:
            _release(path)


def _acquire(path, output, make_parent=True):
    with _guard:
        if path in _held:                   # this process holds it already
            _held[path][1] += 1
            return
        made = _make_directories(os.path.dirname(path)) if make_parent else []
        try:
            _held[path] = [_lock_file(path, output), 1, made]
        except BaseException:
            _remove_if_empty(made)
            raise


def _make_directories(directory):
    """os.makedirs(directory); returns the directories it created, deepest first."""
    made = []
    while not os.path.isdir(directory):
        made.append(directory)
        directory = os.path.dirname(directory)
    os.makedirs(made[0] if made else directory, exist_ok=True)
    return made


def _remove_if_empty(directories):
    for directory in directories:
        try:
            os.rmdir(directory)
        except OSError:
            return                  # not empty: the writer's output is in it


def _lock_file(path, output):
    """An open descriptor of `path`, exclusively locked, holding this PID."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f"PID {holder}" if holder else "a process that has not written its PID yet"
            raise OutputLockedError(
                f"{os.path.normpath(os.fspath(output))} is being written by another tfpg "
                f"process ({who}, holding {path}); wait for it to end or choose another "
                "output") from None
        except BaseException:
            os.close(fd)
            raise
        if _is_current(fd, path):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            return fd
        # The previous holder deleted the file between our open and our lock: the
        # lock we hold is on a file nobody else will see. Open the new one.
        os.close(fd)


def _is_current(fd, path):
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (now.st_dev, now.st_ino) == (opened.st_dev, opened.st_ino)


def _read_pid(fd):
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _release(path):
    with _guard:
        entry = _held[path]
        entry[1] -= 1
        if entry[1]:
            return
        del _held[path]
        # Deleted while still locked (see the module docstring), then unlocked by close.
        try:
            os.unlink(path)
        except OSError:
            pass
        os.close(entry[0])
        _remove_if_empty(entry[2])
