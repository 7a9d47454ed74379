"""What each node last saw of a container's replication: the facts `status`,
the metrics and the alerts are made of.

The record (record.py) holds what the takeover gate needs and nothing else;
how the cycles are going lives here, one file per node and container in
pmxcfs (`/etc/pve/priv/pvezfsha/health/<ctid>.<node>.json`), so that
`status` on any node shows it without ssh, and a damaged or missing file
costs a display, never a takeover. Only its own node writes a file, so no
cluster lock is needed.

- The primary writes `links`: per standby and dataset, when the last cycle
  left it up to date, the consecutive failures since, the last error, the
  last transfer's size and duration.
- Every node writes `kept`: the diverged copies kept on it (divergence.py),
  which only that node can list.

This module is pure: `advance` turns the last facts and one cycle's results
into the next facts.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field


@dataclass
class Link:
    """One dataset towards one standby, as its primary saw it."""

    ok_at: float = 0.0          # the last cycle that left the standby holding all it had to send
    failures: int = 0           # consecutive failed cycles since
    failing_since: float = 0.0  # the first of them
    error: str = ""             # the last failure's message ("" once it succeeds again)
    error_at: float = 0.0
    bytes: int = 0              # the last transfer (a cycle that sent something)
    seconds: float = 0.0
    at: float = 0.0             # when that transfer ended
    bytes_total: int = 0        # everything sent to it by this primary at this epoch


@dataclass
class Health:
    ctid: int
    node: str
    epoch: int = 0
    at: float = 0.0                 # the last cycle (or check) that wrote this
    primary: bool = False           # whether `node` was primary at `at`
    links: dict[str, dict[str, Link]] = field(default_factory=dict)   # standby -> dataset -> Link
    kept: dict[str, str] = field(default_factory=dict)                 # kept copy -> why

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Health":
        """Display data: fields are checked for type, unknown ones ignored
        (a newer node may write more); ValueError on anything else."""
        d = json.loads(text)
        if not isinstance(d, dict):
            raise ValueError("not a JSON object")
        links: dict[str, dict[str, Link]] = {}
        for peer, per in _dict(d.get("links", {}), "links").items():
            for ds, raw in _dict(per, f"links.{peer}").items():
                raw = _dict(raw, f"links.{peer}.{ds}")
                links.setdefault(peer, {})[ds] = Link(
                    **{k: _typed(raw[k], type(getattr(Link, k)), f"links.{peer}.{ds}.{k}")
                       for k in Link.__dataclass_fields__ if k in raw})
        kept = {str(k): str(v) for k, v in _dict(d.get("kept", {}), "kept").items()}
        return cls(_typed(d.get("ctid"), int, "ctid"), _typed(d.get("node"), str, "node"),
                   _typed(d.get("epoch", 0), int, "epoch"), _typed(d.get("at", 0.0), float, "at"),
                   bool(d.get("primary", False)), links, kept)


@dataclass(frozen=True)
class Result:
    """One dataset towards one standby in one cycle."""

    ok: bool
    error: str = ""
    bytes: int = 0
    seconds: float = 0.0


def advance(prev: Health | None, ctid: int, node: str, epoch: int, now: float,
            results: dict[str, dict[str, Result]], kept: dict[str, str]) -> Health:
    """The facts after a cycle of this node as primary at `epoch`.

    A new epoch or a new primary starts the links afresh: another primary's
    failures say nothing about this one's. A dataset the cycle did not try
    (another run held it) keeps its facts.
    """
    same = prev is not None and prev.node == node and prev.epoch == epoch and prev.primary
    links = {p: {ds: Link(**asdict(l)) for ds, l in per.items()} for p, per in (prev.links if same else {}).items()}
    for peer, per in results.items():
        for ds, r in per.items():
            link = links.setdefault(peer, {}).setdefault(ds, Link())
            if r.ok:
                link.ok_at, link.failures, link.error, link.failing_since = now, 0, "", 0.0
                if r.bytes:
                    link.bytes, link.seconds, link.at = r.bytes, r.seconds, now
                    link.bytes_total += r.bytes
            else:
                if not link.failures:
                    link.failing_since = now
                link.failures += 1
                link.error, link.error_at = r.error, now
    return Health(ctid, node, epoch, now, True, links, dict(kept))


def standby(prev: Health | None, ctid: int, node: str, epoch: int, now: float, kept: dict[str, str]) -> Health:
    """The facts of a node that is not primary: only what it keeps."""
    return Health(ctid, node, epoch, now, False, {}, dict(kept))


def _dict(v, where: str) -> dict:
    if not isinstance(v, dict):
        raise ValueError(f"{where}: not an object")
    return v


def _typed(v, kind: type, where: str):
    if kind is float and isinstance(v, int) and not isinstance(v, bool):
        v = float(v)
    if not isinstance(v, kind) or isinstance(v, bool) or (kind is float and not math.isfinite(v)):
        raise ValueError(f"{where}: {v!r} is not a {kind.__name__}")
    return v
