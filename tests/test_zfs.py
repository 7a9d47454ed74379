"""zfs.py's reading of a dataset, against a stand-in for libzfs_core that
answers the way a given OpenZFS release's channel programs do."""

from types import SimpleNamespace

import pytest

from pvezfsha import zfs
from pvezfsha.errors import ZfsError


def answer(**props):
    base = {b"exists": True, b"snaps": {}, b"bookmarks": {}, b"token": None, b"written": 0, b"referenced": 0,
            b"readonly": b"off", b"canmount": b"on", b"origin": None, b"props": {}}
    return {**base, **{k.encode(): v for k, v in props.items()}}


def test_an_encrypted_dataset_is_known_by_its_keyformat_where_encryption_reads_off(monkeypatch):
    # OpenZFS before 2.3.3 (PVE 8): a channel program reads `encryption` as
    # off on every dataset (openzfs/zfs#12337), but keyformat from the crypto stats.
    res = answer(encryption=b"off", keyformat=b"raw")
    monkeypatch.setattr(zfs, "lzc", SimpleNamespace(lzc_channel_program_nosync=lambda *a, **k: res))
    monkeypatch.setattr(zfs, "mountpoint", lambda ds: None)
    assert zfs.read_state("tank/secret").encrypted


def test_an_unencrypted_dataset_reads_keyformat_none(monkeypatch):
    res = answer(keyformat=b"none")
    monkeypatch.setattr(zfs, "lzc", SimpleNamespace(lzc_channel_program_nosync=lambda *a, **k: res))
    monkeypatch.setattr(zfs, "mountpoint", lambda ds: None)
    assert not zfs.read_state("tank/media").encrypted


def test_written_many_runs_one_program_per_pool_with_the_names_as_arguments(monkeypatch):
    calls = []
    present = {b"tank/a": 10, b"tank/b/c": 0, b"rpool/data/x": 7}

    def program(pool, prog, **kw):
        calls.append((pool, kw["params"]))
        return {n: present[n] for n in kw["params"] if n in present}

    monkeypatch.setattr(zfs, "lzc", SimpleNamespace(lzc_channel_program_nosync=program))
    got = zfs.written_many(["tank/a", "rpool/data/x", "tank/b/c", "tank/gone", "tank/a"])
    assert got == {"tank/a": 10, "tank/b/c": 0, "rpool/data/x": 7}        # tank/gone left out
    assert sorted(calls) == [(b"rpool", [b"rpool/data/x"]), (b"tank", [b"tank/a", b"tank/b/c", b"tank/gone"])]
    assert b"tank" not in zfs._WRITTEN_PROGRAM                              # names are arguments, not source


def test_written_many_of_nothing_runs_no_program(monkeypatch):
    monkeypatch.setattr(zfs, "lzc", SimpleNamespace(lzc_channel_program_nosync=lambda *a, **k: 1 / 0))
    assert zfs.written_many([]) == {}


def test_written_many_leaves_out_a_missing_pool_and_wraps_other_errors(monkeypatch):
    class ZFSError(Exception):
        errno = 5

    class PoolNotFound(ZFSError):
        pass

    def program(pool, prog, **kw):
        if pool == b"gone":
            raise PoolNotFound()
        if pool == b"sick":
            raise ZFSError("I/O error")
        return {b"tank/a": 3}

    monkeypatch.setattr(zfs, "lzc", SimpleNamespace(lzc_channel_program_nosync=program))
    monkeypatch.setattr(zfs, "lzc_exc", SimpleNamespace(ZFSError=ZFSError, PoolNotFound=PoolNotFound,
                                                        MultipleOperationsFailure=()))
    assert zfs.written_many(["gone/x", "tank/a"]) == {"tank/a": 3}
    with pytest.raises(ZfsError, match="sick/y"):
        zfs.written_many(["tank/a", "sick/y"])
