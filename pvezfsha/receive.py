"""`pvezfsha receive`: the standby's end of a session, run by ssh.

It reads requests from stdin (see transport.py) and answers on stdout.
Everything it does goes through libzfs_core; the stream of a `receive`
request is read by the kernel straight from fd 0. Logs go to stderr, which
ssh carries back to the sender.

The receiver does not trust the sender: it takes only what its own config
says it receives (a configured container that lists this node, and one of
that container's datasets as named here), never changes the dataset of a
node the cluster record names primary, honours `force` only where the
planner would (a full stream onto an empty placeholder, checked here), and
refuses a malformed request with one line.

The standby stays inert: streams are received unmounted, the dataset is
kept readonly=on and canmount=noauto, and the last received snapshot carries
a hold, so a mistaken forced receive or a pruning tool cannot take away the
base of the next incremental.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time
from contextlib import ExitStack, contextmanager

from pvezfsha import __version__, config, divergence, replica, zfs, zfscli
from pvezfsha.cluster import Cluster
from pvezfsha.config import Config, check_dataset_name
from pvezfsha.errors import PvezfshaError, ZfsError
from pvezfsha.log import logger
from pvezfsha.planner import EMPTY_PLACEHOLDER_BYTES, carried
from pvezfsha.record_store import RecordStore
from pvezfsha.replica import INERT
from pvezfsha.state import Locked, dataset_lock
from pvezfsha.transport import PROTOCOL, read_line, write_json
from pvezfsha.versions import CARRIED_PROP, HOLD_LAST, KEYLOCATION, is_replication_snapshot

def _named_guids(req: dict, key: str) -> dict[str, int]:
    """A request's list of {name, guid} (absent: none) as {name: guid}."""
    items = req.get(key, [])
    if not isinstance(items, list) or not all(isinstance(d, dict) and isinstance(d.get("name"), str) for d in items):
        raise _bad(f"{key}: not a list of {{name, guid}}")
    return {d["name"]: _uint(d, "guid") for d in items}


def _rchar(tid: int) -> int | None:
    """Bytes the thread `tid` has read, the kernel's receive included."""
    try:
        with open(f"/proc/self/task/{tid}/io", encoding="ascii") as f:
            for line in f:
                if line.startswith("rchar:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


@contextmanager
def stall_guard(seconds: float, what: str):
    """End this process if the thread inside the block reads nothing for
    `seconds`: a sender that lost power never closes the connection, and
    sshd does not probe by default, so the receive would wait forever
    holding the dataset. SIGKILL interrupts the kernel's read; the partial
    state stays resumable and the lock dies with us."""
    tid = threading.get_native_id()
    done = threading.Event()

    def watch():
        last, since = _rchar(tid), time.monotonic()
        if last is None:
            return   # no per-thread accounting here: nothing to watch with
        while not done.wait(1.0):
            now = _rchar(tid)
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since > seconds:
                logger.error(f"{what}: nothing from the sender for {seconds:.0f} s; ending the receive "
                             f"(it resumes from its token next time)")
                os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="stall-guard", daemon=True).start()
    try:
        yield
    finally:
        done.set()


def _bad(message: str) -> ZfsError:
    return ZfsError(message, kind="BadRequest")


def _uint(req: dict, key: str, *, default: int | None = None) -> int:
    """A non-negative integer below 2**64 (ctid, epoch, guid); absent means `default`."""
    v = req.get(key)
    if v is None and default is not None:
        return default
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 1 << 64:
        raise _bad(f"{key}: {v!r} is not a non-negative integer")
    return v


def _flag(req: dict, key: str) -> bool:
    v = req.get(key, False)
    if not isinstance(v, bool):
        raise _bad(f"{key}: {v!r} is not true or false")
    return v


def _seconds(req: dict, key: str, default: float) -> float:
    v = req.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 < v <= 1 << 31:
        raise _bad(f"{key}: {v!r} is not a number of seconds")
    return float(v)


class Server:
    def __init__(self, cfg: Config, in_fd: int = 0, out_fd: int = 1):
        self.cfg = cfg
        self.in_fd, self.out_fd = in_fd, out_fd
        self.locks = ExitStack()
        self.locked: set[str] = set()
        cluster = Cluster()
        self.node = cluster.local_node()
        self.store = RecordStore(cluster.root)
        self._cfg_key = self._config_key()

    def _config_key(self):
        try:
            st = os.stat(self.cfg.path)
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def _fresh_config(self) -> None:
        """A warm session serves cycle after cycle: what this node receives
        follows its config file as edited since the session began."""
        key = self._config_key()
        if key is not None and key != self._cfg_key:
            self.cfg = config.load(self.cfg.path)
            self._cfg_key = key

    def _lock(self, dataset: str) -> None:
        # Only for changes, held for the rest of the session: a local run
        # must not touch the dataset while we change it. Each changing op
        # re-reads what it acts on after taking the lock (the fence, the
        # force check, guids), so the state the sender planned from may be
        # read without it: a survivor busy receiving still answers a read.
        if dataset not in self.locked:
            try:
                self.locks.enter_context(dataset_lock(dataset, "receive"))
            except Locked as e:
                raise ZfsError(str(e), kind="Busy") from None
            self.locked.add(dataset)

    @staticmethod
    def _dataset(req: dict, key: str = "dataset") -> str:
        name = req.get(key, "")
        try:
            return check_dataset_name(name)
        except ValueError as e:
            raise ZfsError(str(e), kind="BadRequest") from None

    def _configured(self, req: dict, dataset: str) -> int:
        """The request's ctid, if this node's config receives `dataset` for it."""
        if req.get("ctid") is None:
            raise ZfsError(f"a request for {dataset} names no container (ctid); refusing it", kind="NotConfigured")
        ctid = _uint(req, "ctid")
        ct = self.cfg.container(ctid)
        if ct is None:
            raise ZfsError(f"CT {ctid} is not configured in {self.cfg.path} on {self.node}", kind="NotConfigured")
        if self.node not in ct.nodes:
            raise ZfsError(f"CT {ctid}: {self.node} is not one of its nodes ({', '.join(ct.nodes)}) in "
                           f"{self.cfg.path}", kind="NotConfigured")
        if dataset not in (ds.on(self.node) for ds in ct.datasets):
            raise ZfsError(f"{dataset} is not a dataset of CT {ctid} on {self.node} in {self.cfg.path}",
                           kind="NotConfigured")
        return ctid

    def _fence(self, req: dict, dataset: str) -> None:
        """Refuse a sender that is behind a takeover we know of, or that
        pushes into the primary (this node, if the record names it at the
        sender's epoch or later), and make sure our own copy is inert before
        it changes (a node that is no longer primary demotes itself before
        anything else)."""
        ctid, epoch = self._configured(req, dataset), _uint(req, "epoch")
        rec = self.store.read(ctid)
        if rec is not None and epoch < rec.epoch:
            raise ZfsError(f"refusing a sender at epoch {epoch}: CT {ctid} is at epoch {rec.epoch} "
                           f"with primary {rec.primary}", kind="StaleEpoch")
        if rec is not None and rec.primary == self.node and rec.epoch >= epoch:
            raise ZfsError(f"refusing to change {dataset}: {self.node} is primary for CT {ctid} at epoch "
                           f"{rec.epoch} (the sender is at epoch {epoch})", kind="Primary")
        st = zfs.quick_state(dataset)    # constant cost: this runs for every receive and finish
        if replica.epoch_of(st) > epoch:
            raise ZfsError(f"refusing a sender at epoch {epoch}: {dataset} here was promoted at epoch "
                           f"{replica.epoch_of(st)}", kind="StaleEpoch")
        if rec is not None and rec.primary != self.node and st.exists and (st.mounted or not st.readonly):
            replica.demote(dataset, f"{rec.primary} is primary at epoch {rec.epoch}")

    # -- requests ------------------------------------------------------------

    def op_hello(self, req: dict) -> dict:
        if req.get("protocol") != PROTOCOL:
            raise ZfsError(f"protocol {req.get('protocol')} not supported (this node speaks {PROTOCOL}); "
                           f"install the same pvezfsha version on every node", kind="Protocol")
        return {"node": self.node, "version": __version__}

    def op_state(self, req: dict) -> dict:
        # A read: no lock (see _lock).
        ds = self._dataset(req)
        self._configured(req, ds)
        prefix = str(req.get("prefix") or "pvezfsha")
        if divergence.swap_pending(ds, prefix):
            # A swap a killed run left half done would show D missing or
            # split: finish it first, unless another run holds the dataset.
            try:
                self._lock(ds)
            except ZfsError:
                pass
            else:
                divergence.finish_interrupted(ds, prefix, self.node)
        return {"state": zfs.read_state(ds).to_dict()}

    def _check_force(self, req: dict, snap: str, ds: str) -> None:
        """`force` replaces what is there: only a full stream onto an empty
        placeholder, as the planner decides, judged again here. An
        incremental stream needs a snapshot here, so a dataset without
        snapshots also means the stream is full."""
        if req.get("from") is not None:
            raise ZfsError(f"{snap}: refusing a forced receive that is not a full stream", kind="Refused")
        st = zfs.read_state(ds)
        if st.exists and (st.snapshots or st.referenced > EMPTY_PLACEHOLDER_BYTES):
            raise ZfsError(f"{snap}: refusing a forced receive: {ds} holds data ({len(st.snapshots)} snapshot(s), "
                           f"{st.referenced} bytes referenced), not an empty placeholder", kind="Refused")

    def op_receive(self, req: dict) -> dict:
        snap = req.get("snapshot", "")
        if not isinstance(snap, str):
            raise _bad(f"{snap!r} is not a snapshot name")
        ds, _, short = snap.partition("@")
        self._dataset({"dataset": ds})
        if not short:
            raise _bad(f"{snap!r} is not a snapshot name")
        guid, force, raw = _uint(req, "guid"), _flag(req, "force"), _flag(req, "raw")
        stall = _seconds(req, "stall", 300.0)
        keylocation = req.get("keylocation") or ""
        if keylocation and not (isinstance(keylocation, str) and KEYLOCATION.fullmatch(keylocation)):
            raise _bad(f"keylocation: {keylocation!r} is not a file:/// or https:// location without "
                       f"spaces, control characters or backslashes")
        ct = self.cfg.container(self._configured(req, ds))
        _uint(req, "epoch")
        self._lock(ds)
        self._fence(req, ds)
        if force:
            self._check_force(req, snap, ds)
        # pyzfs always hands the kernel a (maybe empty) set of received
        # properties, and the first receive with one into a dataset that never
        # had any (the live copy a kept divergence swapped in) clears its local
        # properties: mountpoint, quota, shares. Put back what it drops.
        local = zfs.local_props(ds)
        with stall_guard(stall, snap):
            zfs.receive(snap, self.in_fd, force=force, raw=raw)
        # Identity is the guid: confirm it, at constant cost (no full listing).
        q = zfs.quick_state(ds, [short])
        if q.guids.get(short) != guid:
            raise ZfsError(f"{snap}: received snapshot has guid {q.guids.get(short)}, expected {guid}",
                           kind="GuidMismatch")
        opts = ct.options
        if carried(short, opts.snapshot_prefix, opts.replicate_snapshots):
            self._mark_carried(snap)        # first: nothing after the receive may leave it unmarked
        self._restore_props(ds, local)
        if not q.readonly or q.canmount != "noauto":
            zfscli.set_props(ds, INERT)
        if raw and keylocation:
            self._adopt_keylocation(ds, keylocation)
        return {"guid": q.guids[short]}

    @staticmethod
    def _mark_carried(snap: str) -> None:
        """Another tool's snapshot received here: mark it, so that it follows
        the primary's pruning (versions.CARRIED_PROP). Unmarked, it is only
        never pruned here: a warning, not a failed receive."""
        try:
            zfs.set_user_props(snap, {CARRIED_PROP: "received"})
        except ZfsError as e:
            logger.warning(f"{snap}: could not mark it as carried ({e}); pvezfsha will not prune it here")

    @staticmethod
    def _adopt_keylocation(ds: str, keylocation: str) -> None:
        """A raw receive makes this copy an encryption root with
        keylocation=prompt, which no takeover here could answer: take the
        primary's location, unless an admin chose one here. The stream has
        landed; a failure here is a warning, not a failed receive."""
        try:
            facts = zfscli.key_facts(ds)
            if facts.get("encryptionroot") == ds and facts.get("keylocation") == "prompt":
                zfscli.set_props(ds, {"keylocation": keylocation})
                logger.info(f"{ds}: keylocation set to {keylocation}, the primary's")
        except ZfsError as e:
            logger.warning(f"{ds}: could not set keylocation={keylocation}: {e}; a takeover here cannot "
                           f"load the key until it is set")

    @staticmethod
    def _restore_props(ds: str, before: dict[str, str]) -> None:
        if not before:
            return
        now = zfs.local_props(ds)
        lost = {k: v for k, v in before.items() if now.get(k) != v and k not in INERT}
        system = {k: v for k, v in lost.items() if ":" not in k}
        user = {k: v for k, v in lost.items() if ":" in k}
        if system:
            zfscli.set_props(ds, system)
        if user:
            zfs.set_user_props(ds, user)
        if lost:
            logger.info(f"{ds}: restored local properties the receive cleared: {', '.join(sorted(lost))}")

    def op_finish(self, req: dict) -> dict:
        """After a dataset's steps: move the last-received hold to `hold`,
        and prune the snapshots named by the sender, each checked by guid."""
        ds = self._dataset(req)
        ct = self.cfg.container(self._configured(req, ds))
        _uint(req, "epoch")
        release, hold = req.get("release", []), req.get("hold")
        doomed = _named_guids(req, "destroy")
        if not isinstance(release, list) or not all(isinstance(n, str) for n in release):
            raise _bad("release: not a list of snapshot names")
        if hold is not None and not isinstance(hold, str):
            raise _bad(f"hold: {hold!r} is not a snapshot name")
        held = _flag(req, "held")
        carried_doomed = _named_guids(req, "destroy_carried")
        self._lock(ds)
        self._fence(req, ds)
        q = zfs.quick_state(ds, [*doomed, *([hold] if hold else [])])
        if hold:
            if q.guids.get(hold) is None:
                raise ZfsError(f"{ds}@{hold} does not exist", kind="SnapshotNotFound")
            if not held:
                # Take the new hold before dropping the old ones.
                zfs.hold({f"{ds}@{hold}": HOLD_LAST})
            zfs.release({f"{ds}@{n}": [HOLD_LAST] for n in release if n != hold})
        # Only ours, whatever a sender asks: another tool's snapshot goes
        # through _prune_carried's checks, and any other name is not ours.
        names = [f"{ds}@{n}" for n, g in doomed.items() if q.guids.get(n) == g and n != hold
                 and is_replication_snapshot(n, ct.options.snapshot_prefix)]
        zfs.destroy_snapshots(names)
        return {"destroyed": len(names) + self._prune_carried(ds, carried_doomed, hold)}

    @staticmethod
    def _prune_carried(ds: str, doomed: dict[str, int], hold: str | None) -> int:
        """Carried snapshots the primary no longer has, each checked by guid
        and for our mark: one that was here before pvezfsha carried it is
        this node's own history. In a call of their own: one that another
        tool holds busy (a send from here) costs a warning, never the cycle."""
        if not doomed:
            return 0
        try:
            facts = zfs.snapshot_props(ds, list(doomed), ["guid", CARRIED_PROP])
            names = [f"{ds}@{n}" for n, g in doomed.items()
                     if n != hold and facts.get(n, {}).get("guid") == g and facts[n].get(CARRIED_PROP) == "received"]
            zfs.destroy_snapshots(names)
        except ZfsError as e:
            logger.warning(f"{ds}: could not prune carried snapshots the primary no longer has: {e}; "
                           f"the next cycle tries again")
            return 0
        return len(names)

    def op_abort_resume(self, req: dict) -> dict:
        ds = self._dataset(req)
        self._configured(req, ds)
        _uint(req, "epoch")
        self._lock(ds)
        self._fence(req, ds)
        zfs.abort_receive(ds)
        logger.info(f"{ds}: aborted a partial receive that no longer matches the source")
        return {"state": zfs.read_state(ds).to_dict()}

    def op_keep_diverged(self, req: dict) -> dict:
        ds = self._dataset(req)
        ct = self.cfg.container(self._configured(req, ds))
        _uint(req, "epoch")
        base_guid = _uint(req, "base_guid")
        try:
            prefix = config.check_snapshot_prefix(req.get("prefix"))
        except ValueError as e:
            raise _bad(f"prefix: {e}") from None
        self._lock(ds)
        self._fence(req, ds)
        result = divergence.keep_diverged(ds, base_guid, prefix, self.node, carry=ct.options.replicate_snapshots)
        return {**result, "state": zfs.read_state(ds).to_dict()}

    def op_release(self, req: dict) -> dict:
        """The end of a cycle over a warm session: let go of the datasets this
        session changed, so that a run on this node (a takeover's promotion,
        the fence) can take them between cycles. The next change takes its
        lock again, and its fence reads the record again."""
        released = sorted(self.locked)
        self.locks.close()
        self.locks = ExitStack()
        self.locked.clear()
        return {"released": released}

    def handle(self, req) -> dict:
        """One request's reply: {"ok": True, ...}, or ok False with a one-line error."""
        try:
            if not isinstance(req, dict):
                raise _bad("a request must be a JSON object")
            self._fresh_config()
            op = req.get("op", "")
            handler = getattr(self, f"op_{op}", None) if isinstance(op, str) else None
            if handler is None:
                raise _bad(f"unknown request {op!r}")
            return {"ok": True, **handler(req)}
        except (PvezfshaError, ValueError, KeyError, TypeError) as e:
            kind = getattr(e, "kind", "") or type(e).__name__
            logger.error(f"receive: {e}")
            return {"ok": False, "error": " ".join(str(e).split()), "kind": kind,
                    "errno": getattr(e, "errno", 0) or 0}

    def serve(self) -> int:
        try:
            while True:
                line = read_line(self.in_fd)
                if line is None:
                    return 0
                try:
                    req = json.loads(line)
                except (ValueError, RecursionError) as e:
                    req = e
                reply = self.handle(req) if not isinstance(req, Exception) else \
                    {"ok": False, "error": f"not a JSON request: {req}", "kind": "BadRequest", "errno": 0}
                write_json(self.out_fd, reply)
                # After a failed receive the rest of its stream is still in
                # the pipe; ending the session is the only clean way out.
                if not reply["ok"] and (not isinstance(req, dict) or req.get("op") == "receive"):
                    return 1
        except BrokenPipeError:
            return 1
        finally:
            self.locks.close()


def main(config_path: str | None = None) -> int:
    if os.isatty(0):
        print("pvezfsha receive: the receiving end of `pvezfsha sync`, run over ssh; "
              "not for interactive use", file=sys.stderr)
        return 2
    # This node's own config says what it receives; a bad one is a ConfigError line.
    return Server(config.load(config_path)).serve()
