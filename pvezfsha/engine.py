"""Carry out a replication plan for one dataset towards one standby.

The planner decides; this module does: it asks the standby for its state,
gets a plan, runs each step through the session, and keeps the three layers
that guarantee the next incremental (zrepl's model):

* a cursor bookmark per standby on the source, moved after every step, so a
  deleted base snapshot (an admin, sanoid) does not force a full resend;
* a hold on the standby's last received snapshot (done by the receiver);
* persistent step holds on the source's `from` and `to` while a step is in
  flight, so an interrupted step stays resumable; they are released when the
  standby has caught up, and leaked ones are released on the next success.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from pvezfsha import zfs, zfscli
from pvezfsha.config import Options
from pvezfsha.errors import ZfsError
from pvezfsha.log import logger
from pvezfsha.planner import (Conflict, Plan, Step, kept_for_clones, plan_prune, plan_prune_carried,
                              plan_replication)
from pvezfsha.progress import Progress
from pvezfsha.units import human_bytes
from pvezfsha.state import first_time
from pvezfsha.transport import Session
from pvezfsha.versions import HOLD_LAST, KEYLOCATION, DatasetState, Version, cursor_name, cursor_node, step_hold


@dataclass
class Outcome:
    """What happened to one dataset towards one standby in this cycle."""

    dataset: str
    peer: str
    steps: list[str] = field(default_factory=list)
    bytes: int = 0
    seconds: float = 0.0
    kept: str | None = None
    pruned: int = 0
    newest: str | None = None
    cursor_moved: bool = False

    def summary(self) -> str:
        if not self.steps:
            msg = "nothing to do"
        else:
            rate = self.bytes / self.seconds if self.seconds else 0
            msg = (f"{len(self.steps)} snapshot(s) up to @{self.newest}, {human_bytes(self.bytes)} "
                   f"in {self.seconds:.1f} s ({human_bytes(rate)}/s)")
        if self.kept:
            msg += f"; diverged state kept as {self.kept}"
        if self.pruned:
            msg += f"; pruned {self.pruned} old snapshot(s) there"
        return msg


def send_flags(options: Options, source: DatasetState) -> tuple[str, ...]:
    """Fixed per dataset: an encrypted dataset is always sent raw (never
    decrypted on the wire or landing unencrypted, sanoid#548), and the flags
    never change between the first and later sends (mixing them fails or,
    before OpenZFS 2.0, lost data: zrepl's -L warning)."""
    raw = options.raw == "always" or (options.raw == "auto" and source.encrypted)
    return (*options.send_flags, "raw") if raw else tuple(options.send_flags)


def move_cursor(src_ds: str, prefix: str, peer: str, to: Version, bookmarks) -> bool:
    """The peer's cursor bookmark onto `to`; True if anything changed."""
    new = cursor_name(prefix, peer, to.guid)
    old = [b for b in bookmarks if cursor_node(b.name, prefix) == peer]
    if any(b.name == new for b in old) and len(old) == 1:
        return False
    if not any(b.name == new for b in old):
        src = to.full(src_ds)
        if to.bookmark:   # the base survives only as a bookmark: copy it
            src = f"{src_ds}#{to.name}"
        zfs.bookmark({f"{src_ds}#{new}": src})
    # Create before destroy: a crash in between leaves two cursors, and
    # the older one is removed by the next move.
    zfs.destroy_bookmarks([b.full(src_ds) for b in old if b.name != new])
    return True


class Replicator:
    def __init__(self, session: Session, peer: str, options: Options, *, ctid: int = 0, epoch: int = 0):
        self.session = session
        self.peer = peer
        self.options = options
        # Sent with every request that changes the peer, so a peer that knows
        # of a later takeover refuses a stale sender (fencing).
        self.fence = {"ctid": ctid, "epoch": epoch}

    def remote_state(self, dataset: str) -> DatasetState:
        res = self.session.request("state", dataset=dataset, prefix=self.options.snapshot_prefix, **self.fence)
        return DatasetState.from_dict(res["state"])

    def plan(self, src_ds: str, source: DatasetState, dst_ds: str) -> tuple[Plan | Conflict, DatasetState]:
        target = self.remote_state(dst_ds)
        return self._plan(source, target), target

    def _plan(self, source: DatasetState, target: DatasetState) -> Plan | Conflict:
        return plan_replication(source, target, self.options.snapshot_prefix, send_flags(self.options, source),
                                self.options.replicate_snapshots)

    def replicate(self, src_ds: str, dst_ds: str, source: DatasetState) -> Outcome:
        out = Outcome(src_ds, self.peer)
        plan, target = self.plan(src_ds, source, dst_ds)
        if isinstance(plan, Conflict) and plan.kind == "diverged":
            logger.warning(f"{dst_ds} on {self.peer}: {plan.describe()}")
            res = self.session.request("keep_diverged", dataset=dst_ds, base_guid=plan.base.guid,
                                       prefix=self.options.snapshot_prefix, **self.fence)
            out.kept = res["kept"]
            if res.get("pruned"):
                logger.warning(f"{dst_ds} on {self.peer}: its own snapshot(s) after the common one held nothing "
                               f"and were pruned, nothing was lost: "
                               f"{', '.join('@' + n for n in res['pruned'])}")
            target = DatasetState.from_dict(res["state"])
            plan = self._plan(source, target)
        if isinstance(plan, Conflict):
            raise ZfsError(f"{dst_ds} on {self.peer}: {plan.describe()}", kind=plan.kind)
        if plan.abort_resume:
            logger.info(f"{dst_ds} on {self.peer}: dropping a partial receive that no longer fits the source")
            target = DatasetState.from_dict(self.session.request("abort_resume", dataset=dst_ds, **self.fence)["state"])

        flags = send_flags(self.options, source)
        t0 = time.monotonic()
        done: list[Step] = []
        if plan.steps:
            keylocation = self._keylocation(src_ds) if "raw" in flags and source.encrypted else ""
            held = self._hold_steps(src_ds, plan.steps, source)
            try:
                for step in plan.steps:
                    self._run_step(src_ds, dst_ds, step, flags, out, keylocation)
                    done.append(step)
            finally:
                # Once per dataset, not per step: each move waits for a txg.
                if done:
                    out.cursor_moved = self._move_cursor(src_ds, done[-1].to, source)
            # Step holds stay on an interrupted step: they keep it resumable.
            zfs.release({n: [step_hold(self.peer)] for n in held})
        elif plan.base is not None:
            # Already in sync (a replica seeded by hand, say): make sure the
            # cursor exists, so the next no-op cycle needs no ssh at all.
            out.cursor_moved = self._move_cursor(src_ds, plan.base, source)
        out.seconds = time.monotonic() - t0
        out.pruned = self._finish(dst_ds, target, done, source)
        return out

    @staticmethod
    def _keylocation(src_ds: str) -> str:
        """Where our key is, for a raw replica to load it from at a takeover."""
        try:
            return zfscli.key_facts(src_ds).get("keylocation", "")
        except ZfsError as e:
            logger.warning(f"{src_ds}: cannot read its keylocation for the standbys: {e}")
            return ""

    def _hold_steps(self, src_ds: str, steps, source: DatasetState) -> set[str]:
        """Persistent step holds on every snapshot the steps send from or to,
        in one call; returns all snapshots carrying our step hold (leaked ones
        of an interrupted earlier attempt included), to release on success."""
        tag = step_hold(self.peer)
        already = {v.full(src_ds) for v in source.snapshots if tag in v.holds}
        wanted = {v.full(src_ds) for st in steps for v in (st.from_, st.to) if v is not None and not v.bookmark}
        zfs.hold({n: tag for n in wanted - already})
        return wanted | already

    def _run_step(self, src_ds: str, dst_ds: str, step: Step, flags: tuple[str, ...], out: Outcome,
                  keylocation: str = "") -> None:
        to = step.to.full(src_ds)
        frm = step.from_.full(src_ds) if step.from_ else None

        def produce(fd: int) -> None:
            if step.resume_token:
                tok = zfs.decode_token(step.resume_token)
                zfs.send_resume(to, frm, fd, tok)
            else:
                zfs.send(to, frm, fd, flags)

        header = {"op": "receive", "snapshot": f"{dst_ds}@{step.to.name}", "guid": step.to.guid,
                  "force": step.force, "raw": "raw" in flags, "stall": self.options.stall_timeout, **self.fence}
        if "raw" in flags and KEYLOCATION.fullmatch(keylocation):
            # A raw receive leaves keylocation=prompt on the standby, which no
            # takeover can answer: the receiver puts ours there instead.
            header["keylocation"] = keylocation
        # No estimate for a resumed stream, nor from a bookmark: without
        # feature@bookmark_written the kernel would estimate by a dry-run send.
        total = None if step.resume_token or (frm and "#" in frm) else zfs.send_space(to, frm, flags)
        progress = Progress(src_ds, self.peer, step.describe(), total, logger.info)
        try:
            res = self.session.send_stream(header, produce, rate_limit=self.options.bandwidth_limit,
                                           progress=progress)
        finally:
            progress.close()
        out.steps.append(step.describe())
        out.bytes += res.bytes
        out.newest = step.to.name
        logger.debug(f"{src_ds} -> {self.peer}: {step.describe()}: {res.bytes} bytes in {res.seconds:.2f} s")

    def _move_cursor(self, src_ds: str, to: Version, source: DatasetState) -> bool:
        return move_cursor(src_ds, self.options.snapshot_prefix, self.peer, to, source.bookmarks)

    def _finish(self, dst_ds: str, target: DatasetState, done: list[Step], source: DatasetState) -> int:
        """One request: the last-received hold onto the newest snapshot, and
        pruning (ours past `keep`, carried ones the source no longer has),
        planned from the state read at the start plus what was sent (no
        second listing of the standby)."""
        received = tuple(Version(st.to.name, st.to.guid, createtxg=(1 << 62) + i, creation=st.to.creation)
                         for i, st in enumerate(done))
        after = DatasetState(dst_ds, True, snapshots=target.snapshots + received)
        newest = after.newest
        if newest is None:
            return 0
        held_last = [v.name for v in target.snapshots if HOLD_LAST in v.holds]
        doomed = plan_prune(after, self.options.snapshot_prefix, self.options.keep, {newest.guid})
        # `source` is a full listing: load_state's short one (the cache) only
        # goes with datasets every standby already holds, which never get here.
        # The receiver destroys only those it marked when it received them,
        # and a receiver from before carrying ignores the field.
        carried = plan_prune_carried(after, source, self.options.snapshot_prefix, self.options.replicate_snapshots,
                                     {newest.guid})
        for v in kept_for_clones(after, self.options.snapshot_prefix, self.options.keep):
            if first_time(f"clone-origin-{self.peer}-{v.guid:016x}"):
                logger.warning(f"{dst_ds}@{v.name} on {self.peer} is kept past `keep`: a kept divergence "
                               f"there was cloned from it; it goes when that copy is destroyed")
        if held_last == [newest.name] and not doomed and not carried:
            return 0
        res = self.session.request("finish", dataset=dst_ds, hold=newest.name, held=newest.name in held_last,
                                   release=[n for n in held_last if n != newest.name],
                                   destroy=[{"name": v.name, "guid": v.guid} for v in doomed],
                                   destroy_carried=[{"name": v.name, "guid": v.guid} for v in carried], **self.fence)
        return int(res.get("destroyed", 0))
