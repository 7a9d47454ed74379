"""Logging: loguru to stderr, which systemd puts in the journal.

Under systemd (JOURNAL_STREAM is set) the journal adds time and unit, so
lines carry only the level and the message.
"""

from __future__ import annotations

import os
import sys

from loguru import logger


def setup(verbose: bool = False) -> None:
    logger.remove()
    if os.environ.get("JOURNAL_STREAM"):
        fmt = "{level}: {message}"
    else:
        fmt = "<green>{time:YYYY-MM-DD HH:mm:ss}</green> {level: <7} {message}"
    logger.add(sys.stderr, level="DEBUG" if verbose else "INFO", format=fmt,
               colorize=None if sys.stderr.isatty() else False, backtrace=False, diagnose=False)
