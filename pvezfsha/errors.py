"""Exceptions every layer may raise, and the exit codes they map to.

An expected failure is one of these and is reported as one line, never as a
traceback. Exit codes: 0 ok, 1 failure, 2 usage or config error.
"""


class PvezfshaError(Exception):
    """An expected failure: reported as one line, exit code 1."""

    exit_code = 1


class ConfigError(PvezfshaError):
    """The configuration is invalid: nothing was touched, exit code 2."""

    exit_code = 2


class UsageError(PvezfshaError):
    exit_code = 2


class ZfsError(PvezfshaError):
    """A ZFS operation failed; `kind` is the pyzfs exception class name."""

    def __init__(self, message: str, kind: str = "", errno: int = 0):
        super().__init__(message)
        self.kind = kind
        self.errno = errno


class TransportError(PvezfshaError):
    """The peer could not be reached or the session broke."""


class MissingModule(Exception):
    """A Python module pvezfsha needs is not installed (a source checkout on
    a machine without the package's dependencies). Not a PvezfshaError: it is
    printed as one plain line, since the logger may be the missing module."""

    def __init__(self, module: str, package: str):
        super().__init__(f"missing Python module {module}: install the Debian package {package}")
        self.module = module
        self.package = package
