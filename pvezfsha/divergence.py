"""Keep a diverged replica's own state aside, so replication can go on
without destroying anything.

A dataset D has diverged when it has snapshots after the last snapshot it
shares with the source, or unsnapshotted writes. An incremental receive then
needs D rolled back (`recv -F` would destroy the newer snapshots and writes,
which is how pvesr and syncoid lose a returning node's data). Instead:

  1. snapshot unsnapshotted writes as D@<prefix>-diverged_<time>;
  2. clone D@base to a sibling T, and promote T: T now owns the history up
     to and including @base, and D keeps only what came after it;
  3. rename D to D-<prefix>-diverged-<time>, and T to D.

Nothing is copied and nothing is destroyed. D is again an exact copy of the
base, ready for an incremental receive, and the diverged state sits next to
it, read-only and not auto-mounted, until an admin decides. Every step is
re-entrant: a run interrupted between steps is finished by the next one.
"""

from __future__ import annotations

import datetime as dt

from pvezfsha import zfs, zfscli
from pvezfsha.errors import ZfsError
from pvezfsha.log import logger
from pvezfsha.replica import INERT
from pvezfsha.versions import DatasetState, diverged_name

KEPT_PROP = "pvezfsha:diverged"   # on the kept dataset: base and time, for `status`


def _tmp_name(dataset: str, prefix: str) -> str:
    return f"{dataset}-{prefix}-swap"


def kept_name(dataset: str, prefix: str, when: dt.datetime) -> str:
    return f"{dataset}-{prefix}-diverged-{when.astimezone(dt.timezone.utc):%Y%m%dT%H%M%SZ}"


def keep_diverged(dataset: str, base_guid: int, prefix: str, node: str,
                  now: dt.datetime | None = None) -> dict:
    """Set D's diverged state aside; D ends as an unmodified copy of the base."""
    now = now or dt.datetime.now(dt.timezone.utc)
    tmp = _tmp_name(dataset, prefix)
    st = zfs.read_state(dataset)
    if not st.exists:
        raise ZfsError(f"{dataset}: does not exist")

    if zfs.exists(tmp):
        tmp_state = zfs.read_state(tmp)
        if st.origin.startswith(tmp + "@"):
            # Interrupted after the promote: D is already the diverged part.
            return _swap(dataset, tmp, st, prefix, node, now, base_guid)
        if tmp_state.origin.startswith(dataset + "@"):
            # Interrupted after the clone: the clone holds nothing of its own.
            zfs.destroy(tmp)
        else:
            raise ZfsError(f"{tmp} exists and is not pvezfsha's own swap clone; rename or destroy it")

    base = next((s for s in st.snapshots if s.guid == base_guid), None)
    if base is None:
        raise ZfsError(f"{dataset}: the common snapshot (guid {base_guid:x}) is gone")
    if st.resume is not None:
        zfs.abort_receive(dataset)
    if st.mounted:
        zfscli.unmount(dataset)
    kept_snaps = [s.name for s in st.snapshots if s.createtxg > base.createtxg]
    if st.written:
        name = diverged_name(prefix, now)
        zfs.snapshot([f"{dataset}@{name}"])
        kept_snaps.append(name)
    zfs.clone(tmp, f"{dataset}@{base.name}")
    zfs.promote(tmp)
    st = zfs.read_state(dataset)
    result = _swap(dataset, tmp, st, prefix, node, now, base_guid)
    result["snapshots"] = kept_snaps
    return result


def _swap(dataset: str, tmp: str, st: DatasetState, prefix: str, node: str,
          now: dt.datetime, base_guid: int) -> dict:
    kept = kept_name(dataset, prefix, now)
    base_name = st.origin.split("@", 1)[1] if "@" in st.origin else "?"
    zfscli.rename(dataset, kept)
    zfscli.rename(tmp, dataset)
    # The kept state must never mount itself over anything, nor change.
    zfscli.set_props(kept, INERT)
    zfscli.set_props(dataset, INERT)
    zfs.set_user_props(kept, {KEPT_PROP: f"base=@{base_name} guid={base_guid:x} "
                                          f"time={now:%Y-%m-%dT%H:%M:%SZ} node={node}"})
    logger.warning(f"{dataset}: diverged after @{base_name}; its own state is kept as {kept} "
                   f"(nothing was destroyed); replication continues from @{base_name}")
    return {"kept": kept, "base": base_name, "snapshots": [s.name for s in st.snapshots]}
