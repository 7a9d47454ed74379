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

`preflight` finds what would make a promotion fail (a sick pool, a
mountpoint that is taken, an encryption key that cannot be loaded) before a
takeover fences anything: a start refused then leaves the old primary and
the record as they were. What can still fail after the fence leaves the
dataset unmounted or unproven (a key that will not load changes nothing at
all), so the next pre-start on this node (HA's retry, or `pvezfsha
promote`) is a restart in place that finds it not writable and promotes
again.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import secrets
import shlex
import stat

from pvezfsha import zfs, zfscli
from pvezfsha.errors import ZfsError
from pvezfsha.log import logger
from pvezfsha.versions import HOLD_LAST, DatasetState, diverged_name, snapshot_name

EPOCH_PROP = "pvezfsha:epoch"
ROLE_PROP = "pvezfsha:role"
INERT = {"readonly": "on", "canmount": "noauto"}
# A degraded pool still writes; a suspended, faulted or unavailable one does not.
WRITABLE_HEALTH = ("ONLINE", "DEGRADED")


def _mounted_at(path: str) -> str | None:
    """What is mounted on `path` (source and type), from /proc/self/mountinfo."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                fields, tail = left.split(" "), right.split(" ")
                if len(fields) > 4 and len(tail) > 1 and _unescape(fields[4]) == path:
                    return f"{_unescape(tail[1])} ({tail[0]})"
    except OSError:
        pass
    return None


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def key_problem(dataset: str, props: dict[str, str] | None = None, *, load: bool = False) -> str | None:
    """None if the dataset's key is loaded, or loads from its keylocation
    (with load=False only checked, `zfs load-key -n`); else what to fix."""
    props = props or zfscli.key_facts(dataset)
    if props.get("encryption", "off") == "off" or props.get("keystatus") == "available":
        return None
    root, where = props.get("encryptionroot") or dataset, props.get("keylocation", "prompt")
    fix = f"zfs set keylocation=file:///<path> {shlex.quote(root)}"
    if where == "prompt":
        return (f"the encryption key of {root} is not loaded and its keylocation is prompt, which a "
                f"takeover cannot answer: load it by hand (zfs load-key {shlex.quote(root)}) or keep the key "
                f"in a file on this node ({fix})")
    if where.startswith("file://"):
        # What a keylocation names may sit where others write: never read a
        # FIFO (it would block) or anything but a regular file.
        path = where.removeprefix("file://")
        try:
            regular = stat.S_ISREG(os.stat(path).st_mode)
        except OSError as e:
            return (f"the encryption key of {root} cannot be loaded from {where} on this node "
                    f"({e.strerror}): put the key there, or point keylocation at it ({fix})")
        if not regular:
            return f"{path}, the keylocation of {root}, is not a regular file: put the key there ({fix})"
    try:
        zfscli.load_key(root, noop=not load)
    except ZfsError as e:
        detail = str(e).split(": ", 1)[-1]
        return (f"the encryption key of {root} cannot be loaded from {where} on this node ({detail}): "
                f"put the key there, or point keylocation at it ({fix})")
    return None


def preflight(dataset: str) -> list[str]:
    """What would make `promote` fail here, each with what to fix; checked
    before a takeover changes anything."""
    pool = dataset.split("/", 1)[0]
    problems = []
    try:
        pp = zfscli.pool_props(pool, ["health", "readonly"])
        if pp.get("health") not in WRITABLE_HEALTH:
            problems.append(f"pool {pool} is {pp.get('health')}: nothing on it can be written "
                            f"(see zpool status {pool})")
        elif pp.get("readonly") == "on":
            problems.append(f"pool {pool} is imported read-only: export it and import it again read-write")
        props = zfscli.key_facts(dataset, ["mountpoint", "overlay"])
    except ZfsError as e:
        return problems + [str(e)]
    if zfs.mountpoint(dataset) is None:
        problem = _mountpoint_problem(dataset, props.get("mountpoint", "none"), props.get("overlay"))
        if problem:
            problems.append(problem)
    key = key_problem(dataset, props)
    if key:
        problems.append(key)
    return problems


def _mountpoint_problem(dataset: str, mp: str, overlay: str | None) -> str | None:
    if not mp.startswith("/"):
        return (f"{dataset} has mountpoint={mp}, so it cannot be mounted for the container's bind mount: "
                f"zfs set mountpoint=<path> {shlex.quote(dataset)}")
    if (other := _mounted_at(mp)) is not None:
        return f"{mp}, the mountpoint of {dataset}, already has {other} mounted on it: unmount it"
    try:
        st = os.lstat(mp)
    except FileNotFoundError:
        return None          # zfs mount creates it
    except OSError as e:
        return f"{mp}, the mountpoint of {dataset}, cannot be examined: {e.strerror}"
    if not stat.S_ISDIR(st.st_mode):
        return f"{mp}, the mountpoint of {dataset}, is not a directory: move it away"
    if overlay == "off":
        try:
            with os.scandir(mp) as entries:
                busy = next(entries, None) is not None
        except OSError as e:
            return f"{mp}, the mountpoint of {dataset}, cannot be read: {e.strerror}"
        if busy:
            return f"{mp}, the mountpoint of {dataset}, is not empty and overlay=off: move its contents away"
    return None


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
    # A raw replica is held without its key, and mounting needs it. Asked of
    # `zfs get`, not of st.encrypted, and first, so that a key that will not
    # load changes nothing.
    problem = key_problem(dataset, load=True)
    if problem:
        raise ZfsError(f"{dataset}: {problem}")
    if st.resume is not None:
        logger.info(f"{dataset}: dropping an unfinished receive (it resumes from the new primary later)")
        zfs.abort_receive(dataset)
        st = zfs.read_state(dataset)
    if st.modified and st.readonly:
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
