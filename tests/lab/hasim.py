"""Proxmox HA's part in the fault suite, played from the host, and the
"container" whose writes the suite accounts for.

The semantics are pve-ha-manager's (../shared/research/proxmox.md §2-3):
- start is `pre-start`, the bind mount, the container, then `post-start`;
  stop is `pre-stop`, the container stopped, then `post-stop`;
- a relocate is a stop on the source, the config moved, a start on the target;
- crash recovery: after the fence delay the config moves to a quorate
  survivor (the first of `prefer` that is up and quorate) and starts there;
- a refused `pre-start` is retried on the same node `max_restart` times,
  then relocated to the next candidate, at most `max_relocate` times, and
  then the service is in `error`.

The container is a writer process on its node: it creates files in the bind
mount at a steady rate and fsyncs each, the way an NFS server acknowledges a
client's COMMIT. The host reads every write the writer was told succeeded,
so a power cut of the node loses none of the bookkeeping. The Ledger says
which of those writes the primary had acknowledged as replicated: those
older than the newest snapshot the cluster record says a standby holds.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import threading
import time

from labnode import Group, lab, sh

WRITER = r"""
import os, sys, time
d, start, period = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
os.makedirs(d, exist_ok=True)
i = start
while True:
    p = os.path.join(d, "w%07d" % i)
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, b"%d\n" % i)
        os.fsync(fd)
        os.close(fd)
    except OSError as e:
        print("error", i, e, flush=True)
        sys.exit(1)
    print(i, repr(time.time()), flush=True)
    i += 1
    time.sleep(period)
"""


@dataclasses.dataclass(frozen=True)
class Write:
    i: int
    ts: float      # when the writer was told it succeeded (its node's clock)
    node: str


class Container:
    """The writer on one node; every acknowledged write lands in `writes`."""

    def __init__(self, group: Group, node: str, start: int, period: float, sink: list[Write]):
        self.node = node
        self.p = subprocess.Popen(
            lab().ssh_argv(node, ["python3", "-c", WRITER, f"{group.mnt}/clients", str(start), str(period)]),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.error = ""
        self.t = threading.Thread(target=self._read, args=(sink,), daemon=True)
        self.t.start()

    def _read(self, sink: list[Write]) -> None:
        for line in self.p.stdout:
            parts = line.split()
            if parts and parts[0] == "error":
                self.error = line.strip()
            elif len(parts) == 2:
                sink.append(Write(int(parts[0]), float(parts[1]), self.node))

    def stop(self) -> None:
        """The container is shut down: the writer is killed on its node."""
        sh(self.node, ["pkill", "-f", "w%07d"], check=False, timeout=30)
        self.gone()

    def gone(self) -> None:
        """Its node lost power: the ssh carrying its output is cut."""
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait()
        self.t.join(timeout=10)


class CfsGroup(Group):
    """A Group on the cfs lab: pmxcfs is the lab's, shared by every node,
    so nothing is copied between nodes and `.members` is not ours to write."""

    def write_members(self, node, offline=()):
        pass

    def write_config(self, node, extra="", defaults=None):
        # On disk before any power cut a scenario makes: a real node has
        # had its config for long.
        super().write_config(node, extra, defaults)
        sh(node, ["sync"])

    def pmxcfs_sync(self, source):
        pass

    def set_owner(self, node, owner):
        self.move(owner)

    def move(self, owner: str) -> None:
        """What pmxcfs shows once HA moved the config: .vmlist names `owner`
        (written once, from the host, into the one tree)."""
        tree = lab().cfs.tree
        vmlist = json.loads((tree / ".vmlist").read_text())
        vmlist["ids"][str(self.ctid)] = {"node": owner, "type": "lxc", "version": 1}
        (tree / ".vmlist").write_text(json.dumps(vmlist))

    def record(self, node: str | None = None) -> dict | None:
        """The record as the cluster has it (the host's tree), or as `node` sees it."""
        if node is not None:
            return super().record(node)
        try:
            return json.loads((lab().cfs.tree / "priv" / "pvezfsha" / f"{self.ctid}.json").read_text())
        except (OSError, ValueError):
            return None

    def cleanup(self) -> None:
        for node in self.nodes:
            if not lab().running(node):
                lab().boot(node)
            if node not in lab().linked():
                lab().link(node, True)
        super().cleanup()
        (lab().cfs.tree / "priv" / "pvezfsha" / f"{self.ctid}.json").unlink(missing_ok=True)


@dataclasses.dataclass
class Event:
    t: float
    what: str


class HA:
    """pve-ha-manager for one container, driven step by step by a scenario."""

    def __init__(self, group: CfsGroup, prefer: list[str] | None = None, max_restart: int = 1,
                 max_relocate: int = 1, fence_delay: float = 10.0, period: float = 0.2):
        self.g = group
        self.prefer = prefer or list(group.nodes)
        self.max_restart = max_restart
        self.max_relocate = max_relocate
        self.fence_delay = fence_delay
        self.period = period
        self.writes: list[Write] = []
        self.ct: Container | None = None
        self.node: str | None = None          # where the service is (config owner)
        self.state = "stopped"
        self.events: list[Event] = []
        self.t0 = time.monotonic()
        self.acked: dict[str, float] = {}     # writer node -> newest acknowledged snapshot time
        self.outputs: list[str] = []

    def log(self, what: str) -> None:
        self.events.append(Event(time.monotonic() - self.t0, what))

    # -- the container ---------------------------------------------------

    def _hook(self, node: str, phase: str, env: dict | None = None) -> subprocess.CompletedProcess:
        p = self.g.hook(node, phase, env=env)
        self.outputs.append(f"--- {node} {phase} rc={p.returncode}\n{p.stdout}{p.stderr}")
        self.log(f"{phase} on {node}: rc={p.returncode}")
        return p

    def start_once(self, node: str, env: dict | None = None) -> subprocess.CompletedProcess:
        """One start attempt on node (pre-start, bind mount, container, post-start)."""
        p = self._hook(node, "pre-start", env=env)
        if p.returncode != 0:
            return p
        mounted = sh(node, ["zfs", "get", "-H", "-o", "value", "mounted", self.g.ds], check=False).stdout.strip()
        assert mounted == "yes", f"pre-start on {node} succeeded but {self.g.ds} is not mounted: " \
                                 "the bind mount would expose an empty directory"
        self.ct = Container(self.g, node, self.next_index(), self.period, self.writes)
        self._hook(node, "post-start")
        self.state, self.node = "started", node
        return p

    def next_index(self) -> int:
        """Where a new container's file numbers start: past any file an
        earlier one may have written without living to report it."""
        return (max((w.i for w in self.writes), default=-1) // 1000 + 1) * 1000

    def start(self, node: str, env: dict | None = None) -> str:
        """HA's start of the service on node, with its restart and relocate
        policy on a refused pre-start. Returns the node it runs on, or ''."""
        candidates = [node] + [n for n in self.prefer if n != node]
        relocations = 0
        for target in candidates:
            if target != node:
                if relocations >= self.max_relocate or not self._usable(target):
                    continue
                relocations += 1
                self.g.move(target)
                self.log(f"relocate to {target}")
            for attempt in range(1 + self.max_restart):
                if self.start_once(target, env=env if target == node and attempt == 0 else None).returncode == 0:
                    return target
            env = None
        self.state = "error"
        self.log("service in error state")
        return ""

    def stop(self) -> None:
        node = self.node
        self._hook(node, "pre-stop")
        self.ct.stop()
        self._hook(node, "post-stop")
        self.state = "stopped"

    def relocate(self, target: str) -> str:
        self.stop()
        self.g.move(target)
        self.node = target
        self.log(f"config moved to {target}")
        return self.start(target)

    def _usable(self, node: str) -> bool:
        views = lab().cfs_views()
        return node in views and views[node][1]

    def recover(self, dead: str) -> str:
        """The node of the service is gone (power cut or partition): after the
        fence delay, move the config to a quorate survivor and start it there."""
        self.log(f"{dead} lost; fence delay {self.fence_delay:.0f} s")
        time.sleep(self.fence_delay)
        for node in self.prefer:
            if node != dead and self._usable(node):
                self.g.move(node)
                self.node = node
                self.log(f"config stolen for {node}")
                return self.start(node)
        self.log("no quorate survivor: nothing started")
        return ""

    # -- what was acknowledged ---------------------------------------------

    def observe(self) -> None:
        """Note the newest snapshot the primary knows a standby holds: every
        write older than it is acknowledged as replicated."""
        rec = self.g.record()
        if not rec or not rec.get("primary"):
            return
        primary = rec["primary"]
        created = [r["created"] for n, dss in rec.get("replicas", {}).items() if n != primary
                   for ds, r in dss.items() if ds == self.g.ds]
        if created:
            self.acked[primary] = max(self.acked.get(primary, 0), max(created))

    def acknowledged(self) -> list[Write]:
        # Creation times are whole seconds: a write counts only if it was
        # done before the second its snapshot was taken in.
        return [w for w in self.writes if w.ts < self.acked.get(w.node, 0)]


# -- the ledger's audit: what is where after a fault -----------------------------

READ = r"""
import os, sys
d = sys.argv[1]
out = {}
try:
    names = os.listdir(d)
except OSError:
    names = []
for n in names:
    try:
        fd = os.open(os.path.join(d, n), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        out[n] = os.read(fd, 64).decode(errors="replace")
        os.close(fd)
    except OSError:
        pass
import json; print(json.dumps(out))
"""


def live_files(node: str, mnt: str) -> dict[str, str]:
    return json.loads(sh(node, ["python3", "-c", READ, f"{mnt}/clients"]).stdout)


def snapshot_files(node: str, ds: str) -> dict[str, str]:
    """The files of ds's newest snapshot, read through a read-only clone."""
    snaps = sh(node, ["zfs", "list", "-Hp", "-t", "snapshot", "-d", "1", "-s", "createtxg", "-o", "name", ds],
               check=False).stdout.splitlines()
    if not snaps:
        return {}
    clone, mnt = f"{ds}-audit", f"/mnt/audit-{abs(hash(ds))}"
    sh(node, ["zfs", "clone", "-o", "readonly=on", "-o", f"mountpoint={mnt}", snaps[-1], clone])
    try:
        return live_files(node, mnt)
    finally:
        sh(node, ["zfs", "destroy", clone])


def account(ha, serving: str) -> dict:
    """The three checks' data: acknowledged writes missing where the service
    runs now, and other writes that are neither there nor in a kept copy."""
    g = ha.g
    writes = list(ha.writes)      # before reading: the container still writes
    acked = ha.acknowledged()
    live = live_files(serving, g.mnt)
    kept: dict[str, dict[str, str]] = {}
    for node in g.nodes:
        if lab().running(node):
            for ds in g.kept(node):
                kept[f"{node}:{ds}"] = snapshot_files(node, ds)
    def name(w):
        return f"w{w.i:07d}"
    ok = {w for w in writes if live.get(name(w)) == f"{w.i}\n"}
    lost_acked = [w for w in acked if w not in ok]
    in_kept = {w for w in writes if w not in ok and any(
        files.get(name(w)) == f"{w.i}\n" for key, files in kept.items() if key.startswith(w.node + ":"))}
    destroyed = [w for w in writes if w not in ok and w not in in_kept]
    where = f"live on {serving}: {len(live)} files, newest {max(live, default='-')}; " + "; ".join(
        f"{k}: {len(v)} files, newest {max(v, default='-')}" for k, v in kept.items())
    return {"where": where, "writes": len(writes), "acked": len(acked), "lost_acked": lost_acked,
            "kept_copies": len(kept), "kept_writes": len(in_kept), "destroyed": destroyed}
