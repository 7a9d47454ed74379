"""The Prometheus text file for node_exporter's textfile collector.

Written after every cycle and by the agent at a steady pace, from the same
document `pvezfsha status --json` prints (status.py), so the two never
disagree. Per-standby series come from the primary only (a running transfer
is visible there alone); every node exports its role and its kept copies. The file is replaced atomically (a temp file renamed in the same
directory): the collector never reads half of it. With no collector
directory (node_exporter not installed) nothing is written.
"""

from __future__ import annotations

from pathlib import Path

from pvezfsha.state import write_atomically
from pvezfsha.status import STATES

_HELP = {
    "pvezfsha_lag_seconds": ("gauge", "Time since the standby last held all of the primary's data: "
                                      "at most what a failover to it now would lose."),
    "pvezfsha_last_success_timestamp_seconds": ("gauge", "When a cycle last left the standby up to date."),
    "pvezfsha_last_transfer_bytes": ("gauge", "Size of the last stream sent to the standby."),
    "pvezfsha_last_transfer_duration_seconds": ("gauge", "Duration of the last stream sent to the standby."),
    "pvezfsha_sent_bytes_total": ("counter", "Bytes sent to the standby by this primary at this epoch."),
    "pvezfsha_consecutive_failures": ("gauge", "Failed cycles to the standby since the last good one."),
    "pvezfsha_state": ("gauge", "1 for the standby's current state (ok, transferring, lagging, diverged, "
                                "error, unknown)."),
    "pvezfsha_kept_divergences": ("gauge", "Diverged copies kept on the node, waiting for the admin."),
    "pvezfsha_primary": ("gauge", "1 when this node is the container's primary."),
    "pvezfsha_epoch": ("gauge", "The container's epoch (grows with every takeover)."),
    "pvezfsha_status_timestamp_seconds": ("gauge", "When this file was written."),
}


def _label(v) -> str:
    return str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(doc: dict) -> str:
    samples: dict[str, list[str]] = {name: [] for name in _HELP}

    def add(name: str, labels: dict, value) -> None:
        if value is None:
            return
        text = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
        samples[name].append(f"{name}{{{text}}} {float(value):.17g}")

    node = doc["node"]
    add("pvezfsha_status_timestamp_seconds", {"node": node}, doc["time"])
    for c in doc["containers"]:
        ct = {"ctid": c["ctid"], "node": node}
        if c["error"]:
            continue
        add("pvezfsha_primary", ct, 1 if c["primary"] == node else 0)
        add("pvezfsha_epoch", ct, c["epoch"])
        for d in c["datasets"]:
            add("pvezfsha_kept_divergences", {**ct, "dataset": d["dataset"], "holder": node}, len(d["kept"]))
            if c["primary"] != node:
                continue    # the primary speaks for its standbys: one series each, not one per node
            for s in d["standbys"]:
                lab = {**ct, "dataset": d["dataset"], "standby": s["node"]}
                add("pvezfsha_lag_seconds", lab, s["lag_seconds"])
                add("pvezfsha_last_success_timestamp_seconds", lab, s["last_ok"])
                add("pvezfsha_last_transfer_bytes", lab, s["last_transfer_bytes"])
                add("pvezfsha_last_transfer_duration_seconds", lab, s["last_transfer_seconds"])
                add("pvezfsha_sent_bytes_total", lab, s["sent_bytes_total"])
                add("pvezfsha_consecutive_failures", lab, s["failures"])
                for state in STATES:
                    add("pvezfsha_state", {**lab, "state": state}, 1 if s["state"] == state else 0)
    out = []
    for name, (kind, text) in _HELP.items():
        if samples[name]:
            out += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", *samples[name]]
    return "\n".join(out) + "\n"


def write(path: str, doc: dict) -> bool:
    """Replace `path`; False when its directory does not exist or cannot be written."""
    if not path:
        return False
    target = Path(path)
    if not target.parent.is_dir():
        return False
    # The collector's directory may be writable by its own account, which
    # must not aim a link at /etc/shadow: write_atomically never follows one.
    try:
        write_atomically(target, render(doc))
        return True
    except OSError:
        return False
