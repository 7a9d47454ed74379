"""Fast tests run on any machine: no ZFS, no VM, no root."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
