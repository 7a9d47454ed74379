"""Names pvezfsha gives to snapshots and bookmarks, and how it recognises them."""

import datetime as dt

from pvezfsha.versions import (DatasetState, Version, cursor_name, cursor_node, is_replication_snapshot,
                               snapshot_name)

T = dt.datetime(2026, 11, 29, 8, 15, 0, tzinfo=dt.timezone.utc)


def test_snapshot_name_is_prefix_and_utc_time():
    assert snapshot_name("pvezfsha", T) == "pvezfsha_20261129T081500Z"
    local = T.astimezone(dt.timezone(dt.timedelta(hours=2)))
    assert snapshot_name("pvezfsha", local) == "pvezfsha_20261129T081500Z"


def test_a_second_snapshot_in_the_same_second_gets_a_suffix():
    taken = {"pvezfsha_20261129T081500Z", "pvezfsha_20261129T081500Z_2"}
    name = snapshot_name("pvezfsha", T, taken)
    assert name == "pvezfsha_20261129T081500Z_3" and is_replication_snapshot(name, "pvezfsha")


def test_only_our_own_names_are_replication_snapshots():
    assert is_replication_snapshot("pvezfsha_20261129T081500Z", "pvezfsha")
    assert not is_replication_snapshot("autosnap_2026-11-29_08:15:00_hourly", "pvezfsha")
    assert not is_replication_snapshot("pvezfsha-diverged_20261129T081500Z", "pvezfsha")
    assert not is_replication_snapshot("pvezfsha_20261129T081500Z", "other")


def test_cursor_bookmark_names_its_standby():
    name = cursor_name("pvezfsha", "pve-2", 0xABC)
    assert name == "pvezfsha_cursor_pve-2_0000000000000abc"
    assert cursor_node(name, "pvezfsha") == "pve-2" and cursor_node("other_bookmark", "pvezfsha") is None


def test_state_survives_the_json_round_trip_of_a_session():
    st = DatasetState("d", True, snapshots=(Version("a", 2**64 - 1, 5, 6, holds=("pvezfsha-last",)),))
    assert DatasetState.from_dict(st.to_dict()) == st
