"""status.py: one state per dataset and standby, from the record, the health
files and this node, never from ssh."""
import json
from pathlib import Path

import jsonschema
import pytest

from pvezfsha import config, status, zfscli
from pvezfsha.cluster import Cluster
from pvezfsha.health import Link, Result, advance
from pvezfsha.record import Record, Replica
from pvezfsha.record_store import RecordStore
from pvezfsha.status import CRITICAL, OK, UNKNOWN, WARNING, judge
from tests.fakenodes import pve_tree

SCHEMA = json.loads((Path(__file__).resolve().parents[1] / "packaging/status.schema.json").read_text())
NOW = 1_800_000_000.0
REP = Replica(guid=0xABC, snapshot="pvezfsha_x", created=NOW - 900, in_sync_at=NOW - 60)


def test_a_standby_that_held_everything_a_minute_ago_is_ok():
    assert judge(NOW, 1800, 3, REP, Link(ok_at=NOW - 60), {}, None).state == "ok"


def test_past_max_staleness_is_lagging_and_critical():
    v = judge(NOW, 30, 3, REP, Link(ok_at=NOW - 60), {}, None)
    assert (v.state, v.severity) == ("lagging", CRITICAL) and "past max_staleness" in v.detail


def test_lag_counts_from_the_snapshot_when_the_standby_never_held_everything():
    rep = Replica(guid=1, snapshot="s", created=NOW - 4000, in_sync_at=0)
    assert judge(NOW, 1800, 3, rep, None, {}, None).state == "lagging"


def test_a_failed_cycle_is_an_error_a_warning_until_after_failures():
    one = judge(NOW, 1800, 3, REP, Link(failures=1, error="cannot reach pve2", error_at=NOW - 5), {}, None)
    three = judge(NOW, 1800, 3, REP, Link(failures=3, error="cannot reach pve2", error_at=NOW - 5), {}, None)
    assert (one.state, one.severity, three.severity) == ("error", WARNING, CRITICAL)
    assert "cannot reach pve2" in one.detail


def test_kept_copies_are_diverged():
    v = judge(NOW, 1800, 3, REP, Link(ok_at=NOW), {"tank/a-pvezfsha-diverged-1": "x"}, None)
    assert (v.state, v.severity) == ("diverged", WARNING)


def test_kept_copies_or_a_transfer_never_hide_a_stale_standby():
    t = {"step": "@a -> @b", "bytes": 1, "estimate": 10, "started": NOW - 10, "updated": NOW}
    for kept, transfer in (({"k": "x"}, None), ({}, t)):
        v = judge(NOW, 30, 3, REP, Link(ok_at=NOW - 60), kept, transfer)
        assert (v.state, v.severity) == ("lagging", CRITICAL), v


def test_failures_within_one_interval_stay_a_warning_however_many():
    link = Link(failures=5, error="x", error_at=NOW - 1, failing_since=NOW - 50)
    assert judge(NOW, 1800, 3, REP, link, {}, None, min_failing=600).severity == WARNING
    link.failing_since = NOW - 700
    assert judge(NOW, 1800, 3, REP, link, {}, None, min_failing=600).severity == CRITICAL


def test_facts_from_before_the_last_takeover_are_unknown_until_confirmed():
    v = judge(NOW, 1800, 3, REP, None, {}, None, epoch_began=NOW - 30)
    assert v.state == "unknown" and "takeover" in v.detail
    assert judge(NOW, 1800, 3, REP, Link(ok_at=NOW - 10), {}, None, epoch_began=NOW - 30).state == "ok"


def test_a_running_first_transfer_is_transferring_with_its_progress():
    t = {"step": "full @s", "bytes": 1 << 30, "estimate": 4 << 30, "started": NOW - 100, "updated": NOW}
    v = judge(NOW, 1800, 3, None, None, {}, t)
    assert v.state == "transferring" and "25 %" in v.detail and "ETA" in v.detail


def test_no_facts_at_all_is_unknown():
    assert judge(NOW, 1800, 3, None, None, {}, None).severity == UNKNOWN


# -- the document, from files --------------------------------------------------

CONF = """[[container]]
ctid = 103
datasets = ["tank/a", "tank/b"]
nodes = ["pve1", "pve2", "pve3"]
max_staleness = "30m"
"""


def local_zfs(monkeypatch, datasets, kept=None, errors=None):
    """This node's ZFS as `zfs get -d 1` of the parents would show it."""
    props = {n: {"readonly": ("off", "default"), "receive_resume_token": ("-", "-"),
                 "pvezfsha:diverged": ("-", "-")} for n in datasets}
    props.update({n: {"readonly": ("on", "local"), "receive_resume_token": ("-", "-"),
                      "pvezfsha:diverged": (v, "local")} for n, v in (kept or {}).items()})
    monkeypatch.setattr(zfscli, "family_props", lambda parents, wanted: (
        {n: p for n, p in props.items() if n.rsplit("/", 1)[0] in parents}, errors or {}))


@pytest.fixture
def node(tmp_path, monkeypatch):
    root = pve_tree(tmp_path / "pve", nodes=("pve1", "pve2", "pve3"), local="pve1")
    local_zfs(monkeypatch, ["tank/a", "tank/b", "tank/a-b"])
    monkeypatch.setattr(status.progress, "run_dir", lambda: tmp_path / "run")
    store = RecordStore(root)
    rec = Record(103, "pve1", 4, replicas={
        "pve1": {"tank/a": Replica(1, "s2", NOW - 100, NOW - 60), "tank/b": Replica(2, "t2", NOW - 100, NOW - 60)},
        "pve2": {"tank/a": Replica(1, "s2", NOW - 100, NOW - 60), "tank/b": Replica(2, "t2", NOW - 100, NOW - 60)},
        "pve3": {"tank/a": Replica(9, "s1", NOW - 5000, NOW - 4000)}})
    store.write(rec)
    store.write_health(advance(None, 103, "pve1", 4, NOW - 60, {
        "pve2": {"tank/a": Result(True, "", 100, 1.0), "tank/b": Result(False, "cannot reach pve2")},
        "pve3": {"tank/a": Result(True)}}, {}))
    return config.parse(CONF, "t.toml"), Cluster(root), store


def test_the_document_follows_its_schema_and_states(node):
    cfg, cluster, _ = node
    doc = status.collect(cfg, [], cluster, now=NOW)
    jsonschema.validate(doc, SCHEMA)
    states = {(d["dataset"], s["node"]): s["state"] for d in doc["containers"][0]["datasets"] for s in d["standbys"]}
    assert states == {("tank/a", "pve2"): "ok", ("tank/b", "pve2"): "error",
                      ("tank/a", "pve3"): "lagging", ("tank/b", "pve3"): "unknown"}
    a2 = doc["containers"][0]["datasets"][0]["standbys"][0]
    assert (a2["lag_seconds"], a2["common"], a2["last_transfer_bytes"]) == (60.0, "s2", 100)


def test_a_dataset_missing_on_the_primary_is_critical_and_says_so(node, monkeypatch):
    cfg, cluster, _ = node
    local_zfs(monkeypatch, ["tank/a"])
    doc = status.collect(cfg, [], cluster, now=NOW)
    b = doc["containers"][0]["datasets"][1]
    assert (b["dataset"], b["exists"], b["error"]) == ("tank/b", False, None)
    assert status.severity(doc) == CRITICAL and "tank/b" in status.render(doc, colour=False)


def test_a_pool_that_cannot_be_read_is_an_error_of_its_datasets(node, monkeypatch):
    cfg, cluster, _ = node
    local_zfs(monkeypatch, [], errors={"tank": "I/O error"})
    doc = status.collect(cfg, [], cluster, now=NOW)
    jsonschema.validate(doc, SCHEMA)
    assert [d["error"] for d in doc["containers"][0]["datasets"]] == ["I/O error", "I/O error"]
    assert "CT 103 tank/a: I/O error" in status.check_line(doc)


def test_check_is_one_line_with_the_worst_exit_code(node, capsys):
    cfg, cluster, _ = node
    assert status.run(cfg, [], check=True, cluster=cluster, now=NOW) == CRITICAL
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith("PVEZFSHA CRITICAL - ") and "tank/a -> pve3: lagging" in out


def test_check_is_ok_when_every_replica_is(node, capsys):
    cfg, cluster, store = node
    doc = status.collect(config.parse(CONF.replace('"tank/a", "tank/b"', '"tank/a"')
                                      .replace(', "pve3"', ""), "t.toml"), [], cluster, now=NOW)
    assert status.severity(doc) == OK and status.check_line(doc) == "PVEZFSHA OK - 1 replica(s) ok"


def test_an_unreadable_record_is_unknown_not_a_crash(node):
    cfg, cluster, store = node
    store.path(103).write_text("{")
    doc = status.collect(cfg, [], cluster, now=NOW)
    jsonschema.validate(doc, SCHEMA)
    assert status.severity(doc) == UNKNOWN and "damaged" in doc["containers"][0]["error"]


def test_a_damaged_health_file_costs_the_facts_not_the_status(node):
    cfg, cluster, store = node
    store.health_path(103, "pve1").write_text("not json")
    doc = status.collect(cfg, [], cluster, now=NOW)
    assert doc["containers"][0]["datasets"][1]["standbys"][0]["state"] == "ok"   # the record alone


def test_an_older_primarys_health_is_not_shown_as_this_ones(node):
    cfg, cluster, store = node
    rec = store.read(103)
    rec.epoch = 5
    store.write(rec)
    doc = status.collect(cfg, [], cluster, now=NOW)
    assert doc["containers"][0]["datasets"][1]["standbys"][0]["failures"] == 0


def test_the_table_names_each_standby_and_colours_only_when_asked(node):
    cfg, cluster, _ = node
    doc = status.collect(cfg, [], cluster, now=NOW)
    plain = status.render(doc)
    assert "\033[" not in plain and "cannot reach pve2" in plain and "lagging" in plain
    assert "\033[31merror" in status.render(doc, colour=True)


def test_kept_copies_on_another_node_come_from_its_health_file(node):
    cfg, cluster, store = node
    from pvezfsha.health import standby
    store.write_health(standby(None, 103, "pve3", 4, NOW, {"tank/a-pvezfsha-diverged-20261203T101500Z": "its writes",
                                                          "tank/a-b-pvezfsha-diverged-20261203T101500Z": "not a's"}))
    doc = status.collect(cfg, [], cluster, now=NOW)
    pve3 = {d["dataset"]: d["standbys"][1] for d in doc["containers"][0]["datasets"]}
    assert pve3["tank/a"]["state"] == "lagging" and "1 diverged copy(ies) kept there" in pve3["tank/a"]["detail"]
    assert pve3["tank/b"]["state"] == "unknown"


def test_a_kept_copy_belongs_to_its_own_dataset_only(node, monkeypatch):
    cfg, cluster, store = node
    local_zfs(monkeypatch, ["tank/a", "tank/a-b"], kept={"tank/a-pvezfsha-diverged-20261203T101500Z": "x",
                                                        "tank/a-b-pvezfsha-diverged-20261203T101500Z": "y"})
    cfg = config.parse(CONF.replace('"tank/a", "tank/b"', '"tank/a", "tank/a-b"'), "t.toml")
    doc = status.collect(cfg, [], cluster, now=NOW)
    kept = {d["dataset"]: list(d["kept"]) for d in doc["containers"][0]["datasets"]}
    assert kept == {"tank/a": ["tank/a-pvezfsha-diverged-20261203T101500Z"],
                    "tank/a-b": ["tank/a-b-pvezfsha-diverged-20261203T101500Z"]}


def test_is_primary_is_true_only_where_the_record_names_this_node_and_the_container_runs(tmp_path, capsys):
    cfg = config.parse(CONF, "t.toml")
    for local, owner, recorded, rc in (("pve1", "pve1", "pve1", 0), ("pve2", "pve1", "pve1", 1),
                                       ("pve2", "pve2", "pve1", 1), ("pve1", "pve1", None, 0)):
        root = pve_tree(tmp_path / f"{local}{owner}{recorded}", nodes=("pve1", "pve2", "pve3"), local=local,
                        owner=owner)
        if recorded:
            RecordStore(root).write(Record(103, recorded, 1))
        assert status.is_primary(cfg, [103], Cluster(root)) == rc, (local, owner, recorded)
    assert "pve1 is primary" in capsys.readouterr().out


def test_is_primary_of_a_damaged_record_is_false(tmp_path, capsys):
    root = pve_tree(tmp_path / "pve", nodes=("pve1", "pve2", "pve3"))
    (root / "priv" / "pvezfsha").mkdir(parents=True)
    (root / "priv" / "pvezfsha" / "103.json").write_text("{damaged")
    assert status.is_primary(config.parse(CONF, "t.toml"), [103], Cluster(root)) == 1


def test_is_primary_without_quorum_is_false_even_where_the_record_names_this_node(tmp_path, capsys):
    root = pve_tree(tmp_path / "pve", nodes=("pve1", "pve2", "pve3"))
    RecordStore(root).write(Record(103, "pve1", 1))
    (root / "local").chmod(0o555)           # what pmxcfs does on losing quorum
    assert status.is_primary(config.parse(CONF, "t.toml"), [103], Cluster(root)) == 1
    assert "no quorum" in capsys.readouterr().out
