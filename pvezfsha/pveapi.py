"""What `doctor` asks Proxmox beyond the pmxcfs files cluster.py reads:
the container's HA resource settings and the storage of its rootfs.

HA settings come from the API when it can be had, because the API fills in
the defaults PVE applies (`GET /cluster/ha/status/current`), and from
`/etc/pve/ha/resources.cfg` (with those defaults applied here) otherwise:

1. proxmoxer over https to this node with an API token, when
   /etc/pvezfsha/api-token holds `user@realm!tokenid=secret`. This works
   with bookworm's proxmoxer 1.2.0, which has no `local` backend.
2. `pvesh get ... --output-format json`, run with a deadline that kills it
   (proxmoxer's own local backend does not kill a pvesh that hangs on a
   dead node).
3. the pmxcfs file.

Storage definitions are read from /etc/pve/storage.cfg, which is enough.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pvezfsha.probe import Runner, run_subprocess

TOKEN_FILE = "/etc/pvezfsha/api-token"
# PVE's defaults for an HA resource (pve-ha-manager src/PVE/HA/Resources.pm).
# failback is a resource setting from PVE 9 on; PVE 8 has `nofailback` on
# the resource's HA group instead.
HA_DEFAULTS = {"state": "started", "max_restart": 1, "max_relocate": 1}
# Storage types PVE treats as shared whatever the `shared` flag says; for
# the others (dir, lvm, ...) the admin sets `shared 1`.
SHARED_TYPES = {"nfs", "cifs", "glusterfs", "cephfs", "rbd", "iscsi", "iscsidirect", "zfs", "drbd", "linstor", "pbs"}


@dataclass(frozen=True)
class HaResource:
    sid: str
    state: str
    max_restart: int
    max_relocate: int
    failback: bool | None  # None: no failback setting (PVE 8 resource without a group)
    source: str            # api | pvesh | resources.cfg


def parse_section_config(text: str) -> dict[tuple[str, str], dict[str, str]]:
    """PVE's section config format: `type: id` then indented `key value` lines."""
    sections: dict[tuple[str, str], dict[str, str]] = {}
    current = None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line[0].isspace():
            m = re.match(r"^(\S+):\s*(\S+)\s*$", line)
            current = sections.setdefault((m.group(1), m.group(2)), {}) if m else None
        elif current is not None:
            key, _, value = line.strip().partition(" ")
            current[key] = value.strip() or "1"   # a bare key is a boolean flag
    return sections


def _resource_from(entry: dict, sid: str, source: str) -> HaResource:
    d = {**HA_DEFAULTS, **{k: v for k, v in entry.items() if v is not None}}
    state = "started" if d["state"] == "enabled" else str(d["state"])   # 'enabled' is an alias
    failback = d.get("failback")
    return HaResource(sid, state, int(d["max_restart"]), int(d["max_relocate"]),
                      None if failback is None else bool(int(failback)), source)


def _from_status(items: list, sid: str, source: str) -> HaResource | None:
    for item in items or []:
        if isinstance(item, dict) and item.get("type") == "service" and item.get("sid") == sid:
            entry = {k: item.get(k) for k in ("max_restart", "max_relocate", "failback")}
            entry["state"] = item.get("request_state") or item.get("state")
            return _resource_from(entry, sid, source)
    return None


def _proxmoxer_api(token: str, timeout: float):
    from proxmoxer import ProxmoxAPI   # python3-proxmoxer; imported only when a token is set up
    user, _, rest = token.partition("!")
    name, _, value = rest.partition("=")
    # The connection never leaves this host, so the node's self-signed
    # certificate (issued for its name, not 127.0.0.1) is not verified.
    return ProxmoxAPI("127.0.0.1", user=user, token_name=name, token_value=value,
                      verify_ssl=False, timeout=timeout)


class HaSource:
    def __init__(self, root: str | os.PathLike | None = None, runner: Runner = run_subprocess,
                 token_file: str = TOKEN_FILE, api_factory: Callable | None = None, timeout: float = 10.0):
        self.root = Path(root or os.environ.get("PVEZFSHA_PVE_ROOT") or "/etc/pve")
        self.runner = runner
        self.token_file = Path(token_file)
        self.api_factory = api_factory or _proxmoxer_api
        self.timeout = timeout
        self.notes: list[str] = []   # why a source was skipped, for doctor's hint

    def resource(self, ctid: int) -> HaResource | None:
        """The HA settings of ct:<ctid>, or None if it is not HA-managed."""
        sid = f"ct:{ctid}"
        token = self._token()
        if token:
            try:
                items = self.api_factory(token, self.timeout).cluster.ha.status.current.get()
                return _from_status(items, sid, "api")
            except Exception as e:   # proxmoxer raises many kinds; fall back, and say why
                self.notes.append(f"API: {type(e).__name__}: {e}")
        rc, out, err = self.runner(["pvesh", "get", "/cluster/ha/status/current", "--output-format", "json"],
                                   self.timeout)
        if rc == 0:
            try:
                return _from_status(json.loads(out), sid, "pvesh")
            except ValueError:
                self.notes.append("pvesh: output is not JSON")
        elif rc != 127:
            self.notes.append(f"pvesh: {(err.strip().splitlines() or [f'exit {rc}'])[-1]}")
        return self._from_file(sid)

    def _token(self) -> str | None:
        try:
            return self.token_file.read_text(encoding="utf-8").strip() or None
        except OSError:
            return None

    def _from_file(self, sid: str) -> HaResource | None:
        try:
            text = (self.root / "ha" / "resources.cfg").read_text(encoding="utf-8")
        except OSError:
            return None
        kind, _, vmid = sid.partition(":")
        entry = parse_section_config(text).get((kind, vmid))
        if entry is None:
            return None
        if "failback" not in entry and "group" in entry:
            try:
                groups = parse_section_config((self.root / "ha" / "groups.cfg").read_text(encoding="utf-8"))
                group = groups.get(("group", entry["group"]), {})
                entry = {**entry, "failback": "0" if group.get("nofailback") == "1" else "1"}
            except OSError:
                pass
        return _resource_from(entry, sid, "resources.cfg")


def storage_config(root: str | os.PathLike | None = None) -> dict[str, dict[str, str]]:
    """{storage id: {'type': ..., key: value}} from storage.cfg; {} if unreadable."""
    base = Path(root or os.environ.get("PVEZFSHA_PVE_ROOT") or "/etc/pve")
    try:
        text = (base / "storage.cfg").read_text(encoding="utf-8")
    except OSError:
        return {}
    return {sid: {"type": kind, **opts} for (kind, sid), opts in parse_section_config(text).items()}


def storage_is_shared(storage: dict[str, str]) -> bool:
    return storage.get("type") in SHARED_TYPES or storage.get("shared") == "1"


def recommended_ha(nodes: int, on_stale: str) -> dict[str, int]:
    """HA settings that agree with the freshness gate of the failover hook.

    With on_stale = "refuse" a stale node refuses pre-start every time, so
    retrying in place (max_restart) only delays the move, and HA must be
    allowed to try every other node (max_relocate = nodes - 1) to reach the
    fresh one. failback = 0 in both cases: a node that comes back holds a
    stale or diverged replica, and moving the container back onto it should
    be an admin's decision.
    """
    if on_stale == "refuse":
        return {"max_restart": 0, "max_relocate": max(1, nodes - 1), "failback": 0}
    return {"max_restart": 1, "max_relocate": max(1, nodes - 1), "failback": 0}


def ha_command(ctid: int, resource: HaResource | None, nodes: int, on_stale: str) -> str:
    rec = recommended_ha(nodes, on_stale)
    args = f"--max_restart {rec['max_restart']} --max_relocate {rec['max_relocate']}"
    return (f"ha-manager {'set' if resource else 'add'} ct:{ctid} {args}; and failback off: "
            f"--failback 0 on PVE 9, nofailback 1 on its HA group on PVE 8")
