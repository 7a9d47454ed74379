"""One replication cycle of a container: the API the timer, the hook and the agent share.

sync_container, per container: only on the primary (role.py), lock the
datasets, take one atomic snapshot of those that changed, then for each
standby bring every dataset up to date over one session (push.py), prune,
and record in the cluster record what each standby holds. A cycle where
nothing changed and every standby's cursor is at the newest snapshot opens
no ssh connection.

A node that finds another node recorded as primary demotes its own copies
before anything else (fencing), and a node without quorum replicates
nothing: its view of the cluster may be stale.

replicate is the push itself, also run on another node by a takeover
(sync.transfer): the old primary's final handover, or a catch-up from a
standby that holds more than the node taking over.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, replace

from pvezfsha import faults, replica, zfs
from pvezfsha.cluster import Cluster
from pvezfsha.config import Config, Container
from pvezfsha.engine import Outcome
from pvezfsha.errors import PvezfshaError
from pvezfsha.log import logger
from pvezfsha.planner import kept_for_clones, plan_prune
from pvezfsha.push import in_sync, open_session, sync_peer
from pvezfsha.record import Record, Replica
from pvezfsha.record_store import RecordError, RecordStore
from pvezfsha.role import role_of
from pvezfsha.state import Locked, dataset_lock, first_time, run_dir
from pvezfsha.transport import Session
from pvezfsha.versions import (HOLD_STEP, DatasetState, Version, cursor_guid, cursor_node, is_replication_snapshot,
                               newest_replication, snapshot_name, step_hold)


def needs_snapshot(state: DatasetState, prefix: str) -> bool:
    """A new replication snapshot only when something changed since the last one."""
    newest = state.newest
    if newest is None or state.modified:
        return True
    # Someone else's newer snapshot (sanoid) may hide changes from `written`.
    last_ours = newest_replication(state, prefix)
    return last_ours is None or last_ours.guid != newest.guid


def stale_step_holds(state: DatasetState, dataset: str, nodes: tuple[str, ...]) -> dict[str, list[str]]:
    """Step holds for nodes that left the group: nothing will ever release them."""
    wanted = {step_hold(n) for n in nodes}
    out = {}
    for v in state.snapshots:
        tags = [t for t in v.holds if t.startswith(HOLD_STEP + "-") and t not in wanted]
        if tags:
            out[v.full(dataset)] = tags
    return out


def take_snapshots(states: dict[str, DatasetState], datasets: list[str], prefix: str, now: dt.datetime) -> str:
    """One lzc_snapshot per pool, so all datasets of a pool share one txg."""
    name = snapshot_name(prefix, now, taken={s.name for ds in datasets for s in states[ds].snapshots})
    by_pool: dict[str, list[str]] = {}
    for ds in datasets:
        by_pool.setdefault(ds.split("/", 1)[0], []).append(f"{ds}@{name}")
    for snaps in by_pool.values():
        zfs.snapshot(snaps)
    return name


@dataclass
class SyncContext:
    cfg: Config
    cluster: Cluster
    dry_run: bool = False

    @property
    def store(self) -> RecordStore:
        return RecordStore(self.cluster.root)


@dataclass
class Cycle:
    """The result of one push from this node: per peer, per dataset."""

    rc: int = 0
    started: float = 0.0                   # when the pushed data was current
    states: dict[str, DatasetState] = field(default_factory=dict)   # local, after the cycle
    outcomes: dict[str, list[Outcome]] = field(default_factory=dict)
    reached: set[str] = field(default_factory=set)                  # peers confirmed in sync
    skipped: set[str] = field(default_factory=set)                  # datasets another run held
    errors: dict[str, dict[str, str]] = field(default_factory=dict)  # peer -> dataset -> why it failed
    primary: bool = True                                             # False: this node only fenced or waited
    epoch: int = 0                                                   # the record's, when the cycle began

    def totals(self) -> tuple[int, int]:
        outs = [o for per in self.outcomes.values() for o in per]
        return sum(len(o.steps) for o in outs), sum(o.bytes for o in outs)


def replicate(ctx: SyncContext, ct: Container, peers: list[str], *, epoch: int,
              snapshot: bool = True, prune: bool = True, before=None, wait: float = 0,
              what: str = "sync", pool=None, exclude: set[str] = frozenset()) -> Cycle:
    """Push this node's copies of `ct`'s datasets to `peers`.

    `before(datasets)` runs once the locks are held and before anything is
    read: the handover uses it to make the old primary read-only first.
    `wait` > 0 makes this a final push: it waits that long for a dataset
    another run holds, and one it still cannot lock fails the cycle (a
    handover that sent only some datasets has not handed over).
    `pool` (sessions.WarmSessions) lends sessions that outlive the cycle.
    """
    local = ctx.cluster.local_node()
    opts = ct.options
    prefix = opts.snapshot_prefix
    cycle = Cycle()
    with ExitStack() as locks:
        datasets: list[tuple[str, dict[str, str]]] = []   # local name, {peer: remote name}
        for ds in ct.datasets:
            if ds.on(local) in exclude:
                cycle.skipped.add(ds.on(local))
                continue
            try:
                locks.enter_context(dataset_lock(ds.on(local), what, wait=wait))
            except Locked as e:
                if wait:
                    logger.error(f"CT {ct.ctid}: {e} after waiting {wait:.0f} s; its last changes are not sent")
                    cycle.rc = 1
                else:
                    logger.info(f"CT {ct.ctid}: {e}; skipping it this cycle")
                cycle.skipped.add(ds.on(local))
                continue
            datasets.append((ds.on(local), {n: ds.on(n) for n in peers}))
        if not datasets:
            return cycle
        faults.point("cycle.locked")
        if before is not None:
            before([name for name, _ in datasets])

        if not ctx.dry_run:
            for zpool in sorted({name.split("/", 1)[0] for name, _ in datasets}):
                zfs.sync_pool(zpool)
        cycle.started = time.time()
        quiet: set[str] = set()     # datasets the cache proved up to date everywhere
        for name, remotes in list(datasets):
            st, fast = load_state(name, list(remotes), opts)
            if not st.exists:
                logger.error(f"CT {ct.ctid}: {name} does not exist on {local}")
                datasets.remove((name, remotes))
                cycle.rc = 1
                continue
            cycle.states[name] = st
            if fast:
                quiet.add(name)

        changed = [n for n, _ in datasets if snapshot and n not in quiet and needs_snapshot(cycle.states[n], prefix)]
        # Connect now to the standbys this cycle will send to: the ssh
        # handshake and the peer's start then overlap the snapshot.
        sessions: dict[str, Session] = {}
        for peer in peers:
            if changed or ctx.dry_run or any(not in_sync(cycle.states[n], prefix, peer) for n, _ in datasets):
                try:
                    if pool is not None:
                        sessions[peer] = pool.get(ctx, ct, peer)
                    else:
                        sessions[peer] = locks.enter_context(open_session(ctx, ct, peer, wait=False))
                except PvezfshaError:
                    pass    # sync_peer tries again and reports it
        if changed:
            now = dt.datetime.now(dt.timezone.utc)
            if ctx.dry_run:
                logger.info(f"CT {ct.ctid}: would snapshot {', '.join(changed)} as @{snapshot_name(prefix, now)}")
            else:
                name = take_snapshots(cycle.states, changed, prefix, now)
                for n in changed:
                    guid = zfs.quick_state(n, [name]).guids[name]
                    cycle.states[n] = cycle.states[n].plus(Version(name, guid, 0, int(now.timestamp())))

        for peer in peers:
            session = sessions.pop(peer, None)
            rc, outs, errors = sync_peer(ctx, ct, peer, datasets, cycle.states, epoch, session=session, pool=pool)
            if pool is not None:
                pool.checkin(peer)
            cycle.rc |= rc
            cycle.outcomes[peer] = outs
            cycle.errors[peer] = errors
            if rc == 0:
                cycle.reached.add(peer)

        if not ctx.dry_run:
            moved = {o.dataset for outs in cycle.outcomes.values() for o in outs if o.cursor_moved}
            for name, remotes in datasets:
                st = cycle.states[name]
                if name in moved:
                    st = replace(st, bookmarks=tuple(zfs.list_bookmarks(name)))
                if prune and name not in quiet:
                    protect = {g for g in (cursor_guid(st, prefix, p) for p in ct.nodes) if g is not None}
                    doomed = plan_prune(st, prefix, opts.keep, protect)
                    report_clone_origins(ct.ctid, name, local, st, prefix, opts.keep)
                    if doomed:
                        zfs.destroy_snapshots([v.full(name) for v in doomed])
                        logger.info(f"CT {ct.ctid}: {name}: pruned {len(doomed)} old snapshot(s) on {local}")
                        st = st.minus({v.guid for v in doomed})
                    # Cursors and step holds of nodes no longer in the group are leaks.
                    gone = [b.full(name) for b in st.bookmarks
                            if (node := cursor_node(b.name, prefix)) is not None and node not in ct.nodes]
                    zfs.destroy_bookmarks(gone)
                    zfs.release(stale_step_holds(st, name, ct.nodes))
                cycle.states[name] = st
    return cycle


def report_clone_origins(ctid: int, name: str, node: str, st: DatasetState, prefix: str, keep: int) -> None:
    """Once per snapshot: retention keeps it because a kept divergence is its clone."""
    for v in kept_for_clones(st, prefix, keep):
        if first_time(f"clone-origin-{node}-{v.guid:016x}"):
            logger.warning(f"CT {ctid}: {name}@{v.name} on {node} is kept past `keep`: a kept divergence was "
                           f"cloned from it (see `pvezfsha diverged {ctid}`); it goes when that copy is destroyed")


def _cache_path(dataset: str):
    return run_dir() / "cache" / (dataset.replace("/", "%") + ".json")


def load_state(name: str, peers: list[str], opts) -> tuple[DatasetState, bool]:
    """The dataset's state, and whether it is known to need nothing at all.

    Listing costs per snapshot (a property read each), so a quiet cycle
    would grow with the snapshot count. Instead, like bzfs's snapshot cache,
    the newest snapshot is remembered with the dataset's `snapshots_changed`
    (OpenZFS >= 2.2): while that has not moved, nothing was written, and
    every peer's cursor is at that snapshot, the cycle needs no listing, no
    snapshot and no ssh. Any doubt means a full read.
    """
    q = zfs.quick_state(name)
    if not q.exists:
        return DatasetState(name, exists=False), False
    prefix = opts.snapshot_prefix
    try:
        cached = json.loads(_cache_path(name).read_text())
    except (OSError, ValueError):
        cached = None
    if (cached and q.snapshots_changed is not None and cached.get("changed") == q.snapshots_changed
            and not q.written and not q.resumable and cached.get("count", opts.keep + 1) <= opts.keep):
        newest = Version(**cached["newest"])
        st = DatasetState(name, True, snapshots=(newest,), bookmarks=tuple(zfs.list_bookmarks(name)),
                          readonly=q.readonly, canmount=q.canmount)
        if is_replication_snapshot(newest.name, prefix) and all(cursor_guid(st, prefix, p) == newest.guid
                                                                for p in peers):
            return st, True
    st = zfs.read_state(name)
    # Trust the cache only for a snapshots_changed at least 2 s old: it has a
    # one-second resolution, and a snapshot made in the same second as our
    # read must not hide behind an unchanged value.
    if q.snapshots_changed is not None and st.newest and time.time() - q.snapshots_changed >= 2:
        count = sum(1 for v in st.snapshots if is_replication_snapshot(v.name, prefix))
        try:
            path = _cache_path(name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"changed": q.snapshots_changed, "count": count,
                                        "newest": {k: v for k, v in asdict(st.newest).items() if k != "holds"}}))
        except OSError:
            pass
    return st, False


def record_cycle(ctx: SyncContext, ct: Container, cycle: Cycle, epoch: int) -> None:
    """Write down what each node holds, for the freshness gate at takeover.

    A standby whose cursor is at our newest snapshot held all our data as of
    the start of this cycle (the pool was flushed before the states were
    read), even if no snapshot was needed.
    """
    local = ctx.cluster.local_node()
    prefix = ct.options.snapshot_prefix
    store = ctx.store
    with store.locked(ct.ctid):
        rec = store.read(ct.ctid)
        if rec is None:
            rec = Record(ct.ctid, primary=local, epoch=max(1, epoch), changed=time.time(), changed_by=local,
                         reason="first replication cycle")
        elif rec.primary != local or rec.epoch != epoch:
            logger.warning(f"CT {ct.ctid}: the record changed during this cycle (primary {rec.primary}, "
                           f"epoch {rec.epoch}); not updating it")
            return
        for ds in ct.datasets:
            st = cycle.states.get(ds.on(local))
            newest = newest_replication(st, prefix) if st else None
            if newest is None:
                continue
            rec.replicas.setdefault(local, {})[ds.name] = Replica(newest.guid, newest.name, newest.creation,
                                                                 cycle.started)
            by_guid = st.by_guid()
            for peer in (n for n in ct.nodes if n != local):
                g = cursor_guid(st, prefix, peer)
                v = by_guid.get(g) if g is not None else None
                if v is None:
                    continue
                old = rec.replicas.get(peer, {}).get(ds.name)
                in_sync = cycle.started if v.guid == newest.guid else (old.in_sync_at if old and old.guid == v.guid
                                                                       else 0)
                rec.replicas.setdefault(peer, {})[ds.name] = Replica(v.guid, v.name, v.creation, in_sync)
        store.write(rec)


def start_record(ctx: SyncContext, ct: Container, local: str):
    """The group's first record: this node holds the originals, epoch 1."""
    store = ctx.store
    with store.locked(ct.ctid):
        if store.read(ct.ctid) is None:
            store.write(Record(ct.ctid, primary=local, epoch=1, changed=time.time(), changed_by=local,
                               reason="replication started here (this node holds the original datasets)"))
    return role_of(ctx.cluster, store, ct.ctid)


def fence_local(ctx: SyncContext, ct: Container, local: str) -> None:
    """Demote our copies, each under its lock and only if the record, read
    again under it, still names another node: a takeover on this node may
    have promoted them since the role was read (takeover_engine.py promotes under the
    same lock)."""
    for ds in ct.datasets:
        name = ds.on(local)
        try:
            with dataset_lock(name, "fence"):
                rec = ctx.store.read(ct.ctid)
                if rec is None or rec.primary == local:
                    logger.info(f"CT {ct.ctid}: {name}: this node became primary meanwhile; not demoting it")
                    continue
                replica.demote(name, f"{rec.primary} is primary at epoch {rec.epoch}", ct.options.snapshot_prefix)
        except Locked as e:
            logger.info(f"CT {ct.ctid}: {e}; fencing it next cycle")


def promotion_pending(ct: Container, local: str, epoch: int) -> set[str]:
    """Our datasets a takeover here has recorded but not yet promoted.

    The fence writes the record (this node primary at `epoch`) before the
    promotion makes each dataset writable, under its lock, waiting at most a
    minute for it. A cycle that started in between would take that lock and
    could hold it far longer (ssh to an old primary that is half dead), and
    the start would be refused. A read-only dataset below the epoch is such
    a dataset: there is nothing to replicate from it yet anyway.
    """
    out = set()
    for ds in ct.datasets:
        q = zfs.quick_state(ds.on(local))
        if q.exists and q.readonly and replica.epoch_of(q) < epoch:
            out.add(ds.on(local))
    return out


def sync_container(ctx: SyncContext, ct: Container, wait: float = 0, pool=None, what: str = "sync") -> Cycle:
    """One cycle of `ct` from this node: the timer's, the hook's and the agent's.
    Cycle.rc is the exit status; Cycle.primary is False when this node only
    fenced its copies or had nothing to do as a standby."""
    local = ctx.cluster.local_node()
    if local not in ct.nodes:
        logger.info(f"CT {ct.ctid}: this node ({local}) is not one of its nodes ({', '.join(ct.nodes)}); nothing to do")
        return Cycle(0, primary=False)
    if not ctx.cluster.is_quorate():
        logger.warning(f"CT {ct.ctid}: this node is not quorate; its view of the cluster may be stale, "
                       f"so it replicates nothing")
        return Cycle(1, primary=False)
    role = role_of(ctx.cluster, ctx.store, ct.ctid)
    if role.owner is None:
        logger.error(f"CT {ct.ctid}: not found in {ctx.cluster.root}/.vmlist; is the container id right?")
        return Cycle(1, primary=False)
    if not role.is_primary(local):
        if role.record is not None and role.primary != local and not ctx.dry_run:
            # Fencing: another node took over; our copies must not change any more.
            fence_local(ctx, ct, local)
        logger.info(f"CT {ct.ctid}: this node ({local}) is {role.describe(local)}; nothing to do")
        return Cycle(0, primary=False, epoch=role.epoch)
    if role.record is None and not ctx.dry_run:
        # Before the first send, which can take hours: from now on a start on
        # another node is a takeover from this one, judged by what it holds,
        # never a "first start" that trusts whatever dataset it finds.
        try:
            role = start_record(ctx, ct, local)
        except RecordError as e:
            logger.error(f"CT {ct.ctid}: {e}")
            return Cycle(1, primary=False)
        if not role.is_primary(local):
            logger.info(f"CT {ct.ctid}: another node recorded itself first ({role.primary}); nothing to do")
            return Cycle(0, primary=False)
    peers = [n for n in ct.nodes if n != local]
    promoting = promotion_pending(ct, local, role.epoch)
    for name in promoting:
        logger.info(f"CT {ct.ctid}: {name} is not promoted to epoch {role.epoch} yet (a takeover is under way "
                    f"here); not replicating it this cycle")
    cycle = replicate(ctx, ct, peers, epoch=role.epoch, wait=wait, pool=pool, what=what, exclude=promoting)
    cycle.epoch = role.epoch
    if not ctx.dry_run and cycle.states:
        try:
            record_cycle(ctx, ct, cycle, role.epoch)
        except RecordError as e:
            logger.error(f"CT {ct.ctid}: {e}")
            cycle.rc = 1
    return cycle
