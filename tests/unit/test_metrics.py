"""The Prometheus exposition (read back by prometheus_client's parser) and the cluster views' verdicts."""

from __future__ import annotations

import math

from prometheus_client.parser import text_string_to_metric_families

from pylitefs.clusterview import NodeView, discover, status_rows, table, verdicts
from pylitefs.metrics import Exposition, Histogram, Metrics


def test_exposition_parses_with_prometheus_client() -> None:
    m = Metrics()
    m.count_logged("a.db", 4096)
    m.count_logged("a.db", 8192)
    for seconds in (0.00001, 0.0003, 0.002, 30.0):
        m.commit_seconds.observe(seconds)
    out = Exposition()
    out.gauge("db_txid", "position", [({"db": "a.db"}, 7), ({"db": 'we"ird\\name\n'}, 1)])
    out.counter("logged_bytes_total", "bytes", [({"db": db}, n) for db, n in m.logged_bytes.items()])
    out.gauge("lag_seconds", "lag", [({}, 0.25)])
    out.histogram("commit_seconds", "commit latency", m.commit_seconds)
    families = {f.name: f for f in text_string_to_metric_families(out.text())}
    assert families["pylitefs_db_txid"].type == "gauge"
    assert {s.labels["db"]: s.value for s in families["pylitefs_db_txid"].samples} == {
        "a.db": 7, 'we"ird\\name\n': 1}
    assert families["pylitefs_logged_bytes"].type == "counter"
    assert families["pylitefs_logged_bytes"].samples[0].value == 12288
    assert families["pylitefs_lag_seconds"].samples[0].value == 0.25
    hist = families["pylitefs_commit_seconds"]
    assert hist.type == "histogram"
    buckets = {s.labels["le"]: s.value for s in hist.samples if s.name.endswith("_bucket")}
    assert buckets["5e-05"] == 1 and buckets["0.0005"] == 2 and buckets["0.0025"] == 3
    assert buckets["10.0"] == 3 and buckets["+Inf"] == 4
    count = next(s.value for s in hist.samples if s.name.endswith("_count"))
    total = next(s.value for s in hist.samples if s.name.endswith("_sum"))
    assert count == 4 and math.isclose(total, 30.00231)


def test_histogram_bucket_bounds_are_inclusive() -> None:
    h = Histogram([1.0, 2.0])
    for value in (1.0, 1.5, 2.0, 3.0):
        h.observe(value)
    assert h.cumulative() == [(1.0, 1), (2.0, 3), (math.inf, 4)]


def _verify(role: str, txid: int, checksum: str, disk: str | None = None) -> dict:
    disk = disk or checksum
    return {"role": role, "databases": {"a.db": {"txid": txid, "checksum": checksum, "disk_checksum": disk,
                                                 "ok": disk == checksum}}}


def test_verdicts_name_the_node_that_disagrees() -> None:
    results = {"p": _verify("primary", 5, "aa"), "r1": _verify("replica", 5, "aa"),
               "r2": _verify("replica", 5, "aa", disk="bb"), "r3": _verify("replica", 5, "cc"),
               "r4": _verify("replica", 4, "dd"), "r5": "cannot call http://x: refused"}
    by_node = {v.node: v for v in verdicts(results)}
    assert by_node["p"].ok and by_node["r1"].ok and by_node["r4"].ok  # r4 is behind, not wrong
    assert not by_node["r2"].ok and "its content has checksum bb" in by_node["r2"].lines[0]
    assert not by_node["r3"].ok and "DISAGREES with the primary" in by_node["r3"].lines[0]
    assert not by_node["r5"].ok and "not verified" in by_node["r5"].lines[0]


def test_discover_follows_known_nodes_and_lists_replicas_seen_by_the_primary() -> None:
    statuses = {
        "http://p": {"node": "p", "role": "primary", "term": 3, "nodes": {"p": "http://p", "e": "http://e"},
                     "databases": {"a.db": {"txid": 9, "checksum": "aa"}},
                     "replicas": {"s": {"positions": {"a.db": {"txid": 8, "checksum": "bb", "lag_txids": 1}}}}},
        "http://r": {"node": "r", "role": "replica", "term": 3, "connected": True, "primary": "p", "lag_ms": 0,
                     "nodes": {"p": "http://p", "r": "http://r"},
                     "databases": {"a.db": {"txid": 9, "checksum": "aa", "lag_txids": 0}}},
    }

    def fetch(url: str, path: str) -> tuple[int, dict]:
        if url not in statuses:
            raise OSError("connection refused")
        return 200, statuses[url]

    views = discover(["http://r"], fetch)
    assert [v.name for v in views] == ["e", "p", "r", "s"]
    assert views[0].error == "connection refused" and views[3].url is None
    lines = [line.split() for line in table(status_rows(views)).splitlines()]
    assert lines[0][:3] == ["NODE", "ROLE", "TERM"]
    assert ["s", "replica", "-", "a.db", "8", "bb", "1", "tx", "yes", "(per", "primary)", "-"] in lines
    assert ["r", "replica", "3", "a.db", "9", "aa", "0", "tx,", "0", "ms", "yes", "to", "p", "http://r"] in lines
    assert lines[1][:2] == ["e", "?"] and "refused" in lines[1]
    assert isinstance(views[1], NodeView) and views[1].status is statuses["http://p"]
