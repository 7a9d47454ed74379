"""The pre-start takeover, end to end against a temporary pmxcfs tree, with
this node's datasets and the other nodes replaced by in-memory fakes: the
whole decision table of the failover issue, one scenario per test."""

import json
import os

import pytest

from pvezfsha import config, hook
from pvezfsha.cluster import Cluster
from pvezfsha.errors import TransportError, ZfsError
from pvezfsha.takeover_engine import Refused, Takeover
from pvezfsha.record import Record, Replica
from pvezfsha.record_store import RecordStore
from pvezfsha.takeover import Case, Holding
from pvezfsha.versions import DatasetState, Version

NOW = 1_800_000_000.0
CFG = """
[defaults]
max_staleness = "30m"
on_stale = "{policy}"

[[container]]
ctid = 103
datasets = ["tank/media"]
nodes = {nodes}
"""


def snap(i, created):
    return Version(f"pvezfsha_2027011{i}T000000Z", 100 + i, createtxg=i, creation=created)


class FakeLocal:
    """This node's replica: a list of snapshots and a few properties."""

    def __init__(self, snaps, readonly=True):
        self.snaps = list(snaps)
        self.readonly = readonly
        self.promoted = None
        self.problem_list = []
        self.preflight_list = []
        self.promote_error = None

    def states(self, ct):
        return {"tank/media": DatasetState("tank/media", True, snapshots=tuple(self.snaps), readonly=self.readonly)}

    def promote(self, ct, epoch):
        if self.promote_error:
            raise ZfsError(self.promote_error)
        self.promoted = epoch

    def problems(self, ct):
        return self.problem_list

    def preflight(self, ct):
        return self.preflight_list

    def seed_cursors(self, ct, bases):
        self.cursors = bases
        return []

    def stop_receives(self, ct):
        return self.hung

    hung: list = []


class FakePeers:
    """Other nodes: what they hold, and whether a transfer from them works."""

    def __init__(self, local, held=None, gives=None, fails=()):
        self.local, self.held, self.gives, self.fails = local, held or {}, gives or {}, set(fails)
        self.calls = []

    def transfer(self, node, ct, to, *, final, timeout):
        self.calls.append((node, final))
        if node in self.fails:
            raise TransportError(f"{node}: ssh: connect to host {node} port 22: Connection timed out")
        new = self.gives.get(node, [])
        self.local.snaps += new
        return {"ok": True, "snapshots": len(new), "bytes": 1000 * len(new), "newest": {}}

    def holdings(self, node, ct):
        if node not in self.held:
            raise TransportError(f"{node}: unreachable")
        return {"tank/media": Holding(tuple(s.guid for s in self.held[node]))}


def pve(tmp_path, node="pve2", online=("pve1", "pve2", "pve3"), quorate=True, owner="pve2", nodes=3):
    names = [f"pve{i}" for i in range(1, nodes + 1)]
    (tmp_path / ".members").write_text(json.dumps({
        "nodename": node, "nodelist": {n: {"id": i, "online": int(n in online), "ip": f"10.0.0.{i}"}
                                       for i, n in enumerate(names, 1)}}))
    (tmp_path / ".vmlist").write_text(json.dumps({"ids": {"103": {"node": owner, "type": "lxc"}}}))
    (tmp_path / "local").mkdir(exist_ok=True)
    os.chmod(tmp_path / "local", 0o755 if quorate else 0o555)
    return Cluster(tmp_path), RecordStore(tmp_path)


def arrange(tmp_path, *, record=None, policy="refuse", nodes=2, local_snaps=(), peers_kw=None, force=False, **kw):
    cluster, store = pve(tmp_path, nodes=nodes, **kw)
    if record:
        store.write(record)
    names = json.dumps([f"pve{i}" for i in range(1, nodes + 1)])
    cfg = config.parse(CFG.format(policy=policy, nodes=names), "test.toml")
    local = FakeLocal(local_snaps)
    peers = FakePeers(local, **(peers_kw or {}))
    t = Takeover(cfg, cfg.containers[103], cluster, local=local, peers=peers, force=force, now=lambda: NOW)
    return t, local, peers, store


def rec(primary="pve1", epoch=4, confirmed=None):
    r = Record(103, primary=primary, epoch=epoch)
    if confirmed:
        r.replicas = {"pve2": {"tank/media": Replica(confirmed[0], "x", 0, confirmed[1])}}
    return r


def test_restart_in_place_only_checks_the_datasets(tmp_path):
    t, local, peers, store = arrange(tmp_path, record=rec(primary="pve2"))
    report = t.run()
    assert report.case == Case.RESTART and local.promoted is None and peers.calls == []
    assert store.read(103).epoch == 4


def test_restart_in_place_remounts_a_dataset_that_is_not_mounted(tmp_path):
    t, local, _, _ = arrange(tmp_path, record=rec(primary="pve2"))
    local.problem_list = ["tank/media is not mounted"]
    t.run()
    assert local.promoted == 4


def test_planned_move_pulls_the_final_snapshot_and_loses_nothing(tmp_path):
    old = snap(1, NOW - 86400)           # old, but the pull makes it current
    t, local, peers, store = arrange(tmp_path, record=rec(), local_snaps=[old],
                                   peers_kw={"gives": {"pve1": [snap(2, NOW - 1)]}})
    report = t.run()
    assert peers.calls == [("pve1", True)]
    assert report.case == Case.PLANNED and report.pulled_from == "pve1" and report.pulled_snapshots == 1
    assert any("data-loss window: none" in line for line in report.lines())
    r = store.read(103)
    assert (r.primary, r.epoch, local.promoted) == ("pve2", 5, 5)


def test_planned_move_that_cannot_pull_falls_back_to_the_freshness_gate(tmp_path):
    t, local, peers, store = arrange(tmp_path, record=rec(), local_snaps=[snap(1, NOW - 60)],
                                   peers_kw={"fails": {"pve1"}})
    report = t.run()
    assert report.case == Case.PLANNED and report.pulled_from is None
    assert any("could not pull the final changes from pve1" in n for n in report.notes)
    assert report.age == 60 and local.promoted == 5
    # The task log does not call it a planned move: data after the replica's age is not here.
    assert "failover without a final pull from pve1" in report.lines()[0]
    assert not any("data-loss window: none" in line for line in report.lines())


def test_planned_move_that_cannot_pull_and_is_stale_is_refused(tmp_path):
    t, local, _, store = arrange(tmp_path, record=rec(), local_snaps=[snap(1, NOW - 7200)],
                               peers_kw={"fails": {"pve1"}})
    with pytest.raises(Refused, match="refusing"):
        t.run()
    assert local.promoted is None and store.read(103).primary == "pve1"


def test_crash_with_a_fresh_replica_is_accepted_and_reports_the_loss_window(tmp_path):
    t, local, peers, store = arrange(tmp_path, record=rec(), local_snaps=[snap(1, NOW - 300)], online=("pve2",))
    report = t.run()
    assert report.case == Case.CRASH and peers.calls == []
    assert report.age == 300
    assert any("data-loss window: writes on pve1 after" in line for line in report.lines())
    assert store.read(103).primary == "pve2" and local.promoted == 5


def test_crash_age_counts_from_the_primarys_last_confirmation(tmp_path):
    # Nothing changed for hours, but the primary confirmed we held it all.
    s = snap(1, NOW - 5 * 3600)
    t, local, _, _ = arrange(tmp_path, record=rec(confirmed=(s.guid, NOW - 120)), local_snaps=[s], online=("pve2",))
    assert t.run().age == 120


def test_crash_with_a_stale_replica_is_refused_under_refuse(tmp_path):
    t, local, _, store = arrange(tmp_path, record=rec(), local_snaps=[snap(1, NOW - 7200)], online=("pve2",))
    with pytest.raises(Refused, match="on_stale = refuse"):
        t.run()
    assert local.promoted is None and store.read(103).epoch == 4


def test_crash_with_a_stale_replica_starts_with_a_warning_under_warn(tmp_path):
    t, local, _, store = arrange(tmp_path, record=rec(), local_snaps=[snap(1, NOW - 7200)], online=("pve2",),
                               policy="warn")
    report = t.run()
    assert any("on_stale = warn" in n for n in report.notes) and local.promoted == 5


def test_stale_replica_with_force_is_accepted(tmp_path):
    t, local, _, _ = arrange(tmp_path, record=rec(), local_snaps=[snap(1, NOW - 7200)], online=("pve2",), force=True)
    assert "--force" in " ".join(t.run().notes) and local.promoted == 5


def test_three_nodes_catch_up_from_the_freshest_survivor_first(tmp_path):
    s1, s2 = snap(1, NOW - 7200), snap(2, NOW - 100)
    t, local, peers, _ = arrange(tmp_path, nodes=3, record=rec(), local_snaps=[s1], online=("pve2", "pve3"),
                               peers_kw={"held": {"pve3": [s1, s2]}, "gives": {"pve3": [s2]}})
    report = t.run()
    assert peers.calls == [("pve3", False)]
    assert report.pulled_from == "pve3" and report.age == 100 and local.promoted == 5


def test_three_nodes_the_freshest_node_itself_pulls_nothing(tmp_path):
    s1, s2 = snap(1, NOW - 7200), snap(2, NOW - 100)
    t, local, peers, _ = arrange(tmp_path, nodes=3, record=rec(), local_snaps=[s1, s2], online=("pve2", "pve3"),
                               peers_kw={"held": {"pve3": [s1]}})
    t.run()
    assert peers.calls == []


def test_stale_verdict_is_the_same_on_every_node_after_catching_up(tmp_path):
    # Both survivors end with the same newest snapshot, so both judge alike.
    s1, s2 = snap(1, NOW - 100000), snap(2, NOW - 7200)
    verdicts = []
    for node, mine, other in (("pve2", [s1], [s1, s2]), ("pve3", [s1, s2], [s1])):
        d = tmp_path / node
        d.mkdir()
        t, *_ = arrange(d, nodes=3, node=node, owner=node, record=rec(), local_snaps=mine, online=("pve2", "pve3"),
                      peers_kw={"held": {"pve3" if node == "pve2" else "pve2": other},
                                "gives": {"pve3": [s2]}})
        with pytest.raises(Refused) as e:
            t.run()
        verdicts.append(str(e.value).split(": ", 1)[1])
    assert verdicts[0] == verdicts[1]


def test_no_quorum_is_refused_and_nothing_is_written(tmp_path):
    t, local, peers, store = arrange(tmp_path, record=rec(), local_snaps=[snap(1, NOW)], quorate=False)
    with pytest.raises(Refused, match="not quorate"):
        t.run()
    assert local.promoted is None and peers.calls == [] and store.read(103).epoch == 4


def test_a_record_write_that_fails_refuses_before_anything_is_made_writable(tmp_path, monkeypatch):
    t, local, _, store = arrange(tmp_path, record=rec(), local_snaps=[snap(1, NOW - 10)], online=("pve2",))

    def eacces(*a):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr("pvezfsha.record_store.os.rename", eacces)
    with pytest.raises(Refused, match="cannot record this node as primary"):
        t.run()
    assert local.promoted is None


def test_another_takeover_in_between_is_refused(tmp_path):
    t, local, _, store = arrange(tmp_path, record=rec(), local_snaps=[snap(1, NOW - 10)], online=("pve2",))
    real_age = t._age

    def meanwhile(*a):
        store.write(rec(primary="pve3", epoch=5))    # another node won the race
        return real_age(*a)
    t._age = meanwhile
    with pytest.raises(Refused, match="another takeover happened meanwhile"):
        t.run()
    assert local.promoted is None and store.read(103).primary == "pve3"


def test_a_record_removed_in_between_is_refused_with_a_message(tmp_path):
    t, local, _, store = arrange(tmp_path, record=rec(), local_snaps=[snap(1, NOW - 10)], online=("pve2",))
    real_age = t._age

    def meanwhile(*a):
        store.path(103).unlink()
        return real_age(*a)
    t._age = meanwhile
    with pytest.raises(Refused, match=r"another takeover happened meanwhile \(record removed\)"):
        t.run()
    assert local.promoted is None


def test_a_zfs_error_during_pre_start_refuses_the_start_and_reaches_the_journal(tmp_path, monkeypatch, capsys):
    from pvezfsha.errors import ZfsError

    def broken(self):
        raise ZfsError("tank/media: I/O error")
    t, _, _, _ = arrange(tmp_path, record=rec())
    monkeypatch.setattr(hook.Takeover, "run", broken)
    monkeypatch.setattr(hook, "journal", lambda msg: print("JOURNAL", msg))
    assert hook.pre_start(t.cfg, t.ct, t.cluster) == 1
    assert "JOURNAL REFUSED: tank/media: I/O error" in capsys.readouterr().out


def test_a_refused_start_queues_an_alert_and_sends_it_detached_without_waiting(tmp_path, monkeypatch):
    from pvezfsha import alerts
    from pvezfsha.errors import ZfsError

    def broken(self):
        raise ZfsError("tank/media: I/O error")
    spawned = []
    t, _, _, _ = arrange(tmp_path, record=rec())
    monkeypatch.setattr(hook.Takeover, "run", broken)
    monkeypatch.setattr(hook, "journal", lambda msg: None)
    monkeypatch.setattr(hook.subprocess, "Popen", lambda argv, **kw: spawned.append((argv, kw)))
    monkeypatch.setattr(alerts, "mail", lambda *a: pytest.fail("the hook must not send mail itself"))
    assert hook.pre_start(t.cfg, t.ct, t.cluster) == 1
    [(argv, kw)] = spawned
    assert argv[-1] == "notify" and kw["start_new_session"] and kw["stdout"] == hook.subprocess.DEVNULL
    [queued] = (tmp_path / "state" / "events").iterdir()
    assert "start on" in queued.read_text() and "I/O error" in queued.read_text()


def test_first_start_on_the_node_with_the_original_datasets_creates_the_record(tmp_path):
    t, local, _, store = arrange(tmp_path, local_snaps=[])
    local.readonly = False
    report = t.run()
    assert report.case == Case.FIRST and store.read(103).epoch == 1 and local.promoted == 1


def test_first_start_on_an_empty_replica_is_refused(tmp_path):
    t, local, _, store = arrange(tmp_path, local_snaps=[], online=("pve2",))
    with pytest.raises(Refused, match="no replicated snapshot"):
        t.run()
    assert store.read(103) is None


def test_unknown_phase_is_a_no_op(tmp_path):
    assert hook.run(lambda: pytest.fail("config must not even be read"), "103", "pre-migrate") == 0


def test_vmid_that_is_not_a_number_is_a_no_op():
    assert hook.run(lambda: pytest.fail("config must not even be read"), "abc", "pre-start") == 0


def test_container_pvezfsha_does_not_protect_is_a_no_op(tmp_path):
    cfg = config.parse(CFG.format(policy="refuse", nodes='["pve1", "pve2"]'), "t.toml")
    assert hook.run(lambda: cfg, "999", "pre-start") == 0


def test_unreadable_config_refuses_the_start_but_not_the_other_phases():
    def broken():
        raise config.ConfigError("x.toml: keep: 'many' is not an integer")
    assert hook.run(broken, "103", "pre-start") == 1
    assert hook.run(broken, "103", "post-stop") == 0


def test_a_receive_left_hanging_by_a_dead_sender_is_stopped_and_reported(tmp_path):
    t, local, _, _ = arrange(tmp_path, record=rec(), local_snaps=[snap(1, NOW - 10)], online=("pve2",))
    local.hung = ["stopped a receive into tank/media whose sender is gone (pid 4242)"]
    report = t.run()
    assert any("pid 4242" in line for line in report.lines()) and local.promoted == 5


# -- what would make the promotion fail (issue 9, item 4) ------------------------

def test_a_key_that_cannot_be_loaded_refuses_before_the_handover_and_the_fence(tmp_path):
    t, local, peers, store = arrange(tmp_path, record=rec(), local_snaps=[snap(1, NOW - 10)],
                                     peers_kw={"gives": {"pve1": [snap(2, NOW - 1)]}})
    local.preflight_list = ["the encryption key of tank/media cannot be loaded from file:///k on this node"]
    with pytest.raises(Refused, match="cannot be taken over on pve2: the encryption key"):
        t.run()
    assert peers.calls == [] and local.promoted is None     # the old primary was never asked to hand over
    assert (store.read(103).primary, store.read(103).epoch) == ("pve1", 4)


def test_a_promotion_that_fails_after_the_fence_says_what_to_fix_and_how_to_retry(tmp_path):
    t, local, _, store = arrange(tmp_path, record=rec(), local_snaps=[snap(1, NOW - 10)],
                                 peers_kw={"gives": {"pve1": [snap(2, NOW - 1)]}})
    local.promote_error = "tank/media: the encryption key of tank/media cannot be loaded"
    with pytest.raises(Refused) as e:
        t.run()
    assert "encryption key" in str(e.value) and "pvezfsha promote 103" in str(e.value)
    assert store.read(103).primary == "pve2" and local.cursors == {"pve1": {"tank/media": 102}}
