"""Turn a local dataset into the primary copy or back into an inert replica.

Promotion drops partial receive state (it resumes from the new primary
later), makes the dataset writable, mounts it and proves it: PVE's bind
mount only checks that the directory exists, so an unmounted dataset would
silently give the container an empty directory.

Neither direction ever destroys data. Unsnapshotted writes on a dataset
being promoted are snapshotted, never rolled back: a read-only dataset can
hold real writes (a primary fenced by an older pvezfsha, or made read-only
by hand), and they may exist nowhere else. Demotion snapshots what was
written since the last snapshot before it makes the dataset read-only, so
those writes are either sent (a handover) or kept as a divergence (fencing).
"""

from __future__ import annotations

import datetime as dt
import os
import secrets

from pvezfsha import zfs, zfscli
from pvezfsha.errors import ZfsError
from pvezfsha.log import logger
from pvezfsha.versions import HOLD_LAST, DatasetState, diverged_name, snapshot_name

EPOCH_PROP = "pvezfsha:epoch"
ROLE_PROP = "pvezfsha:role"
INERT = {"readonly": "on", "canmount": "noauto"}


def check_writable(dataset: str) -> str | None:
    """None if the dataset is mounted and a file can be created in it.

    The share's root is written by the container and its clients, so what
    is in it is hostile: the probe is a new name nobody can have prepared,
    created with O_EXCL (never follows a symlink, never opens a FIFO or an
    existing file) relative to the mount's directory opened without
    following links, and removed through the same directory.
    """
    mnt = zfs.mountpoint(dataset)
    if mnt is None:
        return f"{dataset} is not mounted"
    name = f".pvezfsha-write-check-{os.getpid()}-{secrets.token_hex(8)}"
    try:
        dfd = os.open(mnt, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as e:
        return f"{dataset} (mounted on {mnt}) cannot be opened: {e.strerror}"
    try:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_NONBLOCK, 0o600,
                     dir_fd=dfd)
        os.close(fd)
        os.unlink(name, dir_fd=dfd)
    except OSError as e:
        return f"{dataset} (mounted on {mnt}) is not writable: {e.strerror}"
    finally:
        os.close(dfd)
    return None


def promote(dataset: str, epoch: int, prefix: str = "pvezfsha") -> DatasetState:
    st = zfs.read_state(dataset)
    if not st.exists:
        raise ZfsError(f"{dataset} does not exist on this node")
    if st.resume is not None:
        logger.info(f"{dataset}: dropping an unfinished receive (it resumes from the new primary later)")
        zfs.abort_receive(dataset)
        st = zfs.read_state(dataset)
    if st.written and st.readonly:
        # Maybe mount noise, maybe the last writes of a fenced primary: which
        # one cannot be told, so they are kept, in place and in a snapshot of
        # their own that retention never prunes (`pvezfsha diverged` lists it).
        name = diverged_name(prefix, dt.datetime.now(dt.timezone.utc))
        zfs.snapshot([f"{dataset}@{name}"])
        logger.warning(f"{dataset}: {st.written} bytes written since its newest snapshot while read-only; "
                       f"kept (snapshot @{name}), not rolled back")
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


def demote(dataset: str, why: str = "", prefix: str = "pvezfsha") -> bool:
    """Unmount, make read-only and snapshot what was written since the last
    snapshot; True if anything had to change."""
    st = zfs.quick_state(dataset)
    if not st.exists:
        return False
    changed = False
    if st.mounted:
        zfscli.unmount(dataset)
        changed = True
    if not st.readonly or st.canmount != "noauto":
        zfscli.set_props(dataset, INERT)
        changed = True
    if changed:
        # `written` counts synced txgs only: flush the last writes first. A
        # replication-named snapshot, so a handover sends it as the final one
        # and a fenced node's next sync sees it as divergence and keeps it.
        zfs.sync_pool(dataset.split("/", 1)[0])
        q = zfs.quick_state(dataset)
        if q.written:
            name = snapshot_name(prefix, dt.datetime.now(dt.timezone.utc))
            if zfs.quick_state(dataset, [name]).guids.get(name) is not None:
                name = snapshot_name(prefix, dt.datetime.now(dt.timezone.utc), taken={name})
            zfs.snapshot([f"{dataset}@{name}"])
            logger.info(f"{dataset}: snapshotted {q.written} bytes written since the last snapshot as @{name}")
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
