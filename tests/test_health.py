"""health.py: how a primary's cycles went, per standby and dataset."""
import pytest

from pvezfsha.health import Health, Link, Result, advance, standby


def test_a_good_cycle_records_when_and_what_it_sent():
    h = advance(None, 103, "pve1", 2, 1000.0, {"pve2": {"tank/a": Result(True, "", 4096, 1.5)}}, {})
    link = h.links["pve2"]["tank/a"]
    assert (link.ok_at, link.failures, link.bytes, link.seconds, link.bytes_total) == (1000.0, 0, 4096, 1.5, 4096)
    assert h.primary and h.epoch == 2 and h.at == 1000.0


def test_failures_count_up_and_a_success_resets_them_keeping_the_last_transfer():
    h = advance(None, 103, "pve1", 2, 100.0, {"pve2": {"tank/a": Result(True, "", 10, 1.0)}}, {})
    h = advance(h, 103, "pve1", 2, 200.0, {"pve2": {"tank/a": Result(False, "cannot reach pve2")}}, {})
    h = advance(h, 103, "pve1", 2, 300.0, {"pve2": {"tank/a": Result(False, "cannot reach pve2 again")}}, {})
    link = h.links["pve2"]["tank/a"]
    assert (link.failures, link.error, link.error_at, link.ok_at) == (2, "cannot reach pve2 again", 300.0, 100.0)
    h = advance(h, 103, "pve1", 2, 400.0, {"pve2": {"tank/a": Result(True)}}, {})
    link = h.links["pve2"]["tank/a"]
    assert (link.failures, link.error, link.ok_at, link.bytes) == (0, "", 400.0, 10)


def test_a_dataset_the_cycle_did_not_try_keeps_its_facts():
    h = advance(None, 103, "pve1", 2, 100.0, {"pve2": {"tank/a": Result(False, "x"), "tank/b": Result(True)}}, {})
    h = advance(h, 103, "pve1", 2, 200.0, {"pve2": {"tank/b": Result(True)}}, {})
    assert h.links["pve2"]["tank/a"].failures == 1 and h.links["pve2"]["tank/b"].ok_at == 200.0


def test_a_new_epoch_or_primary_starts_afresh():
    h = advance(None, 103, "pve1", 2, 100.0, {"pve2": {"tank/a": Result(False, "x")}}, {})
    assert advance(h, 103, "pve1", 3, 200.0, {}, {}).links == {}
    assert advance(standby(h, 103, "pve1", 2, 150.0, {}), 103, "pve1", 2, 200.0, {}, {}).links == {}


def test_the_file_round_trips_and_a_damaged_one_is_an_error():
    h = advance(None, 103, "pve1", 2, 100.0, {"pve2": {"tank/a b": Result(True, "", 5, 0.5)}}, {"tank/a-k": "why"})
    assert Health.from_json(h.to_json()) == h
    for bad in ('[]', '{"ctid": "103", "node": "pve1"}', '{"ctid": 103, "node": "pve1", "links": {"pve2": 1}}',
                '{"ctid": 103, "node": "pve1", "links": {"pve2": {"a": {"failures": "many"}}}}'):
        with pytest.raises(ValueError):
            Health.from_json(bad)


def test_fields_a_newer_node_adds_are_ignored():
    h = Health.from_json('{"ctid": 103, "node": "pve1", "future": 1, '
                         '"links": {"pve2": {"a": {"failures": 1, "new": 2}}}}')
    assert h.links["pve2"]["a"] == Link(failures=1)
