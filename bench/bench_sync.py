#!/usr/bin/env python3
"""`make bench`: pvezfsha against a raw pipeline and against syncoid, in the lab.

Runs inside lab guest pve1 as root (`python3 /opt/pvezfsha/bench/bench_sync.py`),
replicating to pve2 over the lab link. Two benchmarks, same data and link,
one run; see bench/README.md for the method and the latest figures.

1. throughput: `pvezfsha sync` of ~256 MiB of new random data against
   `zfs send -L -e -c -i A B | ssh pve2 zfs receive -u tank/bench-tp-raw` of
   the same increment, alternating which goes first, each timed wall clock.
2. no-op: a cycle with nothing changed at 10 and 1,000 existing snapshots,
   `pvezfsha sync`, `pvezfsha sync --dry-run` and
   `syncoid --no-sync-snap --no-privilege-elevation`, interleaved.

Prints a table, writes /var/tmp/bench-results.json and prints it at the end.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tests" / "lab"))
sys.path.insert(0, str(REPO))

from labnode import IPS, Group, sh, snapshots  # noqa: E402

from pvezfsha.transport import ssh_argv  # noqa: E402  (the exact ssh options pvezfsha uses)
from pvezfsha.versions import snapshot_name  # noqa: E402

PEER = "pve2"
PEER_ADDR = IPS[PEER]          # what pvezfsha resolves pve2 to (from .members)
SEND_FLAGS = ["-L", "-e", "-c"]  # pvezfsha's default send flags: large_blocks, embedded_data, compress
DATA = Path("/var/tmp/bench-random.bin")
RESULTS = Path("/var/tmp/bench-results.json")

TP_CTID, TP_DS = 9901, "tank/bench-tp"
TP_RAW = "tank/bench-tp-raw"   # on pve2 only; Group("tank/bench-tp").cleanup() covers it too
NOOP_CTID_BASE = 9910       # + index of N in --snapshots
MIB = 1 << 20


def note(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def code_fingerprint(tree: bool) -> dict[str, str]:
    """Which pvezfsha each node runs (the lab push's tree, a .deb's, or with --tree this
    script's), so a push by someone else in the middle of a run cannot go unnoticed."""
    where = f"{REPO}/pvezfsha" if tree else "/opt/pvezfsha/pvezfsha /usr/lib/python3/dist-packages/pvezfsha"
    wrapper = "" if tree else 'cat "$(command -v pvezfsha)";'
    cmd = (f"{{ {wrapper} find {where} -name '*.py' 2>/dev/null "
           "| sort | xargs -r cat; } | sha256sum | cut -c1-16")
    return {node: sh(node, cmd).stdout.strip() for node in ("pve1", PEER)}


def use_tree() -> None:
    """Run the pvezfsha of this script's tree on both nodes, not `pvezfsha` on PATH: for a lab
    where other engineers push their work in progress to /opt/pvezfsha at any time. The tree
    must be at the same path on pve2. Costs one extra exec of sh per ssh session (the wrapper)."""
    if sh(PEER, ["test", "-f", f"{REPO}/pvezfsha/__main__.py"], check=False).returncode:
        raise SystemExit(f"--tree: {REPO} is not on {PEER}; copy the same tree there first")
    bindir = Path("/var/tmp/bench-bin")
    bindir.mkdir(exist_ok=True)
    (bindir / "pvezfsha").write_text(f'#!/bin/sh\nPYTHONPATH={REPO} exec python3 -m pvezfsha "$@"\n')
    # pvezfsha runs `$PVEZFSHA_SSH ... -- pvezfsha receive`: point the peer at the same tree.
    (bindir / "ssh-tree").write_text(
        "#!/bin/sh\nn=$#; prev=\nfor a do\n"
        f'  if [ "$prev" = "--" ] && [ "$a" = pvezfsha ]; then set -- "$@" env PYTHONPATH={REPO} python3 -m pvezfsha\n'
        '  else set -- "$@" "$a"; fi\n  prev=$a\ndone\nshift "$n"\nexec ssh "$@"\n')
    for f in ("pvezfsha", "ssh-tree"):
        (bindir / f).chmod(0o755)
    os.environ["PATH"] = f"{bindir}:{os.environ['PATH']}"
    os.environ["PVEZFSHA_SSH"] = str(bindir / "ssh-tree")


def flush() -> None:
    """Dirty data of a previous step on disk on both nodes, so no step pays for another's txg sync."""
    sh("pve1", ["zpool", "sync", "tank"])
    sh(PEER, ["zpool", "sync", "tank"])


def guids(node: str, ds: str) -> dict[str, str]:
    return {name.split("@", 1)[1]: guid for name, guid in snapshots(node, ds)}


def bookmarks(ds: str) -> list[str]:
    out = sh("pve1", ["zfs", "list", "-H", "-t", "bookmark", "-o", "name", "-d", "1", ds], check=False).stdout
    return out.split()


def timed(fn):
    t0 = time.monotonic()
    res = fn()
    return time.monotonic() - t0, res


def step_lines(log: str) -> list[tuple[int, float]]:
    """(bytes, seconds) of each transfer, from pvezfsha's -v log."""
    return [(int(b), float(s)) for b, s in re.findall(r": (\d+) bytes in ([\d.]+) s", log)]


def noop_groups(ns: list[int], create: bool) -> dict[int, Group]:
    # keep above any N: retention must not prune the snapshots being counted.
    return {n: Group(ctid=NOOP_CTID_BASE + i, names=[f"tank/bench-n{n}"], create=create, keep=100_000)
            for i, n in enumerate(ns)}


def cleanup(ns: list[int]) -> None:
    """This run's datasets, and any other N a previous run left behind."""
    for node in ("pve1", PEER):
        out = sh(node, ["zfs", "list", "-H", "-o", "name", "-d", "1", "tank"], check=False).stdout
        ns = sorted(set(ns) | {int(m) for m in re.findall(r"^tank/bench-n(\d+)$", out, re.M)})
    for g in (Group(ctid=TP_CTID, names=[TP_DS], create=False), *noop_groups(ns, False).values()):
        g.cleanup()   # releases holds on both nodes, then destroys ds, ds-*, ds@*, ds#* there


# -- 1. throughput ----------------------------------------------------------------------------

def raw_pipeline(frm: str, to: str) -> float:
    """zfs send -i | ssh pve2 zfs receive -u, timed; a fresh ssh with pvezfsha's own options."""
    ssh = ssh_argv(PEER_ADDR, remote=("zfs", "receive", "-u", TP_RAW))
    t0 = time.monotonic()
    send = subprocess.Popen(["zfs", "send", *SEND_FLAGS, "-i", f"@{frm}", f"{TP_DS}@{to}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    recv = subprocess.Popen(ssh, stdin=send.stdout, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    send.stdout.close()
    _, rerr = recv.communicate()
    serr = send.stderr.read()
    send.wait()
    seconds = time.monotonic() - t0
    if send.returncode or recv.returncode:
        raise AssertionError(f"raw pipeline failed: send {send.returncode} {serr!r}, "
                             f"receive {recv.returncode} {rerr!r}")
    return seconds


def stream_estimate(frm: str, to: str) -> int:
    out = sh("pve1", ["zfs", "send", "-nP", *SEND_FLAGS, "-i", f"@{frm}", f"{TP_DS}@{to}"]).stdout
    m = re.search(r"^size\s+(\d+)", out, re.M)
    return int(m.group(1)) if m else 0


def pvezfsha(g: Group, *args: str, verbose: bool = True, expect: int = 0) -> tuple[float, subprocess.CompletedProcess]:
    """`pvezfsha [-v] sync ARGS CTID`, timed wall clock, the whole command and nothing else."""
    argv = ["pvezfsha", *(["-v"] if verbose else []), "sync", *args, str(g.ctid)]
    t0 = time.monotonic()
    p = subprocess.run(argv, env={**os.environ, **g.env()}, capture_output=True, text=True, timeout=3600)
    seconds = time.monotonic() - t0
    if p.returncode != expect:
        raise AssertionError(f"{' '.join(argv)} exited {p.returncode}:\n{p.stderr}")
    if hasattr(g, "pmxcfs_sync"):   # untimed: what pmxcfs would do with the record sync wrote
        g.pmxcfs_sync("pve1")
    return seconds, p


def pvezfsha_sync(g: Group) -> tuple[float, str]:
    seconds, p = pvezfsha(g)
    return seconds, p.stderr


def bench_throughput(rounds: int, mib: int) -> dict:
    note(f"throughput: setup ({mib} MiB per round, {rounds} rounds)")
    need = (rounds + 1) * mib * 2 + 200
    avail = int(sh(PEER, ["zfs", "get", "-Hp", "-o", "value", "available", "tank"]).stdout) // MIB
    if avail < need:
        raise SystemExit(f"pve2's pool has {avail} MiB free; {rounds} rounds of {mib} MiB need ~{need} MiB")
    if not DATA.exists() or DATA.stat().st_size != mib * MIB:
        note(f"generating {DATA} ({mib} MiB from /dev/urandom, once)")
        sh("pve1", ["dd", "if=/dev/urandom", f"of={DATA}", "bs=1M", f"count={mib}", "status=none"])

    g = Group(ctid=TP_CTID, names=[TP_DS])
    g.write("base.bin", 1)
    _, log = pvezfsha_sync(g)                      # full send of the base
    base = snapshots("pve1", TP_DS)[-1][0].split("@")[1]
    seed = subprocess.run(f"zfs send {' '.join(SEND_FLAGS)} {TP_DS}@{base} | "
                          f"ssh -o BatchMode=yes {PEER_ADDR} zfs receive -u {TP_RAW}",
                          shell=True, capture_output=True, text=True)
    if seed.returncode:
        raise AssertionError(f"seeding {TP_RAW} failed: {seed.stderr}")
    if guids(PEER, TP_DS).get(base) != guids("pve1", TP_DS)[base] or \
            guids(PEER, TP_RAW).get(base) != guids("pve1", TP_DS)[base]:
        raise AssertionError(f"base @{base} not identical on both targets")

    out = []
    for r in range(rounds):
        pv_first = r % 2 == 0
        sh("pve1", ["cp", str(DATA), f"{g.mnt}/round{r}.bin"])
        flush()
        prev = snapshots("pve1", TP_DS)[-1][0].split("@")[1]
        row: dict = {"round": r + 1, "first": "pvezfsha" if pv_first else "raw"}
        if pv_first:
            # pvezfsha's whole cycle: flush, snapshot, session, send, cursor, holds, prune.
            row["pvezfsha_s"], log = pvezfsha_sync(g)
            new = snapshots("pve1", TP_DS)[-1][0].split("@")[1]
            if new == prev:
                raise AssertionError(f"pvezfsha took no snapshot:\n{log}")
            row["snapshot_by"] = "pvezfsha (timed)"
            flush()
            row["raw_s"] = raw_pipeline(prev, new)
        else:
            # The raw pipeline needs the snapshot first: take it as pvezfsha would name it
            # (untimed); the sync that follows then only sends it.
            new = snapshot_name("pvezfsha", dt.datetime.now(dt.timezone.utc), set(guids("pve1", TP_DS)))
            sh("pve1", ["zfs", "snapshot", f"{TP_DS}@{new}"])
            row["snapshot_by"] = "bench (untimed)"
            flush()
            row["raw_s"] = raw_pipeline(prev, new)
            flush()
            row["pvezfsha_s"], log = pvezfsha_sync(g)
        flush()
        steps = step_lines(log)
        if len(steps) != 1:
            raise AssertionError(f"expected one step @{prev} -> @{new}, got {steps}:\n{log}")
        nbytes, xfer = steps[0]
        src = guids("pve1", TP_DS)[new]
        row.update({
            "from": prev, "to": new, "stream_bytes": nbytes, "raw_estimate_bytes": stream_estimate(prev, new),
            "pvezfsha_mib_s": nbytes / MIB / row["pvezfsha_s"], "raw_mib_s": nbytes / MIB / row["raw_s"],
            "pvezfsha_transfer_s": xfer, "pvezfsha_transfer_mib_s": nbytes / MIB / xfer,
            "guids_match": guids(PEER, TP_DS).get(new) == src == guids(PEER, TP_RAW).get(new),
        })
        row["ratio"] = row["pvezfsha_mib_s"] / row["raw_mib_s"]
        row["transfer_ratio"] = row["pvezfsha_transfer_mib_s"] / row["raw_mib_s"]
        if not row["guids_match"]:
            raise AssertionError(f"round {r + 1}: @{new} guid differs between pve1, pve2 and the raw target")
        note(f"round {r + 1} ({row['first']} first): pvezfsha {row['pvezfsha_s']:.1f} s "
             f"{row['pvezfsha_mib_s']:.1f} MiB/s (transfer {row['pvezfsha_transfer_mib_s']:.1f} MiB/s), "
             f"raw {row['raw_s']:.1f} s {row['raw_mib_s']:.1f} MiB/s, ratio {row['ratio']:.2f}")
        out.append(row)
        sh("pve1", ["rm", "-f", f"{g.mnt}/round{r}.bin"])   # the snapshot keeps it; keeps the live fs small

    # Fixed cost of starting the command (python + imports under TCG), measured apart.
    startup = [timed(lambda: sh("pve1", ["pvezfsha", "--version"]))[0] for _ in range(3)]
    keys = ("pvezfsha_s", "raw_s", "pvezfsha_mib_s", "raw_mib_s", "ratio",
            "pvezfsha_transfer_s", "pvezfsha_transfer_mib_s", "transfer_ratio")
    return {"mib_per_round": mib, "rounds": out,
            "median": {k: median([r[k] for r in out]) for k in keys},
            "pvezfsha_version_cmd_s": median(startup)}


# -- 2. no-op cycle ---------------------------------------------------------------------------

def make_snapshots(ds: str, names: list[str]) -> None:
    """Empty snapshots, one lzc_snapshot each in one process. A channel program cannot do
    it in one go: a dataset takes at most one snapshot per txg (the second gets EAGAIN)."""
    prog = ("import sys, libzfs_core as l\n"
            "for n in sys.stdin.read().split(): l.lzc_snapshot([(sys.argv[1] + '@' + n).encode()])\n")
    sh("pve1", ["python3", "-c", prog, ds], input="\n".join(names), timeout=3600)


def syncoid_argv(ds: str, *extra: str) -> list[str]:
    return ["syncoid", *extra, "--no-sync-snap", "--no-privilege-elevation", ds, f"root@{PEER}:{ds}"]


def setup_noop(n: int, g: Group) -> dict:
    ds = g.ds
    note(f"no-op N={n}: {n} empty snapshots on pve1")
    start = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=n + 3600)
    names = [snapshot_name("pvezfsha", start + dt.timedelta(seconds=i)) for i in range(n)]
    t_make, _ = timed(lambda: make_snapshots(ds, names))
    note(f"no-op N={n}: {n} snapshots in {t_make:.0f} s; send -R to pve2")
    t_seed, p = timed(lambda: subprocess.run(
        f"zfs send -R {ds}@{names[-1]} | ssh -o BatchMode=yes {PEER_ADDR} zfs receive -u {ds}",
        shell=True, capture_output=True, text=True))
    if p.returncode:
        raise AssertionError(f"seeding {ds} failed: {p.stderr}")
    info = {"build_snapshots_s": t_make, "seed_send_R_s": t_seed}

    # A replica seeded out of band is up to date but has no cursor yet: the first sync plans
    # against both sides (ssh) and, finding them in sync, makes the cursor and the standby hold.
    t, p = pvezfsha(g)
    info["seeded_noop_s"] = t
    info["seeded_noop_cursor_made"] = bool(bookmarks(ds))
    info["seeded_noop_log"] = [line for line in p.stderr.splitlines() if "CT " in line]
    if "nothing to do" not in p.stderr or "1 snapshot(s)" in p.stderr:
        raise AssertionError(f"N={n}: expected the seeded replica to be found in sync:\n{p.stderr}")
    _, p = pvezfsha(g)
    if "nothing to do (has @" not in p.stderr:
        raise AssertionError(f"N={n}: expected a no-op through the cursor:\n{p.stderr}")
    src, dst = guids("pve1", ds), guids(PEER, ds)
    if len(src) != n or src != dst:
        raise AssertionError(f"N={n}: pve1 has {len(src)} snapshots, pve2 {len(dst)}, same: {src == dst}")
    info["cursor"] = bookmarks(ds)
    info["holds_on_pve2"] = [line.split("\t")[1] for line in
                             sh(PEER, ["zfs", "holds", "-H", snapshots(PEER, ds)[-1][0]]).stdout.splitlines()]
    if not info["cursor"] or not info["holds_on_pve2"]:
        raise AssertionError(f"N={n}: seeded replica lacks a cursor ({info['cursor']}) "
                             f"or a standby hold ({info['holds_on_pve2']})")

    # syncoid: once with --debug, to show it connects and finds nothing to do.
    p = sh("pve1", syncoid_argv(ds, "--debug"), check=False)
    dbg = p.stdout + p.stderr
    info["syncoid_rc"] = p.returncode
    info["syncoid_debug_excerpt"] = [line for line in dbg.splitlines()
                                     if re.search(r"ssh .*pve2|nothing to do|already|newest", line, re.I)][:8]
    if p.returncode != 0:
        raise AssertionError(f"syncoid failed:\n{dbg}")
    if guids("pve1", ds) != src or guids(PEER, ds) != dst:
        raise AssertionError(f"N={n}: syncoid changed snapshots")
    return info


def bench_noop(ns: list[int], rounds: int) -> dict:
    gs = noop_groups(ns, True)
    setup = {n: setup_noop(n, g) for n, g in gs.items()}
    before = {n: (guids("pve1", g.ds), guids(PEER, g.ds), bookmarks(g.ds)) for n, g in gs.items()}

    def syncoid(g: Group) -> tuple[float, subprocess.CompletedProcess]:
        return timed(lambda: sh("pve1", syncoid_argv(g.ds)))

    tools = {
        "pvezfsha sync": lambda g: pvezfsha(g, verbose=False),
        "pvezfsha sync --dry-run": lambda g: pvezfsha(g, "--dry-run", verbose=False),
        "syncoid": syncoid,
    }
    times: dict[int, dict[str, list[float]]] = {n: {t: [] for t in tools} for n in ns}
    order = list(tools)
    for r in range(rounds):
        for n in (ns if r % 2 == 0 else ns[::-1]):
            for t in order[r % len(order):] + order[:r % len(order)]:
                sec, p = tools[t](gs[n])
                if t == "pvezfsha sync" and "nothing to do (has @" not in p.stderr:
                    raise AssertionError(f"N={n}: the no-op was not a no-op:\n{p.stderr}")
                times[n][t].append(sec)
        note(f"no-op round {r + 1}/{rounds}: " + "; ".join(
            f"N={n} " + ", ".join(f"{t} {times[n][t][-1]:.2f}s" for t in tools) for n in ns))

    for n, g in gs.items():
        if (guids("pve1", g.ds), guids(PEER, g.ds), bookmarks(g.ds)) != before[n]:
            raise AssertionError(f"N={n}: snapshots or bookmarks changed during the no-op rounds")
    med = {n: {t: median(v) for t, v in times[n].items()} for n in ns}
    lo, hi = min(ns), max(ns)
    return {"snapshots": ns, "rounds": rounds, "setup": setup, "times_s": times, "median_s": med,
            "growth": {t: med[hi][t] / med[lo][t] for t in tools}}


# -- report -----------------------------------------------------------------------------------

def report(res: dict) -> str:
    lines = []
    tp = res.get("throughput")
    if tp:
        lines += ["", f"== 1. throughput: {tp['mib_per_round']} MiB of new random data per round, pve1 -> pve2",
                  f"{'round':>5} {'first':>8} {'stream MiB':>10} {'pvezfsha s':>10} {'MiB/s':>6} "
                  f"{'transfer MiB/s':>14} {'raw s':>6} {'MiB/s':>6} {'ratio':>6} {'xfer/raw':>8} guids",
                  ]
        for r in tp["rounds"]:
            lines.append(f"{r['round']:>5} {r['first']:>8} {r['stream_bytes'] / MIB:>10.1f} {r['pvezfsha_s']:>10.1f} "
                         f"{r['pvezfsha_mib_s']:>6.1f} {r['pvezfsha_transfer_mib_s']:>14.1f} {r['raw_s']:>6.1f} "
                         f"{r['raw_mib_s']:>6.1f} {r['ratio']:>6.2f} {r['transfer_ratio']:>8.2f} "
                         f"{'same' if r['guids_match'] else 'DIFFER'}")
        m = tp["median"]
        lines.append(f"{'median':>5} {'':>8} {'':>10} {m['pvezfsha_s']:>10.1f} {m['pvezfsha_mib_s']:>6.1f} "
                     f"{m['pvezfsha_transfer_mib_s']:>14.1f} {m['raw_s']:>6.1f} {m['raw_mib_s']:>6.1f} "
                     f"{m['ratio']:>6.2f} {m['transfer_ratio']:>8.2f}")
        lines.append(f"ratio = pvezfsha MiB/s / raw MiB/s, whole command wall clock (target >= 0.9); "
                     f"xfer/raw = pvezfsha's transfer phase (its -v 'bytes in s' line) / raw.")
        lines.append(f"`pvezfsha --version` alone takes {tp['pvezfsha_version_cmd_s']:.2f} s here (python start).")
    no = res.get("noop")
    if no:
        ns = no["snapshots"]
        lines += ["", f"== 2. no-op cycle (nothing changed), median of {no['rounds']} interleaved rounds, seconds",
                  f"{'tool':<26}" + "".join(f"{'N=' + str(n):>10}" for n in ns) + f"{'growth':>10}"]
        for t in no["growth"]:
            lines.append(f"{t:<26}" + "".join(f"{no['median_s'][n][t]:>10.2f}" for n in ns)
                         + f"{no['growth'][t]:>9.2f}x")
        lines.append(f"growth = median at N={max(ns)} / median at N={min(ns)}. "
                     "syncoid: --no-sync-snap --no-privilege-elevation, to root@pve2.")
        for n in ns:
            s = no["setup"][n]
            lines.append(f"N={n}: seeded replica without cursor: first sync took {s['seeded_noop_s']:.2f} s, "
                         f"cursor made: {s['seeded_noop_cursor_made']}, hold on {PEER}: {s['holds_on_pve2']}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=int, default=256, help="new data per throughput round (256)")
    ap.add_argument("--rounds", type=int, default=4, help="throughput rounds (4; at least 3)")
    ap.add_argument("--noop-rounds", type=int, default=5, help="no-op rounds per tool and N (5)")
    ap.add_argument("--snapshots", default="10,1000", help="snapshot counts for the no-op benchmark")
    ap.add_argument("--only", choices=["throughput", "noop"], help="run one benchmark only")
    ap.add_argument("--keep", action="store_true", help="leave the datasets for inspection")
    ap.add_argument("--tree", action="store_true",
                    help="run the pvezfsha next to this script (same path on pve2), not the one on PATH")
    a = ap.parse_args()
    if os.geteuid() != 0 or platform.node() != "pve1":
        print("run as root inside lab guest pve1 (make bench)", file=sys.stderr)
        return 2
    ns = [int(x) for x in a.snapshots.split(",")]
    if a.tree:
        use_tree()

    res: dict = {"started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                 "command": " ".join(sys.argv), "host": {
                     "node": platform.node(), "kernel": platform.release(),
                     "zfs": sh("pve1", ["zfs", "version"], check=False).stdout.split(),
                     "syncoid": sh("pve1", ["syncoid", "--version"], check=False).stdout.split("\n")[0],
                     "cpus": os.cpu_count()}}
    res["code"] = {"pvezfsha": "tree " + str(REPO) if a.tree else "pvezfsha on PATH",
                   "sha256_16": code_fingerprint(a.tree)}
    note("cleaning up a previous run's datasets")
    cleanup(ns)
    try:
        if a.only in (None, "throughput"):
            res["throughput"] = bench_throughput(a.rounds, a.mib)
        if a.only in (None, "noop"):
            res["noop"] = bench_noop(ns, a.noop_rounds)
    finally:
        if not a.keep:
            note("cleaning up")
            cleanup(ns)
            DATA.unlink(missing_ok=True)
    res["finished"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    res["code_unchanged"] = code_fingerprint(a.tree) == res["code"]["sha256_16"]
    if not res["code_unchanged"]:
        note("WARNING: pvezfsha changed on a node during the run (someone pushed); the figures are mixed")
    RESULTS.write_text(json.dumps(res, indent=2) + "\n")
    print(report(res))
    if not res["code_unchanged"]:
        print("\nWARNING: pvezfsha changed on a node during the run (someone pushed); the figures are mixed")
    print(f"\n== {RESULTS}")
    print(RESULTS.read_text(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
