"""The `pylitefs` command line."""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

import trio

from fs.mount import MountError
from pylitefs import __version__, clusterview, node, tools
from pylitefs.admin import AdminError, admin_call, get_json, upload
from pylitefs.config import Config, ConfigError, load, parse_addr, with_overrides

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
            tool.add_argument("--url", metavar="URL",
                              help="fetch a consistent copy of the live database from the node at URL "
                                   "(GET /export, admin token from --config or the environment)")
            tool.add_argument("file", metavar="FILE", help="where to write the copy")
        tool.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    handoff = sub.add_parser("handoff", help="on the primary: pass the lease to a caught-up candidate")
    handoff.add_argument("--config", "-config", metavar="FILE", help="config file (for http.addr and the secret)")
    handoff.add_argument("--to", metavar="NODE", help="the candidate to hand over to (default: the most caught up)")
    handoff.add_argument("--url", metavar="URL", help="the node's HTTP address (default: from http.addr)")
    handoff.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    for name, text in (("status", "a table of the cluster: every node's role, term, positions and lag"),
                       ("verify", "compare every node's position with its recomputed on-disk checksum"),
                       ("import", "on the primary: replace a database with a SQLite file, as one transaction")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("--config", "-config", metavar="FILE",
                         help="config file (for http.addr and the admin token)")
        cmd.add_argument("--url", metavar="URL", action="append" if name != "import" else None,
                         help="a node's HTTP address (default: from http.addr)"
                              + ("; repeat it for nodes the others do not know" if name != "import" else ""))
        if name == "status":
            cmd.add_argument("--json", action="store_true", help="print every node's status as JSON")
        if name == "import":
            cmd.add_argument("--name", required=True, metavar="DB", help="database name, e.g. app.db")
            cmd.add_argument("file", metavar="FILE", help="the SQLite database to import")
        cmd.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
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
    commands = {"handoff": _handoff, "status": _status, "verify": _verify, "import": _import}
    return commands.get(args.command, _tool)(args)


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


def _command(run: Callable[[argparse.Namespace, Config], int]) -> Callable[[argparse.Namespace], int]:
    """`run(args, config)` with the configuration loaded (EXIT_USAGE, after saying why, when it cannot be);
    an AdminError, ToolError or OSError it raises is printed as one line (EXIT_FAILURE)."""

    @functools.wraps(run)
    def command(args: argparse.Namespace) -> int:
        config = _config(args)
        if config is None:
            return EXIT_USAGE
        try:
            return run(args, config)
        except (AdminError, tools.ToolError, OSError) as exc:
            print(f"pylitefs: {exc}", file=sys.stderr)
            return EXIT_FAILURE

    return command


@_command
def _tool(args: argparse.Namespace, config: Config) -> int:
    """`log` and `export` (from the local log, or with --url from a running node)."""
    if args.command == "log":
        for line in tools.log_lines(config.data.dir, args.name):
            print(line)
    elif args.url:
        if args.txid is not None:
            raise tools.ToolError("--txid needs the local log: a node exports its current position only")
        txid, checksum = tools.export_remote(args.url, args.name, args.file, config.admin_token)
        print(f"exported {args.name} at TXID {txid} (checksum {checksum:016x}) from {args.url} to {args.file}")
    else:
        txid, checksum = tools.export(config.data.dir, args.name, args.file, args.txid)
        print(f"exported {args.name} at TXID {txid} (checksum {checksum:016x}) to {args.file}")
    return 0


@_command
def _handoff(args: argparse.Namespace, config: Config) -> int:
    """`handoff`: ask the node to pass the lease on; 0 once it did."""
    url = args.url or _local_url(config)
    status, payload = admin_call(url, "/handoff", {"to": args.to} if args.to else {}, config.admin_token)
    if status != 200:
        print(f"pylitefs: handoff refused: {payload.get('error', status)}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"handed off to {payload['handoff']}")
    return 0


def _local_url(config: Config) -> str:
    """The URL of the node that `config` configures, on this host."""
    host, port = parse_addr(config.http.addr)
    return f"http://{host if host not in ('', '0.0.0.0', '::') else '127.0.0.1'}:{port}"


def _discover(args: argparse.Namespace, config: Config) -> list[clusterview.NodeView]:
    """Every node reachable from --url (default: this config's node)."""
    token = config.admin_token
    return clusterview.discover(args.url or [_local_url(config)],
                                lambda url, path: get_json(url, path, token=token, timeout=5))


@_command
def _status(args: argparse.Namespace, config: Config) -> int:
    """`status`: print the cluster's table (or JSON); EXIT_FAILURE when a node did not answer."""
    views = _discover(args, config)
    if args.json:
        print(json.dumps({v.name: v.status or {"error": v.error, "url": v.url, "seen_by_primary": v.seen_by_primary}
                          for v in views}, indent=1, sort_keys=True))
    else:
        print(clusterview.table(clusterview.status_rows(views)))
    return EXIT_FAILURE if any(v.error is not None for v in views) else 0


@_command
def _verify(args: argparse.Namespace, config: Config) -> int:
    """`verify`: print every node's verdict; EXIT_FAILURE when one disagrees or cannot be verified."""
    results: dict[str, dict[str, Any] | str] = {}
    for view in _discover(args, config):
        if view.url is None:
            results[view.name] = "its URL is not known (a replica of a static lease): give it with --url"
        elif view.error is not None:
            results[view.name] = view.error
        else:
            try:
                code, answer = get_json(view.url, "/verify", token=config.admin_token, timeout=600)
            except AdminError as exc:
                results[view.name] = str(exc)
                continue
            results[view.name] = answer if code == 200 else f"HTTP {code}: {answer.get('error', '')}"
    verdicts = clusterview.verdicts(results)
    for verdict in verdicts:
        for line in verdict.lines:
            print(line)
    bad = [v.node for v in verdicts if not v.ok]
    print(f"DISAGREES: {', '.join(bad)}" if bad else f"all {len(verdicts)} node(s) agree")
    return EXIT_FAILURE if bad else 0


@_command
def _import(args: argparse.Namespace, config: Config) -> int:
    """`import`: upload the file to replace the database on the primary; 0 once it is one transaction."""
    url = args.url or _local_url(config)
    code, answer = upload(url, "/import", {"name": args.name}, config.admin_token, args.file)
    if code != 200:
        print(f"pylitefs: import refused (HTTP {code}): {answer.get('error', '')}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"imported {args.file} as {args.name}: TXID {answer['txid']} (checksum {answer['checksum']})")
    return 0


def _mount(args: argparse.Namespace) -> int:
    config = _config(args)
    if config is None:
        return EXIT_USAGE
    failures: list[str] = []
    code = 0  # with `exec`: the application's exit status
    try:
        code = trio.run(functools.partial(node.run, config, capture=args.capture))
    except* MountError as group:
        failures = [str(exc) for exc in group.exceptions]
    for message in failures:
        print(f"pylitefs: {message}", file=sys.stderr)
    return EXIT_FAILURE if failures else code


if __name__ == "__main__":
    sys.exit(main())
