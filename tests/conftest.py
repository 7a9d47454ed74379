"""Fast tests run on any machine: no ZFS, no VM, no root."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import os

# The real-ZFS tier runs inside a lab guest (`make test-lab`), never here.
collect_ignore = [] if os.environ.get("PVEZFSHA_LAB") else ["lab"]
