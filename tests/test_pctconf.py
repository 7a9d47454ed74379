"""Container config parsing: PVE's mount-point format, option by option,
and the parts of a config file pvezfsha reads or must skip."""

import pytest

from pvezfsha import pctconf
from pvezfsha.pctconf import PctConfError, parse, parse_mountpoint


def test_minimal_bind_mount_has_pve_defaults():
    m = parse_mountpoint("mp0", "/tank/media,mp=/srv/media")
    assert (m.volume, m.mp, m.kind) == ("/tank/media", "/srv/media", "bind")
    assert m.shared is False and m.replicate is True and m.ro is False
    assert m.acl is None and m.backup is None and m.quota is None and m.size is None


def test_volume_may_be_given_with_its_key_and_anywhere():
    assert parse_mountpoint("mp0", "mp=/srv/a,volume=/tank/a").volume == "/tank/a"
    assert parse_mountpoint("mp0", "mp=/srv/a,/tank/a").volume == "/tank/a"


@pytest.mark.parametrize("text,value", [("1", True), ("on", True), ("yes", True), ("TRUE", True),
                                        ("0", False), ("off", False), ("no", False), ("false", False)])
def test_every_boolean_spelling_pve_accepts(text, value):
    m = parse_mountpoint("mp0", f"/t,mp=/m,shared={text},ro={text},acl={text},backup={text},"
                                f"quota={text},replicate={text},keepattrs={text}")
    assert {m.shared, m.ro, m.acl, m.backup, m.quota, m.replicate, m.keepattrs} == {value}


def test_mountoptions_are_split_on_semicolons():
    m = parse_mountpoint("mp1", "/t,mp=/m,mountoptions=noatime;nosuid;nodev;noexec;lazytime;discard")
    assert m.mountoptions == ("noatime", "nosuid", "nodev", "noexec", "lazytime", "discard")


def test_size_takes_binary_units():
    assert parse_mountpoint("mp0", "local:vol,mp=/m,size=8G").size == 8 << 30
    assert parse_mountpoint("mp0", "local:vol,mp=/m,size=1.5T").size == int(1.5 * (1 << 40))
    assert parse_mountpoint("mp0", "local:vol,mp=/m,size=512").size == 512


def test_idmap_is_kept_as_written():
    assert parse_mountpoint("mp0", "/t,mp=/m,idmap=u:0:100000:65536;g:0:100000:65536").idmap == \
        "u:0:100000:65536;g:0:100000:65536"


def test_kinds_follow_pves_classify_mountpoint():
    assert parse_mountpoint("mp0", "/dev/sdb1,mp=/m").kind == "device"
    vol = parse_mountpoint("mp0", "local-zfs:subvol-103-disk-1,mp=/m")
    assert vol.kind == "volume" and vol.storage == "local-zfs"


def test_rootfs_has_no_mp_and_mounts_at_root():
    r = parse_mountpoint("rootfs", "drbd1:vm-103-disk-0,size=8G")
    assert r.mp == "/" and r.storage == "drbd1"


def test_options_from_a_newer_pve_are_kept_not_rejected():
    assert parse_mountpoint("mp0", "/t,mp=/m,future=1").unknown == {"future": "1"}


@pytest.mark.parametrize("value,message", [
    ("/t", "no mp="),
    ("mp=/m", "no volume"),
    ("/t,mp=/m,shared=maybe", "shared"),
    ("/t,mp=/m,mountoptions=noatime;sync", "sync"),
    ("/t,mp=/m,size=lots", "size"),
    ("/t,mp=/m,ro=1,ro=0", "twice"),
    ("/t,/u,mp=/m", "no key"),
    ("/tank/../etc,mp=/m", "illegal"),
    ("/t,mp=relative", "absolute"),
])
def test_malformed_mount_points_are_refused_with_the_reason(value, message):
    with pytest.raises(ValueError, match=message):
        parse_mountpoint("mp0", value)


CONF = """\
#NFS server
#second description line
arch: amd64
hookscript: local:snippets/pvezfsha-hook
mp10: /tank/b,mp=/srv/b,shared=1
mp2: /tank/a,mp=/srv/a
rootfs: drbd1:vm-103-disk-0,size=8G
lxc.apparmor.profile: unconfined

[pve:pending]
mp3: /tank/pending,mp=/srv/p

[snap1]
mp4: /tank/old,mp=/srv/old
"""


def test_only_the_current_section_counts_and_mount_points_are_in_index_order():
    ct = parse(CONF, 103, "pve1")
    assert list(ct.mountpoints) == ["mp2", "mp10"]
    assert ct.hookscript == "local:snippets/pvezfsha-hook" and ct.rootfs.storage == "drbd1"
    assert [m.volume for m in ct.bind_mounts()] == ["/tank/a", "/tank/b"]


def test_a_bad_line_names_file_line_and_key():
    with pytest.raises(PctConfError, match=r"103.conf:2: mp0: .*shared"):
        parse("arch: amd64\nmp0: /t,mp=/m,shared=2\n", 103, "pve1", "/etc/pve/nodes/pve1/lxc/103.conf")


def test_find_locates_the_owner_node_directory(tmp_path):
    (tmp_path / "nodes/pve2/lxc").mkdir(parents=True)
    (tmp_path / "nodes/pve2/lxc/103.conf").write_text("mp0: /tank/a,mp=/a\n")
    ct = pctconf.load(103, tmp_path)
    assert ct.node == "pve2" and list(ct.mountpoints) == ["mp0"]


def test_a_missing_container_is_a_clear_error(tmp_path):
    with pytest.raises(PctConfError, match="no .*/nodes/\\*/lxc/104.conf"):
        pctconf.load(104, tmp_path)


def test_with_shared_replaces_an_existing_shared_option():
    assert pctconf.with_shared("/t,mp=/m,shared=0,ro=1") == "/t,mp=/m,ro=1,shared=1"
