"""`pvezfsha status`: whether each container's data is safe, at a glance.

Every fact comes from this node or from pmxcfs, never from ssh, so status
answers in well under a second and works while a peer is down:
- the record (record.py): the primary, the epoch, and each standby's newest
  common snapshot and when it last held everything, which is the lag;
- the health files (health.py): how the primary's cycles are going, and the
  diverged copies each node keeps;
- this node: its datasets and the copies kept beside them (one `zfs get`
  of their parents, never per snapshot; zfscli.py says why not through
  libzfs_core), and a transfer running here (progress.py).

`judge` turns those facts into one state per dataset and standby; it is
pure, and the metrics and the alerts use it too.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from dataclasses import dataclass

from pvezfsha import progress, zfscli
from pvezfsha.cluster import Cluster
from pvezfsha.config import Config
from pvezfsha.health import Health, Link
from pvezfsha.record import Replica
from pvezfsha.record_store import RecordError, RecordStore
from pvezfsha.role import role_of
from pvezfsha.kept import KEPT_PROP, is_kept_copy
from pvezfsha.units import fmt_age

SCHEMA = "pvezfsha-status/1"
STATES = ("ok", "transferring", "lagging", "diverged", "error", "unknown")
OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3


def age(seconds: float | None) -> str:
    return "-" if seconds is None else fmt_age(max(0.0, seconds))


@dataclass(frozen=True)
class Verdict:
    state: str          # ok, transferring, lagging, diverged, error, unknown
    severity: int       # Nagios: OK, WARNING, CRITICAL, UNKNOWN
    detail: str


def judge(now: float, max_staleness: float, after_failures: int, replica: Replica | None,
          link: Link | None, kept: dict[str, str], transfer: dict | None, *,
          min_failing: float = 0.0, epoch_began: float = 0.0) -> Verdict:
    """One standby's state for one dataset.

    The lag is what a failover to it now would lose at most: the time since
    it last held everything the primary had (`in_sync_at`), or since its
    newest common snapshot was taken when it never did.
    - A failing cycle comes first: nothing else moves while it fails. It is
      CRITICAL after `after_failures` in a row over at least `min_failing`
      seconds (the agent retries within seconds: a standby's reboot is not
      an emergency), or as soon as the standby is past max_staleness.
    - Facts older than this epoch were about the previous primary: unknown
      until this primary's first cycle confirms them.
    - Past max_staleness is lagging, whatever else is true: kept copies or a
      running transfer do not make a stale replica safe, and must not hide it.
    """
    lag = None
    if replica is not None:
        lag = max(0.0, now - (replica.in_sync_at or replica.created))
    stale = lag is not None and lag > max_staleness
    also = []
    if kept:
        also.append(f"{len(kept)} diverged copy(ies) kept there")
    if transfer is not None:
        also.append(_transfer(transfer, now))
    if link is not None and link.failures:
        failing_for = now - (link.failing_since or link.error_at)
        sev = CRITICAL if stale or (link.failures >= after_failures and failing_for >= min_failing) else WARNING
        return Verdict("error", sev, f"{link.failures} failed cycle(s) in {age(failing_for)}, the last "
                                     f"{age(now - link.error_at)} ago: {link.error}")
    if replica is not None and link is None and epoch_began and (replica.in_sync_at or replica.created) < epoch_began:
        return Verdict("unknown", UNKNOWN, "not confirmed since the last takeover (the new primary's first cycle "
                                           "will tell)")
    if stale:
        return Verdict("lagging", CRITICAL, "; ".join([f"last held everything {age(lag)} ago, past max_staleness "
                                                        f"({age(max_staleness)})"] + also))
    if replica is None:
        if transfer is not None:
            return Verdict("transferring", WARNING, "first sync: " + _transfer(transfer, now))
        if link is not None:
            return Verdict("lagging", CRITICAL, "holds no common snapshot yet")
        return Verdict("unknown", UNKNOWN, "no cycle has recorded what it holds")
    if kept:
        return Verdict("diverged", WARNING, f"{len(kept)} diverged copy(ies) kept there: {', '.join(sorted(kept))}")
    if transfer is not None:
        return Verdict("transferring", OK, _transfer(transfer, now))
    return Verdict("ok", OK, "")


def _transfer(t: dict, now: float) -> str:
    return (f"{t.get('step', 'stream')}: "
            + progress.describe(int(t.get("bytes", 0)), t.get("estimate"),
                                float(t.get("updated", now)) - float(t.get("started", now))))


def collect(cfg: Config, ctids: list[int], cluster: Cluster, now: float | None = None) -> dict:
    """The status document (schema `SCHEMA`, packaging/status.schema.json)."""
    local = cluster.local_node()
    now = time.time() if now is None else now
    store = RecordStore(cluster.root)
    out = {"schema": SCHEMA, "node": local, "time": now, "containers": []}
    selected = cfg.select(ctids)
    here = Local([ds.on(local) for ct in selected for ds in ct.datasets])
    for ct in selected:
        c = {"ctid": ct.ctid, "primary": None, "epoch": 0, "role": "?", "error": None, "datasets": []}
        out["containers"].append(c)
        try:
            role = role_of(cluster, store, ct.ctid)
        except RecordError as e:
            c["error"] = str(e)
            continue
        c.update(primary=role.primary, epoch=role.epoch, role=role.describe(local))
        rec = role.record
        healths: dict[str, Health | None] = {n: store.read_health(ct.ctid, n) for n in ct.nodes}
        ph = healths.get(role.primary) if role.primary else None
        if ph is not None and (ph.epoch != role.epoch or not ph.primary):
            ph = None                       # an older primary's facts
        prefix = ct.options.snapshot_prefix
        for ds in ct.datasets:
            name = ds.on(local)
            d = {"dataset": ds.name, "local": name, "newest": None, "kept": here.kept(name, prefix),
                 **here.facts(name), "standbys": []}
            c["datasets"].append(d)
            newest = rec.replicas.get(role.primary or "", {}).get(ds.name) if rec else None
            if newest is not None:
                d["newest"] = {"snapshot": newest.snapshot, "guid": f"{newest.guid:016x}", "created": newest.created}
            for peer in (n for n in ct.nodes if n != role.primary):
                rep = rec.replicas.get(peer, {}).get(ds.name) if rec else None
                link = ph.links.get(peer, {}).get(ds.name) if ph else None
                kept = (d["kept"] if peer == local else
                        {k: v for k, v in (healths[peer].kept if healths.get(peer) else {}).items()
                         if is_kept_copy(k, ds.on(peer), prefix)})
                transfer = progress.live(name, peer, now) if role.primary == local else None
                v = judge(now, ct.options.max_staleness, cfg.alerts.after_failures, rep, link, kept, transfer,
                          min_failing=cfg.interval, epoch_began=rec.changed if rec else 0.0)
                d["standbys"].append({
                    "node": peer, "state": v.state, "severity": v.severity, "detail": v.detail,
                    "common": rep.snapshot if rep else None, "common_guid": f"{rep.guid:016x}" if rep else None,
                    "lag_seconds": max(0.0, now - (rep.in_sync_at or rep.created)) if rep else None,
                    "last_ok": link.ok_at or None if link else None,
                    "failures": link.failures if link else 0,
                    "last_error": link.error or None if link else None,
                    "last_error_at": link.error_at or None if link else None,
                    "last_transfer_bytes": link.bytes if link else 0,
                    "last_transfer_seconds": link.seconds if link else 0.0,
                    "sent_bytes_total": link.bytes_total if link else 0,
                    "transfer": transfer})
    return out


def severity(doc: dict) -> int:
    """The worst of all states; a container whose record is unreadable is UNKNOWN."""
    worst = OK
    for c in doc["containers"]:
        sevs = [UNKNOWN] if c["error"] else []
        sevs += [s["severity"] for d in c["datasets"] for s in d["standbys"]]
        sevs += [CRITICAL for d in c["datasets"] if d["error"] or d["exists"] is False and c["primary"] == doc["node"]]
        for sev in sevs:
            # Nagios orders UNKNOWN below CRITICAL.
            if (sev == CRITICAL) or (sev == UNKNOWN and worst != CRITICAL) or (sev == WARNING and worst == OK):
                worst = sev
    return worst


def check_line(doc: dict) -> str:
    """One line for Icinga/Zabbix/Checkmk: the worst states first."""
    names = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}
    sev = severity(doc)
    bad = []
    for c in doc["containers"]:
        if c["error"]:
            bad.append(f"CT {c['ctid']}: {c['error']}")
        for d in c["datasets"]:
            if d["error"]:
                bad.append(f"CT {c['ctid']} {d['local']}: {d['error']}")
            for s in d["standbys"]:
                if s["severity"] != OK:
                    bad.append(f"CT {c['ctid']} {d['dataset']} -> {s['node']}: {s['state']}"
                               + (f" ({s['detail']})" if s["detail"] else ""))
    n = sum(len(d["standbys"]) for c in doc["containers"] for d in c["datasets"])
    return f"PVEZFSHA {names[sev]} - " + ("; ".join(bad) if bad else f"{n} replica(s) ok")


_COLOURS = {"ok": "32", "transferring": "36", "lagging": "33", "diverged": "35", "error": "31", "unknown": "33"}


def render(doc: dict, colour: bool = False) -> str:
    def paint(state: str) -> str:
        text = f"{state:<12}"
        return f"\033[{_COLOURS.get(state, '0')}m{text}\033[0m" if colour else text

    now = doc["time"]
    out = []
    for c in doc["containers"]:
        out.append(f"CT {c['ctid']}  primary {c['primary'] or '?'}"
                   + (f" (epoch {c['epoch']})" if c["epoch"] else "") + f"  this node {doc['node']}: {c['role']}")
        if c["error"]:
            out.append(f"  error: {c['error']}")
            continue
        out.append(f"  {'DATASET':<24} {'STANDBY':<10} {'STATE':<12} {'LAG':>8}  {'LAST OK':>8}  {'FAIL':>4}  COMMON")
        for d in c["datasets"]:
            if d["error"]:
                out.append(f"  {d['local']:<24} error: {d['error']}")
            elif d["exists"] is False:
                out.append(f"  {d['local']:<24} does not exist on this node")
            for s in d["standbys"]:
                last_ok = age(now - s["last_ok"]) if s["last_ok"] else "-"
                out.append(f"  {d['dataset']:<24} {s['node']:<10} {paint(s['state'])} {age(s['lag_seconds']):>8}  "
                           f"{last_ok:>8}  {s['failures']:>4}  @{s['common'] or '-'}")
                if s["detail"]:
                    out.append(f"      {s['detail']}")
            if d["resumable"]:
                out.append(f"      {d['local']}: a partial receive waits here (it resumes with the next cycle)")
            for kept, info in d["kept"].items():
                out.append(f"      DIVERGED data kept as {kept} on this node ({info}); "
                           f"see `pvezfsha diverged {c['ctid']}`")
    return "\n".join(out)


def _parent(dataset: str) -> str:
    return dataset.rsplit("/", 1)[0] if "/" in dataset else dataset


class Local:
    """What this node's ZFS says of some datasets and the copies kept beside
    them: one `zfs get` of their parents (a pool's root is its own)."""

    PROPS = ["readonly", "receive_resume_token", KEPT_PROP]

    def __init__(self, datasets: list[str]):
        try:
            self._props, self._errors = zfscli.family_props(sorted({_parent(n) for n in datasets}), self.PROPS)
        except Exception as e:  # status must still print what pmxcfs knows
            self._props, self._errors = {}, {_parent(n): str(e) for n in datasets}

    def facts(self, dataset: str) -> dict:
        err = self._errors.get(_parent(dataset))
        if err is not None:
            return {"exists": None, "readonly": None, "resumable": None, "error": err}
        p = self._props.get(dataset)
        if p is None:
            return {"exists": False, "readonly": None, "resumable": None, "error": None}
        return {"exists": True, "readonly": p.get("readonly", ("off", ""))[0] == "on",
                "resumable": p.get("receive_resume_token", ("-", ""))[0] not in ("-", ""), "error": None}

    def kept(self, dataset: str, prefix: str) -> dict[str, str]:
        """Diverged states kept beside `dataset` (divergence.py names them)."""
        return {name: p[KEPT_PROP][0] for name, p in sorted(self._props.items())
                if p.get(KEPT_PROP, ("-", "-"))[1] != "-" and is_kept_copy(name, dataset, prefix)}


def diverged(cfg: Config, ctids: list[int], cluster: Cluster | None = None) -> int:
    """What was kept, and the commands to look at it or bring it back."""
    local = (cluster or Cluster()).local_node()
    any_found = False
    selected = cfg.select(ctids)
    here = Local([ds.on(local) for ct in selected for ds in ct.datasets])
    for ct in selected:
        for ds in ct.datasets:
            name = ds.on(local)
            for kept, info in here.kept(name, ct.options.snapshot_prefix).items():
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


def is_primary(cfg: Config, ctids: list[int], cluster: Cluster | None = None) -> int:
    """0 when this node is the primary of every one of `ctids` (the record
    names it and the container is here), else 1: sanoid's units run with
    `ExecCondition=pvezfsha is-primary CTID`, so that snapshots are taken
    and pruned on the primary only (a standby's are divergence, or at best
    pruned as empty)."""
    cluster = cluster or Cluster()
    local = cluster.local_node()
    store = RecordStore(cluster.root)
    selected = cfg.select(ctids)
    if not cluster.is_quorate():
        # A node cut off from the cluster still reads a record naming it,
        # while the others may have moved the container on.
        print(f"{local} has no quorum: not the primary of anything now")
        return 1
    rc = 0
    for ct in selected:
        try:
            role = role_of(cluster, store, ct.ctid)
        except RecordError as e:
            print(f"CT {ct.ctid}: {e}")
            rc = 1
            continue
        print(f"CT {ct.ctid}: {local} is {role.describe(local)}")
        if not role.is_primary(local):
            rc = 1
    return rc


def run(cfg: Config, ctids: list[int], as_json: bool = False, check: bool = False,
        cluster: Cluster | None = None, now: float | None = None) -> int:
    doc = collect(cfg, ctids, cluster or Cluster(), now)
    if check:
        print(check_line(doc))
        return severity(doc)
    print(json.dumps(doc, indent=2) if as_json else render(doc, colour=sys.stdout.isatty()))
    return 0 if severity(doc) in (OK, WARNING) else 1
