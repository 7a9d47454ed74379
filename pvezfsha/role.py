"""Who is primary for a container: the single home of that decision.

Proxmox decides where the container runs (the node that owns its config in
.vmlist); pvezfsha's cluster record says which node holds the writable data,
with an epoch that grows at every takeover. A node acts as primary only when
both agree. Before any takeover has been recorded, the config owner is the
primary, which is what the replication core needs on a fresh install.
"""

from __future__ import annotations

from dataclasses import dataclass

from pvezfsha.cluster import Cluster
from pvezfsha.record import Record
from pvezfsha.record_store import RecordStore


@dataclass(frozen=True)
class Role:
    owner: str | None           # .vmlist: where Proxmox runs the container
    recorded: str | None        # the record: where the writable data is
    epoch: int
    record: Record | None

    @property
    def primary(self) -> str | None:
        return self.recorded if self.record is not None and self.recorded else self.owner

    def is_primary(self, node: str) -> bool:
        return self.primary == node and self.owner == node

    def describe(self, node: str) -> str:
        if self.is_primary(node):
            return "primary"
        if self.primary == node:
            return f"primary until {self.owner or '?'} takes over (the container's config moved there)"
        return f"standby (primary is {self.primary or 'unknown'})"


def role_of(cluster: Cluster, store: RecordStore, ctid: int) -> Role:
    rec = store.read(ctid)
    return Role(cluster.owner(ctid), rec.primary if rec else None, rec.epoch if rec else 0, rec)
