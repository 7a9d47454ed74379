"""The shipped alert rules and dashboard only name metrics pvezfsha writes."""
import json
import re
from pathlib import Path

from pvezfsha import metrics

MON = Path(__file__).resolve().parents[1] / "packaging/monitoring"
KNOWN = set(metrics._HELP) | {"pvezfsha_sent_bytes_total"}


def names(text: str) -> set[str]:
    return set(re.findall(r"\bpvezfsha_[a-z_]+", text)) - {"pvezfsha_"}


def test_the_alert_rules_name_only_written_metrics():
    text = (MON / "pvezfsha.rules.yml").read_text()
    used = names(text)
    assert used and used <= KNOWN, used - KNOWN


def test_the_dashboard_is_json_and_names_only_written_metrics():
    dash = json.loads((MON / "grafana-dashboard.json").read_text())
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p["targets"])
    assert names(exprs) and names(exprs) <= KNOWN, names(exprs) - KNOWN
