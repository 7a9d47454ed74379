"""When the continuous-replication agent starts its next cycle, given when
writes to a dataset were seen.

* A burst of writes (a file copied, an archive unpacked) makes exactly one
  cycle, `quiet` seconds after the burst ends: a cycle in the middle of it
  would send a snapshot that is stale at once, and take another right after.
* A dataset written to all the time (a log, a database) never goes quiet, so
  a cycle also starts at most `max_delay` after the first write no cycle has
  taken yet: that bounds the data a crash can lose.
* Cycles never start more often than `min_interval` apart, whatever the
  writes or failures: each one costs a snapshot and an ssh session per
  standby, and snapshots every few seconds would make the `keep` newest
  cover only minutes.
* A failed cycle is retried after a back-off (`retry`), and a cycle can be
  asked for at once (`kick`: what was written while nobody watched).

Pure: no clock, no I/O. Times are floats from time.monotonic(), passed in.
"""

from __future__ import annotations


class Debouncer:
    def __init__(self, quiet: float, max_delay: float, min_interval: float):
        if min(quiet, max_delay, min_interval) < 0:
            raise ValueError("quiet, max_delay and min_interval must not be negative")
        self.quiet = quiet
        self.max_delay = max_delay
        self.min_interval = min_interval
        self._first: float | None = None        # first write no cycle has taken yet
        self._last: float | None = None
        self._taken: tuple[float, float] | None = None  # (first, last) the running cycle took
        self._started: float | None = None
        self._not_before: float | None = None    # set by retry(): a failed cycle's back-off
        self._kicked: float | None = None        # set by kick(): a cycle wanted without waiting for quiet

    def touch(self, now: float) -> None:
        """A write was seen."""
        if self._first is None:
            self._first = now
        self._last = now

    def kick(self, now: float) -> None:
        """A cycle is wanted now, writes seen or not, without waiting for them
        to settle (what was written while nobody watched, a hand-off); still
        no sooner than `min_interval` after the last start, or a retry's back-off."""
        self._kicked = now if self._kicked is None else min(self._kicked, now)

    @property
    def pending(self) -> bool:
        return self._first is not None or self._not_before is not None or self._kicked is not None

    def deadline(self) -> float | None:
        """When the next cycle should start; None while nothing is pending."""
        if not self.pending:
            return None
        at = float("-inf")
        if self._first is not None:
            at = min(self._last + self.quiet, self._first + self.max_delay)
        if self._kicked is not None:
            at = self._kicked if self._first is None else min(at, self._kicked)
        if self._not_before is not None:
            at = max(at, self._not_before)
        if self._started is not None:
            at = max(at, self._started + self.min_interval)
        return at

    def due(self, now: float) -> bool:
        at = self.deadline()
        return at is not None and now >= at

    def started(self, now: float) -> None:
        """A cycle starts now and takes every write seen so far; writes seen
        after this call start a new debounce."""
        self._taken = (self._first, self._last) if self._first is not None else None
        self._first = self._last = None
        self._not_before = self._kicked = None
        self._started = now

    def retry(self, now: float, after: float) -> None:
        """The cycle failed: what it took is pending again, not before now+after.

        The writes it took are given back with their own times, so a dataset
        under constant writes is not made to wait a further `max_delay`: its
        oldest unreplicated write is already that old."""
        if self._taken is not None:
            first, last = self._taken
            self._first = first if self._first is None else min(first, self._first)
            self._last = last if self._last is None else max(last, self._last)
            self._taken = None
        self._not_before = now + after
