"""Warm sessions: reused while alive, reopened after a break with a growing
back-off, heartbeated while idle, closed after `keep_warm`; ssh faked."""

import pytest

from pvezfsha.errors import TransportError
from pvezfsha.sessions import WarmSessions


class FakeSession:
    def __init__(self, peer):
        self.peer, self.alive, self.closed, self.pings, self.fail_ping = peer, True, False, 0, False

    def ready(self):
        return {}

    def ping(self, timeout=15):
        if self.fail_ping:
            raise TransportError(f"{self.peer}: no answer within {timeout} s")
        self.pings += 1
        return {}

    def stderr_text(self):
        return "ssh: connect to host pve2 port 22: Connection refused" if not self.alive else ""

    def close(self, timeout=10):
        self.closed, self.alive = True, False

    def kill(self):
        self.alive = False


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


@pytest.fixture
def pool():
    clock = Clock()
    made = []

    def opener(ctx, ct, peer, wait=False):
        made.append(FakeSession(peer))
        return made[-1]
    p = WarmSessions(heartbeat=15, keep_warm=120, clock=clock, opener=opener)
    p.t, p.made = clock, made
    return p


def test_a_live_session_is_reused_across_cycles(pool):
    s = pool.get(None, None, "pve2")
    pool.checkin("pve2")
    assert pool.get(None, None, "pve2") is s and pool.opened == 1


def test_a_broken_session_is_reopened_at_once_the_first_time(pool):
    s = pool.get(None, None, "pve2")
    s.alive = False
    assert pool.get(None, None, "pve2") is not s and pool.opened == 2


def test_sessions_that_keep_breaking_are_reopened_after_a_growing_back_off(pool):
    pool.get(None, None, "pve2").alive = False
    pool.checkin("pve2")                                   # 1st failure: reopen at once
    pool.get(None, None, "pve2").alive = False
    pool.checkin("pve2")                                   # 2nd failure: 2 s
    with pytest.raises(TransportError, match="reconnecting in 2 s"):
        pool.get(None, None, "pve2")
    pool.t.t += 2
    assert pool.get(None, None, "pve2").alive


def test_a_session_that_answers_again_clears_the_back_off(pool):
    for _ in range(3):
        pool.get(None, None, "pve2").alive = False
        pool.checkin("pve2")
        pool.t.t += 60
    pool.get(None, None, "pve2")
    pool.checkin("pve2")
    pool.get(None, None, "pve2").alive = False
    pool.checkin("pve2")
    assert pool.get(None, None, "pve2").alive                # back to "at once"


def test_an_idle_session_gets_a_heartbeat(pool):
    s = pool.get(None, None, "pve2")
    pool.checkin("pve2")
    pool.t.t += 15
    pool.tick()
    assert s.pings == 1 and pool.get(None, None, "pve2") is s


def test_a_session_that_misses_its_heartbeat_is_dropped(pool):
    s = pool.get(None, None, "pve2")
    pool.checkin("pve2")
    s.fail_ping = True
    pool.t.t += 15
    pool.tick()
    assert not s.alive and len(pool) == 0


def test_sessions_are_closed_once_nothing_was_written_for_keep_warm(pool):
    s = pool.get(None, None, "pve2")
    pool.checkin("pve2")
    for _ in range(8):                   # heartbeats do not count as use
        pool.t.t += 15
        pool.tick()
    assert s.closed and len(pool) == 0 and pool.next_due() is None


def test_with_no_session_there_is_nothing_to_wake_up_for(pool):
    assert pool.next_due() is None
