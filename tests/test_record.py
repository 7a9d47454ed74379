"""The cluster record in pmxcfs: round trip, atomic writes, the cluster lock."""

import errno
import os
import time

import pytest

from pvezfsha.record import Record, RecordError, RecordStore, Replica


def test_record_round_trips_through_pmxcfs(tmp_path):
    store = RecordStore(tmp_path)
    rec = Record(103, primary="pve1", epoch=2, replicas={"pve2": {"tank/a": Replica(2**64 - 1, "s", 1.0, 2.0)}})
    store.write(rec)
    assert store.read(103) == rec
    assert (tmp_path / "priv" / "pvezfsha" / "103.json").exists()
    assert not [p for p in (tmp_path / "priv" / "pvezfsha").iterdir() if p.name.startswith(".")]


def test_missing_record_is_none(tmp_path):
    assert RecordStore(tmp_path).read(103) is None


def test_damaged_record_is_an_error_not_a_guess(tmp_path):
    store = RecordStore(tmp_path)
    store.dir.mkdir(parents=True)
    store.path(103).write_text("{not json")
    with pytest.raises(RecordError, match="damaged"):
        store.read(103)


def test_write_without_quorum_fails_and_leaves_no_temp_file(tmp_path, monkeypatch):
    store = RecordStore(tmp_path)
    store.write(Record(103, primary="pve1", epoch=1))

    def eacces(*a):
        raise PermissionError(errno.EACCES, "Permission denied")
    monkeypatch.setattr("pvezfsha.record.os.rename", eacces)
    with pytest.raises(RecordError, match="no quorum"):
        store.write(Record(103, primary="pve2", epoch=2))
    monkeypatch.undo()
    assert store.read(103).primary == "pve1"
    assert [p.name for p in store.dir.iterdir()] == ["103.json"]


def test_cluster_lock_is_exclusive_and_released(tmp_path):
    store = RecordStore(tmp_path)
    with store.locked(103):
        with pytest.raises(RecordError, match="held by another node"):
            with store.locked(103, timeout=0.6):
                pass
    with store.locked(103, timeout=0.1):
        pass


def test_lock_older_than_its_lifetime_is_taken_over(tmp_path):
    store = RecordStore(tmp_path)
    (store.lock_dir / "pvezfsha-103").mkdir(parents=True)
    old = time.time() - 200
    os.utime(store.lock_dir / "pvezfsha-103", (old, old))
    with store.locked(103, timeout=0.1):
        pass
