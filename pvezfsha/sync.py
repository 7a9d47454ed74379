"""`pvezfsha sync`: one replication cycle for the containers this node runs.

Per container: is this node the primary? Lock the datasets, take one atomic
snapshot of those that changed, then for each standby open one ssh session
and bring every dataset up to date, then prune the source. A cycle where
nothing changed and every standby's cursor is at the newest snapshot costs
one channel program per dataset and no ssh at all.
"""

from __future__ import annotations

import datetime as dt
from contextlib import ExitStack
from dataclasses import dataclass

from loguru import logger

from pvezfsha import zfs
from pvezfsha.cluster import Cluster, primary_of
from pvezfsha.config import Config, Container
from pvezfsha.engine import Replicator, human_bytes, send_flags
from pvezfsha.errors import PvezfshaError, UsageError
from pvezfsha.planner import Conflict, plan_prune
from pvezfsha.state import Locked, dataset_lock
from pvezfsha.transport import Session, ssh_argv
from pvezfsha.versions import DatasetState, cursor_node, is_replication_snapshot, snapshot_name


def select_containers(cfg: Config, ctids: list[int]) -> list[Container]:
    unknown = [c for c in ctids if c not in cfg.containers]
    if unknown:
        raise UsageError(f"container {', '.join(map(str, unknown))} is not configured in {cfg.path}")
    return [cfg.containers[c] for c in (ctids or sorted(cfg.containers))]


def needs_snapshot(state: DatasetState, prefix: str) -> bool:
    """A new replication snapshot only when something changed since the last one."""
    newest = state.newest
    if newest is None or state.written:
        return True
    # Someone else's newer snapshot (sanoid) may hide changes from `written`.
    last_ours = next((s for s in reversed(state.snapshots) if is_replication_snapshot(s.name, prefix)), None)
    return last_ours is None or last_ours.guid != newest.guid


def cursor_guid(state: DatasetState, prefix: str, node: str) -> int | None:
    guids = [b for b in state.bookmarks if cursor_node(b.name, prefix) == node]
    return max(guids, key=lambda b: b.createtxg).guid if guids else None


@dataclass
class SyncContext:
    cfg: Config
    cluster: Cluster
    dry_run: bool = False


def take_snapshots(states: dict[str, DatasetState], datasets: list[str], prefix: str, now: dt.datetime) -> str:
    """One lzc_snapshot per pool, so all datasets of a pool share one txg."""
    name = snapshot_name(prefix, now, taken={s.name for ds in datasets for s in states[ds].snapshots})
    by_pool: dict[str, list[str]] = {}
    for ds in datasets:
        by_pool.setdefault(ds.split("/", 1)[0], []).append(f"{ds}@{name}")
    for snaps in by_pool.values():
        zfs.snapshot(snaps)
    return name


def sync_container(ctx: SyncContext, ct: Container) -> int:
    local = ctx.cluster.local_node()
    opts = ct.options
    prefix = opts.snapshot_prefix
    if local not in ct.nodes:
        logger.info(f"CT {ct.ctid}: this node ({local}) is not one of its nodes ({', '.join(ct.nodes)}); nothing to do")
        return 0
    primary = primary_of(ctx.cluster, ct.ctid)
    if primary is None:
        logger.error(f"CT {ct.ctid}: not found in {ctx.cluster.root}/.vmlist; is the container id right?")
        return 1
    if primary != local:
        logger.info(f"CT {ct.ctid}: this node ({local}) is a standby; primary is {primary}; nothing to do")
        return 0

    rc = 0
    with ExitStack() as locks:
        datasets: list[tuple[str, dict[str, str]]] = []   # local name, {peer: remote name}
        for ds in ct.datasets:
            try:
                locks.enter_context(dataset_lock(ds.on(local)))
            except Locked as e:
                logger.info(f"CT {ct.ctid}: {e}; skipping it this cycle")
                continue
            datasets.append((ds.on(local), {n: ds.on(n) for n in ct.nodes if n != local}))
        if not datasets:
            return 0

        if not ctx.dry_run:
            for pool in sorted({name.split("/", 1)[0] for name, _ in datasets}):
                zfs.sync_pool(pool)
        states: dict[str, DatasetState] = {}
        for name, _ in list(datasets):
            st = zfs.read_state(name)
            if not st.exists:
                logger.error(f"CT {ct.ctid}: {name} does not exist on {local}")
                datasets.remove((name, _))
                rc = 1
                continue
            states[name] = st

        changed = [n for n, _ in datasets if needs_snapshot(states[n], prefix)]
        if changed:
            now = dt.datetime.now(dt.timezone.utc)
            if ctx.dry_run:
                logger.info(f"CT {ct.ctid}: would snapshot {', '.join(changed)} as @{snapshot_name(prefix, now)}")
            else:
                take_snapshots(states, changed, prefix, now)
                for n in changed:
                    states[n] = zfs.read_state(n)

        for peer in [n for n in ct.nodes if n != local]:
            rc |= sync_peer(ctx, ct, peer, datasets, states)

        if not ctx.dry_run:
            for name, remotes in datasets:
                st = zfs.read_state(name)
                protect = {g for g in (cursor_guid(st, prefix, p) for p in remotes) if g is not None}
                doomed = plan_prune(st, prefix, opts.keep, protect)
                if doomed:
                    zfs.destroy_snapshots([v.full(name) for v in doomed])
                    logger.info(f"CT {ct.ctid}: {name}: pruned {len(doomed)} old snapshot(s) on {local}")
                # Cursors and step holds of nodes no longer in the group are leaks.
                gone = [b.full(name) for b in st.bookmarks
                        if (node := cursor_node(b.name, prefix)) is not None and node not in remotes]
                zfs.destroy_bookmarks(gone)
    return rc


def sync_peer(ctx: SyncContext, ct: Container, peer: str, datasets, states) -> int:
    opts = ct.options
    prefix = opts.snapshot_prefix
    todo = []
    for name, remotes in datasets:
        newest = next((s for s in reversed(states[name].snapshots) if is_replication_snapshot(s.name, prefix)), None)
        if newest is not None and cursor_guid(states[name], prefix, peer) == newest.guid and not ctx.dry_run:
            # The cursor proves the standby has the newest snapshot.
            logger.info(f"CT {ct.ctid}: {name} -> {peer}: nothing to do (has @{newest.name})")
            continue
        todo.append((name, remotes[peer]))
    if not todo:
        return 0

    address = ctx.cluster.address(peer, ctx.cfg.addresses)
    argv = ssh_argv(address, user=ctx.cfg.ssh_user, port=ctx.cfg.ssh_port, connect_timeout=opts.ssh_connect_timeout)
    try:
        session = Session(argv, peer, stall_timeout=opts.stall_timeout)
    except PvezfshaError as e:
        logger.error(f"CT {ct.ctid}: cannot reach standby {peer} ({address}): {e}")
        return 1
    rc = 0
    with session:
        rep = Replicator(session, peer, opts)
        for name, remote in todo:
            try:
                if ctx.dry_run:
                    plan, target = rep.plan(name, states[name], remote)
                    if isinstance(plan, Conflict):
                        logger.info(f"CT {ct.ctid}: {name} -> {peer}:{remote}: {plan.describe()}")
                    else:
                        steps = "; ".join(s.describe() for s in plan.steps) or "nothing to send"
                        flags = ",".join(send_flags(opts, states[name]))
                        logger.info(f"CT {ct.ctid}: {name} -> {peer}:{remote}: {plan.reason}: {steps} [{flags}]")
                    continue
                out = rep.replicate(name, remote, states[name])
                logger.info(f"CT {ct.ctid}: {name} -> {peer}: {out.summary()}")
            except PvezfshaError as e:
                logger.error(f"CT {ct.ctid}: {name} -> {peer}: {e}")
                rc = 1
                if session.proc.poll() is not None:
                    break   # the session is gone; the other datasets wait for the next cycle
    return rc


def run(cfg: Config, ctids: list[int], dry_run: bool = False, cluster: Cluster | None = None) -> int:
    ctx = SyncContext(cfg, cluster or Cluster(), dry_run)
    rc = 0
    for ct in select_containers(cfg, ctids):
        rc |= sync_container(ctx, ct)
    return rc


__all__ = ["run", "human_bytes"]
