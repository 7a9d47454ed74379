"""The replication cycle: when to snapshot, which holds are leaks, the
snapshot cache of a quiet cycle, fencing under the dataset lock."""

from pvezfsha import cycle
from pvezfsha.cycle import needs_snapshot, stale_step_holds
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


class FakeZfs:
    """Just what load_state reads: quick properties, bookmarks, full listing."""

    def __init__(self, snaps, bookmarks, changed, written=0):
        self.snaps, self.bookmarks, self.changed, self.written = snaps, bookmarks, changed, written
        self.full_reads = 0

    def quick_state(self, name, snapshots=()):
        from pvezfsha.zfs import Quick
        return Quick(True, self.written, self.changed)

    def list_bookmarks(self, name):
        return list(self.bookmarks)

    def read_state(self, name):
        self.full_reads += 1
        return DatasetState(name, True, snapshots=tuple(self.snaps), bookmarks=tuple(self.bookmarks),
                            written=self.written)


def cached_setup(tmp_path, monkeypatch, **kw):
    import time

    from pvezfsha import config
    monkeypatch.setenv("PVEZFSHA_RUN_DIR", str(tmp_path))
    newest = Version("pvezfsha_20261129T081500Z", 77, 5, 0)
    cursor = Version("pvezfsha_cursor_pve2_000000000000004d", 77, 5, 0, bookmark=True)
    fake = FakeZfs([Version("pvezfsha_20261129T080000Z", 76, 4, 0), newest], [cursor],
                   changed=int(time.time()) - 60, **kw)
    monkeypatch.setattr(cycle, "zfs", fake)
    return fake, config.Options(keep=10)


def test_a_quiet_dataset_is_read_in_full_once_then_from_the_cache(tmp_path, monkeypatch):
    fake, opts = cached_setup(tmp_path, monkeypatch)
    st, fast = cycle.load_state("tank/a", ["pve2"], opts)
    assert not fast and fake.full_reads == 1 and len(st.snapshots) == 2
    st, fast = cycle.load_state("tank/a", ["pve2"], opts)
    assert fast and fake.full_reads == 1 and st.newest.guid == 77


def test_new_writes_bypass_the_cache(tmp_path, monkeypatch):
    fake, opts = cached_setup(tmp_path, monkeypatch)
    cycle.load_state("tank/a", ["pve2"], opts)
    fake.written = 4096
    assert cycle.load_state("tank/a", ["pve2"], opts)[1] is False and fake.full_reads == 2


def test_a_snapshot_created_or_destroyed_bypasses_the_cache(tmp_path, monkeypatch):
    fake, opts = cached_setup(tmp_path, monkeypatch)
    cycle.load_state("tank/a", ["pve2"], opts)
    fake.changed += 1
    assert cycle.load_state("tank/a", ["pve2"], opts)[1] is False


def test_a_standby_behind_its_cursor_bypasses_the_cache(tmp_path, monkeypatch):
    fake, opts = cached_setup(tmp_path, monkeypatch)
    cycle.load_state("tank/a", ["pve2", "pve3"], opts)        # pve3 has no cursor
    assert cycle.load_state("tank/a", ["pve2", "pve3"], opts)[1] is False


def test_a_snapshots_changed_of_this_very_second_is_not_cached(tmp_path, monkeypatch):
    import time
    fake, opts = cached_setup(tmp_path, monkeypatch)
    fake.changed = int(time.time())
    cycle.load_state("tank/a", ["pve2"], opts)
    assert cycle.load_state("tank/a", ["pve2"], opts)[1] is False and fake.full_reads == 2


# -- fencing a node's own copies (issue 9, item 11) -----------------------------

def _fence_ctx(tmp_path, primary):
    from types import SimpleNamespace

    from pvezfsha.record import Record
    from pvezfsha.record_store import RecordStore
    store = RecordStore(tmp_path)
    store.write(Record(103, primary=primary, epoch=5))
    return SimpleNamespace(store=store)


def _fence_ct():
    from pvezfsha.config import Container, DatasetMap, Options
    return Container(103, (DatasetMap("tank/media"),), ("pve1", "pve2"), Options())


def test_fencing_demotes_when_the_record_still_names_another_node(tmp_path, monkeypatch):
    monkeypatch.setenv("PVEZFSHA_RUN_DIR", str(tmp_path / "run"))
    demoted = []
    monkeypatch.setattr(cycle.replica, "demote", lambda ds, why, prefix: demoted.append(ds))
    cycle.fence_local(_fence_ctx(tmp_path, "pve2"), _fence_ct(), "pve1")
    assert demoted == ["tank/media"]


def test_fencing_leaves_a_dataset_alone_once_a_takeover_here_promoted_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PVEZFSHA_RUN_DIR", str(tmp_path / "run"))
    demoted = []
    monkeypatch.setattr(cycle.replica, "demote", lambda ds, why, prefix: demoted.append(ds))
    cycle.fence_local(_fence_ctx(tmp_path, "pve1"), _fence_ct(), "pve1")   # re-read under the lock
    assert demoted == []


def test_fencing_skips_a_dataset_a_promotion_holds(tmp_path, monkeypatch):
    monkeypatch.setenv("PVEZFSHA_RUN_DIR", str(tmp_path / "run"))
    demoted = []
    monkeypatch.setattr(cycle.replica, "demote", lambda ds, why, prefix: demoted.append(ds))
    with cycle.dataset_lock("tank/media", "promote"):
        cycle.fence_local(_fence_ctx(tmp_path, "pve2"), _fence_ct(), "pve1")
    assert demoted == []


def test_a_dataset_the_takeover_here_has_not_promoted_yet_is_left_alone(monkeypatch):
    from pvezfsha import config, zfs
    ct = config.parse('[[container]]\nctid = 103\ndatasets = ["tank/a", "tank/b"]\nnodes = ["pve1", "pve2"]\n'
                      ).containers[103]
    quick = {"tank/a": zfs.Quick(True, 0, None, True, "noauto", False, {}, {"pvezfsha:epoch": "3"}, False),
             "tank/b": zfs.Quick(True, 0, None, False, "on", False, {}, {"pvezfsha:epoch": "4"}, True)}
    monkeypatch.setattr(cycle.zfs, "quick_state", lambda name, snaps=(): quick[name])
    assert cycle.promotion_pending(ct, "pve1", 4) == {"tank/a"}
    assert cycle.promotion_pending(ct, "pve1", 3) == set()
