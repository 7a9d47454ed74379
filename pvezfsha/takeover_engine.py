"""The takeover engine: pre-start's facts gathered and its decisions carried out.

takeover.py holds the pure decisions; this module gathers the facts (the
cluster record, quorum, this node's datasets, the other nodes' holdings)
and carries the decisions out, in this order:

1. quorum, 2. the cluster record, 3. restart in place, 4. planned move (pull
the old primary's last changes), 5. crash failover (catch up from a fresher
survivor, then the freshness gate), 6. fence (epoch + 1, this node recorded
as primary), 7. promote (writable, mounted, verified), 8. report.

Fencing is written before promotion so that a record write that fails
(no quorum) refuses the start with nothing made writable.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from pvezfsha import faults, replica, state, zfs
from pvezfsha.cluster import Cluster
from pvezfsha.config import Config, Container
from pvezfsha.engine import move_cursor
from pvezfsha.errors import PvezfshaError
from pvezfsha.log import logger
from pvezfsha.peers import Peers, try_holdings
from pvezfsha.record import Record
from pvezfsha.record_store import RecordError, RecordStore
from pvezfsha.takeover import (Case, Holding, Situation, classify, freshest, judge, peer_bases,
                               replica_age)
from pvezfsha.units import fmt_age, human_bytes
from pvezfsha.versions import DatasetState, newest_replication


class Refused(PvezfshaError):
    """The start must not happen on this node."""


@dataclass
class Report:
    ctid: int
    node: str
    case: Case
    previous: str | None = None
    pulled_from: str | None = None
    pulled_snapshots: int = 0
    pulled_bytes: int = 0
    age: float | None = None
    epoch: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    stale: str = ""         # why a replica past max_staleness was accepted (on_stale = "warn", --force)

    def lines(self) -> list[str]:
        what = self.case.value
        if self.case == Case.PLANNED and self.pulled_from != self.previous:
            what = "failover without a final pull"   # the notes say why
        out = [f"pvezfsha: CT {self.ctid} takeover on {self.node}: {what}"
               + (f" from {self.previous}" if self.previous and self.previous != self.node else "")]
        if self.pulled_from:
            out.append(f"  pulled from {self.pulled_from}: {self.pulled_snapshots} snapshot(s), "
                       f"{human_bytes(self.pulled_bytes)}")
        if self.case == Case.PLANNED and self.pulled_from == self.previous:
            out.append("  data-loss window: none (final snapshot of the stopped container pulled)")
        elif self.age is not None:
            out.append(f"  data-loss window: writes on {self.previous or 'the old primary'} after "
                       f"{time.strftime('%Y-%m-%d %H:%M:%S %Z', time.localtime(time.time() - self.age))} "
                       f"(replica age {fmt_age(self.age)}) are not here")
        out += [f"  {n}" for n in self.notes]
        out.append(f"  epoch {self.epoch}, {self.seconds:.1f} s")
        return out


class LocalReplicas:
    """This node's copies of a container's datasets."""

    def __init__(self, node: str):
        self.node = node

    def states(self, ct: Container) -> dict[str, DatasetState]:
        return {ds.name: zfs.read_state(ds.on(self.node)) for ds in ct.datasets}

    def promote(self, ct: Container, epoch: int) -> None:
        # Under the dataset's lock: a fencing demote of this node's timer
        # (sync.fence_local) must not unmount what was just promoted.
        for ds in ct.datasets:
            try:
                with state.dataset_lock(ds.on(self.node), "promote", wait=60):
                    replica.promote(ds.on(self.node), epoch, ct.options.snapshot_prefix)
            except state.Locked as e:
                raise PvezfshaError(f"{e}; promotion waited 60 s for it") from None

    def seed_cursors(self, ct: Container, bases: dict[str, dict[str, int]]) -> list[str]:
        """A cursor for each other member at the snapshot it shares with us."""
        prefix = ct.options.snapshot_prefix
        out = []
        for ds in ct.datasets:
            name = ds.on(self.node)
            st = zfs.read_state(name)
            by_guid = st.by_guid()
            for peer, per in bases.items():
                v = by_guid.get(per.get(ds.name, -1))
                if v is not None and move_cursor(name, prefix, peer, v, st.bookmarks):
                    out.append(f"{name}: cursor for {peer} at @{v.name}")
        return out

    def stop_receives(self, ct: Container) -> list[str]:
        """End receives into our datasets still waiting on a sender that is gone."""
        out = []
        for ds in ct.datasets:
            pid = state.stop_receive(ds.on(self.node))
            if pid is not None:
                out.append(f"stopped a receive into {ds.on(self.node)} whose sender is gone (pid {pid})")
        return out

    def problems(self, ct: Container) -> list[str]:
        return [p for p in (replica.check_writable(ds.on(self.node)) for ds in ct.datasets) if p]

    def preflight(self, ct: Container) -> list[str]:
        """What would make promoting this node's copies fail."""
        return [p for ds in ct.datasets for p in replica.preflight(ds.on(self.node))]

    def demote(self, ct: Container, why: str) -> None:
        for ds in ct.datasets:
            replica.demote(ds.on(self.node), why, ct.options.snapshot_prefix)


class Takeover:
    """The pre-start decision and its execution, for one container here."""

    def __init__(self, cfg: Config, ct: Container, cluster: Cluster, *, local: LocalReplicas | None = None,
                 peers: Peers | None = None, force: bool = False, now=time.time):
        self.cfg, self.ct, self.cluster = cfg, ct, cluster
        self.node = cluster.local_node()
        self.store = RecordStore(cluster.root)
        self.local = local or LocalReplicas(self.node)
        self.peers = peers or Peers(cfg, cluster)
        self.force = force
        self.now = now

    def _holdings(self, states) -> dict[str, Holding]:
        return {name: Holding.of(st) for name, st in states.items()}

    def run(self) -> Report:
        t0 = time.monotonic()
        ct, opts = self.ct, self.ct.options
        try:
            record = self.store.read(ct.ctid)
        except RecordError as e:
            raise Refused(str(e)) from None
        online = {n: m.online for n, m in self.cluster.members().items()}
        case, prev = classify(Situation(self.node, self.cluster.is_quorate(), record, online))
        rep = Report(ct.ctid, self.node, case, previous=prev)
        if case == Case.NO_QUORUM:
            raise Refused(f"this node ({self.node}) is not quorate: another node may be running CT {ct.ctid} "
                          f"on newer data; refusing to start")

        if case == Case.RESTART:
            problems = self.local.problems(ct)
            if problems:
                logger.info(f"CT {ct.ctid}: restart in place; re-mounting: {'; '.join(problems)}")
                try:
                    self.local.promote(ct, record.epoch)
                except PvezfshaError as e:
                    raise Refused(f"CT {ct.ctid}: {self.node} is primary at epoch {record.epoch} but its "
                                  f"datasets cannot be made writable: {e}. Fix that, then let HA retry the "
                                  f"start here or run `pvezfsha promote {ct.ctid}`") from None
            rep.epoch = record.epoch
            rep.seconds = time.monotonic() - t0
            return rep

        states = self.local.states(ct)
        missing = [name for name, st in states.items() if not st.exists]
        if missing:
            raise Refused(f"dataset(s) {', '.join(missing)} do not exist on {self.node}")
        # Before the old primary is asked to hand over and before the fence:
        # a start refused here leaves the container's data where it was.
        self._preflight()

        # A receive left waiting by a sender that died (or an old cycle)
        # would hold our datasets' locks through the pull and the promotion.
        for note in self.local.stop_receives(ct):
            rep.notes.append(note)
            logger.warning(f"CT {ct.ctid}: {note}")

        handed_over = False
        if case == Case.PLANNED:
            logger.info(f"CT {ct.ctid}: planned move from {prev}: pulling its last changes")
            try:
                res = self.peers.transfer(prev, ct, self.node, final=True, timeout=opts.handover_timeout)
                rep.pulled_from, rep.pulled_snapshots, rep.pulled_bytes = prev, res["snapshots"], res["bytes"]
                handed_over = True
            except PvezfshaError as e:
                rep.notes.append(f"could not pull the final changes from {prev} ({e}); "
                                 f"judging the replica's freshness instead")
                logger.warning(f"CT {ct.ctid}: {rep.notes[-1]}")
                # What the stopped transfer was still sending must not land
                # during the promotion.
                for note in self.local.stop_receives(ct):
                    rep.notes.append(note)

        if case == Case.FIRST and all(not st.readonly for st in states.values()):
            # Never taken over before and this node holds the writable originals.
            rep.notes.append("first start under pvezfsha: this node holds the original datasets")
        elif not handed_over:
            self._catch_up(rep, prev, states)
            states = self.local.states(ct)
            rep.age = self._age(record, states)
            verdict = judge(rep.age, opts.max_staleness, opts.on_stale, self.force)
            if not verdict.accept:
                raise Refused(f"CT {ct.ctid} on {self.node}: {verdict.message}")
            if verdict.warning:
                logger.warning(f"CT {ct.ctid}: {verdict.message}")
                rep.stale = verdict.message
            rep.notes.append(verdict.message)

        # Again after the pull, which may have brought a new wrapping key
        # (a `zfs change-key` on the old primary) or taken long.
        self._preflight()
        rep.epoch = self._fence(record, rep)
        faults.point("takeover.fenced")
        try:
            self.local.promote(ct, rep.epoch)
        except PvezfshaError as e:
            # This node is primary now: the other nodes' bases still need
            # protecting, and the next start here (HA's retry, or `pvezfsha
            # promote`) is a restart in place that promotes again.
            self._protect_peers(record, rep, prev)
            raise Refused(f"CT {ct.ctid}: {self.node} is recorded as primary at epoch {rep.epoch} but promotion "
                          f"failed: {e}. Fix that, then let HA retry the start here or run "
                          f"`pvezfsha promote {ct.ctid}`") from None
        self._protect_peers(record, rep, prev)
        rep.seconds = time.monotonic() - t0
        return rep

    def _preflight(self) -> None:
        problems = self.local.preflight(self.ct)
        if problems:
            raise Refused(f"CT {self.ct.ctid} cannot be taken over on {self.node}: {'; '.join(problems)}")

    def _protect_peers(self, record: Record | None, rep: Report, prev: str | None) -> None:
        """Keep, for every other member, the snapshot it shares with us."""
        prefix = self.ct.options.snapshot_prefix
        try:
            states = self.local.states(self.ct)
            newest = {name: (v.guid if (v := newest_replication(st, prefix)) else None)
                      for name, st in states.items()}
            held = {name: tuple(v.guid for v in st.snapshots) for name, st in states.items()}
            bases = peer_bases(self.node, self.ct.nodes, prev, rep.pulled_from, record, newest, held)
            for note in self.local.seed_cursors(self.ct, bases):
                logger.info(f"CT {self.ct.ctid}: {note}")
        except PvezfshaError as e:
            # The container may start: this only costs a full resend later.
            rep.notes.append(f"could not protect the other nodes' common snapshots: {e}")
            logger.warning(f"CT {self.ct.ctid}: {rep.notes[-1]}")

    def _catch_up(self, rep: Report, prev: str | None, states) -> None:
        """Pull from a surviving node that holds more than this one."""
        ct = self.ct
        online = {n for n, m in self.cluster.members().items() if m.online}
        survivors = [n for n in ct.nodes if n not in (self.node, prev) and n in online]
        if not survivors:
            return
        found = try_holdings(self.peers, survivors, ct)
        found[self.node] = self._holdings(states)
        best = freshest(self.node, found)
        if best == self.node:
            return
        logger.info(f"CT {ct.ctid}: {best} holds a newer replica than {self.node}; catching up from it")
        try:
            res = self.peers.transfer(best, ct, self.node, final=False, timeout=ct.options.handover_timeout)
            rep.pulled_from, rep.pulled_snapshots, rep.pulled_bytes = best, res["snapshots"], res["bytes"]
        except PvezfshaError as e:
            rep.notes.append(f"could not catch up from {best} ({e})")
            logger.warning(f"CT {ct.ctid}: {rep.notes[-1]}")

    def _age(self, record: Record | None, states) -> float | None:
        """The worst dataset's age: the container's data is as old as its oldest part."""
        ages = []
        prefix = self.ct.options.snapshot_prefix
        mine = (record.replicas.get(self.node, {}) if record else {})
        for name, st in states.items():
            newest = newest_replication(st, prefix) or st.newest
            conf = mine.get(name)
            ages.append(replica_age(newest.creation if newest else None, newest.guid if newest else None,
                                    conf.guid if conf else None, conf.in_sync_at if conf else 0, self.now()))
        if any(a is None for a in ages):
            return None
        return max(ages) if ages else None

    def _fence(self, seen: Record | None, rep: Report) -> int:
        """Epoch + 1 and this node as primary, unless someone else got there first."""
        try:
            with self.store.locked(self.ct.ctid):
                current = self.store.read(self.ct.ctid)
                if (current.epoch if current else 0) != (seen.epoch if seen else 0):
                    now = "record removed" if current is None else f"primary {current.primary}, epoch {current.epoch}"
                    raise Refused(f"CT {self.ct.ctid}: another takeover happened meanwhile ({now}); refusing")
                rec = current or Record(self.ct.ctid)
                rec.primary, rec.epoch = self.node, rec.epoch + 1
                rec.changed, rec.changed_by = time.time(), self.node
                rec.reason = f"{rep.case.value}" + (f" from {rep.previous}" if rep.previous else "")
                self.store.write(rec)
                return rec.epoch
        except RecordError as e:
            raise Refused(f"CT {self.ct.ctid}: cannot record this node as primary: {e}") from None
