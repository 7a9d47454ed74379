#!/usr/bin/env python3
"""Duration of the pre-start takeover when the old primary is dead.

Run from the host with the lab up (`make bench-takeover`): pve1 is the
primary, it is powered off (qemu killed: a power cut), and pve2's pre-start
hook is timed inside pve2. Two cases:

* "offline": the cluster already noticed (pve1 offline in .members), the
  usual case once HA recovers the container about 2 minutes after a crash;
  no connection to pve1 is attempted.
* "online but dead": .members still says online (corosync has not noticed,
  or the node hangs), so pre-start tries to pull from pve1 and must give up
  after ssh's ConnectTimeout, never hang on TCP. Measured for two timeouts.
  pve1's MAC is pinned in pve2's neighbour table, as it is right after a
  crash (the ARP entry is still fresh): SYNs go out and nothing answers,
  the worst case. Without it, the kernel reports "no route to host" after
  its ARP retries (about 3 s) and ssh gives up even sooner.

pve1 stays off between rounds: each round puts the record back to "pve1 is
primary" and pve2's replica back to an inert standby, then times pre-start.
"""

import json
import os
import statistics
import sys
from pathlib import Path

os.environ["PVEZFSHA_LAB_HOST"] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "lab"))

from labnode import Group, lab, sh  # noqa: E402

ROUNDS = int(os.environ.get("ROUNDS", "3"))


def timed_pre_start(g: Group) -> tuple[float, str]:
    cmd = ("h=/var/lib/vz/snippets/pvezfsha-hook; [ -x $h ] || h=/opt/pvezfsha/hookscripts/pvezfsha-hook; "
           f"t0=$(date +%s.%N); env -i LC_ALL=C PATH=/sbin:/bin:/usr/sbin:/usr/bin PVEZFSHA_CONFIG={g.config} "
           f"$h {g.ctid} pre-start </dev/null >/tmp/bench-hook.out 2>&1; rc=$?; t1=$(date +%s.%N); "
           "echo \"$rc $t0 $t1\"")
    rc, t0, t1 = sh("pve2", cmd).stdout.split()
    out = sh("pve2", ["cat", "/tmp/bench-hook.out"]).stdout
    assert rc == "0", out
    return float(t1) - float(t0), out


def reset(g: Group, epoch: int) -> None:
    """Back to: pve1 primary at `epoch`, pve2 an inert standby."""
    rec = json.loads(sh("pve2", ["cat", g.record_path]).stdout)
    rec.update(primary="pve1", epoch=epoch)
    sh("pve2", f"cat > {g.record_path}", input=json.dumps(rec))
    sh("pve2", ["pvezfsha", "--config", g.config, "demote", str(g.ctid), "--force"])


def main() -> int:
    L = lab()
    assert L.healthy(), "lab not up: make lab-up"
    g = Group(keep=20)
    results = {}
    try:
        g.write("a.bin", 8)
        g.sync()
        epoch = g.record("pve2")["epoch"]
        sh("pve1", ["sync"])
        L.crash("pve1")
        g.up.discard("pve1")
        g.move("pve2")
        cases = [("offline", None, {})]
        cases += [(f"online but dead, ConnectTimeout {t}s", t, {"ssh_connect_timeout": f"{t}s"}) for t in (5, 10)]
        for label, timeout, defaults in cases:
            g.write_config("pve2", defaults=defaults)
            g.write_members("pve2", offline=("pve1",) if timeout is None else ())
            if timeout is not None:
                sh("pve2", ["ip", "neigh", "replace", "169.254.10.1", "lladdr", "52:54:00:00:01:02",
                            "dev", "eth1", "nud", "permanent"])
            times = []
            for _ in range(ROUNDS):
                reset(g, epoch)
                seconds, out = timed_pre_start(g)
                assert "crash failover" in out or "planned move" in out, out
                times.append(seconds)
            results[label] = {"rounds": times, "median": statistics.median(times), "connect_timeout": timeout}
            print(f"{label:40} median {statistics.median(times):6.2f} s   rounds "
                  + " ".join(f"{t:.2f}" for t in times), flush=True)
        print("\nlast pre-start output (task log):\n" + out)
    finally:
        sh("pve2", ["ip", "neigh", "del", "169.254.10.1", "dev", "eth1"], check=False)
        if not L.running("pve1"):
            L.boot("pve1")
        g.up.add("pve1")
        for n in g.nodes:
            g.write_members(n)
        g.cleanup()
    print(json.dumps(results, indent=1))
    # The bound: ConnectTimeout plus a few seconds of work, never more.
    worst = [r["median"] - (r["connect_timeout"] or 0) for r in results.values()]
    return 0 if max(worst) < 20 else 1


if __name__ == "__main__":
    sys.exit(main())
