"""replication.sync, sync-timeout, sync-fallback, max-lag-bytes and per-database settings."""

from __future__ import annotations

import pytest

from pylitefs.config import ConfigError, ReplicationPolicy, parse


def test_defaults_are_asynchronous_and_unbounded() -> None:
    policy = parse("").replication.policy("app.db")
    assert policy == ReplicationPolicy()
    assert (policy.sync, policy.sync_timeout, policy.sync_fallback) == (0, 5.0, "fail")
    assert (policy.max_lag, policy.max_lag_bytes) == (0, 0)


def test_section_settings_apply_to_every_database() -> None:
    config = parse("replication:\n  sync: 2\n  sync-timeout: 1500ms\n  sync-fallback: async\n"
                   "  max-lag-bytes: 64MB\n")
    policy = config.replication.policy("any.db")
    assert (policy.sync, policy.sync_timeout, policy.sync_fallback) == (2, 1.5, "async")
    assert policy.max_lag_bytes == 64 * 10**6


def test_a_database_entry_overrides_only_its_keys() -> None:
    config = parse("replication:\n  sync: 1\n  max-lag: 7\n  databases:\n"
                   "    app.db: {sync: 0, max-lag-bytes: 1MiB}\n    jobs.db:\n      sync-timeout: 2s\n"
                   "    plain.db:\n")
    app, jobs, other = (config.replication.policy(db) for db in ("app.db", "jobs.db", "other.db"))
    assert (app.sync, app.max_lag, app.max_lag_bytes) == (0, 7, 2**20)
    assert (jobs.sync, jobs.sync_timeout, jobs.max_lag) == (1, 2.0, 7)
    assert other == config.replication.policy("plain.db") == config.replication.policy("")
    assert [p.sync for p in config.replication.policies()] == [1, 0, 1, 1]


@pytest.mark.parametrize(("text", "message"), [
    ("replication:\n  sync: -1\n", "replication.sync must be 0"),
    ("replication:\n  sync-timeout: 0s\n", "replication.sync-timeout must be more than 0"),
    ("replication:\n  sync-fallback: maybe\n", "replication.sync-fallback must be one of fail, async"),
    ("replication:\n  max-lag-bytes: lots\n", "'replication.max-lag-bytes': not a size"),
    ("replication:\n  databases: [app.db]\n", "'replication.databases' must be a mapping"),
    ("replication:\n  databases:\n    app.db: 1\n", "'replication.databases.app.db' must be a mapping"),
    ("replication:\n  databases:\n    app.db: {synchronous: 1}\n",
     "unknown key 'replication.databases.app.db.synchronous'"),
    ("replication:\n  databases:\n    app.db: {sync: -2}\n", "replication.databases.app.db.sync must be 0"),
    ("replication:\n  databases:\n    app.db: {sync-fallback: drop}\n",
     "replication.databases.app.db.sync-fallback must be one of"),
    ("replication:\n  databases:\n    a/b.db: {sync: 1}\n", "is not a database name"),
])
def test_bad_settings_name_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse(text)
