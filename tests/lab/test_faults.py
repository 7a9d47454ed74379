"""The fault-injection suite: takeover safety under faults, on real ZFS, in a
3-node lab whose /etc/pve is the emulated pmxcfs (cfs.py), with Proxmox HA
played by hasim.py and a container writing throughout.

Each scenario injects one fault and then checks the same three things:
- no write the primary had acknowledged as replicated is missing on the node
  that serves afterwards;
- every other write the container was told succeeded is either there too or
  in a kept copy (a diverged dataset pvezfsha set aside): nothing destroyed;
- the service runs again with no manual step, or the output says exactly
  what the admin must do.

Driven from the host (power cuts, link cuts): `make test-faults`.
"""

from __future__ import annotations

import json
import re
import threading
import time

import pytest

from hasim import account
from labnode import ON_HOST, lab, sh, zfs_get

pytestmark = pytest.mark.skipif(not ON_HOST, reason="the fault suite is driven from the host (make test-faults)")

ROWS: list[dict] = []   # the summary table, printed by conftest.py


@pytest.fixture
def make_ha(tmp_path):
    """HA for a new container on every node of the cfs lab (Group's kwargs)."""
    from hasim import HA, CfsGroup
    assert lab().cfs is not None, "the fault suite needs the cfs lab: make test-faults"
    made = []

    def make(**kw):
        g = CfsGroup(tmp_path, nodes=tuple(lab().nodes), **kw)
        made.append(HA(g, fence_delay=3.0))
        return made[-1]
    yield make
    for h in made:
        if h.ct is not None:
            h.ct.gone()
        h.g.cleanup()


@pytest.fixture
def ha(make_ha):
    return make_ha()


def row(ha, fault: str, happened: str, serving: str, recovered_s: float | None, allow_destroyed=()) -> dict:
    a = account(ha, serving)
    destroyed = [w for w in a["destroyed"] if w not in set(allow_destroyed)]
    r = {"fault": fault, "happened": happened, "serving": serving, "writes": a["writes"], "acked": a["acked"],
         "acked_lost": len(a["lost_acked"]), "acked_bytes_lost": sum(len(f"{w.i}\n") for w in a["lost_acked"]),
         "kept_copies": a["kept_copies"], "kept_writes": a["kept_writes"], "destroyed": len(destroyed),
         "recover_s": None if recovered_s is None else round(recovered_s, 1)}
    ROWS.append(r)
    assert not a["lost_acked"], f"acknowledged writes missing on {serving}: {a['lost_acked'][:5]}"
    assert not destroyed, (f"writes neither on {serving} nor in a kept copy: {destroyed[:5]}...{destroyed[-3:]}\n"
                           f"{a['where']}\n" + "\n".join(f"{e.t:7.1f} {e.what}" for e in ha.events))
    assert a["acked"] > 0, "the scenario acknowledged no write: it proves nothing"
    return r


def cycle(ha, node: str | None = None, expect: int | None = 0):
    """A timer cycle on node (the primary by default), after any sync that
    post-start left running there."""
    node = node or ha.node
    ha.g.wait_idle(node)
    p = ha.g.sync(node=node, expect=expect)
    ha.observe()
    return p


def run_a_while(ha, seconds: float) -> None:
    n = len(ha.writes)
    time.sleep(seconds)
    assert len(ha.writes) > n, f"the container wrote nothing in {seconds} s: {ha.ct.error if ha.ct else ''}"


def started(ha, node="pve1"):
    """The service started on node, written to and replicated to the others."""
    ha.g.move(node)
    assert ha.start(node) == node, "\n".join(ha.outputs)
    ha.g.wait_idle(node)
    run_a_while(ha, 2)
    cycle(ha)
    run_a_while(ha, 2)


def power_cut(ha, node: str, prefer: list[str]) -> tuple[str, float]:
    """node loses power with the container on it, and HA recovers the
    service by `prefer`: the node it runs on, and seconds from the cut."""
    t0 = time.monotonic()
    ha.ct.gone()
    lab().crash(node)
    ha.prefer = prefer
    return ha.recover(node), time.monotonic() - t0


def returns_as_standby(ha, node: str, primary: str) -> None:
    """node boots again, and its own timer finds it is a standby now."""
    lab().boot(node)
    s = ha.g.sync(node=node, expect=None)
    assert f"standby (primary is {primary})" in s.stderr, s.stderr


def output(ha) -> str:
    return "\n".join(ha.outputs)


# -- the scenarios -----------------------------------------------------------

def test_a_partition_with_both_sides_up_keeps_the_isolated_primarys_writes(ha):
    """7: the primary's cluster link is cut while it keeps running and its
    container keeps writing. Only the quorate side takes over; the isolated
    primary cannot replicate; after the heal its writes are kept."""
    started(ha)
    old = ha.ct
    t0 = time.monotonic()
    lab().link("pve1", False)
    run_a_while(ha, 3)                                   # still writing, alone
    s = ha.g.sync(node="pve1", expect=None)              # its timer fires
    assert s.returncode != 0 and "quorate" in s.stderr, s.stderr
    assert ha.g.record()["primary"] == "pve1"            # it changed nothing
    serving = ha.recover("pve1")
    assert serving and serving != "pve1", output(ha)
    recovered = time.monotonic() - t0
    pre = [o for o in ha.outputs if "pre-start" in o.splitlines()[0]][-1]
    assert "data-loss window" in pre, pre
    run_a_while(ha, 2)
    # Heal. pve1's watchdog would have reset it long ago: its container is gone.
    old.stop()
    lab().link("pve1", True)
    s = ha.g.sync(node="pve1", expect=None)              # its timer: it is a standby now
    assert "standby (primary is " in s.stderr, s.stderr
    c = cycle(ha, serving, expect=None)
    if c.returncode != 0:
        diag = "\n".join(sh("pve1", ["zfs", "get", "-Hp", "-o", "name,property,value,source",
                                      "written,readonly,canmount,mounted,origin,mountpoint", d]).stdout
                         for d in ha.g.datasets_on("pve1"))
        diag += sh("pve1", ["zfs", "list", "-t", "all", "-o", "name,guid,written,createtxg", "-r", "tank"]).stdout
        diag += sh("pve1", "grep tank /proc/self/mountinfo; pgrep -af pvezfsha", check=False).stdout
        raise AssertionError(c.stderr + diag)
    kept = ha.g.kept("pve1")
    assert len(kept) == 1, f"{kept}\n{s.stderr}\n{c.stderr}\n{ha.g.datasets_on('pve1')}"
    cycle(ha, serving)
    assert ha.g.kept("pve1") == kept                     # no new kept copy per cycle
    row(ha, "partition, both sides up", f"served on {serving}; pve1 refused to replicate; "
        f"its partition writes kept as {kept[0].split('/')[-1]}", serving, recovered)


def test_no_quorum_anywhere_means_no_takeover(ha):
    """8: every node alone: nobody may take over, whatever HA or an admin does."""
    started(ha)
    t0 = time.monotonic()
    rec = ha.g.record()
    ha.ct.gone()
    lab().crash("pve1")
    for n in ha.g.nodes[1:]:
        lab().link(n, False)
    assert ha.recover("pve1") == ""                      # HA has no quorate survivor
    for n in ha.g.nodes[1:]:
        p = ha.g.hook(n, "pre-start")                    # an admin's forced start
        assert p.returncode != 0 and "not quorate" in p.stderr, p.stderr
        assert zfs_get(n, "readonly", ha.g.ds) == "on"
    assert ha.g.record() == rec
    for n in ha.g.nodes[1:]:
        lab().link(n, True)
    lab().boot("pve1")
    serving = ha.start("pve1")
    assert serving == "pve1", output(ha)
    recovered = time.monotonic() - t0
    run_a_while(ha, 2)
    row(ha, "no quorum anywhere", "every pre-start refused (not quorate); after the heal pve1 served again",
        serving, recovered)


def test_ha_picking_the_staler_survivor_still_serves_every_acknowledged_write(ha):
    """14: pve3 missed the last cycles; the primary dies and HA tries pve3
    first. Whatever pve3 decides (catch up from pve2, or refuse so that HA
    moves on), every acknowledged write is served."""
    started(ha)
    lab().link("pve3", False)                    # pve1+pve2 keep quorum
    run_a_while(ha, 2)
    cycle(ha, expect=None)                       # reaches pve2 only
    run_a_while(ha, 1)
    cycle(ha, expect=None)
    rec = ha.g.record()
    assert rec["replicas"]["pve2"][ha.g.ds]["guid"] != rec["replicas"]["pve3"][ha.g.ds]["guid"], rec
    lab().link("pve3", True)
    serving, recovered = power_cut(ha, "pve1", ["pve3", "pve2", "pve1"])
    assert serving in ("pve2", "pve3"), output(ha)
    pres = [o for o in ha.outputs if " pre-start " in o.splitlines()[0]]
    verdicts = [o.splitlines()[0].strip("- ") for o in pres[1:]]
    run_a_while(ha, 2)
    returns_as_standby(ha, "pve1", serving)      # its last writes must be kept
    cycle(ha, serving)
    row(ha, "3 nodes, HA picks the staler survivor",
        f"served on {serving} after {len(pres) - 1} start(s): {'; '.join(verdicts)}", serving, recovered)


def test_a_power_cut_of_the_node_taking_over_after_the_final_pull(ha):
    """5: a planned move to pve2; pve2 loses power after its final pull and
    the fence, before the promotion. HA recovers the service elsewhere."""
    started(ha)
    ha.stop()
    ha.g.move("pve2")
    t0 = time.monotonic()
    res = {}
    th = threading.Thread(target=lambda: res.setdefault(
        "p", ha.g.hook("pve2", "pre-start", env={"PVEZFSHA_FAULT": "takeover.fenced:stop"})))
    th.start()
    deadline = time.monotonic() + 300
    while sh("pve2", "ps -eo stat,args | grep -q '^T.*pvezfsha'", check=False).returncode != 0:
        assert th.is_alive(), f"pre-start ended without reaching the fault point: {res}"
        assert time.monotonic() < deadline, "pre-start never reached takeover.fenced"
        time.sleep(0.5)
    lab().crash("pve2")
    th.join(60)
    rec = ha.g.record()
    ha.prefer = ["pve3", "pve1"]
    serving = ha.recover("pve2")
    assert serving, output(ha)
    recovered = time.monotonic() - t0
    lab().boot("pve2")
    run_a_while(ha, 2)
    cycle(ha, serving)
    row(ha, "power cut of the node taking over, after the fence",
        f"record left at {rec['primary']} epoch {rec['epoch']}; HA recovered to {serving}", serving, recovered)


def test_a_power_cut_of_the_primary_mid_sync_then_a_takeover_over_a_partial_receive(ha):
    """4: the primary loses power while a big send runs; the standby holds a
    partial (resumable) receive when it takes over."""
    ha.g.write_config("pve1", defaults={"bandwidth_limit": "4M"})
    started(ha)
    sh("pve1", ["dd", "if=/dev/urandom", f"of={ha.g.mnt}/big.bin", "bs=1M", "count=48", "status=none"])
    th = threading.Thread(target=lambda: ha.g.sync(node="pve1", expect=None))
    th.start()
    deadline = time.monotonic() + 120
    while zfs_get("pve2", "receive_resume_token", ha.g.ds) in ("-", ""):
        assert th.is_alive() and time.monotonic() < deadline, "no partial receive appeared on pve2"
        time.sleep(0.3)
    time.sleep(1)
    t0 = time.monotonic()
    ha.ct.gone()
    lab().crash("pve1")
    th.join(60)
    ha.prefer = ["pve2", "pve3"]
    serving = ha.recover("pve1")
    assert serving == "pve2", output(ha)
    recovered = time.monotonic() - t0
    assert zfs_get("pve2", "receive_resume_token", ha.g.ds) in ("-", "")
    run_a_while(ha, 2)
    returns_as_standby(ha, "pve1", "pve2")
    cycle(ha, "pve2")
    row(ha, "primary power cut mid-sync (partial receive on the standby)",
        f"pve2 dropped the partial receive and served; pve1 returned as a standby, "
        f"{len(ha.g.kept('pve1'))} kept copy", serving, recovered)


def step_holds(node: str, ds: str) -> list[str]:
    """pvezfsha's holds on a transfer in flight, on ds's snapshots."""
    snaps = sh(node, ["zfs", "list", "-H", "-t", "snapshot", "-d", "1", "-o", "name", ds]).stdout.splitlines()
    out = sh(node, ["zfs", "holds", "-H", *snaps], check=False).stdout if snaps else ""
    return [line for line in out.splitlines() if "\tpvezfsha-step" in line]


def _interrupt(ha, fault: str) -> None:
    if fault == "sender killed":
        sh("pve1", ["pkill", "-9", "-f", "pvezfsha -v sync"], check=False)
    elif fault == "receiver killed":
        ha.outputs.append(sh("pve2", "ps -eo pid,args | grep [r]eceive", check=False).stdout)
        sh("pve2", ["pkill", "-9", "-f", "pvezfsha .*receive"], check=False)
    else:
        lab().link("pve2", False)


@pytest.mark.parametrize("fault", ["sender killed", "receiver killed", "cluster link cut"])
def test_a_transfer_interrupted_mid_stream_resumes_instead_of_restarting(ha, fault):
    """1, 2, 3: the send to pve2 is cut halfway (the sender or the receiver
    SIGKILLed, or pve2's link unplugged while both keep running). The next
    cycle resumes the stream where it stopped; nothing is lost or kept."""
    # Slow enough to cut halfway; a stalled link is given up after 20 s.
    ha.g.write_config("pve1", defaults={"bandwidth_limit": "2M", "stall_timeout": "20s"})
    started(ha)
    sh("pve1", ["dd", "if=/dev/urandom", f"of={ha.g.mnt}/big.bin", "bs=1M", "count=24", "status=none"])
    alloc = lambda: int(sh("pve2", ["zpool", "list", "-Hp", "-o", "allocated", "tank"]).stdout)  # noqa: E731
    start = alloc()
    res = {}
    th = threading.Thread(target=lambda: res.setdefault("p", ha.g.sync(node="pve1", expect=None)))
    th.start()
    deadline = time.monotonic() + 120
    while alloc() - start < 10 * 2**20:
        assert th.is_alive() and time.monotonic() < deadline, f"the send never got halfway: {res}"
        time.sleep(0.5)
    t0 = time.monotonic()
    _interrupt(ha, fault)
    th.join(300)
    assert res["p"].returncode != 0, res["p"].stderr
    if fault == "cluster link cut":
        lab().link("pve2", True)
    token = zfs_get("pve2", "receive_resume_token", ha.g.ds) not in ("-", "")
    # A receiving process killed by a signal gets EINTR inside the receive
    # ioctl, and OpenZFS then discards the partial state (only a truncated
    # stream is saved): measured here, the next cycle resends the step.
    assert token or fault == "receiver killed", f"no resumable state was left\n{res['p'].stderr}"
    ha.g.write_config("pve1")
    p = cycle(ha)
    recovered = time.monotonic() - t0
    first = [int(b) for b in re.findall(r"-> pve2: .*?: (\d+) bytes in ", p.stderr)]
    if token:
        assert re.search(r"pve2: .*resume", p.stderr), p.stderr
        assert first and first[0] < 0.85 * 24 * 2**20, f"pve2 got {first} bytes: a restart, not a resume"
        happened = f"next cycle resumed: {first[0] / 2**20:.1f} MiB of the 24 MiB stream resent"
    else:
        happened = f"no partial state kept; next cycle resent the step ({first[0] / 2**20:.1f} MiB)"
    assert zfs_get("pve2", "receive_resume_token", ha.g.ds) in ("-", "")
    run_a_while(ha, 1)
    cycle(ha)
    # 11: the killed run's step holds (they kept the step resumable) are gone.
    assert step_holds("pve1", ha.g.ds) == [], step_holds("pve1", ha.g.ds)
    row(ha, f"{fault} mid-stream", happened + "; the killed run's step holds released", "pve1", recovered)
    assert not any(ha.g.kept(n) for n in ha.g.nodes)


def test_the_old_primary_returns_with_diverged_writes_and_snapshots_of_its_own(ha):
    """6: after a power cut and a crash failover, the old primary returns
    with the writes it had not sent, plus a snapshot and writes made after
    it came back (sanoid, an admin). Replication to it goes on in the same
    cycle, and later cycles keep no further copies."""
    from hasim import Write
    started(ha)
    serving, recovered = power_cut(ha, "pve1", ["pve2", "pve3"])
    assert serving == "pve2", output(ha)
    run_a_while(ha, 2)
    lab().boot("pve1")
    i = max(w.i for w in ha.writes) + 100_000
    sh("pve1", ["zfs", "snapshot", f"{ha.g.ds}@admin-after-return"])
    sh("pve1", ["python3", "-c", f"open('{ha.g.mnt}/clients/w{i:07d}', 'w').write('{i}\\n')"])
    ha.writes.append(Write(i, time.time(), "pve1"))
    s = ha.g.sync(node="pve1", expect=None)
    assert "standby (primary is pve2)" in s.stderr, s.stderr
    c = cycle(ha, "pve2")                               # exit 0: the same cycle replicates on
    assert "diverged state kept as" in c.stderr, c.stderr
    kept = ha.g.kept("pve1")
    for _ in range(2):
        run_a_while(ha, 1)
        cycle(ha, "pve2")
    assert ha.g.kept("pve1") == kept and len(kept) == 1, ha.g.kept("pve1")
    row(ha, "old primary returns with diverged writes and snapshots",
        f"kept as {kept[0].split('/')[-1]} in the same cycle that went on replicating; 2 more cycles kept nothing",
        serving, recovered)


def test_a_planned_move_while_the_primarys_timer_sync_runs_loses_nothing(ha):
    """15: HA relocates the container while a (slow) timer cycle is sending."""
    ha.g.write_config("pve1", defaults={"bandwidth_limit": "4M"})
    started(ha)
    sh("pve1", ["dd", "if=/dev/urandom", f"of={ha.g.mnt}/big.bin", "bs=1M", "count=16", "status=none"])
    th = threading.Thread(target=lambda: ha.g.sync(node="pve1", expect=None))
    th.start()
    deadline = time.monotonic() + 60
    while sh("pve2", ["pgrep", "-f", "pvezfsha .*receive"], check=False).returncode != 0:
        assert th.is_alive() and time.monotonic() < deadline, "the timer cycle never started sending"
        time.sleep(0.3)
    t0 = time.monotonic()
    serving = ha.relocate("pve2")
    recovered = time.monotonic() - t0
    th.join(300)
    assert serving == "pve2", output(ha)
    pre = [o for o in ha.outputs if " pve2 pre-start " in o.splitlines()[0]][-1]
    assert "data-loss window: none" in pre, pre
    a = row(ha, "planned move during the primary's timer sync", "the handover waited for the cycle; RPO 0",
            serving, recovered)
    assert a["kept_writes"] == 0 and a["kept_copies"] == 0     # every write is live on pve2


def test_a_standby_down_for_more_than_keep_cycles_catches_up_incrementally(make_ha):
    """16: pve3 is off while the primary runs more changed cycles than it
    keeps snapshots; back, it gets an incremental, not a full resend."""
    ha = make_ha(keep=3)
    started(ha)
    lab().crash("pve3")
    for _ in range(5):
        run_a_while(ha, 1.2)
        cycle(ha, expect=None)                          # pve3 unreachable: that part fails
    lab().boot("pve3")
    t0 = time.monotonic()
    p = cycle(ha)
    recovered = time.monotonic() - t0
    assert re.search(r"-> pve3: @\S+ -> @\S+: \d+ bytes", p.stderr), p.stderr
    assert not ha.g.kept("pve3")
    row(ha, "standby down for more than `keep` changed cycles", "caught up incrementally from the cursor; "
        "no full resend, no kept copy", "pve1", recovered)


def test_a_corrupt_config_on_one_node_only(ha):
    """12: pve2's config is broken; the primary dies and HA tries pve2 first."""
    started(ha)
    sh("pve2", f"printf '[defaults\\n' > {ha.g.config}")
    serving, recovered = power_cut(ha, "pve1", ["pve2", "pve3"])
    assert serving == "pve3", output(ha)
    refused = [o for o in ha.outputs if " pve2 pre-start " in o.splitlines()[0]]
    assert refused and all("rc=0" not in o.splitlines()[0] for o in refused), refused
    assert all(ha.g.config in o for o in refused), refused      # it says which file is broken
    run_a_while(ha, 2)
    lab().boot("pve1")
    ha.g.sync(node="pve1", expect=None)
    ha.g.write_config("pve2")                                   # the admin fixes it
    cycle(ha, "pve3")
    row(ha, "corrupt config on one node", f"pve2 refused ({len(refused)}x, naming the file); HA relocated "
        "to pve3, which served", serving, recovered)


def test_an_admin_destroying_the_base_snapshot_on_both_ends(ha):
    """10: the newest common snapshot is destroyed on the primary and on
    pve2 (holds released first, as an admin would have to)."""
    started(ha)
    run_a_while(ha, 1)
    cycle(ha)
    base = ha.g.record()["replicas"]["pve2"][ha.g.ds]["snapshot"]
    for node in ("pve1", "pve2"):
        snap = f"{ha.g.ds}@{base}"
        for hold in sh(node, ["zfs", "holds", "-H", snap]).stdout.splitlines():
            sh(node, ["zfs", "release", hold.split("\t")[1], snap])
        sh(node, ["zfs", "destroy", snap])
    run_a_while(ha, 1)
    t0 = time.monotonic()
    p = cycle(ha)
    recovered = time.monotonic() - t0
    # pve2's head now differs from its newest remaining snapshot by what the
    # destroyed one held: a receive would need a rollback, so that state is
    # kept (a copy of data the primary has too), never rolled back.
    assert not ha.g.kept("pve1") and not ha.g.kept("pve3") and len(ha.g.kept("pve2")) <= 1
    kept = ha.g.kept("pve2")
    run_a_while(ha, 1)
    cycle(ha)
    assert ha.g.kept("pve2") == kept
    row(ha, "base snapshot destroyed by an admin (primary and pve2)",
        "next cycle replicated from an older common base (pve2" + (", its head kept aside" if kept else "")
        + ") and the cursor bookmark (pve3)", "pve1", recovered)


def _fill(node: str) -> None:
    """Take all but ~4 MiB of the pool, instantly: a reservation, no writes."""
    avail = int(sh(node, ["zfs", "get", "-Hp", "-o", "value", "available", "tank"]).stdout)
    sh(node, ["zfs", "create", "-o", f"refreservation={max(avail - (4 << 20), 0)}", "tank/filler"])


def test_a_full_pool_on_the_standby_mid_receive_and_on_the_primary(ha):
    """9: pve2's pool fills up during a receive; later the primary's fills
    up with the container writing. Each cycle fails cleanly and the next
    one after space is freed succeeds."""
    from hasim import Container
    started(ha)
    _fill("pve2")
    try:
        sh("pve1", ["dd", "if=/dev/urandom", f"of={ha.g.mnt}/big.bin", "bs=1M", "count=32", "status=none"])
        p = cycle(ha, expect=None)
        assert p.returncode != 0 and "Traceback" not in p.stderr and "pve2" in p.stderr, p.stderr
    finally:
        sh("pve2", ["zfs", "destroy", "tank/filler"])
    t0 = time.monotonic()
    cycle(ha)
    _fill("pve1")
    try:
        deadline = time.monotonic() + 60
        while ha.ct.p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)     # the container's writes fail: ENOSPC
        p = cycle(ha, expect=None)
        assert "Traceback" not in p.stderr, p.stderr
    finally:
        sh("pve1", ["zfs", "destroy", "tank/filler"])
    ha.ct.gone()
    ha.ct = Container(ha.g, "pve1", ha.next_index(), ha.period, ha.writes)
    run_a_while(ha, 2)
    cycle(ha)
    recovered = time.monotonic() - t0
    row(ha, "pool full: standby mid-receive, then the primary", f"failed cleanly (primary cycle exit "
        f"{p.returncode}); next cycles after freeing space succeeded", "pve1", recovered)


def test_names_with_spaces_colons_and_long_components_and_hostile_file_names(make_ha):
    """13: a dataset named with a space, a colon and a 100-character
    component; files named with unicode, a newline and a leading dash. A
    planned move carries all of them, byte for byte."""
    ctid = 900_000 + int(time.time()) % 99_999
    ha = make_ha(ctid=ctid, names=[f"tank/t{ctid} my:data-" + "x" * 100])
    started(ha)
    odd = ["é中文.txt", "new\nline", "-rf", "--help", " lead space"]
    put = ("import os,sys\n"
           "for n in sys.argv[2:]:\n"
           "    open(os.path.join(sys.argv[1], n), 'w').write(n)\n")
    sh("pve1", ["python3", "-c", put, ha.g.mnt, *odd])
    t0 = time.monotonic()
    serving = ha.relocate("pve2")
    assert serving == "pve2", output(ha)
    recovered = time.monotonic() - t0
    got = json.loads(sh("pve2", ["python3", "-c", "import os,sys,json; d=sys.argv[1]; print(json.dumps("
                                 "{n: open(os.path.join(d, n)).read() for n in os.listdir(d) if not n.startswith(('clients', '.'))}))",
                                 ha.g.mnt]).stdout)
    assert {n: got.get(n) for n in odd} == {n: n for n in odd}
    row(ha, "odd dataset and file names", "relocated with every file byte for byte", serving, recovered)


KEYDIR = "/etc/pvezfsha-test-keys"


@pytest.fixture
def two_pools(make_ha):
    """A container with tank/t<ctid> and an encrypted tank2/t<ctid>-enc,
    which pve3 holds under another name (a per-node override)."""
    for node in lab().nodes:
        sh(node, "zpool list tank2 >/dev/null 2>&1 || zpool import -d /var/lib/lab tank2 2>/dev/null || "
                 "{ truncate -s 1G /var/lib/lab/tank2.img && zpool create -o cachefile=none -O mountpoint=/tank2 "
                 "tank2 /var/lib/lab/tank2.img; }; sync")
    ha = make_ha()
    g = g0 = ha.g
    enc = f"tank2/t{g.ctid}-enc"
    other = f"tank2/renamed-{g.ctid}"
    key = f"{KEYDIR}/{g.ctid}.key"
    sh("pve1", f"mkdir -p {KEYDIR} && head -c 32 /dev/urandom > {key}")
    material = sh("pve1", ["base64", "-w0", key]).stdout
    for node in lab().nodes[1:]:
        sh(node, f"mkdir -p {KEYDIR} && base64 -d > {key} && sync", input=material)
    sh("pve1", ["zfs", "create", "-o", "encryption=on", "-o", "keyformat=raw", "-o", f"keylocation=file://{key}", enc])
    entry = '{ name = "%s", on = { pve3 = "%s" } }' % (enc, other)
    for node in g.nodes:
        lines = sh(node, ["cat", g.config]).stdout.replace(
            f"datasets = {json.dumps(g.datasets)}", f"datasets = [{json.dumps(g.ds)}, {entry}]")
        sh(node, f"cat > {g.config}", input=lines)
    g.enc, g.other, g.key = enc, other, key
    yield ha
    for node in g0.nodes:
        for ds in (enc, other):
            sh(node, f"zfs list -H -o name -r tank2 | grep -F '{ds}' | sort -r | xargs -r -n1 zfs destroy -R",
               check=False)
        sh(node, ["rm", "-f", key], check=False)


def test_two_pools_one_encrypted_with_a_per_node_name_survive_a_crash_failover(two_pools):
    """17: a crash failover to the node that names the encrypted dataset
    differently: both datasets are promoted, the raw replica with its key."""
    ha = two_pools
    g = ha.g
    sh("pve1", ["sh", "-c", f"head -c 2000000 /dev/urandom > /tank2/t{g.ctid}-enc/secret.bin && sync"])
    want = sh("pve1", ["sha256sum", f"/tank2/t{g.ctid}-enc/secret.bin"]).stdout.split()[0]
    started(ha)
    assert zfs_get("pve3", "keystatus", g.other) == "unavailable"      # held raw, without the key
    assert zfs_get("pve3", "encryption", g.other) != "off"
    serving, recovered = power_cut(ha, "pve1", ["pve3", "pve2"])
    assert serving == "pve3", output(ha)
    assert zfs_get("pve3", "mounted", g.other) == "yes" and zfs_get("pve3", "keystatus", g.other) == "available"
    mnt = zfs_get("pve3", "mountpoint", g.other)
    assert sh("pve3", ["sha256sum", f"{mnt}/secret.bin"]).stdout.split()[0] == want
    run_a_while(ha, 2)
    lab().boot("pve1")
    ha.g.sync(node="pve1", expect=None)
    cycle(ha, "pve3")
    row(ha, "two pools, one encrypted (raw), per-node name", f"pve3 promoted {g.other} with its key and "
        f"{g.ds}; pve1 returned as a standby", serving, recovered)
