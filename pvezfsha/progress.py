"""Progress of one stream: a journal line every 30 s, a live file for
`status`, and a bar on an interactive terminal.

A first full sync of terabytes over 1 Gbps runs for hours; without this the
only sign of life is the absence of an error. The size is lzc_send_space's
estimate, so the percentage can end a little off 100 %: it is shown as an
estimate, and a stream that outgrows it reads "more than estimated".
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from pvezfsha.state import run_dir, write_atomically
from pvezfsha.units import human_bytes

LOG_EVERY = 30.0    # seconds between journal lines
FILE_EVERY = 5.0    # seconds between updates of the live file
BAR_EVERY = 0.5


def progress_dir() -> Path:
    return run_dir() / "progress"


def _file(dataset: str, peer: str) -> Path:
    return progress_dir() / f"{dataset.replace('/', '%')}@{peer}.json"


def interactive() -> bool:
    """A person watching: stderr is a terminal and this is not a systemd unit."""
    return sys.stderr.isatty() and "INVOCATION_ID" not in os.environ and "JOURNAL_STREAM" not in os.environ


def describe(sent: int, total: int | None, elapsed: float) -> str:
    rate = sent / elapsed if elapsed > 0 else 0.0
    text = f"{human_bytes(sent)}"
    if total:
        if sent <= total:
            text += f" of ~{human_bytes(total)} ({100 * sent / total:.0f} %)"
        else:
            text += f" (more than the ~{human_bytes(total)} estimated)"
    text += f", {human_bytes(rate)}/s"
    if total and rate > 0 and sent < total:
        text += f", ETA {_duration((total - sent) / rate)}"
    return text


def _duration(s: float) -> str:
    s = int(s)
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    if s >= 60:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s} s"


class Progress:
    """Call with the bytes sent so far; close() when the stream ends."""

    def __init__(self, dataset: str, peer: str, step: str, total: int | None, log,
                 clock=time.monotonic, wall=time.time, bar: bool | None = None):
        self.dataset, self.peer, self.step, self.total = dataset, peer, step, total
        self.log, self.clock, self.wall = log, clock, wall
        self.t0 = clock()
        self.last_log = self.last_file = self.last_bar = self.t0
        self.bar = interactive() if bar is None else bar
        self.sent = 0
        self._write()

    def __call__(self, sent: int) -> None:
        # Inside the send pump: a progress problem (a closed terminal) must
        # never look like the receiver going away, nor stop the stream.
        try:
            self._update(sent)
        except Exception:  # noqa: BLE001
            self.bar = False

    def _update(self, sent: int) -> None:
        self.sent = sent
        now = self.clock()
        if now - self.last_log >= LOG_EVERY:
            self.last_log = now
            self.log(f"{self.dataset} -> {self.peer}: {self.step}: {describe(sent, self.total, now - self.t0)}")
        if now - self.last_file >= FILE_EVERY:
            self.last_file = now
            self._write()
        if self.bar and now - self.last_bar >= BAR_EVERY:
            self.last_bar = now
            frac = min(1.0, sent / self.total) if self.total else 0.0
            width = 30
            sys.stderr.write(f"\r[{'#' * int(frac * width):<{width}}] {describe(sent, self.total, now - self.t0)}\033[K")
            sys.stderr.flush()

    def close(self) -> None:
        if self.bar:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
        try:
            _file(self.dataset, self.peer).unlink()
        except OSError:
            pass

    def _write(self) -> None:
        path = _file(self.dataset, self.peer)
        elapsed = self.clock() - self.t0
        doc = {"dataset": self.dataset, "peer": self.peer, "step": self.step, "pid": os.getpid(),
               "started": self.wall() - elapsed, "updated": self.wall(), "bytes": self.sent,
               "estimate": self.total, "rate": self.sent / elapsed if elapsed > 0 else 0.0}
        try:
            write_atomically(path, json.dumps(doc))
        except OSError:
            pass    # progress is a courtesy; the transfer goes on


def live(dataset: str, peer: str, now: float | None = None) -> dict | None:
    """The running transfer of `dataset` to `peer` on this node, if any: its
    writer must be alive, and the file fresh (a killed run leaves one)."""
    path = _file(dataset, peer)
    try:
        doc = json.loads(path.read_text())
        os.kill(int(doc["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if (now or time.time()) - float(doc.get("updated", 0)) > 3 * FILE_EVERY + 30:
        return None
    return doc
