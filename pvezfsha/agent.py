"""`pvezfsha agent`: continuous mode, a cycle seconds after writes settle.

The third entry point, beside the timer (sync.py) and the hook (hook.py);
all three run the same cycle (cycle.sync_container) under the same
per-dataset locks, so the agent and the timer never work on a dataset at
the same time. The timer stays as the safety net.

For each container that sets `continuous = true` and whose primary this
node is, the agent watches the datasets' trees with inotify (watch.py) and
runs a cycle `quiet` seconds after writes stop, at most `max_delay` after
the first one, never more often than `min_interval` (debounce.py). A
dataset it cannot watch (the inotify budget, not mounted) has its `written`
property read instead, one channel program per pool every few seconds.

Roles: the hook hands a start over through a spool directory
(/run/pvezfsha/handoff/<ctid>, watched with inotify), so a new primary
starts replicating at once. pmxcfs is FUSE and inotify does not see other
nodes' changes there, so the record and .vmlist are also stat'ed every few
seconds and read again when they changed. A role is never taken from a
record read without quorum; a node that loses quorum keeps watching (the
writes must not be forgotten) but runs no cycle until quorum is back.

Idle, the agent blocks in select() on its inotify descriptors, wakes every
few seconds for the cheap role check, takes no snapshot and holds no ssh
session (sessions.py closes them after `keep_warm` seconds).

The cycles run one at a time on a worker thread, so the main loop (and
the systemd watchdog it feeds) stays responsive during a transfer that
takes hours; a stalled transfer is bounded by `stall_timeout` as always.
"""

from __future__ import annotations

import os
import queue
import select
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from pvezfsha import observe, sdnotify
from pvezfsha.cluster import Cluster
from pvezfsha.config import Config, Container
from pvezfsha.cycle import SyncContext, sync_container
from pvezfsha.debounce import Debouncer
from pvezfsha.units import human_bytes
from pvezfsha.errors import PvezfshaError
from pvezfsha.handoff import claim_agent, handoff_dir, take, waiting
from pvezfsha.log import logger
from pvezfsha.record_store import RecordError, RecordStore
from pvezfsha.role import role_of
from pvezfsha.sessions import WarmSessions
from pvezfsha.state import first_time
from pvezfsha.watch import TreeWatcher, WrittenPoller

ROLE_CHECK = 3.0       # seconds between stats of the record and .vmlist
POLL_WRITTEN = 5.0     # seconds between `written` reads of unwatched datasets
PUBLISH_EVERY = 60.0   # seconds between metrics files (and alert reviews) while idle
RETRY = (5.0, 15.0, 30.0, 60.0, 120.0)   # after a failed cycle, by consecutive failures


def zfs_mounts(path: str = "/proc/self/mounts") -> dict[str, str]:
    """Mounted ZFS datasets: name -> mount point (octal escapes decoded)."""
    out = {}
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[2] == "zfs" and "@" not in parts[0]:
                    out[_unescape(parts[0])] = _unescape(parts[1])
    except OSError:
        pass
    return out


def _unescape(s: str) -> str:
    return s.encode("latin-1", "surrogateescape").decode("unicode_escape").encode(
        "latin-1", "surrogateescape").decode("utf-8", "surrogateescape") if "\\" in s else s


@dataclass
class Watched:
    """A container this node is primary for: its watches and its debounce."""

    ct: Container
    debounce: Debouncer
    watcher: TreeWatcher | None = None
    poller: WrittenPoller | None = None
    running: bool = False
    unmounted: set[str] = field(default_factory=set)   # polled until mounted (a promotion in progress)
    failures: int = 0
    first_write: float | None = None      # of the writes the next cycle takes, for the log
    notes: list[str] = field(default_factory=list)

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.close()
            self.watcher = None


@dataclass
class Done:
    ctid: int
    rc: int
    primary: bool
    skipped: int
    snapshots: int
    bytes: int
    seconds: float
    peers: list[str]
    error: str = ""


class Worker(threading.Thread):
    """Runs cycles one at a time and keeps the warm sessions; reports back
    through a pipe the main loop selects on."""

    def __init__(self, sessions: WarmSessions):
        super().__init__(name="cycles", daemon=True)
        self.jobs: queue.Queue = queue.Queue()
        self.results: queue.Queue = queue.Queue()
        self.sessions = sessions
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.busy = False

    def submit(self, job) -> None:
        self.jobs.put(job)

    def run(self) -> None:
        while True:
            due = self.sessions.next_due()
            timeout = None if due is None else max(0.0, due - self.sessions.clock())
            try:
                job = self.jobs.get(timeout=timeout)
            except queue.Empty:
                self._safely(self.sessions.tick)
                continue
            if job is None:
                self.sessions.close()
                return
            kind, args = job
            if kind == "cycle":
                self.busy = True
                self.results.put(self._cycle(*args))
                self.busy = False
                try:
                    os.write(self.wake_w, b"x")
                except BlockingIOError:
                    pass
            elif kind == "warm":
                self._safely(self.sessions.warm_up, *args)
            elif kind == "reset":
                self._safely(self.sessions.close)

    @staticmethod
    def _safely(fn, *args) -> None:
        try:
            fn(*args)
        except Exception as e:   # the worker must outlive any one peer's trouble
            logger.warning(f"agent: {fn.__name__}: {e}")

    def _cycle(self, ctx: SyncContext, ct: Container) -> Done:
        t0 = time.monotonic()
        peers = [n for n in ct.nodes if n != ctx.cluster.local_node()]
        try:
            cycle = sync_container(ctx, ct, pool=self.sessions, what="agent")
            observe.after_cycle(ctx, ct, cycle, publish_now=False)     # the publisher thread publishes
        except Exception as e:   # a ZFS error, a bug: logged, retried, never the end of the agent
            logger.exception(f"CT {ct.ctid}: continuous cycle failed: {e}")
            observe.after_error(ctx, ct, str(e), publish_now=False)
            return Done(ct.ctid, 1, True, 0, 0, 0, time.monotonic() - t0, peers, error=str(e))
        snaps, nbytes = cycle.totals()
        return Done(ct.ctid, cycle.rc, cycle.primary, len(cycle.skipped), snaps, nbytes,
                    time.monotonic() - t0, sorted(cycle.reached))


class Publisher(threading.Thread):
    """Metrics and alerts, off the cycle thread: a mail system or a webhook
    that takes its time must not hold replication back. Requests made while
    it works coalesce into one."""

    def __init__(self):
        super().__init__(name="publish", daemon=True)
        self.wanted = threading.Event()
        self.ctx: SyncContext | None = None

    def request(self, ctx: SyncContext) -> None:
        self.ctx = ctx
        self.wanted.set()

    def run(self) -> None:
        while True:
            self.wanted.wait()
            self.wanted.clear()
            try:
                observe.publish(self.ctx)
            except Exception as e:   # never the end of the agent
                logger.warning(f"agent: publish: {e}")


class Agent:
    def __init__(self, load_config, cluster: Cluster | None = None, *, budget: int | None = None,
                 keep_warm: float = 120.0, clock=time.monotonic):
        self.load_config = load_config
        self.cluster = cluster or Cluster()
        self.store = RecordStore(self.cluster.root)
        self.budget = budget
        self.clock = clock
        self.cfg: Config = load_config()
        self.node = self.cluster.local_node()
        self.watched: dict[int, Watched] = {}
        self._seen: dict[int, tuple] = {}       # ctid -> what the last role check stat'ed
        self._stop = False
        self._reload = False
        self.sessions = WarmSessions(keep_warm=keep_warm)
        self.worker = Worker(self.sessions)
        self.publisher = Publisher()
        self._quorum_warned = False
        self._watchdog: float | None = None

    # -- the loop ------------------------------------------------------------

    def run(self) -> int:
        sig_r, sig_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(sig_w)
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_reload)
        pid_fd = claim_agent()
        spool = self._spool()
        self.worker.start()
        self.publisher.start()
        # READY before the first walk: a large tree on a cold cache takes
        # long to walk, and systemd would time the start out.
        sdnotify.notify("READY=1")
        self._check_roles(force=set(self._continuous()))
        logger.info(f"agent on {self.node}: {len(self._continuous())} continuous container(s), "
                    f"primary here for {len(self.watched)}")
        watchdog = self._watchdog = sdnotify.watchdog_interval()
        next_roles = self.clock() + ROLE_CHECK
        next_poll = self.clock() + POLL_WRITTEN
        next_ping = self.clock()
        next_publish = self.clock()
        try:
            while not self._stop:
                if not self.worker.is_alive():
                    # Never carry on without cycles while feeding the watchdog.
                    raise PvezfshaError("agent: the cycle worker thread died; exiting for systemd to restart")
                now = self.clock()
                if self._reload:
                    self._do_reload()
                if now >= next_roles:
                    self._check_roles()
                    next_roles = now + ROLE_CHECK
                if now >= next_poll:
                    self._poll_written(now)
                    next_poll = now + POLL_WRITTEN
                self._start_due(now)
                if now >= next_publish:
                    # The metrics and alerts between cycles: lag grows while nothing is sent.
                    self.publisher.request(SyncContext(self.cfg, self.cluster))
                    next_publish = now + PUBLISH_EVERY
                if watchdog is not None and now >= next_ping:
                    sdnotify.notify("WATCHDOG=1")
                    next_ping = now + watchdog
                wake = [next_roles, next_poll, next_publish] + [d for w in self.watched.values()
                                                  if not w.running and (d := w.debounce.deadline()) is not None]
                # A rescan the watcher deferred after an overflow (watch.py) is due then.
                wake += [w.watcher.next_rescan for w in self.watched.values()
                         if w.watcher is not None and w.watcher.next_rescan is not None]
                if watchdog is not None:
                    wake.append(next_ping)
                timeout = max(0.0, min(wake) - self.clock())
                fds = [sig_r, spool.fileno(), self.worker.wake_r] + [
                    w.watcher.fileno() for w in self.watched.values() if w.watcher is not None]
                try:
                    ready, _, _ = select.select(fds, [], [], timeout)
                except InterruptedError:
                    continue
                now = self.clock()
                if sig_r in ready:
                    _drain(sig_r)
                if spool.fileno() in ready:
                    self._handoffs(spool)
                if self.worker.wake_r in ready:
                    _drain(self.worker.wake_r)
                    self._finished(now)
                for w in list(self.watched.values()):
                    if w.watcher is not None and (w.watcher.fileno() in ready or (
                            w.watcher.next_rescan is not None and time.monotonic() >= w.watcher.next_rescan)):
                        if w.watcher.read(0):
                            self._touched(w, now)
                        self._adopt_polled(w)
        finally:
            self.worker.submit(None)
            self.worker.join(timeout=10)
            for w in self.watched.values():
                w.close()
            spool.close()
            os.close(pid_fd)
            sdnotify.notify("STOPPING=1")
        logger.info(f"agent on {self.node}: stopped")
        return 0

    def _feed_watchdog(self) -> None:
        """Called during long walks of a tree, which run on this thread."""
        if self._watchdog is not None:
            sdnotify.notify("WATCHDOG=1")

    def _on_stop(self, *_):
        self._stop = True

    def _on_reload(self, *_):
        self._reload = True


    def _spool(self):
        from pvezfsha._vendor.inotify_simple import INotify, flags
        d = handoff_dir()
        d.mkdir(parents=True, exist_ok=True)
        ino = INotify()
        ino.add_watch(str(d), flags.MOVED_TO | flags.CLOSE_WRITE)
        waiting()   # left while no agent ran: the start-up role check reads every role anyway
        return ino

    def _handoffs(self, spool) -> None:
        ages = take({e.name for e in spool.read(timeout=0)})
        if not ages:
            return
        written = {ctid: time.time() - age for ctid, age in ages.items()}
        if not set(ages) <= set(self._continuous()):
            # The hook read the config file as it is now: it may have made a
            # container continuous since this agent last loaded it.
            self._do_reload()
        self._check_roles(force=set(ages), kick=set(ages))
        for ctid, at in sorted(written.items()):
            now = ("watching, a cycle is due now" if ctid in self.watched
                   else "not primary here: not watching" if ctid in self._continuous() else "not continuous here")
            logger.info(f"CT {ctid}: the hook's hand-off handled {time.time() - at:.2f} s after it was written: {now}")

    def _do_reload(self) -> None:
        self._reload = False
        try:
            cfg = self.load_config()
        except PvezfshaError as e:
            logger.error(f"agent: reload: {e}; keeping the previous config")
            return
        self.cfg = cfg
        for w in self.watched.values():
            w.close()
        self.watched.clear()
        self._seen.clear()
        self.worker.submit(("reset", ()))
        self._check_roles(force=set(self._continuous()))
        logger.info(f"agent: reloaded {cfg.path}: {len(self._continuous())} continuous container(s), "
                    f"primary here for {len(self.watched)}")

    # -- roles -----------------------------------------------------------------

    def _continuous(self) -> dict[int, Container]:
        return {ct.ctid: ct for ct in self.cfg.containers.values()
                if ct.options.continuous and self.node in ct.nodes}

    def _check_roles(self, force: set[int] = frozenset(), kick: set[int] = frozenset()) -> None:
        """Start or stop watching as the role of each continuous container
        changes. Cheap when nothing changed: two stats and the quorum bit."""
        cts = self._continuous()
        for ctid in [c for c in self.watched if c not in cts]:
            self._unwatch(ctid, "no longer continuous here in the config")
        quorate = self.cluster.is_quorate()
        if not quorate:
            if not self._quorum_warned:
                logger.warning(f"agent on {self.node}: not quorate; roles are not re-read and no cycle runs "
                               f"until quorum is back (writes are still watched)")
            self._quorum_warned = True
            return
        self._quorum_warned = False
        self._remounted()
        vmlist = _stat(self.cluster.root / ".vmlist")
        for ctid, ct in cts.items():
            key = (_stat(self.store.path(ctid)), vmlist)
            if key == self._seen.get(ctid) and ctid not in force:
                continue
            try:
                role = role_of(self.cluster, self.store, ctid)
            except RecordError as e:
                if first_time(f"agent-record-{ctid}-{key}"):
                    logger.error(f"CT {ctid}: {e}; not replicating it continuously until that is fixed")
                self._unwatch(ctid, "its record cannot be read")
                continue
            self._seen[ctid] = key
            if role.is_primary(self.node):
                if ctid not in self.watched:
                    self._watch(ct, why="handed over" if ctid in kick else "primary here")
                if ctid in kick:
                    self.watched[ctid].debounce.kick(self.clock())
            elif ctid in self.watched:
                self._unwatch(ctid, role.describe(self.node))

    def _watch(self, ct: Container, why: str) -> None:
        names = [ds.on(self.node) for ds in ct.datasets]
        mounts = zfs_mounts()
        roots = {n: mounts[n] for n in names if n in mounts}
        o = ct.options
        w = Watched(ct, Debouncer(o.quiet, o.max_delay, o.min_interval))
        t0 = time.monotonic()
        try:
            w.watcher = TreeWatcher(roots, budget=self.budget, tick=self._feed_watchdog)
            w.watcher.start()
        except OSError as e:
            # fs.inotify.max_user_instances used up (EMFILE), say: poll them all.
            logger.warning(f"CT {ct.ctid}: cannot watch with inotify ({e.strerror}); reading `written` instead")
            w.close()
            roots = {}
        unwatched = [n for n in names if n not in roots or (w.watcher is not None and n in w.watcher.polled)]
        w.unmounted = {n for n in names if n not in roots}
        if unwatched:
            w.poller = WrittenPoller(unwatched)
            self._poll_once(w)           # the first read only sets the baseline
        self.watched[ct.ctid] = w
        # Whatever was written while nobody watched (the agent was down, the
        # node just took over) goes out with a first cycle.
        w.debounce.kick(self.clock())
        polled = len(w.watcher.polled) if w.watcher is not None else 0
        logger.info(f"CT {ct.ctid}: {why}: watching {len(roots) - polled} dataset tree(s) "
                    f"({w.watcher.watched if w.watcher is not None else 0} directories, {time.monotonic() - t0:.1f} s)"
                    + (f", reading `written` of {', '.join(unwatched)} every {POLL_WRITTEN:.0f} s"
                       if unwatched else ""))

    def _remounted(self) -> None:
        """A dataset that was not mounted when watching began (the role moves
        at the fence, a moment before the promotion mounts it) is watched
        with inotify once it is mounted, instead of being polled for good."""
        waiting = [w for w in self.watched.values() if w.unmounted]
        if not waiting:
            return
        mounts = zfs_mounts()
        for w in waiting:
            if w.unmounted & set(mounts):
                w.close()
                self._watch(w.ct, why="now mounted")
                self.watched[w.ct.ctid].running = w.running   # a cycle under way reports to the new entry

    def _adopt_polled(self, w: Watched) -> None:
        """A tree that outgrew the watch budget while watched goes to polling."""
        polled = set(w.watcher.polled) if w.watcher is not None else set()
        if polled and (w.poller is None or not polled <= set(w.poller.datasets)):
            names = sorted(polled | set(w.poller.datasets if w.poller else ()))
            w.poller = WrittenPoller(names)
            self._poll_once(w)
            self._touched(w, self.clock())   # what happened in between is unknown: assume a write

    def _unwatch(self, ctid: int, why: str) -> None:
        w = self.watched.pop(ctid, None)
        if w is None:
            return
        w.close()
        logger.info(f"CT {ctid}: stopped watching: {why}")

    # -- writes and cycles ---------------------------------------------------

    def _touched(self, w: Watched, now: float) -> None:
        idle = not w.debounce.pending and not w.running
        w.debounce.touch(now)
        if w.first_write is None:
            w.first_write = now
        if idle and len(self.sessions) == 0:
            # The handshake overlaps the quiet period (sessions.py).
            ctx = SyncContext(self.cfg, self.cluster)
            self.worker.submit(("warm", (ctx, w.ct, [n for n in w.ct.nodes if n != self.node])))

    @staticmethod
    def _poll_once(w: Watched) -> set[str]:
        try:
            return w.poller.poll() if w.poller is not None else set()
        except PvezfshaError as e:
            logger.warning(f"CT {w.ct.ctid}: cannot read `written`: {e}")
            return set()

    def _poll_written(self, now: float) -> None:
        for w in self.watched.values():
            if w.poller is not None and self._poll_once(w):
                self._touched(w, now)

    def _start_due(self, now: float) -> None:
        if self.worker.busy or any(w.running for w in self.watched.values()):
            return
        if not self.cluster.is_quorate():
            return
        due = sorted((w.debounce.deadline(), w.ct.ctid) for w in self.watched.values() if w.debounce.due(now))
        if not due:
            return
        # The longest waiting first, one at a time: a busy container cannot
        # starve the others, and the next is considered when this one is done.
        w = self.watched[due[0][1]]
        w.debounce.started(now)
        w.running = True
        w.notes = [f"first write {now - w.first_write:.1f} s before"] if w.first_write is not None else []
        w.first_write = None
        self.worker.submit(("cycle", (SyncContext(self.cfg, self.cluster), w.ct)))

    def _finished(self, now: float) -> None:
        while True:
            try:
                done: Done = self.worker.results.get_nowait()
            except queue.Empty:
                return
            w = self.watched.get(done.ctid)
            self.publisher.request(SyncContext(self.cfg, self.cluster))    # coalesced
            if w is not None and w.poller is not None:
                w.poller.reset()   # the cycle's snapshot reset `written`
            what = (f"CT {done.ctid}: continuous cycle to {', '.join(done.peers) or 'no standby'}: "
                    f"{done.snapshots} snapshot(s), {human_bytes(done.bytes)} in {done.seconds:.1f} s")
            if w is None:
                logger.info(what + " (no longer watched)")
                continue
            w.running = False
            if not done.primary:
                # No quorum, or the role moved: what the cycle took stays
                # pending, for when this node is primary and quorate again.
                w.debounce.retry(now, RETRY[0])
                logger.info(what + "; this node is not primary (or not quorate) now")
                self._check_roles(force={done.ctid})
                continue
            if done.rc != 0:
                w.failures += 1
                delay = RETRY[min(w.failures, len(RETRY)) - 1]
                w.debounce.retry(now, delay)
                logger.warning(what + f"; failed ({w.failures} in a row), trying again in {delay:.0f} s")
            elif done.skipped:
                # The timer (or a takeover) held a dataset: its writes are
                # not all sent. Try again once that run is likely done.
                w.debounce.retry(now, w.ct.options.min_interval)
                logger.info(what + f"; {done.skipped} dataset(s) busy with another run, trying again")
            else:
                w.failures = 0
                logger.info(what + (f" ({'; '.join(w.notes)})" if w.notes else ""))


def _stat(path: Path) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def run(load_config, budget: int | None = None, keep_warm: float = 120.0) -> int:
    return Agent(load_config, budget=budget, keep_warm=keep_warm).run()
