"""Failover on real OpenZFS, with the hookscript called in PVE's phase order.

Driven from the host (PVEZFSHA_LAB_HOST=1), because these tests power nodes
off: `lab.crash` is a power cut of the qemu guest. pmxcfs is emulated by
copying /etc/pve files between the nodes that are up (labnode.py), and HA by
moving the container's entry in .vmlist and calling the hook phases the way
pve-ha-lrm does: pre-stop, post-stop on the old node; pre-start, post-start
on the new one.
"""

import re
import time

import pytest

from labnode import ON_HOST, checksums, lab, sh, zfs_get

pytestmark = pytest.mark.skipif(not ON_HOST, reason="power cuts need the host; run with PVEZFSHA_LAB_HOST=1")


def live_checksums(node, mnt):
    out = sh(node, f"cd {mnt} && find . -type f ! -name '.pvezfsha-*' -print0 | sort -z | xargs -0 -r sha256sum").stdout
    return dict(reversed(line.split(None, 1)) for line in out.splitlines())


def test_planned_relocate_loses_nothing_and_reverses_replication(group):
    group.write("a.bin", 4)
    group.sync()
    assert group.record("pve2")["primary"] == "pve1"
    # HA relocate: shutdown on pve1 (pre-stop, then the CT keeps writing
    # until it is down, then post-stop), config moved, start on pve2.
    assert group.hook("pve1", "pre-stop").returncode == 0
    group.write("written-while-stopping.bin", 2)
    assert group.hook("pve1", "post-stop").returncode == 0
    group.write("written-after-post-stop.bin", 1)      # an admin, say: the pull must catch it
    before = live_checksums("pve1", group.mnt)
    group.move("pve2")
    p = group.hook("pve2", "pre-start")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "planned move from pve1" in p.stdout and "data-loss window: none" in p.stdout, p.stdout
    assert live_checksums("pve2", group.mnt) == before          # RPO 0: every file
    assert zfs_get("pve2", "readonly", group.ds) == "off" and zfs_get("pve2", "mounted", group.ds) == "yes"
    assert zfs_get("pve1", "readonly", group.ds) == "on" and zfs_get("pve1", "mounted", group.ds) == "no"
    rec = group.record("pve1")
    assert (rec["primary"], rec["epoch"]) == ("pve2", 2)
    assert zfs_get("pve2", "pvezfsha:epoch", group.ds) == "2"
    # post-start hands a sync to the background in the new direction.
    group.write("new-on-pve2.bin", 1, node="pve2")
    p = group.hook("pve2", "post-start")
    assert p.returncode == 0 and "started in the background" in p.stdout
    group.wait_idle("pve2")
    s = group.sync(node="pve2")
    assert "nothing to do" in s.stderr, s.stderr     # the background sync already sent it
    assert checksums("pve1", group.ds) == live_checksums("pve2", group.mnt)


def test_restart_in_place_keeps_the_primary(group):
    group.write("a.bin")
    group.sync()
    assert group.hook("pve1", "pre-start").returncode == 0   # first start: originals here
    p = group.hook("pve1", "pre-start")
    assert p.returncode == 0 and "restart in place" in p.stdout
    assert group.record("pve1")["epoch"] == 1


def test_no_quorum_refuses_the_start(group):
    group.write("a.bin")
    group.sync()
    group.move("pve2")
    group.quorate("pve2", False)
    p = group.hook("pve2", "pre-start")
    assert p.returncode == 1 and "not quorate" in p.stderr, p.stderr
    assert zfs_get("pve2", "readonly", group.ds) == "on"
    assert group.record("pve2")["primary"] == "pve1"


def test_crash_failover_keeps_what_was_sent_and_the_returning_primary_keeps_its_writes(group):
    L = lab()
    group.write("replicated.bin", 4)
    hourly = f"{group.ds}@autosnap_2026-12-03_08:00:00_hourly"     # sanoid's restore point, carried
    sh("pve1", ["zfs", "snapshot", hourly])
    group.sync()
    hourly_guid = zfs_get("pve1", "guid", hourly)
    group.write("lost-in-the-crash.bin", 2)
    sh("pve1", ["zpool", "sync", "tank"])   # on pve1's disk, never sent
    sh("pve1", ["sync"])   # the config file too: a real node has had it for long
    lost = live_checksums("pve1", group.mnt)["./lost-in-the-crash.bin"]
    time.sleep(2)
    L.crash("pve1")
    group.crashed("pve1")
    group.move("pve2")                      # HA steals the config after fencing
    # A stale replica is refused under on_stale = refuse...
    group.write_config("pve2", defaults={"max_staleness": "1s"})
    p = group.hook("pve2", "pre-start")
    assert p.returncode == 1 and "on_stale = refuse" in p.stderr, p.stderr
    # ...and a fresh one is accepted, with the loss window stated.
    group.write_config("pve2")
    p = group.hook("pve2", "pre-start")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "crash failover from pve1" in p.stdout and "data-loss window: writes on pve1 after" in p.stdout
    files = live_checksums("pve2", group.mnt)
    assert "./replicated.bin" in files and "./lost-in-the-crash.bin" not in files
    assert group.record("pve2")["primary"] == "pve2"
    assert zfs_get("pve2", "guid", hourly) == hourly_guid     # the restore point survived the failover
    group.write("new-on-pve2.bin", 1, node="pve2")

    # pve1 comes back: pool imported, its dataset still writable with the lost file.
    L.boot("pve1")
    group.returned("pve1", source="pve2")
    s = group.sync(node="pve1")           # its own timer: it must fence itself first
    assert "standby (primary is pve2)" in s.stderr
    assert zfs_get("pve1", "readonly", group.ds) == "on" and zfs_get("pve1", "mounted", group.ds) == "no"
    s = group.sync(node="pve2")           # the new primary replicates back
    m = re.search(r"diverged state kept as (\S+)", s.stderr)
    assert m, s.stderr
    kept = m.group(1).rstrip(";")
    assert checksums("pve1", kept)["./lost-in-the-crash.bin"] == lost    # intact, where the log says
    d = group.run("diverged", str(group.ctid), node="pve1", check=True)
    assert kept in d.stdout and "pvezfsha never deletes it" in d.stdout
    assert f"DIVERGED data kept as {kept}" in group.run("status", str(group.ctid), node="pve1").stdout
    # Replication runs again, in the new direction.
    assert checksums("pve1", group.ds) == live_checksums("pve2", group.mnt)
    group.write("after.bin", 1, node="pve2")
    group.sync(node="pve2")
    assert "./after.bin" in checksums("pve1", group.ds)
