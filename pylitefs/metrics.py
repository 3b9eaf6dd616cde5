"""The node's counters and their Prometheus text exposition (`GET /metrics`).

`Metrics` is updated where things happen (a transaction logged, a batch
applied, a write held by `replication.max-lag`): plain integer and float
updates on the trio thread, no locks. `Exposition` writes Prometheus's text
format (version 0.0.4) from values handed to it; it does no I/O.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping

#: Seconds: from 50 µs (a small logged commit) to 10 s (a long apply behind a reader's locks).
LATENCY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                   0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Labels = Mapping[str, str]


class Histogram:
    """Observations counted into fixed buckets (upper bounds, seconds), with their sum."""

    def __init__(self, buckets: Iterable[float] = LATENCY_BUCKETS) -> None:
        self.bounds = tuple(sorted(buckets))
        self.counts = [0] * (len(self.bounds) + 1)  # the last one: above every bound
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        """Count `value` in the first bucket whose bound is at least `value`."""
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations at most that), ending with (+inf, count)."""
        out: list[tuple[float, int]] = []
        total = 0
        for bound, n in zip((*self.bounds, math.inf), self.counts):
            total += n
            out.append((bound, total))
        return out


class Metrics:
    """What the node counts as it works; read by `pylitefs.api.metrics_text`."""

    def __init__(self) -> None:
        #: Transactions logged per database (both roles: captured on the primary, received on a replica).
        self.logged: dict[str, int] = {}
        self.logged_bytes: dict[str, int] = {}
        #: Transactions applied to the mount per database (replica).
        self.applied: dict[str, int] = {}
        #: Time to capture and log one application commit (primary).
        self.commit_seconds = Histogram()
        #: Time to apply one batch of received transactions to the mount (replica).
        self.apply_seconds = Histogram()
        self.max_lag_waits = 0
        self.max_lag_failures = 0

    def count_logged(self, db: str, size: int) -> None:
        """One transaction of `size` page bytes logged for `db`."""
        self.logged[db] = self.logged.get(db, 0) + 1
        self.logged_bytes[db] = self.logged_bytes.get(db, 0) + size

    def count_applied(self, db: str, txns: int, seconds: float) -> None:
        """A batch of `txns` transactions of `db` applied to the mount in `seconds`."""
        self.applied[db] = self.applied.get(db, 0) + txns
        self.apply_seconds.observe(seconds)


class Exposition:
    """Prometheus text exposition, one metric family at a time."""

    def __init__(self, prefix: str = "pylitefs_") -> None:
        self.prefix = prefix
        self._lines: list[str] = []

    def gauge(self, name: str, help_text: str, samples: Iterable[tuple[Labels, float]]) -> None:
        """A gauge family: its HELP and TYPE lines, then a line per (labels, value) sample."""
        self._family(name, "gauge", help_text, samples)

    def counter(self, name: str, help_text: str, samples: Iterable[tuple[Labels, float]]) -> None:
        """A counter; `name` ends with `_total` (the family is named without it)."""
        if not name.endswith("_total"):
            raise ValueError(f"a counter's name ends with _total: {name}")
        self._family(name, "counter", help_text, samples)

    def histogram(self, name: str, help_text: str, histogram: Histogram, labels: Labels | None = None) -> None:
        """A histogram family: cumulative `_bucket` lines (ending with `le="+Inf"`), `_sum` and `_count`."""
        full = self.prefix + name
        self._head(full, "histogram", help_text)
        base = dict(labels or {})
        for bound, total in histogram.cumulative():
            self._sample(full + "_bucket", {**base, "le": _number(bound)}, total)
        self._sample(full + "_sum", base, histogram.sum)
        self._sample(full + "_count", base, histogram.count)

    def text(self) -> str:
        """Every family written so far, as the exposition's text (ending with a newline)."""
        return "\n".join(self._lines) + "\n"

    def _family(self, name: str, kind: str, help_text: str, samples: Iterable[tuple[Labels, float]]) -> None:
        full = self.prefix + name
        self._head(full, kind, help_text)
        for labels, value in samples:
            self._sample(full, labels, value)

    def _head(self, full: str, kind: str, help_text: str) -> None:
        escaped = help_text.replace("\\", "\\\\").replace("\n", "\\n")  # as the format wants
        self._lines.append(f"# HELP {full} {escaped}")
        self._lines.append(f"# TYPE {full} {kind}")

    def _sample(self, full: str, labels: Labels, value: float) -> None:
        if labels:
            inner = ",".join(f'{key}="{_escape(str(val))}"' for key, val in labels.items())
            self._lines.append(f"{full}{{{inner}}} {_number(value)}")
        else:
            self._lines.append(f"{full} {_number(value)}")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\"", "\\\"").replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(float(value))


__all__ = ["CONTENT_TYPE", "Exposition", "Histogram", "Metrics"]
