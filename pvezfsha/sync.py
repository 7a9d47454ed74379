"""`pvezfsha sync` and `pvezfsha transfer`: replication cycles.

sync, per container: only on the primary (role.py), lock the datasets, take
one atomic snapshot of those that changed, then for each standby open one
ssh session and bring every dataset up to date, prune, and record in the
cluster record what each standby holds. A cycle where nothing changed and
every standby's cursor is at the newest snapshot opens no ssh connection.

A node that finds another node recorded as primary demotes its own copies
before anything else (fencing), and a node without quorum replicates
nothing: its view of the cluster may be stale.

transfer is the same push, run on another node by a takeover: the old
primary's final handover (demote, last snapshot, push), or a catch-up from
a standby that holds more than the node taking over.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, replace

from pvezfsha import log, replica, zfs
from pvezfsha.cluster import Cluster
from pvezfsha.config import Config, Container
from pvezfsha.engine import Outcome, Replicator, send_flags
from pvezfsha.errors import PvezfshaError, UsageError
from pvezfsha.log import logger
from pvezfsha.planner import Conflict, kept_for_clones, plan_prune
from pvezfsha.record import Record, RecordError, RecordStore, Replica
from pvezfsha.role import role_of
from pvezfsha.state import Locked, dataset_lock, first_time, run_dir, stop_holder
from pvezfsha.transport import Session, receive_command, ssh_argv
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

    def totals(self) -> tuple[int, int]:
        outs = [o for per in self.outcomes.values() for o in per]
        return sum(len(o.steps) for o in outs), sum(o.bytes for o in outs)


def replicate(ctx: SyncContext, ct: Container, peers: list[str], *, epoch: int,
              snapshot: bool = True, prune: bool = True, before=None, wait: float = 0,
              what: str = "sync") -> Cycle:
    """Push this node's copies of `ct`'s datasets to `peers`.

    `before(datasets)` runs once the locks are held and before anything is
    read: the handover uses it to make the old primary read-only first.
    `wait` > 0 makes this a final push: it waits that long for a dataset
    another run holds, and one it still cannot lock fails the cycle (a
    handover that sent only some datasets has not handed over).
    """
    local = ctx.cluster.local_node()
    opts = ct.options
    prefix = opts.snapshot_prefix
    cycle = Cycle()
    with ExitStack() as locks:
        datasets: list[tuple[str, dict[str, str]]] = []   # local name, {peer: remote name}
        for ds in ct.datasets:
            try:
                locks.enter_context(dataset_lock(ds.on(local), what, wait=wait))
            except Locked as e:
                if wait:
                    logger.error(f"CT {ct.ctid}: {e} after waiting {wait:.0f} s; its last changes are not sent")
                    cycle.rc = 1
                else:
                    logger.info(f"CT {ct.ctid}: {e}; skipping it this cycle")
                continue
            datasets.append((ds.on(local), {n: ds.on(n) for n in peers}))
        if not datasets:
            return cycle
        if before is not None:
            before([name for name, _ in datasets])

        if not ctx.dry_run:
            for pool in sorted({name.split("/", 1)[0] for name, _ in datasets}):
                zfs.sync_pool(pool)
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
            rc, outs = sync_peer(ctx, ct, peer, datasets, cycle.states, epoch, session=session)
            cycle.rc |= rc
            cycle.outcomes[peer] = outs
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


def in_sync(state: DatasetState, prefix: str, peer: str) -> bool:
    """The cursor proves the standby has the newest snapshot."""
    newest = newest_replication(state, prefix)
    return newest is not None and cursor_guid(state, prefix, peer) == newest.guid


def open_session(ctx: SyncContext, ct: Container, peer: str, *, wait: bool = True) -> Session:
    opts = ct.options
    address = ctx.cluster.address(peer, ctx.cfg.addresses)
    argv = ssh_argv(address, user=ctx.cfg.ssh_user, port=ctx.cfg.ssh_port, connect_timeout=opts.ssh_connect_timeout,
                    remote=receive_command(ctx.cfg.path))
    return Session(argv, peer, stall_timeout=opts.stall_timeout, wait=wait)


def sync_peer(ctx: SyncContext, ct: Container, peer: str, datasets, states, epoch: int,
              session: Session | None = None) -> tuple[int, list[Outcome]]:
    """Bring `peer` up to date, over `session` if one was opened ahead."""
    opts = ct.options
    prefix = opts.snapshot_prefix
    todo = []
    for name, remotes in datasets:
        if not ctx.dry_run and in_sync(states[name], prefix, peer):
            logger.info(f"CT {ct.ctid}: {name} -> {peer}: nothing to do "
                        f"(has @{newest_replication(states[name], prefix).name})")
            continue
        todo.append((name, remotes[peer]))
    if not todo:
        if session is not None:
            session.close()
        return 0, []

    try:
        if session is None:
            session = open_session(ctx, ct, peer, wait=False)
        log.preload()
        session.ready()
    except PvezfshaError as e:
        address = ctx.cluster.address(peer, ctx.cfg.addresses)
        logger.error(f"CT {ct.ctid}: cannot reach {peer} ({address}): {e}")
        return 1, []
    rc, outs = 0, []
    with session:
        rep = Replicator(session, peer, opts, ctid=ct.ctid, epoch=epoch)
        for name, remote in todo:
            try:
                if ctx.dry_run:
                    plan, _ = rep.plan(name, states[name], remote)
                    if isinstance(plan, Conflict):
                        logger.info(f"CT {ct.ctid}: {name} -> {peer}:{remote}: {plan.describe()}")
                    else:
                        steps = "; ".join(s.describe() for s in plan.steps) or "nothing to send"
                        flags = ",".join(send_flags(opts, states[name]))
                        logger.info(f"CT {ct.ctid}: {name} -> {peer}:{remote}: {plan.reason}: {steps} [{flags}]")
                    continue
                out = rep.replicate(name, remote, states[name])
                outs.append(out)
                logger.info(f"CT {ct.ctid}: {name} -> {peer}: {out.summary()}")
            except PvezfshaError as e:
                logger.error(f"CT {ct.ctid}: {name} -> {peer}: {e}")
                rc = 1
                if session.proc.poll() is not None:
                    break   # the session is gone; the other datasets wait for the next cycle
    return rc, outs


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
    have promoted them since the role was read (hook.py promotes under the
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


def sync_container(ctx: SyncContext, ct: Container, wait: float = 0) -> int:
    local = ctx.cluster.local_node()
    if local not in ct.nodes:
        logger.info(f"CT {ct.ctid}: this node ({local}) is not one of its nodes ({', '.join(ct.nodes)}); nothing to do")
        return 0
    if not ctx.cluster.is_quorate():
        logger.warning(f"CT {ct.ctid}: this node is not quorate; its view of the cluster may be stale, "
                       f"so it replicates nothing")
        return 1
    role = role_of(ctx.cluster, ctx.store, ct.ctid)
    if role.owner is None:
        logger.error(f"CT {ct.ctid}: not found in {ctx.cluster.root}/.vmlist; is the container id right?")
        return 1
    if not role.is_primary(local):
        if role.record is not None and role.primary != local and not ctx.dry_run:
            # Fencing: another node took over; our copies must not change any more.
            fence_local(ctx, ct, local)
        logger.info(f"CT {ct.ctid}: this node ({local}) is {role.describe(local)}; nothing to do")
        return 0
    if role.record is None and not ctx.dry_run:
        # Before the first send, which can take hours: from now on a start on
        # another node is a takeover from this one, judged by what it holds,
        # never a "first start" that trusts whatever dataset it finds.
        try:
            role = start_record(ctx, ct, local)
        except RecordError as e:
            logger.error(f"CT {ct.ctid}: {e}")
            return 1
        if not role.is_primary(local):
            logger.info(f"CT {ct.ctid}: another node recorded itself first ({role.primary}); nothing to do")
            return 0
    peers = [n for n in ct.nodes if n != local]
    cycle = replicate(ctx, ct, peers, epoch=role.epoch, wait=wait)
    if not ctx.dry_run and cycle.states:
        try:
            record_cycle(ctx, ct, cycle, role.epoch)
        except RecordError as e:
            logger.error(f"CT {ct.ctid}: {e}")
            return 1
    return cycle.rc


def due(ctid: int, interval: float, now: float) -> bool:
    """The timer fires every minute; `interval` in the config sets the pace.

    A cycle counts from its start, with a little slack so a 10-minute
    interval on a 1-minute timer does not slip to 11 minutes.
    """
    try:
        last = float((run_dir() / "last-cycle" / str(ctid)).read_text())
    except (OSError, ValueError):
        return True
    return now - last >= interval - 30


def mark_cycle(ctid: int, when: float) -> None:
    d = run_dir() / "last-cycle"
    try:
        d.mkdir(parents=True, exist_ok=True)
        (d / str(ctid)).write_text(f"{when:.0f}\n")
    except OSError as e:
        logger.warning(f"CT {ctid}: cannot record the cycle time in {d}: {e.strerror}")


def run(cfg: Config, ctids: list[int], dry_run: bool = False, cluster: Cluster | None = None,
        if_due: bool = False, wait: float = 0) -> int:
    ctx = SyncContext(cfg, cluster or Cluster(), dry_run)
    rc = 0
    for ct in cfg.select(ctids):
        now = time.time()
        if if_due and not due(ct.ctid, cfg.interval, now):
            continue
        rc |= sync_container(ctx, ct, wait=wait)
        if not dry_run:
            mark_cycle(ct.ctid, now)
    return rc


def stop_transfer(cfg: Config, ctid: int) -> int:
    """End a transfer of `ctid` running on this node, and wait until it is gone."""
    ct = cfg.select([ctid])[0]
    local = Cluster().local_node()
    stopped = [(ds.on(local), pid) for ds in ct.datasets if (pid := stop_holder(ds.on(local), "transfer"))]
    for name, pid in stopped:
        logger.warning(f"CT {ctid}: stopped the transfer of {name} (pid {pid}): the node taking over gave up on it")
    print(json.dumps({"ok": True, "stopped": [name for name, _ in stopped]}), flush=True)
    return 0


def transfer(cfg: Config, ctid: int, to: str, final: bool, cluster: Cluster | None = None) -> int:
    """Run on another node by a takeover; prints one JSON line for it."""
    ctx = SyncContext(cfg, cluster or Cluster())
    ct = cfg.select([ctid])[0]
    local = ctx.cluster.local_node()
    if to not in ct.nodes or to == local:
        raise UsageError(f"--to {to}: not another node of container {ctid} ({', '.join(ct.nodes)})")
    role = role_of(ctx.cluster, ctx.store, ct.ctid)
    before = None
    if final:
        if role.primary != local:
            raise PvezfshaError(f"CT {ctid}: this node ({local}) is not the recorded primary "
                                f"({role.primary}); there is nothing to hand over")

        def before(names):
            # Nothing may change after the final snapshot.
            for name in names:
                replica.demote(name, f"handing over to {to}", ct.options.snapshot_prefix)
    # A handover waits for a running cycle to let go of the datasets, within
    # the time the node taking over gives it.
    cycle = replicate(ctx, ct, [to], epoch=role.epoch, snapshot=final, prune=False, before=before,
                      wait=ct.options.handover_timeout * 0.8 if final else 0, what="transfer")
    steps, nbytes = cycle.totals()
    newest = {name: (newest_replication(st, ct.options.snapshot_prefix) or st.newest).name
              for name, st in cycle.states.items() if st.snapshots}
    print(json.dumps({"ok": cycle.rc == 0 and to in cycle.reached, "node": local, "snapshots": steps,
                      "bytes": nbytes, "newest": newest}), flush=True)
    return cycle.rc
