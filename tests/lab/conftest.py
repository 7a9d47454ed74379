"""Real-ZFS tests, run as root inside lab guest pve1 (`make test-lab`).

pve1 is the primary and pve2 the standby; they talk over real ssh on the
emulated link, exactly as `pvezfsha sync` does on a cluster. Each test gets
its own container id, datasets and pmxcfs tree, so tests do not share state.
ZFS missing here is a failure, not a skip: this tier exists to run on ZFS.
"""

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from labnode import Group  # noqa: E402


@pytest.fixture
def group(tmp_path):
    if not os.environ.get("PVEZFSHA_LAB_HOST"):
        assert os.geteuid() == 0 and Path("/dev/zfs").exists(), "the lab tier needs root and the zfs module"
    g = Group(tmp_path)
    yield g
    if os.environ.get("PVEZFSHA_LAB_HOST"):
        from labnode import lab
        for node in g.nodes:
            if not lab().running(node):   # a test that failed between crash and boot
                lab().boot(node)
    g.cleanup()


@pytest.fixture
def make_group(tmp_path):
    made = []

    def make(**kw):
        g = Group(tmp_path, **kw)
        made.append(g)
        return g
    yield make
    for g in made:
        g.cleanup()


@pytest.fixture(scope="session", autouse=True)
def _lab_up():
    """From the host, the lab must be up with this tree pushed (make does it)."""
    if os.environ.get("PVEZFSHA_LAB_HOST"):
        from labnode import lab
        assert lab().healthy(), "the lab is not up: run `make lab-up` first"


def pytest_terminal_summary(terminalreporter):
    """The fault suite's table: one row per fault (test_faults.py)."""
    rows = getattr(sys.modules.get("test_faults"), "ROWS", None)
    if not rows:
        return
    cols = ["fault", "happened", "serving", "writes", "acked", "acked_lost", "acked_bytes_lost",
            "kept_copies", "kept_writes", "destroyed", "recover_s"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    terminalreporter.write_sep("=", "fault suite summary")
    for line in lines:
        terminalreporter.write_line(line)
    out = os.environ.get("PVEZFSHA_FAULTS_TABLE")
    if out:
        Path(out).write_text("\n".join(lines) + "\n")
