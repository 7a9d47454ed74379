"""Which datasets were written to: TreeWatcher on real inotify over tmp_path
trees, and WrittenPoller with a stand-in for `written`."""

import errno
import os
import subprocess
import time

import pytest

from pvezfsha import watch
from pvezfsha.watch import TreeWatcher, WrittenPoller


@pytest.fixture
def warnings(monkeypatch):
    said = []

    class Logger:
        def warning(self, msg):
            said.append(msg)

    monkeypatch.setattr(watch, "logger", Logger())
    return said


def dirs(root, *paths):
    root.mkdir(parents=True, exist_ok=True)
    for p in paths:
        (root / p).mkdir(parents=True, exist_ok=True)
    return root


def started(roots, **kw) -> TreeWatcher:
    w = TreeWatcher({ds: str(p) for ds, p in roots.items()}, **kw)
    w.start()
    return w


def kernel_watches(w: TreeWatcher) -> int:
    """Watches the kernel holds for `w`, not what `w` believes."""
    with open(f"/proc/self/fdinfo/{w.fileno()}") as f:
        return sum(line.startswith("inotify wd:") for line in f)


def until(cond, seconds=2.0):
    end = time.monotonic() + seconds
    while not cond() and time.monotonic() < end:
        time.sleep(0.01)
    return cond()


def test_a_write_in_a_nested_directory_is_reported_for_its_dataset(tmp_path):
    a, b = dirs(tmp_path / "a", "x/y/z"), dirs(tmp_path / "b", "x")
    with started({"tank/a": a, "tank/b": b}) as w:
        assert w.watched == 4 + 2
        (a / "x/y/z/file").write_text("data")
        assert w.read(1000) == {"tank/a"}
        (b / "x/file").write_text("data")
        assert w.read(1000) == {"tank/b"}


def test_read_0_returns_at_once_when_nothing_changed(tmp_path):
    # Also: walking the trees is not itself reported as a change.
    with started({"tank/a": dirs(tmp_path / "a", "x/y")}) as w:
        t0 = time.monotonic()
        assert w.read(0) == set()
        assert time.monotonic() - t0 < 0.1


def test_read_waits_up_to_its_timeout(tmp_path):
    with started({"tank/a": dirs(tmp_path / "a", "x")}) as w:
        t0 = time.monotonic()
        assert w.read(150) == set()
        assert 0.14 <= time.monotonic() - t0 < 1


def test_a_tree_made_after_start_is_watched_to_its_depth(tmp_path):
    a = dirs(tmp_path / "a")
    with started({"tank/a": a}) as w:
        # Made in one go: the deeper ones exist before the first one's watch does.
        (a / "n/m/k").mkdir(parents=True)
        assert w.read(1000) == {"tank/a"}
        assert {str(a / "n"), str(a / "n/m"), str(a / "n/m/k")} <= w.paths()
        (a / "n/m/k/file").write_text("data")
        assert w.read(1000) == {"tank/a"}


def test_a_directory_moved_in_is_walked(tmp_path):
    a, outside = dirs(tmp_path / "a"), dirs(tmp_path / "outside", "t/u")
    with started({"tank/a": a}) as w:
        os.rename(outside / "t", a / "t")
        assert w.read(1000) == {"tank/a"}
        (a / "t/u/file").write_text("data")
        assert w.read(1000) == {"tank/a"}


def test_a_renamed_directory_is_still_watched_under_its_new_name(tmp_path):
    a = dirs(tmp_path / "a", "x/y")
    with started({"tank/a": a}) as w:
        os.rename(a / "x", a / "renamed")
        assert w.read(1000) == {"tank/a"}
        assert w.paths() == {str(a), str(a / "renamed"), str(a / "renamed/y")}
        # A directory made in it later is found by its new path.
        (a / "renamed/y/new").mkdir()
        assert w.read(1000) == {"tank/a"}
        (a / "renamed/y/new/file").write_text("data")
        assert w.read(1000) == {"tank/a"}


def test_a_symlink_to_a_directory_outside_is_not_followed(tmp_path):
    a, outside = dirs(tmp_path / "a", "x"), dirs(tmp_path / "outside", "deep")
    (a / "link").symlink_to(outside)
    (a / "x/link").symlink_to(outside / "deep")
    with started({"tank/a": a}) as w:
        assert w.paths() == {str(a), str(a / "x")}
        (outside / "file").write_text("data")
        (outside / "deep/file").write_text("data")
        assert w.read(200) == set()


def test_a_symlink_made_after_start_is_not_followed(tmp_path):
    a, outside = dirs(tmp_path / "a"), dirs(tmp_path / "outside")
    with started({"tank/a": a}) as w:
        (a / "link").symlink_to(outside)
        assert w.read(1000) == {"tank/a"}          # the link itself is a change
        assert w.watched == 1
        (outside / "file").write_text("data")
        assert w.read(200) == set()


def test_a_fifo_neither_blocks_the_walk_nor_opens_as_a_directory(tmp_path):
    a = dirs(tmp_path / "a", "x")
    os.mkfifo(a / "x/fifo")
    with started({"tank/a": a}) as w:
        assert w.watched == 2
    with pytest.raises(NotADirectoryError):
        watch._open_dir(str(a / "x/fifo"))


def test_the_root_s_zfs_directory_is_not_walked(tmp_path):
    # .zfs/snapshot/<name> would mount every snapshot.
    a = dirs(tmp_path / "a", ".zfs/snapshot/s1", "x/.zfs")
    with started({"tank/a": a}) as w:
        assert w.paths() == {str(a), str(a / "x"), str(a / "x/.zfs")}


def test_another_file_system_mounted_in_the_tree_is_not_walked(tmp_path):
    a = dirs(tmp_path / "a", "child/inside")
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(a / "child")],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        (a / "child/sub").mkdir()
        with started({"tank/a": a}) as w:
            assert w.paths() == {str(a)}
            (a / "child/sub/file").write_text("data")
            assert w.read(200) == set()
    finally:
        subprocess.run(["umount", str(a / "child")], check=True)


def test_a_deleted_directory_s_watch_is_dropped(tmp_path):
    a = dirs(tmp_path / "a", "x/y")
    with started({"tank/a": a}) as w:
        assert w.watched == 3
        (a / "x/y").rmdir()
        assert w.read(1000) == {"tank/a"}
        assert until(lambda: w.read(0) is not None and w.watched == 2)   # IN_IGNORED may come later
        assert w.paths() == {str(a), str(a / "x")}
        assert kernel_watches(w) == 2


def test_a_removed_root_sends_its_dataset_to_polling(tmp_path, warnings):
    a, b = dirs(tmp_path / "a"), dirs(tmp_path / "b")
    with started({"tank/a": a, "tank/b": b}) as w:
        a.rmdir()
        assert w.read(1000) == {"tank/a"}
        assert w.polled == {"tank/a"}
        assert w.paths() == {str(b)}
        assert len(warnings) == 1 and "tank/a" in warnings[0]


def test_a_root_that_cannot_be_watched_is_polled_from_the_start(tmp_path, warnings):
    b = dirs(tmp_path / "b")
    with started({"tank/a": tmp_path / "not-mounted", "tank/b": b}) as w:
        assert w.polled == {"tank/a"}
        assert w.paths() == {str(b)}
        assert w.read(0) == {"tank/a"}             # unknown what it missed: treated as changed


def test_over_budget_a_dataset_is_polled_its_watches_freed_and_the_others_kept(tmp_path, warnings):
    big = dirs(tmp_path / "big", *(f"d{i}/e" for i in range(10)))
    small = dirs(tmp_path / "small", "x", "y")
    with started({"tank/big": big, "tank/small": small}, budget=5) as w:
        assert w.polled == {"tank/big"}
        assert w.paths() == {str(small), str(small / "x"), str(small / "y")}
        assert kernel_watches(w) == 3
        assert w.read(0) == {"tank/big"}
        (big / "d3/e/file").write_text("data")
        assert w.read(200) == set()
        (small / "x/file").write_text("data")
        assert w.read(1000) == {"tank/small"}
    assert len(warnings) == 1
    assert "tank/big" in warnings[0] and "fs.inotify.max_user_watches" in warnings[0]
    assert "watch budget of 5" in warnings[0]


def test_the_walk_stops_as_soon_as_the_budget_is_exceeded(tmp_path, monkeypatch, warnings):
    wide = dirs(tmp_path / "wide", *(f"d{i:03}/e" for i in range(300)))
    deep = dirs(tmp_path / "deep", "/".join(["d"] * 100))
    listed = []
    scandir = os.scandir
    monkeypatch.setattr(os, "scandir", lambda fd: listed.append(fd) or scandir(fd))
    with started({"tank/wide": wide, "tank/deep": deep}, budget=10) as w:
        assert w.polled == {"tank/wide", "tank/deep"}
        assert w.watched == kernel_watches(w) == 0
    assert len(listed) <= 1 + 11       # the wide root alone, then the deep chain up to the budget


def test_a_tree_that_outgrows_the_budget_while_watched_is_polled(tmp_path, warnings):
    a, b = dirs(tmp_path / "a"), dirs(tmp_path / "b")
    with started({"tank/a": a, "tank/b": b}, budget=4) as w:
        (a / "p/q/r/s").mkdir(parents=True)
        assert w.read(1000) == {"tank/a"}
        assert w.polled == {"tank/a"}
        assert w.paths() == {str(b)}
        assert len(warnings) == 1


def test_the_kernel_watch_limit_sends_the_dataset_to_polling(tmp_path, warnings):
    a, b = dirs(tmp_path / "a", "x", "y", "z"), dirs(tmp_path / "b", "x")
    w = TreeWatcher({"tank/b": str(b), "tank/a": str(a)})
    real, calls = w._inotify.add_watch, []

    def add_watch(path, mask):
        calls.append(path)
        if len(calls) > 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path, mask)

    w._inotify.add_watch = add_watch
    with w:
        w.start()
        assert w.polled == {"tank/a"}
        assert w.paths() == {str(b), str(b / "x")}
        assert kernel_watches(w) == 2
    assert len(warnings) == 1
    assert "tank/a" in warnings[0] and "fs.inotify.max_user_watches" in warnings[0]


def test_a_directory_vanishing_during_the_walk_is_skipped(tmp_path, monkeypatch, warnings):
    a = dirs(tmp_path / "a", "x", "gone")
    real = watch._open_dir

    def open_dir(name, dir_fd=None):
        if name == "gone":
            raise FileNotFoundError(errno.ENOENT, "gone")
        return real(name, dir_fd)

    monkeypatch.setattr(watch, "_open_dir", open_dir)
    with started({"tank/a": a}) as w:
        assert w.polled == set()
        assert w.paths() == {str(a), str(a / "x")}
    assert warnings == []


def test_any_other_error_on_a_directory_sends_the_dataset_to_polling(tmp_path, monkeypatch, warnings):
    a = dirs(tmp_path / "a", "x", "locked")
    real = watch._open_dir

    def open_dir(name, dir_fd=None):
        if name == "locked":
            raise PermissionError(errno.EACCES, "Permission denied")
        return real(name, dir_fd)

    monkeypatch.setattr(watch, "_open_dir", open_dir)
    with started({"tank/a": a}) as w:
        assert w.polled == {"tank/a"}
        assert w.watched == 0
    assert len(warnings) == 1 and "Permission denied" in warnings[0]


def test_after_lost_events_every_dataset_is_changed_and_new_directories_are_watched(tmp_path):
    limit = int(open("/proc/sys/fs/inotify/max_queued_events").read())
    if limit > 50_000:
        pytest.skip("fs.inotify.max_queued_events too large to overflow quickly")
    a, b = dirs(tmp_path / "a", "old"), dirs(tmp_path / "b")
    with started({"tank/a": a, "tank/b": b}) as w:
        files = [a / "f1", a / "f2"]
        for f in files:
            f.touch()
        for i in range(limit + 10):             # IN_ATTRIB, on two files in turn so none merge
            os.utime(files[i % 2])
        (a / "new/deeper").mkdir(parents=True)  # its IN_CREATE is lost
        (a / "old").rmdir()                     # so may be its IN_IGNORED
        assert w.read(1000) == {"tank/a", "tank/b"}
        assert w.paths() == {str(a), str(a / "new"), str(a / "new/deeper"), str(b)}
        assert kernel_watches(w) == 4
        w.read(0)
        (a / "new/deeper/file").write_text("data")
        assert w.read(1000) == {"tank/a"}


def test_closing_releases_the_inotify_descriptor(tmp_path):
    with started({"tank/a": dirs(tmp_path / "a")}) as w:
        fd = w.fileno()
        assert fd >= 0
    assert w.watched == 0
    with pytest.raises(ValueError):
        w.fileno()


def test_written_poller_reports_datasets_whose_written_changed_to_non_zero():
    answers = iter([
        {"tank/a": 100, "tank/b": 0, "tank/c": 5},      # first poll: recorded only
        {"tank/a": 100, "tank/b": 0, "tank/c": 5},      # nothing changed
        {"tank/a": 150, "tank/b": 7, "tank/c": 0},      # a and b written to; c snapshotted
        {"tank/a": 150, "tank/b": 7, "tank/c": 0, "tank/d": 3},   # d appeared, with writes
    ])
    asked = []
    p = WrittenPoller(["tank/a", "tank/b", "tank/c", "tank/d"], read=lambda names: asked.append(names) or next(answers))
    assert p.poll() == set()
    assert p.poll() == set()
    assert p.poll() == {"tank/a", "tank/b"}
    assert p.poll() == {"tank/d"}
    assert asked[0] == ["tank/a", "tank/b", "tank/c", "tank/d"]


def test_written_poller_reports_a_dataset_that_comes_back_not_one_that_went_missing():
    answers = iter([{"tank/a": 10}, {}, {"tank/a": 10}])
    p = WrittenPoller(["tank/a"], read=lambda names: next(answers))
    assert [p.poll(), p.poll(), p.poll()] == [set(), set(), {"tank/a"}]


def test_a_write_to_a_file_held_open_is_seen_before_it_is_closed(tmp_path):
    # A file server keeps the file open (smbd, knfsd's file cache).
    (tmp_path / "a").mkdir()
    f = open(tmp_path / "a" / "held", "w")
    try:
        with TreeWatcher({"tank/a": str(tmp_path / "a")}) as w:
            w.start()
            f.write("x")
            f.flush()
            assert w.read(1000) == {"tank/a"}
    finally:
        f.close()


def test_a_tree_made_in_a_watched_directory_then_renamed_before_the_events_are_read_is_watched(tmp_path):
    # mkdir -p tmp/pkg/sub; mv tmp final: the CREATE of pkg names a path
    # (tmp/pkg) that is gone by the time it is read.
    a = dirs(tmp_path / "a", "tmp")
    with started({"tank/a": a}) as w:
        (a / "tmp/pkg/sub").mkdir(parents=True)
        os.rename(a / "tmp", a / "final")
        assert w.read(1000) == {"tank/a"}
        w.read(0)
        (a / "final/pkg/sub/file").write_text("data")
        assert w.read(1000) == {"tank/a"}
        assert {str(a / "final/pkg"), str(a / "final/pkg/sub")} <= w.paths()


def test_a_symlink_swapped_in_for_a_renamed_directory_is_not_followed(tmp_path):
    # mkdir -p A/B; mv A A2; ln -s <outside> A, before the events are read:
    # the CREATE of B in the watched A must not open <outside>/B.
    a, outside = dirs(tmp_path / "a", "A"), dirs(tmp_path / "outside", "B")
    with started({"tank/a": a}) as w:
        (a / "A/B").mkdir()
        os.rename(a / "A", a / "A2")
        (a / "A").symlink_to(outside)
        assert w.read(1000) == {"tank/a"}
        w.read(0)
        (outside / "B/file").write_text("data")
        assert w.read(200) == set()
        (a / "A2/B/file").write_text("data")
        assert w.read(1000) == {"tank/a"}


def test_directories_below_a_root_are_opened_one_name_at_a_time_relative_to_their_parent(tmp_path, monkeypatch):
    # A path of several names would follow a symlink in any but the last.
    a = dirs(tmp_path / "a", "x/y")
    opened = []
    real = os.open

    def spy(path, flags, mode=0o777, *, dir_fd=None):
        opened.append((path, dir_fd, flags))
        return real(path, flags, mode, dir_fd=dir_fd)

    with TreeWatcher({"tank/a": str(a)}) as w:
        monkeypatch.setattr(os, "open", spy)
        w.start()
        (a / "x/y/z").mkdir()
        assert w.read(1000) == {"tank/a"}
        monkeypatch.undo()
        assert str(a / "x/y/z") in w.paths()
    below = [(p, fd, fl) for p, fd, fl in opened if p != str(a)]
    assert below and all(fd is not None and "/" not in p for p, fd, _ in below)
    assert all(fl & os.O_NOFOLLOW and fl & os.O_DIRECTORY for _, _, fl in opened)


def test_a_directory_moved_in_is_walked_again_even_if_it_was_watched_already(tmp_path):
    # Made in x while x was watched, moved to y: its subdirectory's CREATE
    # came with a name that no longer led to it.
    a = dirs(tmp_path / "a", "x/t", "y")
    with started({"tank/a": a}) as w:
        (a / "x/t/new").mkdir()
        os.rename(a / "x/t", a / "y/t")
        assert w.read(1000) == {"tank/a"}
        w.read(0)
        (a / "y/t/new/file").write_text("data")
        assert w.read(1000) == {"tank/a"}


def test_a_walk_calls_tick_at_least_every_500_directories_during_start(tmp_path):
    a = dirs(tmp_path / "a", *(f"d{i:02}/e{j:02}" for i in range(40) for j in range(30)))
    ticks = []
    w = TreeWatcher({"tank/a": str(a)}, tick=lambda: ticks.append(w.watched))
    with w:
        w.start()
        assert w.watched == 1 + 40 + 40 * 30
        marks = [0, *ticks, w.watched]
        assert len(ticks) >= 2
        assert max(b - a for a, b in zip(marks, marks[1:])) <= 500


def test_a_walk_calls_tick_at_least_every_500_directories_for_a_tree_moved_in(tmp_path):
    a = dirs(tmp_path / "a")
    big = dirs(tmp_path / "outside/big", *(f"d{i:02}/e{j:02}" for i in range(40) for j in range(30)))
    ticks = []
    w = TreeWatcher({"tank/a": str(a)}, tick=lambda: ticks.append(w.watched))
    with w:
        w.start()
        ticks.clear()
        os.rename(big, a / "big")
        assert w.read(1000) == {"tank/a"}
        assert w.watched == 1 + 1 + 40 + 40 * 30
        marks = [1, *ticks, w.watched]
        assert len(ticks) >= 2
        assert max(b - a for a, b in zip(marks, marks[1:])) <= 500


def overflow(w: TreeWatcher, f1, f2):
    """Queue more events than the kernel keeps: IN_ATTRIB, on two files in
    turn so that none merge."""
    limit = int(open("/proc/sys/fs/inotify/max_queued_events").read())
    if limit > 50_000:
        pytest.skip("fs.inotify.max_queued_events too large to overflow quickly")
    f1.touch()
    f2.touch()
    for i in range(limit + 10):
        os.utime((f1, f2)[i % 2])


def test_lost_events_rescan_the_trees_at_most_once_a_minute_but_always_report_every_dataset(tmp_path, monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(watch, "_clock", lambda: now[0])
    a, b = dirs(tmp_path / "a"), dirs(tmp_path / "b")
    with started({"tank/a": a, "tank/b": b}) as w:
        overflow(w, a / "f1", a / "f2")
        (a / "first").mkdir()                   # its IN_CREATE is lost
        assert w.read(1000) == {"tank/a", "tank/b"}
        assert str(a / "first") in w.paths()    # rescanned: the first overflow
        w.read(0)

        now[0] += 30
        overflow(w, a / "f1", a / "f2")
        (a / "second").mkdir()
        assert w.read(1000) == {"tank/a", "tank/b"}
        assert str(a / "second") not in w.paths()   # too soon: only reported
        assert w.read(0) == set()
        assert w.next_rescan == 1000 + 60            # a minute after the first

        now[0] += 31                            # a minute since the last rescan
        assert w.read(0) == {"tank/a", "tank/b"}
        assert str(a / "second") in w.paths()
        assert w.next_rescan is None
        (a / "second/file").write_text("data")
        assert w.read(1000) == {"tank/a"}


def test_written_poller_reset_makes_the_next_poll_compare_against_zero():
    # A snapshot reset `written`; a write as large as the last poll's value
    # then looks like no change, unless the poller was reset.
    answers = iter([{"tank/a": 100, "tank/b": 100, "tank/c": 7},
                    {"tank/a": 100, "tank/b": 0, "tank/c": 7},
                    {"tank/a": 100, "tank/b": 0, "tank/c": 7}])
    p = WrittenPoller(["tank/a", "tank/b", "tank/c"], read=lambda names: next(answers))
    assert p.poll() == set()
    p.reset()
    assert p.poll() == {"tank/a", "tank/c"}     # b: nothing since the snapshot
    assert p.poll() == set()                    # compared with the last poll again


def chain(n):
    return "/".join(["d"] * n)


def test_a_tree_deeper_than_the_descriptors_a_walk_keeps_is_walked_whole(tmp_path, monkeypatch):
    # x is closed while one of its chains is walked, and opened again for the other.
    a = dirs(tmp_path / "a", "x/p/" + chain(60), "x/q/" + chain(60))
    fds = []
    real = watch._subdirs
    monkeypatch.setattr(watch, "_subdirs", lambda fd, root: fds.append(len(os.listdir("/proc/self/fd"))) or real(fd, root))
    before = len(os.listdir("/proc/self/fd"))
    with started({"tank/a": a}) as w:
        assert w.watched == 1 + 1 + 2 * 61
        assert max(fds) - before <= watch._FDS + 3
        (a / "x/p" / chain(60) / "file").write_text("data")
        assert w.read(1000) == {"tank/a"}
        (a / "x/q" / chain(60) / "file").write_text("data")
        assert w.read(1000) == {"tank/a"}
    assert len(os.listdir("/proc/self/fd")) == before


def test_a_directory_renamed_while_its_subtree_is_walked_is_walked_again_under_its_new_name(tmp_path, monkeypatch):
    a = dirs(tmp_path / "a", "x/p/" + chain(50), "x/q/" + chain(50))
    listed = []
    real = watch._subdirs

    def subdirs(fd, root):
        listed.append(fd)
        if len(listed) == 45:           # deep in the first chain walked: x is closed
            os.rename(a / "x", a / "y")
        return real(fd, root)

    monkeypatch.setattr(watch, "_subdirs", subdirs)
    with started({"tank/a": a}) as w:
        assert w.watched < 1 + 1 + 2 * 51      # the other chain is left for the rename's event
        assert w.read(1000) == {"tank/a"}
        assert w.watched == 1 + 1 + 2 * 51
        for sub in ("p", "q"):
            (a / "y" / sub / chain(50) / "file").write_text("data")
            assert w.read(1000) == {"tank/a"}
