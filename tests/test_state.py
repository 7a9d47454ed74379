"""Per-dataset locks, and ending a receive that holds one."""

import os
import subprocess
import sys
import time

import pytest

from pvezfsha import state
from pvezfsha.state import Locked, dataset_lock, stop_receive


@pytest.fixture(autouse=True)
def run_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("PVEZFSHA_RUN_DIR", str(tmp_path))


def holder(dataset: str, what: str) -> subprocess.Popen:
    """A process named like pvezfsha that holds the dataset's lock."""
    code = ("import sys, time; sys.argv[0] = 'pvezfsha'; from pvezfsha.state import dataset_lock\n"
            f"with dataset_lock({dataset!r}, {what!r}):\n    print('held', flush=True); time.sleep(60)")
    p = subprocess.Popen([sys.executable, "-c", code, "pvezfsha"], stdout=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_second_run_on_the_same_dataset_is_refused_at_once():
    with dataset_lock("tank/media"):
        with pytest.raises(Locked, match="tank/media is busy"):
            with dataset_lock("tank/media"):
                pass


def test_a_held_receive_lock_is_ended():
    p = holder("tank/media", "receive")
    try:
        assert stop_receive("tank/media", timeout=1) == p.pid   # our child stays a zombie until reaped
        assert p.wait(5) == -9
    finally:
        p.kill()


def test_a_lock_file_left_by_a_finished_receive_kills_nobody():
    # The file still names a pid; that pid now belongs to another pvezfsha process
    # which does not hold the lock (a recycled pid).
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "pvezfsha"])
    try:
        with dataset_lock("tank/media", "receive"):
            pass
        path = state._lock_path("tank/media")
        path.write_text(f"receive pid {other.pid}\n")
        assert stop_receive("tank/media", timeout=1) is None
        time.sleep(0.2)
        assert other.poll() is None
    finally:
        other.kill()


def test_a_final_push_waits_for_a_busy_dataset_and_gets_it_when_freed(tmp_path, monkeypatch):
    import threading
    import time as _time
    monkeypatch.setenv("PVEZFSHA_RUN_DIR", str(tmp_path))
    held = state.dataset_lock("tank/media", "sync")
    held.__enter__()
    threading.Timer(0.5, lambda: held.__exit__(None, None, None)).start()
    t0 = _time.monotonic()
    with state.dataset_lock("tank/media", "transfer", wait=10):
        assert 0.4 < _time.monotonic() - t0 < 5


def test_a_final_push_gives_up_on_a_dataset_that_stays_busy(tmp_path, monkeypatch):
    monkeypatch.setenv("PVEZFSHA_RUN_DIR", str(tmp_path))
    with state.dataset_lock("tank/media", "sync"):
        with pytest.raises(state.Locked, match="busy"):
            with state.dataset_lock("tank/media", "transfer", wait=0.5):
                pass
