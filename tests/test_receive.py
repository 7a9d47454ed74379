"""The standby's end of a session: fencing against a sender that is behind a
takeover (two nodes both claiming to be primary), with ZFS faked."""

import json
import os

import pytest

from pvezfsha import receive
from pvezfsha.errors import ZfsError
from pvezfsha.record import Record, RecordStore
from pvezfsha.versions import DatasetState


@pytest.fixture
def server(tmp_path, monkeypatch):
    (tmp_path / ".members").write_text(json.dumps({"nodename": "pve1", "nodelist": {}}))
    monkeypatch.setenv("PVEZFSHA_PVE_ROOT", str(tmp_path))
    monkeypatch.setenv("PVEZFSHA_RUN_DIR", str(tmp_path / "run"))
    demoted = []
    state = {"st": DatasetState("tank/media", True, readonly=True)}
    monkeypatch.setattr(receive.zfs, "read_state", lambda ds: state["st"])
    # Fencing reads the few properties it needs (a DatasetState has the same fields).
    monkeypatch.setattr(receive.zfs, "quick_state", lambda ds, snaps=(): state["st"])
    monkeypatch.setattr(receive.replica, "demote", lambda ds, why="": demoted.append((ds, why)))
    s = receive.Server(os.open(os.devnull, os.O_RDONLY), os.open(os.devnull, os.O_WRONLY))
    s.demoted, s.state = demoted, state
    RecordStore(tmp_path).write(Record(103, primary="pve2", epoch=3))
    return s


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
