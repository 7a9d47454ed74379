"""Node-local runtime state: per-dataset locks.

A lock is an flock on a file under /run/pvezfsha/locks (PVEZFSHA_RUN_DIR
moves it). flock dies with its process, so a crashed run never leaves a
stale lock behind, and two runs on one dataset never overlap.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import signal
import time
from contextlib import contextmanager
from pathlib import Path


def run_dir() -> Path:
    return Path(os.environ.get("PVEZFSHA_RUN_DIR", "/run/pvezfsha"))


def state_dir() -> Path:
    """What must outlive a reboot (alerts already sent); /run is for the rest."""
    return Path(os.environ.get("PVEZFSHA_STATE_DIR", "/var/lib/pvezfsha"))


def _lock_path(dataset: str) -> Path:
    # '%' cannot occur in a dataset name, so the mapping is one-to-one.
    return run_dir() / "locks" / (dataset.replace("/", "%") + ".lock")


class Locked(Exception):
    def __init__(self, dataset: str, holder: str):
        super().__init__(f"{dataset} is busy (locked by {holder or 'another run'})")
        self.dataset = dataset


@contextmanager
def dataset_lock(dataset: str, what: str = "sync", wait: float = 0):
    """Hold the dataset's lock; raise Locked if it is still busy after
    `wait` seconds (0: at once). A timer cycle never waits, a final push
    does: its whole point is to send what the running cycle has not."""
    path = _lock_path(dataset)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + wait
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
                    raise Locked(dataset, holder) from None
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{what} pid {os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def write_atomically(path: Path, text: str) -> None:
    """Replace `path` whole: a fresh temp file (mkstemp: O_EXCL, so a link
    planted in the directory is never followed), fsync'ed, mode 0644 on
    the descriptor, renamed over it. Readers see the old file or the new."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o644)
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def node_lock(name: str):
    """A short read-modify-write of one of this node's files, between the
    timer, the agent and the hook: waits, never fails for being busy."""
    path = run_dir() / "locks" / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def first_time(what: str) -> bool:
    """True the first time `what` is asked on this node (a marker file under
    the run dir): for reporting a lasting condition once, not every cycle."""
    d = run_dir() / "reported"
    try:
        d.mkdir(parents=True, exist_ok=True)
        fd = os.open(d / what.replace("/", "%"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.close(fd)
        return True
    except FileExistsError:
        return False
    except OSError:
        return True


def stop_receive(dataset: str, timeout: float = 15.0) -> int | None:
    return stop_holder(dataset, "receive", timeout)


def stop_holder(dataset: str, what: str, timeout: float = 15.0) -> int | None:
    """Kill the pvezfsha run that holds the dataset's lock as `what`
    ("receive", "transfer"); its pid, or None.

    A receive whose sender lost power waits forever: no FIN ever comes and
    sshd does not probe the client by default. A takeover knows that sender
    is gone, so it ends the receive: SIGKILL interrupts the kernel's read of
    the stream, and the partial state stays resumable. A transfer whose
    taker gave up (the handover timeout) would go on pushing into a node
    that is promoting: the taker has it stopped the same way.
    """
    path = _lock_path(dataset)
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return None
    try:
        # The file keeps its last holder's text after that run ends, and the
        # pid may since belong to another process: only a held lock counts.
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return None
        except BlockingIOError:
            pass
        words = os.pread(fd, 200, 0).decode(errors="replace").split()
    finally:
        os.close(fd)
    if len(words) < 3 or words[0] != what or not words[2].isdigit():
        return None
    pid = int(words[2])
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"pvezfsha" not in f.read():
                return None
        os.kill(pid, signal.SIGKILL)
    except OSError:
        return None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and os.path.exists(f"/proc/{pid}"):
        time.sleep(0.2)
    return pid
