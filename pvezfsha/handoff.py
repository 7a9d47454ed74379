"""The spool through which the hook tells the agent that a role changed.

`/run/pvezfsha/handoff/<ctid>` is written (temp file, rename) by the hook
after a start here and by a handover away from here; the agent watches the
directory with inotify and re-reads that container's role at once, so a new
primary replicates within a second or two and an old one stops watching,
without a polling loop. The file's text is for people; only its name counts.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from pvezfsha.errors import PvezfshaError
from pvezfsha.state import run_dir


def handoff_dir() -> Path:
    return run_dir() / "handoff"


def hand_off(ctid: int, why: str) -> str | None:
    """Leave the note; the error text if it could not be written."""
    d = handoff_dir()
    tmp = d / f".{ctid}.{os.getpid()}"
    try:
        d.mkdir(parents=True, exist_ok=True)
        tmp.write_text(f"{why}\n")
        os.rename(tmp, d / str(ctid))
    except OSError as e:
        try:
            tmp.unlink()
        except OSError:
            pass
        return f"cannot write {d / str(ctid)}: {e.strerror}"
    return None


def take(names) -> dict[int, float]:
    """The container ids among spool entry names, with how long ago each
    was written (the agent reports its reaction time); their files removed."""
    out = {}
    now = time.time()
    for name in names:
        if name.isdigit():
            path = handoff_dir() / name
            try:
                out[int(name)] = max(0.0, now - path.stat().st_mtime)
                path.unlink()
            except OSError:
                pass
    return out


def waiting() -> dict[int, float]:
    """Hand-offs left while no agent was running."""
    try:
        return take([p.name for p in handoff_dir().iterdir()])
    except OSError:
        return {}


def agent_pidfile() -> Path:
    return run_dir() / "agent.pid"


def agent_running() -> bool:
    """A live `pvezfsha agent` on this node: it holds the flock of its pid file."""
    try:
        fd = os.open(agent_pidfile(), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def claim_agent() -> int:
    """The agent's pid file, locked for its lifetime (the returned fd);
    raises PvezfshaError naming the agent that already runs."""
    path = agent_pidfile()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        other = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        raise PvezfshaError(f"another pvezfsha agent runs on this node (pid {other or '?'}, {path})") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
