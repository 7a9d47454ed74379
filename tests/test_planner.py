"""The replication planner, as a specification: both sides' state in, steps
or a typed conflict out."""

from pvezfsha.planner import (EMPTY_PLACEHOLDER_BYTES, Conflict, Plan, carried, plan_prune, plan_prune_carried,
                              plan_replication)
from pvezfsha.versions import ZIL_RESET_PROP, DatasetState, ResumeToken, Version

P = "pvezfsha"
FLAGS = ("large_blocks", "embedded_data", "compress")


def name(i):
    return f"{P}_20261101T0000{i:02d}Z"


def s(i, **kw):
    return Version(kw.pop("name", name(i)), kw.pop("guid", 1000 + i), createtxg=10 * i,
                   creation=1_700_000_000 + i, **kw)


def bm(i, **kw):
    return Version(f"{P}_cursor_pve2_{1000 + i:016x}", 1000 + i, createtxg=10 * i, creation=1_700_000_000 + i,
                   bookmark=True, **kw)


def side(*snaps, bookmarks=(), **kw):
    return DatasetState("tank/media", exists=True, snapshots=tuple(snaps), bookmarks=tuple(bookmarks), **kw)


def target(*snaps, **kw):
    # The target's createtxgs are its own; only guids are shared.
    mapped = tuple(Version(v.name, v.guid, createtxg=v.createtxg // 10, creation=v.creation) for v in snaps)
    return DatasetState("tank/media", exists=True, snapshots=mapped, **kw)


def token(to, frm=None, flags=FLAGS):
    return ResumeToken("1-x", toguid=to.guid, fromguid=frm.guid if frm else None, toname="", obj=1, offset=2,
                       bytes=3, flags=tuple(flags))


def test_source_without_replication_snapshot_is_nothing_to_do():
    plan = plan_replication(side(s(1, name="manual")), DatasetState("t", exists=False), P, FLAGS)
    assert isinstance(plan, Plan) and plan.up_to_date


def test_missing_target_gets_a_full_send_of_the_newest_snapshot():
    plan = plan_replication(side(s(1), s(2), s(3)), DatasetState("t", exists=False), P, FLAGS)
    assert [(st.from_, st.to.guid, st.force) for st in plan.steps] == [(None, 1003, False)]


def test_incremental_sends_every_intermediate_snapshot_in_order():
    plan = plan_replication(side(s(1), s(2), s(3), s(4)), target(s(1)), P, FLAGS)
    assert [(st.from_.guid, st.to.guid) for st in plan.steps] == [(1001, 1002), (1002, 1003), (1003, 1004)]
    assert plan.base.guid == 1001


def test_target_at_newest_snapshot_is_up_to_date():
    plan = plan_replication(side(s(1), s(2)), target(s(1), s(2)), P, FLAGS)
    assert plan.up_to_date


def test_common_base_is_found_by_guid_not_by_name():
    # Same name on the target, different guid: not common.
    impostor = Version(name(2), 9999, createtxg=2, creation=0)
    plan = plan_replication(side(s(1), s(2), s(3)), DatasetState("t", True, snapshots=(
        Version(name(1), 1001, 1, 0), impostor)), P, FLAGS)
    assert isinstance(plan, Conflict) and plan.kind == "diverged"
    assert plan.base.guid == 1001 and [v.guid for v in plan.receiver_only] == [9999]


def test_renamed_snapshot_with_same_guid_is_still_the_base():
    renamed = Version("renamed-by-admin", 1002, 2, 0)
    plan = plan_replication(side(s(1), s(2), s(3)), DatasetState("t", True, snapshots=(renamed,)), P, FLAGS)
    assert [(st.from_.guid, st.to.guid) for st in plan.steps] == [(1002, 1003)]


def test_deleted_base_snapshot_is_replaced_by_the_cursor_bookmark():
    # s(2) was destroyed on the source, but its cursor bookmark survives.
    plan = plan_replication(side(s(1), s(3), s(4), bookmarks=[bm(2)]), target(s(1), s(2)), P, FLAGS)
    assert plan.steps[0].from_.bookmark and plan.steps[0].from_.guid == 1002
    assert [st.to.guid for st in plan.steps] == [1003, 1004]
    assert not any(st.from_.bookmark for st in plan.steps[1:])


def test_snapshot_is_preferred_over_a_bookmark_of_the_same_guid():
    plan = plan_replication(side(s(1), s(2), bookmarks=[bm(1)]), target(s(1)), P, FLAGS)
    assert not plan.steps[0].from_.bookmark


def test_other_tools_snapshots_are_not_sent_but_can_be_a_base():
    sanoid = s(2, name="autosnap_2026-11-01_00:00:02_hourly")
    plan = plan_replication(side(s(1), sanoid, s(3)), target(s(1), sanoid), P, FLAGS)
    assert [(st.from_.name, st.to.guid) for st in plan.steps] == [(sanoid.name, 1003)]


SANOID = ("autosnap_*",)


def hourly(i, **kw):
    return s(i, name=f"autosnap_2026-11-01_00:00:{i:02d}_hourly", **kw)


def test_carried_snapshots_ride_in_the_chain_in_createtxg_order():
    plan = plan_replication(side(s(1), hourly(2), s(3), hourly(4), s(5)), target(s(1)), P, FLAGS, SANOID)
    assert [(st.from_.guid, st.to.guid) for st in plan.steps] == [(1001, 1002), (1002, 1003), (1003, 1004),
                                                                   (1004, 1005)]


def test_a_snapshot_no_pattern_matches_is_not_carried():
    manual = s(2, name="before-upgrade")
    plan = plan_replication(side(s(1), manual, s(3)), target(s(1)), P, FLAGS, SANOID)
    assert [st.to.guid for st in plan.steps] == [1003]


def test_a_carried_snapshot_taken_after_our_newest_waits_for_the_next_cycle():
    plan = plan_replication(side(s(1), s(2), hourly(3)), target(s(1)), P, FLAGS, SANOID)
    assert [st.to.guid for st in plan.steps] == [1002]


def test_a_first_sync_sends_the_oldest_carried_snapshot_in_full_and_skips_our_older_ones():
    plan = plan_replication(side(hourly(1), s(2), hourly(3), s(4), s(5)), DatasetState("t", exists=False),
                            P, FLAGS, SANOID)
    assert [(st.from_.guid if st.from_ else None, st.to.guid) for st in plan.steps] == [
        (None, 1001), (1001, 1003), (1003, 1005)]


def test_names_our_prefix_marks_are_never_carried_whatever_the_pattern():
    assert not carried(f"{P}-diverged_20261101T000000Z", P, ("*",))
    assert not carried(name(1), P, ("*",))
    assert carried("autosnap_2026-11-01_00:00:01_hourly", P, SANOID)
    assert not carried("zfs-auto-snap_hourly-2026", P, SANOID)


def test_a_standby_prunes_the_carried_snapshots_the_source_no_longer_has():
    src = side(hourly(2), s(3), bookmarks=[bm(1)])
    dst = target(s(1), hourly(2), hourly(3, guid=7777), s(3))
    assert [v.guid for v in plan_prune_carried(dst, src, P, SANOID, set())] == [7777]


def test_a_standby_never_prunes_a_protected_held_or_uncarried_snapshot():
    src = side(s(5))
    dst = side(hourly(1, holds=("keep",)), hourly(2), s(3, name="before-upgrade"), hourly(4), s(5))
    assert plan_prune_carried(dst, src, P, SANOID, {1002, 1004}) == ()
    assert [v.guid for v in plan_prune_carried(dst, src, P, SANOID, {1002})] == [1004]


def test_target_snapshots_after_the_base_are_a_divergence():
    extra = Version("made-on-standby", 5555, 5, 0)
    plan = plan_replication(side(s(1), s(2)), DatasetState("t", True, snapshots=(Version(name(1), 1001, 1, 0), extra)),
                            P, FLAGS)
    assert isinstance(plan, Conflict) and plan.kind == "diverged"
    assert plan.receiver_only == (extra,) and [v.guid for v in plan.sender_only] == [1002]
    assert "made-on-standby" in plan.describe()


def test_unsnapshotted_writes_on_the_target_are_a_divergence():
    plan = plan_replication(side(s(1), s(2)), target(s(1), written=4096), P, FLAGS)
    assert isinstance(plan, Conflict) and plan.kind == "diverged" and plan.modified == 4096
    assert "4096 bytes written" in plan.describe()


def test_a_zil_reset_recorded_by_the_divergence_swap_is_not_a_write():
    # The swap's clone of a snapshot with intent-log records reads ~1 KiB
    # written; the swap records that figure against the snapshot it cloned.
    t = target(s(1), written=1024, props={ZIL_RESET_PROP: f"{s(1).guid:x}:1024"})
    plan = plan_replication(side(s(1), s(2)), t, P, FLAGS)
    assert not isinstance(plan, Conflict) and [st.to.guid for st in plan.steps] == [s(2).guid]


def test_a_write_after_the_recorded_zil_reset_is_a_divergence():
    t = target(s(1), written=1536, props={ZIL_RESET_PROP: f"{s(1).guid:x}:1024"})
    plan = plan_replication(side(s(1), s(2)), t, P, FLAGS)
    assert isinstance(plan, Conflict) and plan.kind == "diverged" and plan.modified == 1536


def test_a_zil_reset_mark_for_an_older_snapshot_is_ignored():
    t = target(s(1), s(2), written=1024, props={ZIL_RESET_PROP: f"{s(1).guid:x}:1024"})
    plan = plan_replication(side(s(1), s(2), s(3)), t, P, FLAGS)
    assert isinstance(plan, Conflict) and plan.modified == 1024


def test_target_with_snapshots_but_nothing_in_common_is_refused():
    plan = plan_replication(side(s(1)), DatasetState("t", True, snapshots=(Version("x", 77, 1, 0),)), P, FLAGS)
    assert isinstance(plan, Conflict) and plan.kind == "no_common"
    assert "refusing" in plan.describe()


def test_empty_placeholder_target_is_replaced_by_a_forced_full_send():
    plan = plan_replication(side(s(1)), DatasetState("t", True, referenced=24 * 1024), P, FLAGS)
    assert plan.steps[0].from_ is None and plan.steps[0].force


def test_target_with_data_but_no_snapshots_is_refused():
    plan = plan_replication(side(s(1)), DatasetState("t", True, referenced=EMPTY_PLACEHOLDER_BYTES + 1), P, FLAGS)
    assert isinstance(plan, Conflict) and plan.kind == "no_common"


def test_interrupted_incremental_resumes_then_continues():
    src = side(s(1), s(2), s(3))
    plan = plan_replication(src, target(s(1), resume=token(s(2), s(1))), P, FLAGS)
    assert plan.steps[0].resume_token == "1-x" and plan.steps[0].to.guid == 1002
    assert [(st.from_.guid, st.to.guid) for st in plan.steps] == [(1001, 1002), (1002, 1003)]
    assert not plan.abort_resume


def test_interrupted_full_send_resumes():
    tgt = DatasetState("t", True, resume=token(s(2)))
    plan = plan_replication(side(s(1), s(2), s(3)), tgt, P, FLAGS)
    assert plan.steps[0].from_ is None and plan.steps[0].resume_token
    assert [st.to.guid for st in plan.steps] == [1002, 1003]


def test_token_for_a_snapshot_gone_from_the_source_is_aborted():
    plan = plan_replication(side(s(1), s(3)), target(s(1), resume=token(s(2), s(1))), P, FLAGS)
    assert plan.abort_resume and not any(st.resume_token for st in plan.steps)
    assert [st.to.guid for st in plan.steps] == [1003]


def test_token_of_a_raw_send_is_aborted_when_sending_non_raw():
    plan = plan_replication(side(s(1), s(2)), target(s(1), resume=token(s(2), s(1), flags=("raw",))), P, FLAGS)
    assert plan.abort_resume and plan.steps[0].resume_token is None


def test_token_without_features_the_stream_did_not_use_still_fits():
    # The kernel omits largeblockok when the stream had no large blocks.
    plan = plan_replication(side(s(1), s(2)), target(s(1), resume=token(s(2), s(1), flags=("compress",))), P, FLAGS)
    assert not plan.abort_resume and plan.steps[0].resume_token


def test_prune_keeps_the_newest_and_protected_and_held_snapshots():
    st = side(s(1), s(2, holds=("pvezfsha-last",)), s(3), s(4), s(5), s(6, name="not-ours"))
    doomed = plan_prune(st, P, keep=2, protect={1003})
    assert [v.guid for v in doomed] == [1001]


def test_prune_never_touches_other_snapshots_or_kept_divergence():
    st = side(s(1, name="autosnap_x"), s(2, name=f"{P}-diverged_20261101T000000Z"), s(3))
    assert plan_prune(st, P, keep=1, protect=set()) == ()
