"""Configuration parsing: LiteFS-compatible keys, env expansion, clear errors."""

from __future__ import annotations

import re

import pytest

from pylitefs.config import Config, ConfigError, expand_env, parse, parse_duration, parse_size, with_overrides


def test_defaults() -> None:
    config = parse("")
    assert config == Config()
    assert config.fuse.dir == "/litefs" and config.data.dir == "/var/lib/litefs"
    assert not config.fuse.allow_other and not config.fuse.debug


def test_litefs_keys() -> None:
    config = parse("fuse:\n  dir: /mnt/a\n  allow-other: true\n  debug: false\ndata:\n  dir: /srv/data\n")
    assert config.fuse.dir == "/mnt/a" and config.fuse.allow_other is True
    assert config.data.dir == "/srv/data"


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ("$A/x", {"A": "/a"}, "/a/x"),
        ("${A}x", {"A": "/a"}, "/ax"),
        ("$MISSING|${MISSING}", {}, "|"),
        ("cost: $$5", {}, "cost: $5"),
        ("$1 stays", {}, "$1 stays"),
    ],
)
def test_expand_env(text: str, env: dict[str, str], expected: str) -> None:
    assert expand_env(text, env) == expected


def test_env_expansion_in_file() -> None:
    config = parse("fuse:\n  dir: ${ROOT}/mnt\ndata:\n  dir: $ROOT/data\n", env={"ROOT": "/r"})
    assert (config.fuse.dir, config.data.dir) == ("/r/mnt", "/r/data")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("fuse:\n  colour: blue\n", "unknown key 'fuse.colour'"),
        ("lease:\n  colour: blue\n", "unknown key 'lease.colour'"),
        ("lease:\n  type: consul\n", "lease.type must be one of static, etcd"),
        ("http:\n  addr: nowhere\n", "'http.addr': not a listen address"),
        ("lease:\n  candidate: false\n", "lease.advertise-url must name the primary"),
        ("lease:\n  candidate: false\n  advertise-url: ftp://x\ncluster:\n  secret: s\n",
         "'lease.advertise-url': not an http:// URL"),
        ("lease:\n  candidate: false\n  advertise-url: http://p:20202\n", "a replica needs the cluster secret"),
        ("fuse: [1, 2]\n", "'fuse' must be a mapping"),
        ("fuse:\n  allow-other: sometimes\n", "'fuse.allow-other' must be true or false"),
        ("fuse:\n  dir: [a]\n", "'fuse.dir' must be a string"),
        ("- a\n- b\n", "the top level must be a mapping"),
        ("fuse: {dir: /a\n", "invalid YAML"),
        ("fuse:\n  dir: /same\ndata:\n  dir: /same/\n", "fuse.dir and data.dir are the same directory"),
        ("fuse:\n  dir: /m\ndata:\n  dir: /m/data\n", "must not be inside fuse.dir"),
        ("fuse:\n  dir: /d/mnt\ndata:\n  dir: /d\n", "must not be inside data.dir"),
        ("data:\n  retention-monitor-interval: 0s\n", "must be more than 0"),
        ("fuse:\n  dir: ''\n", "fuse.dir must not be empty"),
    ],
)
def test_errors_name_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(text, source="litefs.yml")
    assert str(info.value).startswith("litefs.yml: ")
    assert message in str(info.value)


def test_flag_overrides_win_and_are_validated() -> None:
    config = with_overrides(parse("fuse:\n  dir: /a\n"), {"fuse.dir": "/b", "fuse.allow-other": True})
    assert config.fuse.dir == "/b" and config.fuse.allow_other
    with pytest.raises(ConfigError):
        with_overrides(config, {"data.dir": "/b"})


def test_retention_keys() -> None:
    config = parse("data:\n  dir: /d\n  retention: 1h30m\n  retention-monitor-interval: 500ms\n"
                   "  retention-max-size: 64MiB\n")
    assert config.data.retention == 5400.0
    assert config.data.retention_monitor_interval == 0.5
    assert config.data.retention_max_size == 64 * 2**20
    assert parse("").data.retention == 600.0 and parse("").data.retention_max_size == 0


@pytest.mark.parametrize(("text", "seconds"), [("10m", 600), ("1h30m", 5400), ("500ms", 0.5), ("1.5s", 1.5)])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "10", "ten minutes", "5m3", "-1s"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_sizes() -> None:
    assert [parse_size(t) for t in ("1000", "64MB", "1GiB", "500k")] == [1000, 64 * 10**6, 2**30, 500_000]
    with pytest.raises(ConfigError, match="'data.retention-max-size': not a size"):
        parse("data:\n  retention-max-size: lots\n")
    with pytest.raises(ConfigError, match="'data.retention': not a duration"):
        parse("data:\n  retention: soon\n")


def test_replica_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYLITEFS_CLUSTER_SECRET", raising=False)
    config = parse("lease:\n  type: static\n  candidate: false\n  hostname: r1\n"
                   "  advertise-url: http://primary:20202/\nhttp:\n  addr: 127.0.0.1:30000\n"
                   "cluster:\n  secret: s3cret\n")
    assert config.lease.candidate is False and config.hostname == "r1"
    assert config.primary_url == "http://primary:20202"
    assert config.secret == b"s3cret"


def test_secret_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYLITEFS_CLUSTER_SECRET", "from-env")
    config = parse("lease:\n  candidate: false\n  advertise-url: http://p:1\n")
    assert config.secret == b"from-env"


def test_no_lease_section_is_a_single_primary() -> None:
    config = parse("http:\n  addr: :4000\n")
    assert config.lease.candidate is True and config.primary_url == "http://localhost:4000"


ETCD = "cluster:\n  secret: s\nlease:\n  type: etcd\n  hostname: n1\n"


def test_etcd_lease_keys() -> None:
    config = parse("lease:\n  type: etcd\n  hostname: n1\n  promote: true\n  etcd:\n"
                   "    endpoints: [http://e1:2379, 'https://e2:2379']\n    prefix: /apps/x/\n    key: leader\n"
                   "    ttl: 5s\n    timeout: 1s\n    tls-ca: /ca.pem\n    username: u\n    password: p\n"
                   "http:\n  addr: :20202\ncluster:\n  secret: s\n")
    etcd = config.lease.etcd
    assert etcd.endpoints == ("http://e1:2379", "https://e2:2379")
    assert (etcd.prefix, etcd.key, etcd.ttl, etcd.timeout) == ("/apps/x/", "leader", 5.0, 1.0)
    assert (etcd.tls_ca, etcd.username, etcd.password) == ("/ca.pem", "u", "p")
    assert config.lease.promote is True
    assert config.own_url == "http://n1:20202"  # no advertise-url: the hostname and the HTTP port
    assert parse(ETCD + "  etcd:\n    endpoints: http://a:1, http://b:2\n").lease.etcd.endpoints == (
        "http://a:1", "http://b:2")
    assert parse(ETCD).lease.etcd.endpoints == ("http://127.0.0.1:2379",)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("  etcd:\n    endpoints: []\n", "lease.etcd.endpoints must name at least one"),
        ("  etcd:\n    endpoints: [ftp://e:1]\n", "'lease.etcd.endpoints': not an http:// or https:// URL"),
        ("  etcd:\n    endpoints: [1, 2]\n", "must be a list of strings"),
        ("  etcd:\n    ttl: 500ms\n", "lease.etcd.ttl must be at least 1s"),
        ("  etcd:\n    ttl: 2s\n    timeout: 3s\n", "lease.etcd.timeout must be more than 0 and less than"),
        ("  etcd:\n    key: a/b\n", "lease.etcd.key must be a non-empty name"),
        ("  etcd:\n    prefix: rel/\n", "lease.etcd.prefix must start with '/'"),
        ("  etcd:\n    tls-cert: /c.pem\n", "tls-cert and lease.etcd.tls-key go together"),
        ("  etcd:\n    colour: blue\n", "unknown key 'lease.etcd.colour'"),
    ],
)
def test_etcd_errors_name_the_key(extra: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse(ETCD + extra)


def test_an_etcd_node_needs_the_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYLITEFS_CLUSTER_SECRET", raising=False)
    with pytest.raises(ConfigError, match="an etcd-leased node needs the cluster secret"):
        parse("lease:\n  type: etcd\n")


def test_scrub_keys() -> None:
    assert parse("").scrub.interval == 0  # off by default
    config = parse("scrub:\n  interval: 5m\n  rate: 10MB\n")
    assert (config.scrub.interval, config.scrub.rate) == (300.0, 10 * 10**6)
    with pytest.raises(ConfigError, match="scrub.rate must be more than 0"):
        parse("scrub:\n  rate: 0\n")


def test_replication_keys() -> None:
    config = parse("replication:\n  max-lag: 100\n  max-lag-timeout: 2s\n")
    assert (config.replication.max_lag, config.replication.max_lag_timeout) == (100, 2.0)
    assert parse("").replication.max_lag == 0
    with pytest.raises(ConfigError, match="replication.max-lag must be 0"):
        parse("replication:\n  max-lag: -1\n")
