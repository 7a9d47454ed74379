"""`pvezfsha doctor [CTID] [--json]`: check one node's setup.

Each check gives one result, `ok`, `warn` or `FAIL`, with a fix hint when it
is not ok. Everything that talks to another node goes through probe.py (one
ssh session per peer, in parallel, with a deadline), and every local command
has a deadline too, so doctor answers in seconds even with a dead node.
Exit 0 when nothing failed, 1 otherwise.

The checks are plain functions of a `Context`, which holds everything read
from the node; the tests build a Context from fakes.
"""

from __future__ import annotations

import glob
import ipaddress
import json
import shlex
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from pvezfsha import config, pctconf, pveapi
from pvezfsha.cluster import Cluster
from pvezfsha.config import Config, Container
from pvezfsha.errors import PvezfshaError
from pvezfsha.probe import SNIPPET, NodeFacts, Runner, probe_all, run_subprocess

# Hints are commands to paste into a shell; a dataset name may hold a space.
q = shlex.quote

TIMER = "pvezfsha-sync.timer"
MAX_SKEW = 5.0


@dataclass
class Result:
    check: str
    status: str            # ok | warn | FAIL
    detail: str
    hint: str = ""
    ctid: int | None = None


def ok(check, detail, ctid=None):
    return Result(check, "ok", detail, "", ctid)


def warn(check, detail, hint, ctid=None):
    return Result(check, "warn", detail, hint, ctid)


def fail(check, detail, hint, ctid=None):
    return Result(check, "FAIL", detail, hint, ctid)


def default_pyzfs(pools: list[str]) -> tuple[bool, str]:
    """Import pyzfs and ask the kernel whether each pool exists."""
    try:
        import libzfs_core
    except Exception as e:   # ImportError, or cffi failing to load libzfs_core.so
        return False, f"cannot import libzfs_core: {e}"
    missing = []
    try:
        for pool in pools:
            if not libzfs_core.lzc_exists(pool.encode()):
                missing.append(pool)
    except Exception as e:   # no /dev/zfs: the module is not loaded
        return False, f"libzfs_core cannot talk to ZFS: {e}"
    if missing:
        return False, f"pool(s) not found: {', '.join(missing)}"
    return True, f"libzfs_core imports; pool(s) {', '.join(pools)} answer" if pools else "libzfs_core imports"


@dataclass
class Context:
    local: str
    cfg: Config | None
    cfg_error: str
    cluster: Cluster
    containers: list[Container]
    facts: dict[str, NodeFacts]
    runner: Runner = run_subprocess
    ha: pveapi.HaSource | None = None
    pyzfs: Callable[[list[str]], tuple[bool, str]] = default_pyzfs
    systemd_dir: Path = Path("/etc/systemd/system")
    trusted: list = field(default_factory=list)
    exports_paths: Callable[[int], list[Path]] = None
    timeout: float = 10.0


# -- node-wide checks ---------------------------------------------------------------

def check_config(ctx: Context) -> list[Result]:
    if ctx.cfg is None:
        return [fail("config", ctx.cfg_error, "fix the named key; the example is in pvezfsha(8)")]
    if not ctx.cfg.containers:
        return [warn("config", f"{ctx.cfg.path}: no container configured", "run `pvezfsha init CTID`")]
    return [ok("config", f"{ctx.cfg.path}: container(s) {', '.join(map(str, sorted(ctx.cfg.containers)))}")]


def check_quorum(ctx: Context) -> list[Result]:
    if ctx.cluster.is_quorate():
        return [ok("quorum", f"{ctx.local} is quorate")]
    return [fail("quorum", f"{ctx.local} is not quorate ({ctx.cluster.root}/local is read-only)",
                 "check `pvecm status`; a start on this node is refused until quorum is back")]


def check_timer(ctx: Context) -> list[Result]:
    rc, out, err = ctx.runner(["systemctl", "is-enabled", TIMER], ctx.timeout)
    if rc == 127:   # no systemctl (a chroot): the enablement symlink is the answer
        enabled = (ctx.systemd_dir / "timers.target.wants" / TIMER).is_symlink()
        state = "enabled" if enabled else "not enabled"
    else:
        state = out.strip() or (err.strip().splitlines() or [f"exit code {rc}"])[-1]
        enabled = rc == 0 and state == "enabled"
    if enabled:
        return [ok("timer", f"{TIMER} is enabled")]
    return [fail("timer", f"{TIMER} is {state}", f"systemctl enable --now {TIMER}")]


def check_pyzfs(ctx: Context) -> list[Result]:
    pools = sorted({ds.on(ctx.local).split("/", 1)[0] for ct in ctx.containers
                    if ctx.local in ct.nodes for ds in ct.datasets})
    good, detail = ctx.pyzfs(pools)
    if good:
        return [ok("pyzfs", detail)]
    return [fail("pyzfs", detail, "apt install python3-pyzfs zfsutils-linux; modprobe zfs; zpool import the pool")]


def check_peers(ctx: Context) -> list[Result]:
    """ssh, clock skew and the hookscript snippet, per node."""
    res = []
    for node, f in sorted(ctx.facts.items()):
        if not f.local:
            if f.reachable:
                res.append(ok("ssh", f"{node}: non-interactive ssh works ({f.seconds:.1f} s)"))
            else:
                res.append(fail("ssh", f"{node}: {f.error}",
                                f"ssh-copy-id root@{node}, and check that `ssh -o BatchMode=yes {node} true` "
                                f"answers within {ctx.timeout:g} s"))
                res.append(warn("snippet", f"{node}: not checked (unreachable)", "fix ssh first"))
                continue
            if f.clock_skew is not None and abs(f.clock_skew) >= MAX_SKEW:
                res.append(fail("clock", f"{node}: clock differs from {ctx.local} by {f.clock_skew:+.1f} s",
                                "enable time sync (chrony) on every node; freshness decisions compare clocks"))
            elif f.clock_skew is not None:
                res.append(ok("clock", f"{node}: clock within {abs(f.clock_skew):.1f} s of {ctx.local}"))
        if not f.reachable:
            res.append(fail("snippet", f"{node}: cannot run the probe: {f.error}", "see the ssh check"))
        elif f.snippet == "ok":
            res.append(ok("snippet", f"{node}: {SNIPPET} is executable"))
        else:
            what = "not executable" if f.snippet == "notexec" else "missing"
            res.append(fail("snippet", f"{node}: {SNIPPET} is {what}; a start there would be aborted",
                            f"install the pvezfsha package on {node} (or chmod 0755 {SNIPPET})"))
    return res


# -- per-container checks ---------------------------------------------------------

def check_container(ctx: Context, ct: Container) -> list[Result]:
    c = ct.ctid
    try:
        pct = pctconf.load(c, ctx.cluster.root)
    except PvezfshaError as e:
        return [fail("ct-config", str(e), "is the CTID right? the container must exist on this cluster", c)]
    res = [check_hookscript(pct), check_rootfs(ctx, pct)]
    res += check_mountpoints(ctx, ct, pct)
    res += check_datasets(ctx, ct, pct)
    res += check_keys(ctx, ct)
    res.append(check_ha(ctx, ct))
    res.append(check_exports(ctx, ct))
    return res


def check_hookscript(pct: pctconf.CtConfig) -> Result:
    if pct.hookscript == pctconf.HOOK_VOLID:
        return ok("hookscript", f"attached ({pct.hookscript})", pct.ctid)
    now = f"is {pct.hookscript}" if pct.hookscript else "is not set"
    return fail("hookscript", f"the container's hookscript {now}",
                f"pct set {pct.ctid} --hookscript {pctconf.HOOK_VOLID}", pct.ctid)


def check_rootfs(ctx: Context, pct: pctconf.CtConfig) -> Result:
    rootfs = pct.rootfs
    if rootfs is None:
        return fail("rootfs", "the container has no rootfs line", "check the container config", pct.ctid)
    if rootfs.kind != "volume" or rootfs.storage is None:
        return fail("rootfs", f"rootfs {rootfs.volume} is a {rootfs.kind} path, not on shared storage",
                    "move the rootfs to shared storage: pct move-volume", pct.ctid)
    storage = pveapi.storage_config(ctx.cluster.root).get(rootfs.storage)
    if storage is None:
        return fail("rootfs", f"rootfs storage {rootfs.storage} is not in storage.cfg",
                    "check /etc/pve/storage.cfg", pct.ctid)
    if pveapi.storage_is_shared(storage):
        return ok("rootfs", f"rootfs on shared storage {rootfs.storage} ({storage['type']})", pct.ctid)
    return fail("rootfs", f"rootfs on {rootfs.storage} ({storage['type']}), which is not shared: "
                          f"the container cannot start on another node",
                f"pct move-volume {pct.ctid} rootfs <shared storage>", pct.ctid)


def check_mountpoints(ctx: Context, ct: Container, pct: pctconf.CtConfig) -> list[Result]:
    owner = ctx.facts.get(pct.node)
    if owner is None or not owner.reachable:
        return [warn("mountpoint", f"cannot map mount points: {pct.node} (owner) not reachable",
                     "fix ssh to the owner node", ct.ctid)]
    res = []
    mapped = set()
    for mp in pct.bind_mounts():
        ds = owner.by_mountpoint(mp.volume)
        configured = ds is not None and any(d.on(pct.node) == ds.name for d in ct.datasets)
        if not configured:
            res.append(warn("mountpoint", f"{mp.key}: {mp.volume} is not a protected dataset",
                            f"pvezfsha init {ct.ctid} (if it should follow the container)", ct.ctid))
            continue
        mapped.add(ds.name)
        if mp.shared:
            res.append(ok("mountpoint", f"{mp.key}: {mp.volume} -> {ds.name}, shared=1", ct.ctid))
        else:
            res.append(fail("mountpoint", f"{mp.key}: {mp.volume} has no shared=1: PVE refuses to migrate it",
                            f"pct set {ct.ctid} --{mp.key} {shlex.quote(pctconf.with_shared(pct.options[mp.key]))}", ct.ctid))
    for ds in ct.datasets:
        if ds.on(pct.node) not in mapped:
            res.append(fail("mountpoint", f"{ds.on(pct.node)} is configured but no mpN of the container "
                                          f"bind-mounts its mountpoint",
                            f"add it: pct set {ct.ctid} --mpN <mountpoint>,mp=<path>,shared=1", ct.ctid))
    return res


def check_datasets(ctx: Context, ct: Container, pct: pctconf.CtConfig) -> list[Result]:
    res = []
    primary = pct.node
    ref = ctx.facts.get(primary)
    for ds in ct.datasets:
        want = ref.datasets.get(ds.on(primary)) if ref and ref.reachable else None
        problems, hints = [], []
        for node in ct.nodes:
            f = ctx.facts.get(node)
            name = ds.on(node)
            if f is None or not f.reachable:
                problems.append(f"{node}: not checked (unreachable)")
                continue
            d = f.datasets.get(name)
            if d is None:
                problems.append(f"{name} missing on {node}")
                hints.append(f"on {node}: zfs create -p -o canmount=noauto -o readonly=on {q(name)}")
                continue
            if want is not None and d.mountpoint != want.mountpoint:
                problems.append(f"{name} on {node} has mountpoint {d.mountpoint}, not {want.mountpoint}")
                hints.append(f"on {node}: zfs set {q('mountpoint=' + want.mountpoint)} {q(name)}")
            if node == primary and not d.mounted:
                problems.append(f"{name} is not mounted on the primary {node}")
                hints.append(f"on {node}: zfs mount {q(name)} (the hook does this at pre-start)")
            if node != primary and d.mounted:
                problems.append(f"{name} is mounted on standby {node}")
                hints.append(f"on {node}: zfs unmount {q(name)}; zfs set canmount=noauto {q(name)}")
        label = f"{ds.name}"
        if not problems:
            res.append(ok("datasets", f"{label}: on {', '.join(ct.nodes)}, same mountpoint, "
                                      f"mounted only on {primary}", ct.ctid))
        elif all("not checked" in p for p in problems):
            res.append(warn("datasets", f"{label}: " + "; ".join(problems), "fix ssh first", ct.ctid))
        else:
            res.append(fail("datasets", f"{label}: " + "; ".join(p for p in problems),
                            "; ".join(hints) or "fix ssh first", ct.ctid))
    return res


def check_keys(ctx: Context, ct: Container) -> list[Result]:
    """Every node can load the key of every encrypted dataset: a raw replica
    is held without it, and a takeover must load it with nobody to type."""
    res = []
    for ds in ct.datasets:
        problems, hints, bad, encrypted = [], [], False, False
        for node in ct.nodes:
            f = ctx.facts.get(node)
            d = f.datasets.get(ds.on(node)) if f and f.reachable else None
            if d is None or not d.encroot:
                continue   # unreachable or missing: the datasets check says so
            encrypted = True
            k = f.keys.get(d.encroot)
            root = q(d.encroot)
            if k is None:
                problems.append(f"{node}: the key of {d.encroot} was not checked")
            elif k.result == "prompt":
                bad = bad or k.status != "available"
                problems.append(f"{node}: {d.encroot} has keylocation=prompt"
                                + ("" if k.status != "available" else " (loaded now, but not after a reboot)"))
                hints.append(f"on {node}: put the key in a file and zfs set keylocation=file:///<path> {root}")
            elif k.result == "unchecked":
                problems.append(f"{node}: the key of {d.encroot} was not checked (the probe ran out of time)")
            elif k.result != "ok":
                bad = True
                problems.append(f"{node}: the key of {d.encroot} cannot be loaded from {k.location}: "
                                f"{k.result.removeprefix('fail').strip()}")
                hints.append(f"on {node}: put the key at {k.location.removeprefix('file://')} "
                             f"(or zfs set keylocation=... {root})")
        if not encrypted:
            continue
        if not problems:
            res.append(ok("keys", f"{ds.name}: every node can load its encryption key", ct.ctid))
        else:
            make = fail if bad else warn
            res.append(make("keys", f"{ds.name}: a takeover needs the key: " + "; ".join(problems),
                            "; ".join(hints) or "run doctor again", ct.ctid))
    return res


def check_ha(ctx: Context, ct: Container) -> Result:
    ha = ctx.ha or pveapi.HaSource(ctx.cluster.root, runner=ctx.runner, timeout=ctx.timeout)
    r = ha.resource(ct.ctid)
    on_stale = ct.options.on_stale
    cmd = pveapi.ha_command(ct.ctid, r, len(ct.nodes), on_stale)
    if r is None:
        return fail("ha", f"ct:{ct.ctid} is not HA-managed: nothing restarts it on another node", cmd, ct.ctid)
    if r.state in ("disabled", "ignored", "stopped"):
        return fail("ha", f"ct:{ct.ctid} HA state is {r.state}", f"ha-manager set ct:{ct.ctid} --state started",
                    ct.ctid)
    rec = pveapi.recommended_ha(len(ct.nodes), on_stale)
    fb = "unset" if r.failback is None else int(r.failback)
    have = f"max_restart={r.max_restart} max_relocate={r.max_relocate} failback={fb} (from {r.source})"
    if on_stale == "refuse" and r.max_relocate < rec["max_relocate"]:
        return fail("ha", f"{have}: with on_stale=refuse HA gives up before it has tried every node, "
                          f"and may never reach the fresh one", cmd, ct.ctid)
    if r.max_restart > rec["max_restart"] or r.failback:
        return warn("ha", f"{have}: retries in place or fails back onto a stale replica", cmd, ct.ctid)
    return ok("ha", f"{have} agree with on_stale={on_stale}", ct.ctid)


# -- NFS exports -------------------------------------------------------------------

def default_exports_paths(ctid: int) -> list[Path]:
    # PVE mounts a running container's rootfs here; the NFS server runs inside it.
    root = Path(f"/var/lib/lxc/{ctid}/rootfs")
    return [root / "etc/exports", *map(Path, sorted(glob.glob(str(root / "etc/exports.d/*.exports"))))]


def parse_exports(text: str) -> list[tuple[str, str, list[str]]]:
    """[(path, client, options)] from exports(5) text, with `-opts` defaults and `\\` continuations."""
    entries = []
    for line in text.replace("\\\n", " ").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        words = line.split()
        path, rest = words[0], words[1:]
        default: list[str] = []
        if rest and rest[0].startswith("-"):
            default = rest[0][1:].split(",")
            rest = rest[1:]
        for spec in rest or ["*"]:
            client, _, opts = spec.partition("(")
            options = default + [o for o in opts.rstrip(")").split(",") if o]
            entries.append((path, client or "*", options))
    return entries


def _client_trusted(client: str, trusted: list) -> bool:
    try:
        net = ipaddress.ip_network(client, strict=False)
    except ValueError:
        return False    # '*', wildcards, host names, @netgroups: cannot prove they are inside
    return any(net.version == t.version and net.subnet_of(t) for t in trusted)


def check_exports(ctx: Context, ct: Container) -> Result:
    paths = (ctx.exports_paths or default_exports_paths)(ct.ctid)
    texts = []
    for p in paths:
        try:
            texts.append(p.read_text(encoding="utf-8", errors="replace"))
        except OSError:
            continue
    if not texts:
        return ok("nfs-exports", "skipped: no exports readable here (the container runs elsewhere, or has none)",
                  ct.ctid)
    risky = [(path, client) for text in texts for path, client, opts in parse_exports(text)
             if "no_root_squash" in opts and not _client_trusted(client, ctx.trusted)]
    nets = ", ".join(map(str, ctx.trusted)) or "none"
    if risky:
        listed = ", ".join(f"{p} to {c}" for p, c in risky)
        return warn("nfs-exports", f"no_root_squash outside the trusted range ({nets}): {listed}",
                    "use root_squash, or narrow the client to the trusted network (doctor --trusted CIDR)", ct.ctid)
    return ok("nfs-exports", f"no no_root_squash outside the trusted range ({nets})", ct.ctid)


# -- running it ------------------------------------------------------------------

def default_trusted(cluster: Cluster) -> list:
    """The /24 (IPv4) or /64 (IPv6) around each cluster member's address."""
    nets = []
    for m in cluster.members().values():
        try:
            ip = ipaddress.ip_address(m.ip or "")
        except ValueError:
            continue
        net = ipaddress.ip_network(f"{ip}/{24 if ip.version == 4 else 64}", strict=False)
        if net not in nets:
            nets.append(net)
    return nets


def build_context(ctids: list[int], config_path: str | None, *, root: str | None = None,
                  runner: Runner = run_subprocess, timeout: float = 10.0, trusted: list | None = None) -> Context:
    cluster = Cluster(root)
    local = cluster.local_node()
    cfg, err = None, ""
    try:
        cfg = config.load(config_path)
    except PvezfshaError as e:
        err = str(e)
    containers = []
    for c in ctids or (sorted(cfg.containers) if cfg else []):
        if cfg and c in cfg.containers:
            containers.append(cfg.containers[c])
    nodes = {local} | {n for ct in containers for n in ct.nodes} if containers else {local} | set(cluster.members())
    addresses = cfg.addresses if cfg else {}
    facts = probe_all({n: cluster.address(n, addresses) for n in sorted(nodes)}, local, runner=runner,
                      timeout=timeout, user=cfg.ssh_user if cfg else "root", port=cfg.ssh_port if cfg else 22)
    return Context(local, cfg, err, cluster, containers, facts, runner=runner,
                   trusted=default_trusted(cluster) if trusted is None else trusted, timeout=timeout)


def collect(ctx: Context, ctids: list[int]) -> list[Result]:
    res = check_config(ctx) + check_quorum(ctx) + check_timer(ctx) + check_pyzfs(ctx) + check_peers(ctx)
    known = {ct.ctid for ct in ctx.containers}
    for c in ctids:
        if c not in known:
            res.append(fail("ct-config", f"container {c} is not configured in pvezfsha",
                            f"pvezfsha init {c}", c))
    for ct in ctx.containers:
        res += check_container(ctx, ct)
    return res


def render(results: list[Result], local: str) -> str:
    lines = [f"pvezfsha doctor on {local}"]
    for r in results:
        where = f"CT {r.ctid} " if r.ctid else ""
        lines.append(f"{r.status:<5} {where}{r.check}: {r.detail}")
        if r.hint:
            lines.append(f"      fix: {r.hint}")
    failed = sum(r.status == "FAIL" for r in results)
    warned = sum(r.status == "warn" for r in results)
    lines.append(f"{len(results)} checks: {failed} failed, {warned} warnings")
    return "\n".join(lines)


def run(ctids: list[int], config_path: str | None = None, *, as_json: bool = False, trusted: list | None = None,
        timeout: float = 10.0, out=None) -> int:
    out = out or sys.stdout
    ctx = build_context(ctids, config_path, trusted=trusted, timeout=timeout)
    results = collect(ctx, ctids)
    failed = any(r.status == "FAIL" for r in results)
    if as_json:
        json.dump({"node": ctx.local, "ok": not failed, "checks": [asdict(r) for r in results]}, out, indent=1)
        out.write("\n")
    else:
        print(render(results, ctx.local), file=out)
    return 1 if failed else 0


__all__ = ["run", "collect", "build_context", "Context", "Result", "parse_exports"]
