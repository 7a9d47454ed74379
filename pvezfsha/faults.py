"""Crash points for the lab's fault tests.

`PVEZFSHA_FAULT=<point>` in the environment makes the process SIGKILL
itself when it reaches that named point, the way a power cut or an OOM kill
would end it: no cleanup, no finally. The lab uses it to prove that every
multi-step change (keeping a divergence, for one) is finished or undone by
the next run. Unset, it costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal


def point(name: str) -> None:
    if os.environ.get("PVEZFSHA_FAULT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
