#!/usr/bin/env python3
"""`make demo`, the drill: what an admin wants to see before trusting
pvezfsha, on real OpenZFS, with a container writing all along.

Two nodes whose /etc/pve is the emulated pmxcfs (a QDevice vote on the host
keeps the survivor quorate), HA played by hasim.py, and a container that
writes and fsyncs a file five times a second. Driven from the host, because
step 3 cuts a node's power.

  1. write data and replicate it;
  2. a planned relocate pve1 -> pve2 with the container writing: RPO 0;
  3. a power cut of the primary under writes: the takeover, the data-loss
     window and the time it took;
  4. the old node returns: its writes are kept, replication reverses;
  5. fail back to pve2, again with nothing lost.

Prints a timeline and a table; exits 1 if any claim fails.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

os.environ["PVEZFSHA_LAB_HOST"] = "1"
sys.path.insert(0, str(Path(__file__).parent))

from hasim import HA, CfsGroup, account  # noqa: E402
from labnode import lab, sh  # noqa: E402

CLAIMS: list[tuple[str, str, bool]] = []


def show(title: str, text: str = "") -> None:
    print(f"\n=== {title}", flush=True)
    if text.strip():
        print(text.rstrip(), flush=True)


def claim(step: str, what: str, ok: bool) -> None:
    CLAIMS.append((step, what, ok))
    print(f"  [{'ok' if ok else 'FAILED'}] {what}", flush=True)


def last_pre_start(ha: HA, node: str) -> str:
    return [o for o in ha.outputs if f" {node} pre-start " in o.splitlines()[0]][-1]


def cycle(ha: HA, node: str) -> str:
    ha.g.wait_idle(node)
    p = ha.g.sync(node=node, expect=None, verbose=False)
    ha.observe()
    return p.stderr


def main() -> int:
    if lab().cfs is None:
        print("drill: needs a lab with the emulated pmxcfs (lab.py up --nodes 2 --cfs)", file=sys.stderr)
        return 2
    g = CfsGroup(ctid=105, names=["tank/drill"], create=False)
    g.cleanup()
    g = CfsGroup(ctid=105, names=["tank/drill"])
    ha = HA(g, prefer=["pve1", "pve2"], fence_delay=10.0)
    rows = []
    try:
        show("1. CT 105 starts on pve1 and writes; the timer replicates it to pve2")
        g.move("pve1")
        ha.start("pve1")
        g.wait_idle("pve1")
        time.sleep(3)
        print(cycle(ha, "pve1").strip())
        a = account(ha, "pve1")
        claim("1", f"{a['writes']} writes, {a['acked']} acknowledged as replicated", a["acked"] > 0)

        show("2. planned relocate to pve2, the container writing until it stops")
        time.sleep(2)
        t0 = time.monotonic()
        ha.relocate("pve2")
        took = time.monotonic() - t0
        print(last_pre_start(ha, "pve2").strip())
        a = account(ha, "pve2")
        claim("2", "data-loss window: none", "data-loss window: none" in last_pre_start(ha, "pve2"))
        claim("2", f"all {a['writes']} writes the container was told succeeded are on pve2",
              not a["destroyed"] and not a["kept_writes"] and not a["lost_acked"])
        rows.append(("planned relocate pve1 -> pve2", 0, len(a["destroyed"]), took))

        show("3. pve2 loses power while the container writes (fence delay 10 s)")
        time.sleep(3)
        print(cycle(ha, "pve2").strip())
        time.sleep(3)
        ha.ct.gone()
        last = max(w.ts for w in ha.writes if w.node == "pve2")
        t0 = time.monotonic()
        lab().crash("pve2")
        served = ha.recover("pve2")
        took = time.monotonic() - t0
        print(last_pre_start(ha, "pve1").strip())
        window = last - ha.acked.get("pve2", 0)
        claim("3", f"pve1 took over in {took:.0f} s (10 s of it HA's fence delay)", served == "pve1")
        a = account(ha, "pve1")
        claim("3", "every acknowledged write is on pve1", not a["lost_acked"])
        claim("3", "the task log states the data-loss window", "data-loss window" in last_pre_start(ha, "pve1"))
        print(f"  data-loss window: the container's last {window:.1f} s on pve2 (writes after its last "
              f"replicated snapshot), {len(a['destroyed'])} write(s) not on pve1 yet")

        show("4. pve2 boots again: it fences itself, its last writes are kept, replication reverses")
        lab().boot("pve2")
        print(g.sync(node="pve2", expect=None, verbose=False).stderr.strip())
        print(cycle(ha, "pve1").strip())
        a = account(ha, "pve1")
        kept = g.kept("pve2")
        claim("4", f"pve2's unreplicated writes are kept in {', '.join(kept) or 'nothing'}",
              bool(kept) and not a["destroyed"])
        print(g.run("diverged", "105", node="pve2").stdout.strip())
        rows.append(("power cut of pve2, takeover by pve1", len(a["lost_acked"]), len(a["destroyed"]), took))

        show("5. fail back to pve2")
        time.sleep(2)
        t0 = time.monotonic()
        ha.relocate("pve2")
        took = time.monotonic() - t0
        a = account(ha, "pve2")
        claim("5", "data-loss window: none", "data-loss window: none" in last_pre_start(ha, "pve2"))
        claim("5", "no acknowledged write lost, nothing destroyed", not a["lost_acked"] and not a["destroyed"])
        rows.append(("fail back pve1 -> pve2", len(a["lost_acked"]), len(a["destroyed"]), took))
        print(g.run("status", "105", node="pve2").stdout.strip())
    finally:
        if ha.ct is not None:
            ha.ct.gone()

    show("timeline (seconds since the start)")
    for e in ha.events:
        print(f"  {e.t:7.1f}  {e.what}")
    show("summary")
    print(f"  {'event':40} {'acked writes lost':>18} {'writes not kept':>16} {'took':>8}")
    for what, lost, destroyed, took in rows:
        print(f"  {what:40} {lost:>18} {destroyed:>16} {took:>7.1f}s")
    failed = [c for c in CLAIMS if not c[2]]
    print(f"\n{len(CLAIMS) - len(failed)} of {len(CLAIMS)} claims hold" + (": FAILED " + "; ".join(
        f"step {s}: {w}" for s, w, _ in failed) if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
