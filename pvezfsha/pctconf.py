"""Read a Proxmox container config (`/etc/pve/nodes/<node>/lxc/<ctid>.conf`).

`pvezfsha init` and `pvezfsha doctor` need the container's mount points
(`mpN:`), its rootfs and its hookscript. They read the file that pmxcfs
keeps on every node instead of asking the API: it is readable without
quorum and without Perl start-up.

The mount-point grammar follows pve-container's `$mp_desc` (PVE 8 and 9):

    mpN: [volume=]<volume>,mp=<path>[,acl=<bool>][,backup=<bool>]
         [,keepattrs=<bool>][,idmap=<map>][,mountoptions=<opt[;opt...]>]
         [,quota=<bool>][,replicate=<bool>][,ro=<bool>][,shared=<bool>]
         [,size=<DiskSize>]

A volume that starts with `/dev/` is a device mount, another absolute path
a bind mount (the kind pvezfsha protects), anything else a storage volume
(`local-zfs:subvol-103-disk-1`). Booleans take 1/0, on/off, yes/no,
true/false as PVE's check_type does. Keys PVE may add later are kept in
`MountPoint.unknown` rather than rejected, so a newer PVE does not break
`init`; the callers report them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from pvezfsha.errors import PvezfshaError

HOOK_VOLID = "local:snippets/pvezfsha-hook"

# pve-container's $valid_mount_option_re (discard and lazytime since PVE 7).
MOUNT_OPTIONS = ("discard", "lazytime", "noatime", "nodev", "noexec", "nosuid")
_BOOL_KEYS = ("acl", "backup", "keepattrs", "quota", "replicate", "ro", "shared")
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)([KMGT])?\Z")
_SIZE_UNITS = {None: 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_MP_KEY = re.compile(r"^mp(\d+)\Z")
_LINE = re.compile(r"^([a-z][a-z_]*\d*):\s*(.+?)\s*$")
_SECTION = re.compile(r"^\[([a-z][a-z0-9_\-]+|pve:pending)\]\s*$", re.I)


class PctConfError(PvezfshaError):
    """A container config that cannot be read or parsed."""


def parse_bool(text: str) -> bool:
    if text == "1" or text.lower() in ("on", "yes", "true"):
        return True
    if text == "0" or text.lower() in ("off", "no", "false"):
        return False
    raise ValueError(f"{text!r} is not a boolean (1/0, on/off, yes/no, true/false)")


def parse_size(text: str) -> int:
    """PVE's disk-size: a number with an optional K/M/G/T suffix (binary); bare means bytes."""
    m = _SIZE.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a size such as '8G'")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])


def _check_path(path: str, what: str) -> str:
    # pve-container's verify_lxc_mp_string: no /./, /../, trailing /. or /..,
    # or leading ../ (PVE refuses to write such a config).
    if re.search(r"/\.\.?/", path) or re.search(r"/\.\.?$", path) or path.startswith("../"):
        raise ValueError(f"{what} {path!r} contains illegal character sequences")
    return path


@dataclass(frozen=True)
class MountPoint:
    key: str                      # "mp0" ... or "rootfs"
    volume: str                   # host path, /dev/... or storage:volume
    mp: str                       # path inside the container
    acl: bool | None = None
    backup: bool | None = None
    keepattrs: bool | None = None
    idmap: str | None = None
    mountoptions: tuple[str, ...] = ()
    quota: bool | None = None
    replicate: bool = True        # PVE's default
    ro: bool = False
    shared: bool = False          # PVE's default
    size: int | None = None       # bytes
    unknown: dict[str, str] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        """PVE's classify_mountpoint: 'device', 'bind' or 'volume'."""
        if self.volume.startswith("/"):
            return "device" if self.volume.startswith("/dev/") else "bind"
        return "volume"

    @property
    def storage(self) -> str | None:
        """Storage id of a volume mount point (`local-zfs` of `local-zfs:subvol-...`)."""
        return self.volume.split(":", 1)[0] if self.kind == "volume" and ":" in self.volume else None


def parse_mountpoint(key: str, value: str) -> MountPoint:
    """Parse one `mpN` or `rootfs` value; ValueError names what is wrong."""
    fields: dict[str, str] = {}
    for part in value.split(","):
        if "=" in part:
            k, v = part.split("=", 1)
            if not k or not v:
                raise ValueError(f"{part!r} is not key=value")
        elif "volume" not in fields:
            k, v = "volume", part   # the default key, given without 'volume='
        else:
            raise ValueError(f"{part!r} has no key, and the volume is already given")
        if not v:
            raise ValueError(f"empty value for {k}")
        if k in fields:
            raise ValueError(f"{k} is given twice")
        fields[k] = v
    if "volume" not in fields:
        raise ValueError("no volume")
    volume = _check_path(fields.pop("volume"), "volume")
    if key == "rootfs":
        mp = "/"
        fields.pop("mp", None)
    else:
        if "mp" not in fields:
            raise ValueError("no mp=<path inside the container>")
        mp = _check_path(fields.pop("mp"), "mp")
        if not mp.startswith("/"):
            raise ValueError(f"mp {mp!r} is not an absolute path")
    kw: dict = {}
    for k in _BOOL_KEYS:
        if k in fields:
            try:
                kw[k] = parse_bool(fields.pop(k))
            except ValueError as e:
                raise ValueError(f"{k}: {e}") from None
    if "mountoptions" in fields:
        opts = tuple(fields.pop("mountoptions").split(";"))
        bad = [o for o in opts if o not in MOUNT_OPTIONS]
        if bad:
            raise ValueError(f"mountoptions: {', '.join(bad)} not one of {', '.join(MOUNT_OPTIONS)}")
        kw["mountoptions"] = opts
    if "size" in fields:
        try:
            kw["size"] = parse_size(fields.pop("size"))
        except ValueError as e:
            raise ValueError(f"size: {e}") from None
    if "idmap" in fields:
        kw["idmap"] = fields.pop("idmap")
    return MountPoint(key, volume, mp, unknown=fields, **kw)


@dataclass
class CtConfig:
    """The current section of a container config (not snapshots, not pending)."""

    ctid: int
    node: str                     # the node whose directory holds it: PVE's owner
    path: Path
    options: dict[str, str]
    mountpoints: dict[str, MountPoint]
    rootfs: MountPoint | None

    @property
    def hookscript(self) -> str | None:
        return self.options.get("hookscript")

    def bind_mounts(self) -> list[MountPoint]:
        return [m for m in self.mountpoints.values() if m.kind == "bind"]


def parse(text: str, ctid: int, node: str, path: Path | str = "<config>") -> CtConfig:
    options: dict[str, str] = {}
    mountpoints: dict[str, MountPoint] = {}
    rootfs = None
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue     # blank, or the description PVE stores as comments
        if _SECTION.match(line):
            break        # snapshots and pending changes follow the current config
        if line.startswith("lxc."):
            continue     # raw LXC keys: nothing pvezfsha reads
        m = _LINE.match(line)
        if not m:
            raise PctConfError(f"{path}:{n}: cannot parse {line!r}")
        key, value = m.groups()
        options[key] = value
        if key == "rootfs" or _MP_KEY.match(key):
            try:
                point = parse_mountpoint(key, value)
            except ValueError as e:
                raise PctConfError(f"{path}:{n}: {key}: {e}") from None
            if key == "rootfs":
                rootfs = point
            else:
                mountpoints[key] = point
    order = sorted(mountpoints, key=lambda k: int(k[2:]))
    return CtConfig(ctid, node, Path(path), options, {k: mountpoints[k] for k in order}, rootfs)


def with_shared(value: str) -> str:
    """An mpN value with shared=1 (replacing any shared=...), for `pct set`."""
    parts = [p for p in value.split(",") if not p.startswith("shared=")]
    return ",".join(parts + ["shared=1"])


def pve_root(root: str | os.PathLike | None = None) -> Path:
    return Path(root or os.environ.get("PVEZFSHA_PVE_ROOT") or "/etc/pve")


def find(ctid: int, root: str | os.PathLike | None = None) -> Path:
    """The config file of ctid in whichever node directory holds it."""
    base = pve_root(root)
    hits = sorted(base.glob(f"nodes/*/lxc/{ctid}.conf"))
    if not hits:
        raise PctConfError(f"container {ctid}: no {base}/nodes/*/lxc/{ctid}.conf (is it a container on this cluster?)")
    if len(hits) > 1:
        # pmxcfs never allows this; a copied file in a test tree or a broken cluster might.
        raise PctConfError(f"container {ctid}: config found under several nodes: {', '.join(map(str, hits))}")
    return hits[0]


def load(ctid: int, root: str | os.PathLike | None = None) -> CtConfig:
    path = find(ctid, root)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise PctConfError(f"{path}: cannot read: {e}") from None
    return parse(text, ctid, path.parent.parent.name, path)
