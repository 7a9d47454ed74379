"""Fast tests run on any machine: no ZFS, no VM, no root."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import os

# The real-ZFS tier runs inside a lab guest (`make test-lab`), never here.
collect_ignore = [] if os.environ.get("PVEZFSHA_LAB") else ["lab"]

import pytest


@pytest.fixture(autouse=True)
def _own_state_dir(tmp_path, monkeypatch):
    """Alerts remember what they sent under the state dir: never the host's."""
    if not os.environ.get("PVEZFSHA_LAB"):
        monkeypatch.setenv("PVEZFSHA_STATE_DIR", str(tmp_path / "state"))
