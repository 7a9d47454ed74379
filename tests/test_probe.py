"""The node probe: what it reads from a node's answer, and that a dead or
hanging node is reported, never waited on past the deadline."""

import time

from fakenodes import FakeNodes, primary_and_standby

from pvezfsha import probe


def test_local_node_runs_the_script_here_and_peers_over_batch_mode_ssh():
    fake = FakeNodes(primary_and_standby())
    facts = probe.probe_all({"pve1": "10.0.0.1", "pve2": "10.0.0.2"}, "pve1", runner=fake, timeout=3)
    ssh = next(a for a in fake.calls if a[0] == "ssh")
    assert "BatchMode=yes" in ssh and "ConnectTimeout=3" in ssh and ssh[-3:-1] == ["sh", "-c"]
    assert facts["pve1"].local and facts["pve1"].clock_skew == 0.0
    assert facts["pve2"].datasets["tank/media"] == probe.Dataset("tank/media", "/tank/media", False)


def test_clock_skew_is_measured_against_the_middle_of_the_round_trip():
    nodes = primary_and_standby()
    nodes["pve2"]["skew"] = 42.0
    f = probe.probe("pve2", "10.0.0.2", local=False, runner=FakeNodes(nodes))
    assert 41.0 < f.clock_skew < 43.0


def test_dead_node_is_unreachable_with_ssh_message():
    f = probe.probe("pve2", "10.0.0.2", local=False, runner=FakeNodes({"pve2": {"dead": True}}))
    assert not f.reachable and "Connection timed out" in f.error


def test_a_real_hang_is_cut_at_the_deadline():
    t0 = time.monotonic()
    rc, out, err = probe.run_subprocess(["sleep", "30"], 0.5)
    assert rc == 124 and "0.5 s" in err and time.monotonic() - t0 < 5


def test_zfs_failure_is_reported_not_taken_for_no_datasets():
    facts = probe.parse_output(probe.NodeFacts("pve1", True, True),
                               "@time 1\n@snippet ok\n@zfs\nThe ZFS modules are not loaded.\n@zfs-error 1\n", 1)
    assert facts.zfs_error == "The ZFS modules are not loaded." and facts.datasets == {}


def test_the_real_script_runs_under_sh(tmp_path, monkeypatch):
    # No zfs binary: the script still answers, and says why there is no list.
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    f = probe.probe("me", None, local=True, timeout=10)
    assert f.reachable and f.snippet in ("ok", "missing", "notexec") and f.zfs_error


def test_a_node_whose_address_is_an_ssh_option_is_unreachable_not_a_crash():
    calls = []
    facts = probe.probe("pve2", "-oProxyCommand=x", local=False, runner=lambda argv, t: calls.append(argv))
    assert not facts.reachable and "not a host name" in facts.error and calls == []


def test_key_lines_are_read_per_encryption_root_and_datasets_know_their_root():
    out = ("@time 1\n@snippet ok\n@key tank/my data\tunavailable\tfile:///k\tfail Key load error: no file\n"
           "@zfs\ntank/my data\t/tank/my data\tno\ttank/my data\ntank\t/tank\tyes\t-\n")
    facts = probe.parse_output(probe.NodeFacts("pve2", False, True), out, 1.0)
    assert facts.keys["tank/my data"].result == "fail Key load error: no file"
    assert facts.datasets["tank/my data"].encroot == "tank/my data" and facts.datasets["tank"].encroot == ""


FAKE_ZFS = r"""#!/bin/sh
# zfs as the probe calls it, for three encryption roots and a child.
case "$1 $2" in
  "list -H")
    case "$*" in
      *encryptionroot,keystatus*)
        printf 'tank\t-\tnone\tnone\n'
        printf 'tank/ok\ttank/ok\tunavailable\tfile://%s/key\n' "$KEYDIR"
        printf 'tank/ok/child\ttank/ok\tunavailable\tnone\n'
        printf 'tank/gone\ttank/gone\tunavailable\tfile://%s/missing\\n@key forged\n' "$KEYDIR"
        printf 'tank/fifo\ttank/fifo\tunavailable\tfile://%s/fifo\n' "$KEYDIR"
        printf 'tank/typed\ttank/typed\tunavailable\tprompt\n' ;;
      *) printf 'tank\t/tank\tyes\t-\ntank/ok\t/tank/ok\tno\ttank/ok\n' ;;
    esac ;;
  "load-key -n") echo "load-key $3" >> "$KEYDIR/calls"; [ "$3" = tank/ok ] ;;
esac
"""


def test_the_real_script_reports_each_encryption_root_under_dash_and_never_opens_a_fifo(tmp_path, monkeypatch):
    import os
    import shutil
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "zfs").write_text(FAKE_ZFS)
    (bindir / "zfs").chmod(0o755)
    (tmp_path / "key").write_bytes(b"k" * 32)
    os.mkfifo(tmp_path / "fifo")
    monkeypatch.setenv("KEYDIR", str(tmp_path))
    monkeypatch.setenv("PATH", f"{bindir}:/usr/bin:/bin")
    shell = shutil.which("dash") or "sh"
    rc, out, err = probe.run_subprocess([shell, "-c", probe.SCRIPT], 10)
    facts = probe.parse_output(probe.NodeFacts("me", True, True), out, 0.0)
    assert facts.keys["tank/ok"].result == "ok"
    assert facts.keys["tank/fifo"].result == f"fail {tmp_path}/fifo is not a regular file"
    assert facts.keys["tank/typed"].result == "prompt"
    assert facts.keys["tank/gone"].result.startswith("fail") and "forged" not in facts.keys
    assert set(facts.keys) == {"tank/ok", "tank/gone", "tank/fifo", "tank/typed"}
    assert (tmp_path / "calls").read_text() == "load-key tank/ok\n"     # the only one it tried
    assert facts.datasets["tank/ok"].encroot == "tank/ok"
