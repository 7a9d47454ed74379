"""progress.py: a journal line every 30 s, a live file for status, no bar under systemd."""
import os

from pvezfsha import progress


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_a_long_stream_logs_every_30_s_with_percent_rate_and_eta(tmp_path, monkeypatch):
    monkeypatch.setenv("PVEZFSHA_RUN_DIR", str(tmp_path))
    clock, lines = Clock(), []
    p = progress.Progress("tank/a", "pve2", "full @s", 1000 << 20, lines.append, clock=clock,
                          wall=lambda: 1e9 + clock.t, bar=False)
    for t in range(1, 91):
        clock.t = float(t)
        p(t * (5 << 20))
    assert len(lines) == 3
    assert lines[0] == "tank/a -> pve2: full @s: 150.0 MiB of ~1000.0 MiB (15 %), 5.0 MiB/s, ETA 2 min 50 s"
    live = progress.live("tank/a", "pve2", now=1e9 + 90)
    assert live["bytes"] == 90 * (5 << 20) and live["estimate"] == 1000 << 20
    p.close()
    assert progress.live("tank/a", "pve2") is None and os.listdir(tmp_path / "progress") == []


def test_a_stream_larger_than_the_estimate_says_so():
    assert "more than the ~1.0 KiB estimated" in progress.describe(4096, 1024, 1.0)
    assert progress.describe(4096, None, 1.0) == "4.0 KiB, 4.0 KiB/s"


def test_a_file_left_by_a_killed_run_is_not_live(tmp_path, monkeypatch):
    monkeypatch.setenv("PVEZFSHA_RUN_DIR", str(tmp_path))
    progress.Progress("tank/a", "pve2", "full @s", None, lambda m: None, bar=False)
    path = next((tmp_path / "progress").iterdir())
    path.write_text(path.read_text().replace(f'"pid": {os.getpid()}', '"pid": 999999999'))
    assert progress.live("tank/a", "pve2") is None


def test_no_bar_under_systemd(monkeypatch):
    monkeypatch.setenv("INVOCATION_ID", "x")
    assert not progress.interactive()


def test_a_broken_terminal_never_stops_the_stream(tmp_path, monkeypatch):
    monkeypatch.setenv("PVEZFSHA_RUN_DIR", str(tmp_path))

    class Broken:
        def write(self, s):
            raise BrokenPipeError()

        def flush(self):
            pass
    clock = Clock()
    p = progress.Progress("tank/a", "pve2", "full @s", 100, lambda m: None, clock=clock, bar=True)
    monkeypatch.setattr(progress.sys, "stderr", Broken())
    clock.t = 1.0
    p(50)                               # no exception
    assert p.bar is False
