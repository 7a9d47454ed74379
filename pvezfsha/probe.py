"""Facts about each node of a replication group, for `init` and `doctor`.

One shell script per node, run locally for this node and over one ssh
session for each peer, prints everything the checks need: the node's
clock, whether the hookscript snippet is executable there, and its ZFS
filesystems with their mountpoint and mounted state. Every run has a hard
timeout (ssh ConnectTimeout plus a subprocess deadline that kills the
child), and the peers are probed in parallel, so a dead node costs at most
`timeout` seconds in total, never a TCP hang.

`Runner` is the seam the tests replace: it takes an argv and a timeout and
returns (exit code, stdout, stderr).
"""

from __future__ import annotations

import concurrent.futures
import shlex
import subprocess
import time
from dataclasses import dataclass, field
from typing import Callable

from pvezfsha.errors import TransportError
from pvezfsha.transport import ssh_argv

SNIPPET = "/var/lib/vz/snippets/pvezfsha-hook"

# Sections are tagged lines so that one stream carries all facts; `zfs list`
# comes last because its output has no fixed length. For each encryption
# root, "@key" says whether a takeover here could load its key: a key not
# loaded is tried with `zfs load-key -n` (nothing changes), for a loaded one
# the key file must be a regular file, since after a reboot it loads only
# from there. A keylocation names a file that others may write near, so a
# FIFO or a missing file is never opened, each load is cut at 3 s, and the
# section stops trying after 5 s, so a node with many roots still answers.
# Values are data in shell variables, printed with printf, never echo (dash's
# echo would turn a backslash in a name into a new line).
SCRIPT = f"""
echo "@time $(date +%s.%N)"
if [ -x {SNIPPET} ]; then echo "@snippet ok"; elif [ -e {SNIPPET} ]; then echo "@snippet notexec"; else echo "@snippet missing"; fi
tab=$(printf '\\t')
until=$(( $(date +%s) + 5 ))
zfs list -H -p -t filesystem -o name,encryptionroot,keystatus,keylocation 2>/dev/null |
while IFS="$tab" read -r name root status location; do
  [ "$name" = "$root" ] || continue
  path=${{location#file://}}
  if [ "$location" = prompt ]; then
    r=prompt
  elif [ "$path" != "$location" ] && [ ! -f "$path" ]; then
    r="fail $path is not a regular file"
  elif [ "$status" = available ]; then
    r=ok
  elif [ "$(date +%s)" -ge "$until" ]; then
    r=unchecked
  elif out=$(timeout 3 zfs load-key -n "$name" </dev/null 2>&1); then
    r=ok
  else
    r="fail $(printf '%s' "$out" | tr '\\n\\t\\\\' '   ')"
  fi
  printf '@key %s\\t%s\\t%s\\t%s\\n' "$name" "$status" "$location" "$r"
done
echo "@zfs"
zfs list -H -p -t filesystem -o name,mountpoint,mounted,encryptionroot 2>&1 || echo "@zfs-error $?"
"""

Runner = Callable[[list[str], float], tuple[int, str, str]]


def run_subprocess(argv: list[str], timeout: float) -> tuple[int, str, str]:
    """Run argv, killing it at the deadline; a missing program is exit 127."""
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return 124, "", f"no answer within {timeout:g} s"
    except FileNotFoundError:
        return 127, "", f"{argv[0]}: not found"
    return p.returncode, p.stdout, p.stderr


@dataclass(frozen=True)
class Dataset:
    name: str
    mountpoint: str
    mounted: bool
    encroot: str = ""           # "" when not encrypted


@dataclass(frozen=True)
class Key:
    """Whether a takeover on a node could load an encryption root's key."""

    root: str
    status: str                 # available | unavailable
    location: str               # keylocation
    result: str                 # ok | prompt | fail <why>


@dataclass
class NodeFacts:
    node: str
    local: bool
    reachable: bool
    error: str = ""
    clock_skew: float | None = None         # peer clock minus ours, seconds
    snippet: str = "unknown"                 # ok | notexec | missing | unknown
    datasets: dict[str, Dataset] = field(default_factory=dict)
    keys: dict[str, Key] = field(default_factory=dict)      # by encryption root
    zfs_error: str = ""
    seconds: float = 0.0

    def by_mountpoint(self, path: str) -> Dataset | None:
        path = path.rstrip("/") or "/"
        return next((d for d in self.datasets.values() if d.mountpoint == path), None)


def parse_output(facts: NodeFacts, out: str, t_mid: float) -> NodeFacts:
    in_zfs = False
    zfs_lines = []
    for line in out.splitlines():
        if line.startswith("@time ") and not in_zfs:
            try:
                facts.clock_skew = float(line.split()[1]) - t_mid
            except (IndexError, ValueError):
                pass
        elif line.startswith("@snippet ") and not in_zfs:
            facts.snippet = line.split()[1]
        elif line.startswith("@key ") and not in_zfs:
            parts = line[5:].split("\t")
            if len(parts) == 4:
                facts.keys[parts[0]] = Key(*parts)
        elif line == "@zfs":
            in_zfs = True
        elif line.startswith("@zfs-error"):
            facts.zfs_error = "\n".join(zfs_lines).strip() or line
            zfs_lines = []
        elif in_zfs:
            zfs_lines.append(line)
    for line in zfs_lines:
        parts = line.split("\t")
        if len(parts) in (3, 4):
            root = parts[3] if len(parts) == 4 and parts[3] != "-" else ""
            facts.datasets[parts[0]] = Dataset(parts[0], parts[1], parts[2] == "yes", root)
    return facts


def probe(node: str, address: str | None, *, local: bool, runner: Runner = run_subprocess,
          timeout: float = 10.0, user: str = "root", port: int = 22) -> NodeFacts:
    """Facts of one node; never raises for an unreachable node, and never waits past timeout."""
    if local:
        argv = ["sh", "-c", SCRIPT]
    else:
        try:
            argv = ssh_argv(address or node, user=user, port=port, connect_timeout=min(timeout, 5),
                            remote=("sh", "-c", shlex.quote(SCRIPT)))
        except TransportError as e:
            return NodeFacts(node, local, reachable=False, error=str(e))
    t0 = time.time()
    rc, out, err = runner(argv, timeout)
    t1 = time.time()
    facts = NodeFacts(node, local, reachable=False, seconds=t1 - t0)
    if "@time " not in out:
        # ssh exits 255 for its own errors; anything else means the shell never ran.
        msg = (err.strip().splitlines() or [f"exit code {rc}"])[-1]
        facts.error = msg
        return facts
    facts.reachable = True
    parse_output(facts, out, (t0 + t1) / 2)
    if local:
        facts.clock_skew = 0.0   # our own clock is the reference
    return facts


def probe_all(nodes: dict[str, str | None], local_node: str, *, runner: Runner = run_subprocess,
              timeout: float = 10.0, user: str = "root", port: int = 22) -> dict[str, NodeFacts]:
    """Probe every node in parallel: {node: address} -> {node: NodeFacts}."""
    with concurrent.futures.ThreadPoolExecutor(max(1, len(nodes))) as ex:
        futs = {n: ex.submit(probe, n, a, local=(n == local_node), runner=runner, timeout=timeout,
                             user=user, port=port) for n, a in nodes.items()}
        return {n: f.result() for n, f in futs.items()}
