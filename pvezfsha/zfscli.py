"""The places where pvezfsha runs the `zfs` command, because libzfs_core has
no call for them: setting system properties (openzfs/zfs#12675), mounting,
renaming a dataset that may be mounted (lzc_rename does not unmount), and
cloning with properties (lzc_clone takes native properties only in their
kernel encoding, which `zfs clone -o` does for us).

Always an argv list, never a shell: dataset names never pass through one.
"""

from __future__ import annotations

import subprocess

from pvezfsha.errors import ZfsError

ZFS = "zfs"


def _run(args: list[str], action: str, timeout: float = 120) -> str:
    try:
        p = subprocess.run([ZFS, *args], capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise ZfsError(f"{action}: the zfs command is not installed (zfsutils-linux)") from None
    except subprocess.TimeoutExpired:
        raise ZfsError(f"{action}: zfs {' '.join(args[:1])} did not finish in {timeout:.0f} s") from None
    if p.returncode != 0:
        raise ZfsError(f"{action}: {p.stderr.strip() or 'zfs exited ' + str(p.returncode)}")
    return p.stdout


def set_props(dataset: str, props: dict[str, str]) -> None:
    """System properties such as readonly and canmount, in one command."""
    if props:
        _run(["set", *(f"{k}={v}" for k, v in props.items()), dataset], f"setting {props} on {dataset}")


def rename(source: str, target: str) -> None:
    # -u: keep it where it is mounted (or not); a standby stays unmounted.
    _run(["rename", "-u", source, target], f"renaming {source} to {target}")


def clone(origin: str, target: str, props: dict[str, str]) -> None:
    """A clone created with `props` from the start: with canmount=noauto
    among them it is never mounted, so it stays an exact copy of `origin`."""
    opts = [a for k, v in props.items() for a in ("-o", f"{k}={v}")]
    _run(["clone", *opts, origin, target], f"cloning {origin} to {target}")


def mount(dataset: str) -> None:
    _run(["mount", dataset], f"mounting {dataset}")


def unmount(dataset: str) -> None:
    _run(["unmount", dataset], f"unmounting {dataset}")
