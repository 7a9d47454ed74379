"""Load and validate /etc/pvezfsha/pvezfsha.toml.

Validation happens in full before any other code runs: an error names the
file, the key and what is wrong, and the command exits 2 with nothing touched.
Every key is documented in packaging/pvezfsha.toml.example.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from pvezfsha.errors import ConfigError, UsageError

DEFAULT_PATH = "/etc/pvezfsha/pvezfsha.toml"

# Send flags that lzc_send understands. "raw" is decided per dataset (see
# Options.raw) so it is not accepted here.
SEND_FLAGS = ("large_blocks", "embedded_data", "compress")

# Every pattern is applied with fullmatch: `$` would also match before a
# trailing newline, so "pve2\n" would pass.
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*")
_DURATION_UNITS = {None: 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", re.I)
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_PREFIX = re.compile(r"[A-Za-z][A-Za-z0-9-]{0,31}")
_NODE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
# Never starting with '-': ssh would read it as an option.
# A local user (root) or an address: never an option to sendmail, no spaces.
_MAIL = re.compile(r"[A-Za-z0-9._+][A-Za-z0-9._+-]*(@[A-Za-z0-9.-]+)?")
_URL = re.compile(r"https?://[^\s]+")
_ADDRESS = re.compile(r"[A-Za-z0-9.:%\[\]][A-Za-z0-9.:%\[\]-]*")

# What OpenZFS accepts as a dataset name (zfs_namecheck.c): valid_char() is
# isalnum in the C locale or one of "-_.: ", so a space is fine (names only
# ever travel in argv lists and JSON, never through a shell).
_COMPONENT = re.compile(r"[A-Za-z0-9_.: -]+")
_MAX_NAME = 255                   # ZFS_MAX_DATASET_NAME_LEN is 256 with the NUL
_MAX_POOL = 256 - 2 - 2 * len("$ORIGIN") - 1   # pool_namecheck leaves room for pool/$ORIGIN@$ORIGIN
_RESERVED_POOL_PREFIXES = ("mirror", "raidz", "draid", "spare")   # zpool_name_valid; and "log"


def parse_duration(text: str | int | float) -> float:
    """'10m' -> 600.0; a bare number is seconds."""
    if isinstance(text, bool):
        raise ValueError("expected a duration such as '30s', '10m' or '2h'")
    if isinstance(text, (int, float)):
        if text < 0:
            raise ValueError("must not be negative")
        return float(text)
    m = _DURATION.fullmatch(str(text))
    if not m:
        raise ValueError(f"{text!r} is not a duration such as '30s', '10m' or '2h'")
    return float(m.group(1)) * _DURATION_UNITS[m.group(2)]


def parse_rate(text: str | int) -> int:
    """'50M' -> bytes per second (binary units); '' or 0 means unlimited."""
    if isinstance(text, bool):
        raise ValueError("expected a rate such as '50M'")
    if isinstance(text, int):
        if text < 0:
            raise ValueError("must not be negative")
        return text
    if str(text).strip() == "":
        return 0
    m = _SIZE.fullmatch(str(text))
    if not m:
        raise ValueError(f"{text!r} is not a rate such as '50M' (bytes per second)")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])


def _dataset_problem(name) -> str | None:
    if not isinstance(name, str) or not name:
        return "empty" if name == "" else "not a string"
    if len(name) > _MAX_NAME:
        return f"longer than {_MAX_NAME} characters"
    parts = name.split("/")
    for part in parts:
        if not part:
            return "an empty component"
        if part in (".", ".."):
            return f"{part!r} is not a component"
        if not _COMPONENT.fullmatch(part):
            bad = next(c for c in part if not _COMPONENT.fullmatch(c))
            what = {"@": " (a snapshot)", "#": " (a bookmark)"}.get(bad, "")
            return f"{bad!r} is not allowed{what}"
    pool = parts[0]
    if not ("a" <= pool[0] <= "z" or "A" <= pool[0] <= "Z"):
        return "a pool name begins with a letter"
    if pool.startswith(_RESERVED_POOL_PREFIXES) or pool == "log":
        return f"{pool!r} is a reserved pool name"
    if pool[0] == "c" and len(pool) > 1 and pool[1].isdigit():
        return f"{pool!r} is not a pool name (it looks like a disk)"
    if len(pool) > _MAX_POOL:
        return f"a pool name has at most {_MAX_POOL} characters"
    return None


def check_dataset_name(name: str) -> str:
    """The name, if OpenZFS would accept it for a filesystem; else ValueError."""
    problem = _dataset_problem(name)
    if problem:
        raise ValueError(f"{name!r} is not a ZFS dataset name such as 'tank/media' ({problem})")
    return name


def check_snapshot_prefix(prefix: str) -> str:
    return _match(prefix, _PREFIX, "a name of letters, digits and '-' (max 32)")


@dataclass(frozen=True)
class Options:
    """Replication options; [defaults] with per-container overrides."""

    max_staleness: float = 1800.0
    on_stale: str = "refuse"
    keep: int = 144
    bandwidth_limit: int = 0
    snapshot_prefix: str = "pvezfsha"
    send_flags: tuple[str, ...] = SEND_FLAGS
    # Other tools' snapshots sent with ours (planner.carried): sanoid's by default.
    replicate_snapshots: tuple[str, ...] = ("autosnap_*",)
    raw: str = "auto"  # auto: raw exactly when the dataset is encrypted
    ssh_connect_timeout: float = 10.0
    stall_timeout: float = 300.0
    handover_timeout: float = 900.0
    final_push_timeout: float = 300.0
    # Continuous mode (`pvezfsha agent`): a cycle `quiet` seconds after the
    # last write, at most `max_delay` after the first one under constant
    # writes, and never less than `min_interval` after the previous cycle.
    continuous: bool = False
    quiet: float = 2.0
    max_delay: float = 5.0
    min_interval: float = 3.0


@dataclass(frozen=True)
class DatasetMap:
    """One protected dataset; `name` everywhere unless a node overrides it."""

    name: str
    per_node: dict[str, str] = field(default_factory=dict)

    def on(self, node: str) -> str:
        return self.per_node.get(node, self.name)


@dataclass(frozen=True)
class Container:
    ctid: int
    datasets: tuple[DatasetMap, ...]
    nodes: tuple[str, ...]
    options: Options


DEFAULT_METRICS = "/var/lib/prometheus/node-exporter/pvezfsha.prom"


@dataclass(frozen=True)
class Alerts:
    """[alerts]: who hears of trouble (alerts.py)."""

    mail_to: str = "root"           # "" sends no mail
    webhook: str = ""               # an http(s) URL that gets a JSON POST
    after_failures: int = 3         # consecutive failed cycles before a failure alert
    repeat: float = 86400.0         # a lasting condition is sent again after this long


@dataclass(frozen=True)
class Config:
    path: str
    interval: float
    defaults: Options
    containers: dict[int, Container]
    addresses: dict[str, str]  # node -> address override
    ssh_user: str = "root"
    ssh_port: int = 22
    alerts: Alerts = Alerts()
    metrics_file: str = DEFAULT_METRICS    # "" writes none

    def container(self, ctid: int) -> Container | None:
        return self.containers.get(ctid)

    def select(self, ctids: list[int]) -> list[Container]:
        """The named containers (all when none is named); unknown ones are a usage error."""
        unknown = [c for c in ctids if c not in self.containers]
        if unknown:
            raise UsageError(f"container {', '.join(map(str, unknown))} is not configured in {self.path}")
        return [self.containers[c] for c in (ctids or sorted(self.containers))]


_OPTION_KEYS = {
    "max_staleness": lambda v: parse_duration(v),
    "on_stale": lambda v: _choice(v, ("refuse", "warn")),
    "keep": lambda v: _int_range(v, 1, 100_000),
    "bandwidth_limit": lambda v: parse_rate(v),
    "snapshot_prefix": lambda v: _match(v, _PREFIX, "a name of letters, digits and '-' (max 32)"),
    "send_flags": lambda v: _send_flags(v),
    "replicate_snapshots": lambda v: _globs(v),
    "raw": lambda v: _choice("auto" if v == "auto" else {True: "always", False: "never"}.get(v, v),
                             ("auto", "always", "never")),
    "ssh_connect_timeout": lambda v: _positive(parse_duration(v)),
    "stall_timeout": lambda v: _positive(parse_duration(v)),
    "handover_timeout": lambda v: _positive(parse_duration(v)),
    "final_push_timeout": lambda v: _positive(parse_duration(v)),
    "continuous": lambda v: _bool(v),
    "quiet": lambda v: _positive(parse_duration(v)),
    "max_delay": lambda v: _positive(parse_duration(v)),
    "min_interval": lambda v: _positive(parse_duration(v)),
}
_DEFAULTS_KEYS = set(_OPTION_KEYS) | {"interval", "ssh_user", "ssh_port", "metrics_file"}
_CONTAINER_KEYS = set(_OPTION_KEYS) | {"ctid", "datasets", "nodes"}


def _bool(v):
    if not isinstance(v, bool):
        raise ValueError(f"{v!r} is not true or false")
    return v


def _choice(v, allowed):
    if v not in allowed:
        raise ValueError(f"{v!r} is not one of {', '.join(map(repr, allowed))}")
    return v


def _int_range(v, lo, hi):
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ValueError(f"{v!r} is not an integer between {lo} and {hi}")
    return v


def _positive(v: float) -> float:
    if v <= 0:
        raise ValueError("must be greater than zero")
    return v


def _match(v, pattern, what):
    if not isinstance(v, str) or not pattern.fullmatch(v):
        raise ValueError(f"{v!r} is not {what}")
    return v


def _send_flags(v):
    if not isinstance(v, list):
        raise ValueError("must be a list such as [\"large_blocks\", \"compress\"]")
    for flag in v:
        _choice(flag, SEND_FLAGS)
    return tuple(dict.fromkeys(v))


# A snapshot name's characters (OpenZFS zfs_namecheck.c) and glob's *?[]!.
_GLOB = re.compile(r"[A-Za-z0-9_\-:. *?\[\]!]{1,255}")


def _globs(v):
    if not isinstance(v, list) or not all(isinstance(p, str) for p in v):
        raise ValueError('must be a list of name patterns such as ["autosnap_*"]')
    if len(v) > 32:
        raise ValueError("at most 32 patterns")
    for p in v:
        if not _GLOB.fullmatch(p):
            raise ValueError(f"{p!r} is not a snapshot name pattern (the part after @; "
                             f"letters, digits, _-:. and space, with * ? [ ])")
    return tuple(dict.fromkeys(v))


def _options(table: dict, base: Options, where: str, path: str) -> Options:
    values = {}
    for key, conv in _OPTION_KEYS.items():
        if key in table:
            try:
                values[key] = conv(table[key])
            except ValueError as e:
                raise ConfigError(f"{path}: {where}.{key}: {e}") from None
    opts = Options(**{**base.__dict__, **values})
    if opts.quiet > opts.max_delay:
        raise ConfigError(f"{path}: {where}.quiet: {opts.quiet:g} s is longer than max_delay "
                          f"({opts.max_delay:g} s): writes would never be quiet for long enough to count")
    return opts


def _unknown(table: dict, allowed: set[str], where: str, path: str) -> None:
    for key in table:
        if key not in allowed:
            raise ConfigError(f"{path}: {where}.{key}: unknown key (allowed: {', '.join(sorted(allowed))})")


def _dataset(entry, where: str, path: str, nodes: tuple[str, ...]) -> DatasetMap:
    try:
        if isinstance(entry, str):
            return DatasetMap(check_dataset_name(entry))
        if isinstance(entry, dict):
            _unknown(entry, {"name", "on"}, where, path)
            if "name" not in entry:
                raise ConfigError(f"{path}: {where}.name: missing")
            per_node = entry.get("on", {})
            if not isinstance(per_node, dict):
                raise ConfigError(f"{path}: {where}.on: must be a table of node = \"dataset\"")
            for node, name in per_node.items():
                if node not in nodes:
                    raise ConfigError(f"{path}: {where}.on.{node}: not one of this container's nodes")
                try:
                    check_dataset_name(name)
                except ValueError as e:
                    raise ConfigError(f"{path}: {where}.on.{node}: {e}") from None
            return DatasetMap(check_dataset_name(entry["name"]), dict(per_node))
    except ValueError as e:
        raise ConfigError(f"{path}: {where}: {e}") from None
    raise ConfigError(f"{path}: {where}: must be a dataset name or a table {{name = ..., on = {{...}}}}")


def parse(text: str, path: str = "<config>") -> Config:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    for key in doc:
        if key not in ("defaults", "container", "nodes", "alerts"):
            raise ConfigError(f"{path}: {key}: unknown section (allowed: alerts, container, defaults, nodes)")

    d = doc.get("defaults", {})
    if not isinstance(d, dict):
        raise ConfigError(f"{path}: defaults: must be a table")
    _unknown(d, _DEFAULTS_KEYS, "defaults", path)
    defaults = _options(d, Options(), "defaults", path)
    try:
        interval = _positive(parse_duration(d.get("interval", "10m")))
    except ValueError as e:
        raise ConfigError(f"{path}: defaults.interval: {e}") from None
    ssh_user = d.get("ssh_user", "root")
    if not isinstance(ssh_user, str) or not _NODE.fullmatch(ssh_user):
        raise ConfigError(f"{path}: defaults.ssh_user: {ssh_user!r} is not a user name")
    try:
        ssh_port = _int_range(d.get("ssh_port", 22), 1, 65535)
    except ValueError as e:
        raise ConfigError(f"{path}: defaults.ssh_port: {e}") from None

    metrics_file = d.get("metrics_file", DEFAULT_METRICS)
    if not isinstance(metrics_file, str) or (metrics_file and not metrics_file.startswith("/")) or "\0" in metrics_file:
        raise ConfigError(f"{path}: defaults.metrics_file: {metrics_file!r} is not an absolute path or \"\"")
    alerts = _alerts(doc.get("alerts", {}), path)

    addresses = {}
    nodes_tab = doc.get("nodes", {})
    if not isinstance(nodes_tab, dict):
        raise ConfigError(f"{path}: nodes: must be a table of [nodes.<name>]")
    for node, tab in nodes_tab.items():
        where = f"nodes.{node}"
        if not _NODE.fullmatch(node):
            raise ConfigError(f"{path}: {where}: {node!r} is not a node name")
        if not isinstance(tab, dict):
            raise ConfigError(f"{path}: {where}: must be a table")
        _unknown(tab, {"address"}, where, path)
        if "address" in tab:
            addresses[node] = _checked(lambda: _match(tab["address"], _ADDRESS, "a host name or IP address"),
                                       f"{where}.address", path)

    containers: dict[int, Container] = {}
    entries = doc.get("container", [])
    if not isinstance(entries, list):
        raise ConfigError(f"{path}: container: use [[container]] (an array of tables)")
    for i, c in enumerate(entries):
        where = f"container[{i}]"
        _unknown(c, _CONTAINER_KEYS, where, path)
        if "ctid" not in c:
            raise ConfigError(f"{path}: {where}.ctid: missing")
        ctid = _checked(lambda: _int_range(c["ctid"], 100, 999_999_999), f"{where}.ctid", path)
        where = f"container[ctid={ctid}]"
        if ctid in containers:
            raise ConfigError(f"{path}: {where}.ctid: defined twice")
        nodes = c.get("nodes")
        if not isinstance(nodes, list) or len(nodes) < 2:
            raise ConfigError(f"{path}: {where}.nodes: must list at least two nodes")
        for n in nodes:
            if not isinstance(n, str) or not _NODE.fullmatch(n):
                raise ConfigError(f"{path}: {where}.nodes: {n!r} is not a node name")
        if len(set(nodes)) != len(nodes):
            raise ConfigError(f"{path}: {where}.nodes: a node is listed twice")
        raw_ds = c.get("datasets")
        if not isinstance(raw_ds, list) or not raw_ds:
            raise ConfigError(f"{path}: {where}.datasets: must list at least one dataset")
        datasets = tuple(_dataset(e, f"{where}.datasets[{j}]", path, tuple(nodes)) for j, e in enumerate(raw_ds))
        for node in nodes:
            names = [ds.on(node) for ds in datasets]
            if len(set(names)) != len(names):
                raise ConfigError(f"{path}: {where}.datasets: a dataset is listed twice on {node}")
        containers[ctid] = Container(ctid, datasets, tuple(nodes), _options(c, defaults, where, path))

    # The same dataset in two containers would have two primaries.
    seen: dict[tuple[str, str], int] = {}
    for ct in containers.values():
        for ds in ct.datasets:
            for node in ct.nodes:
                other = seen.setdefault((node, ds.on(node)), ct.ctid)
                if other != ct.ctid:
                    raise ConfigError(f"{path}: container[ctid={ct.ctid}].datasets: {ds.on(node)} on {node} "
                                      f"is already protected for container {other}")
    return Config(path, interval, defaults, containers, addresses, ssh_user, ssh_port, alerts, metrics_file)


def _alerts(tab, path: str) -> Alerts:
    if not isinstance(tab, dict):
        raise ConfigError(f"{path}: alerts: must be a table")
    _unknown(tab, {"mail_to", "webhook", "after_failures", "repeat"}, "alerts", path)
    mail_to = tab.get("mail_to", "root")
    if not isinstance(mail_to, str) or (mail_to and not _MAIL.fullmatch(mail_to)):
        raise ConfigError(f"{path}: alerts.mail_to: {mail_to!r} is not a user or mail address (\"\" for none)")
    webhook = tab.get("webhook", "")
    if not isinstance(webhook, str) or (webhook and not _URL.fullmatch(webhook)):
        raise ConfigError(f"{path}: alerts.webhook: {webhook!r} is not an http:// or https:// URL")
    after = _checked(lambda: _int_range(tab.get("after_failures", 3), 1, 1000), "alerts.after_failures", path)
    repeat = _checked(lambda: _positive(parse_duration(tab.get("repeat", "24h"))), "alerts.repeat", path)
    return Alerts(mail_to, webhook, after, repeat)


def _checked(fn, where: str, path: str):
    try:
        return fn()
    except ValueError as e:
        raise ConfigError(f"{path}: {where}: {e}") from None


def config_path(explicit: str | None = None) -> str:
    return explicit or os.environ.get("PVEZFSHA_CONFIG") or DEFAULT_PATH


def load(explicit: str | None = None) -> Config:
    path = config_path(explicit)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file (create it, or pass --config)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read: {e}") from None
    return parse(text, path)
