"""election.etcd.EtcdClient against a real etcd with username/password auth, and one serving TLS (issue 5).

Auth is switched on through etcd's own Auth API (EtcdServer.enable_auth: no etcdctl needed); TLS certs
are made by the `openssl` CLI in the test's tmp dir.
"""

from __future__ import annotations

import functools
import logging
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import etcd3
import etcd3.etcdrpc as etcdrpc
import pytest

from election.etcd import EtcdAuthError, EtcdClient, EtcdError, EtcdSettings
from pylitefs.cluster import wait_for
from pylitefs.config import ConfigError, parse
from pylitefs.etcdserver import EtcdServer, ServerTLS
from tests.election.test_etcd_client import Changes, campaign

PASSWORD = "s3cret-root-pw"
#: etcd's --auth-token-ttl in these tests: an idle client's token expires within the test.
TOKEN_TTL = 1
#: Lifetime of jwt_etcd_server's auth tokens: they expire this long after authenticating, used or not.
JWT_TTL = "2s"


def openssl(cwd: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    """A throwaway CA: (cert, key) as name.pem, name.key."""
    openssl(directory, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN={name}")
    return directory / f"{name}.pem", directory / f"{name}.key"


def make_cert(directory: Path, name: str, ca: tuple[Path, Path], extensions: str) -> tuple[Path, Path]:
    """A cert signed by `ca` with the given openssl extension lines: (cert, key) as name.pem, name.key."""
    (directory / f"{name}.ext").write_text(extensions)
    openssl(directory, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
    openssl(directory, "x509", "-req", "-in", f"{name}.csr", "-CA", str(ca[0]), "-CAkey", str(ca[1]),
            "-set_serial", str(time.time_ns()), "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem")
    return directory / f"{name}.pem", directory / f"{name}.key"


def make_tls(directory: Path) -> ServerTLS:
    """A CA, a server cert for 127.0.0.1 and a client cert, all signed by that CA."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = make_ca(directory, "ca")
    server = make_cert(directory, "server", ca,
                       "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n")
    client = make_cert(directory, "client", ca, "extendedKeyUsage=clientAuth\n")
    return ServerTLS(ca=ca[0], cert=server[0], key=server[1], client_cert=client[0], client_key=client[1])


def token_deleted(server: EtcdServer, token: str) -> bool:
    """Whether etcd's log says it dropped the simple auth token `token` (its TTL ran out)."""
    return any("deleted a simple token" in line and token in line
               for line in server.log_path.read_text(errors="replace").splitlines())


def running(server: EtcdServer, password: str | None = None) -> Iterator[EtcdServer]:
    """For fixtures: start `server` (with auth on for user root when `password` is given), stop it after."""
    try:
        server.start()
        if password is not None:
            server.enable_auth(password)
        yield server
    finally:
        server.stop()


def jwt_etcd_server(tmp_path: Path) -> EtcdServer:
    """An etcd (not started) handing out JWT auth tokens that expire JWT_TTL after they were issued."""
    keys = tmp_path / "jwt"
    keys.mkdir()
    openssl(keys, "genrsa", "-out", "jwt.key", "2048")
    openssl(keys, "rsa", "-in", "jwt.key", "-pubout", "-out", "jwt.pub")
    token = f"jwt,pub-key={keys / 'jwt.pub'},priv-key={keys / 'jwt.key'},sign-method=RS256,ttl={JWT_TTL}"
    return EtcdServer(tmp_path / "etcd-data", tmp_path / "etcd.log", extra_args=["--auth-token", token])


def tls_etcd_server(tmp_path: Path) -> EtcdServer:
    """An etcd (not started) serving https only, requiring a client cert signed by its CA."""
    return EtcdServer(tmp_path / "etcd-data", tmp_path / "etcd.log", tls=make_tls(tmp_path / "tls"))


@pytest.fixture
def auth_etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    """A started etcd with auth on (user root, PASSWORD) whose "simple" tokens expire after TOKEN_TTL s idle."""
    yield from running(EtcdServer(tmp_path / "etcd-data", tmp_path / "etcd.log",
                                  extra_args=["--auth-token-ttl", str(TOKEN_TTL)]), PASSWORD)


@pytest.fixture
def tls_etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    """A started etcd serving https only, requiring a client cert signed by its CA."""
    yield from running(tls_etcd_server(tmp_path))


@pytest.fixture
def connect(etcd_clients: Callable[..., EtcdClient]) -> Callable[..., EtcdClient]:
    """Makes EtcdClients of a given server (TTL 5 s, 1 s deadline); closed at teardown."""
    return functools.partial(etcd_clients, ttl=5.0)


def run_a_term(a: EtcdClient, b: EtcdClient) -> None:
    """What a node does against etcd: join, register, watch, campaign, renew; b sees a, a sees b take over."""
    cluster_id = a.cluster_id("")
    assert b.cluster_id("") == cluster_id
    session = a.grant()
    a.register("a", {"url": "http://a:20202", "candidate": True}, session)
    assert set(b.nodes()) == {"a"}
    changes = Changes()
    cancel = a.watch(changes)
    try:
        won = campaign(a, "a")
        assert won is not None and b.primary() == won
        seen = changes.wait(0)
        assert a.refresh(won.lease_id) == 5.0
        taken = b.claim(won, "b", "http://b:20202", cluster_id)
        assert taken is not None
        changes.wait(seen)
        assert a.primary() == taken
        b.resign(taken)
        assert a.primary() is None
    finally:
        cancel()


# -- username/password --------------------------------------------------------------------------


def test_right_password_runs_a_term(auth_etcd: EtcdServer, connect: Callable[..., EtcdClient]) -> None:
    a = connect(auth_etcd, username="root", password=PASSWORD)
    b = connect(auth_etcd, username="root", password=PASSWORD)
    run_a_term(a, b)


@pytest.mark.parametrize("credentials, problem", [
    ({"username": "root", "password": "wrong"}, "authentication failed for user 'root'"),
    ({}, "etcd requires authentication, but no username is set"),
])
def test_wrong_or_missing_credentials_give_one_clear_error(
        auth_etcd: EtcdServer, connect: Callable[..., EtcdClient], credentials: dict[str, str],
        problem: str) -> None:
    client = connect(auth_etcd, **credentials)
    for call in (client.primary, lambda: client.cluster_id(""), lambda: campaign(client, "a")):
        started = time.monotonic()
        with pytest.raises(EtcdAuthError) as error:
            call()
        assert time.monotonic() - started < 1.0  # etcd answers at once: no hang until a deadline
        message = str(error.value)
        assert f"at {auth_etcd.endpoint}: {problem} (" in message, message
        assert "\n" not in message, message


def test_a_user_without_a_role_is_told_so(auth_etcd: EtcdServer, connect: Callable[..., EtcdClient]) -> None:
    root = etcd3.client("127.0.0.1", auth_etcd.client_port, timeout=5, user="root", password=PASSWORD)
    try:
        etcdrpc.AuthStub(root.channel).UserAdd(etcdrpc.AuthUserAddRequest(name="nobody", password="pw"), 5,
                                               metadata=root.metadata)
    finally:
        root.close()
    client = connect(auth_etcd, username="nobody", password="pw")
    with pytest.raises(EtcdAuthError, match=re.escape(
            f"cannot read the primary key at {auth_etcd.endpoint}: user 'nobody' lacks permission")):
        client.primary()


def test_credentials_against_an_etcd_without_auth_give_one_clear_error(
        etcd: EtcdServer, connect: Callable[..., EtcdClient]) -> None:
    client = connect(etcd, username="root", password=PASSWORD)
    with pytest.raises(EtcdAuthError, match="a username is set but etcd has authentication disabled"):
        client.primary()


def test_expired_auth_token_is_renewed_and_the_lease_outlives_it(
        auth_etcd: EtcdServer, connect: Callable[..., EtcdClient], caplog: pytest.LogCaptureFixture) -> None:
    client = connect(auth_etcd, username="root", password=PASSWORD, ttl=10.0)
    other = connect(auth_etcd, username="root", password=PASSWORD)
    mine = campaign(client, "a")
    assert mine is not None
    token = dict(client._client.metadata)["token"]  # the token python-etcd3 got when it authenticated
    wait_for(lambda: token_deleted(auth_etcd, token), timeout=10, what="etcd to drop the idle client's token")
    with caplog.at_level(logging.INFO, logger="election.etcd"):
        assert client.refresh(mine.lease_id) == 10.0  # keepalives need no token
        assert client.primary() == mine  # refused for the token, made again after authenticating
        assert "no longer accepts our auth token" in caplog.text
        handed = client.claim(mine, "b", "http://b:20202", "cluster")
    assert handed is not None and other.primary() == handed
    assert client.refresh(mine.lease_id) == 10.0


def test_etcd_restart_forgets_every_token_and_the_client_logs_in_again(
        auth_etcd: EtcdServer, connect: Callable[..., EtcdClient], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="election.etcd")
    client = connect(auth_etcd, username="root", password=PASSWORD, ttl=10.0)
    other = connect(auth_etcd, username="root", password=PASSWORD)
    changes = Changes()
    cancel = client.watch(changes)
    try:
        mine = campaign(client, "a")
        assert mine is not None
        changes.wait(0)
        auth_etcd.stop()
        auth_etcd.start()
        assert client.primary() == mine  # leases outlive a restart; tokens do not
        assert "no longer accepts our auth token" in caplog.text
        assert client.refresh(mine.lease_id) == 10.0
        wait_for(lambda: "watching /pylitefs/primary at " in caplog.text, timeout=10, what="the watch to resume")
        seen = changes.count
        handed = other.claim(mine, "b", "http://b:20202", "cluster")
        assert handed is not None
        changes.wait(seen)  # the re-created watch logged in again
    finally:
        cancel()


# -- TLS ------------------------------------------------------------------------------------------


def test_tls_with_ca_and_client_cert_runs_a_term(tls_etcd: EtcdServer, connect: Callable[..., EtcdClient]) -> None:
    assert tls_etcd.endpoint.startswith("https://") and tls_etcd.tls is not None
    files = {"ca_cert": str(tls_etcd.tls.ca), "cert": str(tls_etcd.tls.client_cert),
             "cert_key": str(tls_etcd.tls.client_key)}
    run_a_term(connect(tls_etcd, **files), connect(tls_etcd, **files))


def test_tls_and_auth_together(tls_etcd: EtcdServer, connect: Callable[..., EtcdClient]) -> None:
    assert tls_etcd.tls is not None
    tls_etcd.enable_auth(PASSWORD)
    files = {"ca_cert": str(tls_etcd.tls.ca), "cert": str(tls_etcd.tls.client_cert),
             "cert_key": str(tls_etcd.tls.client_key), "username": "root", "password": PASSWORD}
    run_a_term(connect(tls_etcd, **files), connect(tls_etcd, **files))
    with pytest.raises(EtcdAuthError, match="authentication failed for user 'root'"):
        connect(tls_etcd, **{**files, "password": "wrong"}).primary()


def test_tls_without_client_cert_or_with_another_ca_fails_clearly(
        tls_etcd: EtcdServer, connect: Callable[..., EtcdClient], tmp_path: Path) -> None:
    assert tls_etcd.tls is not None
    other_ca, _ = make_ca(tmp_path / "tls", "other-ca")
    cert = {"cert": str(tls_etcd.tls.client_cert), "cert_key": str(tls_etcd.tls.client_key)}
    for files, problem in [
        ({"ca_cert": str(tls_etcd.tls.ca)},
         "TLS failed: etcd refused the connection; it wants a client certificate signed by a CA it trusts "
         "(cert 'none set')"),
        ({"ca_cert": str(other_ca), **cert},
         f"TLS failed: etcd's certificate does not verify against ca_cert '{other_ca}'"),
    ]:
        client = connect(tls_etcd, **files)
        started = time.monotonic()
        with pytest.raises(EtcdError) as error:
            client.primary()
        assert time.monotonic() - started < 1.5  # fails fast: no hang until beyond the 1 s deadline
        message = str(error.value)
        assert message.startswith(f"cannot read the primary key at {tls_etcd.endpoint}: {problem} ("), message
        assert "\n" not in message, message


# -- configuration --------------------------------------------------------------------------------


@pytest.mark.parametrize(("keys", "message"), [
    ("    username: root\n", "lease.etcd.username and lease.etcd.password go together"),
    ("    password: pw\n", "lease.etcd.username and lease.etcd.password go together"),
    ("    endpoints: ['https://e:2379']\n", "an https lease.etcd endpoint needs lease.etcd.tls-ca"),
])
def test_half_configured_security_is_a_config_error(keys: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse("cluster:\n  secret: s\nlease:\n  type: etcd\n  hostname: n1\n  etcd:\n" + keys)


def test_the_password_stays_out_of_reprs() -> None:
    config = parse(f"cluster:\n  secret: s\nlease:\n  type: etcd\n  hostname: n1\n  etcd:\n"
                   f"    username: root\n    password: {PASSWORD}\n")
    assert config.lease.etcd.password == PASSWORD
    assert PASSWORD not in repr(config)
    assert PASSWORD not in repr(EtcdSettings(username="root", password=PASSWORD))
