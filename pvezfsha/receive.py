"""`pvezfsha receive`: the standby's end of a session, run by ssh.

It reads requests from stdin (see transport.py) and answers on stdout.
Everything it does goes through libzfs_core; the stream of a `receive`
request is read by the kernel straight from fd 0. Logs go to stderr, which
ssh carries back to the sender.

The standby stays inert: streams are received unmounted, the dataset is
kept readonly=on and canmount=noauto, and the last received snapshot carries
a hold, so a mistaken forced receive or a pruning tool cannot take away the
base of the next incremental.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from contextlib import ExitStack, contextmanager

from pvezfsha import __version__, divergence, replica, zfs, zfscli
from pvezfsha.cluster import Cluster
from pvezfsha.config import check_dataset_name
from pvezfsha.errors import PvezfshaError, ZfsError
from pvezfsha.log import logger
from pvezfsha.record import RecordStore
from pvezfsha.replica import INERT
from pvezfsha.state import Locked, dataset_lock
from pvezfsha.transport import PROTOCOL, read_line, write_json
from pvezfsha.versions import HOLD_LAST

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


class Server:
    def __init__(self, in_fd: int = 0, out_fd: int = 1):
        self.in_fd, self.out_fd = in_fd, out_fd
        self.locks = ExitStack()
        self.locked: set[str] = set()
        cluster = Cluster()
        self.node = cluster.local_node()
        self.store = RecordStore(cluster.root)

    def _lock(self, dataset: str) -> None:
        # Held for the rest of the session: a local run must not touch a
        # dataset between our state read and the receive that follows.
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

    def _fence(self, req: dict, dataset: str) -> None:
        """Refuse a sender that is behind a takeover we know of, and make sure
        our own copy is inert before it changes (a node that is no longer
        primary demotes itself before anything else)."""
        ctid, epoch = req.get("ctid") or 0, int(req.get("epoch") or 0)
        rec = self.store.read(int(ctid)) if ctid else None
        if rec is not None and epoch < rec.epoch:
            raise ZfsError(f"refusing a sender at epoch {epoch}: CT {ctid} is at epoch {rec.epoch} "
                           f"with primary {rec.primary}", kind="StaleEpoch")
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
        ds = self._dataset(req)
        self._lock(ds)
        # A swap a killed run left half done would show D missing or split.
        divergence.finish_interrupted(ds, str(req.get("prefix") or "pvezfsha"), self.node)
        return {"state": zfs.read_state(ds).to_dict()}

    def op_receive(self, req: dict) -> dict:
        snap = req.get("snapshot", "")
        ds, _, short = snap.partition("@")
        self._dataset({"dataset": ds})
        if not short:
            raise ZfsError(f"{snap!r} is not a snapshot name", kind="BadRequest")
        self._lock(ds)
        self._fence(req, ds)
        with stall_guard(float(req.get("stall") or 300), snap):
            zfs.receive(snap, self.in_fd, force=bool(req.get("force")), raw=bool(req.get("raw")))
        # Identity is the guid: confirm it, at constant cost (no full listing).
        q = zfs.quick_state(ds, [short])
        if q.guids.get(short) != req.get("guid"):
            raise ZfsError(f"{snap}: received snapshot has guid {q.guids.get(short)}, expected {req.get('guid')}",
                           kind="GuidMismatch")
        if not q.readonly or q.canmount != "noauto":
            zfscli.set_props(ds, INERT)
        return {"guid": q.guids[short]}

    def op_finish(self, req: dict) -> dict:
        """After a dataset's steps: move the last-received hold to `hold`,
        and prune the snapshots named by the sender, each checked by guid."""
        ds = self._dataset(req)
        self._lock(ds)
        self._fence(req, ds)
        doomed = {d["name"]: d["guid"] for d in req.get("destroy", [])}
        hold = req.get("hold")
        q = zfs.quick_state(ds, [*doomed, *([hold] if hold else [])])
        if hold:
            if q.guids.get(hold) is None:
                raise ZfsError(f"{ds}@{hold} does not exist", kind="SnapshotNotFound")
            if not req.get("held"):
                # Take the new hold before dropping the old ones.
                zfs.hold({f"{ds}@{hold}": HOLD_LAST})
            zfs.release({f"{ds}@{n}": [HOLD_LAST] for n in req.get("release", []) if n != hold})
        names = [f"{ds}@{n}" for n, g in doomed.items() if q.guids.get(n) == g and n != hold]
        zfs.destroy_snapshots(names)
        return {"destroyed": len(names)}

    def op_abort_resume(self, req: dict) -> dict:
        ds = self._dataset(req)
        self._lock(ds)
        self._fence(req, ds)
        zfs.abort_receive(ds)
        logger.info(f"{ds}: aborted a partial receive that no longer matches the source")
        return {"state": zfs.read_state(ds).to_dict()}

    def op_keep_diverged(self, req: dict) -> dict:
        ds = self._dataset(req)
        self._lock(ds)
        self._fence(req, ds)
        result = divergence.keep_diverged(ds, int(req["base_guid"]), req["prefix"], self.node)
        return {**result, "state": zfs.read_state(ds).to_dict()}

    def serve(self) -> int:
        try:
            while True:
                line = read_line(self.in_fd)
                if line is None:
                    return 0
                req: dict = {}
                try:
                    req = json.loads(line)
                    if not isinstance(req, dict):
                        raise ValueError("a request must be a JSON object")
                    op = req.get("op", "")
                    handler = getattr(self, f"op_{op}", None)
                    if handler is None:
                        raise ZfsError(f"unknown request {op!r}", kind="BadRequest")
                    reply = {"ok": True, **handler(req)}
                except (PvezfshaError, ValueError, KeyError, TypeError) as e:
                    kind = getattr(e, "kind", "") or type(e).__name__
                    logger.error(f"receive: {e}")
                    write_json(self.out_fd, {"ok": False, "error": str(e), "kind": kind,
                                             "errno": getattr(e, "errno", 0) or 0})
                    # After a failed receive the rest of its stream is still in
                    # the pipe; ending the session is the only clean way out.
                    if req.get("op") == "receive":
                        return 1
                    continue
                write_json(self.out_fd, reply)
        except BrokenPipeError:
            return 1
        finally:
            self.locks.close()


def main() -> int:
    if os.isatty(0):
        print("pvezfsha receive: the receiving end of `pvezfsha sync`, run over ssh; "
              "not for interactive use", file=sys.stderr)
        return 2
    return Server().serve()
