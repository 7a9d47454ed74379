"""When the next replication cycle starts, as a specification: one scenario
per test, times in seconds on a simulated monotonic clock."""

import pytest

from pvezfsha.debounce import Debouncer


def simulate(d: Debouncer, writes, until: float, step: float = 0.5) -> list[float]:
    """Run the agent's loop on a clock ticking by `step`: writes seen at
    their times, a cycle started whenever one is due. The cycles' start times."""
    writes = sorted(writes)
    cycles = []
    for i in range(int(until / step) + 1):
        now = i * step
        while writes and writes[0] <= now:
            d.touch(writes.pop(0))
        if d.due(now):
            d.started(now)
            cycles.append(now)
    return cycles


def test_nothing_written_means_no_cycle():
    d = Debouncer(quiet=5, max_delay=60, min_interval=10)
    assert d.deadline() is None
    assert not d.due(1_000)
    assert simulate(d, [], until=300) == []


def test_one_write_is_replicated_quiet_seconds_later():
    d = Debouncer(quiet=5, max_delay=60, min_interval=10)
    d.touch(100)
    assert d.deadline() == 105
    assert not d.due(104.9)
    assert d.due(105)


def test_a_burst_makes_exactly_one_cycle_quiet_seconds_after_its_last_write():
    d = Debouncer(quiet=5, max_delay=60, min_interval=10)
    burst = [10 + 0.5 * i for i in range(20)]           # 10 s .. 19.5 s
    assert simulate(d, burst, until=200) == [24.5]


def test_each_write_of_a_burst_pushes_the_cycle_back():
    d = Debouncer(quiet=5, max_delay=60, min_interval=10)
    d.touch(10)
    d.touch(13)
    assert d.deadline() == 18


def test_constant_writes_are_replicated_at_least_every_max_delay():
    d = Debouncer(quiet=5, max_delay=30, min_interval=10)
    every_second = [float(t) for t in range(0, 200)]
    assert simulate(d, every_second, until=199) == [30, 61, 92, 123, 154, 185]


def test_max_delay_counts_from_the_first_write_not_yet_replicated():
    d = Debouncer(quiet=5, max_delay=30, min_interval=10)
    for t in range(0, 40, 2):
        d.touch(t)
    assert d.deadline() == 30


def test_cycles_never_start_more_often_than_min_interval():
    d = Debouncer(quiet=1, max_delay=2, min_interval=60)
    d.touch(0)
    d.started(1)
    d.touch(2)
    assert d.deadline() == 61


def test_min_interval_does_not_hold_back_the_first_cycle():
    d = Debouncer(quiet=1, max_delay=2, min_interval=60)
    d.touch(0)
    assert d.deadline() == 1


def test_min_interval_holds_back_a_burst_that_ends_soon_after_a_cycle():
    d = Debouncer(quiet=5, max_delay=60, min_interval=30)
    writes = [0.0, 20.0, 21.0]
    assert simulate(d, writes, until=120) == [5, 35]


def test_a_started_cycle_takes_every_pending_write():
    d = Debouncer(quiet=5, max_delay=60, min_interval=10)
    d.touch(1)
    d.touch(2)
    d.started(7)
    assert d.deadline() is None
    assert not d.pending


def test_a_write_during_a_cycle_starts_a_new_debounce():
    d = Debouncer(quiet=5, max_delay=60, min_interval=1)
    d.touch(1)
    d.started(6)
    d.touch(6.5)             # seen while the cycle runs: its snapshot may have missed it
    assert d.deadline() == 11.5


def test_a_failed_cycle_stays_pending_and_is_retried_after_the_back_off():
    d = Debouncer(quiet=5, max_delay=60, min_interval=10)
    d.touch(0)
    d.started(5)
    d.retry(8, after=30)
    assert d.pending
    assert d.deadline() == 38
    assert not d.due(37)
    assert d.due(38)


def test_a_retry_is_not_sooner_than_min_interval_after_the_failed_start():
    d = Debouncer(quiet=5, max_delay=60, min_interval=60)
    d.touch(0)
    d.started(5)
    d.retry(6, after=1)
    assert d.deadline() == 65


def test_writes_after_a_failed_cycle_do_not_delay_its_retry_past_max_delay():
    # Constant writes: the retry's writes are already max_delay old, so the
    # retry runs at the back-off, not max_delay after the newest first write.
    d = Debouncer(quiet=5, max_delay=30, min_interval=1)
    for t in range(0, 31):
        d.touch(t)
    d.started(30)
    for t in range(31, 40):
        d.touch(t)
    d.retry(40, after=10)
    assert d.deadline() == 50


def test_a_retry_also_covers_writes_seen_after_the_failed_start():
    d = Debouncer(quiet=5, max_delay=60, min_interval=1)
    d.started(0)                 # a cycle with no write seen, e.g. the agent's first
    d.retry(2, after=10)
    d.touch(20)
    assert d.deadline() == 25
    d.started(25)
    assert d.deadline() is None


def test_a_successful_cycle_clears_the_back_off():
    d = Debouncer(quiet=5, max_delay=60, min_interval=1)
    d.touch(0)
    d.started(5)
    d.retry(6, after=100)
    d.started(106)
    d.touch(107)
    assert d.deadline() == 112


def test_negative_durations_are_refused():
    with pytest.raises(ValueError):
        Debouncer(quiet=-1, max_delay=60, min_interval=10)


def test_a_kick_is_due_at_once_without_waiting_for_quiet():
    d = Debouncer(quiet=5, max_delay=60, min_interval=10)
    d.touch(100)
    d.kick(101)
    assert d.deadline() == 101


def test_a_kick_with_nothing_written_is_pending_and_started_clears_it():
    d = Debouncer(quiet=5, max_delay=60, min_interval=10)
    d.kick(3)
    assert d.pending and d.due(3)
    d.started(3)
    assert d.deadline() is None


def test_a_kick_still_waits_for_min_interval():
    d = Debouncer(quiet=5, max_delay=60, min_interval=10)
    d.started(0)
    d.kick(2)
    assert d.deadline() == 10


def test_a_kicked_cycle_that_fails_is_retried_after_the_back_off():
    d = Debouncer(quiet=5, max_delay=60, min_interval=1)
    d.kick(0)
    d.started(0)
    d.retry(1, after=30)
    assert d.deadline() == 31
