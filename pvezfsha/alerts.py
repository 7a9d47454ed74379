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
lasts, and a recovery notice follows when it clears. A primary's condition
that stops being judged because the node is no longer the primary (a move,
a takeover) gets a hand-over notice instead: it did not clear, the new
primary judges it now. Events with the same
key within an hour are sent once (HA retries a refused start). At most
MAX_PER_HOUR messages leave a node in an hour; the rest go to the journal
only, which every alert also does.

Delivery is the way PVE itself notifies: `sendmail` to root (the node's
mail system), or a JSON POST to a webhook. The hook only queues its events
(`queue`) and starts `pvezfsha notify` detached: a start never waits for a
mail system or a webhook.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from email.message import EmailMessage

from pvezfsha.log import logger
from pvezfsha.state import state_dir, write_atomically

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


PRIMARY_KINDS = ("failing", "lagging")     # judged by the primary only (conditions)


def step(memory: dict, active: list[Alert], ctids: set[int], now: float, repeat: float,
         primary_of: set[int] | None = None, unjudged: tuple[str, ...] = ()) -> tuple[list, dict]:
    """(notices, new memory). A notice is ("firing" | "repeat" | "resolved" |
    "handed-over", Alert).

    Only conditions of `ctids` are judged: a cycle of one container must not
    resolve another's. `primary_of` (default: all of `ctids`) are those this
    node is the primary of; a primary's condition of another container is
    handed over, not resolved. Keys that start with one of `unjudged` (a
    dataset this node could not read) are left as they are. `memory` maps a
    key to {"since", "sent", "alert"}.
    """
    primary_of = ctids if primary_of is None else primary_of
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
        if key.startswith("event/") or a.ctid not in ctids or key in seen or key.startswith(unjudged):
            continue
        del memory[key]
        handed = key.startswith(tuple(k + "/" for k in PRIMARY_KINDS)) and a.ctid not in primary_of
        notices.append(("handed-over" if handed else "resolved", a))
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
# The memory (alerts.json) is shared by the timer, the agent and `notify`:
# every read-modify-write holds its flock. Sending never raises and never
# takes long: a webhook gets WEBHOOK_DEADLINE in all, DNS included.

WEBHOOK_DEADLINE = 15.0


@contextmanager
def _memory():
    path = state_dir() / "alerts.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(state_dir() / "alerts.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            d = json.loads(path.read_text())
            if not (isinstance(d, dict) and isinstance(d.get("alerts"), dict) and isinstance(d.get("sent"), list)
                    and all(isinstance(v, dict) and {"since", "sent", "alert"} <= set(v) for v in d["alerts"].values())):
                raise ValueError("damaged")
        except (OSError, ValueError):
            d = {"alerts": {}, "sent": []}
        yield d
        try:
            write_atomically(path, json.dumps(d))
        except OSError as e:
            logger.warning(f"alerts: cannot save {path}: {e.strerror}; an alert may be sent twice")
    finally:
        os.close(fd)


def review(cfg, doc: dict, now: float | None = None) -> None:
    """After a cycle: send what started, lasts or cleared for these containers,
    and the events the hook queued."""
    now = time.time() if now is None else now
    ctids = {c["ctid"] for c in doc["containers"] if not c["error"]}
    primary_of = {c["ctid"] for c in doc["containers"] if not c["error"] and c["primary"] == doc["node"]}
    # A dataset ZFS could not read here shows no kept copies: not a recovery.
    unjudged = tuple(f"diverged/{c['ctid']}/{d['local']}-" for c in doc["containers"] for d in c["datasets"]
                     if d.get("error"))
    with _memory() as d:
        notices, new = step(d["alerts"], conditions(doc), ctids, now, cfg.alerts.repeat, primary_of, unjudged)
        for kind, a in notices:
            if not _send(cfg, d, kind, a, doc["node"], now):
                # Over the hourly cap: not sent, so not remembered as sent; the next review tries again.
                if a.key in d["alerts"]:
                    new[a.key] = d["alerts"][a.key]
                else:
                    new.pop(a.key, None)
        d["alerts"] = new
        _flush(cfg, d, doc["node"], now)


# -- events: the hook queues, `pvezfsha notify` or the next review sends ----------

def _events_dir():
    return state_dir() / "events"


def queue(alert: Alert, node: str) -> None:
    """Queue an event for sending; never raises, never blocks (the hook's
    start must not wait for a mail system or a webhook)."""
    try:
        path = _events_dir() / (alert.key.replace("/", "%") + ".json")
        write_atomically(path, json.dumps({"node": node, "time": time.time(), "alert": asdict(alert)}))
    except Exception as e:  # an alert must never cost a start
        logger.warning(f"alerts: cannot queue {alert.summary!r}: {e}")


def notify(cfg, now: float | None = None) -> int:
    """`pvezfsha notify`: send the queued events."""
    now = time.time() if now is None else now
    with _memory() as d:
        _flush(cfg, d, None, now)
    return 0


def _flush(cfg, d: dict, node: str | None, now: float) -> None:
    try:
        paths = sorted(_events_dir().glob("*.json"))
    except OSError:
        return
    for path in paths:
        try:
            ev = json.loads(path.read_text())
            a = Alert(**ev["alert"])
            who = str(ev.get("node") or node)
        except (OSError, ValueError, KeyError, TypeError):
            path.unlink(missing_ok=True)    # damaged: nothing to send
            continue
        send, mem = event_step(d["alerts"], a, now)
        if send and not _send(cfg, d, "event", a, who, now):
            continue    # over the cap: stays queued
        d["alerts"] = mem
        path.unlink(missing_ok=True)


def _send(cfg, d: dict, kind: str, a: Alert, node: str, now: float) -> bool:
    """False when the hourly cap holds it back. Delivery problems are journal lines."""
    tag = {"resolved": "RESOLVED: ", "handed-over": "HANDED OVER: "}.get(kind, "")
    subject = f"[pvezfsha {node}] {tag}{a.summary}"
    if kind == "resolved":
        body = f"The condition has cleared on {node}.\n\nIt was:\n{a.body}\n"
    elif kind == "handed-over":
        body = (f"{node} is no longer the primary of CT {a.ctid}. This is not a recovery: the new primary judges "
                f"this replication from now on, and alerts if the condition still holds.\n"
                f"Look further: pvezfsha status {a.ctid}\n\nIt was:\n{a.body}\n")
    else:
        body = f"{a.body}\n"
    ok, d["sent"] = budget(d.get("sent", []), now)
    if not ok:
        logger.warning(f"alerts: more than {MAX_PER_HOUR} this hour; held back for now: {a.summary}")
        return False
    (logger.info if kind in ("resolved", "handed-over") else logger.warning)(f"alert ({kind}): {a.summary}")
    if cfg.alerts.mail_to:
        mail(cfg.alerts.mail_to, subject, body)
    if cfg.alerts.webhook:
        webhook(cfg.alerts.webhook, {"node": node, "kind": kind, "key": a.key, "ctid": a.ctid,
                                     "severity": {"resolved": "ok", "handed-over": "info"}.get(kind, a.severity),
                                     "summary": a.summary, "body": a.body, "time": now})
    return True


def mail(to: str, subject: str, body: str) -> None:
    if not os.access(SENDMAIL, os.X_OK):
        logger.warning(f"alerts: no {SENDMAIL} on this node (install a mail transport such as postfix); "
                       f"not mailed: {subject}")
        return
    try:
        msg = EmailMessage()
        msg["To"], msg["Subject"] = to, " ".join(subject.split())
        msg.set_content(body.encode("utf-8", "replace").decode("utf-8"))
        p = subprocess.run([SENDMAIL, "-oi", "--", to], input=msg.as_bytes(), capture_output=True, timeout=30)
        if p.returncode != 0:
            logger.warning(f"alerts: sendmail to {to} exited {p.returncode}: "
                           f"{p.stderr.decode(errors='replace').strip()[:200]}")
    except Exception as e:  # noqa: BLE001 - an alert must never cost a cycle
        logger.warning(f"alerts: sendmail to {to} failed: {e}")


def _redacted(url: str) -> str:
    """Webhook URLs often carry their secret in the path: log the host only."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or '?'}/..."


def webhook(url: str, payload: dict) -> None:
    errors: list[str] = []

    def post():
        try:
            req = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=10) as r:
                if not 200 <= r.status < 300:
                    errors.append(f"HTTP {r.status}")
        except Exception as e:  # noqa: BLE001 - HTTPException, URLError, OSError, ValueError...
            errors.append(str(e) or type(e).__name__)

    t = threading.Thread(target=post, name="webhook", daemon=True)
    t.start()
    t.join(WEBHOOK_DEADLINE)
    if t.is_alive():
        logger.warning(f"alerts: webhook {_redacted(url)} did not answer within {WEBHOOK_DEADLINE:.0f} s")
    elif errors:
        logger.warning(f"alerts: webhook {_redacted(url)} failed: {errors[0]}")
