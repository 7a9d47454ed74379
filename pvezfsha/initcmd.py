"""`pvezfsha init CTID`: protect a container's ZFS bind mounts.

It reads the container's config from pmxcfs, maps each bind mount point
(`mpN: /tank/media,mp=...`) to the ZFS dataset mounted there on the node
that owns the container, checks that the same dataset with the same
mountpoint exists on every other node of the group, then adds or extends
the container's `[[container]]` block in /etc/pvezfsha/pvezfsha.toml and
shows the diff. It changes nothing in Proxmox: it prints the `pct set` and
`ha-manager` commands for the admin to run.

Anything it cannot map is refused with one line per problem and nothing is
written: a bind mount that is not a dataset's mountpoint, a dataset missing
on a node, a dataset mounted elsewhere on a node, a node it cannot reach.
The file is edited as text, so comments and other blocks stay as they are,
and the result is validated with the config loader before it is written.
"""

from __future__ import annotations

import difflib
import json
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from pvezfsha import config, pctconf, pveapi
from pvezfsha.cluster import Cluster
from pvezfsha.config import DatasetMap
from pvezfsha.errors import ConfigError, PvezfshaError, UsageError
from pvezfsha.probe import NodeFacts, Runner, probe_all, run_subprocess
from pvezfsha.state import write_atomically

@dataclass
class Mapping:
    mp: pctconf.MountPoint
    dataset: str


def map_mountpoints(ct: pctconf.CtConfig, facts: dict[str, NodeFacts]) -> tuple[list[Mapping], list[str], list[str]]:
    """(mappings, problems, notes) for the container's bind mounts on every node in facts."""
    problems, notes, maps = [], [], []
    owner = facts[ct.node]
    for mp in ct.mountpoints.values():
        if mp.kind != "bind":
            notes.append(f"{mp.key}: {mp.volume} is a {mp.kind} mount point, not a bind mount; left to PVE")
            continue
        if mp.unknown:
            notes.append(f"{mp.key}: options pvezfsha does not know: {', '.join(sorted(mp.unknown))}")
        ds = owner.by_mountpoint(mp.volume)
        if ds is None:
            problems.append(f"{mp.key}: {mp.volume} on {ct.node} is not the mountpoint of a ZFS dataset "
                            f"(bind-mount a dataset's mountpoint itself, not a directory inside it)")
            continue
        for node, f in facts.items():
            if node == ct.node:
                continue
            other = f.datasets.get(ds.name)
            if other is None:
                problems.append(f"{mp.key}: {ds.name} is missing on {node}; create it there with "
                                f"`zfs create -p -o canmount=noauto -o readonly=on {shlex.quote(ds.name)}` "
                                f"(the first sync fills it)")
            elif other.mountpoint != ds.mountpoint:
                problems.append(f"{mp.key}: {ds.name} has mountpoint {other.mountpoint} on {node} but "
                                f"{ds.mountpoint} on {ct.node}; set `zfs set {shlex.quote('mountpoint=' + ds.mountpoint)} "
                                f"{shlex.quote(ds.name)}` on {node}")
        maps.append(Mapping(mp, ds.name))
    return maps, problems, notes


# -- editing the TOML text -----------------------------------------------------

_HEADER = re.compile(r"^\s*\[")
_CONTAINER = re.compile(r"^\s*\[\[\s*container\s*\]\]\s*(#.*)?$")
_CTID = re.compile(r"^\s*ctid\s*=\s*(\d+)\s*(#.*)?$")


def _toml_dataset(ds: DatasetMap) -> str:
    if not ds.per_node:
        return json.dumps(ds.name)
    on = ", ".join(f"{n} = {json.dumps(v)}" for n, v in ds.per_node.items())
    return f"{{ name = {json.dumps(ds.name)}, on = {{ {on} }} }}"


def _assignment_span(lines: list[str], i: int) -> int:
    """End (exclusive) of the `key = value` starting at line i, following a multi-line array."""
    depth = 0
    j = i
    while j < len(lines):
        code = lines[j].split("#", 1)[0]   # names and node names contain no '#' or brackets
        depth += code.count("[") - code.count("]")
        j += 1
        if depth <= 0:
            return j
    return j


def merge(text: str, ctid: int, datasets: list[str], nodes: list[str], path: str) -> str:
    """The config text with ctid's block added or extended (datasets and nodes are unions)."""
    current = config.parse(text, path) if text.strip() else None
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    existing = current.containers.get(ctid) if current else None
    if existing is None:
        block = ["\n"] if lines else []
        block += ["[[container]]\n", f"ctid = {ctid}\n",
                 f"datasets = [{', '.join(json.dumps(d) for d in datasets)}]\n",
                 f"nodes = [{', '.join(json.dumps(n) for n in nodes)}]\n"]
        return "".join(lines + block)

    merged_ds = list(existing.datasets) + [DatasetMap(d) for d in datasets
                                           if d not in {x.name for x in existing.datasets}]
    merged_nodes = list(existing.nodes) + [n for n in nodes if n not in existing.nodes]
    start = next(i for i, line in enumerate(lines)
                 if _CONTAINER.match(line) and _block_ctid(lines, i) == ctid)
    end = next((i for i in range(start + 1, len(lines)) if _HEADER.match(lines[i])), len(lines))
    out = lines[:start + 1]
    i = start + 1
    while i < end:
        key = re.match(r"^\s*(datasets|nodes)\s*=", lines[i])
        if key:
            j = _assignment_span(lines, i)
            values = ([_toml_dataset(d) for d in merged_ds] if key.group(1) == "datasets"
                      else [json.dumps(n) for n in merged_nodes])
            out.append(f"{key.group(1)} = [{', '.join(values)}]\n")
            i = j
        else:
            out.append(lines[i])
            i += 1
    return "".join(out + lines[end:])


def _block_ctid(lines: list[str], start: int) -> int | None:
    for line in lines[start + 1:]:
        if _HEADER.match(line):
            return None
        m = _CTID.match(line)
        if m:
            return int(m.group(1))
    return None


# -- the command -----------------------------------------------------------------

def run(ctid: int, *, config_path: str | None = None, nodes: list[str] | None = None, dry_run: bool = False,
        runner: Runner = run_subprocess, timeout: float = 10.0, out=None, root: str | None = None) -> int:
    out = out or sys.stdout
    path = Path(config.config_path(config_path))
    try:
        old_text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        old_text = ""
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read: {e}") from None
    current = config.parse(old_text, str(path)) if old_text.strip() else None   # refuse a broken file first

    ct = pctconf.load(ctid, root)
    cluster = Cluster(root)
    members = cluster.members()
    group = list(nodes) if nodes else sorted(members) or [ct.node]
    unknown = [n for n in group if members and n not in members]
    if unknown:
        raise UsageError(f"--nodes: {', '.join(unknown)} not in the cluster ({', '.join(sorted(members))})")
    if ct.node not in group:
        raise UsageError(f"container {ctid} runs on {ct.node}, which is not in --nodes {','.join(group)}")
    if len(group) < 2:
        raise PvezfshaError(f"container {ctid}: replication needs at least two nodes; the cluster has {group}")

    overrides = current.addresses if current else {}
    user = current.ssh_user if current else "root"
    port = current.ssh_port if current else 22
    facts = probe_all({n: cluster.address(n, overrides) for n in group}, cluster.local_node(),
                      runner=runner, timeout=timeout, user=user, port=port)
    problems = [f"cannot reach {n}: {f.error} (fix ssh, or leave it out with --nodes)"
                for n, f in facts.items() if not f.reachable]
    problems += [f"{n}: cannot list ZFS datasets: {f.zfs_error}" for n, f in facts.items()
                 if f.reachable and f.zfs_error]
    if problems:
        return _refuse(ctid, problems)
    maps, problems, notes = map_mountpoints(ct, facts)
    if not problems and not maps:
        problems.append(f"{ct.path} has no bind mount point (mpN: /path,...) to protect")
    if problems:
        return _refuse(ctid, problems, notes)

    new_text = merge(old_text, ctid, [m.dataset for m in maps], group, str(path))
    config.parse(new_text, str(path))   # never write what the loader would reject
    for note in notes:
        print(f"note: {note}", file=out)
    if new_text == old_text:
        print(f"{path}: container {ctid} is already configured as found; nothing to change", file=out)
    else:
        diff = difflib.unified_diff(old_text.splitlines(keepends=True), new_text.splitlines(keepends=True),
                                    f"{path} (before)", f"{path} (after)")
        out.write("".join(diff))
        if dry_run:
            print(f"--dry-run: {path} not written", file=out)
        else:
            write_atomically(path, new_text)
            print(f"wrote {path}; copy it to every node of the group ({', '.join(group)})", file=out)

    cfg = config.parse(new_text, str(path))
    opts = cfg.containers[ctid].options
    print("\nThen, in Proxmox (pvezfsha changed nothing there):", file=out)
    if ct.hookscript != pctconf.HOOK_VOLID:
        print(f"  pct set {ctid} --hookscript {pctconf.HOOK_VOLID}", file=out)
    for m in maps:
        if not m.mp.shared:
            print(f"  pct set {ctid} --{m.mp.key} {shlex.quote(pctconf.with_shared(ct.options[m.mp.key]))}", file=out)
    resource = pveapi.HaSource(root, runner=runner, timeout=timeout).resource(ctid)
    print(f"  {pveapi.ha_command(ctid, resource, len(group), opts.on_stale)}", file=out)
    print(f"Check with: pvezfsha doctor {ctid}", file=out)
    return 0


def _refuse(ctid: int, problems: list[str], notes: list[str] = ()) -> int:
    for note in notes:
        print(f"pvezfsha: init {ctid}: note: {note}", file=sys.stderr)
    for p in problems:
        print(f"pvezfsha: init {ctid}: {p}", file=sys.stderr)
    print(f"pvezfsha: init {ctid}: refused ({len(problems)} problem(s)); nothing was written", file=sys.stderr)
    return 1
