"""Pure parts of the sync cycle: when to snapshot, which holds are leaks,
when a container is due."""

from pvezfsha.sync import needs_snapshot, stale_step_holds
from pvezfsha.versions import DatasetState, Version


def v(name, txg):
    return Version(name, txg, txg, 0)


def test_no_snapshot_when_nothing_was_written_since_ours():
    st = DatasetState("d", True, snapshots=(v("pvezfsha_20261129T081500Z", 1),))
    assert not needs_snapshot(st, "pvezfsha")


def test_snapshot_when_something_was_written():
    st = DatasetState("d", True, snapshots=(v("pvezfsha_20261129T081500Z", 1),), written=1)
    assert needs_snapshot(st, "pvezfsha")


def test_snapshot_when_another_tools_snapshot_is_newest():
    # written counts only since sanoid's snapshot, which may hide our changes.
    st = DatasetState("d", True, snapshots=(v("pvezfsha_20261129T081500Z", 1), v("autosnap_x", 2)))
    assert needs_snapshot(st, "pvezfsha")


def test_step_holds_of_nodes_that_left_the_group_are_leaks():
    st = DatasetState("d", True, snapshots=(
        Version("a", 1, 1, 0, holds=("pvezfsha-step-pve2", "pvezfsha-step-pve9", "sanoid")),
        Version("b", 2, 2, 0, holds=("pvezfsha-step-pve3",))))
    assert stale_step_holds(st, "tank/d", ("pve1", "pve2", "pve3")) == {"tank/d@a": ["pvezfsha-step-pve9"]}


def test_a_container_is_due_once_its_interval_has_passed(tmp_path, monkeypatch):
    from pvezfsha.sync import due, mark_cycle
    monkeypatch.setenv("PVEZFSHA_RUN_DIR", str(tmp_path))
    assert due(103, 600, now=1000)            # never ran on this node
    mark_cycle(103, 1000)
    assert not due(103, 600, now=1300)
    assert due(103, 600, now=1580)            # 30 s slack for a 1-minute timer
