"""Plain data describing one side of a replication: a dataset's snapshots,
bookmarks, holds and resume state.

Identity is the GUID and order is createtxg; names are for people. These
types cross the ssh session as JSON, so they convert to and from dicts.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import asdict, dataclass, field, replace

# Hold tags and bookmark names pvezfsha owns.
HOLD_LAST = "pvezfsha-last"          # standby: the last received snapshot
HOLD_STEP = "pvezfsha-step"          # source: from/to of a transfer in flight
CURSOR = "cursor"                    # source bookmark <prefix>_cursor_<node>_<guid>
DIVERGED = "diverged"                # <prefix>-diverged_<ts>: kept, never pruned
# A keylocation a standby takes from its primary: a key file or an https
# URL (not prompt, which no takeover can answer, nor plain http), with no
# control characters or backslashes, which shell tools would interpret.
KEYLOCATION = re.compile(r"(file:///|https://)[^\x00-\x20\x7f\\]{1,4000}")


@dataclass(frozen=True)
class Version:
    """A snapshot (`fs@name`) or bookmark (`fs#name`), identified by guid."""

    name: str          # short name, after @ or #
    guid: int
    createtxg: int
    creation: int      # unix seconds
    bookmark: bool = False
    holds: tuple[str, ...] = ()
    clones: int = 0    # datasets cloned from this snapshot (a kept divergence): it cannot be destroyed

    def full(self, dataset: str) -> str:
        return f"{dataset}{'#' if self.bookmark else '@'}{self.name}"


@dataclass(frozen=True)
class ResumeToken:
    """The decoded receive_resume_token of an interrupted receive."""

    token: str
    toguid: int
    fromguid: int | None
    toname: str
    obj: int
    offset: int
    bytes: int
    flags: tuple[str, ...]  # lzc send flags the stream was started with


ZIL_RESET_PROP = "pvezfsha:zil-reset"   # see DatasetState.modified


@dataclass(frozen=True)
class DatasetState:
    """Everything the planner needs about one dataset, read in one call."""

    dataset: str
    exists: bool
    snapshots: tuple[Version, ...] = ()     # sorted by createtxg
    bookmarks: tuple[Version, ...] = ()     # sorted by createtxg
    resume: ResumeToken | None = None
    written: int = 0                        # bytes written since the newest snapshot
    referenced: int = 0
    readonly: bool = False
    canmount: str = "on"
    mounted: bool = False
    encrypted: bool = False
    origin: str = ""                        # fs@snap when the dataset is a clone
    props: dict[str, str] = field(default_factory=dict)   # pvezfsha:* user properties

    @property
    def newest(self) -> Version | None:
        return self.snapshots[-1] if self.snapshots else None

    @property
    def modified(self) -> int:
        """Bytes written since the newest snapshot, as `zfs receive` counts
        them: a head that differs from that snapshot only by a ZIL header
        reset is unmodified.

        Why: a clone of a snapshot taken while the origin's intent log held
        records (an NFS server's fsync'd writes) gets its ZIL header zeroed
        at creation (dsl_dataset_zero_zil in dsl_dataset_create_sync), which
        rewrites its root block, so `written` reads about 1 KiB on a clone
        nobody touched. `zfs receive` ignores exactly that difference
        (dsl_dataset_modified_since_snap: "It may be that only the ZIL
        differs, because it was reset in the head. Don't count that as being
        modified."), but no property exposes it. So the divergence swap,
        which makes such a clone, records `written` as it left it, against
        the snapshot it cloned (ZIL_RESET_PROP = "<guid hex>:<bytes>"): while
        both still match, nothing was written. Any real write changes
        `written`, and a receive moves the newest snapshot.
        """
        mark = self.props.get(ZIL_RESET_PROP, "")
        if self.written and self.newest is not None and mark == f"{self.newest.guid:x}:{self.written}":
            return 0
        return self.written

    def by_guid(self) -> dict[int, Version]:
        # A snapshot wins over a bookmark of the same guid: it can be a
        # source for anything, a bookmark only for a single -i step.
        out = {b.guid: b for b in self.bookmarks}
        out.update({s.guid: s for s in self.snapshots})
        return out

    def plus(self, snap: Version) -> "DatasetState":
        """This state with a snapshot just taken (after every other version)."""
        top = max((v.createtxg for v in (*self.snapshots, *self.bookmarks)), default=0)
        new = Version(snap.name, snap.guid, top + 1, snap.creation)
        return replace(self, snapshots=(*self.snapshots, new), written=0)

    def minus(self, gone: set[int]) -> "DatasetState":
        return replace(self, snapshots=tuple(v for v in self.snapshots if v.guid not in gone))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DatasetState":
        d = dict(d)
        d["snapshots"] = tuple(Version(**{**v, "holds": tuple(v.get("holds", ()))}) for v in d.get("snapshots", ()))
        d["bookmarks"] = tuple(Version(**{**v, "holds": tuple(v.get("holds", ()))}) for v in d.get("bookmarks", ()))
        if d.get("resume"):
            r = d["resume"]
            d["resume"] = ResumeToken(**{**r, "flags": tuple(r["flags"])})
        return cls(**d)


def newest_replication(state: DatasetState, prefix: str) -> Version | None:
    return next((s for s in reversed(state.snapshots) if is_replication_snapshot(s.name, prefix)), None)


def cursor_guid(state: DatasetState, prefix: str, node: str) -> int | None:
    """The guid the standby `node` is known to hold: its newest cursor's."""
    cursors = [b for b in state.bookmarks if cursor_node(b.name, prefix) == node]
    return max(cursors, key=lambda b: b.createtxg).guid if cursors else None


def snapshot_name(prefix: str, when: dt.datetime, taken: set[str] = frozenset()) -> str:
    """<prefix>_<UTC time>, with _2, _3... if that second is already taken."""
    base = name = f"{prefix}_{when.astimezone(dt.timezone.utc):%Y%m%dT%H%M%SZ}"
    n = 1
    while name in taken:
        n += 1
        name = f"{base}_{n}"
    return name


def is_replication_snapshot(name: str, prefix: str) -> bool:
    return re.fullmatch(re.escape(prefix) + r"_\d{8}T\d{6}Z(_\d+)?", name) is not None


def cursor_name(prefix: str, node: str, guid: int) -> str:
    return f"{prefix}_{CURSOR}_{node}_{guid:016x}"


def cursor_node(name: str, prefix: str) -> str | None:
    m = re.fullmatch(re.escape(prefix) + "_" + CURSOR + r"_(.+)_[0-9a-f]{16}", name)
    return m.group(1) if m else None


def diverged_name(prefix: str, when: dt.datetime) -> str:
    return f"{prefix}-{DIVERGED}_{when.astimezone(dt.timezone.utc):%Y%m%dT%H%M%SZ}"


# On a standby's copy of another tool's snapshot that pvezfsha received
# (planner.carried): only such copies follow the primary's pruning. A
# standby's own history (an old primary's sanoid snapshots, a seeded copy's)
# is never pvezfsha's to destroy.
CARRIED_PROP = "pvezfsha:carried"


def step_hold(node: str) -> str:
    return f"{HOLD_STEP}-{node}"
