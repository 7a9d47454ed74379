"""Turn a local dataset into the primary copy or back into an inert replica.

Promotion drops what a standby may hold beyond its newest complete snapshot
(partial receive state; unsnapshotted changes, which on a read-only replica
can only come from mounts), makes it writable, mounts it and proves it:
PVE's bind mount only checks that the directory exists, so an unmounted
dataset would silently give the container an empty directory.
"""

from __future__ import annotations

import os

from pvezfsha import zfs, zfscli
from pvezfsha.errors import ZfsError
from pvezfsha.log import logger
from pvezfsha.versions import HOLD_LAST, DatasetState

EPOCH_PROP = "pvezfsha:epoch"
ROLE_PROP = "pvezfsha:role"
INERT = {"readonly": "on", "canmount": "noauto"}


def check_writable(dataset: str) -> str | None:
    """None if the dataset is mounted and a file can be created in it."""
    mnt = zfs.mountpoint(dataset)
    if mnt is None:
        return f"{dataset} is not mounted"
    probe = os.path.join(mnt, ".pvezfsha-write-check")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        return f"{dataset} (mounted on {mnt}) is not writable: {e.strerror}"
    return None


def promote(dataset: str, epoch: int) -> DatasetState:
    st = zfs.read_state(dataset)
    if not st.exists:
        raise ZfsError(f"{dataset} does not exist on this node")
    if st.resume is not None:
        logger.info(f"{dataset}: dropping an unfinished receive (it resumes from the new primary later)")
        zfs.abort_receive(dataset)
        st = zfs.read_state(dataset)
    if st.written and st.newest and st.readonly:
        # A read-only replica only changes when something mounts it; that is
        # not data, and an incremental from here needs the snapshot state.
        logger.info(f"{dataset}: rolling back {st.written} bytes of mount noise to @{st.newest.name}")
        if st.mounted:
            zfscli.unmount(dataset)
        zfs.rollback_to(dataset, f"{dataset}@{st.newest.name}")
    # The last-received hold only protects a standby's base; a primary prunes
    # by its cursors instead.
    zfs.release({f"{dataset}@{s.name}": [HOLD_LAST] for s in st.snapshots if HOLD_LAST in s.holds})
    zfscli.set_props(dataset, {"readonly": "off", "canmount": "on"})
    if zfs.mountpoint(dataset) is None:
        zfscli.mount(dataset)
    zfs.set_user_props(dataset, {EPOCH_PROP: str(epoch), ROLE_PROP: "primary"})
    problem = check_writable(dataset)
    if problem:
        raise ZfsError(problem)
    return zfs.read_state(dataset)


def demote(dataset: str, why: str = "") -> bool:
    """Unmount and make read-only; True if anything had to change."""
    st = zfs.read_state(dataset)
    if not st.exists:
        return False
    changed = False
    if st.mounted:
        zfscli.unmount(dataset)
        changed = True
    if not st.readonly or st.canmount != "noauto":
        zfscli.set_props(dataset, INERT)
        changed = True
    if st.props.get(ROLE_PROP) != "standby":
        zfs.set_user_props(dataset, {ROLE_PROP: "standby"})
    if changed:
        logger.warning(f"{dataset}: demoted to an inert replica (unmounted, readonly){': ' + why if why else ''}")
    return changed


def epoch_of(state: DatasetState | zfs.Quick) -> int:
    try:
        return int(state.props.get(EPOCH_PROP, "0"))
    except ValueError:
        return 0
