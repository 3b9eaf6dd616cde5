"""The `pylitefs` command line."""

from __future__ import annotations

import argparse
import functools
import logging
import sys
from collections.abc import Sequence
from typing import Any

import trio

from fs.mount import MountError
from pylitefs import __version__, node, tools
from pylitefs.admin import AdminError, admin_call
from pylitefs.config import Config, ConfigError, load, parse_addr, with_overrides

log = logging.getLogger("pylitefs")

EXIT_FAILURE = 1
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(prog="pylitefs", description="A replicating FUSE filesystem for SQLite.")
    parser.add_argument("--version", action="version", version=f"pylitefs {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    mount = sub.add_parser("mount", help="mount the filesystem and serve until SIGINT/SIGTERM")
    mount.add_argument("--config", "-config", metavar="FILE",
                       help="config file (default: ./litefs.yml, then /etc/litefs.yml)")
    mount.add_argument("--fuse.dir", dest="fuse.dir", metavar="DIR", help="mount point (overrides fuse.dir)")
    mount.add_argument("--data.dir", dest="data.dir", metavar="DIR", help="data directory (overrides data.dir)")
    mount.add_argument("--http.addr", dest="http.addr", metavar="ADDR",
                       help="HTTP API and replication stream address, e.g. :20202 (overrides http.addr)")
    mount.add_argument("--fuse.allow-other", dest="fuse.allow-other", action="store_const", const=True,
                       help="let other users access the mount")
    mount.add_argument("--fuse.debug", dest="fuse.debug", action="store_const", const=True,
                       help="log every FUSE request")
    mount.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    # Benchmarks only: a plain passthrough mount that records no transactions.
    mount.add_argument("--no-capture", dest="capture", action="store_false", help=argparse.SUPPRESS)
    for name, text in (("log", "list a database's logged transactions"),
                       ("export", "write a consistent copy of a database, as of a TXID, from its log")):
        tool = sub.add_parser(name, help=text)
        tool.add_argument("--config", "-config", metavar="FILE", help="config file (for data.dir)")
        tool.add_argument("--data.dir", dest="data.dir", metavar="DIR", help="data directory (overrides data.dir)")
        tool.add_argument("--name", required=True, metavar="DB", help="database name, e.g. app.db")
        if name == "export":
            tool.add_argument("--txid", type=int, help="TXID to export (default: the last)")
            tool.add_argument("file", metavar="FILE", help="where to write the copy")
        tool.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    handoff = sub.add_parser("handoff", help="on the primary: pass the lease to a caught-up candidate")
    handoff.add_argument("--config", "-config", metavar="FILE", help="config file (for http.addr and the secret)")
    handoff.add_argument("--to", metavar="NODE", help="the candidate to hand over to (default: the most caught up)")
    handoff.add_argument("--url", metavar="URL", help="the node's HTTP address (default: from http.addr)")
    handoff.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.command == "mount":
        return _mount(args)
    if args.command == "handoff":
        return _handoff(args)
    return _tool(args)


def _config(args: argparse.Namespace) -> Config | None:
    """The configuration from the file and the flags, or None after printing why not."""
    overrides: dict[str, Any] = {
        key: value for key, value in vars(args).items() if "." in key and value is not None
    }
    try:
        return with_overrides(load(args.config), overrides)
    except ConfigError as exc:
        print(f"pylitefs: config error: {exc}", file=sys.stderr)
        return None


def _tool(args: argparse.Namespace) -> int:
    config = _config(args)
    if config is None:
        return EXIT_USAGE
    try:
        if args.command == "log":
            for line in tools.log_lines(config.data.dir, args.name):
                print(line)
        else:
            txid, checksum = tools.export(config.data.dir, args.name, args.file, args.txid)
            print(f"exported {args.name} at TXID {txid} (checksum {checksum:016x}) to {args.file}")
    except tools.ToolError as exc:
        print(f"pylitefs: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return 0


def _handoff(args: argparse.Namespace) -> int:
    config = _config(args)
    if config is None:
        return EXIT_USAGE
    host, port = parse_addr(config.http.addr)
    url = args.url or f"http://{host if host not in ('', '0.0.0.0', '::') else '127.0.0.1'}:{port}"
    try:
        status, payload = admin_call(url, "/handoff", {"to": args.to} if args.to else {}, config.secret)
    except AdminError as exc:
        print(f"pylitefs: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if status != 200:
        print(f"pylitefs: handoff refused: {payload.get('error', status)}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"handed off to {payload['handoff']}")
    return 0


def _mount(args: argparse.Namespace) -> int:
    config = _config(args)
    if config is None:
        return EXIT_USAGE
    failures: list[str] = []
    try:
        trio.run(functools.partial(node.run, config, capture=args.capture))
    except* MountError as group:
        failures = [str(exc) for exc in group.exceptions]
    for message in failures:
        print(f"pylitefs: {message}", file=sys.stderr)
    return EXIT_FAILURE if failures else 0


if __name__ == "__main__":
    sys.exit(main())
