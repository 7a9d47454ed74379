"""zfs.py's reading of a dataset, against a stand-in for libzfs_core that
answers the way a given OpenZFS release's channel programs do."""

from types import SimpleNamespace

from pvezfsha import zfs


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
