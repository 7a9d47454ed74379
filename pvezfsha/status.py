"""`pvezfsha status`: what this node knows, without contacting any peer.

On the primary, each standby's newest common snapshot is read from its
cursor bookmark, which only moves after the standby confirmed a receive; so
status is local, instant, and works while a standby is down. On a standby
the local replica's newest snapshot is shown.
"""

from __future__ import annotations

import json
import time

from pvezfsha import zfs
from pvezfsha.cluster import Cluster, primary_of
from pvezfsha.config import Config
from pvezfsha.sync import cursor_guid, select_containers


def age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(max(0, seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit}"
    return f"{s}s"


def collect(cfg: Config, ctids: list[int], cluster: Cluster) -> list[dict]:
    local = cluster.local_node()
    now = time.time()
    rows = []
    for ct in select_containers(cfg, ctids):
        primary = primary_of(cluster, ct.ctid)
        prefix = ct.options.snapshot_prefix
        for ds in ct.datasets:
            name = ds.on(local)
            row = {"ctid": ct.ctid, "dataset": name, "node": local, "primary": primary,
                   "role": "primary" if primary == local else "standby", "standbys": []}
            try:
                st = zfs.read_state(name)
            except Exception as e:  # one broken dataset must not hide the others
                row["error"] = str(e)
                rows.append(row)
                continue
            if not st.exists:
                row["error"] = "dataset does not exist on this node"
                rows.append(row)
                continue
            newest = st.newest
            row["newest"] = newest.name if newest else None
            row["newest_age"] = now - newest.creation if newest else None
            row["readonly"] = st.readonly
            row["mounted"] = st.mounted
            row["resumable"] = st.resume is not None
            if primary == local:
                by_guid = st.by_guid()
                for peer in (n for n in ct.nodes if n != local):
                    g = cursor_guid(st, prefix, peer)
                    v = by_guid.get(g) if g is not None else None
                    row["standbys"].append({"node": peer, "common": v.name if v else None,
                                            "common_age": now - v.creation if v else None,
                                            "behind": newest is not None and (v is None or v.guid != newest.guid)})
            rows.append(row)
    return rows


def render(rows: list[dict]) -> str:
    out = []
    for r in rows:
        head = f"CT {r['ctid']}  {r['dataset']}  primary={r['primary'] or '?'}  this node={r['node']} ({r['role']})"
        out.append(head)
        if "error" in r:
            out.append(f"    error: {r['error']}")
            continue
        out.append(f"    newest snapshot: @{r['newest'] or '-'} (age {age(r['newest_age'])})"
                   + ("  [partial receive pending]" if r["resumable"] else ""))
        for s in r["standbys"]:
            state = "behind" if s["behind"] else "in sync"
            out.append(f"    standby {s['node']}: common @{s['common'] or '-'} (age {age(s['common_age'])}) {state}")
    return "\n".join(out)


def run(cfg: Config, ctids: list[int], as_json: bool = False, cluster: Cluster | None = None) -> int:
    rows = collect(cfg, ctids, cluster or Cluster())
    print(json.dumps(rows, indent=2) if as_json else render(rows))
    return 1 if any("error" in r for r in rows) else 0
