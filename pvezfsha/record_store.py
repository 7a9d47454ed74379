"""The cluster-wide record kept in pmxcfs: read, locked, written.

pmxcfs replicates `/etc/pve/priv/pvezfsha/<ctid>.json` (record.py) to every
node and refuses writes without quorum (EACCES), so a node cut off from the
cluster can read a stale record but never change it.

Writes follow pmxcfs's rules (../shared/research/proxmox.md §5.3): a temp
file in the same directory renamed over the target, no chmod, no flock; the
read-modify-write is serialised by pmxcfs's own cluster lock, an atomic
`mkdir` under /etc/pve/priv/lock/ that expires after 120 s.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path

from pvezfsha.errors import PvezfshaError
from pvezfsha.health import Health
from pvezfsha.record import Record

LOCK_LIFETIME = 120   # pmxcfs expires a lock directory after this long


class RecordError(PvezfshaError):
    """The record could not be read, locked or written: never act on a guess."""


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
        self._replace(self.path(record.ctid), record.to_json())

    def _replace(self, path: Path, text: str) -> None:
        tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
            os.rename(tmp, path)
        except OSError as e:
            try:
                tmp.unlink()
            except OSError:
                pass
            hint = " (no quorum?)" if e.errno in (13, 30) else ""
            raise RecordError(f"cannot write {path}: {e.strerror}{hint}") from None

    # -- health (health.py): one file per node, written only by that node ----------

    def health_path(self, ctid: int, node: str) -> Path:
        return self.dir / "health" / f"{ctid}.{node}.json"

    def read_health(self, ctid: int, node: str) -> Health | None:
        """None when missing or unreadable: health is for display only."""
        try:
            return Health.from_json(self.health_path(ctid, node).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, TypeError, RecursionError):
            return None

    def write_health(self, health: Health) -> None:
        self._replace(self.health_path(health.ctid, health.node), health.to_json())

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
