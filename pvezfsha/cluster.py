"""What the Proxmox cluster says, read straight from pmxcfs (/etc/pve).

No API call and no Perl start-up: `.members`, `.vmlist` and the quorum bit of
`/etc/pve/local` are small files that pmxcfs keeps current on every node and
that stay readable without quorum. The root can be moved with
PVEZFSHA_PVE_ROOT for tests and the lab.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Member:
    name: str
    ip: str | None
    online: bool


class Cluster:
    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root or os.environ.get("PVEZFSHA_PVE_ROOT") or "/etc/pve")

    def _json(self, name: str) -> dict:
        try:
            return json.loads((self.root / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def local_node(self) -> str:
        # pmxcfs writes the local node name into .members; the hostname is
        # what PVE itself falls back to (PVE::INotify::nodename).
        name = self._json(".members").get("nodename")
        return name or os.uname().nodename.split(".")[0]

    def members(self) -> dict[str, Member]:
        nodes = self._json(".members").get("nodelist", {}) or {}
        return {name: Member(name, info.get("ip"), bool(info.get("online")))
                for name, info in nodes.items() if isinstance(info, dict)}

    def owner(self, ctid: int) -> str | None:
        """The node whose config directory holds the guest: PVE's own answer."""
        entry = (self._json(".vmlist").get("ids") or {}).get(str(ctid))
        return entry.get("node") if isinstance(entry, dict) else None

    def is_quorate(self) -> bool:
        # PVE's check_cfs_quorum: pmxcfs drops the owner write bit of
        # /etc/pve/local when the node is not quorate.
        try:
            return bool(os.lstat(self.root / "local").st_mode & 0o200)
        except OSError:
            return False

    def address(self, node: str, overrides: dict[str, str]) -> str:
        if node in overrides:
            return overrides[node]
        member = self.members().get(node)
        return member.ip if member and member.ip else node
