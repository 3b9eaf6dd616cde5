"""Benchmarks: plain SQLite on a local directory vs the pylitefs mount vs bindfs.

`python -m bench.run` (or `make bench ARGS="..."`) mounts pylitefs and bindfs
side by side under one work directory on the same disk as the native
directory, runs every case in each target for several rounds, each
measurement in a fresh process (`bench.workloads`), and prints the medians,
the ratios to native and to bindfs, and the project's targets. Nothing is
asserted: the exit code is 0 unless a mount or a measurement failed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.targets import TARGET_NAMES, MountFailed, Target, make_target

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DIR = REPO_ROOT / "bench" / "out"

#: Seconds one workload process may take before it counts as failed.
WORKLOAD_TIMEOUT = 600.0


@dataclass(frozen=True)
class Scale:
    """How much work each case does."""

    write_count: int = 100_000
    write_seconds: float = 2.0
    rows: int = 100_000
    warm_seconds: float = 1.0
    warm_warmup: int = 2000
    cold_count: int = 1000


FULL_SCALE = Scale()
QUICK_SCALE = Scale(write_seconds=0.3, rows=10_000,
                    warm_seconds=0.2, warm_warmup=200, cold_count=200)


@dataclass(frozen=True)
class Case:
    """One measured row of the table."""

    key: str
    label: str
    workload: str
    journal_mode: str
    synchronous: str
    unit: str
    higher_is_better: bool
    #: "fresh": a new database per measurement, deleted after it;
    #: otherwise a database seeded once per target, read only.
    database: str = "fresh"
    extra: tuple[str, ...] = ()


def build_cases(scale: Scale) -> list[Case]:
    """Every case, in table order."""
    writes = ("--count", str(scale.write_count), "--duration", str(scale.write_seconds))
    rows = f"{scale.rows // 1000}k" if scale.rows >= 1000 else str(scale.rows)
    warm = ("--warm", "--count", str(scale.warm_warmup), "--duration", str(scale.warm_seconds))
    cold = ("--count", str(scale.cold_count))
    return [
        Case("write-wal-normal", "small write txns, WAL sync=NORMAL", "small-writes",
             "wal", "normal", "txn/s", True, extra=writes),
        Case("write-wal-full", "small write txns, WAL sync=FULL", "small-writes",
             "wal", "full", "txn/s", True, extra=writes),
        Case("write-delete-full", "small write txns, DELETE sync=FULL", "small-writes",
             "delete", "full", "txn/s", True, extra=writes),
        Case("bulk-wal", f"bulk insert {rows} rows, WAL sync=NORMAL", "bulk-insert",
             "wal", "normal", "s", False, extra=("--rows", str(scale.rows))),
        Case("bulk-delete", f"bulk insert {rows} rows, DELETE sync=FULL", "bulk-insert",
             "delete", "full", "s", False, extra=("--rows", str(scale.rows))),
        Case("select-warm-delete", "point select warm, DELETE", "point-selects",
             "delete", "full", "q/s", True, database="reads-delete.db", extra=warm),
        Case("select-warm-wal", "point select warm, WAL", "point-selects",
             "wal", "normal", "q/s", True, database="reads-wal.db", extra=warm),
        Case("select-cold-delete", f"point select cold, DELETE (open+{scale.cold_count} q)",
             "point-selects", "delete", "full", "q/s", True, database="reads-delete.db", extra=cold),
        Case("select-cold-wal", f"point select cold, WAL (open+{scale.cold_count} q)",
             "point-selects", "wal", "normal", "q/s", True, database="reads-wal.db", extra=cold),
    ]


@dataclass(frozen=True)
class Placement:
    """Which CPUs the FUSE daemons and the workload processes may run on.

    FUSE without writeback is a synchronous ping-pong between the client and
    the daemon, and on this VM a cross-CPU wakeup costs more than a request:
    bindfs does ~13k WAL txn/s with both on one CPU and ~2k with each on its
    own. Unpinned, the scheduler picks either from run to run, so every
    process is pinned (native too, for the same conditions).
    """

    name: str
    daemon_cpus: frozenset[int] | None
    workload_cpus: frozenset[int] | None

    @classmethod
    def choose(cls, name: str) -> Placement:
        """`same`: one CPU for all; `split`: daemons on one, workloads on another; `none`."""
        cpus = sorted(os.sched_getaffinity(0))
        if name == "none":
            return cls(name, None, None)
        if name == "split" and len(cpus) > 1:
            return cls(name, frozenset({cpus[-1]}), frozenset({cpus[-2]}))
        return cls("same", frozenset({cpus[-1]}), frozenset({cpus[-1]}))

    def describe(self) -> str:
        """One line for the header."""
        if self.daemon_cpus is None:
            return "none (scheduler's choice: results vary a lot from run to run)"
        return (f"{self.name}: daemons on CPU {','.join(map(str, sorted(self.daemon_cpus)))}, "
                f"workloads on CPU {','.join(map(str, sorted(self.workload_cpus or ())))}")


@contextmanager
def pinned(cpus: frozenset[int] | None) -> Iterator[None]:
    """Run the block (and the children it starts) on `cpus`, then restore."""
    if cpus is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


@dataclass
class Result:
    """The rounds of one case in one target."""

    values: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def median(self) -> float | None:
        """The median of the rounds that succeeded, or None."""
        return statistics.median(self.values) if self.values else None


class WorkloadFailed(Exception):
    """A workload process failed; the message is its last words."""


def run_workload(case: Case, db: Path, seed: int, cpus: frozenset[int] | None) -> float:
    """Run `case` on `db` in a new process (on `cpus`) and return its value."""
    cmd = [sys.executable, "-m", "bench.workloads", case.workload, str(db),
           "--journal-mode", case.journal_mode, "--synchronous", case.synchronous,
           "--seed", str(seed), *case.extra]
    try:
        with pinned(cpus):
            proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True,
                                  timeout=WORKLOAD_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise WorkloadFailed(f"timed out after {WORKLOAD_TIMEOUT:.0f}s") from None
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        raise WorkloadFailed(tail)
    return float(json.loads(proc.stdout)["value"])


def seed_database(target: Target, case: Case, scale: Scale, cpus: frozenset[int] | None) -> None:
    """Create the read-only database `case.database` in `target` (untimed)."""
    seed = Case("seed", "seed", "seed", case.journal_mode, case.synchronous, "s", False,
                extra=("--rows", str(scale.rows)))
    target.remove_database(case.database)
    run_workload(seed, target.path / case.database, 0, cpus)


def run_cases(targets: dict[str, Target], cases: list[Case], scale: Scale, rounds: int,
              cpus: frozenset[int] | None, log: bool) -> dict[str, dict[str, Result]]:
    """Every case, round and target; targets rotate order from round to round."""
    results = {case.key: {name: Result() for name in targets} for case in cases}
    seeded: set[tuple[str, str]] = set()
    names = list(targets)
    for case in cases:
        for rnd in range(rounds):
            shift = rnd % len(names)
            for name in names[shift:] + names[:shift]:
                target, result = targets[name], results[case.key][name]
                try:
                    target.check()
                    if case.database == "fresh":
                        db_name = f"{case.key}-{rnd}.db"
                        target.remove_database(db_name)
                    else:
                        db_name = case.database
                        if (name, db_name) not in seeded:
                            seed_database(target, case, scale, cpus)
                            seeded.add((name, db_name))
                    value = run_workload(case, target.path / db_name, rnd + 1, cpus)
                    target.check()
                    result.values.append(value)
                    if case.database == "fresh":
                        target.remove_database(db_name)
                except (WorkloadFailed, MountFailed, OSError) as exc:
                    result.errors.append(str(exc))
                    value = None
                if log:
                    shown = "FAILED: " + result.errors[-1] if value is None else f"{value:,.3f} {case.unit}"
                    print(f"  {case.key:<20} round {rnd + 1}/{rounds} {name:<9} {shown}", flush=True)
    return results


def format_value(value: float | None, unit: str) -> str:
    """A table cell for `value` in `unit`."""
    if value is None:
        return "-"
    if unit == "s":
        return f"{value:.3f} s"
    return f"{value:,.0f} {unit}"


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing."""
    if a is None or b is None or b == 0:
        return None
    return a / b


def format_ratio(value: float | None) -> str:
    """A table cell for a ratio."""
    return "-" if value is None else f"{value:.2f}x"


def render_table(cases: list[Case], results: dict[str, dict[str, Result]]) -> str:
    """The plain-text table of medians and ratios."""
    header = ["case", "native", "pylitefs", "no capture", "bindfs",
              "pylitefs/native", "pylitefs/bindfs", "capture on/off"]
    rows = [header]
    for case in cases:
        med = {name: res.median() for name, res in results[case.key].items()}
        py = med.get("pylitefs")
        rows.append([
            case.label,
            *(format_value(med.get(name), case.unit) for name in TARGET_NAMES),
            format_ratio(ratio(py, med.get("native"))),
            format_ratio(ratio(py, med.get("bindfs"))),
            format_ratio(ratio(py, med.get("nocapture"))),
        ])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for i, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [cell.rjust(w) for cell, w in zip(row[1:], widths[1:])]
        lines.append(" | ".join(cells))
        if i == 0:
            lines.append("-+-".join("-" * w for w in widths))
    return "\n".join(lines)


@dataclass(frozen=True)
class Goal:
    """A project target: pylitefs/`reference` of some cases, compared to a bound."""

    text: str
    case_keys: tuple[str, ...]
    reference: str
    bound: float
    at_least: bool


GOALS = (
    Goal("warm reads >= 0.95x native", ("select-warm-delete", "select-warm-wal"), "native", 0.95, True),
    Goal("small WAL write txns >= 1.0x bindfs", ("write-wal-normal", "write-wal-full"), "bindfs", 1.0, True),
    Goal("bulk insert <= 5x native's time", ("bulk-wal", "bulk-delete"), "native", 5.0, False),
    Goal("small WAL writes, capture on >= 0.8x off", ("write-wal-normal", "write-wal-full"), "nocapture", 0.8,
         True),
)


def render_goals(results: dict[str, dict[str, Result]]) -> tuple[str, list[dict[str, object]]]:
    """One line per project target (reported, not asserted) and the same as data."""
    lines, data = [], []
    for goal in GOALS:
        parts = []
        for key in goal.case_keys:
            if key not in results:
                continue
            med = {name: res.median() for name, res in results[key].items()}
            r = ratio(med.get("pylitefs"), med.get(goal.reference))
            met = None if r is None else (r >= goal.bound if goal.at_least else r <= goal.bound)
            verdict = "n/a" if met is None else ("met" if met else "MISSED")
            parts.append(f"{key} {format_ratio(r)} {verdict}")
            data.append({"target": goal.text, "case": key, "ratio": r, "met": met})
        lines.append(f"target: {goal.text:<38} " + ("; ".join(parts) or "n/a"))
    return "\n".join(lines), data


def command_output(cmd: list[str]) -> str:
    """The first line of `cmd`'s output, or '?'."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=10, cwd=REPO_ROOT)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return (out.stdout.strip() or out.stderr.strip() or "?").splitlines()[0]


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages, or ''."""
    try:
        with open("/proc/loadavg", encoding="ascii") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return ""


def machine_facts(work_dir: Path) -> dict[str, object]:
    """What the numbers depend on."""
    cpu = "?"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    except OSError:
        pass
    dirty = command_output(["git", "status", "--porcelain", "--untracked-files=no"]) not in ("?", "")
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "bindfs": command_output(["bindfs", "--version"]),
        "work_dir": str(work_dir),
        "work_dir_fs": command_output(["findmnt", "-n", "-o", "SOURCE,FSTYPE", "-T", str(work_dir)]),
        "loadavg": loadavg(),
        "git": command_output(["git", "rev-parse", "--short", "HEAD"]) + ("+dirty" if dirty else ""),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=None, help="rounds per case (default 3, --quick 1)")
    p.add_argument("--quick", action="store_true", help="a smoke run: 1 round, small counts")
    p.add_argument("--only", default=",".join(TARGET_NAMES),
                   help="comma-separated targets to run (default: native,pylitefs,nocapture,bindfs)")
    p.add_argument("--cases", default="", help="comma-separated case keys to run (default: all)")
    p.add_argument("--dir", type=Path, default=DEFAULT_DIR,
                   help="a fresh work dir is made under this one (default: bench/out)")
    p.add_argument("--keep", action="store_true", help="keep the work dir (databases, logs)")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON")
    p.add_argument("--quiet", action="store_true", help="no per-round progress lines")
    p.add_argument("--pin", choices=["same", "split", "none"], default="same",
                   help="CPU placement: daemons and workloads on one CPU (default), on two, or unpinned")
    p.add_argument("--pylitefs-args", default="", help="extra `pylitefs mount` arguments (one string)")
    p.add_argument("--bindfs-args", default="", help="extra bindfs arguments (one string), e.g. '-o kernel_cache'")
    args = p.parse_args(argv)
    args.targets = [t for t in args.only.split(",") if t]
    unknown = set(args.targets) - set(TARGET_NAMES)
    if unknown or not args.targets:
        p.error(f"--only: choose from {','.join(TARGET_NAMES)}")
    args.targets = [t for t in TARGET_NAMES if t in args.targets]
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit code."""
    args = parse_args(argv)
    scale = QUICK_SCALE if args.quick else FULL_SCALE
    cases = build_cases(scale)
    if args.cases:
        wanted = set(args.cases.split(","))
        unknown = wanted - {c.key for c in cases}
        if unknown:
            print(f"unknown case(s) {','.join(sorted(unknown))}; known: {','.join(c.key for c in cases)}",
                  file=sys.stderr)
            return 2
        cases = [c for c in cases if c.key in wanted]

    signal.signal(signal.SIGTERM, signal.default_int_handler)  # clean up as on Ctrl-C
    args.dir.mkdir(parents=True, exist_ok=True)
    work_dir = Path(tempfile.mkdtemp(prefix="run-", dir=args.dir)).resolve()
    facts = machine_facts(work_dir)
    placement = Placement.choose(args.pin)
    facts["pinning"] = placement.describe()
    print("machine: " + ", ".join(f"{k}={v}" for k, v in facts.items() if k != "pinning"), flush=True)
    print(f"pinning: {placement.describe()}", flush=True)
    if facts["loadavg"] and float(str(facts["loadavg"]).split()[0]) > 0.5:
        print(f"warning: the machine is busy (load average {facts['loadavg']}): expect noise", flush=True)
    failed = True
    started = time.monotonic()
    try:
        with ExitStack() as stack:
            targets: dict[str, Target] = {}
            for name in args.targets:
                target = make_target(name, work_dir, shlex.split(args.pylitefs_args),
                                     shlex.split(args.bindfs_args))
                with pinned(placement.daemon_cpus):
                    targets[name] = stack.enter_context(target)
                print(f"target {name}: {target.describe()}", flush=True)
            results = run_cases(targets, cases, scale, args.rounds, placement.workload_cpus,
                                log=not args.quiet)
        elapsed = time.monotonic() - started
        failed = any(res.errors for per_case in results.values() for res in per_case.values())
    except MountFailed as exc:
        print(f"cannot set up the benchmark: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; mounts and processes stopped", file=sys.stderr)
        return 130
    finally:
        if failed or args.keep:
            print(f"work dir kept: {work_dir}", flush=True)
        else:
            shutil.rmtree(work_dir, ignore_errors=True)

    table = render_table(cases, results)
    goals_text, goals_data = render_goals(results)
    print()
    facts["loadavg_end"] = loadavg()
    print(f"medians of {args.rounds} round(s){' (--quick)' if args.quick else ''}, "
          f"each measurement in a new process, pinning {placement.name}; "
          f"{elapsed:.0f} s in all, load average at the end {facts['loadavg_end']}")
    print(table)
    print("ratios are pylitefs's median over the other's: for txn/s and q/s higher is better, "
          "for s (time) lower is better")
    print()
    print(goals_text)
    for case in cases:
        for name, res in results[case.key].items():
            for err in dict.fromkeys(res.errors):
                print(f"error: {case.key} on {name}: {err}")
    if args.json:
        doc = {
            "machine": facts,
            "rounds": args.rounds,
            "quick": args.quick,
            "scale": asdict(scale),
            "targets": args.targets,
            "cases": [{**asdict(case),
                       "results": {name: {**asdict(res), "median": res.median()}
                                   for name, res in results[case.key].items()}}
                      for case in cases],
            "goals": goals_data,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        print(f"results written to {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
