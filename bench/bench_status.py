#!/usr/bin/env python3
"""`make bench-status`: `pvezfsha status` at 20 datasets of 1,000 snapshots each.

In the lab (inside pve1, as root): 20 datasets in one container replicated to
pve2 by `pvezfsha sync`, measured twice, each time for ROUNDS interleaved
rounds: first with the one snapshot of the first sync, then after 1,000
snapshots named as sanoid names them were added to each dataset (1,000 at a
time by one `zfs snapshot` per name, of the 20 datasets at once) and a second
sync. Timed:
- `pvezfsha status` (the table), `status --json`, `status --check`, on the
  primary (pve1) and on the standby (pve2, over the lab's shared ssh
  connection, whose own cost is measured alone and subtracted: `true`);
- the floors: `python3 -c pass` and `pvezfsha --version` (the interpreter,
  and the command line with nothing to do);
- the baseline: `zfs list -t snapshot` of those datasets (name, guid,
  createtxg), what a status that read every snapshot would pay at least.
The target is under 1 s, flat in the snapshot count; the baseline shows what
that count costs.

    python3 bench/bench_status.py              # in the guest: prints RESULT {json}
    python3 bench/bench_status.py --report LOG # on the host: writes bench/results/
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATASETS, SNAPSHOTS, ROUNDS = 20, 1000, 7


def note(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def timed(node: str, argv: list[str], env: dict) -> float:
    from labnode import sh
    t0 = time.monotonic()
    sh(node, argv, env=env, check=False)
    return time.monotonic() - t0


def rounds(g, label: str) -> dict[str, list[float]]:
    ct = str(g.ctid)
    cases = {
        "status (pve1, primary)": ("pve1", ["pvezfsha", "status", ct]),
        "status --json (pve1)": ("pve1", ["pvezfsha", "status", "--json", ct]),
        "status --check (pve1)": ("pve1", ["pvezfsha", "status", "--check", ct]),
        "status (pve2, standby)": ("pve2", ["pvezfsha", "status", ct]),
        "floor: python3 -c pass (pve1)": ("pve1", ["python3", "-c", "pass"]),
        "floor: pvezfsha --version (pve1)": ("pve1", ["pvezfsha", "--version"]),
        "baseline: zfs list -t snapshot (pve1)": ("pve1", ["zfs", "list", "-H", "-p", "-o", "name,guid,createtxg",
                                                         "-t", "snapshot", *g.datasets]),
        "ssh round-trip alone (pve2)": ("pve2", ["true"]),
    }
    env = g.env()
    times: dict[str, list[float]] = {k: [] for k in cases}
    for r in range(ROUNDS):
        for name, (node, argv) in cases.items():
            times[name].append(timed(node, argv, env))
        note(f"{label}, round {r + 1}: " + ", ".join(f"{k.split(' (')[0]} {v[-1]:.2f}" for k, v in times.items()))
    ssh = statistics.median(times["ssh round-trip alone (pve2)"])
    times["status (pve2, standby)"] = [max(0.0, t - ssh) for t in times["status (pve2, standby)"]]
    return times


def measure() -> dict:
    sys.path.insert(0, str(HERE.parent / "tests" / "lab"))
    from labnode import Group, sh
    # Sanoid's names, but not carried: 20,000 steps on TCG guests would take
    # hours, and status does not depend on what the standby holds.
    g = Group(datasets=DATASETS, ctid=990_001, replicate_snapshots=[])
    try:
        g.sync()
        few = rounds(g, "1 snapshot")
        note(f"{DATASETS} datasets x {SNAPSHOTS} snapshots")
        # ZFS takes one snapshot of a dataset per transaction group (a
        # channel program gets EAGAIN for the second): one `zfs snapshot` per
        # name, of the 20 datasets at once.
        for i in range(SNAPSHOTS):
            name = f"autosnap_2026-01-01_{i // 60:02d}:{i % 60:02d}:00_hourly"
            sh("pve1", ["zfs", "snapshot", *(f"{ds}@{name}" for ds in g.datasets)])
        t0 = time.monotonic()
        g.sync()
        second_sync = time.monotonic() - t0
        many = rounds(g, f"{SNAPSHOTS} snapshots")
        env = g.env()
        check = sh("pve1", ["pvezfsha", "status", "--check", str(g.ctid)], env=env, check=False)
        res = {"datasets": DATASETS, "snapshots_per_dataset": SNAPSHOTS, "rounds": ROUNDS,
               "second_sync_s": second_sync, "times_s": many, "times_1_snapshot_s": few,
               "check_line": check.stdout.strip(), "check_rc": check.returncode,
               "status_text": sh("pve1", ["pvezfsha", "status", str(g.ctid)], env=env, check=False).stdout}
        # Before the cleanup, which takes minutes at 20,000 snapshots.
        print("RESULT " + json.dumps(res), flush=True)
        return res
    finally:
        note("cleaning up")
        # 20 destroys of 1,000 snapshots each, one after the other, take
        # minutes per node on TCG guests; at once they share transaction groups.
        from labnode import release_all_holds
        for node in g.nodes:
            release_all_holds(node, g.datasets)
            sh(node, " ".join(f"zfs destroy -R {shlex.quote(ds)} &" for ds in g.datasets) + " wait", check=False)
        g.cleanup()


def report(log: Path) -> None:
    line = next(ln for ln in log.read_text().splitlines() if ln.startswith("RESULT "))
    res = json.loads(line[len("RESULT "):])
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True,
                         text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "pvezfsha"], cwd=HERE.parent,
                           capture_output=True, text=True).stdout.strip()
    res["commit"] = rev + ("-dirty" if dirty else "")
    stem = HERE / "results" / f"status-{time.strftime('%Y-%m-%d')}-{res['commit']}"
    stem.parent.mkdir(exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(res, indent=1) + "\n")
    rows = [f"# `pvezfsha status` at {res['datasets']} datasets x {res['snapshots_per_dataset']:,} snapshots "
            f"(commit {res['commit']}, `make bench-status`)", "",
            "| command | snapshots per dataset | rounds (s) | median | min-max |", "|---|---|---|---|---|"]
    for name in res["times_s"]:
        for count, key in ((1, "times_1_snapshot_s"), (res["snapshots_per_dataset"], "times_s")):
            ts = res.get(key, {}).get(name)
            if ts:
                rows.append(f"| {name} | {count:,} | {', '.join(f'{t:.2f}' for t in ts)} | "
                            f"{statistics.median(ts):.2f} s | {min(ts):.2f}-{max(ts):.2f} |")
    rows += ["", "The standby's figures have the median ssh round-trip of the lab's shared connection "
                 "subtracted. Lab: 2 TCG qemu guests (no KVM), so absolute times are slower than on hardware.",
             "", f"`status --check`: exit {res['check_rc']}, `{res['check_line']}`", "",
             "```", res["status_text"].rstrip()[:3000], "```", ""]
    stem.with_suffix(".md").write_text("\n".join(rows))
    print(stem.with_suffix(".md"))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--report", type=Path)
    a = ap.parse_args()
    if a.report:
        report(a.report)
    else:
        measure()
