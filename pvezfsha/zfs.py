"""Local ZFS through libzfs_core (pyzfs): the only module that imports it.

pyzfs can change things but cannot list or read properties
(lzc_get_props/lzc_list_* raise NotImplementedError in every release, see
../shared/research/pyzfs.md), so reading is done with one read-only channel
program per dataset (`lzc_channel_program_nosync`): snapshots with guid and
createtxg, holds, the resume token and a few properties, as one consistent
view, without parsing `zfs list` text. What libzfs_core cannot do at all
(system properties, mounting) lives in zfscli.py.

Whether a dataset is encrypted is read as `keyformat` != none: before
OpenZFS 2.3.3 a channel program reads `encryption` as "off" and
`encryptionroot` as nil on every dataset (openzfs/zfs#12337, fixed by
openzfs/zfs#17280), which would send an encrypted dataset decrypted on PVE 8
(OpenZFS 2.2). `keyformat` and `keystatus` come from the dataset's crypto
stats in every release. The encryption root and its keylocation are read
with `zfs get` (zfscli.key_facts), only where a key matters.

pyzfs quirks handled here, so no other module sees them:
* names are bytes, send flags are str;
* channel-program numbers are int64, so guids above 2**63 come back negative;
* lzc_get_bookmarks returns {prop: {'value': n}} on some versions, {prop: n}
  on others;
* `params=[]` raises IndexError, so a program always gets an argument.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass, field

from pvezfsha.errors import ZfsError
from pvezfsha.versions import DatasetState, ResumeToken, Version

try:  # absent on a machine without ZFS; the error says so on first use
    import libzfs_core as lzc
    from libzfs_core import exceptions as lzc_exc
except (ImportError, OSError):  # pragma: no cover - depends on the host (OSError: cffi cannot load the .so)
    lzc = None
    lzc_exc = None

MISSING = "missing Python module libzfs_core: install the Debian package python3-pyzfs"

_U64 = (1 << 64) - 1

_STATE_PROGRAM = b"""
args = ...
local ds = args["argv"][1]
if not zfs.exists(ds) then return {exists = false} end
local snaps = {}
for s in zfs.list.snapshots(ds) do
  local e = {guid = zfs.get_prop(s, "guid"), createtxg = zfs.get_prop(s, "createtxg"),
             creation = zfs.get_prop(s, "creation")}
  if zfs.get_prop(s, "userrefs") > 0 then
    local h = {}
    for tag in zfs.list.holds(s) do h[tag] = true end
    e.holds = h
  end
  local n = 0
  for c in zfs.list.clones(s) do n = n + 1 end
  if n > 0 then e.clones = n end
  snaps[s] = e
end
local bms = {}
for b in zfs.list.bookmarks(ds) do bms[b] = true end
local props = {}
for name, value in zfs.list.user_properties(ds) do
  if string.sub(name, 1, 9) == "pvezfsha:" then props[name] = value end
end
local token = zfs.get_prop(ds, "receive_resume_token")
return {exists = true, snaps = snaps, bookmarks = bms, token = token,
        written = zfs.get_prop(ds, "written"), referenced = zfs.get_prop(ds, "referenced"),
        readonly = zfs.get_prop(ds, "readonly"), canmount = zfs.get_prop(ds, "canmount"),
        keyformat = zfs.get_prop(ds, "keyformat"), origin = zfs.get_prop(ds, "origin"), props = props}
"""


def _need_lzc():
    if lzc is None:
        raise ZfsError(MISSING)


def _b(s: str) -> bytes:
    return s.encode()


def _s(b) -> str:
    return b.decode() if isinstance(b, bytes) else str(b)


def _pool(name: str) -> str:
    return name.split("/", 1)[0].split("@", 1)[0].split("#", 1)[0]


def wrap(action: str, exc: Exception) -> ZfsError:
    """A pyzfs exception as a one-line ZfsError that keeps its class and errno."""
    kind = type(exc).__name__
    errno = getattr(exc, "errno", 0) or 0
    if isinstance(exc, getattr(lzc_exc, "MultipleOperationsFailure", ())) and getattr(exc, "errors", None):
        inner = exc.errors[0]
        kind, errno = type(inner).__name__, getattr(inner, "errno", 0) or 0
        msg = f"{action}: {kind} ({getattr(inner, 'name', '') and _s(inner.name)}) {os.strerror(errno) if errno else ''}"
    else:
        detail = getattr(exc, "message", None) or str(exc)
        msg = f"{action}: {kind}: {detail}"
    return ZfsError(msg.strip(), kind=kind, errno=errno)


def _call(action: str, fn, *args, **kw):
    _need_lzc()
    try:
        return fn(*args, **kw)
    except Exception as e:  # pyzfs raises ZFSError subclasses and OSError
        if lzc_exc is not None and isinstance(e, (lzc_exc.ZFSError, OSError)):
            raise wrap(action, e) from e
        raise


def _flag(value) -> bool:
    return _s(value) in ("on", "1", "yes") if not isinstance(value, int) else bool(value)


def mountpoint(dataset: str) -> str | None:
    """Where the dataset is mounted now, from /proc/self/mounts (ZCP cannot
    read `mounted`)."""
    try:
        with open("/proc/self/mounts", encoding="utf-8") as f:
            for line in f:
                parts = line.split(" ")
                if len(parts) > 2 and parts[2] == "zfs" and parts[0].replace("\\040", " ") == dataset:
                    return parts[1].replace("\\040", " ")
    except OSError:
        pass
    return None


def read_state(dataset: str) -> DatasetState:
    """One consistent view of a dataset: a single nosync channel program."""
    _need_lzc()
    try:
        res = lzc.lzc_channel_program_nosync(_b(_pool(dataset)), _STATE_PROGRAM,
                                             instrlimit=50_000_000, memlimit=100 << 20,
                                             params=[_b(dataset)])
    except Exception as e:
        if lzc_exc is not None and isinstance(e, lzc_exc.PoolNotFound):
            return DatasetState(dataset, exists=False)
        if lzc_exc is not None and isinstance(e, (lzc_exc.ZFSError, OSError)):
            raise wrap(f"reading {dataset}", e) from e
        raise
    if not res.get(b"exists"):
        return DatasetState(dataset, exists=False)

    snaps = []
    for full, e in (res.get(b"snaps") or {}).items():
        holds = tuple(sorted(_s(t) for t in (e.get(b"holds") or {})))
        snaps.append(Version(_s(full).split("@", 1)[1], e[b"guid"] & _U64, e[b"createtxg"],
                             e[b"creation"], holds=holds, clones=int(e.get(b"clones") or 0)))
    snaps.sort(key=lambda v: v.createtxg)

    bookmarks = []
    if res.get(b"bookmarks"):
        bookmarks = list_bookmarks(dataset)

    token = res.get(b"token")
    resume = decode_token(_s(token)) if token and _s(token) not in ("-", "") else None
    return DatasetState(
        dataset=dataset, exists=True, snapshots=tuple(snaps), bookmarks=tuple(bookmarks),
        resume=resume, written=int(res.get(b"written") or 0), referenced=int(res.get(b"referenced") or 0),
        readonly=_flag(res.get(b"readonly")), canmount=_s(res.get(b"canmount") or "on"),
        mounted=mountpoint(dataset) is not None, encrypted=_s(res.get(b"keyformat") or "none") != "none",
        origin=_s(res.get(b"origin") or ""),
        props={_s(k): _s(v) for k, v in (res.get(b"props") or {}).items()},
    )


_QUICK_PROGRAM = b"""
args = ...
local ds = args["argv"][1]
if not zfs.exists(ds) then return {exists = false} end
local out = {exists = true, written = zfs.get_prop(ds, "written"),
             changed = zfs.get_prop(ds, "snapshots_changed"),
             readonly = zfs.get_prop(ds, "readonly"), canmount = zfs.get_prop(ds, "canmount"),
             token = zfs.get_prop(ds, "receive_resume_token"), guids = {}, props = {}}
for name, value in zfs.list.user_properties(ds) do
  if string.sub(name, 1, 9) == "pvezfsha:" then out.props[name] = value end
end
for i = 2, #args["argv"] do
  local snap = ds .. "@" .. args["argv"][i]
  if zfs.exists(snap) then out.guids[args["argv"][i]] = zfs.get_prop(snap, "guid") end
end
return out
"""


@dataclass(frozen=True)
class Quick:
    """A dataset's few properties and the guids of named snapshots: constant
    cost, however many snapshots it has."""

    exists: bool
    written: int = 0
    snapshots_changed: int | None = None    # OpenZFS >= 2.2; None where unknown
    readonly: bool = False
    canmount: str = "on"
    resumable: bool = False
    guids: dict[str, int] = field(default_factory=dict)
    props: dict[str, str] = field(default_factory=dict)     # pvezfsha's own user properties
    mounted: bool = False


def quick_state(dataset: str, snapshots: list[str] = ()) -> Quick:
    _need_lzc()
    try:
        res = lzc.lzc_channel_program_nosync(_b(_pool(dataset)), _QUICK_PROGRAM,
                                             params=[_b(dataset), *(_b(n) for n in snapshots)])
    except Exception as e:
        if lzc_exc is not None and isinstance(e, lzc_exc.PoolNotFound):
            return Quick(False)
        if lzc_exc is not None and isinstance(e, (lzc_exc.ZFSError, OSError)):
            raise wrap(f"reading {dataset}", e) from e
        raise
    if not res.get(b"exists"):
        return Quick(False)
    token = res.get(b"token")
    changed = res.get(b"changed")
    return Quick(True, int(res.get(b"written") or 0), int(changed) if changed else None,
                 _flag(res.get(b"readonly")), _s(res.get(b"canmount") or "on"),
                 bool(token) and _s(token) not in ("-", ""),
                 {_s(k): v & _U64 for k, v in (res.get(b"guids") or {}).items()},
                 {_s(k): _s(v) for k, v in (res.get(b"props") or {}).items()},
                 mountpoint(dataset) is not None)


_LOCAL_PROPS_PROGRAM = b"""
args = ...
local ds = args["argv"][1]
local wanted = {}
for i = 2, #args["argv"] do wanted[args["argv"][i]] = true end
local out = {}
if not zfs.exists(ds) then return out end
-- Only properties this pool's ZFS knows (a channel program has no pcall,
-- and get_prop on an unknown name ends the program).
for _, prop in ipairs(zfs.list.system_properties(ds)) do
  if wanted[prop] then
    local value, source = zfs.get_prop(ds, prop)
    if source == ds then out[prop] = value end
  end
end
for name, value, source in zfs.list.user_properties(ds) do
  if source == ds then out[name] = value end
end
return out
"""

# Settable filesystem properties a copy of a dataset carries over when set
# locally (`zfs get -s local`); read-only statistics are not among them.
SETTABLE = ("atime", "relatime", "exec", "setuid", "devices", "xattr", "acltype", "aclinherit", "aclmode",
            "compression", "checksum", "copies", "dedup", "dnodesize", "logbias", "primarycache",
            "secondarycache", "recordsize", "redundant_metadata", "snapdir", "sync", "special_small_blocks",
            "mountpoint", "sharenfs", "sharesmb", "quota", "refquota", "reservation", "refreservation",
            "zoned", "overlay", "vscan", "nbmand", "snapdev", "filesystem_limit", "snapshot_limit", "context",
            "fscontext", "defcontext", "rootcontext", "prefetch", "direct", "canmount", "readonly")


def local_props(dataset: str) -> dict[str, str]:
    """Properties set on `dataset` itself (source local), system and user,
    as `zfs set` takes them: what a copy of the dataset must carry over."""
    res = _call(f"reading the properties of {dataset}", lzc.lzc_channel_program_nosync, _b(_pool(dataset)),
                _LOCAL_PROPS_PROGRAM, params=[_b(dataset), *(_b(p) for p in SETTABLE)])
    return {_s(k): _s(v) for k, v in (res or {}).items()}


def children(dataset: str) -> list[str]:
    """Direct child datasets (never the hidden %recv of a partial receive)."""
    res = _call(f"listing children of {dataset}", lzc.lzc_channel_program_nosync, _b(_pool(dataset)),
                _CHILDREN_PROGRAM, params=[_b(dataset), b"name"])
    return sorted(_s(k) for k in (res or {}) if "%" not in _s(k))


_CHILDREN_PROGRAM = b"""
args = ...
local parent = args["argv"][1]
local prop = args["argv"][2]
local out = {}
if not zfs.exists(parent) then return out end
for child in zfs.list.children(parent) do
  local value = zfs.get_prop(child, prop)
  if value ~= nil then out[child] = value end
end
return out
"""


def list_bookmarks(dataset: str) -> list[Version]:
    raw = _call(f"listing bookmarks of {dataset}", lzc.lzc_get_bookmarks, _b(dataset),
                [b"guid", b"createtxg", b"creation"])

    def val(d, k):
        v = d.get(k)
        return v.get(b"value") if isinstance(v, dict) else v

    out = [Version(_s(name).split("#", 1)[-1], val(p, b"guid") & _U64, val(p, b"createtxg"),
                   val(p, b"creation"), bookmark=True) for name, p in raw.items()]
    return sorted(out, key=lambda v: v.createtxg)


def decode_token(token: str) -> ResumeToken | None:
    """receive_resume_token -> ResumeToken, as libzfs's zfs_send_resume_token_to_nvlist."""
    try:
        ver, cksum, plen, hexpl = token.split("-", 3)
        if ver != "1":
            return None
        comp = bytes.fromhex(hexpl)
        words = len(comp) // 4
        if sum(struct.unpack_from(f"={words}I", comp)) & _U64 != int(cksum, 16):
            return None
        packed = zlib.decompress(comp)
        if len(packed) != int(plen, 16):
            return None
        from libzfs_core._nvlist import packed_nvlist_out  # private, as in upstream's tests
        nv = packed_nvlist_out(packed, len(packed))
    except Exception:
        return None
    flags = tuple(f for k, f in ((b"largeblockok", "large_blocks"), (b"embedok", "embedded_data"),
                                 (b"compressok", "compress"), (b"rawok", "raw")) if k in nv)
    from_guid = nv.get(b"fromguid")
    return ResumeToken(token=token, toguid=nv[b"toguid"] & _U64,
                       fromguid=(from_guid & _U64) if from_guid else None,
                       toname=_s(nv.get(b"toname", b"")), obj=nv.get(b"object", 0),
                       offset=nv.get(b"offset", 0), bytes=nv.get(b"bytes", 0), flags=flags)


def sync_pool(pool: str) -> None:
    """Wait for dirty data to reach disk: `written` only counts synced txgs,
    so without this a write made seconds ago looks like no change at all."""
    _call(f"sync pool {pool}", lzc.lzc_sync, _b(pool))


def snapshot(names: list[str], props: dict[str, str] | None = None) -> None:
    """Atomic across datasets of one pool: one txg, all or nothing."""
    p = {_b(k): _b(v) for k, v in (props or {}).items()} or None
    _call(f"snapshot {', '.join(names)}", lzc.lzc_snapshot, [_b(n) for n in names], p)


def send(snap: str, from_: str | None, fd: int, flags: tuple[str, ...]) -> None:
    _call(f"send {snap}", lzc.lzc_send, _b(snap), _b(from_) if from_ else None, fd, list(flags))


def send_space(snap: str, from_: str | None, flags: tuple[str, ...]) -> int | None:
    """lzc_send_space's estimate of the stream's size, None when it has none
    (progress is a courtesy: an estimate that fails must not fail the send)."""
    _need_lzc()
    try:
        return int(lzc.lzc_send_space(_b(snap), _b(from_) if from_ else None, list(flags)))
    except Exception:
        return None


def send_resume(snap: str, from_: str | None, fd: int, token: ResumeToken) -> None:
    _call(f"resume send {snap}", lzc.lzc_send_resume, _b(snap), _b(from_) if from_ else None, fd,
          list(token.flags), resumeobj=token.obj, resumeoff=token.offset)


def receive(snap: str, fd: int, *, force: bool = False, raw: bool = False) -> None:
    """Always resumable: a cut stream leaves a token instead of nothing."""
    _call(f"receive {snap}", lzc.lzc_receive_resumable, _b(snap), fd, force=force, raw=raw)


def abort_receive(dataset: str) -> None:
    """`zfs receive -A`: drop the partial state of an interrupted receive."""
    _need_lzc()
    partial = _b(dataset + "/%recv")
    if lzc.lzc_exists(partial):
        _call(f"abort partial receive of {dataset}", lzc.lzc_destroy, partial)
    else:
        # A partial *full* receive is the inconsistent dataset itself.
        _call(f"abort partial receive of {dataset}", lzc.lzc_destroy, _b(dataset))


def bookmark(bookmarks: dict[str, str]) -> None:
    _call("bookmark", lzc.lzc_bookmark, {_b(k): _b(v) for k, v in bookmarks.items()})


def destroy_bookmarks(names: list[str]) -> None:
    if names:
        _call("destroy bookmarks", lzc.lzc_destroy_bookmarks, [_b(n) for n in names])


def hold(holds: dict[str, str], cleanup_fd: int | None = None) -> None:
    if holds:
        _call("hold", lzc.lzc_hold, {_b(k): _b(v) for k, v in holds.items()}, cleanup_fd)


def release(holds: dict[str, list[str]]) -> None:
    if holds:
        _call("release", lzc.lzc_release, {_b(k): [_b(t) for t in v] for k, v in holds.items()})


_SNAPSHOT_PROPS_PROGRAM = b"""
args = ...
local ds = args["argv"][1]
local n = tonumber(args["argv"][2])
local out = {}
for i = 3 + n, #args["argv"] do
  local short = args["argv"][i]
  local snap = ds .. "@" .. short
  if zfs.exists(snap) then
    local e = {}
    for k = 3, 2 + n do
      local prop = args["argv"][k]
      local value, source = zfs.get_prop(snap, prop)
      -- A user property is the snapshot's own only where it is set on it:
      -- one set on its dataset reads here too, with the dataset as source.
      if value ~= nil and (not string.find(prop, ":", 1, true) or source == snap) then e[prop] = value end
    end
    out[short] = e
  end
end
return out
"""


def snapshot_props(dataset: str, names: list[str], props: list[str]) -> dict[str, dict[str, object]]:
    """Some properties of some snapshots of `dataset`, in one channel
    program: {short name: {prop: value}}; a missing snapshot is left out,
    a user property not set on the snapshot itself too (not an inherited one). Numbers stay numbers (`written`: what was
    written between the snapshot before it and it)."""
    if not names:
        return {}
    res = _call(f"reading snapshots of {dataset}", lzc.lzc_channel_program_nosync, _b(_pool(dataset)),
                _SNAPSHOT_PROPS_PROGRAM, params=[_b(dataset), _b(str(len(props))), *(_b(p) for p in props),
                                                 *(_b(n) for n in names)])
    return {_s(k): {_s(p): (v & _U64 if p in (b"guid", "guid") else v if isinstance(v, int) else _s(v))
                    for p, v in (e or {}).items()}
            for k, e in (res or {}).items()}


def destroy_snapshots(names: list[str]) -> None:
    """One call, one txg, however many snapshots."""
    if names:
        _call("destroy snapshots", lzc.lzc_destroy_snaps, [_b(n) for n in names], False)


def rollback_to(dataset: str, snap: str) -> None:
    _call(f"rollback {dataset} to {snap}", lzc.lzc_rollback_to, _b(dataset), _b(snap))


def clone(name: str, origin: str) -> None:
    _call(f"clone {origin} to {name}", lzc.lzc_clone, _b(name), _b(origin))


def promote(name: str) -> None:
    _call(f"promote {name}", lzc.lzc_promote, _b(name))


def destroy(name: str) -> None:
    """One dataset without children or snapshots (lzc_destroy)."""
    _call(f"destroy {name}", lzc.lzc_destroy, _b(name))


def exists(name: str) -> bool:
    _need_lzc()
    return bool(lzc.lzc_exists(_b(name)))


def set_user_props(dataset: str, props: dict[str, str]) -> None:
    """User properties through a sync channel program (no lzc setter exists)."""
    prog = b"""
args = ...
local ds = args["argv"][1]
for i = 2, #args["argv"], 2 do
  assert(zfs.sync.set_prop(ds, args["argv"][i], args["argv"][i + 1]) == 0)
end
return true
"""
    flat = [_b(dataset)]
    for k, v in props.items():
        flat += [_b(k), _b(v)]
    _call(f"set properties on {dataset}", lzc.lzc_channel_program, _b(_pool(dataset)), prog, params=flat)


_WRITTEN_PROGRAM = b"""
args = ...
local out = {}
for i = 1, #args["argv"] do
  local ds = args["argv"][i]
  if zfs.exists(ds) then out[ds] = zfs.get_prop(ds, "written") end
end
return out
"""


def written_many(datasets: list[str]) -> dict[str, int]:
    """The `written` property of many datasets: one read-only channel program
    per pool, so polling a node's datasets costs one ioctl per pool, not one
    per dataset. A dataset (or pool) that does not exist is left out."""
    by_pool: dict[str, list[str]] = {}
    for ds in dict.fromkeys(datasets):
        by_pool.setdefault(_pool(ds), []).append(ds)
    out: dict[str, int] = {}
    for pool, names in by_pool.items():
        out.update(_written_in(pool, names))
    return out


def _written_in(pool: str, datasets: list[str]) -> dict[str, int]:
    _need_lzc()
    try:
        res = lzc.lzc_channel_program_nosync(_b(pool), _WRITTEN_PROGRAM, params=[_b(ds) for ds in datasets])
    except Exception as e:
        if lzc_exc is not None and isinstance(e, lzc_exc.PoolNotFound):
            return {}
        if lzc_exc is not None and isinstance(e, (lzc_exc.ZFSError, OSError)):
            raise wrap(f"reading written of {', '.join(datasets)}", e) from e
        raise
    return {_s(k): int(v or 0) for k, v in (res or {}).items()}
