"""Fakes for the fast tests of init and doctor: a pmxcfs tree on disk and a
probe runner that answers for each node as the real probe script would."""

from __future__ import annotations

import json
import time
from pathlib import Path

ADDRS = {"pve1": "10.0.0.1", "pve2": "10.0.0.2", "pve3": "10.0.0.3"}


def pve_tree(root: Path, nodes=("pve1", "pve2"), local="pve1", conf: str | None = None, owner="pve1",
             ctid=103, quorate=True, storage: str | None = None, resources: str | None = None) -> Path:
    members = {"nodename": local, "version": 1,
               "nodelist": {n: {"id": i + 1, "online": 1, "ip": ADDRS[n]} for i, n in enumerate(nodes)}}
    root.mkdir(parents=True, exist_ok=True)
    (root / ".members").write_text(json.dumps(members))
    (root / ".vmlist").write_text(json.dumps({"ids": {str(ctid): {"node": owner, "type": "lxc"}}}))
    (root / "local").mkdir(exist_ok=True)
    (root / "local").chmod(0o755 if quorate else 0o555)
    if conf is not None:
        d = root / "nodes" / owner / "lxc"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{ctid}.conf").write_text(conf)
    (root / "storage.cfg").write_text(storage if storage is not None else
                                      "dir: local\n\tpath /var/lib/vz\n\ndrbd: drbd1\n\tcontent rootdir\n")
    if resources is not None:
        (root / "ha").mkdir(exist_ok=True)
        (root / "ha" / "resources.cfg").write_text(resources)
    return root


class FakeNodes:
    """Runner for probe.py: `nodes` maps a node to its answer.

    An answer is a dict: datasets {name: (mountpoint, mounted)}, encroots
    {name: encryption root}, keys {root: (keystatus, keylocation, result)}, snippet
    ('ok'|'missing'|'notexec'), skew (seconds), or dead=True (ssh fails),
    hang=True (the deadline expires). Other commands (systemctl, pvesh)
    answer from `commands` {argv[0]: (rc, out, err)}, else exit 127.
    """

    def __init__(self, nodes: dict[str, dict], local="pve1", commands: dict | None = None):
        self.nodes = nodes
        self.local = local
        self.commands = commands or {}
        self.calls: list[list[str]] = []
        self.by_addr = {ADDRS[n]: n for n in nodes}

    def __call__(self, argv, timeout):
        self.calls.append(argv)
        if argv[:2] == ["sh", "-c"]:
            return self._answer(self.local)
        if argv[0] == "ssh":
            addr = argv[argv.index("--") - 1]
            return self._answer(self.by_addr.get(addr, addr))
        return self.commands.get(argv[0], (127, "", f"{argv[0]}: not found"))

    def _answer(self, node):
        a = self.nodes.get(node)
        if a is None or a.get("dead"):
            return 255, "", f"ssh: connect to host {node} port 22: Connection timed out"
        if a.get("hang"):
            return 124, "", "no answer within 1 s"
        lines = [f"@time {time.time() + a.get('skew', 0.0):.6f}", f"@snippet {a.get('snippet', 'ok')}"]
        lines += [f"@key {root}\t{status}\t{location}\t{result}"
                  for root, (status, location, result) in a.get("keys", {}).items()]
        lines += ["@zfs"]
        lines += [f"{n}\t{mp}\t{'yes' if m else 'no'}\t{a.get('encroots', {}).get(n, '-')}"
                  for n, (mp, m) in a.get("datasets", {}).items()]
        return 0, "\n".join(lines) + "\n", ""


def primary_and_standby(datasets=("tank/media",)):
    """pve1 has the datasets mounted, pve2 has them unmounted: a healthy pair."""
    d1 = {"tank": ("/tank", True), **{d: ("/" + d, True) for d in datasets}}
    d2 = {"tank": ("/tank", True), **{d: ("/" + d, False) for d in datasets}}
    return {"pve1": {"datasets": d1}, "pve2": {"datasets": d2}}
