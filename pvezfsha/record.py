"""The cluster-wide record of a container's replication: its data.

`/etc/pve/priv/pvezfsha/<ctid>.json` holds the current primary, an epoch
that grows with every takeover, and what each node is known to hold. This
module is the record itself and its strict parsing; record_store.py keeps
it in pmxcfs. The pure decisions (takeover.py) need only this half.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field


@dataclass
class Replica:
    """What one node held of one dataset, as last seen by the primary."""

    guid: int
    snapshot: str
    created: float          # creation time of that snapshot (unix)
    in_sync_at: float = 0   # when the primary last saw this node hold all its data


@dataclass
class Record:
    ctid: int
    primary: str | None = None
    epoch: int = 0
    changed: float = 0.0
    changed_by: str = ""
    reason: str = ""
    replicas: dict[str, dict[str, Replica]] = field(default_factory=dict)   # node -> dataset -> Replica

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, ctid: int | None = None) -> "Record":
        """Parse and check every field; ValueError names the field. With
        `ctid`, the record must be that container's: a copied or edited file
        would otherwise have the fence write another container's record."""
        d = json.loads(text)
        if not isinstance(d, dict):
            raise ValueError("not a JSON object")
        _known(d, ("ctid", "primary", "epoch", "changed", "changed_by", "reason", "replicas"), "")
        if "ctid" not in d:
            raise ValueError("ctid: missing")
        rec_ctid = _int(d["ctid"], "ctid")
        if ctid is not None and rec_ctid != ctid:
            raise ValueError(f"ctid: {rec_ctid}, but the file is container {ctid}'s")
        primary = d.get("primary")
        if primary is not None and not isinstance(primary, str):
            raise ValueError(f"primary: {primary!r} is not a node name or null")
        reps_in = d.get("replicas", {})
        if not isinstance(reps_in, dict):
            raise ValueError(f"replicas: {reps_in!r} is not an object of node -> dataset -> replica")
        reps: dict[str, dict[str, Replica]] = {}
        for node, per in reps_in.items():
            if not isinstance(per, dict):
                raise ValueError(f"replicas.{node}: {per!r} is not an object of dataset -> replica")
            reps[node] = {ds: _replica(r, f"replicas.{node}.{ds}") for ds, r in per.items()}
        return cls(rec_ctid, primary, _int(d.get("epoch", 0), "epoch"), _number(d.get("changed", 0.0), "changed"),
                   _str(d.get("changed_by", ""), "changed_by"), _str(d.get("reason", ""), "reason"), reps)


def _known(d: dict, keys: tuple[str, ...], where: str) -> None:
    for key in d:
        if key not in keys:
            raise ValueError(f"{where}{key}: unknown field")


def _int(v, where: str, limit: int = 1 << 64) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < limit:
        raise ValueError(f"{where}: {v!r} is not a non-negative integer")
    return v


def _number(v, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"{where}: {v!r} is not a number")
    return v


def _str(v, where: str) -> str:
    if not isinstance(v, str):
        raise ValueError(f"{where}: {v!r} is not a string")
    return v


def _replica(r, where: str) -> Replica:
    if not isinstance(r, dict):
        raise ValueError(f"{where}: {r!r} is not an object {{guid, snapshot, created, in_sync_at}}")
    _known(r, ("guid", "snapshot", "created", "in_sync_at"), f"{where}.")
    for key in ("guid", "snapshot", "created"):
        if key not in r:
            raise ValueError(f"{where}.{key}: missing")
    return Replica(_int(r["guid"], f"{where}.guid"), _str(r["snapshot"], f"{where}.snapshot"),
                   _number(r["created"], f"{where}.created"), _number(r.get("in_sync_at", 0), f"{where}.in_sync_at"))
