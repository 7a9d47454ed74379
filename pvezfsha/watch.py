"""Which datasets were written to, as it happens: inotify on their trees, and
the `written` property for those that cannot be watched.

The continuous-replication agent starts a cycle a few seconds after writes
to a dataset settle (debounce.py); TreeWatcher tells it which datasets saw
writes. An inotify watch covers one directory, not a tree, so every
directory gets one, and new directories get theirs as they appear.

The files in a share are hostile input (any client of the file server makes
them), so the walk:
* never follows a symlink: below a dataset's root (opened by its mountpoint's
  path, which only the host's administrator controls), a directory is opened
  by its one name, relative to its parent's open descriptor, with O_NOFOLLOW.
  Never by a path of several names: O_NOFOLLOW covers only the last, so a
  symlink put in the place of a directory higher up would be followed, out
  of the dataset (or into a hung mount, where open() blocks). It is watched
  through that descriptor (/proc/self/fd/N), so the directory watched is the
  one checked, whatever is renamed in between;
* never leaves the dataset: a directory on another device (a child dataset,
  another mount) is not watched, and the root's .zfs is skipped (walking it
  would mount every snapshot);
* never blocks: O_DIRECTORY|O_NONBLOCK, so a FIFO fails instead of hanging.

A directory is kept as (its parent's watch, its name), not as a path: a
renamed directory is one update, and the names below it follow. No
descriptor is kept between walks: one per directory would run out (a tree
can have 100,000 directories; the limit is 1024 by default), and an open
root would keep its dataset from being unmounted. So the directory of an
event is reached again name by name from the root, along the names the
events read so far tell. When a rename is not read yet, that chain is out
of date: the open fails (or reaches whatever took the old name, which is
in the dataset all the same), and the directory renamed is caught up with
when it is met under its new name: at its IN_MOVED_TO, or in the walk of a
new directory it was moved into. Its whole subtree is then walked again, as
the directories made in it meanwhile may have been missed.

Watches cost kernel memory and are limited per user
(fs.inotify.max_user_watches). A dataset whose tree does not fit, under that
limit or the optional `budget`, is polled instead (`polled`, WrittenPoller):
its watches are released for the others, and its walk stops at once, so a
tree of millions of directories costs no minutes of start-up. So is a tree
deeper than _MAX_DEPTH directories.

Walks run on the caller's thread (the agent's main loop, which must feed
the systemd watchdog), and tens of thousands of directories on a cold cache
take long: `tick` is called every _TICK_EVERY directories opened.

When the kernel's event queue overflows, events are lost: every dataset is
reported changed, and the trees are walked again (directories made
meanwhile are not watched yet), but at most once per RESCAN_INTERVAL, as
anyone writing to a share can overflow the queue at will.
"""

from __future__ import annotations

import errno
import math
import os
import stat
import time
from collections.abc import Callable
from contextlib import closing

from pvezfsha import zfs
from pvezfsha._vendor.inotify_simple import INotify, flags
from pvezfsha.log import logger

# IN_MODIFY as well as IN_CLOSE_WRITE: a file server keeps files open while
# it writes them (smbd for as long as the client has the file open, knfsd
# in its file cache), so a close may come long after the write, or never
# before the next one. inotify merges identical unread events, and the
# agent only needs to know that a tree changed, so the extra events are cheap.
EVENTS = (flags.CREATE | flags.MODIFY | flags.CLOSE_WRITE | flags.MOVED_FROM | flags.MOVED_TO | flags.DELETE
          | flags.ATTRIB | flags.DELETE_SELF | flags.MOVE_SELF)
# No IN_DONT_FOLLOW: a watch is added through /proc/self/fd/N, a link that
# must be followed to reach the directory, which was opened with O_NOFOLLOW.
MASK = EVENTS | flags.ONLYDIR | flags.EXCL_UNLINK

_OPEN = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
# A directory gone, or replaced by a file or a symlink, since it was listed.
_VANISHED = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP)
# A deeper tree is polled: each event re-opens the chain of its directory
# from the root, and no real tree is this deep (its paths would be past
# PATH_MAX). Also the bound past which a chain of parents is a cycle.
_MAX_DEPTH = 2048
# Descriptors a walk keeps open: those of the deepest directories being
# listed (and its first); the others are opened again when their turn comes.
_FDS = 32
# The agent needs a tick at least every 500 directories; opening one can
# take a disk seek on a cold cache.
_TICK_EVERY = 100
# Seconds between two rescans after lost events.
RESCAN_INTERVAL = 60.0
_clock = time.monotonic
SYSCTL = "fs.inotify.max_user_watches"


class _Fallback(Exception):
    """The dataset's tree cannot be watched: poll it instead. `limit`: a
    watch limit was reached (raising it would help)."""

    def __init__(self, reason: str, limit: bool = False):
        super().__init__(reason)
        self.limit = limit


class _Dir:
    __slots__ = ("dataset", "parent", "name")

    def __init__(self, dataset: str, parent: int | None, name: str):
        self.dataset = dataset
        self.parent = parent        # the parent directory's watch; None for a root
        self.name = name            # a root's name is its path


class _Frame:
    """A directory of a walk whose subdirectories are being walked."""
    __slots__ = ("wd", "name", "fd", "ino", "depth", "subs", "rescan")

    def __init__(self, wd: int, name: str, fd: int | None, ino: int, depth: int, subs: list[str], rescan: bool):
        self.wd = wd
        self.name = name
        self.fd = fd                # None: closed to spare descriptors
        self.ino = ino              # to know it is the same directory when opened again
        self.depth = depth          # the root's is 0
        self.subs = subs            # the names of its subdirectories left to walk
        self.rescan = rescan        # walk them even if watched already


class _Walk:
    __slots__ = ("frames", "seen", "pending")

    def __init__(self):
        self.frames: list[_Frame] = []
        self.seen: set[int] = set()
        self.pending = 0            # subdirectories listed, not walked yet


def _kernel_limit() -> int | None:
    try:
        with open("/proc/sys/fs/inotify/max_user_watches", encoding="ascii") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


class TreeWatcher:
    """`roots`: the mountpoint of each dataset. `budget`: the most watches
    to hold. `tick`: called every so many directories a walk opens (at most
    500), to keep a watchdog fed through a long one."""

    def __init__(self, roots: dict[str, str], budget: int | None = None,
                 tick: Callable[[], None] | None = None):
        self.roots = {ds: os.path.normpath(path) for ds, path in roots.items()}
        self.budget = budget
        self.tick = tick
        self.polled: set[str] = set()
        self._inotify = INotify()
        self._dirs: dict[int, _Dir] = {}
        self._dev: dict[str, int] = {}
        self._changed: set[str] = set()
        self._overflowed = False            # events were lost since the last rescan
        self._last_rescan: float | None = None
        self._opened = 0                    # directories opened since the last tick
        self._kernel = _kernel_limit()
        # Past this many, a walk cannot fit: it stops before listing more.
        self._ceiling = min(n for n in (budget, self._kernel, math.inf) if n is not None)

    # -- the API --

    def start(self) -> None:
        """Walk every tree, watching each directory."""
        for dataset in self.roots:
            self._watch_tree(dataset)

    def fileno(self) -> int:
        return self._inotify.fileno()

    @property
    def watched(self) -> int:
        return len(self._dirs)

    def read(self, timeout_ms: int | None = None) -> set[str]:
        """The datasets whose trees changed, waiting up to `timeout_ms` for
        one (None: until one does; 0: not at all). A dataset that just fell
        back to polling is among them: what it missed is not known."""
        deadline = None if timeout_ms is None else time.monotonic() + timeout_ms / 1000
        self._rescan_if_due()
        while True:
            if self._changed:       # already known (a fallback, a rescan): no waiting
                wait = 0
            else:
                wait = None if deadline is None else max(0, math.ceil((deadline - time.monotonic()) * 1000))
            for event in self._inotify.read(timeout=wait):
                self._handle(event)
            self._rescan_if_due()
            if self._changed or wait == 0:
                break
        changed, self._changed = self._changed, set()
        return changed

    @property
    def next_rescan(self) -> float | None:
        """When (time.monotonic()) the rescan put off after lost events is
        due; the next read() from then does it. None: none is put off."""
        if not self._overflowed:
            return None
        return _clock() if self._last_rescan is None else self._last_rescan + RESCAN_INTERVAL

    def paths(self) -> set[str]:
        """The directories watched now, by the names the events read so far
        tell (a rename not read yet still shows the old name)."""
        return {p for p in map(self._path_of, self._dirs) if p is not None}

    def close(self) -> None:
        self._inotify.close()
        self._dirs.clear()

    def __enter__(self) -> TreeWatcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- events --

    def _handle(self, event) -> None:
        if event.mask & flags.Q_OVERFLOW:
            # Which datasets changed is not known; the rescan may have to wait.
            self._overflowed = True
            self._changed.update(self.roots)
            return
        d = self._dirs.get(event.wd)
        if d is None:           # a watch already dropped: its last events still come
            return
        if event.mask & flags.IGNORED:
            self._drop(event.wd)
            return
        self._changed.add(d.dataset)
        if event.mask & (flags.DELETE_SELF | flags.UNMOUNT):
            self._drop(event.wd)
        elif event.mask & flags.ISDIR and event.mask & (flags.CREATE | flags.MOVED_TO):
            # Walked, not just watched: subdirectories may have been made
            # before the watch existed. A directory moved here is walked to
            # the bottom even if watched already: an event for what was
            # made in it since may have come with its old name, and missed.
            try:
                self._walk(d.dataset, event.wd, event.name, rescan=bool(event.mask & flags.MOVED_TO))
            except _Fallback as e:
                self._fall_back(d.dataset, e)

    def _drop(self, wd: int) -> None:
        d = self._dirs.pop(wd, None)
        if d is not None and d.parent is None and d.dataset not in self.polled:
            self._fall_back(d.dataset, _Fallback(f"its root {d.name} is gone (unmounted or removed)"))

    def _rescan_if_due(self) -> None:
        if self._overflowed and (self._last_rescan is None or _clock() - self._last_rescan >= RESCAN_INTERVAL):
            self._rescan()

    def _rescan(self) -> None:
        """After lost events: which datasets changed is unknown, and new
        directories may be unwatched, so every tree is walked again."""
        self._overflowed = False
        self._changed.update(self.roots)
        for dataset in self.roots:
            self._watch_tree(dataset, rescan=True)
        # From its end: however long rescans take, they leave time between them.
        self._last_rescan = _clock()

    # -- walking --

    def _watch_tree(self, dataset: str, rescan: bool = False) -> None:
        if dataset in self.polled:
            return
        try:
            seen = self._walk(dataset, None, self.roots[dataset], rescan)
        except _Fallback as e:
            self._fall_back(dataset, e)
            return
        if rescan:
            # Watches whose IN_IGNORED was lost with the overflow.
            for wd in [wd for wd, d in self._dirs.items() if d.dataset == dataset and wd not in seen]:
                self._forget(wd)

    def _walk(self, dataset: str, parent: int | None, name: str, rescan: bool = False) -> set[int]:
        """Watch directory `name` of `parent` (None: the root, at path
        `name`), and every directory below it not watched yet. With
        `rescan`, every directory below is listed, watched or not; so is the
        subtree of a directory met under a new name (moved). The watches met."""
        walk = _Walk()
        if parent is None:
            opened, depth = self._open(dataset, None, None, name, root=True), 0
        else:
            chain = self._chain(parent)
            parent_fd = None if chain is None else self._open_chain(dataset, chain)
            if parent_fd is None:       # renamed or gone, or a chain too long
                return walk.seen
            try:
                opened, depth = self._open(dataset, parent_fd, parent, name), len(chain)
            finally:
                os.close(parent_fd)
        if opened is None:
            return walk.seen
        frames = walk.frames
        try:
            self._enter(dataset, walk, parent, name, *opened, depth, rescan)
            while frames:
                top = frames[-1]
                if not top.subs:
                    frames.pop()
                    if top.fd is not None:
                        os.close(top.fd)
                    continue
                if top.fd is None and not self._reopen(dataset, frames):
                    # Renamed or gone since it was listed: met under its new
                    # name, it is walked again then.
                    walk.pending -= len(top.subs)
                    frames.pop()
                    continue
                sub = top.subs.pop()
                walk.pending -= 1
                opened = self._open(dataset, top.fd, top.wd, sub)
                if opened is not None:
                    self._enter(dataset, walk, top.wd, sub, *opened, top.depth + 1, top.rescan)
        finally:
            for f in frames:
                if f.fd is not None:
                    os.close(f.fd)
        return walk.seen

    def _enter(self, dataset: str, walk: _Walk, parent: int | None, name: str, fd: int, ino: int,
               depth: int, rescan: bool) -> None:
        """Watch the open directory `fd`, and list it if it is to be walked.
        Takes `fd` over."""
        try:
            if depth > _MAX_DEPTH:
                raise _Fallback(f"its tree is deeper than {_MAX_DEPTH} directories")
            wd, new, moved = self._watch(dataset, parent, name, fd)
            if wd in walk.seen:                 # the same directory twice: a bind mount
                return
            walk.seen.add(wd)
            if not (new or moved or rescan):    # already watched, with its subtree
                return
            rescan = rescan or moved
            subs = []
            with closing(_subdirs(fd, root=parent is None)) as names:
                for sub in names:
                    subs.append(sub)
                    walk.pending += 1
                    if not rescan and self.watched + walk.pending > self._ceiling:
                        raise _Fallback(self._too_many(), limit=True)
            if not subs:
                return
            walk.frames.append(_Frame(wd, name, fd, ino, depth, subs, rescan))
            fd = None
            # Past _FDS deep, the shallowest open one but the first is closed.
            frames, old = walk.frames, len(walk.frames) - 1 - _FDS
            if old >= 1 and frames[old].fd is not None:
                os.close(frames[old].fd)
                frames[old].fd = None
        finally:
            if fd is not None:
                os.close(fd)

    def _reopen(self, dataset: str, frames: list[_Frame]) -> bool:
        """Open the last frame's directory again, from the deepest frame
        still open, name by name; False if it is no longer there."""
        base = len(frames) - 2
        while frames[base].fd is None:      # the first is never closed
            base -= 1
        fd = frames[base].fd
        for i in range(base + 1, len(frames)):
            try:
                opened = self._open(dataset, fd, frames[i - 1].wd, frames[i].name)
            finally:
                if i - 1 != base:
                    os.close(fd)
            if opened is None:
                return False
            fd, ino = opened
            if ino != frames[i].ino:        # another directory took the name
                os.close(fd)
                return False
        frames[-1].fd = fd
        return True

    def _open_chain(self, dataset: str, chain: list[tuple[int, str]]) -> int | None:
        """A watched directory, opened from its dataset's root along
        `chain` (_chain), one name at a time; None if one is not there."""
        fd = None
        for i, (_, name) in enumerate(chain):
            try:
                opened = self._open(dataset, fd, chain[i - 1][0] if i else None, name)
            finally:
                if fd is not None:
                    os.close(fd)
            if opened is None:
                return None
            fd = opened[0]
        return fd

    def _open(self, dataset: str, dir_fd: int | None, parent: int | None, name: str,
              root: bool = False) -> tuple[int, int] | None:
        """Directory `name` of the open directory `dir_fd` (watched as
        `parent`), or with `dir_fd` None the dataset's root at path `name`:
        open, with its inode number, if it is still a directory on the
        dataset's device. None if it is not, or vanished. With `root`, the
        root is opened to be walked: failing to is falling back to polling,
        and its device is the dataset's."""
        if dir_fd is not None and ("/" in name or name in ("", ".", "..")):
            return None                 # never so from the kernel; one name, down, only
        self._opened += 1
        if self._opened >= _TICK_EVERY:
            self._opened = 0
            if self.tick is not None:
                self.tick()
        try:
            fd = _open_dir(name, dir_fd)
        except OSError as e:
            if e.errno in _VANISHED and not root:
                return None
            # Any other error (EACCES, EMFILE): writes below it would go
            # unseen, so the whole dataset is polled.
            raise _Fallback(f"cannot open {self._display(dir_fd, parent, name)!r}: {e.strerror}") from None
        try:
            st = os.fstat(fd)
        except OSError as e:
            os.close(fd)
            raise _Fallback(f"cannot stat {self._display(dir_fd, parent, name)!r}: {e.strerror}") from None
        if root:
            self._dev[dataset] = st.st_dev
        elif st.st_dev != self._dev.get(dataset) or not stat.S_ISDIR(st.st_mode):
            os.close(fd)
            return None
        return fd, st.st_ino

    def _display(self, dir_fd: int | None, parent: int | None, name: str) -> str:
        """For messages only: a path, as the events read so far tell."""
        if dir_fd is None or parent is None:
            return name
        return os.path.join(self._path_of(parent) or "?", name)

    def _watch(self, dataset: str, parent: int | None, name: str, fd: int) -> tuple[int, bool, bool]:
        """The directory's watch, whether it is a new one, and whether it
        was known under another parent or name (moved)."""
        try:
            wd = self._inotify.add_watch(f"/proc/self/fd/{fd}", MASK)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise _Fallback("the kernel's per-user limit of inotify watches is reached", limit=True) from None
            raise _Fallback(f"cannot watch {name!r}: {e.strerror}") from None
        d = self._dirs.get(wd)
        if d is None:
            # Counted once added: the same directory met again costs nothing.
            if self.budget is not None and self.watched >= self.budget:
                self._forget(wd)
                raise _Fallback(f"the watch budget of {self.budget} is reached", limit=True)
            self._dirs[wd] = _Dir(dataset, parent, name)
            return wd, True, False
        if (d.parent, d.name) != (parent, name) and d.dataset == dataset and not self._is_below(parent, wd):
            d.parent, d.name = parent, name     # renamed: met again under its new name
            return wd, False, True
        return wd, False, False

    def _is_below(self, wd: int | None, ancestor: int) -> bool:
        for _ in range(_MAX_DEPTH + 2):
            if wd is None:
                return False
            if wd == ancestor:
                return True
            d = self._dirs.get(wd)
            wd = d.parent if d else None
        return True

    def _chain(self, wd: int) -> list[tuple[int, str]] | None:
        """(watch, name) of the directory and its ancestors, root first, as
        the events read so far tell."""
        chain = []
        for _ in range(_MAX_DEPTH + 1):
            d = self._dirs.get(wd)
            if d is None:               # an ancestor dropped: this one is going too
                return None
            chain.append((wd, d.name))
            if d.parent is None:
                chain.reverse()
                return chain
            wd = d.parent
        return None

    def _path_of(self, wd: int) -> str | None:
        chain = self._chain(wd)
        return None if chain is None else os.path.join(*(name for _, name in chain))

    # -- falling back --

    def _too_many(self) -> str:
        if self.budget is not None and self.budget == self._ceiling:
            return f"its tree has more directories than the watch budget of {self.budget}"
        return f"its tree has more directories than {SYSCTL} ({self._kernel})"

    def _fall_back(self, dataset: str, why: _Fallback) -> None:
        if dataset in self.polled:
            return
        mine = [wd for wd, d in self._dirs.items() if d.dataset == dataset]
        total = self.watched
        for wd in mine:
            self._forget(wd)
        self.polled.add(dataset)
        self._changed.add(dataset)
        msg = (f"{dataset}: polled, not watched: {why}; stopped after watching {len(mine)} of its "
               f"directories ({total} watched in all)")
        if why.limit:
            msg += f"; to watch it, raise sysctl {SYSCTL} (now {self._kernel})"
            if self.budget is not None:
                msg += f" and the watch budget ({self.budget})"
        logger.warning(msg)

    def _forget(self, wd: int) -> None:
        self._dirs.pop(wd, None)
        try:
            self._inotify.rm_watch(wd)
        except OSError:     # EINVAL: the kernel dropped it already, with its directory
            pass


def _open_dir(name: str, dir_fd: int | None = None) -> int:
    # O_NOATIME: listing every directory must not make the dataset look
    # written to (atime=on); only the owner or CAP_FOWNER may ask for it.
    try:
        return os.open(name, _OPEN | os.O_NOATIME, dir_fd=dir_fd)
    except PermissionError:
        return os.open(name, _OPEN, dir_fd=dir_fd)


def _subdirs(fd: int, root: bool):
    """Names of the directories in the open directory `fd`; symlinks are not."""
    with os.scandir(fd) as entries:
        for entry in entries:
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                continue
            if is_dir and not (root and entry.name == ".zfs"):
                yield entry.name


class WrittenPoller:
    """For datasets TreeWatcher cannot watch: the ones whose `written`
    (bytes written since their last snapshot) changed since the last poll.

    `written` only counts synced transaction groups, so a write shows up
    within one txg (5 s by default). A value of 0 is "nothing since the last
    snapshot": a snapshot taken meanwhile, not a write."""

    def __init__(self, datasets: list[str], read=zfs.written_many):
        self.datasets = list(datasets)
        self._read = read
        self._last: dict[str, int] | None = None

    def poll(self) -> set[str]:
        """Changed datasets; the first poll only records. ZfsError propagates."""
        now = self._read(self.datasets)
        last, self._last = self._last, now
        if last is None:
            return set()
        return {ds for ds, written in now.items() if written and written != last.get(ds)}

    def reset(self) -> None:
        """Make the next poll compare every dataset's `written` with 0. For
        when a cycle that snapshotted them is done: the snapshot reset
        `written`, so a write as large as what the last poll saw would
        otherwise look like no change."""
        self._last = {ds: 0 for ds in self.datasets}
