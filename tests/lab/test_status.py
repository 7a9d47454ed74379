"""Status, metrics, progress and alerts on real ZFS: each state comes from the
situation it names (a fresh group, a good cycle, an unreachable standby, a
silent primary, a standby's kept writes, a long transfer), never from an
injected state."""

import json
import re
import time

import pytest

from labnode import sh
from tests.webhook import webhook_sink

METRICS = "/var/tmp/pvezfsha-metrics"


def status(g, node: str = "pve1") -> dict:
    p = g.run("status", "--json", str(g.ctid), node=node)
    assert p.returncode in (0, 1), p.stderr
    return json.loads(p.stdout)


def state(g, node: str = "pve1", peer: str = "pve2") -> dict:
    [ct] = status(g, node)["containers"]
    [s] = [s for s in ct["datasets"][0]["standbys"] if s["node"] == peer]
    return s


def check(g, node: str = "pve1") -> tuple[int, str]:
    p = g.run("status", "--check", str(g.ctid), node=node)
    return p.returncode, p.stdout


@pytest.fixture
def hook():
    """A webhook on pve1, where the tests and pvezfsha run."""
    with webhook_sink() as sink:
        yield sink


def configure(g, port: int | None = None, more: str = "", **defaults) -> None:
    sh("pve1", ["mkdir", "-p", METRICS])
    alerts = f'[alerts]\nmail_to = ""\nafter_failures = 2\nwebhook = "http://127.0.0.1:{port}/"\n' if port else ""
    for node in g.nodes:
        g.write_config(node, extra=alerts + more,
                       defaults={"metrics_file": f"{METRICS}/{g.ctid}.prom", **defaults})


def test_a_group_no_cycle_has_recorded_is_unknown(group):
    configure(group)
    assert state(group)["state"] == "unknown"
    rc, line = check(group)
    assert rc == 3 and line.startswith("PVEZFSHA UNKNOWN - ") and "no cycle has recorded" in line


def test_after_a_good_cycle_every_standby_is_ok_with_its_lag_and_metrics(group):
    configure(group)
    group.write("a.bin")
    group.sync()
    s = state(group)
    assert s["state"] == "ok" and s["failures"] == 0 and s["lag_seconds"] < 60 and s["last_transfer_bytes"] > 1 << 20
    assert s["common"] == state(group, node="pve2")["common"]     # pve2 reads the same facts from pmxcfs
    assert check(group) == (0, "PVEZFSHA OK - 1 replica(s) ok\n")
    prom = sh("pve1", ["cat", f"{METRICS}/{group.ctid}.prom"]).stdout
    assert re.search(rf'pvezfsha_state{{ctid="{group.ctid}",node="pve1",dataset="{group.ds}",standby="pve2",'
                     rf'state="ok"}} 1\n', prom), prom
    assert f'pvezfsha_primary{{ctid="{group.ctid}",node="pve1"}} 1\n' in prom


def test_an_unreachable_standby_is_an_error_alerted_once_then_recovered(group, hook):
    port, got = hook
    # interval 1s: failures count as critical after after_failures (2) cycles over one interval.
    configure(group, port, interval="1s")
    group.write("a.bin")
    group.sync()
    # pve2 unreachable: TEST-NET-1 (RFC 5737) answers nobody.
    configure(group, port, '[nodes.pve2]\naddress = "192.0.2.1"\n', interval="1s", ssh_connect_timeout="2s")
    group.write("b.bin")
    group.sync(expect=1)
    s = state(group)
    assert s["state"] == "error" and s["severity"] == 1 and s["failures"] == 1, s    # one failure: a warning
    assert got == []
    for _ in range(2):
        group.write("b.bin")
        group.sync(expect=1)
    s = state(group)
    assert s["state"] == "error" and s["failures"] == 3 and "cannot reach pve2" in s["last_error"], s
    rc, line = check(group)
    assert rc == 2 and "error" in line
    assert [(a["kind"], a["key"]) for a in got] == [("firing", f"failing/{group.ctid}/{group.ds}/pve2")], got
    assert "cannot reach pve2" in got[0]["body"] and f"pvezfsha status {group.ctid}" in got[0]["body"]
    configure(group, port, interval="1s")
    group.sync()
    assert state(group)["state"] == "ok"
    assert [a["kind"] for a in got] == ["firing", "resolved"], got


def test_a_primary_silent_past_max_staleness_is_lagging(group):
    configure(group, max_staleness="5s")
    group.write("a.bin")
    group.sync()
    time.sleep(6)
    s = state(group, node="pve2")          # what pve2 knows, from pmxcfs alone
    assert s["state"] == "lagging" and "past max_staleness" in s["detail"], s
    assert check(group, node="pve2")[0] == 2


def test_a_standbys_kept_writes_show_as_diverged_on_every_node(group):
    configure(group)
    group.write("a.bin")
    group.sync()
    group.diverge("pve2")
    group.write("b.bin")
    group.sync()
    group.sync(node="pve2")                # pve2's timer: a standby's cycle reports what it keeps
    here = status(group, node="pve2")["containers"][0]["datasets"][0]
    assert len(here["kept"]) == 1 and next(iter(here["kept"])).startswith(f"{group.ds}-pvezfsha-diverged-")
    s = state(group)
    assert s["state"] == "diverged" and "kept there" in s["detail"], s
    assert check(group)[0] == 1


def test_a_long_transfer_shows_live_progress_and_logs_it(group):
    configure(group, bandwidth_limit="1M")
    group.write("big.bin", 36)
    p = group.popen_sync()
    seen = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and p.poll() is None:
        s = state(group)
        if s["state"] == "transferring" and s["transfer"]["bytes"] > 0:
            seen = s
            break
        time.sleep(1)
    out, err = p.communicate(timeout=180)
    assert p.returncode == 0, err
    assert seen is not None and seen["transfer"]["estimate"] > 30 << 20 and "%" in seen["detail"], seen
    # One line every 30 s of a 36 s stream: bytes, percent of the estimate, rate, ETA.
    assert re.search(rf"{group.ds} -> pve2: full @\S+: [\d.]+ MiB of ~[\d.]+ MiB \(\d+ %\), [\d.]+ [KM]iB/s, ETA", err), err
    assert state(group)["state"] == "ok" and state(group)["transfer"] is None
