"""The places where pvezfsha runs the `zfs` and `zpool` commands, because
libzfs_core has no call for them: setting system properties
(openzfs/zfs#12675), mounting, renaming a dataset that may be mounted
(lzc_rename does not unmount), cloning with properties (lzc_clone takes
native properties only in their kernel encoding, which `zfs clone -o` does
for us), reading what a channel program cannot read in every release (a
dataset's encryption root before OpenZFS 2.3.3, openzfs/zfs#12337) or at all
(a pool's health), and loading a key.

`status` reads this node's datasets here too, in one `zfs get` for all of
them: importing libzfs_core parses pyzfs's C declarations with cffi, which
took 0.6 s on the lab's guests, more than all the rest of a status of 20
datasets. The takeover and the cycles, which pay it once for minutes of
work, read through libzfs_core.

Loading a key goes through `zfs load-key`, not `lzc_load_key`: the latter
takes the 32-byte wrapping key, and turning what `keylocation` points at
into it (a raw or hex key, or a passphrase through PBKDF2 with the dataset's
pbkdf2salt and pbkdf2iters; a file:// or https:// location) is libzfs's
work. A second implementation of it that got one detail wrong would make a
takeover fail exactly when it is needed.

Always an argv list, never a shell: dataset names never pass through one.
"""

from __future__ import annotations

import os
import re
import subprocess

from pvezfsha.errors import ZfsError

ZFS = "zfs"
ZPOOL = "zpool"


def _run(args: list[str], action: str, timeout: float = 120, program: str = ZFS) -> str:
    try:
        p = subprocess.run([program, *args], capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise ZfsError(f"{action}: the {program} command is not installed (zfsutils-linux)") from None
    except subprocess.TimeoutExpired:
        raise ZfsError(f"{action}: {program} {' '.join(args[:1])} did not finish in {timeout:.0f} s") from None
    if p.returncode != 0:
        err = " ".join(p.stderr.split())
        raise ZfsError(f"{action}: {err or program + ' exited ' + str(p.returncode)}")
    return p.stdout


def get_props(dataset: str, props: list[str], *, program: str = ZFS) -> dict[str, str]:
    """Parsable values (`zfs get -Hp`, or `zpool get -Hp` of a pool) of the
    named properties."""
    out = _run(["get", "-Hp", "-o", "property,value", ",".join(props), dataset],
               f"reading {', '.join(props)} of {dataset}", timeout=30, program=program)
    return dict(line.split("\t", 1) for line in out.splitlines() if "\t" in line)


def family_props(parents: list[str], props: list[str]) -> tuple[dict[str, dict[str, tuple[str, str]]],
                                                                 dict[str, str]]:
    """Each of `parents` and its direct children (file systems and volumes,
    never a snapshot), in one `zfs get`: ({name: {prop: (value, source)}},
    {name: error}). A parent that does not exist is simply absent; any other
    parent it cannot open is in the errors."""
    if not parents:
        return {}, {}
    try:
        p = subprocess.run([ZFS, "get", "-Hp", "-d", "1", "-t", "filesystem,volume", "-o", "name,property,value,source",
                            ",".join(props), *parents], capture_output=True, text=True, timeout=30,
                           stdin=subprocess.DEVNULL, env={**os.environ, "LC_ALL": "C"})
    except FileNotFoundError:
        raise ZfsError("reading the datasets: the zfs command is not installed (zfsutils-linux)") from None
    except subprocess.TimeoutExpired:
        raise ZfsError("reading the datasets: zfs get did not finish in 30 s") from None
    found: dict[str, dict[str, tuple[str, str]]] = {}
    wanted = set(parents)
    # One record a line ("\n" only: str.splitlines also splits on \x1c and
    # \u2028). A user property's value may hold a line break and forge a
    # line: only names we asked for or their direct children count, and the
    # first line for a name and property wins (zfs prints a dataset's lines
    # before its children's).
    for line in p.stdout.split("\n"):
        name, prop, rest = (line.split("\t", 2) + ["", ""])[:3]
        value, tab, source = rest.rpartition("\t")
        if (tab and prop in props and (name in wanted or name.rpartition("/")[0] in wanted)
                and prop not in found.get(name, {})):
            found.setdefault(name, {})[prop] = (value, source)
    errors: dict[str, str] = {}
    missing: set[str] = set()
    for line in p.stderr.split("\n"):
        m = re.fullmatch(r"cannot open '(.*)': (.*)", line.strip())
        if m and m.group(2) == "dataset does not exist":
            missing.add(m.group(1))
        elif m:
            errors[m.group(1)] = m.group(2)
        elif line.strip():
            errors.update((parent, line.strip()) for parent in parents if parent not in found and parent not in missing)
    if p.returncode != 0:
        # Killed, or failed without a word: what it did not list is unknown, not missing.
        errors.update((parent, f"zfs get exited {p.returncode}") for parent in parents
                      if parent not in found and parent not in missing and parent not in errors)
    return found, errors


def pool_props(pool: str, props: list[str]) -> dict[str, str]:
    return get_props(pool, props, program=ZPOOL)


KEY_PROPS = ["encryption", "encryptionroot", "keystatus", "keylocation"]


def key_facts(dataset: str, extra: list[str] = ()) -> dict[str, str]:
    """`KEY_PROPS` (and `extra`) of a dataset; keylocation is its encryption
    root's, since a child of the root reads "none"."""
    props = get_props(dataset, [*KEY_PROPS, *extra])
    root = props.get("encryptionroot", "-")
    if props.get("encryption", "off") != "off" and root not in ("-", "", dataset):
        props["keylocation"] = get_props(root, ["keylocation"]).get("keylocation", "prompt")
    return props


def load_key(root: str, *, noop: bool = False) -> None:
    """Load the wrapping key of encryption root `root` from its keylocation;
    with noop, only check that it would load (`-n`)."""
    # Never a prompt: stdin is /dev/null, so keylocation=prompt fails at once.
    _run(["load-key", *(["-n"] if noop else []), root],
         f"{'checking' if noop else 'loading'} the encryption key of {root}", timeout=60)


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
