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
    assert os.geteuid() == 0 and Path("/dev/zfs").exists(), "the lab tier needs root and the zfs module"
    g = Group(tmp_path)
    yield g
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
