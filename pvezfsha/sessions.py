"""Warm sessions: one ssh session per standby kept open between the agent's cycles.

A cycle over a fresh session pays the ssh handshake and the standby's
Python and pyzfs start-up before its first byte, which is most of a small
cycle's cost. The agent keeps each standby's session to `pvezfsha receive`
open while writes keep coming, so its cycles pay neither.

What a warm session must not change:
- Epoch fencing: the receiving end reads the cluster record and the
  dataset's epoch on every changing request (receive.Server._fence), so a
  session opened before a takeover is refused after it, as a fresh one is.
- Locks: the receiving end keeps a dataset's lock only for the cycle that
  changed it (the `release` request, push._released), so a takeover on the
  standby is never kept waiting by an idle session.
- Its config: the receiving end re-reads its config when the file changes.

A session that breaks is reopened at the next cycle, after a backoff that
grows with consecutive failures. While idle, the sessions are closed after
`keep_warm` seconds (no ssh traffic at all while nothing changes), and the
agent opens them again at the first write, so the handshake overlaps the
debounce's quiet period instead of delaying the cycle.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from pvezfsha.config import Container
from pvezfsha.errors import PvezfshaError, TransportError
from pvezfsha.log import logger
from pvezfsha.push import open_session
from pvezfsha.transport import Session

BACKOFF = (0.0, 2.0, 5.0, 10.0, 30.0, 60.0)   # the first failure reopens at once


@dataclass
class _Warm:
    session: Session
    used: float          # when a cycle last used it: keep_warm counts from here
    answered: float      # when it last answered (a cycle or a heartbeat)


class WarmSessions:
    """Sessions to standbys, by peer name, that outlive cycles.

    Used from one thread (the agent's cycle worker); not thread-safe.
    """

    def __init__(self, *, heartbeat: float = 15.0, keep_warm: float = 120.0, clock=time.monotonic,
                 opener=open_session):
        self.heartbeat_every = heartbeat
        self.keep_warm = keep_warm
        self.clock = clock
        self.opener = opener
        self._warm: dict[str, _Warm] = {}
        self._failures: dict[str, tuple[int, float]] = {}   # peer -> (count, not before)
        self.opened = 0                                      # sessions opened, for the tests and the bench

    def get(self, ctx, ct: Container, peer: str) -> Session:
        """A live session to `peer`: the warm one, or a new one (not yet
        answered: its hello is read on first use)."""
        w = self._warm.get(peer)
        now = self.clock()
        if w is not None and w.session.alive:
            return w.session
        if w is not None:
            self._drop(peer, "the session ended")
        count, not_before = self._failures.get(peer, (0, 0.0))
        if now < not_before:
            raise TransportError(f"{peer}: reconnecting in {not_before - now:.0f} s "
                                 f"({count} failed session(s) in a row)")
        session = self.opener(ctx, ct, peer, wait=False)
        self.opened += 1
        self._warm[peer] = _Warm(session, now, now)
        return session

    def checkin(self, peer: str) -> None:
        """After a cycle used `peer`'s session: a session still alive has
        answered (it was released), one that died counts as a failure."""
        w = self._warm.get(peer)
        if w is None:
            return
        if w.session.alive:
            w.used = w.answered = self.clock()
            self._failures.pop(peer, None)
        else:
            self._drop(peer, "the session ended during the cycle")

    def _drop(self, peer: str, why: str) -> None:
        w = self._warm.pop(peer, None)
        if w is None:
            return
        detail = w.session.stderr_text().splitlines()
        try:
            w.session.close(timeout=5)
        except OSError:
            pass
        count = self._failures.get(peer, (0, 0.0))[0] + 1
        delay = BACKOFF[min(count, len(BACKOFF)) - 1]
        self._failures[peer] = (count, self.clock() + delay)
        logger.warning(f"warm session to {peer}: {why}" + (f" ({detail[-1]})" if detail else "")
                       + f"; reopening it at the next cycle, not before {delay:.0f} s")

    def tick(self) -> None:
        """Heartbeat the sessions idle for `heartbeat` seconds; close those
        idle for `keep_warm` (nothing is being written)."""
        now = self.clock()
        for peer, w in list(self._warm.items()):
            if not w.session.alive:
                self._drop(peer, "the session ended while idle")
            elif now - w.used >= self.keep_warm:
                self._warm.pop(peer)
                w.session.close(timeout=5)
                logger.debug(f"warm session to {peer}: closed after {now - w.used:.0f} s without a cycle")
            elif now - w.answered >= self.heartbeat_every:
                try:
                    w.session.ping()
                    w.answered = now
                except PvezfshaError as e:
                    w.session.kill()
                    self._drop(peer, f"no answer to the heartbeat ({e})")

    def warm_up(self, ctx, ct: Container, peers: list[str]) -> None:
        """Open the sessions a cycle will need soon (the first write after
        idle): the handshake then runs during the debounce."""
        for peer in peers:
            try:
                self.get(ctx, ct, peer).ready()
            except PvezfshaError:
                pass   # the cycle reports it

    def next_due(self) -> float | None:
        """When tick() has work next, on `clock`'s scale; None with no session."""
        if not self._warm:
            return None
        return min(min(w.answered + self.heartbeat_every, w.used + self.keep_warm) for w in self._warm.values())

    def close(self) -> None:
        for w in self._warm.values():
            try:
                w.session.close(timeout=5)
            except OSError:
                pass
        self._warm.clear()

    def __len__(self) -> int:
        return len(self._warm)
