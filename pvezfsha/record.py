"""The cluster-wide record of a container's replication, kept in pmxcfs.

`/etc/pve/priv/pvezfsha/<ctid>.json` holds the current primary, an epoch
that grows with every takeover, and what each node is known to hold. pmxcfs
replicates it to every node and refuses writes without quorum (EACCES), so a
node cut off from the cluster can read a stale record but never change it.

Writes follow pmxcfs's rules (../shared/research/proxmox.md §5.3): a temp
file in the same directory renamed over the target, no chmod, no flock; the
read-modify-write is serialised by pmxcfs's own cluster lock, an atomic
`mkdir` under /etc/pve/priv/lock/ that expires after 120 s.
"""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pvezfsha.errors import PvezfshaError

LOCK_LIFETIME = 120   # pmxcfs expires a lock directory after this long


class RecordError(PvezfshaError):
    """The record could not be read, locked or written: never act on a guess."""


@dataclass
class Replica:
    """What one node held of one dataset, as last seen by the primary."""

    guid: int
    snapshot: str
    created: float          # creation time of that snapshot (unix)
    in_sync_at: float = 0   # when the primary last saw this node hold all its data


@dataclass
class Record:
    ctid: int
    primary: str | None = None
    epoch: int = 0
    changed: float = 0.0
    changed_by: str = ""
    reason: str = ""
    replicas: dict[str, dict[str, Replica]] = field(default_factory=dict)   # node -> dataset -> Replica

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, ctid: int | None = None) -> "Record":
        """Parse and check every field; ValueError names the field. With
        `ctid`, the record must be that container's: a copied or edited file
        would otherwise have the fence write another container's record."""
        d = json.loads(text)
        if not isinstance(d, dict):
            raise ValueError("not a JSON object")
        _known(d, ("ctid", "primary", "epoch", "changed", "changed_by", "reason", "replicas"), "")
        if "ctid" not in d:
            raise ValueError("ctid: missing")
        rec_ctid = _int(d["ctid"], "ctid")
        if ctid is not None and rec_ctid != ctid:
            raise ValueError(f"ctid: {rec_ctid}, but the file is container {ctid}'s")
        primary = d.get("primary")
        if primary is not None and not isinstance(primary, str):
            raise ValueError(f"primary: {primary!r} is not a node name or null")
        reps_in = d.get("replicas", {})
        if not isinstance(reps_in, dict):
            raise ValueError(f"replicas: {reps_in!r} is not an object of node -> dataset -> replica")
        reps: dict[str, dict[str, Replica]] = {}
        for node, per in reps_in.items():
            if not isinstance(per, dict):
                raise ValueError(f"replicas.{node}: {per!r} is not an object of dataset -> replica")
            reps[node] = {ds: _replica(r, f"replicas.{node}.{ds}") for ds, r in per.items()}
        return cls(rec_ctid, primary, _int(d.get("epoch", 0), "epoch"), _number(d.get("changed", 0.0), "changed"),
                   _str(d.get("changed_by", ""), "changed_by"), _str(d.get("reason", ""), "reason"), reps)


def _known(d: dict, keys: tuple[str, ...], where: str) -> None:
    for key in d:
        if key not in keys:
            raise ValueError(f"{where}{key}: unknown field")


def _int(v, where: str, limit: int = 1 << 64) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < limit:
        raise ValueError(f"{where}: {v!r} is not a non-negative integer")
    return v


def _number(v, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"{where}: {v!r} is not a number")
    return v


def _str(v, where: str) -> str:
    if not isinstance(v, str):
        raise ValueError(f"{where}: {v!r} is not a string")
    return v


def _replica(r, where: str) -> Replica:
    if not isinstance(r, dict):
        raise ValueError(f"{where}: {r!r} is not an object {{guid, snapshot, created, in_sync_at}}")
    _known(r, ("guid", "snapshot", "created", "in_sync_at"), f"{where}.")
    for key in ("guid", "snapshot", "created"):
        if key not in r:
            raise ValueError(f"{where}.{key}: missing")
    return Replica(_int(r["guid"], f"{where}.guid"), _str(r["snapshot"], f"{where}.snapshot"),
                   _number(r["created"], f"{where}.created"), _number(r.get("in_sync_at", 0), f"{where}.in_sync_at"))


class RecordStore:
    def __init__(self, pve_root: Path):
        self.root = Path(pve_root)
        self.dir = self.root / "priv" / "pvezfsha"
        self.lock_dir = self.root / "priv" / "lock"

    def path(self, ctid: int) -> Path:
        return self.dir / f"{ctid}.json"

    def read(self, ctid: int) -> Record | None:
        try:
            text = self.path(ctid).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as e:
            raise RecordError(f"cannot read {self.path(ctid)}: {e.strerror}") from None
        except UnicodeDecodeError as e:
            raise RecordError(f"{self.path(ctid)} is damaged ({e}); fix or remove it by hand") from None
        try:
            return Record.from_json(text, ctid)
        except (ValueError, TypeError, RecursionError) as e:
            raise RecordError(f"{self.path(ctid)} is damaged ({e}); fix or remove it by hand") from None

    def write(self, record: Record) -> None:
        path = self.path(record.ctid)
        tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(record.to_json())
            os.rename(tmp, path)
        except OSError as e:
            try:
                tmp.unlink()
            except OSError:
                pass
            hint = " (no quorum?)" if e.errno in (13, 30) else ""
            raise RecordError(f"cannot write {path}: {e.strerror}{hint}") from None

    @contextmanager
    def locked(self, ctid: int, timeout: float = 15.0):
        """pmxcfs's cluster-wide mutex: mkdir succeeds on exactly one node."""
        lock = self.lock_dir / f"pvezfsha-{ctid}"
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.lock_dir.mkdir(parents=True, exist_ok=True)
                os.mkdir(lock)
                break
            except FileExistsError:
                if self._pmxcfs():
                    # pmxcfs expires a lock older than its lifetime when asked
                    # with utime(0, 0), judged by each node's own clock.
                    try:
                        os.utime(lock, (0, 0))
                    except OSError:
                        pass
                elif self._expired(lock):
                    try:
                        os.rmdir(lock)
                    except OSError:
                        pass
                    continue
                if time.monotonic() > deadline:
                    raise RecordError(f"cluster lock {lock} is held by another node") from None
                time.sleep(0.5)
            except OSError as e:
                raise RecordError(f"cannot take cluster lock {lock}: {e.strerror} (no quorum?)") from None
        try:
            yield
        finally:
            try:
                os.rmdir(lock)
            except OSError:
                pass

    def _pmxcfs(self) -> bool:
        try:
            with open("/proc/self/mounts", encoding="utf-8") as f:
                return any(line.split()[1] == str(self.root) and line.split()[2].startswith("fuse")
                           for line in f if len(line.split()) > 2)
        except OSError:
            return False

    @staticmethod
    def _expired(lock: Path) -> bool:
        """Outside pmxcfs (tests, the lab): a lock older than its lifetime."""
        try:
            return time.time() - os.stat(lock).st_mtime > LOCK_LIFETIME
        except OSError:
            return True
