"""Pure takeover decisions: which case a start is, who holds the freshest
replica, and the freshness verdict."""

import pytest

from pvezfsha.record import Record
from pvezfsha.takeover import Case, Holding, Situation, classify, compare, freshest, judge, replica_age


def sit(node="pve2", quorate=True, primary="pve1", online=("pve1", "pve2"), record=True):
    rec = Record(103, primary=primary, epoch=4) if record else None
    return Situation(node, quorate, rec, {n: n in online for n in ("pve1", "pve2", "pve3")})


def test_no_quorum_comes_first():
    assert classify(sit(quorate=False, primary="pve2")) == (Case.NO_QUORUM, None)


def test_recorded_primary_starting_again_is_a_restart_in_place():
    assert classify(sit(primary="pve2")) == (Case.RESTART, "pve2")


def test_old_primary_online_means_a_planned_move():
    assert classify(sit()) == (Case.PLANNED, "pve1")


def test_old_primary_offline_means_a_crash_failover():
    assert classify(sit(online=("pve2",))) == (Case.CRASH, "pve1")


def test_no_record_is_a_first_start():
    assert classify(sit(record=False)) == (Case.FIRST, None)


def H(*guids):
    return Holding(tuple(guids))


def test_compare_by_guid_containment():
    assert compare(H(1, 2, 3), H(1, 2)) == 1
    assert compare(H(1, 2), H(1, 2, 3)) == -1
    assert compare(H(1, 2), H(1, 2)) == 0
    assert compare(H(1, 2, 9), H(1, 2, 3)) is None      # diverged
    assert compare(H(1), H()) == 1


def test_freshest_survivor_is_found_when_it_is_not_the_node_ha_chose():
    held = {"pve2": {"a": H(1, 2)}, "pve3": {"a": H(1, 2, 3)}}
    assert freshest("pve2", held) == "pve3"


def test_local_node_wins_ties():
    assert freshest("pve2", {"pve2": {"a": H(1, 2)}, "pve3": {"a": H(1, 2)}}) == "pve2"


def test_a_node_ahead_on_one_dataset_and_behind_on_another_is_not_fresher():
    held = {"pve2": {"a": H(1, 2), "b": H(5, 6, 7)}, "pve3": {"a": H(1, 2, 3), "b": H(5, 6)}}
    assert freshest("pve2", held) == "pve2"


def test_a_diverged_node_is_never_chosen():
    assert freshest("pve2", {"pve2": {"a": H(1, 2)}, "pve3": {"a": H(1, 9)}}) == "pve2"


def test_age_is_from_the_snapshot_or_the_later_confirmation_of_the_same_snapshot():
    assert replica_age(1000, 7, None, 0, now=1600) == 600
    assert replica_age(1000, 7, 7, 1500, now=1600) == 100
    assert replica_age(1000, 7, 6, 1500, now=1600) == 600    # confirmation of another snapshot
    assert replica_age(None, None, None, 0, now=1) is None


@pytest.mark.parametrize("age,policy,force,accept,warning", [
    (60, "refuse", False, True, False),
    (3600, "refuse", False, False, False),
    (3600, "warn", False, True, True),
    (3600, "refuse", True, True, True),
])
def test_freshness_verdict(age, policy, force, accept, warning):
    v = judge(age, 1800, policy, force)
    assert (v.accept, v.warning) == (accept, warning)
    assert "max_staleness 30m00s" in v.message


def test_refusal_says_how_to_accept_the_replica_anyway():
    assert "pvezfsha promote <ctid> --force" in judge(3600, 1800, "refuse").message


def test_empty_replica_is_refused_unless_forced():
    assert not judge(None, 1800, "warn").accept
    assert judge(None, 1800, "refuse", force=True).accept


# -- what the new primary protects for the other members -----------------------

from pvezfsha.record import Replica  # noqa: E402
from pvezfsha.takeover import peer_bases  # noqa: E402


def test_the_old_primary_shares_our_newest_snapshot():
    bases = peer_bases("pve2", ("pve1", "pve2"), "pve1", None, Record(103, "pve1", 4), {"ds": 3}, {"ds": (1, 2, 3)})
    assert bases == {"pve1": {"ds": 3}}


def test_another_member_shares_what_the_record_confirmed_if_we_still_have_it():
    rec = Record(103, "pve1", 4, replicas={"pve3": {"ds": Replica(2, "s2", 0.0)}})
    bases = peer_bases("pve2", ("pve1", "pve2", "pve3"), "pve1", None, rec, {"ds": 3}, {"ds": (1, 2, 3)})
    assert bases == {"pve1": {"ds": 3}, "pve3": {"ds": 2}}


def test_a_member_whose_confirmed_snapshot_we_lack_gets_no_cursor():
    rec = Record(103, "pve1", 4, replicas={"pve3": {"ds": Replica(9, "s9", 0.0)}})
    bases = peer_bases("pve2", ("pve1", "pve2", "pve3"), "pve1", None, rec, {"ds": 3}, {"ds": (1, 2, 3)})
    assert "pve3" not in bases


def test_a_survivor_we_caught_up_from_shares_our_newest():
    rec = Record(103, "pve1", 4, replicas={"pve3": {"ds": Replica(1, "s1", 0.0)}})
    bases = peer_bases("pve2", ("pve1", "pve2", "pve3"), "pve1", "pve3", rec, {"ds": 3}, {"ds": (1, 2, 3)})
    assert bases["pve3"] == {"ds": 3}
