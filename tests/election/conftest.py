"""Fixtures shared by the etcd client tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from election.etcd import EtcdClient, EtcdSettings
from pylitefs.etcdserver import EtcdServer


@pytest.fixture
def etcd_clients() -> Iterator[Callable[..., EtcdClient]]:
    """Makes EtcdClients of a server (TTL 1 s and a 1 s deadline unless told); closes them at teardown."""
    clients: list[EtcdClient] = []

    def make(server: EtcdServer, **settings: object) -> EtcdClient:
        settings.setdefault("endpoints", (server.endpoint,))
        settings.setdefault("ttl", 1.0)
        settings.setdefault("timeout", 1.0)
        client = EtcdClient(EtcdSettings(**settings))  # type: ignore[arg-type]
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()
