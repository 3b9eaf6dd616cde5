"""Configuration: a YAML file with LiteFS-compatible keys, then flag overrides.

The file's text has `$VAR` and `${VAR}` expanded from the environment before
it is parsed (an unset variable expands to the empty string, `$$` is a `$`),
as LiteFS does. Unknown keys, wrong types and contradictory settings are a
`ConfigError` whose message names the key.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import socket
import typing
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

#: Where `pylitefs mount` looks for a config file when none is given.
DEFAULT_CONFIG_PATHS = ("litefs.yml", "/etc/litefs.yml")
DEFAULT_FUSE_DIR = "/litefs"
DEFAULT_DATA_DIR = "/var/lib/litefs"
#: LiteFS's default HTTP port: the HTTP API and the replication stream share it.
DEFAULT_HTTP_ADDR = ":20202"
#: Environment variable read for the cluster secret when `cluster.secret` is not set.
SECRET_ENV = "PYLITEFS_CLUSTER_SECRET"
#: Environment variable read for the admin token when `http.admin-token` is not set.
ADMIN_TOKEN_ENV = "PYLITEFS_ADMIN_TOKEN"
LEASE_TYPES = ("static", "etcd")
DEFAULT_ETCD_ENDPOINTS = ("http://127.0.0.1:2379",)


class ConfigError(Exception):
    """The configuration is invalid; the message says which key and why."""


@dataclass(frozen=True, slots=True)
class FuseConfig:
    """`fuse:` — the mount."""

    dir: str = DEFAULT_FUSE_DIR
    allow_other: bool = False
    debug: bool = False


class Duration(float):
    """Seconds, written in the file as Go-style durations: `10m`, `1h30m`, `500ms`, `30s`."""


class ByteSize(int):
    """Bytes, written as a number or with a unit: `64MB`, `1GiB`, `500k`."""


@dataclass(frozen=True, slots=True)
class DataConfig:
    """`data:` — where databases and their transaction logs are stored."""

    dir: str = DEFAULT_DATA_DIR
    #: How long logged transactions are kept (the newest is always kept).
    retention: Duration = Duration(600.0)
    #: How often retention is enforced.
    retention_monitor_interval: Duration = Duration(60.0)
    #: Largest size of one database's log before the oldest records go; 0 = no limit.
    retention_max_size: ByteSize = ByteSize(0)


@dataclass(frozen=True, slots=True)
class EtcdConfig:
    """`lease.etcd:` — the etcd cluster that holds the primary's lease (lease.type: etcd)."""

    endpoints: tuple[str, ...] = DEFAULT_ETCD_ENDPOINTS
    #: Every key of this cluster lives under it (README: "etcd key layout").
    prefix: str = "/pylitefs/"
    #: The primary key, under the prefix.
    key: str = "primary"
    #: The lease's time to live: how long a dead primary keeps the lease.
    ttl: Duration = Duration(10.0)
    #: Deadline of one etcd call.
    timeout: Duration = Duration(2.0)
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    username: str = ""
    password: str = field(default="", repr=False)  # kept out of reprs (logs, tracebacks)


@dataclass(frozen=True, slots=True)
class LeaseConfig:
    """`lease:` — who is primary.

    `static` (as LiteFS's): a fixed primary, the node with `candidate: true`;
    every replica's `advertise-url` is the primary's URL. No `lease` section
    at all: a single static primary.

    `etcd`: candidates compete for a key bound to an etcd lease; whoever holds
    it is primary, the others follow it. `advertise-url` is this node's own
    URL, published for the others when it is primary.
    """

    type: str = "static"
    #: static: this node is the primary; etcd: this node may become primary.
    candidate: bool = True
    #: This node's name, shown in `.primary` on replicas (default: the host name).
    hostname: str = ""
    #: static: the primary's URL (replicas); etcd: this node's URL. Default: derived from http.addr.
    advertise_url: str = ""
    #: etcd: once caught up, ask the current primary to hand the lease over to this candidate.
    promote: bool = False
    etcd: EtcdConfig = field(default_factory=EtcdConfig)


@dataclass(frozen=True, slots=True)
class HttpConfig:
    """`http:` — one port for the HTTP API and the replication stream."""

    addr: str = DEFAULT_HTTP_ADDR
    #: Token of the admin calls (handoff, import, export, verify); empty: $PYLITEFS_ADMIN_TOKEN, else the secret.
    admin_token: str = ""


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """`cluster:` — what every node of one cluster shares."""

    #: Shared secret that authenticates stream peers (never sent). Falls back
    #: to the environment variable PYLITEFS_CLUSTER_SECRET.
    secret: str = ""
    #: Expected cluster id; empty: adopt the primary's (created once, stored in data.dir).
    id: str = ""


SYNC_FALLBACKS = ("fail", "async")


@dataclass(frozen=True, slots=True)
class ReplicationPolicy:
    """What one database's commits wait for on the primary (`replication:` or one `replication.databases` entry)."""

    #: Replicas that must have durably stored a transaction before its commit returns; 0 = asynchronous.
    sync: int = 0
    #: How long a commit waits for those acknowledgements.
    sync_timeout: Duration = Duration(5.0)
    #: Then: `fail` (the application gets an I/O error, nothing committed) or `async` (it commits anyway).
    sync_fallback: str = "fail"
    #: Transactions of one database not yet acknowledged by any replica before new writes wait; 0 = no bound.
    max_lag: int = 0
    #: How long a write waits for an acknowledgement before it fails with an I/O error.
    max_lag_timeout: Duration = Duration(10.0)
    #: Bytes of logged transactions of one database no replica acknowledged before new writes wait; 0 = no bound.
    max_lag_bytes: ByteSize = ByteSize(0)


@dataclass(frozen=True, slots=True)
class ReplicationConfig(ReplicationPolicy):
    """`replication:` — how far the primary may run ahead of its replicas; `databases:` overrides per database."""

    #: Database name -> the keys of `ReplicationPolicy` that differ for it (coerced values).
    databases: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def policy(self, db: str) -> ReplicationPolicy:
        """The settings that apply to database `db`: its `databases` entry over the section's own."""
        base = {f.name: getattr(self, f.name) for f in dataclasses.fields(ReplicationPolicy)}
        return ReplicationPolicy(**{**base, **self.databases.get(db, {})})

    def policies(self) -> list[ReplicationPolicy]:
        """The section's own policy and every per-database one."""
        return [self.policy("")] + [self.policy(db) for db in self.databases]


@dataclass(frozen=True, slots=True)
class ScrubConfig:
    """`scrub:` — the background check of every database's file against its recorded position."""

    #: Pause between two passes over every database; 0 (the default) turns scrubbing off.
    interval: Duration = Duration(0.0)
    #: At most this many bytes read per second.
    rate: ByteSize = ByteSize(64 * 10**6)


PROXY_MODES = ("forward", "redirect")


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    """`proxy:` — the HTTP proxy in front of the application (off unless `addr` is set); see pylitefs/proxy.py."""

    #: Where the proxy listens, e.g. `:8080`; empty: no proxy.
    addr: str = ""
    #: The local application, `host:port` (`:port` is 127.0.0.1).
    target: str = ""
    #: The database whose TXID gives clients read-your-writes (required with `addr`).
    db: str = ""
    #: Path patterns (`*` matches anything) sent to the local application as they are.
    passthrough: tuple[str, ...] = ()
    #: Path patterns whose GET/HEAD requests go to the primary too.
    always_forward: tuple[str, ...] = ()
    #: `/pylitefs/health` fails on a replica that lags the primary by more than this.
    max_lag: Duration = Duration(10.0)
    #: forward: writes are proxied to the primary; redirect: answered with a 307 to the primary's proxy.
    mode: str = "forward"
    #: How a replica waits for a client's TXID before a read fails with 504.
    wait_timeout: Duration = Duration(5.0)
    #: A client silent this long mid-request, or idle between requests, is disconnected.
    client_timeout: Duration = Duration(30.0)
    #: This proxy's URL as other nodes reach it; default http://<proxy.addr host, or the hostname>:<port>.
    advertise_url: str = ""


@dataclass(frozen=True, slots=True)
class ExecCommand:
    """One entry of `exec:`: a command line, split into words as a shell would and run (pylitefs/exec.py)."""

    cmd: str = ""
    #: Run only on a candidate that is the primary when the entry's turn comes (e.g. migrations).
    if_candidate: bool = False


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration of a node."""

    fuse: FuseConfig = field(default_factory=FuseConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lease: LeaseConfig = field(default_factory=LeaseConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    scrub: ScrubConfig = field(default_factory=ScrubConfig)
    replication: ReplicationConfig = field(default_factory=ReplicationConfig)
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    #: `exec:` the application (the last entry) and the steps before it; empty: none.
    exec: tuple[ExecCommand, ...] = ()

    @property
    def hostname(self) -> str:
        """This node's name: lease.hostname, or the machine's host name."""
        return self.lease.hostname or socket.gethostname()

    @property
    def secret(self) -> bytes:
        """The cluster secret from the file, else from $PYLITEFS_CLUSTER_SECRET (may be empty)."""
        return (self.cluster.secret or os.environ.get(SECRET_ENV, "")).encode()

    @property
    def admin_token(self) -> bytes:
        """The admin calls' token: http.admin-token, else $PYLITEFS_ADMIN_TOKEN, else the cluster secret."""
        return (self.http.admin_token or os.environ.get(ADMIN_TOKEN_ENV, "")).encode() or self.secret

    @property
    def primary_url(self) -> str:
        """The primary's base URL (http://host:port), for replicas to connect to."""
        return self._advertised_url("localhost")

    @property
    def own_url(self) -> str:
        """This node's base URL as other nodes reach it (etcd lease): lease.advertise-url, or from http.addr."""
        return self._advertised_url(self.hostname)

    @property
    def api_url(self) -> str:
        """This node's HTTP API URL: own_url, but from http.addr on a static replica (advertise-url is the primary's)."""
        if self.lease.type == "static" and not self.lease.candidate:
            host, port = parse_addr(self.http.addr)
            return f"http://{host if host not in ('', '0.0.0.0', '::') else self.hostname}:{port}"
        return self.own_url

    def _advertised_url(self, wildcard_host: str) -> str:
        """lease.advertise-url, or http://HOST:PORT of http.addr (`wildcard_host` for an all-interfaces host)."""
        if self.lease.advertise_url:
            return self.lease.advertise_url.rstrip("/")
        host, port = parse_addr(self.http.addr)
        return f"http://{host if host not in ('', '0.0.0.0', '::') else wildcard_host}:{port}"

    def validate(self) -> Config:
        """Return self, or raise ConfigError for contradictory settings."""
        if not self.fuse.dir:
            raise ConfigError("fuse.dir must not be empty")
        if not self.data.dir:
            raise ConfigError("data.dir must not be empty")
        fuse_dir = os.path.realpath(self.fuse.dir)
        data_dir = os.path.realpath(self.data.dir)
        if fuse_dir == data_dir:
            raise ConfigError(f"fuse.dir and data.dir are the same directory ({fuse_dir})")
        if data_dir.startswith(fuse_dir + os.sep):
            raise ConfigError(f"data.dir ({data_dir}) must not be inside fuse.dir ({fuse_dir})")
        if fuse_dir.startswith(data_dir + os.sep):
            raise ConfigError(f"fuse.dir ({fuse_dir}) must not be inside data.dir ({data_dir})")
        _validate_policy(self.replication.policy(""), "replication.")
        for db in self.replication.databases:
            _validate_policy(self.replication.policy(db), f"replication.databases.{db}.")
        if self.scrub.rate <= 0:
            raise ConfigError("scrub.rate must be more than 0")
        if self.data.retention_monitor_interval <= 0:
            raise ConfigError("data.retention-monitor-interval must be more than 0")
        if self.lease.type not in LEASE_TYPES:
            raise ConfigError(f"lease.type must be one of {', '.join(LEASE_TYPES)}, not {self.lease.type!r}")
        try:
            parse_addr(self.http.addr)
        except ValueError as exc:
            raise ConfigError(f"'http.addr': {exc}") from None
        if self.proxy.addr:
            self._validate_proxy()
        if self.lease.type == "etcd":
            self._validate_etcd()
        elif not self.lease.candidate:
            if not self.lease.advertise_url:
                raise ConfigError("lease.advertise-url must name the primary's URL on a replica "
                                  "(lease.candidate: false)")
            _check_url("lease.advertise-url", self.lease.advertise_url)
            if not self.secret:
                raise ConfigError(f"a replica needs the cluster secret: set cluster.secret or ${SECRET_ENV}")
        return self

    def _validate_proxy(self) -> None:
        proxy = self.proxy
        for key, addr in (("proxy.addr", proxy.addr), ("proxy.target", proxy.target)):
            try:
                parse_addr(addr)
            except ValueError as exc:
                raise ConfigError(f"'{key}': {exc}") from None
        if parse_addr(proxy.target)[1] == 0:
            raise ConfigError("'proxy.target' needs the application's port")
        if not proxy.db or "/" in proxy.db:
            raise ConfigError("proxy.db must name the database under fuse.dir whose TXID the proxy tracks")
        if proxy.mode not in PROXY_MODES:
            raise ConfigError(f"proxy.mode must be one of {', '.join(PROXY_MODES)}, not {proxy.mode!r}")
        if proxy.wait_timeout <= 0:
            raise ConfigError("proxy.wait-timeout must be more than 0")
        if proxy.client_timeout <= 0:
            raise ConfigError("proxy.client-timeout must be more than 0")
        if proxy.advertise_url:
            _check_url("proxy.advertise-url", proxy.advertise_url)

    def proxy_url(self, bound_port: int) -> str:
        """This node's proxy as other nodes reach it: proxy.advertise-url, or proxy.addr's host (the
        hostname for all interfaces) and the port the proxy listens on."""
        if self.proxy.advertise_url:
            return self.proxy.advertise_url.rstrip("/")
        host, _ = parse_addr(self.proxy.addr)
        return f"http://{host if host not in ('', '0.0.0.0', '::') else self.hostname}:{bound_port}"

    def _validate_etcd(self) -> None:
        etcd = self.lease.etcd
        if not etcd.endpoints:
            raise ConfigError("lease.etcd.endpoints must name at least one etcd endpoint")
        for endpoint in etcd.endpoints:
            _check_url("lease.etcd.endpoints", endpoint, schemes=("http", "https"))
        if etcd.ttl < 1:
            raise ConfigError("lease.etcd.ttl must be at least 1s (etcd grants whole seconds)")
        if etcd.timeout <= 0 or etcd.timeout >= etcd.ttl:
            raise ConfigError("lease.etcd.timeout must be more than 0 and less than lease.etcd.ttl")
        if not etcd.key or "/" in etcd.key:
            raise ConfigError("lease.etcd.key must be a non-empty name without '/'")
        if not etcd.prefix.startswith("/"):
            raise ConfigError("lease.etcd.prefix must start with '/'")
        if bool(etcd.tls_cert) != bool(etcd.tls_key):
            raise ConfigError("lease.etcd.tls-cert and lease.etcd.tls-key go together")
        if not etcd.tls_ca and any(e.startswith("https:") for e in etcd.endpoints):
            raise ConfigError("an https lease.etcd endpoint needs lease.etcd.tls-ca (the CA of etcd's certificate)")
        if bool(etcd.username) != bool(etcd.password):
            raise ConfigError("lease.etcd.username and lease.etcd.password go together")
        if self.lease.advertise_url:
            _check_url("lease.advertise-url", self.lease.advertise_url)
        if not self.secret:
            raise ConfigError(f"an etcd-leased node needs the cluster secret: set cluster.secret or ${SECRET_ENV}")


def _validate_policy(policy: ReplicationPolicy, prefix: str) -> None:
    if policy.sync < 0:
        raise ConfigError(f"{prefix}sync must be 0 (asynchronous) or more")
    if policy.sync_timeout <= 0:
        raise ConfigError(f"{prefix}sync-timeout must be more than 0")
    if policy.sync_fallback not in SYNC_FALLBACKS:
        raise ConfigError(f"{prefix}sync-fallback must be one of {', '.join(SYNC_FALLBACKS)}, "
                          f"not {policy.sync_fallback!r}")
    if policy.max_lag < 0:
        raise ConfigError(f"{prefix}max-lag must be 0 (no bound) or more")
    if policy.max_lag_timeout <= 0:
        raise ConfigError(f"{prefix}max-lag-timeout must be more than 0")


def parse_addr(addr: str) -> tuple[str, int]:
    """(host, port) of a listen address `host:port` or `:port`; ValueError if malformed."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:  # 0: any free port
        raise ValueError(f"not a listen address: {addr!r} (examples: :20202, 127.0.0.1:20202)")
    return host.strip("[]"), int(port)


def parse_url(url: str, schemes: tuple[str, ...] = ("http",)) -> tuple[str, int]:
    """(host, port) of a URL with one of `schemes` (default port 80/443); ValueError if malformed."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in schemes or not parts.hostname:
        raise ValueError(f"not an {' or '.join(s + '://' for s in schemes)} URL with a host: {url!r}")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise ValueError(f"bad port in {url!r}") from None
    return parts.hostname, port


def _check_url(key: str, url: str, schemes: tuple[str, ...] = ("http",)) -> None:
    """ConfigError naming `key` unless `url` is a URL with one of `schemes` and a host."""
    try:
        parse_url(url, schemes)
    except ValueError as exc:
        raise ConfigError(f"'{key}': {exc}") from None


_ENV_PATTERN = re.compile(r"\$(?:\$|\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


def expand_env(text: str, env: Mapping[str, str] | None = None) -> str:
    """Expand `$VAR`, `${VAR}` and `$$` in `text`; unset variables become ''."""
    environ = os.environ if env is None else env

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return "$" if name is None else environ.get(name, "")

    return _ENV_PATTERN.sub(replace, text)


def parse(text: str, *, source: str = "<config>", env: Mapping[str, str] | None = None) -> Config:
    """Parse YAML text into a validated Config."""
    try:
        raw = yaml.safe_load(expand_env(text, env))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML: {exc}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections")
    try:
        return _build(Config, raw, "").validate()
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def load(path: str | None) -> Config:
    """Load `path`, or the first of DEFAULT_CONFIG_PATHS that exists, or defaults."""
    if path is None:
        path = next((p for p in DEFAULT_CONFIG_PATHS if os.path.exists(p)), None)
        if path is None:
            return Config().validate()
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    return parse(text, source=path)


def with_overrides(config: Config, overrides: Mapping[str, Any]) -> Config:
    """Return `config` with dotted keys (e.g. `fuse.dir`) replaced, validated."""
    for dotted, value in overrides.items():
        section_name, _, key = dotted.partition(".")
        section = getattr(config, section_name)
        section = dataclasses.replace(section, **{key.replace("-", "_"): value})
        config = dataclasses.replace(config, **{section_name: section})
    return config.validate()


def _build(cls: type, raw: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        attr = str(key).replace("-", "_")
        dotted = f"{prefix}{key}"
        if attr not in names:
            raise ConfigError(f"unknown key '{dotted}'")
        kind = hints[attr]
        if dataclasses.is_dataclass(kind):
            if value is None:
                value = {}
            if not isinstance(value, dict):
                raise ConfigError(f"'{dotted}' must be a mapping")
            values[attr] = _build(kind, value, dotted + ".")
        else:
            values[attr] = _coerce(value, kind, dotted)
    return cls(**values)


_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 10**6, "mb": 10**6, "mib": 2**20,
               "g": 10**9, "gb": 10**9, "gib": 2**30}
_SIZE = re.compile(r"(\d+)\s*([a-z]*)")


def parse_duration(text: str) -> float:
    """Seconds in a Go-style duration (`1h30m`, `500ms`); ValueError if malformed."""
    text = text.strip()
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if not text or pos != len(text):
        raise ValueError(f"not a duration: {text!r} (examples: 10m, 1h30m, 500ms)")
    return total


def parse_size(text: str) -> int:
    """Bytes in `64MB`, `1GiB`, `500k` or a plain number; ValueError if malformed."""
    match = _SIZE.fullmatch(text.strip().lower())
    if match is None or match.group(2) not in _SIZE_UNITS:
        raise ValueError(f"not a size: {text!r} (examples: 1000000, 64MB, 1GiB)")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2)]


def _coerce(value: Any, kind: Any, dotted: str) -> Any:
    if kind is Duration:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
            return Duration(value)
        try:
            return Duration(parse_duration(str(value)))
        except ValueError as exc:
            raise ConfigError(f"'{dotted}': {exc}") from None
    if kind is ByteSize:
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return ByteSize(value)
        try:
            return ByteSize(parse_size(str(value)))
        except ValueError as exc:
            raise ConfigError(f"'{dotted}': {exc}") from None
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ConfigError(f"'{dotted}' must be true or false, not {value!r}")
    if kind is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"'{dotted}' must be a string, not {value!r}")
    if kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"'{dotted}' must be an integer, not {value!r}")
    if kind == tuple[str, ...]:
        items = value.split(",") if isinstance(value, str) else value
        if isinstance(items, (list, tuple)) and all(isinstance(v, str) for v in items):
            return tuple(v.strip() for v in items if v.strip())
        raise ConfigError(f"'{dotted}' must be a list of strings (or one comma-separated string), not {value!r}")
    if kind == tuple[ExecCommand, ...]:
        return _exec_commands(value, dotted)
    if kind == Mapping[str, Mapping[str, Any]]:
        return _database_policies(value, dotted)
    raise ConfigError(f"'{dotted}' has an unsupported type")  # pragma: no cover


def _exec_commands(value: Any, dotted: str) -> tuple[ExecCommand, ...]:
    """`exec:` as LiteFS writes it: one command (a string), or a list of `{cmd, if-candidate}` entries."""
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise ConfigError(f"'{dotted}' must be a command (a string) or a list of {{cmd, if-candidate}} entries, "
                          f"not {value!r}")
    commands = []
    for i, entry in enumerate(value):
        key = f"{dotted}[{i}]"
        if isinstance(entry, str):
            entry = {"cmd": entry}
        if not isinstance(entry, dict):
            raise ConfigError(f"'{key}' must be a command (a string) or a mapping with 'cmd', not {entry!r}")
        command = _build(ExecCommand, entry, key + ".")
        try:
            words = shlex.split(command.cmd)
        except ValueError as exc:
            raise ConfigError(f"'{key}.cmd': cannot split {command.cmd!r} into words: {exc}") from None
        if not words:
            raise ConfigError(f"'{key}.cmd' must be a non-empty command line")
        commands.append(command)
    return tuple(commands)


def _database_policies(value: Any, dotted: str) -> dict[str, dict[str, Any]]:
    """`replication.databases`: database name -> the `ReplicationPolicy` keys given for it, coerced."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"'{dotted}' must be a mapping of database names to settings, not {value!r}")
    out: dict[str, dict[str, Any]] = {}
    for db, entry in value.items():
        key = f"{dotted}.{db}"
        if not isinstance(db, str) or not db or "/" in db or db.startswith("."):
            raise ConfigError(f"'{key}': {db!r} is not a database name")
        if entry is None:
            entry = {}
        if not isinstance(entry, dict):
            raise ConfigError(f"'{key}' must be a mapping (sync, sync-timeout, ...), not {entry!r}")
        built = _build(ReplicationPolicy, entry, key + ".")
        out[db] = {str(k).replace("-", "_"): getattr(built, str(k).replace("-", "_")) for k in entry}
    return out
