"""systemd's notify protocol (sd_notify(3)) with the stdlib: readiness and the watchdog.

One datagram to $NOTIFY_SOCKET per message; outside systemd (no socket) a
message costs nothing. A leading '@' names a socket in the abstract namespace.
"""

from __future__ import annotations

import os
import socket


def notify(message: str) -> bool:
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):
        path = "\0" + path[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(path)
            s.sendall(message.encode())
        return True
    except OSError:
        return False


def watchdog_interval() -> float | None:
    """How often to ping the watchdog (half of WatchdogSec), or None when off."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 1e6 / 2
