"""Helpers for driving the lab nodes: used by the lab tests (conftest.py),
the demo and the benchmarks.

They run inside pve1 (commands on pve1 run locally, on the others over the
nodes' own ssh), or on the host with PVEZFSHA_LAB_HOST=1 (every command goes
through lab.py's ssh), which the failover tests need: they power nodes off.

pmxcfs is emulated: each node has a plain /etc/pve, and `Group.pmxcfs_sync`
copies what pvezfsha and "HA" wrote there to the nodes that are up, which is
what pmxcfs does for a quorate cluster. Quorum is the write bit of
/etc/pve/local, as PVE checks it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import re
import shlex
import subprocess
import time
from pathlib import Path

ON_HOST = bool(os.environ.get("PVEZFSHA_LAB_HOST"))
LOCAL = None if ON_HOST else "pve1"
IPS = {"pve1": "169.254.10.1", "pve2": "169.254.10.2", "pve3": "169.254.10.3"}
PVE = "/etc/pve"
_lab = None


def lab():
    global _lab
    if _lab is None:
        import lab as labmod   # tests/lab/lab.py, on sys.path via conftest
        _lab = labmod.Lab()
    return _lab


def sh(node: str, cmd: list[str] | str, *, check: bool = True, env: dict | None = None,
       timeout: float = 600, input: str | None = None) -> subprocess.CompletedProcess:
    """Run argv on a node (locally on pve1, else over ssh)."""
    if isinstance(cmd, str):
        cmd = ["sh", "-c", cmd]
    if node != LOCAL:
        prefix = [f"{k}={shlex.quote(v)}" for k, v in (env or {}).items()]
        line = " ".join(["env", *prefix, shlex.join(cmd)] if prefix else [shlex.join(cmd)])
        if ON_HOST:
            p = lab().ssh(node, line, input=input, timeout=timeout)
            if check and p.returncode != 0:
                raise AssertionError(f"{node}: {cmd} exited {p.returncode}\n{p.stdout}\n{p.stderr}")
            return p
        # One shared connection per node: a new one costs ~1.8 s between
        # two TCG guests, and a test makes dozens. pvezfsha's own ssh
        # sessions are not shared: they are what the tests exercise.
        argv = ["ssh", "-o", "BatchMode=yes", "-o", "ControlMaster=auto", "-o", "ControlPersist=300",
                "-o", "ControlPath=/run/labnode-ssh-%h", node, line]
        env = None
    else:
        argv = cmd
    p = subprocess.run(argv, capture_output=True, text=True, errors="replace", timeout=timeout, input=input,
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


def release_all_holds(node: str, datasets: list[str]) -> None:
    # One listing of the pool for all of them: it costs seconds per thousand
    # snapshots on the lab's guests.
    out = sh(node, ["zfs", "list", "-H", "-t", "snapshot", "-o", "name,userrefs", "-r", "tank"], check=False).stdout
    for line in out.splitlines():
        name, refs = line.split("\t")
        if refs != "0" and any(belongs(name, ds) for ds in datasets):
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
        self.config = f"/var/tmp/pvezfsha-{self.ctid}.toml"
        self.defaults = {"interval": "1m", "keep": 20, **defaults}
        self.up = set(nodes)
        for node in nodes:
            self.write_members(node)
            self.set_owner(node, "pve1")
            self.write_config(node)
        for ds in self.datasets if create else ():
            sh(nodes[0], ["zfs", "create", ds])

    # -- the emulated cluster ------------------------------------------------

    def write_members(self, node: str, offline: tuple[str, ...] = ()) -> None:
        members = {"nodename": node, "version": 1,
                   "cluster": {"name": "lab", "version": 1, "nodes": len(self.nodes), "quorate": 1},
                   "nodelist": {n: {"id": i + 1, "online": 0 if n in offline else 1, "ip": IPS[n]}
                                for i, n in enumerate(self.nodes)}}
        sh(node, f"mkdir -p {PVE}/local {PVE}/priv && cat > {PVE}/.members", input=json.dumps(members))

    def set_owner(self, node: str, owner: str) -> None:
        """Put the container's config on `owner` in node's .vmlist (merged:
        other tests' containers stay)."""
        py = ("import json,sys; p='/etc/pve/.vmlist'\n"
              "try: d=json.load(open(p))\n"
              "except Exception: d={'version':1,'ids':{}}\n"
              f"d['ids']['{self.ctid}']={{'node':'{owner}','type':'lxc','version':1}}\n"
              "json.dump(d,open(p,'w'))")
        sh(node, ["python3", "-c", py])

    def move(self, owner: str) -> None:
        """What HA does: the config now belongs to `owner` (on every node up)."""
        for node in self.up:
            self.set_owner(node, owner)

    def crashed(self, node: str) -> None:
        """The cluster noticed `node` is gone: offline in .members elsewhere."""
        self.up.discard(node)
        for other in self.up:
            self.write_members(other, offline=(node,))

    def returned(self, node: str, source: str) -> None:
        """`node` rejoins: pmxcfs gives it the cluster's current files."""
        self.up.add(node)
        for n in self.up:
            self.write_members(n)
        rec = sh(source, ["cat", self.record_path], check=False).stdout
        vm = sh(source, ["cat", f"{PVE}/.vmlist"]).stdout
        sh(node, f"mkdir -p {PVE}/priv/pvezfsha && cat > {PVE}/.vmlist", input=vm)
        if rec:
            sh(node, f"cat > {self.record_path}", input=rec)

    @property
    def record_path(self) -> str:
        return f"{PVE}/priv/pvezfsha/{self.ctid}.json"

    def record(self, node: str = "pve1") -> dict | None:
        out = sh(node, ["cat", self.record_path], check=False).stdout
        return json.loads(out) if out else None

    def pmxcfs_sync(self, source: str) -> None:
        """Copy the record and the health file `source` wrote to every other node that is up."""
        rec = sh(source, ["cat", self.record_path], check=False).stdout
        health = sh(source, ["cat", self.health_path(source)], check=False).stdout
        for node in self.up - {source}:
            if rec:
                sh(node, f"mkdir -p {PVE}/priv/pvezfsha && cat > {self.record_path}", input=rec)
            if health:
                sh(node, f"mkdir -p {PVE}/priv/pvezfsha/health && cat > {self.health_path(source)}", input=health)

    def health_path(self, node: str) -> str:
        return f"{PVE}/priv/pvezfsha/health/{self.ctid}.{node}.json"

    def quorate(self, node: str, yes: bool) -> None:
        sh(node, ["chmod", "0755" if yes else "0555", f"{PVE}/local"])

    def write_config(self, node: str, extra: str = "", defaults: dict | None = None) -> None:
        d = {**self.defaults, **(defaults or {})}
        lines = ["[defaults]"] + [f"{k} = {json.dumps(v)}" for k, v in d.items()]
        lines += ["", "[[container]]", f"ctid = {self.ctid}", f"datasets = {json.dumps(self.datasets)}",
                  f"nodes = {json.dumps(list(self.nodes))}", extra]
        sh(node, f"cat > {self.config}", input="\n".join(lines) + "\n")

    def env(self) -> dict:
        return {"PVEZFSHA_CONFIG": self.config}

    def run(self, *args: str, node: str = "pve1", check: bool = False, timeout: float = 600,
            env: dict | None = None):
        p = sh(node, ["pvezfsha", *args], env={**self.env(), **(env or {})}, check=check, timeout=timeout)
        self.pmxcfs_sync(node)
        return p

    def sync(self, *args: str, node: str = "pve1", expect: int | None = 0, verbose: bool = True,
             env: dict | None = None):
        p = self.run(*(["-v"] if verbose else []), "sync", *args, str(self.ctid), node=node, env=env)
        if expect is not None:
            assert p.returncode == expect, f"sync exited {p.returncode}\n{p.stderr}"
        return p

    def hook(self, node: str, phase: str, timeout: float = 600,
             env: dict | None = None) -> subprocess.CompletedProcess:
        """The hookscript as PVE runs it: argv vmid phase, LC_ALL=C, minimal
        PATH, stdin at EOF; the config path (and `env`, for fault points)
        is all we add."""
        extra = "".join(f" {k}={shlex.quote(v)}" for k, v in (env or {}).items())
        cmd = ("h=/var/lib/vz/snippets/pvezfsha-hook; [ -x $h ] || h=/opt/pvezfsha/hookscripts/pvezfsha-hook; "
               f"cd / && env -i LC_ALL=C PATH=/sbin:/bin:/usr/sbin:/usr/bin PVEZFSHA_CONFIG={self.config}{extra} "
               f"$h {self.ctid} {phase} </dev/null")
        p = sh(node, cmd, check=False, timeout=timeout)
        self.pmxcfs_sync(node)
        return p

    def datasets_on(self, node: str) -> list[str]:
        """Every dataset of this group on node: its own and what pvezfsha made beside it."""
        out = sh(node, ["zfs", "list", "-H", "-o", "name", "-r", "tank"], check=False).stdout.split()
        return sorted(d for d in out if any(belongs(d, mine) for mine in self.datasets))

    def kept(self, node: str) -> list[str]:
        return [d for d in self.datasets_on(node) if "-pvezfsha-diverged-" in d]

    def diverge(self, node: str = "pve2", name: str = "standby-only.txt", mnt: str | None = None) -> None:
        """Writes of node's own on its replica, as a returning primary has."""
        sh(node, ["zfs", "set", "readonly=off", self.ds])
        sh(node, ["zfs", "mount", self.ds])
        sh(node, f"echo precious > {mnt or self.mnt}/{name}")
        sh(node, ["zfs", "unmount", self.ds])

    def popen_sync(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen(["pvezfsha", "-v", "sync", *args, str(self.ctid)], env={**os.environ, **self.env()},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def wait_idle(self, node: str, timeout: float = 300) -> None:
        """Until no pvezfsha sync runs on node (post-start starts one)."""
        deadline = time.time() + timeout
        while sh(node, ["pgrep", "-f", "pvezfsha.* sync"], check=False).returncode == 0:
            if time.time() > deadline:
                raise AssertionError(f"{node}: a pvezfsha sync is still running after {timeout:.0f} s")
            time.sleep(1)

    def write(self, path: str, mib: int = 1, node: str = "pve1") -> None:
        sh(node, ["dd", "if=/dev/urandom", f"of={self.mnt}/{path}", "bs=1M", f"count={mib}", "status=none"])

    def cleanup(self) -> None:
        for node in self.nodes:
            release_all_holds(node, self.datasets)
            out = sh(node, ["zfs", "list", "-H", "-o", "name", "-r", "tank"], check=False).stdout
            # One name a line: a dataset name may hold a space.
            doomed = [d for d in out.splitlines() if any(belongs(d, mine) for mine in self.datasets)]
            for ds in sorted(doomed, key=len, reverse=True):
                sh(node, ["zfs", "destroy", "-R", ds], check=False)
            sh(node, ["rm", "-f", self.record_path, self.config, *map(self.health_path, self.nodes)], check=False)
            sh(node, ["chmod", "0755", f"{PVE}/local"], check=False)


def step_bytes(log: str) -> list[int]:
    """Exact bytes of each step, from the -v log."""
    return [int(m) for m in re.findall(r": (\d+) bytes in ", log)]
