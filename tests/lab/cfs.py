"""The lab's pmxcfs: one authoritative /etc/pve tree on the host, shared
with every node over virtiofs, with corosync's partitions and quorum.

What a PVE node sees of pmxcfs, and what this emulates (the sources are in
../shared/research/proxmox.md §5):

- **One tree.** Every quorate node reads and writes the same files: a write
  on one is seen by the others at once (virtiofs with cache=none). A mkdir
  in priv/lock succeeds on exactly one node, because it is one mkdir(2) on
  the host's filesystem.
- **Partitions.** The nodes whose cluster link is plugged in, and that run,
  form one partition; a node whose link is cut is alone. The partition with
  more than half of the votes is quorate. A 2-node cluster counts a QDevice
  vote on the host, which goes to the bigger partition, or on a tie to the
  one with the lowest node id (corosync-qnetd's ffsplit, tie_breaker lowest).
- **Without quorum** a node keeps reading the tree as it was when it lost
  quorum, and cannot write it. pmxcfs refuses with EACCES; here the node's
  /etc/pve is a read-only bind mount of a frozen copy, so writes fail with
  EROFS. pvezfsha treats both as "no quorum" (record_store.py). /etc/pve/local
  loses its write bit, which is what PVE's check_cfs_quorum reads.
- **.members is per partition:** the host writes one file per node, with
  the node's own partition online and quorate set as corosync would say.
- **Not emulated:** pmxcfs's lock expiry by utime(0, 0) (pvezfsha uses its
  mtime expiry outside a FUSE /etc/pve), file size limits, and the delay of
  a few seconds before corosync notices a dead node (here it is immediate).

Host layout under <run>/cfs: tree/ (the authoritative /etc/pve),
frozen/<node>/ (what a non-quorate node sees), members/<node>.json.
Guest layout: the share at /mnt/cfs; /etc/pve a bind of tree or of
frozen/<node> (read-only); /etc/pve/local a bind of nodes/<node>;
/etc/pve/.members a bind of members/<node>.json.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

# Run in a guest as: sh -c SCRIPT - NODE SOURCE RW, SOURCE relative to /mnt/cfs.
GUEST_SCRIPT = r"""
set -e
node=$1 src=$2 rw=$3
mkdir -p /mnt/cfs /etc/pve
mountpoint -q /mnt/cfs || mount -t virtiofs pve /mnt/cfs
# Take down what is stacked on /etc/pve (lazily: a process may hold a file).
while mountpoint -q /etc/pve/local; do umount -l /etc/pve/local; done
while mountpoint -q /etc/pve/.members; do umount -l /etc/pve/.members; done
while mountpoint -q /etc/pve; do umount -l /etc/pve; done
mount --bind "/mnt/cfs/$src" /etc/pve
if [ "$rw" = ro ]; then mount -o remount,bind,ro /etc/pve; fi
mount --bind "/etc/pve/nodes/$node" /etc/pve/local
mount --bind "/mnt/cfs/members/$node.json" /etc/pve/.members
echo "$src $rw" > /run/lab-cfs
"""


def partitions(nodes: list[str], running: set[str], linked: set[str]) -> list[list[str]]:
    """Corosync's view: the running nodes with their link plugged in are one
    partition; a running node whose link is cut is alone."""
    together = [n for n in nodes if n in running and n in linked]
    alone = [[n] for n in nodes if n in running and n not in linked]
    return ([together] if together else []) + alone


def quorate_partition(nodes: list[str], parts: list[list[str]]) -> list[str] | None:
    """The partition that has quorum, if any (at most one can)."""
    votes = {tuple(p): len(p) for p in parts}
    total = len(nodes)
    if len(nodes) == 2:
        total += 1   # the QDevice on the host
        if parts:
            best = max(parts, key=lambda p: (len(p), -min(nodes.index(n) for n in p)))
            votes[tuple(best)] += 1
    for p in parts:
        if votes[tuple(p)] * 2 > total:
            return p
    return None


def members(node: str, nodes: list[str], part: list[str], quorate: bool, ips: dict[str, str]) -> dict:
    return {"nodename": node, "version": 1,
            "cluster": {"name": "lab", "version": 1, "nodes": len(nodes), "quorate": int(quorate)},
            "nodelist": {n: {"id": i + 1, "online": int(n in part), "ip": ips[n]}
                         for i, n in enumerate(nodes)}}


class Cfs:
    """The host side: the tree, the frozen copies and the members files."""

    def __init__(self, root: Path, nodes: list[str], ips: dict[str, str]):
        self.root = Path(root)
        self.tree = self.root / "tree"
        self.nodes = nodes
        self.ips = ips

    def create(self) -> None:
        for d in ("priv/lock", "priv/pvezfsha", "local", "lxc"):
            (self.tree / d).mkdir(parents=True, exist_ok=True)
        for n in self.nodes:
            (self.tree / "nodes" / n / "lxc").mkdir(parents=True, exist_ok=True)
        (self.root / "members").mkdir(exist_ok=True)
        (self.root / "frozen").mkdir(exist_ok=True)
        vmlist = self.tree / ".vmlist"
        if not vmlist.exists():
            vmlist.write_text(json.dumps({"version": 1, "ids": {}}))
        (self.tree / ".members").touch()
        for n in self.nodes:
            (self.root / "members" / f"{n}.json").touch()

    def views(self, running: set[str], linked: set[str]) -> dict[str, tuple[list[str], bool]]:
        """node -> (its partition, quorate) for every running node."""
        parts = partitions(self.nodes, running, linked)
        q = quorate_partition(self.nodes, parts)
        return {n: (p, p is q) for p in parts for n in p}

    def source(self, node: str, quorate: bool, was: str | None) -> str:
        """Where node's /etc/pve comes from now, relative to the share: the
        tree, or a copy frozen when it lost quorum (kept while it stays out)."""
        frozen = self.root / "frozen" / node
        if quorate:
            if frozen.exists():
                shutil.rmtree(frozen)
            return "tree"
        if was != f"frozen/{node}" or not frozen.exists():
            if frozen.exists():
                shutil.rmtree(frozen)
            shutil.copytree(self.tree, frozen, symlinks=True)
            # pmxcfs drops the write bit of /etc/pve/local without quorum.
            (frozen / "nodes" / node).chmod(0o555)
        return f"frozen/{node}"

    def write_members(self, node: str, part: list[str], quorate: bool) -> None:
        # In place, not by rename: the guest has the file bind-mounted.
        with open(self.root / "members" / f"{node}.json", "w") as f:
            f.write(json.dumps(members(node, self.nodes, part, quorate, self.ips)))

    def mark_offline(self, running: set[str], linked: set[str]) -> None:
        for node, (part, quorate) in self.views(running, linked).items():
            self.write_members(node, part, quorate)
