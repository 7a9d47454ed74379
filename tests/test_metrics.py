"""metrics.py: the node_exporter text file, parsed as Prometheus parses it."""
import os

from prometheus_client.parser import text_string_to_metric_families

from pvezfsha import metrics

NOW = 1_800_000_000.0


def doc(dataset="tank/media", state="ok", error=None):
    return {"schema": "pvezfsha-status/1", "node": "pve1", "time": NOW, "containers": [
        {"ctid": 103, "primary": "pve1", "epoch": 4, "role": "primary", "error": error, "datasets": [
            {"dataset": dataset, "local": dataset, "exists": True, "readonly": False, "resumable": False,
             "newest": None, "kept": {"tank/media-pvezfsha-diverged-1": "x"}, "error": None, "standbys": [
                 {"node": "pve2", "state": state, "severity": 0, "detail": "", "common": "s", "common_guid": None,
                  "lag_seconds": 61.5, "last_ok": NOW - 61.5, "failures": 0, "last_error": None,
                  "last_error_at": None, "last_transfer_bytes": 1 << 20, "last_transfer_seconds": 2.5,
                  "sent_bytes_total": 5 << 20, "transfer": None}]}]}]}


def samples(text):
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_every_fact_is_a_sample_with_its_labels():
    got = samples(metrics.render(doc()))
    lab = (("ctid", "103"), ("dataset", "tank/media"), ("node", "pve1"), ("standby", "pve2"))
    assert got[("pvezfsha_lag_seconds", lab)] == 61.5
    assert got[("pvezfsha_last_success_timestamp_seconds", lab)] == NOW - 61.5
    assert got[("pvezfsha_last_transfer_bytes", lab)] == 1 << 20
    assert got[("pvezfsha_last_transfer_duration_seconds", lab)] == 2.5
    assert got[("pvezfsha_sent_bytes_total", lab)] == 5 << 20
    assert got[("pvezfsha_consecutive_failures", lab)] == 0
    assert got[("pvezfsha_state", tuple(sorted(lab + (("state", "ok"),))))] == 1
    assert got[("pvezfsha_state", tuple(sorted(lab + (("state", "error"),))))] == 0
    assert got[("pvezfsha_primary", (("ctid", "103"), ("node", "pve1")))] == 1
    assert got[("pvezfsha_epoch", (("ctid", "103"), ("node", "pve1")))] == 4
    assert got[("pvezfsha_kept_divergences", (("ctid", "103"), ("dataset", "tank/media"), ("holder", "pve1"),
                                             ("node", "pve1")))] == 1


def test_the_counter_follows_the_naming_rules():
    fams = {f.name: f.type for f in text_string_to_metric_families(metrics.render(doc()))}
    assert fams["pvezfsha_sent_bytes"] == "counter" and fams["pvezfsha_lag_seconds"] == "gauge"


def test_labels_are_escaped():
    name = 'tank/a b\\c"d\ne'
    got = samples(metrics.render(doc(dataset=name)))
    assert any(dict(lab).get("dataset") == name for (_, lab) in got)


def test_a_container_whose_record_is_unreadable_has_no_samples_but_the_file_parses():
    got = samples(metrics.render(doc(error="damaged")))
    assert {n for n, _ in got} == {"pvezfsha_status_timestamp_seconds"}


def test_the_file_is_replaced_whole_and_world_readable(tmp_path):
    path = tmp_path / "pvezfsha.prom"
    path.write_text("old")
    assert metrics.write(str(path), doc())
    assert path.read_text().startswith("# HELP") and oct(path.stat().st_mode & 0o777) == "0o644"
    assert os.listdir(tmp_path) == ["pvezfsha.prom"]


def test_no_collector_directory_means_no_file():
    assert not metrics.write("/nonexistent/dir/pvezfsha.prom", doc())
    assert not metrics.write("", doc())


def test_a_standby_exports_no_per_standby_series_only_the_primary_does():
    d = doc()
    d["containers"][0]["primary"] = "pve2"
    names = {n for n, _ in samples(metrics.render(d))}
    assert "pvezfsha_lag_seconds" not in names and "pvezfsha_state" not in names
    assert {"pvezfsha_primary", "pvezfsha_epoch", "pvezfsha_kept_divergences"} <= names


def test_a_link_planted_in_the_collector_directory_is_not_followed(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("secret")
    victim.chmod(0o600)
    d = tmp_path / "textfile"
    d.mkdir()
    for pid in range(os.getpid() - 5, os.getpid() + 5):      # the old predictable names
        (d / f".pvezfsha.prom.{pid}").symlink_to(victim)
    assert metrics.write(str(d / "pvezfsha.prom"), doc())
    assert victim.read_text() == "secret" and oct(victim.stat().st_mode & 0o777) == "0o600"
