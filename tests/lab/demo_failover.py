#!/usr/bin/env python3
"""`make demo`, second part: failover on real OpenZFS, driven from the host
because it powers a node off. The hookscript is called as PVE calls it.

1. planned move pve1 -> pve2: nothing is lost;
2. pve2 loses power: pve1 takes over with what was replicated, and says
   what the data-loss window was;
3. pve2 comes back: its writes that never reached pve1 are kept aside.
"""

import os
import sys
from pathlib import Path

os.environ["PVEZFSHA_LAB_HOST"] = "1"
sys.path.insert(0, str(Path(__file__).parent))

from labnode import Group, checksums, lab, sh  # noqa: E402


def show(title: str, text: str = "") -> None:
    print(f"\n=== {title}", flush=True)
    if text.strip():
        print(text.rstrip(), flush=True)


def files(node: str, mnt: str) -> str:
    return sh(node, f"cd {mnt} && ls -l --time-style=+ | tail -n +2").stdout


def main() -> int:
    L = lab()
    Group(ctid=104, names=["tank/share"], create=False).cleanup()
    g = Group(ctid=104, names=["tank/share"])
    g.write("report.pdf", 8)
    show("CT 104 runs on pve1; first replication to pve2", g.sync().stderr)

    g.write("late-edit.odt", 2)
    show("planned move to pve2 (HA relocate): pre-stop and post-stop on pve1",
         g.hook("pve1", "pre-stop").stdout + g.hook("pve1", "post-stop").stdout)
    g.move("pve2")
    p = g.hook("pve2", "pre-start")
    show("pre-start on pve2 (task log)", p.stdout + p.stderr)
    show("files on pve2, the new primary", files("pve2", g.mnt))
    show("post-start on pve2: replication now runs pve2 -> pve1", g.hook("pve2", "post-start").stdout)
    g.wait_idle("pve2")

    g.write("written-on-pve2.txt", 1, node="pve2")
    g.sync(node="pve2")
    g.write("never-replicated.txt", 1, node="pve2")
    sh("pve2", "zpool sync tank && sync")
    show("pve2 loses power (never-replicated.txt was not sent yet)")
    L.crash("pve2")
    g.crashed("pve2")
    g.move("pve1")
    p = g.hook("pve1", "pre-start")
    show("pre-start on pve1 after the crash (task log)", p.stdout + p.stderr)
    show("files on pve1", files("pve1", g.mnt))

    show("pve2 boots again and rejoins the cluster")
    L.boot("pve2")
    g.returned("pve2", source="pve1")
    show("its own timer: it is no longer primary, so it fences itself", g.sync(node="pve2").stderr)
    show("pve1 replicates to it: pve2's diverged writes are kept, not destroyed", g.sync(node="pve1").stderr)
    show("pvezfsha diverged 104 (on pve2)", g.run("diverged", "104", node="pve2").stdout)
    show("pvezfsha status 104 (on pve1)", g.run("status", "104", node="pve1").stdout)
    kept = [line.split()[-1] for line in g.run("diverged", "104", node="pve2").stdout.splitlines()
            if "diverged data kept as" in line]
    ok = bool(kept) and "./never-replicated.txt" in checksums("pve2", kept[0])
    show("never-replicated.txt is intact in " + (kept[0] if kept else "?"), str(ok))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
