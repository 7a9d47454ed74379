"""After a cycle: write down how it went, for people and their tools.

The timer's, the hook's and the agent's cycles all end here: the node's
health file in pmxcfs (health.py), then (`publish`) the status document
built from it (status.py), written as the metrics file (metrics.py) and
judged for alerts (alerts.py). The agent publishes from its own thread, so
a slow mail system never holds a cycle back. Nothing here may fail a
cycle: a problem is a journal line.
"""

from __future__ import annotations

import time
from dataclasses import asdict

from pvezfsha import alerts, health, metrics, status
from pvezfsha.config import Container
from pvezfsha.cycle import Cycle, SyncContext
from pvezfsha.log import logger
from pvezfsha.record_store import RecordError
from pvezfsha.role import role_of
from pvezfsha.state import node_lock

REFRESH = 3600.0    # a standby rewrites an unchanged health file this often, to show it is alive
QUIET = 60.0        # a primary whose facts did not change rewrites them at most this often


def results_of(ct: Container, local: str, cycle: Cycle) -> dict[str, dict[str, health.Result]]:
    """Per standby and dataset (the config's name), what this cycle did."""
    out: dict[str, dict[str, health.Result]] = {}
    names = {ds.on(local): ds.name for ds in ct.datasets}
    for peer, errors in cycle.errors.items():
        sent = {o.dataset: o for o in cycle.outcomes.get(peer, [])}
        per = out.setdefault(peer, {})
        for local_name in cycle.states:
            if local_name in cycle.skipped:
                continue
            if local_name in errors:
                per[names[local_name]] = health.Result(False, errors[local_name])
            else:
                o = sent.get(local_name)
                per[names[local_name]] = health.Result(True, "", o.bytes if o else 0, o.seconds if o else 0.0)
    return out


def after_cycle(ctx: SyncContext, ct: Container, cycle: Cycle, publish_now: bool = True) -> None:
    if ctx.dry_run:
        return
    try:
        local = ctx.cluster.local_node()
        if cycle.epoch == 0:
            return      # no quorum, no record, not one of its nodes: nothing was judged here
        if cycle.primary:
            if cycle.states:
                _record(ctx, ct, cycle.epoch, results_of(ct, local, cycle))
        else:
            _record(ctx, ct, cycle.epoch, None)
        if publish_now:
            publish(ctx)
    except Exception as e:  # reporting must never cost a cycle
        logger.warning(f"CT {ct.ctid}: could not record how the cycle went: {e}")


def after_error(ctx: SyncContext, ct: Container, error: str, publish_now: bool = True) -> None:
    """A cycle that ended in an exception (a full pool at the snapshot, a ZFS
    error while pruning) failed towards every standby: count it."""
    try:
        local = ctx.cluster.local_node()
        role = role_of(ctx.cluster, ctx.store, ct.ctid)
        if role.is_primary(local) and role.epoch:
            peers = [n for n in ct.nodes if n != local]
            _record(ctx, ct, role.epoch, {p: {ds.name: health.Result(False, error) for ds in ct.datasets}
                                          for p in peers})
        if publish_now:
            publish(ctx)
    except Exception as e:  # reporting must never cost a cycle
        logger.warning(f"CT {ct.ctid}: could not record the failed cycle: {e}")


def _record(ctx: SyncContext, ct: Container, epoch: int, results) -> None:
    """results None: this node is a standby of `ct` at `epoch`."""
    local = ctx.cluster.local_node()
    now = time.time()
    kept: dict[str, str] = {}
    here = status.Local([ds.on(local) for ds in ct.datasets])
    for ds in ct.datasets:
        kept.update(here.kept(ds.on(local), ct.options.snapshot_prefix))
    # The timer and the agent may both finish a cycle of this container.
    with node_lock(f"health-{ct.ctid}"):
        prev = ctx.store.read_health(ct.ctid, local)
        if results is None:
            new = health.standby(prev, ct.ctid, local, epoch, now, kept)
            fresh = REFRESH
        else:
            new = health.advance(prev, ct.ctid, local, epoch, now, results, kept)
            fresh = QUIET
        if prev is not None and _substance(prev) == _substance(new) and now - prev.at < fresh:
            return  # no news: spare pmxcfs a write
        try:
            ctx.store.write_health(new)
        except RecordError as e:
            logger.warning(f"CT {ct.ctid}: {e}; `pvezfsha status` on other nodes shows older facts")


def _substance(h: health.Health):
    """What a reader would act on: everything but the times of success."""
    links = {p: {ds: {k: v for k, v in asdict(link).items() if k not in ("ok_at", "at")}
                 for ds, link in per.items()} for p, per in h.links.items()}
    return h.node, h.epoch, h.primary, links, h.kept


def publish(ctx: SyncContext) -> dict | None:
    """The status of every container of this node: metrics file and alerts."""
    local = ctx.cluster.local_node()
    mine = [c.ctid for c in ctx.cfg.containers.values() if local in c.nodes]
    if not mine:
        return None
    doc = status.collect(ctx.cfg, mine, ctx.cluster)
    metrics.write(ctx.cfg.metrics_file, doc)
    alerts.review(ctx.cfg, doc)
    return doc
