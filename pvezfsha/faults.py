"""Crash points for the lab's fault tests.

`PVEZFSHA_FAULT=<point>` in the environment makes the process SIGKILL
itself when it reaches that named point, the way a power cut or an OOM kill
would end it: no cleanup, no finally. The lab uses it to prove that every
multi-step change (keeping a divergence, for one) is finished or undone by
the next run. `<point>:stop` makes it SIGSTOP itself instead, so that the
lab can cut the node's power at exactly that point. `<point>:sleep` makes
it wait 5 s there, so that a test can run something else while the process
holds what it holds at that point (the agent and the timer and their
locks). Unset, it costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
import time


def point(name: str) -> None:
    fault = os.environ.get("PVEZFSHA_FAULT")
    if fault == name:
        os.kill(os.getpid(), signal.SIGKILL)
    elif fault == f"{name}:stop":
        os.kill(os.getpid(), signal.SIGSTOP)
    elif fault == f"{name}:sleep":
        time.sleep(5)
