"""Pure takeover decisions for the pre-start hook: facts in, verdicts out.

The takeover engine (takeover_engine.py) gathers the facts (quorum, the cluster record, who is
online, what each reachable node holds) and does the I/O; every decision is
made here, so the whole decision table is tested without ZFS or a cluster.

Why the verdict agrees on every node HA may try: a node's freshness is
judged by the snapshots it holds, identified by GUID, and by when the
primary last confirmed that node held all of its data (the record). Before
judging, a node catches up from any surviving node that holds more; after
that, every candidate holds the same newest snapshot and reaches the same
verdict (up to the seconds that pass between attempts).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from pvezfsha.record import Record
from pvezfsha.units import fmt_age
from pvezfsha.versions import DatasetState


class Case(str, Enum):
    NO_QUORUM = "no quorum"
    RESTART = "restart in place"
    PLANNED = "planned move"
    CRASH = "crash failover"
    FIRST = "first start"


@dataclass(frozen=True)
class Situation:
    node: str
    quorate: bool
    record: Record | None
    online: dict[str, bool]        # from .members


def classify(s: Situation) -> tuple[Case, str | None]:
    """Which case this start is, and the previous primary if another node."""
    if not s.quorate:
        return Case.NO_QUORUM, None
    rec = s.record
    if rec is None or rec.primary is None:
        return Case.FIRST, None
    if rec.primary == s.node:
        return Case.RESTART, s.node
    if s.online.get(rec.primary):
        return Case.PLANNED, rec.primary
    return Case.CRASH, rec.primary


@dataclass(frozen=True)
class Holding:
    """The snapshot guids a node holds of one dataset, oldest first."""

    guids: tuple[int, ...]

    @classmethod
    def of(cls, state: DatasetState) -> "Holding":
        return cls(tuple(v.guid for v in state.snapshots))   # none when the dataset does not exist

    @property
    def newest(self) -> int | None:
        return self.guids[-1] if self.guids else None


def compare(a: Holding, b: Holding) -> int | None:
    """+1 if a holds more than b, -1 if less, 0 if the same, None if diverged."""
    if a.newest == b.newest:
        return 0
    if b.newest is None or b.newest in a.guids:
        return 1
    if a.newest is None or a.newest in b.guids:
        return -1
    return None


def freshest(local: str, holdings: dict[str, dict[str, Holding]]) -> str:
    """The node that holds the most, never a diverged one; `local` on ties.

    A node is fresher than another only if it holds at least as much of
    every dataset and more of one: a container's datasets are snapshotted
    together, so partial leads mean something is wrong and we stay put.
    """
    best = local
    for node, held in holdings.items():
        if node == local:
            continue
        results = [compare(held.get(ds, Holding(())), h) for ds, h in holdings[best].items()]
        if results and all(r is not None and r >= 0 for r in results) and any(r == 1 for r in results):
            best = node
    return best


@dataclass(frozen=True)
class Verdict:
    accept: bool
    warning: bool
    message: str


def replica_age(newest_created: float | None, newest_guid: int | None, confirmed_guid: int | None,
                confirmed_at: float, now: float) -> float | None:
    """How old the replica's data is: since its newest snapshot was taken,
    or since the primary last confirmed this node held everything, if that
    confirmation is about the same snapshot and later."""
    if newest_created is None:
        return None
    t = newest_created
    if confirmed_guid is not None and confirmed_guid == newest_guid:
        t = max(t, confirmed_at)
    return max(0.0, now - t)


def judge(age: float | None, max_staleness: float, on_stale: str, force: bool = False) -> Verdict:
    if age is None:
        if force:
            return Verdict(True, True, "no replicated snapshot here; starting anyway (--force)")
        return Verdict(False, False, "no replicated snapshot here at all; refusing to start on an empty replica")
    desc = f"replica is {fmt_age(age)} old (max_staleness {fmt_age(max_staleness)})"
    if age <= max_staleness:
        return Verdict(True, False, desc)
    if force:
        return Verdict(True, True, f"{desc}; starting anyway (--force): writes after that are not here")
    if on_stale == "warn":
        return Verdict(True, True, f"{desc}; starting anyway (on_stale = warn): writes after that are not here")
    return Verdict(False, False, f"{desc}; refusing (on_stale = refuse). HA may try another node; "
                                 f"to accept this replica run `pvezfsha promote <ctid> --force`")


def peer_bases(local: str, nodes: tuple[str, ...], prev: str | None, pulled_from: str | None,
               record: Record | None, newest: dict[str, int | None],
               held: dict[str, tuple[int, ...]]) -> dict[str, dict[str, int]]:
    """For each other member and dataset, the newest snapshot (by guid) that
    this node, about to become primary, knows the member also holds.

    The new primary makes a cursor of each, so that retention keeps that
    snapshot (or its bookmark) until the member has caught up: without one,
    a member that stays down for more than `keep` changed cycles loses its
    last common snapshot and needs a full resend.

    The old primary and a node we just pulled from hold our newest
    replication snapshot (it came from them). Any other member holds what
    the record last confirmed, if we still have that snapshot.
    """
    out: dict[str, dict[str, int]] = {}
    for node in nodes:
        if node == local:
            continue
        for ds, guids in held.items():
            position = {g: i for i, g in enumerate(guids)}
            candidates = []
            if node in (prev, pulled_from) and newest.get(ds) is not None:
                candidates.append(newest[ds])
            confirmed = record.replicas.get(node, {}).get(ds) if record else None
            if confirmed is not None:
                candidates.append(confirmed.guid)
            known = [g for g in candidates if g in position]
            if known:
                out.setdefault(node, {})[ds] = max(known, key=position.__getitem__)
    return out
