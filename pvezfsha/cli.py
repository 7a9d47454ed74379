"""The `pvezfsha` command line: parse arguments, load the config, dispatch.

Exit codes: 0 ok, 1 failure, 2 usage or config error. Expected errors are
one line on stderr; a traceback means a bug.
"""

from __future__ import annotations

import argparse
import sys

from pvezfsha import __version__


def _ctid(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a container id") from None
    if value < 100:
        raise argparse.ArgumentTypeError(f"{text!r} is not a container id (100 or more)")
    return value


def _nodes(text: str) -> list[str]:
    nodes = [n.strip() for n in text.split(",") if n.strip()]
    if not nodes:
        raise argparse.ArgumentTypeError("expected node names such as pve1,pve2")
    return nodes


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value <= 300:
        raise argparse.ArgumentTypeError(f"{text!r}: between 0 and 300 seconds")
    return value


def _wait(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 <= value <= 86400:
        raise argparse.ArgumentTypeError(f"{text!r}: between 0 and 86400 seconds")
    return value


def _network(text: str):
    import ipaddress
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a network such as 10.0.0.0/24") from None


def _budget(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of directories") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must not be negative")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pvezfsha",
                                description="Replicate a Proxmox container's local ZFS datasets to its standby nodes.")
    p.add_argument("--version", action="version", version=f"pvezfsha {__version__}")
    p.add_argument("-c", "--config", help="config file (default $PVEZFSHA_CONFIG or /etc/pvezfsha/pvezfsha.toml)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    s = sub.add_parser("sync", help="one replication cycle: snapshot, send to standbys, prune")
    s.add_argument("ctids", nargs="*", type=_ctid, metavar="CTID", help="containers (default: all configured)")
    s.add_argument("-n", "--dry-run", action="store_true", help="print the plan, change nothing")
    s.add_argument("--if-due", action="store_true",
                   help="only containers whose last cycle is `interval` ago (what the timer runs)")
    s.add_argument("--wait", type=_wait, default=0, metavar="SECONDS",
                   help="wait this long for a dataset another run holds, and fail if it stays busy "
                        "(a final push; the timer never waits)")
    a = sub.add_parser("agent", help="continuous mode: replicate seconds after writes settle "
                                     "(what pvezfsha-agent.service runs)")
    a.add_argument("--watch-budget", type=_budget, default=None, metavar="N",
                   help="watch at most N directories in all (default: the kernel's fs.inotify.max_user_watches); "
                        "a dataset past it has its `written` property read instead")
    a.add_argument("--keep-warm", type=_wait, default=120.0, metavar="SECONDS",
                   help="keep the ssh sessions to the standbys open this long after the last cycle (120)")
    st = sub.add_parser("status", help="replication state of each protected dataset, as this node sees it")
    st.add_argument("ctids", nargs="*", type=_ctid, metavar="CTID")
    st.add_argument("--json", action="store_true",
                    help="machine-readable output (schema pvezfsha-status/1, packaging/status.schema.json)")
    st.add_argument("--check", action="store_true",
                    help="one line and a Nagios exit code: 0 ok, 1 warning, 2 critical, 3 unknown")
    ip = sub.add_parser("is-primary", help="exit 0 when this node is the primary of every named container, else 1 "
                                           "(for ExecCondition= of sanoid's units: snapshots on the primary only)")
    ip.add_argument("ctids", nargs="+", type=_ctid, metavar="CTID")
    sub.add_parser("receive", help="receiving end of a sync, run over ssh by the primary")
    sub.add_parser("notify", help="send the alerts the hook queued (the hook starts it; every cycle does it too)")
    i = sub.add_parser("init", help="protect a container: map its ZFS bind mounts, write the config, show the diff")
    i.add_argument("ctid", type=_ctid, metavar="CTID")
    i.add_argument("--nodes", type=_nodes, help="replication group, comma-separated (default: every cluster node)")
    i.add_argument("-n", "--dry-run", action="store_true", help="show the diff, write nothing")
    i.add_argument("--timeout", type=_seconds, default=10.0, help="per-node probe deadline in seconds (10)")
    d = sub.add_parser("doctor", help="check this node's setup: ok / warn / FAIL per check, with a fix")
    d.add_argument("ctids", nargs="*", type=_ctid, metavar="CTID", help="containers (default: all configured)")
    d.add_argument("--json", action="store_true", help="machine-readable output")
    d.add_argument("--trusted", action="append", type=_network, metavar="CIDR",
                   help="network trusted with no_root_squash (repeatable; default: the cluster nodes' /24s)")
    d.add_argument("--timeout", type=_seconds, default=10.0, help="per-node probe deadline in seconds (10)")
    h = sub.add_parser("hook", help="what the Proxmox hookscript runs: hook <vmid> <phase>")
    h.add_argument("vmid")
    h.add_argument("phase")
    for name, text in (("promote", "take over on this node: the pre-start decision, run by hand"),
                       ("demote", "make this node's copies inert replicas (unmounted, readonly)")):
        c = sub.add_parser(name, help=text)
        c.add_argument("ctid", type=_ctid, metavar="CTID")
        c.add_argument("--force", action="store_true",
                       help="promote: accept a stale replica or a config elsewhere; demote: even on the primary")
    d = sub.add_parser("diverged", help="list diverged data kept aside, and how to recover it")
    d.add_argument("ctids", nargs="*", type=_ctid, metavar="CTID")
    t = sub.add_parser("transfer", help="push to one node for its takeover (run over ssh by the hook)")
    t.add_argument("ctid", type=_ctid, metavar="CTID")
    t.add_argument("--to", required=True, metavar="NODE")
    t.add_argument("--final", action="store_true", help="hand over: make this node read-only, snapshot, push")
    t.add_argument("--stop", action="store_true",
                   help="stop a transfer of CTID running here (the taker gave up waiting for it)")
    return p


# The commands that go through libzfs_core on this node (doctor reports it as a check).
# status and diverged read through the zfs command (zfscli.py says why).
_ZFS_COMMANDS = {"sync", "agent", "receive", "promote", "demote", "transfer"}


def _require(args: argparse.Namespace) -> None:
    """Raise MissingModule for a dependency this command needs and cannot import.

    loguru is only looked up, not imported (the import is slow and lazy, see
    pvezfsha.log); libzfs_core is imported by pvezfsha.zfs anyway.
    """
    import importlib.util

    from pvezfsha.errors import MissingModule
    try:
        found = importlib.util.find_spec("loguru") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise MissingModule("loguru", "python3-loguru")
    if args.command in _ZFS_COMMANDS:
        from pvezfsha import zfs
        if zfs.lzc is None:
            raise MissingModule("libzfs_core", "python3-pyzfs")


def main(argv: list[str] | None = None) -> int:
    from pvezfsha.errors import MissingModule
    try:
        return _main(argv)
    except MissingModule as e:   # one line, no traceback: the logger may be what is missing
        print(f"pvezfsha: {e}", file=sys.stderr)
        return 1


def _main(argv: list[str] | None) -> int:
    args = parser().parse_args(argv)
    if not args.command:
        parser().print_usage(sys.stderr)
        print("pvezfsha: error: a command is required (sync, status, promote, demote, diverged, ...)",
              file=sys.stderr)
        return 2

    _require(args)
    from pvezfsha import config, log
    from pvezfsha.errors import PvezfshaError
    from pvezfsha.log import logger

    log.setup(args.verbose)
    try:
        if args.command == "receive":
            from pvezfsha import receive
            return receive.main(args.config)
        if args.command == "hook":
            from pvezfsha import hook
            return hook.run(lambda: config.load(args.config), args.vmid, args.phase)
        if args.command == "init":
            from pvezfsha import initcmd
            return initcmd.run(args.ctid, config_path=args.config, nodes=args.nodes, dry_run=args.dry_run,
                               timeout=args.timeout)
        if args.command == "doctor":
            from pvezfsha import doctor
            return doctor.run(args.ctids, args.config, as_json=args.json, trusted=args.trusted,
                              timeout=args.timeout)
        cfg = config.load(args.config)
        if args.command == "sync":
            from pvezfsha import sync
            return sync.run(cfg, args.ctids, dry_run=args.dry_run, if_due=args.if_due, wait=args.wait)
        if args.command == "agent":
            from pvezfsha import agent
            return agent.run(lambda: config.load(args.config), budget=args.watch_budget, keep_warm=args.keep_warm)
        if args.command == "notify":
            from pvezfsha import alerts
            return alerts.notify(cfg)
        if args.command == "status":
            from pvezfsha import status
            return status.run(cfg, args.ctids, as_json=args.json, check=args.check)
        if args.command in ("promote", "demote"):
            from pvezfsha import hook
            from pvezfsha.cluster import Cluster
            ct = cfg.select([args.ctid])[0]
            return getattr(hook, args.command)(cfg, ct, Cluster(), args.force)
        if args.command == "diverged":
            from pvezfsha import status
            return status.diverged(cfg, args.ctids)
        if args.command == "is-primary":
            from pvezfsha import status
            return status.is_primary(cfg, args.ctids)
        if args.command == "transfer":
            from pvezfsha import sync
            if args.stop:
                return sync.stop_transfer(cfg, args.ctid)
            return sync.transfer(cfg, args.ctid, args.to, args.final)
    except PvezfshaError as e:
        logger.error(str(e))
        if args.command == "status" and args.check:
            print(f"PVEZFSHA UNKNOWN - {e}")    # a monitoring system reads 2 as CRITICAL
            return 3
        return e.exit_code
    except KeyboardInterrupt:
        logger.error("interrupted")
        return 1
    return 2
