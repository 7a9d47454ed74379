"""After a cycle: write down how it went, for people and their tools.

The timer's, the hook's and the agent's cycles all end here (and the agent
calls `publish` at a steady pace): the node's health file in pmxcfs
(health.py), then the status document built from it (status.py), written
as the metrics file (metrics.py) and judged for alerts (alerts.py). Nothing
here may fail a cycle: a problem is a journal line.
"""

from __future__ import annotations

import time

from pvezfsha import alerts, health, metrics, status
from pvezfsha.config import Container
from pvezfsha.cycle import Cycle, SyncContext
from pvezfsha.log import logger
from pvezfsha.record_store import RecordError

REFRESH = 3600.0    # a standby rewrites an unchanged health file this often, to show it is alive


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


def after_cycle(ctx: SyncContext, ct: Container, cycle: Cycle) -> None:
    if ctx.dry_run:
        return
    try:
        record(ctx, ct, cycle)
        publish(ctx)
    except Exception as e:  # reporting must never cost a cycle
        logger.warning(f"CT {ct.ctid}: could not record how the cycle went: {e}")


def record(ctx: SyncContext, ct: Container, cycle: Cycle) -> None:
    local = ctx.cluster.local_node()
    now = time.time()
    kept: dict[str, str] = {}
    for ds in ct.datasets:
        kept.update(status.kept_for(ds.on(local)))
    prev = ctx.store.read_health(ct.ctid, local)
    if cycle.primary and cycle.states:
        new = health.advance(prev, ct.ctid, local, cycle.epoch, now, results_of(ct, local, cycle), kept)
    elif cycle.primary:
        return      # nothing was judged (every dataset held by another run)
    else:
        new = health.standby(prev, ct.ctid, local, cycle.epoch, now, kept)
        if (prev is not None and not prev.primary and prev.kept == new.kept and prev.epoch == new.epoch
                and now - prev.at < REFRESH):
            return  # no news: spare pmxcfs a write every cycle
    try:
        ctx.store.write_health(new)
    except RecordError as e:
        logger.warning(f"CT {ct.ctid}: {e}; `pvezfsha status` on other nodes shows older facts")


def publish(ctx: SyncContext) -> dict:
    """The status of every container of this node: metrics file and alerts."""
    local = ctx.cluster.local_node()
    mine = [c.ctid for c in ctx.cfg.containers.values() if local in c.nodes]
    doc = status.collect(ctx.cfg, mine, ctx.cluster)
    metrics.write(ctx.cfg.metrics_file, doc)
    alerts.review(ctx.cfg, doc)
    return doc
