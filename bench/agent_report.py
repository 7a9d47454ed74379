#!/usr/bin/env python3
"""Turn bench_agent.py's output into bench/results/: the JSON (stamped with
the commit it measured), a markdown table and a PNG of the lag curves
(matplotlib from Debian's python3-matplotlib; without it, no PNG).

    python3 bench/agent_report.py .test-out/bench-agent.log
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "results"
LABELS = {"timer": "timer mode (sync every 60 s)", "agent": "continuous mode (pvezfsha agent)",
          "bzfs": "bzfs tight loop"}


def commit() -> str:
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "pvezfsha"], cwd=HERE.parent,
                           capture_output=True, text=True).stdout.strip()
    return rev + ("-dirty" if dirty else "")


def table(res: dict) -> str:
    rows = ["| replicator | lag p50 | lag p99 | lag max | CPU busy | idle: snapshots | idle: link bytes "
            "(second half) | idle: CPU |",
            "|---|---|---|---|---|---|---|---|"]
    for mode, r in res["lag"].items():
        rows.append(f"| {LABELS.get(mode, mode)} | {r['lag_p50']:.1f} s | {r['lag_p99']:.1f} s | {r['lag_max']:.1f} s "
                    f"| {r['cpu_busy_pct']:.1f} % | {r['idle_snapshots']} in {r['idle_seconds']} s "
                    f"| {r['idle_link_bytes']} ({r.get('idle_link_bytes_second_half', '?')}) "
                    f"| {r['idle_cpu_pct']:.2f} % |")
    w = res["warm"]
    rows += ["", "| 16 MiB increment | rounds (s) | median |", "|---|---|---|",
             f"| agent cycle over a warm session (snapshot, send, record) | "
             f"{', '.join(f'{x:.2f}' for x in w['agent_cycle_s'])} | {sorted(w['agent_cycle_s'])[len(w['agent_cycle_s']) // 2]:.2f} s |",
             f"| raw `zfs send -i \\| ssh zfs receive` (new ssh each time) | "
             f"{', '.join(f'{x:.2f}' for x in w['raw_s'])} | {sorted(w['raw_s'])[len(w['raw_s']) // 2]:.2f} s |",
             f"| ratio (medians) | | {w['ratio_median']:.2f} |",
             "", "| agent watching | RSS | peak RSS |", "|---|---|---|"]
    for r in res["rss"]:
        rows.append(f"| {r['dirs']:,} directories | {r['rss_kib'] / 1024:.1f} MiB | {r['hwm_kib'] / 1024:.1f} MiB |")
    return "\n".join(rows) + "\n"


def plot(res: dict, path: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no matplotlib (apt install python3-matplotlib): no PNG", file=sys.stderr)
        return False
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=100)
    for mode, r in res["lag"].items():
        xs = [t for t, _ in r["samples"]]
        ys = [lag for _, lag in r["samples"]]
        ax.plot(xs, ys, label=f"{LABELS.get(mode, mode)}: p99 {r['lag_p99']:.0f} s", linewidth=1.2)
    work = res["work_s"]
    ax.axvline(work // 3, color="grey", linestyle=":", linewidth=1)
    ax.text(work // 3, ax.get_ylim()[1] * 0.95, " 1,000-file burst", color="grey", fontsize=8, va="top")
    ax.set_xlabel("seconds into the workload (a line appended every second)")
    ax.set_ylabel("standby lag (s)")
    ax.set_title(f"Standby lag, lab (TCG guests), pvezfsha {res['commit']}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    return True


def main() -> int:
    text = Path(sys.argv[1]).read_text()
    line = next((x for x in text.splitlines() if x.startswith("BENCH-AGENT-JSON ")), None)
    if line is None:
        raise SystemExit(f"{sys.argv[1]}: no BENCH-AGENT-JSON line (did the bench finish?)")
    res = json.loads(line.split(" ", 1)[1])
    res["commit"] = commit()
    stem = OUT / f"agent-{time.strftime('%Y-%m-%d')}-{res['commit']}"
    OUT.mkdir(exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(res, indent=1) + "\n")
    md = table(res)
    png = plot(res, stem.with_suffix(".png"))
    stem.with_suffix(".md").write_text(
        f"# Continuous mode: standby lag (bench/bench_agent.py, {res['started']}, commit {res['commit']})\n\n"
        f"Workload {res['work_s']} s per replicator; versions {res['versions']}.\n\n"
        "Lag, sampled every second: now - max(creation of the standby's newest snapshot, start of the "
        "workload), i.e. how old the oldest write the standby lacks is (writes never stop during the "
        "workload). Idle: after the workload, with no writes.\n\n" + md
        + (f"\n![lag curves]({stem.with_suffix('.png').name})\n" if png else ""))
    print(md)
    print(f"written: {stem}.json, .md" + (", .png" if png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
