"""`pvezfsha status`: what this node knows, without contacting any peer.

On the primary, each standby's newest common snapshot is read from its
cursor bookmark, which only moves after the standby confirmed a receive; so
status is local, instant, and works while a standby is down. On a standby
the local replica's newest snapshot is shown.
"""

from __future__ import annotations

import json
import shlex
import time

from pvezfsha import zfs
from pvezfsha.cluster import Cluster
from pvezfsha.config import Config
from pvezfsha.divergence import KEPT_PROP
from pvezfsha.record_store import RecordError, RecordStore
from pvezfsha.role import role_of
from pvezfsha.takeover import fmt_age
from pvezfsha.versions import cursor_guid


def age(seconds: float | None) -> str:
    return "-" if seconds is None else fmt_age(max(0.0, seconds))


def collect(cfg: Config, ctids: list[int], cluster: Cluster) -> list[dict]:
    local = cluster.local_node()
    now = time.time()
    rows = []
    store = RecordStore(cluster.root)
    for ct in cfg.select(ctids):
        try:
            role = role_of(cluster, store, ct.ctid)
        except RecordError as e:
            rows.append({"ctid": ct.ctid, "dataset": "-", "node": local, "primary": None, "role": "?",
                         "standbys": [], "error": str(e)})
            continue
        primary = role.primary
        prefix = ct.options.snapshot_prefix
        for ds in ct.datasets:
            name = ds.on(local)
            row = {"ctid": ct.ctid, "dataset": name, "node": local, "primary": primary, "epoch": role.epoch,
                   "owner": role.owner, "role": role.describe(local), "standbys": [],
                   "diverged": kept_for(name)}
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
        head = (f"CT {r['ctid']}  {r['dataset']}  primary={r['primary'] or '?'}"
                + (f" (epoch {r['epoch']})" if r.get("epoch") else "") + f"  this node={r['node']}: {r['role']}")
        out.append(head)
        if "error" in r:
            out.append(f"    error: {r['error']}")
            continue
        out.append(f"    newest snapshot: @{r['newest'] or '-'} (age {age(r['newest_age'])})"
                   + ("  [partial receive pending]" if r["resumable"] else ""))
        for s in r["standbys"]:
            state = "behind" if s["behind"] else "in sync"
            out.append(f"    standby {s['node']}: common @{s['common'] or '-'} (age {age(s['common_age'])}) {state}")
        for kept, info in r.get("diverged", {}).items():
            out.append(f"    DIVERGED data kept as {kept} ({info}); see `pvezfsha diverged {r['ctid']}`")
    return "\n".join(out)


def kept_for(dataset: str) -> dict[str, str]:
    """Diverged states kept beside `dataset` (divergence.py names them)."""
    parent = dataset.rsplit("/", 1)[0] if "/" in dataset else dataset
    try:
        found = zfs.children_with_prop(parent, KEPT_PROP)
    except Exception:  # listing is a courtesy here; status must still print
        return {}
    return {k: v for k, v in sorted(found.items()) if k.startswith(dataset + "-")}


def diverged(cfg: Config, ctids: list[int], cluster: Cluster | None = None) -> int:
    """What was kept, and the commands to look at it or bring it back."""
    local = (cluster or Cluster()).local_node()
    any_found = False
    for ct in cfg.select(ctids):
        for ds in ct.datasets:
            name = ds.on(local)
            for kept, info in kept_for(name).items():
                any_found = True
                mnt = "/mnt/" + kept.replace("/", "_")
                # Commands to paste into a shell: a dataset name may hold a space.
                k, m = shlex.quote(kept), shlex.quote(mnt)
                print(f"CT {ct.ctid}  {name} on {local}: diverged data kept as {kept}\n"
                      f"    {info}\n"
                      f"    look at it:   zfs set {shlex.quote('mountpoint=' + mnt)} {k} && zfs mount {k}   "
                      f"(read-only)\n"
                      f"    its snapshots: zfs list -t snapshot -r {k}\n"
                      f"    bring files back: copy them from {m} into the container's data on the primary\n"
                      f"    when done:    zfs destroy -r {k}   (pvezfsha never deletes it)")
    if not any_found:
        print(f"no diverged data kept on {local}")
    return 0


def run(cfg: Config, ctids: list[int], as_json: bool = False, cluster: Cluster | None = None) -> int:
    rows = collect(cfg, ctids, cluster or Cluster())
    print(json.dumps(rows, indent=2) if as_json else render(rows))
    return 1 if any("error" in r for r in rows) else 0
