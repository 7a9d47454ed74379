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
    st = sub.add_parser("status", help="replication state of each protected dataset, as this node sees it")
    st.add_argument("ctids", nargs="*", type=_ctid, metavar="CTID")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    sub.add_parser("receive", help="receiving end of a sync, run over ssh by the primary")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if not args.command:
        parser().print_usage(sys.stderr)
        print("pvezfsha: error: a command is required (sync, status, receive)", file=sys.stderr)
        return 2

    from loguru import logger

    from pvezfsha import config, log
    from pvezfsha.errors import PvezfshaError

    log.setup(args.verbose)
    try:
        if args.command == "receive":
            from pvezfsha import receive
            return receive.main()
        cfg = config.load(args.config)
        if args.command == "sync":
            from pvezfsha import sync
            return sync.run(cfg, args.ctids, dry_run=args.dry_run)
        if args.command == "status":
            from pvezfsha import status
            return status.run(cfg, args.ctids, as_json=args.json)
    except PvezfshaError as e:
        logger.error(str(e))
        return e.exit_code
    except KeyboardInterrupt:
        logger.error("interrupted")
        return 1
    return 2
