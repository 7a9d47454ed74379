"""Logging: loguru to stderr, which systemd puts in the journal.

Under systemd (JOURNAL_STREAM is set) the journal adds time and unit, so
lines carry only the level and the message.

`logger` here is loguru's logger, imported on first use. Importing loguru
costs about a second on a slow node (it pulls in asyncio, ssl and
multiprocessing), and `pvezfsha receive`, started over ssh on the standby
every cycle, usually logs nothing: it answers sooner without it. On the
primary the import then overlaps the standby's start instead of preceding it.
"""

from __future__ import annotations

import os
import sys

_settings: dict | None = None   # what setup() asked for, applied when loguru is loaded
_loguru = None


def _load():
    global _loguru
    if _loguru is None:
        try:
            from loguru import logger
        except ImportError:
            from pvezfsha.errors import MissingModule
            raise MissingModule("loguru", "python3-loguru") from None
        _loguru = logger
        _apply()
    return _loguru


def _apply() -> None:
    if _settings is None or _loguru is None:
        return
    _loguru.remove()
    _loguru.add(sys.stderr, **_settings)


def setup(verbose: bool = False) -> None:
    global _settings
    if os.environ.get("JOURNAL_STREAM"):
        fmt = "{level}: {message}"
    else:
        fmt = "<green>{time:YYYY-MM-DD HH:mm:ss}</green> {level: <7} {message}"
    _settings = dict(level="DEBUG" if verbose else "INFO", format=fmt,
                     colorize=None if sys.stderr.isatty() else False, backtrace=False, diagnose=False)
    _apply()


def preload() -> None:
    """Import loguru now, while waiting on something else: the primary does
    this while the standby starts, since the cycle's result is logged anyway."""
    _load()


class _Logger:
    def __getattr__(self, name: str):
        return getattr(_load(), name)


logger = _Logger()
