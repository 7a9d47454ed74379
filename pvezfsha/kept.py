"""The names of a dataset's diverged states, kept beside it (divergence.py
keeps them; status and the health files list them)."""

from __future__ import annotations

import datetime as dt
import re

# On the kept dataset: its base and when it was kept, for `status`.
KEPT_PROP = "pvezfsha:diverged"


def kept_name(dataset: str, prefix: str, when: dt.datetime) -> str:
    return f"{dataset}-{prefix}-diverged-{when.astimezone(dt.timezone.utc):%Y%m%dT%H%M%SZ}"


def is_kept_copy(name: str, dataset: str, prefix: str) -> bool:
    """Whether `name` is a kept copy of `dataset` (kept_name's shape exactly:
    tank/a-b-pvezfsha-diverged-... is tank/a-b's, never tank/a's)."""
    return re.fullmatch(re.escape(f"{dataset}-{prefix}-diverged-") + r"\d{8}T\d{6}Z", name) is not None
