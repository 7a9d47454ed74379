"""The cluster record in pmxcfs: round trip, atomic writes, the cluster lock."""

import errno
import os
import time

import pytest

from pvezfsha.record import Record, Replica
from pvezfsha.record_store import RecordError, RecordStore


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
    monkeypatch.setattr("pvezfsha.record_store.os.rename", eacces)
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


GOOD = {"ctid": 103, "primary": "pve1", "epoch": 2, "changed": 1.5, "changed_by": "pve1", "reason": "planned",
        "replicas": {"pve2": {"tank/a": {"guid": 7, "snapshot": "s", "created": 1, "in_sync_at": 2.5}}}}


def damaged(tmp_path, **change):
    import json
    store = RecordStore(tmp_path)
    store.dir.mkdir(parents=True, exist_ok=True)
    store.path(103).write_text(json.dumps({**GOOD, **change}))
    with pytest.raises(RecordError) as e:
        store.read(103)
    msg = str(e.value)
    assert str(store.path(103)) in msg and "\n" not in msg
    return msg


def test_a_valid_record_file_is_read(tmp_path):
    import json
    store = RecordStore(tmp_path)
    store.dir.mkdir(parents=True)
    store.path(103).write_text(json.dumps(GOOD))
    rec = store.read(103)
    assert rec.epoch == 2 and rec.replicas["pve2"]["tank/a"] == Replica(7, "s", 1, 2.5)


def test_a_record_naming_another_container_is_refused(tmp_path):
    assert "ctid" in damaged(tmp_path, ctid=104)


@pytest.mark.parametrize("field,value", [
    ("ctid", "103"), ("ctid", True), ("primary", 5), ("epoch", None), ("epoch", -1), ("epoch", 1.5),
    ("epoch", "3"), ("epoch", True), ("changed", "now"), ("changed_by", None), ("reason", 3),
    ("replicas", None), ("replicas", []), ("replicas", {"pve2": None}), ("replicas", {"pve2": {"tank/a": 5}}),
])
def test_a_field_of_the_wrong_type_is_refused_naming_the_field(tmp_path, field, value):
    assert field in damaged(tmp_path, **{field: value})


@pytest.mark.parametrize("key,value", [("guid", "7"), ("guid", None), ("guid", -1), ("snapshot", 1),
                                       ("created", None), ("in_sync_at", "x")])
def test_a_replica_of_the_wrong_type_is_refused_naming_it(tmp_path, key, value):
    reps = {"pve2": {"tank/a": {**GOOD["replicas"]["pve2"]["tank/a"], key: value}}}
    assert f"replicas.pve2.tank/a.{key}" in damaged(tmp_path, replicas=reps)


def test_a_replica_with_a_missing_or_unknown_key_is_refused(tmp_path):
    assert "guid" in damaged(tmp_path, replicas={"pve2": {"tank/a": {"snapshot": "s", "created": 1}}})
    assert "colour" in damaged(tmp_path, replicas={"pve2": {"tank/a": {**GOOD["replicas"]["pve2"]["tank/a"],
                                                                       "colour": 1}}})


def test_a_record_that_is_not_an_object_is_refused(tmp_path):
    store = RecordStore(tmp_path)
    store.dir.mkdir(parents=True)
    store.path(103).write_text("[1, 2]")
    with pytest.raises(RecordError, match="damaged"):
        store.read(103)


def test_a_record_that_is_not_utf8_is_damaged_not_a_traceback(tmp_path):
    store = RecordStore(tmp_path)
    store.dir.mkdir(parents=True)
    store.path(103).write_bytes(b"\xff\xfe{}")
    with pytest.raises(RecordError, match="damaged"):
        store.read(103)
