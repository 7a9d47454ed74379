"""`pvezfsha init`: what it maps, what it writes, and what it refuses."""

import io

import pytest
from fakenodes import FakeNodes, primary_and_standby, pve_tree

from pvezfsha import config, initcmd
from pvezfsha.errors import PvezfshaError, UsageError

CONF = """\
arch: amd64
mp0: /tank/media,mp=/srv/media,shared=1
mp1: /tank/files,mp=/srv/files
mp2: local-zfs:subvol-103-disk-1,mp=/srv/scratch,size=8G
rootfs: drbd1:vm-103-disk-0,size=8G
"""


def run(tmp_path, answers, conf=CONF, existing=None, **kw):
    root = pve_tree(tmp_path / "pve", conf=conf)
    cfg = tmp_path / "pvezfsha.toml"
    if existing is not None:
        cfg.write_text(existing)
    out = io.StringIO()
    rc = initcmd.run(103, config_path=str(cfg), runner=FakeNodes(answers), out=out, root=str(root), **kw)
    return rc, out.getvalue(), cfg


def test_new_config_gets_the_datasets_of_the_bind_mounts_and_every_node(tmp_path):
    rc, out, cfg = run(tmp_path, primary_and_standby(["tank/media", "tank/files"]))
    assert rc == 0
    ct = config.load(str(cfg)).containers[103]
    assert [d.name for d in ct.datasets] == ["tank/media", "tank/files"] and ct.nodes == ("pve1", "pve2")
    assert '+datasets = ["tank/media", "tank/files"]' in out
    assert "mp2: local-zfs:subvol-103-disk-1 is a volume mount point" in out


def test_prints_the_proxmox_commands_and_changes_nothing_there(tmp_path):
    rc, out, _ = run(tmp_path, primary_and_standby(["tank/media", "tank/files"]))
    assert "pct set 103 --hookscript local:snippets/pvezfsha-hook" in out
    assert "pct set 103 --mp1 /tank/files,mp=/srv/files,shared=1" in out
    assert "pct set 103 --mp0" not in out     # already shared=1
    assert "ha-manager add ct:103 --max_restart 0 --max_relocate 1" in out
    assert (tmp_path / "pve/nodes/pve1/lxc/103.conf").read_text() == CONF


def test_existing_block_is_extended_and_the_rest_of_the_file_kept(tmp_path):
    existing = ('# my notes\n[defaults]\nkeep = 50\n\n[[container]]\nctid = 103\n'
                'datasets = [\n  "tank/media",\n]\nnodes = ["pve1", "pve2"]\non_stale = "warn"  # on purpose\n\n'
                '[[container]]\nctid = 200\ndatasets = ["tank/other"]\nnodes = ["pve1", "pve2"]\n')
    rc, out, cfg = run(tmp_path, primary_and_standby(["tank/media", "tank/files"]), existing=existing)
    assert rc == 0
    text = cfg.read_text()
    assert text.startswith("# my notes\n[defaults]\nkeep = 50\n")
    assert 'on_stale = "warn"  # on purpose' in text and "ctid = 200" in text
    c = config.parse(text)
    assert [d.name for d in c.containers[103].datasets] == ["tank/media", "tank/files"]
    assert [d.name for d in c.containers[200].datasets] == ["tank/other"]


def test_running_it_twice_changes_nothing(tmp_path):
    nodes = primary_and_standby(["tank/media", "tank/files"])
    run(tmp_path, nodes)
    before = (tmp_path / "pvezfsha.toml").read_text()
    rc, out, cfg = run(tmp_path, nodes, existing=before)
    assert rc == 0 and "nothing to change" in out and cfg.read_text() == before


def test_dry_run_shows_the_diff_and_writes_nothing(tmp_path):
    rc, out, cfg = run(tmp_path, primary_and_standby(["tank/media", "tank/files"]), dry_run=True)
    assert rc == 0 and "+ctid = 103" in out and not cfg.exists()


def test_refuses_a_bind_mount_that_is_not_a_dataset(tmp_path, capsys):
    rc, _, cfg = run(tmp_path, primary_and_standby(["tank/media"]))
    err = capsys.readouterr().err
    assert rc == 1 and not cfg.exists()
    assert "mp1: /tank/files on pve1 is not the mountpoint of a ZFS dataset" in err
    assert "nothing was written" in err


def test_refuses_a_dataset_missing_on_a_node_and_says_how_to_create_it(tmp_path, capsys):
    nodes = primary_and_standby(["tank/media", "tank/files"])
    del nodes["pve2"]["datasets"]["tank/files"]
    rc, _, _ = run(tmp_path, nodes)
    assert rc == 1
    assert "tank/files is missing on pve2; create it there with `zfs create -p -o canmount=noauto" \
        in capsys.readouterr().err


def test_refuses_mismatched_mountpoints(tmp_path, capsys):
    nodes = primary_and_standby(["tank/media", "tank/files"])
    nodes["pve2"]["datasets"]["tank/files"] = ("/mnt/files", False)
    rc, _, _ = run(tmp_path, nodes)
    assert rc == 1
    assert "tank/files has mountpoint /mnt/files on pve2 but /tank/files on pve1" in capsys.readouterr().err


def test_refuses_when_a_node_cannot_be_reached(tmp_path, capsys):
    nodes = primary_and_standby(["tank/media", "tank/files"])
    nodes["pve2"] = {"dead": True}
    rc, _, _ = run(tmp_path, nodes)
    assert rc == 1 and "cannot reach pve2" in capsys.readouterr().err


def test_refuses_a_container_without_bind_mounts(tmp_path, capsys):
    rc, _, _ = run(tmp_path, primary_and_standby(), conf="rootfs: drbd1:vm-103-disk-0\n")
    assert rc == 1 and "no bind mount point" in capsys.readouterr().err


def test_refuses_to_edit_a_config_that_is_already_invalid(tmp_path):
    with pytest.raises(PvezfshaError, match="keep"):
        run(tmp_path, primary_and_standby(["tank/media", "tank/files"]), existing="[defaults]\nkeep = -1\n")


def test_nodes_must_be_cluster_members_and_include_the_owner(tmp_path):
    with pytest.raises(UsageError, match="pve9"):
        run(tmp_path, primary_and_standby(), nodes=["pve1", "pve9"])
    with pytest.raises(UsageError, match="runs on pve1"):
        run(tmp_path, primary_and_standby(), nodes=["pve2"])
