"""The standby's end of a session: it takes only what its own config says it
receives, never into the live primary, fences a sender that is behind a
takeover (two nodes both claiming to be primary), answers reads even while
busy, and refuses malformed requests with one line; ZFS faked."""

import json
import os

import pytest

from pvezfsha import config, receive
from pvezfsha.errors import ZfsError
from pvezfsha.planner import EMPTY_PLACEHOLDER_BYTES
from pvezfsha.record import Record
from pvezfsha.record_store import RecordStore
from pvezfsha.state import dataset_lock
from pvezfsha.versions import DatasetState, Version

CONFIG = """
[[container]]
ctid = 103
datasets = ["tank/media", { name = "tank/files", on = { pve1 = "usb/files" } }]
nodes = ["pve1", "pve2"]

[[container]]
ctid = 105
datasets = ["tank/elsewhere"]
nodes = ["pve2", "pve3"]
"""


@pytest.fixture
def server(tmp_path, monkeypatch):
    (tmp_path / ".members").write_text(json.dumps({"nodename": "pve1", "nodelist": {}}))
    monkeypatch.setenv("PVEZFSHA_PVE_ROOT", str(tmp_path))
    monkeypatch.setenv("PVEZFSHA_RUN_DIR", str(tmp_path / "run"))
    demoted, calls = [], []
    state = {"st": DatasetState("tank/media", True, readonly=True, canmount="noauto")}
    monkeypatch.setattr(receive.zfs, "read_state", lambda ds: state["st"])
    monkeypatch.setattr(receive.divergence, "swap_pending", lambda ds, prefix: False)
    monkeypatch.setattr(receive.zfs, "local_props", lambda ds: {})

    def quick(ds, snaps=()):
        # Fencing reads the few properties it needs; a received snapshot has guid 42.
        st = state["st"]
        return receive.zfs.Quick(st.exists, st.written, None, st.readonly, st.canmount, st.resume is not None,
                                 {n: 42 for n in snaps}, st.props, st.mounted)
    monkeypatch.setattr(receive.zfs, "quick_state", quick)
    monkeypatch.setattr(receive.replica, "demote", lambda ds, why="": demoted.append((ds, why)))
    monkeypatch.setattr(receive.zfs, "receive", lambda snap, fd, force=False, raw=False:
                        calls.append(("receive", snap, force)))
    monkeypatch.setattr(receive.zfs, "abort_receive", lambda ds: calls.append(("abort", ds)))
    monkeypatch.setattr(receive.zfs, "destroy_snapshots", lambda names: calls.append(("destroy", names)))
    monkeypatch.setattr(receive.zfs, "hold", lambda holds: calls.append(("hold", holds)))
    monkeypatch.setattr(receive.zfs, "release", lambda holds: calls.append(("release", holds)))
    monkeypatch.setattr(receive.divergence, "keep_diverged",
                        lambda ds, guid, prefix, node: calls.append(("keep", ds, guid)) or {"kept": ds + "-kept"})
    cfg = config.parse(CONFIG, "/etc/pvezfsha/pvezfsha.toml")
    s = receive.Server(cfg, os.open(os.devnull, os.O_RDONLY), os.open(os.devnull, os.O_WRONLY))
    s.demoted, s.state, s.calls = demoted, state, calls
    RecordStore(tmp_path).write(Record(103, primary="pve2", epoch=3))
    return s


def refused(server, req: dict, kind: str) -> str:
    reply = server.handle(req)
    assert reply["ok"] is False and reply["kind"] == kind, reply
    assert "\n" not in reply["error"]
    return reply["error"]


def push(**kw) -> dict:
    return {"op": "receive", "snapshot": "tank/media@pvezfsha_1", "guid": 42, "ctid": 103, "epoch": 3, **kw}


CHANGING = [push(),
            {"op": "finish", "dataset": "tank/media", "ctid": 103, "epoch": 3, "hold": None, "destroy": []},
            {"op": "abort_resume", "dataset": "tank/media", "ctid": 103, "epoch": 3},
            {"op": "keep_diverged", "dataset": "tank/media", "ctid": 103, "epoch": 3, "base_guid": 7,
             "prefix": "pvezfsha"}]


def test_sender_at_an_older_epoch_than_the_cluster_is_refused(server):
    with pytest.raises(ZfsError, match="refusing a sender at epoch 2: CT 103 is at epoch 3") as e:
        server._fence({"ctid": 103, "epoch": 2}, "tank/media")
    assert e.value.kind == "StaleEpoch"


def test_sender_older_than_our_own_promotion_is_refused(server):
    server.state["st"] = DatasetState("tank/media", True, readonly=True, props={"pvezfsha:epoch": "4"})
    with pytest.raises(ZfsError, match="promoted at epoch 4"):
        server._fence({"ctid": 103, "epoch": 3}, "tank/media")


def test_old_primary_demotes_itself_before_taking_a_stream(server):
    # This node (pve1) still has a writable, mounted copy; the record says pve2.
    server.state["st"] = DatasetState("tank/media", True, readonly=False, mounted=True,
                                      props={"pvezfsha:epoch": "2"})
    server._fence({"ctid": 103, "epoch": 3}, "tank/media")
    assert server.demoted == [("tank/media", "pve2 is primary at epoch 3")]


def test_current_sender_to_an_inert_replica_passes(server):
    server._fence({"ctid": 103, "epoch": 3}, "tank/media")
    assert server.demoted == []


def test_stall_guard_ends_a_receive_whose_sender_went_silent(tmp_path):
    """A child blocked reading a pipe nobody writes to is killed after the
    stall time; one that keeps reading is left alone."""
    import subprocess
    import sys
    import textwrap
    code = textwrap.dedent("""
        import os, sys, time
        sys.path.insert(0, %r)
        from pvezfsha.receive import stall_guard
        r, w = os.pipe()
        with stall_guard(float(sys.argv[1]), "test"):
            if sys.argv[2] == "silent":
                os.read(r, 1)          # blocks forever, as lzc_receive would
            else:
                for _ in range(4):
                    os.write(w, b"x"); os.read(r, 1); time.sleep(0.6)
        print("finished")
    """) % os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    silent = subprocess.run([sys.executable, "-c", code, "1.5", "silent"], capture_output=True, text=True, timeout=30)
    assert silent.returncode == -9 and "nothing from the sender for 2 s" in silent.stderr
    busy = subprocess.run([sys.executable, "-c", code, "1.5", "busy"], capture_output=True, text=True, timeout=30)
    assert busy.returncode == 0 and "finished" in busy.stdout


# -- what this node is configured to receive -----------------------------------

def test_a_configured_dataset_is_read_and_received(server):
    assert server.handle({"op": "state", "dataset": "tank/media", "ctid": 103})["ok"]
    assert server.handle(push()) == {"ok": True, "guid": 42}
    assert server.calls == [("receive", "tank/media@pvezfsha_1", False)]


@pytest.mark.parametrize("req", [{"op": "state", "dataset": "tank/media"}, push(ctid=None)],
                         ids=["state", "receive"])
def test_a_request_without_a_ctid_is_refused(server, req):
    req = {k: v for k, v in req.items() if k != "ctid"}
    assert "names no container" in refused(server, req, "NotConfigured")
    assert server.calls == []


def test_a_container_not_configured_here_is_refused(server):
    assert "CT 104 is not configured" in refused(server, push(ctid=104), "NotConfigured")
    assert server.calls == []


def test_a_container_that_does_not_list_this_node_is_refused(server):
    msg = refused(server, {"op": "state", "dataset": "tank/elsewhere", "ctid": 105}, "NotConfigured")
    assert "pve1 is not one of its nodes" in msg


def test_a_dataset_that_is_not_the_containers_is_refused(server):
    msg = refused(server, push(snapshot="tank/other@pvezfsha_1"), "NotConfigured")
    assert "tank/other is not a dataset of CT 103 on pve1" in msg
    assert server.calls == []


def test_a_dataset_is_known_by_its_name_on_this_node(server):
    assert server.handle({"op": "state", "dataset": "usb/files", "ctid": 103})["ok"]
    refused(server, {"op": "state", "dataset": "tank/files", "ctid": 103}, "NotConfigured")


@pytest.mark.parametrize("req", CHANGING, ids=[r["op"] for r in CHANGING])
def test_nothing_is_changed_on_the_node_the_record_names_primary(server, req):
    RecordStore(server.store.root).write(Record(103, primary="pve1", epoch=3))
    assert "pve1 is primary for CT 103 at epoch 3" in refused(server, req, "Primary")
    assert server.calls == [] and server.demoted == []


def test_a_read_of_the_primary_is_answered(server):
    RecordStore(server.store.root).write(Record(103, primary="pve1", epoch=3))
    assert server.handle({"op": "state", "dataset": "tank/media", "ctid": 103})["ok"]


# -- force: only a full stream onto an empty placeholder -----------------------

def test_force_onto_an_empty_placeholder_is_honoured(server):
    server.state["st"] = DatasetState("tank/media", True, referenced=EMPTY_PLACEHOLDER_BYTES, readonly=True,
                                      canmount="noauto")
    assert server.handle(push(force=True))["ok"]
    assert server.calls == [("receive", "tank/media@pvezfsha_1", True)]


def test_force_onto_a_dataset_with_snapshots_is_refused(server):
    server.state["st"] = DatasetState("tank/media", True, snapshots=(Version("old", 1, 1, 1),), readonly=True)
    assert "holds data" in refused(server, push(force=True), "Refused")
    assert server.calls == []


def test_force_onto_a_dataset_holding_data_is_refused(server):
    server.state["st"] = DatasetState("tank/media", True, referenced=EMPTY_PLACEHOLDER_BYTES + 1, readonly=True)
    refused(server, push(force=True), "Refused")
    assert server.calls == []


def test_force_for_an_incremental_stream_is_refused(server):
    assert "full stream" in refused(server, push(force=True, **{"from": "pvezfsha_0"}), "Refused")
    assert server.calls == []


# -- reads take no lock; changes do ----------------------------------------------

def test_state_is_answered_while_a_receive_holds_the_dataset(server):
    with dataset_lock("tank/media", "receive"):
        assert server.handle({"op": "state", "dataset": "tank/media", "ctid": 103})["ok"]


@pytest.mark.parametrize("req", CHANGING, ids=[r["op"] for r in CHANGING])
def test_a_change_is_refused_while_the_dataset_is_busy(server, req):
    with dataset_lock("tank/media", "receive"):
        refused(server, req, "Busy")
    assert server.calls == []


# -- malformed requests: one line, never a traceback ------------------------------

BAD_NUMBERS = ["1e400", '"3"', "3.5", "-1", "true", "null", "18446744073709551616"]


# Not malformed: no stall is the default, a stall may be fractional, and no
# ctid is refused as naming no container.
FINE = {("stall", "null"), ("stall", "3.5"), ("ctid", "null")}


@pytest.mark.parametrize("req,key,value", [
    pytest.param(req, key, value, id=f"{key}={value}")
    for req, key in [(push(), "epoch"), (push(), "ctid"), (push(), "guid"), (push(), "stall"),
                     (CHANGING[3], "base_guid")]
    for value in BAD_NUMBERS if (key, value) not in FINE])
def test_a_malformed_number_is_a_bad_request(server, req, key, value):
    line = json.dumps({k: v for k, v in req.items() if k != key})[:-1] + f', "{key}": {value}}}'
    assert key in refused(server, json.loads(line), "BadRequest")
    assert server.calls == []


def test_a_malformed_request_ends_a_session_with_one_error_line(server, tmp_path):
    r, w = os.pipe()
    os.write(w, (json.dumps(push())[:-1] + ', "epoch": 1e400}\n').encode())
    os.close(w)
    out_r, out_w = os.pipe()
    server.in_fd, server.out_fd = r, out_w
    assert server.serve() == 1
    os.close(out_w)
    reply = json.loads(os.read(out_r, 65536))
    assert reply["ok"] is False and reply["kind"] == "BadRequest" and "epoch" in reply["error"]


# -- the senders' side: every request names its container; the peer's
#    receive reads its own config from the path ours has ------------------------

class FakeSession:
    def __init__(self, argv=None, peer="pve2", **kw):
        self.argv, self.requests = argv, []

    def request(self, op, **args):
        self.requests.append((op, args))
        return {"state": DatasetState(args.get("dataset", "d"), False).to_dict()}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def test_the_replicator_names_the_container_when_it_reads_the_standby():
    from pvezfsha.engine import Replicator
    s = FakeSession()
    Replicator(s, "pve2", config.Options(), ctid=103, epoch=3).remote_state("tank/media")
    assert s.requests == [("state", {"dataset": "tank/media", "prefix": "pvezfsha", "ctid": 103, "epoch": 3})]


def test_a_takeover_names_the_container_when_it_asks_a_survivor(monkeypatch):
    from pvezfsha import peers
    made = []
    monkeypatch.setattr(peers, "Session", lambda argv, node, **kw: made.append(FakeSession(argv)) or made[-1])
    cfg = config.parse(CONFIG, "/etc/pvezfsha/my config.toml")

    class Cluster:
        def address(self, node, overrides):
            return "10.0.0.2"
    peers.Peers(cfg, Cluster()).holdings("pve2", cfg.containers[103])
    assert made[0].argv[-4:] == ["pvezfsha", "--config", "'/etc/pvezfsha/my config.toml'", "receive"]
    assert [args["ctid"] for _, args in made[0].requests] == [103, 103]


def test_a_sync_starts_the_peers_receive_with_the_same_config_path(monkeypatch):
    from pvezfsha import cycle, push
    monkeypatch.setattr(push, "Session", lambda argv, peer, **kw: FakeSession(argv))
    cfg = config.parse(CONFIG, "/etc/pvezfsha/pvezfsha.toml")

    class Cluster:
        def address(self, node, overrides):
            return "10.0.0.2"
    s = push.open_session(cycle.SyncContext(cfg, Cluster()), cfg.containers[103], "pve2")
    assert s.argv[-4:] == ["pvezfsha", "--config", "/etc/pvezfsha/pvezfsha.toml", "receive"]


# -- a warm session: one session, many cycles --------------------------------------

def test_a_warm_session_releases_the_datasets_it_changed_at_the_end_of_a_cycle(server):
    assert server.handle(push())["ok"]
    with pytest.raises(Exception, match="busy"):
        with dataset_lock("tank/media", "promote"):
            pass
    assert server.handle({"op": "release"}) == {"ok": True, "released": ["tank/media"]}
    with dataset_lock("tank/media", "promote"):   # a takeover here is not kept waiting
        pass


def test_a_warm_session_takes_the_lock_again_for_the_next_cycle(server):
    server.handle(push())
    server.handle({"op": "release"})
    assert server.handle(push())["ok"]
    with pytest.raises(Exception, match="busy"):
        with dataset_lock("tank/media", "promote"):
            pass


def test_a_warm_session_opened_before_a_takeover_is_refused_after_it(server, tmp_path):
    assert server.handle(push())["ok"]
    server.handle({"op": "release"})
    RecordStore(tmp_path).write(Record(103, primary="pve1", epoch=4))   # this node took over meanwhile
    refused(server, push(), "StaleEpoch")


def test_a_warm_session_follows_its_config_file_as_edited(server, tmp_path):
    path = tmp_path / "pvezfsha.toml"
    path.write_text(CONFIG)
    server.cfg = config.parse(CONFIG, str(path))
    server._cfg_key = server._config_key()
    assert server.handle(push())["ok"]
    path.write_text(CONFIG.replace('ctid = 103', 'ctid = 104'))
    refused(server, push(), "NotConfigured")
