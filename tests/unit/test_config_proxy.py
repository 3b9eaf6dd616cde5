"""The `proxy:` section: LiteFS's keys plus mode, wait-timeout, client-timeout, advertise-url; clear errors."""

from __future__ import annotations

import pytest

from pylitefs.config import ConfigError, parse

BASE = "proxy:\n  addr: ':8080'\n  target: 'localhost:8081'\n  db: app.db\n"


def test_off_by_default() -> None:
    assert parse("").proxy.addr == ""


def test_keys() -> None:
    config = parse(BASE + "  passthrough: ['*.png', '/static/*']\n  always-forward: /login\n"
                          "  max-lag: 3s\n  mode: redirect\n  wait-timeout: 500ms\n  client-timeout: 2s\n")
    proxy = config.proxy
    assert (proxy.addr, proxy.target, proxy.db, proxy.mode) == (":8080", "localhost:8081", "app.db", "redirect")
    assert proxy.passthrough == ("*.png", "/static/*") and proxy.always_forward == ("/login",)
    assert (proxy.max_lag, proxy.wait_timeout, proxy.client_timeout) == (3.0, 0.5, 2.0)


def test_proxy_url() -> None:
    config = parse(BASE + "lease:\n  hostname: node1\n")
    assert config.proxy_url(8080) == "http://node1:8080"
    assert parse(BASE.replace("':8080'", "'127.0.0.1:0'")).proxy_url(4321) == "http://127.0.0.1:4321"
    assert parse(BASE + "  advertise-url: http://lb.example:80/\n").proxy_url(8080) == "http://lb.example:80"


@pytest.mark.parametrize(("extra", "message"), [
    ("  mode: replay\n", "proxy.mode must be one of forward, redirect"),
    ("  wait-timeout: 0s\n", "proxy.wait-timeout"),
    ("  client-timeout: soon\n", "'proxy.client-timeout': not a duration"),
    ("  advertise-url: ftp://x\n", "'proxy.advertise-url'"),
    ("  colour: red\n", "unknown key 'proxy.colour'"),
])
def test_errors_name_the_key(extra: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        parse(BASE + extra)


@pytest.mark.parametrize(("text", "message"), [
    ("proxy:\n  addr: ':8080'\n  db: app.db\n", "'proxy.target'"),
    ("proxy:\n  addr: ':8080'\n  target: ':0'\n  db: app.db\n", "'proxy.target' needs the application's port"),
    ("proxy:\n  addr: 'nope'\n  target: ':1'\n  db: app.db\n", "'proxy.addr'"),
    ("proxy:\n  addr: ':8080'\n  target: ':1'\n", "proxy.db must name"),
])
def test_required_keys(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        parse(text)
