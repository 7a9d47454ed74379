"""HA settings and storage: where they come from, and PVE's defaults."""

import json

from fakenodes import pve_tree

from pvezfsha import pveapi

STATUS = [{"id": "quorum", "type": "quorum", "quorate": 1},
          {"type": "service", "sid": "ct:103", "state": "started", "request_state": "started",
           "max_restart": 0, "max_relocate": 2, "failback": 0}]


class FakeApi:
    def __init__(self, items=None, error=None):
        self.items, self.error = items, error

    def __getattr__(self, name):
        return self

    def get(self):
        if self.error:
            raise self.error
        return self.items


def test_api_token_uses_proxmoxer_and_its_filled_in_settings(tmp_path):
    token = tmp_path / "api-token"
    token.write_text("root@pam!doctor=secret\n")
    seen = []
    src = pveapi.HaSource(pve_tree(tmp_path / "pve"), token_file=str(token),
                          api_factory=lambda t, timeout: seen.append(t) or FakeApi(STATUS))
    r = src.resource(103)
    assert seen == ["root@pam!doctor=secret"]
    assert (r.max_restart, r.max_relocate, r.failback, r.source) == (0, 2, False, "api")


def test_api_failure_falls_back_to_pvesh_and_says_why(tmp_path):
    token = tmp_path / "api-token"
    token.write_text("root@pam!doctor=secret")
    runner = lambda argv, t: (0, json.dumps(STATUS), "") if argv[0] == "pvesh" else (127, "", "")
    src = pveapi.HaSource(pve_tree(tmp_path / "pve"), runner=runner, token_file=str(token),
                          api_factory=lambda t, timeout: FakeApi(error=ConnectionError("refused")))
    assert src.resource(103).source == "pvesh"
    assert src.notes == ["API: ConnectionError: refused"]


def test_without_api_or_pvesh_resources_cfg_gets_pves_defaults(tmp_path):
    root = pve_tree(tmp_path / "pve", resources="ct: 103\n\tstate enabled\n\tmax_relocate 3\n\nvm: 103\n\tstate stopped\n")
    r = pveapi.HaSource(root, runner=lambda a, t: (127, "", ""), token_file=str(tmp_path / "none")).resource(103)
    assert (r.state, r.max_restart, r.max_relocate, r.failback, r.source) == ("started", 1, 3, None, "resources.cfg")


def test_pve8_failback_comes_from_the_ha_group(tmp_path):
    root = pve_tree(tmp_path / "pve", resources="ct: 103\n\tgroup g1\n")
    (root / "ha" / "groups.cfg").write_text("group: g1\n\tnodes pve1,pve2\n\tnofailback 1\n")
    r = pveapi.HaSource(root, runner=lambda a, t: (127, "", ""), token_file=str(tmp_path / "none")).resource(103)
    assert r.failback is False


def test_not_ha_managed_is_none(tmp_path):
    root = pve_tree(tmp_path / "pve", resources="ct: 200\n")
    assert pveapi.HaSource(root, runner=lambda a, t: (127, "", ""), token_file=str(tmp_path / "x")).resource(103) is None


def test_shared_storage_by_type_or_flag():
    cfg = pveapi.parse_section_config("dir: local\n\tpath /var/lib/vz\n\nlvm: san\n\tvgname v\n\tshared 1\n\n"
                                      "rbd: ceph\n\tpool p\n\nzfspool: local-zfs\n\tpool rpool/data\n\tsparse\n")
    stores = {sid: {"type": t, **o} for (t, sid), o in cfg.items()}
    assert [s for s in stores if pveapi.storage_is_shared(stores[s])] == ["san", "ceph"]
    assert stores["local-zfs"]["sparse"] == "1"


def test_recommended_settings_follow_the_freshness_policy():
    assert pveapi.recommended_ha(3, "refuse") == {"max_restart": 0, "max_relocate": 2, "failback": 0}
    assert pveapi.recommended_ha(2, "warn")["max_restart"] == 1
