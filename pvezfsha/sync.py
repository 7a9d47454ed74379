"""`pvezfsha sync` and `pvezfsha transfer`: the commands that run cycles.

sync runs a cycle (cycle.py) for each selected container, on the timer's
pace (`interval`) when the timer asks. transfer is run on another node by a
takeover: the old primary's final handover (demote, last snapshot, push),
or a catch-up from a standby that holds more than the node taking over.
"""

from __future__ import annotations

import json
import time

from pvezfsha import observe, replica
from pvezfsha.cluster import Cluster
from pvezfsha.config import Config
from pvezfsha.cycle import SyncContext, replicate, sync_container
from pvezfsha.errors import PvezfshaError, UsageError
from pvezfsha.handoff import hand_off
from pvezfsha.log import logger
from pvezfsha.role import role_of
from pvezfsha.state import run_dir, stop_holder
from pvezfsha.versions import newest_replication


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
        try:
            cycle = sync_container(ctx, ct, wait=wait)
        except PvezfshaError as e:
            # A full pool at the snapshot, a ZFS error while pruning: this
            # container's cycle failed; the others still run.
            logger.error(f"CT {ct.ctid}: {e}")
            if not dry_run:
                observe.after_error(ctx, ct, str(e))
            rc |= 1
            continue
        observe.after_cycle(ctx, ct, cycle)
        rc |= cycle.rc
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
            # This node's agent stops watching now, not at its next role check.
            hand_off(ctid, f"handing over to {to}")
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
