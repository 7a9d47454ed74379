"""The agent's roles and cycles, without ZFS: it watches only where this
node is primary, never re-reads roles without quorum, starts a cycle when
the debounce says so and one at a time, and keeps a failed cycle's writes
pending; the hand-off spool and the pid-file claim. Real inotify on tmp
dirs; the cycle itself is not run (the worker thread is not started)."""

import json
import os

import pytest

from pvezfsha import agent, config, handoff
from pvezfsha.cluster import Cluster
from pvezfsha.errors import PvezfshaError
from pvezfsha.record import Record
from pvezfsha.record_store import RecordStore

CONFIG = """
[defaults]
quiet = "2s"
max_delay = "10s"
min_interval = "3s"

[[container]]
ctid = 103
datasets = ["tank/media"]
nodes = ["pve1", "pve2"]
continuous = true

[[container]]
ctid = 104
datasets = ["tank/other"]
nodes = ["pve1", "pve2"]
"""


class Clock:
    t = 1000.0

    def __call__(self):
        return self.t


@pytest.fixture
def node(tmp_path, monkeypatch):
    pve = tmp_path / "pve"
    (pve / "local").mkdir(parents=True)
    (pve / ".members").write_text(json.dumps({"nodename": "pve1", "nodelist": {}}))
    (pve / ".vmlist").write_text(json.dumps({"ids": {"103": {"node": "pve1"}, "104": {"node": "pve1"}}}))
    monkeypatch.setenv("PVEZFSHA_RUN_DIR", str(tmp_path / "run"))
    mnt = tmp_path / "mnt"
    (mnt / "sub").mkdir(parents=True)
    monkeypatch.setattr(agent, "zfs_mounts", lambda: {"tank/media": str(mnt), "tank/other": str(tmp_path)})
    cfg = config.parse(CONFIG, str(tmp_path / "pvezfsha.toml"))
    clock = Clock()
    a = agent.Agent(lambda: cfg, Cluster(pve), clock=clock)
    a.pve, a.mnt, a.t = pve, mnt, clock
    yield a
    for w in a.watched.values():
        w.close()


def take_over(a, node, epoch):
    RecordStore(a.pve).write(Record(103, primary=node, epoch=epoch))


def test_only_continuous_containers_this_node_is_primary_for_are_watched(node):
    node._check_roles(force={103, 104})
    assert list(node.watched) == [103]


def test_a_new_primary_runs_a_first_cycle_at_once(node):
    node._check_roles(force={103})
    node._start_due(node.t())
    assert node.watched[103].running and node.worker.jobs.get_nowait()[0] == "cycle"


def test_a_write_starts_the_debounce_and_the_cycle_waits_for_quiet(node):
    node._check_roles(force={103})
    w = node.watched[103]
    w.debounce.started(node.t())          # the first cycle is done
    (node.mnt / "sub" / "f").write_text("x")
    assert w.watcher.read(1000) == {"tank/media"}
    node._touched(w, node.t())
    node.t.t += 1
    node._start_due(node.t())
    assert not w.running
    node.t.t += 2
    node._start_due(node.t())
    assert w.running


def test_another_node_recorded_as_primary_stops_the_watching(node):
    node._check_roles(force={103})
    take_over(node, "pve2", 2)
    node._check_roles()
    assert node.watched == {}


def test_without_quorum_roles_are_not_re_read_and_no_cycle_starts(node):
    node._check_roles(force={103})
    os.chmod(node.pve / "local", 0o555)
    take_over(node, "pve2", 2)          # a record this node cannot trust
    node._check_roles()
    assert 103 in node.watched
    node._start_due(node.t())
    assert not node.watched[103].running


def test_an_unchanged_record_is_not_read_again(node, monkeypatch):
    node._check_roles(force={103})
    reads = []
    monkeypatch.setattr(agent, "role_of", lambda *a: reads.append(a))
    node._check_roles()
    assert reads == []


def test_cycles_run_one_at_a_time(node):
    cfg2 = config.parse(CONFIG.replace('datasets = ["tank/other"]\nnodes = ["pve1", "pve2"]',
                                       'datasets = ["tank/other"]\nnodes = ["pve1", "pve2"]\ncontinuous = true'),
                        "x.toml")
    node.cfg = cfg2
    node._check_roles(force={103, 104})
    node._start_due(node.t())
    node._start_due(node.t())
    assert sum(w.running for w in node.watched.values()) == 1


def test_a_failed_cycle_is_retried_after_a_back_off(node):
    node._check_roles(force={103})
    node._start_due(node.t())
    node.worker.results.put(agent.Done(103, 1, True, 0, 0, 0, 1.0, ["pve2"]))
    node._finished(node.t())
    w = node.watched[103]
    assert not w.running and w.debounce.deadline() == node.t() + agent.RETRY[0]


def test_a_cycle_that_found_a_dataset_busy_tries_again(node):
    node._check_roles(force={103})
    node._start_due(node.t())
    node.worker.results.put(agent.Done(103, 0, True, 1, 0, 0, 1.0, ["pve2"]))
    node._finished(node.t())
    assert node.watched[103].debounce.pending


def test_an_unmounted_dataset_has_its_written_property_read_instead(node, monkeypatch):
    from pvezfsha import watch
    monkeypatch.setattr(agent, "zfs_mounts", lambda: {})
    written = {"tank/media": 0}
    monkeypatch.setattr(agent, "WrittenPoller", lambda names: watch.WrittenPoller(names, read=lambda n: dict(written)))
    node._check_roles(force={103})
    w = node.watched[103]
    w.debounce.started(node.t())
    node._poll_written(node.t())
    assert not w.debounce.pending
    written["tank/media"] = 4096
    node._poll_written(node.t())
    assert w.debounce.pending


# -- the spool and the pid file ------------------------------------------------------

def test_a_hand_off_is_a_file_named_after_the_container(tmp_path, monkeypatch):
    monkeypatch.setenv("PVEZFSHA_RUN_DIR", str(tmp_path))
    assert handoff.hand_off(103, "started on pve2") is None
    assert list(handoff.waiting()) == [103] and handoff.waiting() == {}


def test_only_one_agent_runs_on_a_node(tmp_path, monkeypatch):
    monkeypatch.setenv("PVEZFSHA_RUN_DIR", str(tmp_path))
    assert not handoff.agent_running()
    fd = handoff.claim_agent()
    try:
        assert handoff.agent_running()
        with pytest.raises(PvezfshaError, match=f"another pvezfsha agent runs on this node \\(pid {os.getpid()}"):
            handoff.claim_agent()
    finally:
        os.close(fd)
    assert not handoff.agent_running()


def test_zfs_mounts_are_read_with_their_escapes(tmp_path):
    p = tmp_path / "mounts"
    p.write_text("tank/my\\040media /tank/my\\040media zfs rw 0 0\n"
                 "tank/x@snap /tank/x/.zfs/snapshot/snap zfs ro 0 0\n/dev/sda1 / ext4 rw 0 0\n")
    assert agent.zfs_mounts(str(p)) == {"tank/my media": "/tank/my media"}


def test_a_dataset_mounted_after_watching_began_is_then_watched_with_inotify(node, monkeypatch):
    from pvezfsha import watch
    mounts = {}
    monkeypatch.setattr(agent, "zfs_mounts", lambda: dict(mounts))
    monkeypatch.setattr(agent, "WrittenPoller", lambda names: watch.WrittenPoller(names, read=lambda n: {}))
    node._check_roles(force={103})
    assert node.watched[103].watcher.watched == 0 and node.watched[103].unmounted == {"tank/media"}
    mounts["tank/media"] = str(node.mnt)          # the promotion mounted it
    node._check_roles()
    w = node.watched[103]
    assert w.watcher.watched == 2 and not w.unmounted and w.poller is None


def _two_continuous(node):
    node.cfg = config.parse(CONFIG.replace('datasets = ["tank/other"]\nnodes = ["pve1", "pve2"]',
                                           'datasets = ["tank/other"]\nnodes = ["pve1", "pve2"]\ncontinuous = true'),
                            "x.toml")
    node._check_roles(force={103, 104})


def test_a_cycle_that_found_this_node_no_longer_primary_keeps_its_writes_pending(node):
    node._check_roles(force={103})
    node._start_due(node.t())
    node.worker.results.put(agent.Done(103, 1, False, 0, 0, 0, 1.0, []))   # quorum lost meanwhile
    node._finished(node.t())
    assert node.watched[103].debounce.pending


def test_the_container_that_waited_longest_goes_first(node):
    _two_continuous(node)
    node._start_due(node.t())
    first = next(c for c, w in node.watched.items() if w.running)
    node.worker.results.put(agent.Done(first, 0, True, 0, 1, 10, 1.0, ["pve2"]))
    node.t.t += 10
    node.watched[first].debounce.touch(node.t() - 9)    # busy again, but the other has waited longer
    node._finished(node.t())
    node._start_due(node.t())
    assert [c for c, w in node.watched.items() if w.running] == [c for c in (103, 104) if c != first]


def test_a_cycle_resets_the_written_baseline_of_polled_datasets(node, monkeypatch):
    from pvezfsha import watch
    monkeypatch.setattr(agent, "zfs_mounts", lambda: {})
    written = {"tank/media": 4096}
    monkeypatch.setattr(agent, "WrittenPoller", lambda names: watch.WrittenPoller(names, read=lambda n: dict(written)))
    node._check_roles(force={103})
    node._start_due(node.t())
    node.worker.results.put(agent.Done(103, 0, True, 0, 1, 10, 1.0, ["pve2"]))
    node._finished(node.t())
    node._poll_written(node.t())     # the same figure as before the cycle: a new write of the same size
    assert node.watched[103].debounce.pending


class _Spool:
    def __init__(self, names):
        self.names = names

    def read(self, timeout=0):
        return [type("E", (), {"name": n})() for n in self.names]


def test_a_hand_off_for_a_container_the_agent_does_not_know_as_continuous_re_reads_the_config(node):
    made_continuous = config.parse(CONFIG.replace('datasets = ["tank/other"]\nnodes = ["pve1", "pve2"]',
                                                  'datasets = ["tank/other"]\nnodes = ["pve1", "pve2"]\n'
                                                  'continuous = true'), "x.toml")
    node.load_config = lambda: made_continuous
    handoff.hand_off(104, "started on pve1")
    node._handoffs(_Spool(["104"]))
    assert 104 in node.watched and node.watched[104].debounce.due(node.t())
