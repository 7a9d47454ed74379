"""One standby brought up to date over one session: the transfer half of a cycle.

A cycle (cycle.py) decides what to snapshot and which standbys need
anything; here each standby gets its ssh session to `pvezfsha receive`
(transport.py) and the replication engine (engine.py) runs every dataset
the standby's cursor shows behind.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING

from pvezfsha import log
from pvezfsha.config import Container
from pvezfsha.engine import Outcome, Replicator, send_flags
from pvezfsha.errors import PvezfshaError
from pvezfsha.log import logger
from pvezfsha.planner import Conflict
from pvezfsha.transport import Session, receive_command, ssh_argv
from pvezfsha.versions import DatasetState, cursor_guid, newest_replication

if TYPE_CHECKING:   # cycle.py imports this module; the context is only a parameter here
    from pvezfsha.cycle import SyncContext


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
              session: Session | None = None, pool=None) -> tuple[int, list[Outcome], dict[str, str]]:
    """Bring `peer` up to date, over `session` if one was opened ahead.
    Returns the exit status, the outcomes, and the error of each dataset
    that failed (by local name).

    With a `pool` of warm sessions (sessions.py) the session comes from it
    and outlives the cycle: it is released, not closed, so the peer lets go
    of the datasets it locked for this cycle's changes."""
    keep_open = pool is not None
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
        if session is not None and not keep_open:
            session.close()
        return 0, [], {}

    try:
        if session is None:
            session = pool.get(ctx, ct, peer) if pool is not None else open_session(ctx, ct, peer, wait=False)
        log.preload()
        session.ready()
    except PvezfshaError as e:
        address = ctx.cluster.address(peer, ctx.cfg.addresses)
        logger.error(f"CT {ct.ctid}: cannot reach {peer} ({address}): {e}")
        return 1, [], {name: f"cannot reach {peer} ({address}): {e}" for name, _ in todo}
    rc, outs, errors = 0, [], {}
    with (_released(session) if keep_open else session):
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
                errors[name] = str(e)
                if session.proc.poll() is not None:
                    # The session is gone; the other datasets wait for the next cycle.
                    for later, _ in todo[todo.index((name, remote)) + 1:]:
                        errors[later] = f"not sent: the session to {peer} ended ({e})"
                    break
    return rc, outs, errors


@contextmanager
def _released(session: Session):
    """A warm session after a cycle: the peer releases its locks, or the
    session ends (a session that cannot answer is not warm)."""
    try:
        yield session
    finally:
        if session.alive:
            try:
                session.request("release", timeout=60)
            except PvezfshaError:
                session.kill()
        session.clear_stderr()
