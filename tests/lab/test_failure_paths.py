"""Failure paths on real OpenZFS: a returning node's divergence, retention
beside kept copies, promotion and demotion that never destroy writes, and a
write probe that hostile files in a share cannot turn against the host.

Each test is one scenario of issue 9, named after what an admin relies on.
"""

import contextlib
import json
import re
import shlex
import time

import pytest

from labnode import checksums, sh, snapshots, step_bytes, zfs_get

UNREACHABLE = {"PVEZFSHA_SSH": "/bin/false"}   # every peer looks down to this run


def kept_from(stderr: str) -> str:
    m = re.search(r"diverged state kept as (\S+)", stderr)
    assert m, stderr
    return m.group(1).rstrip(";")


# -- keeping a divergence (items 1, 7, 16) --------------------------------------

def test_a_kept_divergence_is_followed_by_the_incremental_in_the_same_cycle(group):
    group.write("a.bin")
    group.sync()
    group.diverge("pve2")
    group.write("b.bin")
    p = group.sync()
    kept = kept_from(p.stderr)
    assert "1 snapshot(s)" in p.stderr, p.stderr          # b.bin went over in this cycle
    assert checksums("pve2", group.ds) == checksums("pve1", group.ds)
    assert "./standby-only.txt" in checksums("pve2", kept)
    assert zfs_get("pve2", "mounted", group.ds) == "no" and zfs_get("pve2", "written", group.ds) == "0"
    # Later cycles keep nothing more: there is nothing more of pve2's own.
    for i in range(2):
        group.write(f"c{i}.bin")
        p = group.sync()
        assert "diverged" not in p.stderr, p.stderr
    assert group.kept("pve2") == [kept]
    assert checksums("pve2", group.ds) == checksums("pve1", group.ds)


def test_the_live_copy_keeps_its_local_properties_after_a_divergence(group):
    group.write("a.bin")
    group.sync()
    mnt = f"/srv/t{group.ctid}"
    sh("pve2", ["zfs", "set", f"mountpoint={mnt}", "acltype=posixacl", "quota=1G",
                "recordsize=64K", "com.example:tag=media", group.ds])
    group.diverge("pve2", mnt=mnt)  # writes through the dataset's own mountpoint
    group.write("b.bin")
    group.sync()
    for prop, value in (("mountpoint", mnt), ("acltype", "posix"), ("quota", str(2**30)),
                        ("recordsize", str(64 * 1024)), ("com.example:tag", "media")):
        assert zfs_get("pve2", prop, group.ds) == value, prop
        assert sh("pve2", ["zfs", "get", "-H", "-o", "source", prop, group.ds]).stdout.strip() == "local", prop
    assert zfs_get("pve2", "readonly", group.ds) == "on" and zfs_get("pve2", "canmount", group.ds) == "noauto"


def test_child_datasets_stay_with_the_live_copy_after_a_divergence(group):
    group.write("a.bin")
    group.sync()
    sh("pve2", ["zfs", "create", "-o", "canmount=noauto", f"{group.ds}/child"])
    assert zfs_get("pve2", "type", f"{group.ds}/child") == "filesystem"
    group.diverge("pve2")
    group.write("b.bin")
    p = group.sync()
    kept = kept_from(p.stderr)
    assert zfs_get("pve2", "type", f"{group.ds}/child") == "filesystem"
    assert sh("pve2", ["zfs", "list", f"{kept}/child"], check=False).returncode != 0


@pytest.mark.parametrize("point", ["snapshotted", "cloned", "promoted", "renamed"])
def test_a_divergence_killed_at_any_step_is_finished_by_the_next_cycle(group, point):
    group.write("a.bin")
    group.sync()
    group.diverge("pve2")
    base = snapshots("pve2", group.ds)[-1][1]
    sh("pve2", ["zfs", "set", "readonly=on", group.ds])
    code = ("from pvezfsha import divergence; "
            f"divergence.keep_diverged({group.ds!r}, {int(base)}, 'pvezfsha', 'pve2')")
    # Through a shell that reports how python ended (ssh itself says 255 for a signal).
    killed = sh("pve2", ["sh", "-c", 'python3 -c "$0"; echo "rc=$?"', code],
                env={"PVEZFSHA_FAULT": f"divergence.{point}", "PYTHONPATH": "/opt/pvezfsha"}, check=False)
    assert "rc=137" in killed.stdout, killed.stdout + killed.stderr
    group.write("b.bin")
    p = group.sync()
    assert "full" not in p.stderr, p.stderr                # never a resend of everything
    assert checksums("pve2", group.ds) == checksums("pve1", group.ds)
    kept = group.kept("pve2")
    assert len(kept) == 1 and "./standby-only.txt" in checksums("pve2", kept[0])
    assert not [d for d in group.datasets_on("pve2") if d.endswith("-swap")]


def test_a_swap_interrupted_between_its_renames_is_finished_not_resent(group):
    # The state a crash between the two renames leaves, made by hand.
    group.write("a.bin", 4)
    group.sync()
    group.diverge("pve2")
    ds, base = group.ds, snapshots("pve2", group.ds)[-1][0]
    sh("pve2", ["zfs", "snapshot", f"{ds}@pvezfsha-diverged_20260101T000000Z"])
    sh("pve2", ["zfs", "clone", "-o", "canmount=noauto", "-o", "readonly=on", base, f"{ds}-pvezfsha-swap"])
    sh("pve2", ["zfs", "promote", f"{ds}-pvezfsha-swap"])
    sh("pve2", ["zfs", "set", "readonly=on", "canmount=noauto", ds])
    sh("pve2", ["zfs", "rename", "-u", ds, f"{ds}-pvezfsha-diverged-20260101T000000Z"])
    group.write("b.bin")
    p = group.sync()
    assert "full" not in p.stderr and step_bytes(p.stderr)[0] < 3 * 2**20, p.stderr
    assert checksums("pve2", ds) == checksums("pve1", ds)
    assert not [d for d in group.datasets_on("pve2") if d.endswith("-swap")]


# -- retention beside a kept divergence (item 2) ---------------------------------

def test_retention_skips_the_origin_of_a_kept_divergence_and_the_cycle_succeeds(group):
    group.write_config("pve1", defaults={"keep": 2})
    group.write("a.bin")
    group.sync()
    group.diverge("pve2")
    group.write("b.bin")
    kept = kept_from(group.sync().stderr)
    origin = zfs_get("pve2", "origin", kept)
    warnings = 0
    for i in range(4):
        group.write(f"c{i}.bin")
        p = group.sync()           # exit 0 every time
        warnings += p.stderr.count("is kept past `keep`")
    assert warnings == 1, "reported once, not every cycle"
    assert origin in [n for n, _ in snapshots("pve2", group.ds)]
    assert checksums("pve2", group.ds) == checksums("pve1", group.ds)
    assert len([n for n, _ in snapshots("pve2", group.ds) if n != origin]) == 2


# -- promotion and demotion never destroy writes (item 6) ------------------------

def test_promotion_keeps_unsnapshotted_writes_on_a_read_only_dataset(group):
    group.write("a.bin")
    group.sync()
    assert group.hook("pve1", "pre-start").returncode == 0
    group.write("unsent.bin", 2)
    before = sh("pve1", ["sha256sum", f"{group.mnt}/unsent.bin"]).stdout.split()[0]
    # Made read-only by hand (or by an older pvezfsha), with no snapshot first.
    sh("pve1", ["zfs", "unmount", group.ds])
    sh("pve1", ["zfs", "set", "readonly=on", group.ds])
    sh("pve1", ["zpool", "sync", "tank"])      # `written` shows synced txgs only
    p = group.hook("pve1", "pre-start")
    assert p.returncode == 0, p.stdout + p.stderr
    assert sh("pve1", ["sha256sum", f"{group.mnt}/unsent.bin"]).stdout.split()[0] == before


def test_demotion_snapshots_the_writes_it_freezes(group):
    group.write("a.bin")
    group.sync()
    assert group.hook("pve1", "pre-start").returncode == 0
    group.write("unsent.bin", 2)
    n = len(snapshots("pve1", group.ds))
    d = group.run("demote", "--force", str(group.ctid))
    assert d.returncode == 0, d.stderr
    assert len(snapshots("pve1", group.ds)) == n + 1
    assert "./unsent.bin" in checksums("pve1", group.ds)
    p = group.hook("pve1", "pre-start")
    assert p.returncode == 0, p.stdout + p.stderr
    assert sh("pve1", ["test", "-f", f"{group.mnt}/unsent.bin"], check=False).returncode == 0


# -- the write probe (item 5) -----------------------------------------------------

def test_the_write_probe_never_follows_a_symlink_in_the_share(group):
    group.write("a.bin")
    group.sync()
    assert group.hook("pve1", "pre-start").returncode == 0
    victim = f"/root/victim-{group.ctid}"
    sh("pve1", f"echo host-file > {victim}")
    for name in (".pvezfsha-write-check", ".pvezfsha-write-check-1"):
        sh("pve1", ["ln", "-s", victim, f"{group.mnt}/{name}"])
    try:
        p = group.hook("pve1", "pre-start")
        assert p.returncode == 0, p.stdout + p.stderr
        assert sh("pve1", ["cat", victim]).stdout == "host-file\n"
    finally:
        sh("pve1", ["rm", "-f", victim])


def test_a_fifo_in_the_share_does_not_block_a_start(group):
    group.write("a.bin")
    group.sync()
    assert group.hook("pve1", "pre-start").returncode == 0
    sh("pve1", ["mkfifo", f"{group.mnt}/.pvezfsha-write-check"])
    p = group.hook("pve1", "pre-start", timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr


# -- after a takeover, every member keeps its common snapshot (items 12, 3) ------

def test_a_node_down_for_longer_than_keep_catches_up_without_a_false_divergence(group):
    group.write_config("pve2", defaults={"keep": 3})
    group.write("a.bin", 8)
    group.sync()
    assert group.hook("pve1", "pre-stop").returncode == 0
    assert group.hook("pve1", "post-stop").returncode == 0
    group.move("pve2")
    p = group.hook("pve2", "pre-start")
    assert p.returncode == 0 and "data-loss window: none" in p.stdout, p.stdout + p.stderr
    # pve1 is down while pve2 runs more than `keep` changed cycles.
    for i in range(5):
        group.write(f"new{i}.bin", 1, node="pve2")
        group.sync(node="pve2", expect=1, env=UNREACHABLE)
    # pve1 is back.
    p = group.sync(node="pve2")
    assert "diverged" not in p.stderr and "full" not in p.stderr, p.stderr
    assert sum(step_bytes(p.stderr)) < 7 * 2**20, "must not resend the 8 MiB"
    assert group.kept("pve1") == []
    assert checksums("pve1", group.ds) == checksums("pve2", group.ds)


# -- a handover during a timer cycle (item 9) ------------------------------------

def test_a_handover_waits_for_the_running_cycle_and_sends_the_late_writes(group):
    group.write("a.bin")
    group.sync()
    group.write("big.bin", 24)
    group.write_config("pve1", defaults={"bandwidth_limit": "4M"})
    cycle = group.popen_sync()
    time.sleep(2.5)                      # the timer's cycle holds the dataset now
    group.write("late.bin", 1)
    p = group.run("transfer", str(group.ctid), "--to", "pve2", "--final")
    _, err = cycle.communicate(timeout=300)
    assert cycle.returncode == 0, err
    assert p.returncode == 0 and json.loads(p.stdout.splitlines()[-1])["ok"], p.stdout + p.stderr
    assert checksums("pve2", group.ds)["./late.bin"] == checksums("pve1", group.ds)["./late.bin"]


# -- a handover that times out (item 15) ---------------------------------------

def test_a_handover_that_times_out_is_stopped_on_the_old_primary_before_the_promotion(group):
    group.write("a.bin")
    group.sync()
    group.write("big.bin", 32)
    group.write_config("pve1", defaults={"bandwidth_limit": "2M"})
    group.write_config("pve2", defaults={"handover_timeout": "6s"})
    group.move("pve2")
    p = group.hook("pve2", "pre-start")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "stopped there" in p.stdout + p.stderr, p.stdout + p.stderr
    assert sh("pve1", ["pgrep", "-f", f"pvezfsha.* transfer {group.ctid}"], check=False).returncode == 1
    assert zfs_get("pve2", "mounted", group.ds) == "yes" and zfs_get("pve2", "readonly", group.ds) == "off"
    assert zfs_get("pve1", "readonly", group.ds) == "on"


# -- an encrypted dataset (item 4) -------------------------------------------------

KEYDIR = "/etc/pvezfsha-test-keys"


@pytest.fixture
def encrypted(make_group):
    """A group whose dataset is encrypted, its key in a file at the same
    path on both nodes (keyformat=raw, keylocation=file://...)."""
    group = make_group(create=False)
    key = f"{KEYDIR}/{group.ctid}.key"
    sh("pve1", f"mkdir -p {KEYDIR} && head -c 32 /dev/urandom > {key}")
    material = sh("pve1", ["base64", "-w0", key]).stdout
    sh("pve2", f"mkdir -p {KEYDIR} && base64 -d > {key}", input=material)
    sh("pve1", ["zfs", "create", "-o", "encryption=on", "-o", "keyformat=raw", "-o", f"keylocation=file://{key}",
                group.ds])
    group.key = key
    yield group
    for node in group.nodes:
        sh(node, ["rm", "-f", key], check=False)


def live_files(node, mnt):
    out = sh(node, f"cd {mnt} && find . -type f ! -name '.pvezfsha-*' -print0 | sort -z | xargs -0 -r sha256sum").stdout
    return dict(reversed(line.split(None, 1)) for line in out.splitlines())


def handover_to_pve2(group):
    assert group.hook("pve1", "pre-stop").returncode == 0
    assert group.hook("pve1", "post-stop").returncode == 0
    group.move("pve2")
    return group.hook("pve2", "pre-start")


def test_an_encrypted_dataset_is_taken_over_with_the_key_its_keylocation_names(encrypted):
    group = encrypted
    group.write("a.bin", 2)
    group.sync()
    assert zfs_get("pve2", "keystatus", group.ds) == "unavailable"     # a raw replica, held without its key
    assert zfs_get("pve2", "keylocation", group.ds) == f"file://{group.key}"
    group.write("late.bin", 1)
    before = live_files("pve1", group.mnt)
    p = handover_to_pve2(group)
    assert p.returncode == 0 and "data-loss window: none" in p.stdout, p.stdout + p.stderr
    assert zfs_get("pve2", "mounted", group.ds) == "yes" and zfs_get("pve2", "readonly", group.ds) == "off"
    assert live_files("pve2", group.mnt) == before
    # Replication in the new direction, raw, into the old primary.
    group.write("new-on-pve2.bin", 1, node="pve2")
    group.sync(node="pve2")
    assert snapshots("pve1", group.ds)[-1] == snapshots("pve2", group.ds)[-1]


def test_a_key_that_cannot_be_loaded_refuses_the_start_before_anything_changes(encrypted):
    group = encrypted
    group.write("a.bin", 2)
    group.sync()
    sh("pve2", ["rm", "-f", group.key])
    epoch = group.record("pve1")["epoch"]
    p = handover_to_pve2(group)
    assert p.returncode != 0
    assert "encryption key" in p.stderr and group.key in p.stderr, p.stdout + p.stderr
    # The old primary was not asked to hand over, and nothing was fenced.
    rec = group.record("pve2")
    assert (rec["primary"], rec["epoch"]) == ("pve1", epoch)
    assert zfs_get("pve1", "mounted", group.ds) == "yes" and zfs_get("pve1", "readonly", group.ds) == "off"
    # Once the key is back, HA's next try takes over.
    material = sh("pve1", ["base64", "-w0", group.key]).stdout
    sh("pve2", f"base64 -d > {group.key}", input=material)
    p = group.hook("pve2", "pre-start")
    assert p.returncode == 0 and "data-loss window: none" in p.stdout, p.stdout + p.stderr


def test_a_promotion_that_failed_after_the_fence_succeeds_on_retry_once_the_key_is_back(encrypted):
    group = encrypted
    group.write("a.bin", 2)
    group.sync()
    # The state a promotion that failed after the fence leaves: pve2 is
    # recorded primary, its copy still inert and its key gone meanwhile.
    assert group.hook("pve1", "pre-stop").returncode == 0
    group.run("demote", "--force", str(group.ctid))
    rec = group.record("pve1")
    rec.update(primary="pve2", epoch=rec["epoch"] + 1)
    for node in group.nodes:
        sh(node, f"cat > {group.record_path}", input=json.dumps(rec))
    group.move("pve2")
    sh("pve2", ["rm", "-f", group.key])
    p = group.hook("pve2", "pre-start")
    assert p.returncode != 0 and group.key in p.stderr and f"pvezfsha promote {group.ctid}" in p.stderr, \
        p.stdout + p.stderr
    material = sh("pve1", ["base64", "-w0", group.key]).stdout
    sh("pve2", f"base64 -d > {group.key}", input=material)
    p = group.hook("pve2", "pre-start")
    assert p.returncode == 0, p.stdout + p.stderr
    assert zfs_get("pve2", "mounted", group.ds) == "yes" and zfs_get("pve2", "keystatus", group.ds) == "available"


def test_a_mountpoint_that_is_taken_refuses_the_start_before_anything_changes(group):
    group.write("a.bin")
    group.sync()
    epoch = group.record("pve1")["epoch"]
    sh("pve2", f"mkdir -p {group.mnt} && mount -t tmpfs pvezfsha-test {group.mnt}")
    try:
        p = handover_to_pve2(group)
        assert p.returncode != 0 and "already has pvezfsha-test (tmpfs) mounted" in p.stderr, p.stdout + p.stderr
        assert group.record("pve2")["epoch"] == epoch
        assert zfs_get("pve1", "mounted", group.ds) == "yes" and zfs_get("pve1", "readonly", group.ds) == "off"
    finally:
        sh("pve2", ["umount", group.mnt], check=False)


def test_doctor_finds_a_node_that_could_not_load_the_key(encrypted):
    group = encrypted
    group.write("a.bin")
    group.sync()
    code = ("import json, sys; from pvezfsha import probe; "
            "f = probe.probe('pve2', 'pve2', local=False, timeout=60); "
            "d = f.datasets[sys.argv[1]]; print(json.dumps([d.encroot, f.keys[d.encroot].result]))")
    assert json.loads(sh("pve1", ["python3", "-c", code, group.ds]).stdout) == [group.ds, "ok"]
    sh("pve2", ["rm", "-f", group.key])
    root, result = json.loads(sh("pve1", ["python3", "-c", code, group.ds]).stdout)
    assert result == f"fail {group.key} is not a regular file", result


# -- a start elsewhere during the first send (item 8) ----------------------------------

def test_a_start_elsewhere_during_the_first_send_does_not_trust_a_writable_placeholder(group):
    sh("pve2", ["zfs", "create", group.ds])          # an admin's empty, writable placeholder
    group.write("big.bin", 48)
    group.write_config("pve1", defaults={"bandwidth_limit": "2M"})
    first = group.popen_sync()
    try:
        deadline = time.time() + 120
        while sh("pve2", ["pgrep", "-f", "pvezfsha.* receive"], check=False).returncode != 0:
            assert first.poll() is None and time.time() < deadline, "the first send never started"
            time.sleep(0.5)
    finally:
        first.kill()                                  # pve1 dies during its first full send
        first.communicate()
    group.pmxcfs_sync("pve1")
    group.crashed("pve1")
    group.move("pve2")
    p = group.hook("pve2", "pre-start")
    assert p.returncode == 1 and "no replicated snapshot here" in p.stderr, p.stdout + p.stderr
    assert group.record("pve2")["primary"] == "pve1"


# -- the receiver trusts its own config, and reads take no lock (items 10, 14) ----------

def receiver(group, node, *requests):
    """Replies of `pvezfsha receive` on node to JSON request lines, as a sender's session sends them."""
    lines = [json.dumps({"op": "hello", "protocol": 1}), *map(json.dumps, requests)]
    p = sh(node, ["pvezfsha", "--config", group.config, "receive"], input="\n".join(lines) + "\n", check=False)
    replies = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    assert replies and replies[0]["ok"], p.stdout + p.stderr
    return replies[1:]


def test_the_receiver_refuses_what_its_own_config_does_not_give_it(group):
    group.write("a.bin")
    group.sync()
    epoch = group.record("pve2")["epoch"]
    other, no_ctid, forced = receiver(
        group, "pve2",
        {"op": "state", "dataset": "tank/not-protected", "ctid": group.ctid, "epoch": epoch},
        {"op": "state", "dataset": group.ds, "epoch": epoch},
        {"op": "receive", "snapshot": f"{group.ds}@x", "guid": 1, "force": True, "ctid": group.ctid,
         "epoch": epoch})
    assert (other["ok"], other["kind"]) == (False, "NotConfigured"), other
    assert (no_ctid["ok"], no_ctid["kind"]) == (False, "NotConfigured"), no_ctid
    assert (forced["ok"], forced["kind"]) == (False, "Refused"), forced
    # Nothing is pushed into the node the record names primary.
    [into_primary] = receiver(group, "pve1", {"op": "receive", "snapshot": f"{group.ds}@x", "guid": 1,
                                              "ctid": group.ctid, "epoch": epoch})
    assert (into_primary["ok"], into_primary["kind"]) == (False, "Primary"), into_primary
    assert zfs_get("pve1", "readonly", group.ds) == "off" and zfs_get("pve1", "mounted", group.ds) == "yes"


@contextlib.contextmanager
def lock_held(node, ds, what):
    """The dataset's pvezfsha lock held on node by another process (a
    receive, a promotion) for the duration of the block."""
    holder = ("import sys, time; from pvezfsha import state\n"
              "with state.dataset_lock(sys.argv[1], sys.argv[2]):\n"
              "    print('held', flush=True); time.sleep(120)")
    out = f"/tmp/holder-{ds.replace('/', '-')}"
    sh(node, f"nohup python3 -c {shlex.quote(holder)} {shlex.quote(ds)} {what} > {out} 2>&1 &")
    try:
        deadline = time.time() + 30
        while "held" not in sh(node, ["cat", out], check=False).stdout:
            assert time.time() < deadline, "the lock holder did not start"
            time.sleep(0.5)
        yield
    finally:
        sh(node, ["pkill", "-f", "from pvezfsha import state"], check=False)


def test_a_survivor_busy_receiving_still_answers_a_read(group):
    group.write("a.bin")
    group.sync()
    with lock_held("pve2", group.ds, "receive"):
        [st] = receiver(group, "pve2", {"op": "state", "dataset": group.ds, "ctid": group.ctid,
                                        "epoch": group.record("pve2")["epoch"]})
    assert st["ok"] and st["state"]["snapshots"], st


# -- demote and promote of a dataset are serialised (item 11) ----------------------

def test_the_standbys_fencing_never_unmounts_a_dataset_a_promotion_holds(group):
    group.write("a.bin")
    group.sync()
    # pve2 is taking over: its copy is writable and mounted, and the promotion
    # holds the dataset while the record still names pve1.
    sh("pve2", ["zfs", "set", "readonly=off", "canmount=on", group.ds])
    sh("pve2", ["zfs", "mount", group.ds])
    with lock_held("pve2", group.ds, "promote"):
        p = group.sync(node="pve2")                    # the standby's timer cycle meanwhile
    assert "fencing it next cycle" in p.stderr, p.stderr
    assert zfs_get("pve2", "mounted", group.ds) == "yes" and zfs_get("pve2", "readonly", group.ds) == "off"


# -- a takeover killed between the fence and the promotion ---------------------------

def test_a_takeover_killed_after_the_fence_is_finished_by_the_retry_and_loses_nothing(group):
    group.write("a.bin", 2)
    group.sync()
    assert group.hook("pve1", "pre-stop").returncode == 0
    group.write("late.bin", 1)                        # after the final push: only the pull brings it
    want = sh("pve1", ["sha256sum", f"{group.mnt}/late.bin"]).stdout.split()[0]
    group.move("pve2")
    # pvezfsha promote runs pre-start's code; the process dies right after the fence.
    p = group.run("promote", str(group.ctid), node="pve2", env={"PVEZFSHA_FAULT": "takeover.fenced"})
    assert p.returncode != 0
    rec = group.record("pve2")
    assert (rec["primary"], rec["epoch"]) == ("pve2", 2)
    assert zfs_get("pve2", "mounted", group.ds) == "no"
    # HA's retry on the same node.
    p = group.hook("pve2", "pre-start")
    assert p.returncode == 0 and "restart in place" in p.stdout, p.stdout + p.stderr
    assert zfs_get("pve2", "mounted", group.ds) == "yes" and zfs_get("pve2", "readonly", group.ds) == "off"
    assert sh("pve2", ["sha256sum", f"{group.mnt}/late.bin"]).stdout.split()[0] == want
    assert zfs_get("pve1", "readonly", group.ds) == "on" and zfs_get("pve1", "mounted", group.ds) == "no"
