"""Keep a diverged replica's own state aside, so replication can go on
without destroying anything.

A dataset D has diverged when it has snapshots after the last snapshot it
shares with the source, or unsnapshotted writes. An incremental receive then
needs D rolled back (`recv -F` would destroy the newer snapshots and writes,
which is how pvesr and syncoid lose a returning node's data). Instead:

  1. snapshot unsnapshotted writes as D@<prefix>-diverged_<time>;
  2. clone D@base to a sibling T (D-<prefix>-swap), created with D's local
     properties and inert (readonly, canmount=noauto), so it is never
     mounted and stays an exact copy of @base; then promote T: T owns the
     history up to and including @base, D keeps only what came after it;
  3. move D's child datasets under T, mark D as kept and make it inert;
  4. rename D to D-<prefix>-diverged-<time>, and T to D, both with -u.

Nothing is copied and nothing is destroyed. D is again an exact copy of the
base, with its own mountpoint, ACL, quota and share settings, ready for the
incremental receive of the same cycle, and the diverged state sits next to
it, read-only and never auto-mounted, until an admin decides.

Why the clone is made with its properties: a clone inherits from its
parent, not from its origin, so D's local `mountpoint` (or `acltype`,
`sharenfs`, `quota`...) would stay with the kept copy and the next
promotion would mount the live data somewhere else. And a clone created
with the inherited canmount=on is mounted by `zfs rename` (even with -u
it is remounted once the rename changes where it would mount): the mount
writes a few KiB, so the receive that follows fails as "destination
modified", and the next cycle keeps a second, empty copy.

One exception: when D has no writes of its own since the base, and every
snapshot after it is one replication makes (ours, or a name
`replicate_snapshots` carries: sanoid run on a standby by mistake) and
holds nothing (`written` 0 on the unchanged read-only replica), there is
nothing to keep. Those snapshots are destroyed, each checked by guid, and
the warning names them; a clone would only hide a harmless mistake behind a
"diverged" alert. Any other name (an admin's @before-upgrade) is a point in
time someone chose, and is kept as before.

Every step is re-entrant: a run killed between any two of them (the lab
kills it at each `faults.point`) is finished by the next call, which finds
the swap clone T and knows from the origins how far the last one got.
"""

from __future__ import annotations

import datetime as dt

from pvezfsha import faults, zfs, zfscli
from pvezfsha.errors import ZfsError
from pvezfsha.log import logger
from pvezfsha.replica import INERT
from pvezfsha.kept import KEPT_PROP, kept_name
from pvezfsha.planner import carried
from pvezfsha.versions import ZIL_RESET_PROP, diverged_name, is_replication_snapshot

# Local properties that are not carried to the swapped-in copy: set by the
# swap itself, fixed at creation (a clone takes them from its origin), or
# tied to the encryption root.
NOT_CARRIED = frozenset({"readonly", "canmount", "casesensitivity", "normalization", "utf8only", "encryption",
                         "keyformat", "keylocation", "pbkdf2iters", "volsize", "volblocksize", KEPT_PROP})


# What a ZIL header reset can leave in a bare clone's `written`: the rewritten
# objset block (1 KiB measured on ashift 9; 4 KiB at ashift 12), with room
# for its indirect blocks. Real file writes add data and metadata blocks.
BARE_CLONE_WRITTEN = 64 << 10


def _tmp_name(dataset: str, prefix: str) -> str:
    return f"{dataset}-{prefix}-swap"


def keep_diverged(dataset: str, base_guid: int, prefix: str, node: str,
                  now: dt.datetime | None = None, carry: tuple[str, ...] = ()) -> dict:
    """Set D's diverged state aside; D ends as an unmodified copy of the base."""
    now = now or dt.datetime.now(dt.timezone.utc)
    tmp = _tmp_name(dataset, prefix)
    done = finish_interrupted(dataset, prefix, node, now)
    if done is not None:
        return done
    st = zfs.read_state(dataset)
    if not st.exists:
        raise ZfsError(f"{dataset}: does not exist")

    base = next((s for s in st.snapshots if s.guid == base_guid), None)
    if base is None:
        raise ZfsError(f"{dataset}: the common snapshot (guid {base_guid:x}) is gone")
    empty = _empty_after(dataset, st, base, prefix, carry)
    if empty:
        zfs.destroy_snapshots([f"{dataset}@{s.name}" for s in empty])
        names = ", ".join("@" + s.name for s in empty)
        logger.warning(f"{dataset}: {len(empty)} snapshot(s) taken here after the common @{base.name} held "
                       f"nothing of their own ({names}): pruned, nothing was lost. A standby's snapshots are "
                       f"a mistake: take them on the primary only (sanoid: see the README)")
        return {"kept": None, "base": base.name, "snapshots": [], "pruned": [s.name for s in empty]}
    if st.resume is not None:
        zfs.abort_receive(dataset)
    if st.mounted:
        zfscli.unmount(dataset)
    kept_snaps = [s.name for s in st.snapshots if s.createtxg > base.createtxg]
    if st.written:
        name = diverged_name(prefix, now)
        zfs.snapshot([f"{dataset}@{name}"])
        kept_snaps.append(name)
    faults.point("divergence.snapshotted")
    props = {k: v for k, v in zfs.local_props(dataset).items() if k not in NOT_CARRIED}
    zfscli.clone(f"{dataset}@{base.name}", tmp, {**props, **INERT})
    faults.point("divergence.cloned")
    zfs.promote(tmp)
    faults.point("divergence.promoted")
    result = _swap(dataset, tmp, prefix, node, now)
    result["snapshots"] = kept_snaps
    return result


def _empty_after(dataset: str, st, base, prefix: str, carry: tuple[str, ...]) -> list:
    """The snapshots after `base`, if they and the head hold nothing that
    `base` does not (no writes since, each `written` 0, none held or
    cloned) and each is a snapshot replication makes. Otherwise []: the
    divergence is real, or someone's chosen point in time, and is kept."""
    after = [s for s in st.snapshots if s.createtxg > base.createtxg]
    if (not after or st.modified or st.resume is not None or any(s.holds or s.clones for s in after)
            or not all(is_replication_snapshot(s.name, prefix) or carried(s.name, prefix, carry) for s in after)):
        return []
    facts = zfs.snapshot_props(dataset, [s.name for s in after], ["written", "guid"])
    ok = all(facts.get(s.name, {}).get("written") == 0 and facts[s.name].get("guid") == s.guid for s in after)
    return after if ok else []


def swap_pending(dataset: str, prefix: str) -> bool:
    """A swap clone exists: a run that kept a divergence was killed midway."""
    return zfs.exists(_tmp_name(dataset, prefix))


def finish_interrupted(dataset: str, prefix: str, node: str, now: dt.datetime | None = None) -> dict | None:
    """Finish or undo a swap a killed run left half done; None if there was none.

    Cheap when there is nothing to do (one existence check), so the
    receiver runs it before it tells a sender what D holds: a D missing
    between the two renames must not look like an empty target.
    """
    tmp = _tmp_name(dataset, prefix)
    if not swap_pending(dataset, prefix):
        return None
    now = now or dt.datetime.now(dt.timezone.utc)
    t = zfs.read_state(tmp)
    st = zfs.read_state(dataset)
    if st.exists and t.origin.startswith(dataset + "@"):
        # Killed after the clone, before the promote: the clone is inert and
        # was never mounted, so it holds nothing of its own.
        # A clone of a snapshot whose intent log held records has its ZIL
        # header reset at creation, so a bare one reads ~1 KiB written
        # (DatasetState.modified): up to one rewritten objset block is
        # allowed, no more, and it must still be read-only and unmounted.
        if (not t.readonly or t.mounted or t.written > BARE_CLONE_WRITTEN or t.snapshots
                or zfs.children(tmp)):
            raise ZfsError(f"{tmp} has data or snapshots of its own; it is not a bare swap clone: "
                           f"rename or destroy it by hand")
        zfs.destroy(tmp)
        logger.info(f"{dataset}: removed the swap clone {tmp} of an interrupted run; keeping the divergence again")
        return None
    if st.exists and st.origin.startswith(tmp + "@"):
        # Killed after the promote: D is already only the diverged part.
        logger.info(f"{dataset}: finishing an interrupted swap (divergence already split off at @"
                    f"{st.origin.split('@', 1)[1]})")
        return _swap(dataset, tmp, prefix, node, now)
    if not st.exists and not t.origin:
        # Killed between the two renames: D is kept already, T is the copy.
        zfscli.rename(tmp, dataset)
        logger.info(f"{dataset}: finished an interrupted swap ({tmp} renamed back to {dataset})")
        return {"kept": "", "base": "", "snapshots": [], "recovered": True}
    raise ZfsError(f"{tmp} exists and is not pvezfsha's own swap clone of {dataset}; rename or destroy it")


def _swap(dataset: str, tmp: str, prefix: str, node: str, now: dt.datetime) -> dict:
    st = zfs.read_state(dataset)
    kept = kept_name(dataset, prefix, now)
    base_name = st.origin.split("@", 1)[1] if "@" in st.origin else "?"
    t = zfs.read_state(tmp)
    base_guid = next((v.guid for v in t.snapshots if v.name == base_name), 0)
    if (t.written and t.newest is not None and t.newest.guid == base_guid and t.readonly and not t.mounted
            and t.written <= BARE_CLONE_WRITTEN):
        # The clone's ZIL header was reset at creation: record what that
        # left in `written`, so the planner does not read it as a write
        # (DatasetState.modified says why). Before the renames, so a run
        # killed after them has it too. Only while T is as the swap made
        # it: a figure that includes someone's writes would make every
        # later receive fail instead of keeping them.
        zfs.set_user_props(tmp, {ZIL_RESET_PROP: f"{base_guid:x}:{t.written}"})
    # Children belong with the live data, not with the kept state.
    for child in zfs.children(dataset):
        zfscli.rename(child, tmp + child[len(dataset):])
        faults.point("divergence.child-moved")
    # The kept state must never mount itself over anything, nor change.
    if st.mounted:
        zfscli.unmount(dataset)
    zfscli.set_props(dataset, INERT)
    zfs.set_user_props(dataset, {KEPT_PROP: f"base=@{base_name} guid={base_guid:x} "
                                            f"time={now:%Y-%m-%dT%H:%M:%SZ} node={node}"})
    zfscli.rename(dataset, kept)
    faults.point("divergence.renamed")
    zfscli.rename(tmp, dataset)
    logger.warning(f"{dataset}: diverged after @{base_name}; its own state is kept as {kept} "
                   f"(nothing was destroyed); replication continues from @{base_name}")
    return {"kept": kept, "base": base_name, "snapshots": [s.name for s in st.snapshots
                                                           if not s.name == base_name]}
