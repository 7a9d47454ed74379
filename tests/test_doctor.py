"""`pvezfsha doctor`: each check, passing and failing, and the overall verdict."""

import io
import ipaddress
import json
import time

import pytest
from fakenodes import FakeNodes, primary_and_standby, pve_tree

from pvezfsha import doctor, pveapi

CONF = """\
hookscript: local:snippets/pvezfsha-hook
mp0: /tank/media,mp=/srv/media,shared=1
rootfs: drbd1:vm-103-disk-0,size=8G
"""
GOOD_HA = "ct: 103\n\tmax_restart 0\n\tmax_relocate 1\n\tfailback 0\n"
TOML = '[[container]]\nctid = 103\ndatasets = ["tank/media"]\nnodes = ["pve1", "pve2"]\n'


class Setup:
    """A healthy two-node setup; a test breaks one thing and looks at one check."""

    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.conf, self.resources, self.toml = CONF, GOOD_HA, TOML
        self.nodes = primary_and_standby()
        self.quorate = True
        self.timer = (0, "enabled\n", "")
        self.pyzfs = (True, "libzfs_core imports; pool(s) tank answer")
        self.exports = None
        self.pools_asked = None
        self.storage = None

    def results(self, ctids=(103,)):
        root = pve_tree(self.tmp / "pve", conf=self.conf, resources=self.resources, quorate=self.quorate,
                       storage=self.storage)
        cfg = self.tmp / "pvezfsha.toml"
        cfg.write_text(self.toml)
        runner = FakeNodes(self.nodes, commands={"systemctl": self.timer})
        ctx = doctor.build_context(list(ctids), str(cfg), root=str(root), runner=runner, timeout=2)
        ctx.ha = pveapi.HaSource(root, runner=runner, token_file=str(self.tmp / "no-token"))

        def pyzfs(pools):
            self.pools_asked = pools
            return self.pyzfs
        ctx.pyzfs = pyzfs
        exports = self.tmp / "exports"
        if self.exports is not None:
            exports.write_text(self.exports)
        ctx.exports_paths = lambda ctid: [exports]
        ctx.systemd_dir = self.tmp / "systemd"
        return doctor.collect(ctx, list(ctids))

    def status(self, check, node_or_text="", **kw):
        rs = [r for r in self.results(**kw) if r.check == check and node_or_text in r.detail]
        assert rs, f"no {check} result mentioning {node_or_text!r}"
        return {r.status for r in rs}, rs


@pytest.fixture
def s(tmp_path):
    return Setup(tmp_path)


def test_a_healthy_setup_is_all_ok(s):
    res = s.results()
    assert [r for r in res if r.status != "ok"] == []
    assert {r.check for r in res} >= {"config", "quorum", "timer", "pyzfs", "ssh", "clock", "snippet",
                                      "hookscript", "rootfs", "mountpoint", "datasets", "ha", "nfs-exports"}


def test_invalid_config_fails(s):
    s.toml = "[defaults]\nkeep = 0\n"
    st, rs = s.status("config", ctids=())
    assert st == {"FAIL"} and "keep" in rs[0].detail


def test_no_container_configured_warns_and_points_to_init(s):
    s.toml = ""
    st, rs = s.status("config", ctids=())
    assert st == {"warn"} and "pvezfsha init" in rs[0].hint


def test_unconfigured_ctid_fails_with_init_hint(s):
    st, rs = s.status("ct-config", ctids=(103, 104))
    assert st == {"FAIL"} and rs[0].hint == "pvezfsha init 104"


def test_no_quorum_fails(s):
    s.quorate = False
    assert s.status("quorum")[0] == {"FAIL"}


def test_timer_disabled_fails(s):
    s.timer = (1, "disabled\n", "")
    st, rs = s.status("timer")
    assert st == {"FAIL"} and "disabled" in rs[0].detail and "systemctl enable" in rs[0].hint


def test_timer_without_systemctl_reads_the_enablement_symlink(s):
    s.timer = (127, "", "systemctl: not found")
    assert s.status("timer")[0] == {"FAIL"}
    wants = s.tmp / "systemd" / "timers.target.wants"
    wants.mkdir(parents=True)
    (wants / doctor.TIMER).symlink_to("/lib/systemd/system/pvezfsha-sync.timer")
    assert s.status("timer")[0] == {"ok"}


def test_pyzfs_is_asked_about_the_configured_pools_and_its_failure_fails(s):
    assert s.status("pyzfs")[0] == {"ok"} and s.pools_asked == ["tank"]
    s.pyzfs = (False, "libzfs_core cannot talk to ZFS: no /dev/zfs")
    st, rs = s.status("pyzfs")
    assert st == {"FAIL"} and "modprobe zfs" in rs[0].hint


def test_unreachable_peer_fails_ssh_and_is_not_waited_for(s):
    s.nodes["pve2"] = {"dead": True}
    t0 = time.monotonic()
    st, rs = s.status("ssh", "pve2")
    assert st == {"FAIL"} and "Connection timed out" in rs[0].detail and time.monotonic() - t0 < 5
    st, rs = s.status("datasets")
    assert st == {"warn"} and "pve2: not checked (unreachable)" in rs[0].detail


def test_clock_skew_of_5_s_or_more_fails(s):
    s.nodes["pve2"]["skew"] = 1.0
    assert s.status("clock", "pve2")[0] == {"ok"}
    s.nodes["pve2"]["skew"] = -7.0
    st, rs = s.status("clock", "pve2")
    assert st == {"FAIL"} and "-7" in rs[0].detail


@pytest.mark.parametrize("state", ["missing", "notexec"])
def test_snippet_missing_or_not_executable_on_a_peer_fails(s, state):
    s.nodes["pve2"]["snippet"] = state
    st, rs = s.status("snippet", "pve2")
    assert st == {"FAIL"} and "pve2" in rs[0].hint


def test_hookscript_not_attached_fails_with_pct_set(s):
    s.conf = CONF.replace("hookscript: local:snippets/pvezfsha-hook\n", "")
    st, rs = s.status("hookscript")
    assert st == {"FAIL"} and rs[0].hint == "pct set 103 --hookscript local:snippets/pvezfsha-hook"


def test_mount_point_without_shared_fails(s):
    s.conf = CONF.replace(",shared=1", "")
    st, rs = s.status("mountpoint")
    assert st == {"FAIL"} and "shared=1" in rs[0].hint


def test_configured_dataset_without_mount_point_fails(s):
    s.conf = CONF.replace("mp0: /tank/media,mp=/srv/media,shared=1\n", "")
    st, rs = s.status("mountpoint", "tank/media")
    assert st == {"FAIL"} and "no mpN" in rs[0].detail


def test_bind_mounted_dataset_not_protected_warns(s):
    s.conf = CONF + "mp1: /tank/other,mp=/srv/other,shared=1\n"
    s.nodes["pve1"]["datasets"]["tank/other"] = ("/tank/other", True)
    assert s.status("mountpoint", "mp1")[0] == {"warn"}


def test_rootfs_on_local_storage_fails(s):
    s.conf = CONF.replace("drbd1:vm-103-disk-0", "local-zfs:subvol-103-disk-0")
    s.storage = "zfspool: local-zfs\n\tpool rpool/data\n"
    st, rs = s.status("rootfs")
    assert st == {"FAIL"} and "not shared" in rs[0].detail


def test_rootfs_as_a_host_path_fails(s):
    s.conf = CONF.replace("drbd1:vm-103-disk-0,size=8G", "/var/lib/ct103")
    assert s.status("rootfs")[0] == {"FAIL"}


def test_dataset_missing_on_a_node_fails(s):
    del s.nodes["pve2"]["datasets"]["tank/media"]
    st, rs = s.status("datasets")
    assert st == {"FAIL"} and "missing on pve2" in rs[0].detail and "zfs create" in rs[0].hint


def test_dataset_with_another_mountpoint_on_a_node_fails(s):
    s.nodes["pve2"]["datasets"]["tank/media"] = ("/mnt/media", False)
    st, rs = s.status("datasets")
    assert st == {"FAIL"} and "zfs set mountpoint=/tank/media tank/media" in rs[0].hint


def test_hint_for_a_dataset_with_a_space_in_its_name_is_quoted_for_the_shell(s):
    s.toml = s.toml.replace('"tank/media"', '"tank/my media"')
    s.nodes["pve1"]["datasets"]["tank/my media"] = ("/tank/my media", True)
    st, rs = s.status("datasets")
    assert st == {"FAIL"} and "zfs create -p -o canmount=noauto -o readonly=on 'tank/my media'" in rs[0].hint


def test_dataset_mounted_on_a_standby_fails(s):
    s.nodes["pve2"]["datasets"]["tank/media"] = ("/tank/media", True)
    st, rs = s.status("datasets")
    assert st == {"FAIL"} and "mounted on standby pve2" in rs[0].detail


def test_dataset_not_mounted_on_the_primary_fails(s):
    s.nodes["pve1"]["datasets"]["tank/media"] = ("/tank/media", False)
    assert "not mounted on the primary" in s.status("datasets")[1][0].detail


def test_not_ha_managed_fails_with_ha_manager_add(s):
    s.resources = ""
    st, rs = s.status("ha")
    assert st == {"FAIL"} and rs[0].hint.startswith("ha-manager add ct:103 --max_restart 0 --max_relocate 1")


def test_ha_that_gives_up_before_every_node_fails_under_refuse(s):
    s.nodes["pve3"] = s.nodes["pve2"]
    s.toml = TOML.replace('["pve1", "pve2"]', '["pve1", "pve2", "pve3"]')
    st, rs = s.status("ha")
    assert st == {"FAIL"} and "--max_relocate 2" in rs[0].hint


def test_ha_retrying_in_place_or_failing_back_warns(s):
    s.resources = "ct: 103\n\tmax_restart 1\n\tmax_relocate 1\n\tfailback 1\n"
    assert s.status("ha")[0] == {"warn"}


def test_ha_disabled_fails(s):
    s.resources = GOOD_HA + "\tstate disabled\n"
    assert s.status("ha")[0] == {"FAIL"}


def test_no_root_squash_outside_the_trusted_range_warns(s):
    s.exports = "/srv/media 10.0.0.0/24(rw,no_root_squash) *(ro,no_root_squash)\n"
    st, rs = s.status("nfs-exports")
    assert st == {"warn"} and "to *" in rs[0].detail and "10.0.0.0/24" not in rs[0].detail.split(":", 1)[1]


def test_no_root_squash_inside_the_trusted_range_is_ok(s):
    s.exports = "# comment\n/srv/media -rw,no_root_squash 10.0.0.7 \\\n  10.0.0.64/26(sync)\n/srv/x 192.168.9.0/24(rw)\n"
    assert s.status("nfs-exports")[0] == {"ok"}


def test_exports_parsing_handles_defaults_and_continuations():
    assert doctor.parse_exports("/a -ro h1 h2(rw)\n/b\\\n *(no_root_squash)\n") == [
        ("/a", "h1", ["ro"]), ("/a", "h2", ["ro", "rw"]), ("/b", "*", ["no_root_squash"])]


def test_default_trusted_networks_are_the_nodes_24s(tmp_path):
    cluster = doctor.Cluster(pve_tree(tmp_path / "pve"))
    assert doctor.default_trusted(cluster) == [ipaddress.ip_network("10.0.0.0/24")]


def test_json_output_and_exit_code(s, tmp_path, monkeypatch):
    root = pve_tree(tmp_path / "pve", conf=CONF, resources=GOOD_HA)
    cfg = tmp_path / "c.toml"
    cfg.write_text(TOML)
    monkeypatch.setenv("PVEZFSHA_PVE_ROOT", str(root))
    monkeypatch.setattr(doctor, "build_context", _with_fakes(doctor.build_context, s.nodes))
    out = io.StringIO()
    rc = doctor.run([103], str(cfg), as_json=True, out=out)
    doc = json.loads(out.getvalue())
    assert doc["node"] == "pve1" and {c["check"] for c in doc["checks"]} >= {"ha", "datasets"}
    assert rc == (0 if doc["ok"] else 1)


def _with_fakes(build, nodes):
    def wrapped(ctids, path, **kw):
        ctx = build(ctids, path, runner=FakeNodes(nodes, commands={"systemctl": (0, "enabled\n", "")}),
                    **{k: v for k, v in kw.items() if k != "runner"})
        ctx.pyzfs = lambda pools: (False, "no /dev/zfs here")
        ctx.ha = pveapi.HaSource(ctx.cluster.root, runner=ctx.runner, token_file="/nonexistent")
        return ctx
    return wrapped


# -- encryption keys (issue 9, item 4) ----------------------------------------------

KEY = "file:///etc/zfs/keys/media.key"


def encrypted(s, pve2_key=("unavailable", KEY, "ok")):
    s.nodes["pve1"].update(encroots={"tank/media": "tank/media"}, keys={"tank/media": ("available", KEY, "ok")})
    s.nodes["pve2"].update(encroots={"tank/media": "tank/media"}, keys={"tank/media": pve2_key})


def test_an_encrypted_dataset_whose_key_every_node_can_load_is_ok(s):
    encrypted(s)
    st, rs = s.status("keys")
    assert st == {"ok"} and "every node can load" in rs[0].detail


def test_a_standby_that_cannot_load_the_key_fails_with_where_to_put_it(s):
    encrypted(s, ("unavailable", KEY, "fail Key load error: Failed to open key material file: No such file"))
    st, rs = s.status("keys")
    assert st == {"FAIL"} and "pve2" in rs[0].detail and "No such file" in rs[0].detail
    assert "/etc/zfs/keys/media.key" in rs[0].hint


def test_keylocation_prompt_on_a_standby_fails_a_takeover_cannot_type(s):
    encrypted(s, ("unavailable", "prompt", "prompt"))
    st, rs = s.status("keys")
    assert st == {"FAIL"} and "keylocation=prompt" in rs[0].detail


def test_a_loaded_key_with_keylocation_prompt_warns_for_after_a_reboot(s):
    encrypted(s, ("available", "prompt", "prompt"))
    st, rs = s.status("keys")
    assert st == {"warn"} and "after a reboot" in rs[0].detail


def test_an_unencrypted_dataset_has_no_key_check(s):
    assert not [r for r in s.results() if r.check == "keys"]
