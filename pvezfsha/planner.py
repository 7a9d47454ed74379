"""Pure replication planning: the state of both sides in, steps or a typed
conflict out. No I/O, so every decision here is tested without ZFS.

Modelled on zrepl's IncrementalPath (replication/logic/diff/diff.go): the
newest common version is found by GUID alone and versions are ordered by
createtxg, never by name or creation time (names are for people; sanoid#977
and pve-zsync show what name-based logic breaks).

ZFS limitations worked around here:

* libzfs_core has no `-I` (pyzfs sends one incremental per call), so every
  intermediate replication snapshot becomes its own `-i` step, oldest first.
  This is also what makes an interruption cost at most one step.
* `zfs send -i #bookmark @older` silently produces a bogus stream
  (openzfs/zfs#12657): a step's `from` is always older by createtxg than its
  `to`, which holds by construction because `to` is picked strictly after the
  base's createtxg.
* A bookmark can only be the source of a single `-i` step (openzfs/zfs#12415),
  so a bookmark is only ever used as the first `from`.
* A resume token resumes exactly one snapshot (openzfs/zfs#16764), with the
  flags recorded in the token; a token whose snapshots are gone from the
  source, or whose raw mode differs from ours, is aborted rather than fed a
  mismatching stream.
* Other tools' snapshots (sanoid's hourlies, an admin's) are users' restore
  points, and a failover must not leave them on the dead node. Those whose
  names match `replicate_snapshots` are carried: sent in createtxg order in
  the same chain as ours, each as its own `-i` step (a later sanoid prune of
  one then costs nothing: no step ever depends on another tool keeping its
  snapshot), and pruned on a standby once the source no longer has them.
  Ours stay the chain's end: a cycle sends up to its own newest snapshot,
  and a carried snapshot taken after it rides with the next cycle's.
* An incremental receive without force fails with ETXTBSY when the target
  was modified or has snapshots after the base ("destination has been
  modified", the top complaint against every tool). We never receive with
  force onto data: such a target is reported as `Conflict("diverged")` and
  the engine keeps its diverged state aside before replicating on.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase

from pvezfsha.versions import DatasetState, Version, is_replication_snapshot

# A target with no snapshots that references no more than this is an empty
# placeholder (an admin's `zfs create` on the standby) and may be replaced by
# a full receive. An empty filesystem references 24-100 KiB; anything that
# holds real data is far above this and is reported as a conflict instead.
EMPTY_PLACEHOLDER_BYTES = 200 * 1024


@dataclass(frozen=True)
class Step:
    """One stream: full (`from_` is None) or incremental, maybe resumed."""

    from_: Version | None
    to: Version
    resume_token: str | None = None
    force: bool = False   # only to replace an empty placeholder with a full stream

    def describe(self) -> str:
        kind = "resume " if self.resume_token else ""
        if self.from_ is None:
            return f"{kind}full @{self.to.name}"
        sep = "#" if self.from_.bookmark else "@"
        return f"{kind}{sep}{self.from_.name} -> @{self.to.name}"


@dataclass(frozen=True)
class Plan:
    steps: tuple[Step, ...]
    base: Version | None = None          # newest common version, on the source
    abort_resume: bool = False           # the target's partial receive is of no use
    reason: str = ""

    @property
    def up_to_date(self) -> bool:
        return not self.steps


@dataclass(frozen=True)
class Conflict:
    """The target cannot take an incremental without losing something.

    diverged:  there is a common snapshot, but the target has snapshots after
               it (`receiver_only`) or unsnapshotted writes (`modified` bytes).
    no_common: the target has data but no snapshot in common with the source.
    """

    kind: str
    base: Version | None = None          # the common snapshot, on the target
    sender_only: tuple[Version, ...] = ()
    receiver_only: tuple[Version, ...] = ()
    modified: int = 0

    def describe(self) -> str:
        def names(vs):
            shown = ", ".join("@" + v.name for v in vs[:5])
            return shown + (f" and {len(vs) - 5} more" if len(vs) > 5 else "")
        if self.kind == "no_common":
            return ("target has no snapshot in common with the source"
                    + (f" (target has {names(self.receiver_only)})" if self.receiver_only else
                       " but holds data")
                    + "; refusing to overwrite it")
        parts = []
        if self.receiver_only:
            parts.append(f"target-only snapshots {names(self.receiver_only)}")
        if self.modified:
            parts.append(f"{self.modified} bytes written on the target since @{self.base.name}")
        return f"target diverged after common @{self.base.name}: " + "; ".join(parts)


def token_fits(state_src: DatasetState, target: DatasetState, flags: tuple[str, ...]) -> bool:
    tok = target.resume
    if tok is None:
        return False
    src = state_src.by_guid()
    to = src.get(tok.toguid)
    if to is None or to.bookmark:
        return False
    if tok.fromguid is not None and tok.fromguid not in src:
        return False
    # The kernel records only the features the stream really used (no
    # largeblockok without large blocks), and a resume sends with the token's
    # own flags, as `zfs send -t` does. What must match is raw or not: mixing
    # raw and non-raw streams is refused or worse (openzfs/zfs#8375).
    return ("raw" in tok.flags) == ("raw" in flags)


def carried(name: str, prefix: str, patterns: tuple[str, ...]) -> bool:
    """Another tool's snapshot that replication carries: its name matches
    one of `patterns` (globs, `replicate_snapshots`). Never one of ours,
    which are sent anyway, nor a name our prefix marks (kept divergence)."""
    if name.startswith((prefix + "_", prefix + "-")):
        return False
    return any(fnmatchcase(name, p) for p in patterns)


def plan_replication(source: DatasetState, target: DatasetState, prefix: str,
                     flags: tuple[str, ...], carry: tuple[str, ...] = ()) -> Plan | Conflict:
    """Steps that bring `target` up to the newest replication snapshot of
    `source`, with the snapshots `carry` matches on the way (see `carried`)."""
    ours = [s for s in source.snapshots if is_replication_snapshot(s.name, prefix)]
    if not ours:
        return Plan((), reason="no replication snapshot on the source yet")
    newest = ours[-1]
    repl = [s for s in source.snapshots if s.createtxg <= newest.createtxg
            and (is_replication_snapshot(s.name, prefix) or carried(s.name, prefix, carry))]
    src = source.by_guid()
    fits = token_fits(source, target, flags)
    abort = target.resume is not None and not fits
    tok = target.resume if fits else None

    if not target.exists or not target.snapshots:
        # A carried history (sanoid's monthlies) reaches the standby from the
        # start: the oldest carried snapshot in full, the others and our
        # newest as increments. Our own older ones are of no use there.
        first_sync = [v for v in repl if carried(v.name, prefix, carry)] + [newest]
        if tok is not None and tok.fromguid is None:
            # An interrupted full receive: finish it, then go on incrementally.
            first = Step(None, src[tok.toguid], resume_token=tok.token)
            return Plan((first, *_chain(first.to, first_sync)), base=None, reason="resuming the initial full send")
        if tok is not None:
            abort = True   # an incremental token on a target without its base
        force = False
        if target.exists and not abort:
            if target.referenced > EMPTY_PLACEHOLDER_BYTES:
                return Conflict("no_common", sender_only=tuple(repl))
            force = True
        first = Step(None, first_sync[0], force=force)
        return Plan((first, *_chain(first.to, first_sync)), base=None, abort_resume=abort,
                    reason="initial full send" + (f" and {len(first_sync) - 1} carried snapshot(s)"
                                                  if len(first_sync) > 1 else " of the newest snapshot"))

    common = next((t for t in reversed(target.snapshots) if t.guid in src), None)
    if common is None:
        return Conflict("no_common", sender_only=tuple(repl), receiver_only=target.snapshots)
    receiver_only = tuple(t for t in target.snapshots if t.createtxg > common.createtxg)
    if receiver_only or target.modified:
        base_src = src[common.guid]
        return Conflict("diverged", base=common, receiver_only=receiver_only, modified=target.modified,
                        sender_only=tuple(s for s in repl if s.createtxg > base_src.createtxg))

    base = src[common.guid]
    if tok is not None:
        if tok.fromguid != common.guid:
            abort, tok = True, None
        else:
            first = Step(base, src[tok.toguid], resume_token=tok.token)
            return Plan((first, *_chain(first.to, repl)), base=base, reason="resuming an interrupted step")
    steps = _chain(base, repl)
    return Plan(steps, base=base, abort_resume=abort,
                reason="up to date" if not steps else f"{len(steps)} incremental step(s)")


def _chain(base: Version, repl: list[Version]) -> tuple[Step, ...]:
    later = [s for s in repl if s.createtxg > base.createtxg]
    steps, prev = [], base
    for s in later:
        steps.append(Step(prev, s))
        prev = s
    return tuple(steps)


def plan_prune_carried(target: DatasetState, source: DatasetState, prefix: str, carry: tuple[str, ...],
                       protect: set[int]) -> tuple[Version, ...]:
    """Carried snapshots on a standby that the source no longer has (sanoid
    pruned them there): pruned on the standby too. Never one the source
    still has as a snapshot or a bookmark, never a protected guid (the newest
    common one), never a held one or a clone origin."""
    have = source.by_guid()
    return tuple(s for s in target.snapshots if carried(s.name, prefix, carry) and s.guid not in have
                 and s.guid not in protect and not s.holds and not s.clones)


def plan_prune(state: DatasetState, prefix: str, keep: int, protect: set[int]) -> tuple[Version, ...]:
    """Replication snapshots beyond the newest `keep` that may be destroyed.

    Never the newest, never a held one, never one whose guid is protected
    (the last common snapshot with a standby), never the origin of a clone
    (a kept divergence is a clone of its base: destroying that fails with
    EEXIST, SnapshotIsCloned, and would fail the whole batch). Snapshots of
    other tools and kept diverged state are not ours to prune.
    """
    return tuple(s for s in _beyond_keep(state, prefix, keep) if s.guid not in protect and not s.holds
                 and not s.clones)


def kept_for_clones(state: DatasetState, prefix: str, keep: int) -> tuple[Version, ...]:
    """Snapshots retention would prune but must keep: clone origins."""
    return tuple(s for s in _beyond_keep(state, prefix, keep) if s.clones)


def _beyond_keep(state: DatasetState, prefix: str, keep: int) -> list[Version]:
    repl = [s for s in state.snapshots if is_replication_snapshot(s.name, prefix)]
    return repl[:-keep] if len(repl) > keep else []
