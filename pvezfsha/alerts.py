"""Alerts: tell root when the data is not safe, once, and when it is again.

Conditions come from the status document (status.py), so an alert and
`pvezfsha status` never tell different stories:
- on the primary, per dataset and standby: cycles failing `after_failures`
  times in a row, and a lag past `max_staleness`;
- on any node: a diverged copy newly kept there.
Events come from the hook: a refused takeover, a takeover that accepted a
stale replica.

`step` is pure: the conditions now, and what was sent before, give what to
send. A condition is sent when it starts, again every `repeat` while it
lasts, and a recovery notice follows when it clears. Events with the same
key within an hour are sent once (HA retries a refused start). At most
MAX_PER_HOUR messages leave a node in an hour; the rest go to the journal
only, which every alert also does.

Delivery is the way PVE itself notifies: `sendmail` to root (the node's
mail system), or a JSON POST to a webhook.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from email.message import EmailMessage

from pvezfsha.log import logger
from pvezfsha.state import state_dir

MAX_PER_HOUR = 20
EVENT_WINDOW = 3600.0
SENDMAIL = "/usr/sbin/sendmail"


@dataclass(frozen=True)
class Alert:
    key: str            # what is deduplicated: "<kind>/<ctid>/..."
    ctid: int
    severity: str       # warning, critical
    summary: str        # one line: the subject
    body: str           # what happened, what it means for the data, the one command to look further


def conditions(doc: dict) -> list[Alert]:
    """The lasting conditions this node should report, from its status document."""
    node = doc["node"]
    out = []
    for c in doc["containers"]:
        ctid = c["ctid"]
        look = f"pvezfsha status {ctid}"
        for d in c["datasets"]:
            for kept, info in d["kept"].items():
                out.append(Alert(f"diverged/{ctid}/{kept}", ctid, "warning",
                                 f"CT {ctid}: diverged data kept on {node} as {kept}",
                                 f"{node} held writes of {d['local']} that the primary does not have ({info}).\n"
                                 f"They were kept aside, not destroyed, and replication goes on. They are not in "
                                 f"the container's data until you copy them back.\n"
                                 f"Look further: pvezfsha diverged {ctid}"))
            if c["primary"] != node:
                continue    # the primary reports its standbys; one message, not one per node
            for s in d["standbys"]:
                where = f"{d['dataset']} -> {s['node']}"
                if s["state"] == "error" and s["severity"] == 2:
                    out.append(Alert(f"failing/{ctid}/{d['dataset']}/{s['node']}", ctid, "critical",
                                     f"CT {ctid}: replication of {where} is failing",
                                     f"{s['failures']} cycles in a row failed; the last error: {s['last_error']}\n"
                                     f"{s['node']} holds {d['dataset']} as of @{s['common'] or '-'}: a failover to "
                                     f"it now would lose everything written since.\nLook further: {look}"))
                elif s["state"] == "lagging":
                    out.append(Alert(f"lagging/{ctid}/{d['dataset']}/{s['node']}", ctid, "critical",
                                     f"CT {ctid}: {where} is behind past max_staleness",
                                     f"{s['detail']}.\nA failover to {s['node']} now would lose that much, and the "
                                     f"takeover gate refuses it unless on_stale = \"warn\".\nLook further: {look}"))
    return out


def step(memory: dict, active: list[Alert], ctids: set[int], now: float, repeat: float) -> tuple[list, dict]:
    """(notices, new memory). A notice is ("firing" | "repeat" | "resolved", Alert).

    Only conditions of `ctids` are judged: a cycle of one container must not
    resolve another's. `memory` maps a key to {"since", "sent", "alert"}.
    """
    memory = {k: dict(v) for k, v in memory.items()}
    notices = []
    seen = set()
    for a in active:
        seen.add(a.key)
        m = memory.get(a.key)
        if m is None:
            memory[a.key] = {"since": now, "sent": now, "alert": asdict(a)}
            notices.append(("firing", a))
        elif now - m["sent"] >= repeat:
            m["sent"], m["alert"] = now, asdict(a)
            notices.append(("repeat", a))
    for key, m in list(memory.items()):
        a = Alert(**m["alert"])
        if key.startswith("event/") or a.ctid not in ctids or key in seen:
            continue
        del memory[key]
        notices.append(("resolved", a))
    return notices, memory


def event_step(memory: dict, alert: Alert, now: float) -> tuple[bool, dict]:
    """Whether to send an event now, and the new memory (events expire)."""
    memory = {k: v for k, v in memory.items() if not (k.startswith("event/") and now - v["sent"] >= EVENT_WINDOW)}
    key = "event/" + alert.key
    if key in memory:
        return False, memory
    memory[key] = {"since": now, "sent": now, "alert": asdict(alert)}
    return True, memory


def budget(log: list[float], now: float) -> tuple[bool, list[float]]:
    """The node-wide rate limit: True when one more message may go out."""
    log = [t for t in log if now - t < 3600]
    if len(log) >= MAX_PER_HOUR:
        return False, log
    return True, log + [now]


# -- I/O ---------------------------------------------------------------------------


def _memory_path():
    return state_dir() / "alerts.json"


def _load() -> dict:
    try:
        d = json.loads(_memory_path().read_text())
        return d if isinstance(d, dict) and isinstance(d.get("alerts"), dict) else {"alerts": {}, "sent": []}
    except (OSError, ValueError):
        return {"alerts": {}, "sent": []}


def _save(d: dict) -> None:
    path = _memory_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(d))
        os.replace(tmp, path)
    except OSError as e:
        logger.warning(f"alerts: cannot save {path}: {e.strerror}; an alert may be sent twice")


def review(cfg, doc: dict, now: float | None = None) -> None:
    """After a cycle: send what started, lasts or cleared for these containers."""
    now = time.time() if now is None else now
    d = _load()
    ctids = {c["ctid"] for c in doc["containers"] if not c["error"]}
    notices, d["alerts"] = step(d["alerts"], conditions(doc), ctids, now, cfg.alerts.repeat)
    for kind, a in notices:
        _send(cfg, d, kind, a, doc["node"], now)
    _save(d)


def event(cfg, alert: Alert, node: str, now: float | None = None) -> None:
    """A one-off happening (the hook's refusals)."""
    now = time.time() if now is None else now
    d = _load()
    send, d["alerts"] = event_step(d["alerts"], alert, now)
    if send:
        _send(cfg, d, "event", alert, node, now)
    _save(d)


def _send(cfg, d: dict, kind: str, a: Alert, node: str, now: float) -> None:
    subject = f"[pvezfsha {node}] " + ("RESOLVED: " if kind == "resolved" else "") + a.summary
    body = (f"The condition has cleared on {node}.\n\nIt was:\n{a.body}\n" if kind == "resolved"
            else f"{a.body}\n")
    (logger.info if kind == "resolved" else logger.warning)(f"alert ({kind}): {a.summary}")
    ok, d["sent"] = budget(d.get("sent", []), now)
    if not ok:
        logger.warning(f"alerts: more than {MAX_PER_HOUR} this hour; this one goes to the journal only")
        return
    if cfg.alerts.mail_to:
        mail(cfg.alerts.mail_to, subject, body)
    if cfg.alerts.webhook:
        webhook(cfg.alerts.webhook, {"node": node, "kind": kind, "key": a.key, "ctid": a.ctid,
                                     "severity": "ok" if kind == "resolved" else a.severity,
                                     "summary": a.summary, "body": a.body, "time": now})


def mail(to: str, subject: str, body: str) -> None:
    if not os.access(SENDMAIL, os.X_OK):
        logger.warning(f"alerts: no {SENDMAIL} on this node (install a mail transport such as postfix); "
                       f"not mailed: {subject}")
        return
    msg = EmailMessage()
    msg["To"], msg["Subject"] = to, subject
    msg.set_content(body)
    try:
        p = subprocess.run([SENDMAIL, "-oi", "--", to], input=msg.as_bytes(), capture_output=True, timeout=30)
        if p.returncode != 0:
            logger.warning(f"alerts: sendmail to {to} exited {p.returncode}: "
                           f"{p.stderr.decode(errors='replace').strip()[:200]}")
    except (OSError, subprocess.TimeoutExpired) as e:
        logger.warning(f"alerts: sendmail to {to} failed: {e}")


def webhook(url: str, payload: dict) -> None:
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            r.read(1 << 16)
    except (urllib.error.URLError, OSError, ValueError) as e:
        logger.warning(f"alerts: webhook {url} failed: {e}")
