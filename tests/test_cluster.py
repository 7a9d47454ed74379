"""Reading pmxcfs: who owns a container, node addresses, quorum."""

import json
import os

from pvezfsha.cluster import Cluster


def pve(tmp_path, quorate=True):
    (tmp_path / ".members").write_text(json.dumps({
        "nodename": "pve2", "version": 3,
        "nodelist": {"pve1": {"id": 1, "online": 1, "ip": "10.0.0.1"},
                     "pve2": {"id": 2, "online": 0, "ip": "10.0.0.2"}}}))
    (tmp_path / ".vmlist").write_text(json.dumps({"version": 1, "ids": {"103": {"node": "pve1", "type": "lxc"}}}))
    (tmp_path / "local").mkdir()
    os.chmod(tmp_path / "local", 0o755 if quorate else 0o555)
    return Cluster(tmp_path)


def test_owner_is_the_node_whose_directory_holds_the_config(tmp_path):
    assert pve(tmp_path).owner(103) == "pve1"


def test_unknown_container_has_no_primary(tmp_path):
    assert pve(tmp_path).owner(999) is None


def test_local_node_and_members(tmp_path):
    c = pve(tmp_path)
    assert c.local_node() == "pve2"
    assert c.members()["pve1"].online and not c.members()["pve2"].online


def test_address_comes_from_members_unless_overridden(tmp_path):
    c = pve(tmp_path)
    assert c.address("pve1", {}) == "10.0.0.1"
    assert c.address("pve1", {"pve1": "192.0.2.1"}) == "192.0.2.1"


def test_quorum_is_the_write_bit_of_local(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert pve(tmp_path / "a").is_quorate()
    assert not pve(tmp_path / "b", quorate=False).is_quorate()


def test_missing_pmxcfs_files_mean_no_owner(tmp_path):
    assert Cluster(tmp_path).owner(103) is None and Cluster(tmp_path).members() == {}


def test_environment_moves_the_root(tmp_path, monkeypatch):
    pve(tmp_path)
    monkeypatch.setenv("PVEZFSHA_PVE_ROOT", str(tmp_path))
    assert Cluster().owner(103) == "pve1"
