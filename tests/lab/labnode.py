"""Helpers for driving the two lab nodes from inside pve1: used by the lab
tests (conftest.py), the demo and the benchmarks."""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import re
import shlex
import subprocess
from pathlib import Path

LOCAL = "pve1"
IPS = {"pve1": "169.254.10.1", "pve2": "169.254.10.2", "pve3": "169.254.10.3"}


def sh(node: str, cmd: list[str] | str, *, check: bool = True, env: dict | None = None,
       timeout: float = 600, input: str | None = None) -> subprocess.CompletedProcess:
    """Run argv on a node (locally on pve1, else over ssh)."""
    if isinstance(cmd, str):
        cmd = ["sh", "-c", cmd]
    if node != LOCAL:
        prefix = [f"{k}={shlex.quote(v)}" for k, v in (env or {}).items()]
        argv = ["ssh", "-o", "BatchMode=yes", node, " ".join(["env", *prefix, shlex.join(cmd)] if prefix
                                                             else [shlex.join(cmd)])]
        env = None
    else:
        argv = cmd
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, input=input,
                       env={**os.environ, **env} if env else None)
    if check and p.returncode != 0:
        raise AssertionError(f"{node}: {cmd} exited {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


def zfs_get(node: str, prop: str, ds: str) -> str:
    return sh(node, ["zfs", "get", "-Hp", "-o", "value", prop, ds]).stdout.strip()


def snapshots(node: str, ds: str) -> list[tuple[str, str]]:
    """(name, guid) by createtxg."""
    out = sh(node, ["zfs", "list", "-Hp", "-t", "snapshot", "-d", "1", "-s", "createtxg", "-o", "name,guid", ds],
             check=False).stdout
    return [tuple(line.split("\t")) for line in out.splitlines() if line]


def checksums(node: str, ds: str, snap: str | None = None) -> dict[str, str]:
    """sha256 of every file, read through a temporary read-only clone, so
    the replica itself is never mounted (mounting modifies it)."""
    snap = snap or snapshots(node, ds)[-1][0].split("@")[1]
    clone = f"{ds}-verify"
    mnt = f"/mnt/verify-{ds.replace('/', '-')}"
    sh(node, ["zfs", "clone", "-o", "readonly=on", "-o", f"mountpoint={mnt}", f"{ds}@{snap}", clone])
    try:
        out = sh(node, f"cd {shlex.quote(mnt)} && find . -type f -print0 | sort -z | xargs -0 -r sha256sum").stdout
    finally:
        sh(node, ["zfs", "destroy", clone])
    return dict(reversed(line.split(None, 1)) for line in out.splitlines())


def replication_name(i: int) -> str:
    """A replication snapshot name as pvezfsha would take it, i+1 s from now."""
    when = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=i + 1)
    return f"pvezfsha_{when:%Y%m%dT%H%M%SZ}"


def belongs(name: str, ds: str) -> bool:
    """`name` is ds itself, one of its snapshots or children, or a sibling
    pvezfsha or the tests made from it (ds-pvezfsha-diverged-..., ds-verify)."""
    return name == ds or name.startswith((ds + "@", ds + "/", ds + "-"))


def release_all_holds(node: str, ds: str) -> None:
    out = sh(node, ["zfs", "list", "-H", "-t", "snapshot", "-o", "name,userrefs", "-r", "tank"], check=False).stdout
    for line in out.splitlines():
        name, refs = line.split("\t")
        if belongs(name, ds) and refs != "0":
            for hold in sh(node, ["zfs", "holds", "-H", name]).stdout.splitlines():
                sh(node, ["zfs", "release", hold.split("\t")[1], name], check=False)


class Group:
    """One protected container with its datasets on pve1 (primary) and pve2."""

    def __init__(self, tmp: Path | None = None, nodes=("pve1", "pve2"), datasets=1, ctid: int | None = None,
                 names: list[str] | None = None, create: bool = True, **defaults):
        self.ctid = ctid or random.randint(1000, 999_999)
        self.nodes = nodes
        self.datasets = names or [f"tank/t{self.ctid}" + (f"-{i}" if i else "") for i in range(datasets)]
        self.ds = self.datasets[0]
        self.mnt = "/" + self.ds
        self.pve_root = f"/var/tmp/pve-{self.ctid}"
        self.config = f"/var/tmp/pvezfsha-{self.ctid}.toml"
        self.defaults = {"interval": "1m", "keep": 20, **defaults}
        for node in nodes:
            self.write_pve(node, owner="pve1")
            self.write_config(node)
        for ds in self.datasets if create else ():
            sh("pve1", ["zfs", "create", ds])

    def write_pve(self, node: str, owner: str) -> None:
        members = {"nodename": node, "version": 1,
                   "cluster": {"name": "lab", "version": 1, "nodes": len(self.nodes), "quorate": 1},
                   "nodelist": {n: {"id": i + 1, "online": 1, "ip": IPS[n]} for i, n in enumerate(self.nodes)}}
        vmlist = {"version": 1, "ids": {str(self.ctid): {"node": owner, "type": "lxc", "version": 1}}}
        sh(node, f"mkdir -p {self.pve_root}/local && cat > {self.pve_root}/.members && "
                 f"echo {shlex.quote(json.dumps(vmlist))} > {self.pve_root}/.vmlist",
           input=json.dumps(members))

    def move(self, owner: str) -> None:
        """What HA does: the config now belongs to `owner`."""
        for node in self.nodes:
            self.write_pve(node, owner)

    def write_config(self, node: str, extra: str = "", defaults: dict | None = None) -> None:
        d = {**self.defaults, **(defaults or {})}
        lines = ["[defaults]"] + [f"{k} = {json.dumps(v)}" for k, v in d.items()]
        lines += ["", "[[container]]", f"ctid = {self.ctid}", f"datasets = {json.dumps(self.datasets)}",
                  f"nodes = {json.dumps(list(self.nodes))}", extra]
        sh(node, f"cat > {self.config}", input="\n".join(lines) + "\n")

    def env(self) -> dict:
        return {"PVEZFSHA_PVE_ROOT": self.pve_root, "PVEZFSHA_CONFIG": self.config}

    def run(self, *args: str, node: str = "pve1", check: bool = False, timeout: float = 600):
        return sh(node, ["pvezfsha", *args], env=self.env(), check=check, timeout=timeout)

    def sync(self, *args: str, node: str = "pve1", expect: int | None = 0, verbose: bool = True):
        p = self.run(*(["-v"] if verbose else []), "sync", *args, str(self.ctid), node=node)
        if expect is not None:
            assert p.returncode == expect, f"sync exited {p.returncode}\n{p.stderr}"
        return p

    def popen_sync(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen(["pvezfsha", "-v", "sync", *args, str(self.ctid)], env={**os.environ, **self.env()},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def write(self, path: str, mib: int = 1, node: str = "pve1") -> None:
        sh(node, ["dd", "if=/dev/urandom", f"of={self.mnt}/{path}", "bs=1M", f"count={mib}", "status=none"])

    def cleanup(self) -> None:
        for node in self.nodes:
            for mine in self.datasets:
                release_all_holds(node, mine)
            out = sh(node, ["zfs", "list", "-H", "-o", "name", "-r", "tank"], check=False).stdout
            doomed = [d for d in out.split() if any(belongs(d, mine) for mine in self.datasets)]
            for ds in sorted(doomed, key=len, reverse=True):
                sh(node, ["zfs", "destroy", "-R", ds], check=False)
            sh(node, ["rm", "-rf", self.pve_root, self.config], check=False)


def step_bytes(log: str) -> list[int]:
    """Exact bytes of each step, from the -v log."""
    return [int(m) for m in re.findall(r": (\d+) bytes in ", log)]
