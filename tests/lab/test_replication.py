"""Replication between two real OpenZFS nodes over real ssh: what an admin
relies on after `pvezfsha sync`."""

import re
import time

from labnode import checksums, replication_name, sh, snapshots, step_bytes, zfs_get


def test_files_are_identical_by_checksum_after_replication(group):
    group.write("a.bin", 8)
    group.write("b.bin", 1)
    sh("pve1", f"mkdir -p {group.mnt}/dir && echo hello > {group.mnt}/dir/c.txt")
    p = group.sync()
    assert "full" in p.stderr and "-> pve2" in p.stderr
    src = checksums("pve1", group.ds)
    assert len(src) == 3
    assert checksums("pve2", group.ds) == src
    assert snapshots("pve2", group.ds) == snapshots("pve1", group.ds)


def test_every_intermediate_snapshot_is_sent_in_order(group):
    group.write("0.bin")
    group.sync()
    names = [replication_name(i) for i in range(3)]
    for i in range(3):
        group.write(f"{i + 1}.bin")
        sh("pve1", ["zfs", "snapshot", f"{group.ds}@{names[i]}"])
    p = group.sync()
    assert "3 snapshot(s)" in p.stderr, p.stderr
    src = snapshots("pve1", group.ds)
    # Same names and guids, same order; a new snapshot was not needed.
    assert snapshots("pve2", group.ds) == src
    assert [n.split("@")[1] for n, _ in src[-3:]] == names


def sanoid(i: int) -> str:
    return f"autosnap_2026-12-03_{i:02d}:00:00_hourly"


def autosnaps(node: str, ds: str) -> dict[str, str]:
    return {n.split("@")[1]: g for n, g in snapshots(node, ds) if "@autosnap_" in n}


def test_sanoid_snapshots_reach_the_standby_with_their_guids_and_follow_its_pruning(group):
    group.write("0.bin")
    sh("pve1", ["zfs", "snapshot", f"{group.ds}@{sanoid(0)}"])   # history from before the first sync
    group.write("1.bin")
    p = group.sync()
    assert f"full @{sanoid(0)}" in p.stderr and "2 snapshot(s)" in p.stderr, p.stderr
    for i in (1, 2):                                              # sanoid, between two cycles
        sh("pve1", ["zfs", "snapshot", f"{group.ds}@{sanoid(i)}"])
        group.write(f"{i + 1}.bin")
    group.sync()
    src = autosnaps("pve1", group.ds)
    assert len(src) == 3 and autosnaps("pve2", group.ds) == src
    assert checksums("pve2", group.ds, sanoid(1)) == checksums("pve1", group.ds, sanoid(1))
    # sanoid prunes one on the primary: the standby follows at the next cycle.
    sh("pve1", ["zfs", "destroy", f"{group.ds}@{sanoid(1)}"])
    group.write("4.bin")
    p = group.sync()
    assert autosnaps("pve2", group.ds) == {k: v for k, v in src.items() if k != sanoid(1)}, p.stderr
    assert checksums("pve2", group.ds) == checksums("pve1", group.ds)


def test_an_empty_replicate_snapshots_sends_only_pvezfshas_own(group):
    group.write_config("pve1", defaults={"replicate_snapshots": []})
    group.write("0.bin")
    sh("pve1", ["zfs", "snapshot", f"{group.ds}@{sanoid(0)}"])
    group.write("1.bin")
    group.sync()
    assert autosnaps("pve1", group.ds) and not autosnaps("pve2", group.ds)
    assert checksums("pve2", group.ds) == checksums("pve1", group.ds)


def test_interrupted_transfer_resumes_and_sends_less_than_the_total(group):
    group.write("big.bin", 48)
    group.write_config("pve1", defaults={"bandwidth_limit": "2M"})
    alloc = lambda: int(sh("pve2", ["zpool", "list", "-Hp", "-o", "allocated", "tank"]).stdout)  # noqa: E731
    start = alloc()
    proc = group.popen_sync()
    # Cut when half the stream has landed on pve2's disk (~24 s at 2 MiB/s).
    deadline = time.time() + 120
    while alloc() - start < 24 * 2**20 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    sh("pve1", ["pkill", "-f", "ssh .*pvezfsha .*receive"], check=False)   # pvezfsha --config ... receive
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    token = zfs_get("pve2", "receive_resume_token", group.ds)
    assert token not in ("-", ""), "an interrupted receive must leave a resume token"
    group.write_config("pve1")   # no bandwidth limit now
    p = group.sync()
    assert "resume full" in p.stderr, p.stderr
    resumed = step_bytes(p.stderr)[0]
    assert 0 < resumed < 0.85 * 48 * 2**20, f"resumed {resumed} bytes of a 48 MiB stream"
    assert checksums("pve2", group.ds) == checksums("pve1", group.ds)
    assert zfs_get("pve2", "receive_resume_token", group.ds) in ("-", "")


def test_destroyed_base_snapshot_on_primary_stays_incremental_via_the_bookmark(group):
    group.write("a.bin", 16)
    group.sync()
    base = snapshots("pve1", group.ds)[-1][0]
    sh("pve1", ["zfs", "destroy", base])   # an admin or sanoid pruning
    assert snapshots("pve1", group.ds) == []
    group.write("b.bin", 1)
    p = group.sync()
    assert re.search(r"#pvezfsha_cursor_pve2_[0-9a-f]{16} -> @", p.stderr), p.stderr
    assert step_bytes(p.stderr)[0] < 4 * 2**20, "must not resend the 16 MiB"
    assert checksums("pve2", group.ds) == checksums("pve1", group.ds)


def test_standby_is_inert_and_refuses_to_be_modified(group):
    group.write("a.bin")
    group.sync()
    assert zfs_get("pve2", "readonly", group.ds) == "on"
    assert zfs_get("pve2", "canmount", group.ds) == "noauto"
    assert zfs_get("pve2", "mounted", group.ds) == "no"
    # Even mounted by hand, it cannot be written.
    sh("pve2", ["zfs", "mount", group.ds])
    w = sh("pve2", ["touch", f"{group.mnt}/intruder"], check=False)
    sh("pve2", ["zfs", "unmount", group.ds])
    assert w.returncode != 0 and "Read-only file system" in w.stderr
    # The last received snapshot is held, so no forced receive or pruning can take it.
    last = snapshots("pve2", group.ds)[-1][0]
    assert "pvezfsha-last" in sh("pve2", ["zfs", "holds", "-H", last]).stdout
    group.write("b.bin")
    group.sync()
    assert checksums("pve2", group.ds) == checksums("pve1", group.ds)


def test_modified_standby_keeps_its_diverged_writes_and_replication_continues(group):
    group.write("a.bin")
    group.sync()
    sh("pve2", ["zfs", "set", "readonly=off", group.ds])
    sh("pve2", ["zfs", "mount", group.ds])
    sh("pve2", f"echo precious > {group.mnt}/standby-only.txt")
    sh("pve2", ["zfs", "unmount", group.ds])
    group.write("b.bin")
    p = group.sync()
    m = re.search(r"diverged state kept as (\S+)", p.stderr)
    assert m, p.stderr
    kept = m.group(1).rstrip(";")
    assert kept.startswith(f"{group.ds}-pvezfsha-diverged-")
    assert zfs_get("pve2", "canmount", kept) == "noauto" and zfs_get("pve2", "readonly", kept) == "on"
    kept_files = checksums("pve2", kept)
    assert "./standby-only.txt" in kept_files
    assert checksums("pve2", group.ds) == checksums("pve1", group.ds)
    assert zfs_get("pve2", "readonly", group.ds) == "on"
    assert "pvezfsha:diverged" in sh("pve2", ["zfs", "get", "-H", "all", kept]).stdout


def test_second_concurrent_sync_exits_and_corrupts_nothing(group):
    group.write("big.bin", 24)
    group.write_config("pve1", defaults={"bandwidth_limit": "8M"})
    first = group.popen_sync()
    time.sleep(2.5)
    second = group.sync(expect=0)
    assert "busy" in second.stderr, second.stderr
    _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert checksums("pve2", group.ds) == checksums("pve1", group.ds)
    again = group.sync()
    assert "nothing to do" in again.stderr


def test_nothing_changed_means_no_snapshot_and_no_ssh(group):
    group.write("a.bin")
    group.sync()
    before = snapshots("pve1", group.ds)
    p = group.sync()
    assert "nothing to do" in p.stderr and snapshots("pve1", group.ds) == before


def test_sync_on_a_standby_does_nothing_and_says_so(group):
    group.write("a.bin")
    p = group.sync(node="pve2")
    assert "is standby (primary is pve1); nothing to do" in p.stderr
    assert snapshots("pve1", group.ds) == []


def test_dry_run_prints_the_plan_and_changes_nothing(group):
    group.write("a.bin")
    p = group.sync("--dry-run")
    assert "would snapshot" in p.stderr
    assert snapshots("pve1", group.ds) == [] and sh("pve2", ["zfs", "list", group.ds], check=False).returncode != 0


def test_retention_keeps_the_newest_and_the_common_snapshot(group):
    group.write_config("pve1", defaults={"keep": 2})
    for i in range(4):
        group.write(f"{i}.bin")
        group.sync()
    assert len(snapshots("pve1", group.ds)) == 2
    assert len(snapshots("pve2", group.ds)) == 2
    assert snapshots("pve2", group.ds) == snapshots("pve1", group.ds)


def test_status_shows_each_standbys_common_snapshot_and_age(group):
    group.write("a.bin")
    group.sync()
    p = group.run("status", str(group.ctid), check=True)
    newest = snapshots("pve1", group.ds)[-1][0].split("@")[1]
    row = next(ln for ln in p.stdout.splitlines() if ln.split()[:3] == [group.ds, "pve2", "ok"])
    assert row.endswith(f"@{newest}"), p.stdout


def test_bad_config_is_rejected_with_a_clear_error_and_nothing_touched(group):
    group.write("a.bin")
    sh("pve1", f"echo 'keep = \"many\"' >> {group.config}")
    p = group.run("sync", str(group.ctid))
    assert p.returncode == 2
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and group.config in lines[0] and "keep" in lines[0], p.stderr
    assert snapshots("pve1", group.ds) == []


def test_a_snapshot_taken_on_the_read_only_standby_is_pruned_not_kept_as_divergence(group):
    group.write("a.bin")
    group.sync()
    sh("pve2", ["zfs", "snapshot", f"{group.ds}@{sanoid(9)}"])      # sanoid running on the standby by mistake
    assert zfs_get("pve2", "written", f"{group.ds}@{sanoid(9)}") == "0"
    group.write("b.bin")
    p = group.sync()
    assert "held nothing and were pruned" in p.stderr and f"@{sanoid(9)}" in p.stderr, p.stderr
    assert not group.kept("pve2") and "kept as" not in p.stderr
    assert sanoid(9) not in autosnaps("pve2", group.ds)
    assert checksums("pve2", group.ds) == checksums("pve1", group.ds)


def test_a_standby_snapshot_with_data_of_its_own_is_still_kept(group):
    group.write("a.bin")
    group.sync()
    group.diverge("pve2")                                             # a write on the standby...
    sh("pve2", ["zfs", "snapshot", f"{group.ds}@{sanoid(9)}"])      # ...then a snapshot of it
    group.write("b.bin")
    p = group.sync()
    assert "kept as" in p.stderr and len(group.kept("pve2")) == 1, p.stderr
    assert "./standby-only.txt" in checksums("pve2", group.kept("pve2")[0], sanoid(9))


def test_sanoid_gated_by_is_primary_snapshots_the_primary_only_and_its_snapshots_follow(group):
    # What sanoid-pvezfsha@.service runs (the guests have no systemd: its
    # ExecCondition is the `&&`).
    d = f"/etc/sanoid/pvezfsha-{group.ctid}"
    conf = (f"[{group.ds}]\n\tuse_template = t\n[template_t]\n\thourly = 36\n\tdaily = 0\n\tmonthly = 0\n"
            f"\tyearly = 0\n\tautosnap = yes\n\tautoprune = yes\n")
    run = (f"pvezfsha is-primary {group.ctid} && sanoid --configdir={d} --cache-dir={d}/cache "
           f"--run-dir={d}/run --take-snapshots --prune-snapshots")
    try:
        for node in group.nodes:
            sh(node, f"mkdir -p {d}/cache {d}/run && cat > {d}/sanoid.conf", input=conf)
        group.write("a.bin")
        group.sync()
        on_primary = sh("pve1", ["sh", "-c", run], env=group.env(), check=False)
        on_standby = sh("pve2", ["sh", "-c", run], env=group.env(), check=False)
        assert on_primary.returncode == 0 and autosnaps("pve1", group.ds), on_primary.stdout + on_primary.stderr
        assert on_standby.returncode == 1 and "standby (primary is pve1)" in on_standby.stdout
        assert not autosnaps("pve2", group.ds)
        group.write("b.bin")
        group.sync()
        assert autosnaps("pve2", group.ds) == autosnaps("pve1", group.ds)
    finally:
        for node in group.nodes:
            sh(node, ["rm", "-rf", d], check=False)


def test_a_standby_never_prunes_a_sanoid_snapshot_it_did_not_receive_from_pvezfsha(group):
    # An old primary's own sanoid history after a move, or a hand-seeded
    # copy's, carries no mark: it is not pvezfsha's to destroy.
    group.write("a.bin")
    group.sync()
    sh("pve1", ["zfs", "snapshot", f"{group.ds}@{sanoid(1)}"])
    group.write("b.bin")
    group.sync()
    mine = f"{group.ds}@{sanoid(1)}"
    assert zfs_get("pve2", "pvezfsha:carried", mine) == "received"
    sh("pve2", ["zfs", "inherit", "pvezfsha:carried", mine])        # as if pve2 had taken it itself
    # A mark on the dataset (an admin, a `zfs send -p` seed) is inherited by
    # every snapshot, but says nothing of this one.
    sh("pve2", ["zfs", "set", "pvezfsha:carried=received", group.ds])
    sh("pve1", ["zfs", "destroy", mine])                              # sanoid prunes it on the primary
    group.write("c.bin")
    group.sync()
    assert sanoid(1) in autosnaps("pve2", group.ds)


def test_an_admins_snapshot_on_the_standby_is_kept_as_divergence_even_when_empty(group):
    group.write("a.bin")
    group.sync()
    sh("pve2", ["zfs", "snapshot", f"{group.ds}@before-upgrade"])
    group.write("b.bin")
    p = group.sync()
    kept = group.kept("pve2")
    assert "kept as" in p.stderr and len(kept) == 1, p.stderr
    assert any(n.endswith("@before-upgrade") for n, _ in snapshots("pve2", kept[0]))
