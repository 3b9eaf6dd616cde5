"""Replica- and primary-mode mounts without the node: for the real-mount tests of fs.apply, fs.snapshot
and the replica policy.

As a script (the child process):

    python tests/replica_harness.py MOUNTPOINT DATA_DIR [--primary] [--primary-host H] [--lag-ms N]
                                    [--lock-timeout S]

mounts `fs.operations.Operations` through `fs.mount.serve` — with
`Access(primary=False)`, or with `--primary` as a primary that captures every
commit into a `replication.store.Store` under DATA_DIR/.pylitefs (as the node
does) — prints `{"ready": true}` on stdout once mounted, then answers JSON
commands, one per stdin line, with one JSON line each:

- `{"cmd": "apply", "log": PATH, "from": A, "to": B, "batches": [n, ...], "rate": R}`:
  apply TXIDs A..B of the transaction log at PATH (a primary's
  `replication.log` file) with an `fs.apply.Applier` from a worker thread,
  `n` transactions per `apply` call (the list is cycled; default 1), paced at
  R transactions a second if R > 0 (else at full speed). Replies
  `{"applied": txid, "apply_us": [...], "lag_us": [...]}`: the duration of
  each call, and (paced) each transaction's delay from its scheduled time to
  the end of its apply. `"close_each": true` closes the applier's descriptors
  after every call (to measure what keeping them open saves).
- `{"cmd": "drop", "db": DB}`: apply a `dropped` transaction of DB.
- `{"cmd": "snapshot", "db": DB, "out": PATH}` (primary): `fs.snapshot.read_consistent`;
  the image is written to PATH, the reply is `{"position": [txid, checksum], "us": ...}`.
- `{"cmd": "counts"}`: FUSE requests served since the last `counts`, by handler.
- `{"cmd": "fence", "in": S}`: the lease's fence, `access.writable_until = monotonic() + S`
  (S may be 0 or negative: fenced at once; null: never).
- `{"cmd": "role", "primary": BOOL}`: set `access.primary`; becoming primary again
  closes the applier and resets capture (`Operations.reset_capture`), as the node does.
- `{"cmd": "settle", "db": DB}`: `Applier.settle`; replies `{"size": n, "sha256": hex}` of
  the committed image it returned.
- `{"cmd": "quit"}`.

`-pos` files show the applied position; `.primary`/`.lag` show the options.

In the tests, `ReplicaHarness` runs it: `start()` returns once the mount is
in place, `stop()` always leaves nothing mounted and nothing running (the
same escalation as `pylitefs.process.MountProcess`).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pylitefs.process import abort_connection, force_unmount, is_mounted  # noqa: E402
from replication.log import TransactionLog, replay  # noqa: E402

HARNESS = Path(__file__).resolve()


class HarnessError(Exception):
    """The harness did not start or did not answer; the message carries its log."""


@dataclass
class ReplicaHarness:
    """The harness as a child process, with its mount point, data dir and log."""

    mountpoint: Path
    data_dir: Path
    log_path: Path
    primary_host: str | None = "primary-host"
    lag_ms: int = 7
    primary: bool = False
    lock_timeout: float = 10.0
    proc: subprocess.Popen[bytes] | None = None
    _buffer: bytes = field(default=b"", repr=False)

    def start(self, timeout: float = 30.0) -> ReplicaHarness:
        """Start the harness and wait until its mount is ready."""
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [sys.executable, str(HARNESS), str(self.mountpoint), str(self.data_dir),
                "--lag-ms", str(self.lag_ms), "--lock-timeout", str(self.lock_timeout)]
        if self.primary_host is not None:
            args += ["--primary-host", self.primary_host]
        if self.primary:
            args.append("--primary")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log)
        try:
            reply = self._read_reply(time.monotonic() + timeout)
            if not reply.get("ready") or not is_mounted(str(self.mountpoint)):
                raise HarnessError(f"harness did not mount: {reply}\n{self.log_text()}")
        except BaseException:
            self.stop()
            raise
        return self

    def request(self, cmd: dict[str, Any], timeout: float = 120.0) -> dict[str, Any]:
        """Send one command and return its reply."""
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd).encode() + b"\n")
        self.proc.stdin.flush()
        reply = self._read_reply(time.monotonic() + timeout)
        if "error" in reply:
            raise HarnessError(f"{cmd['cmd']} failed: {reply['error']}\n{self.log_text()}")
        return reply

    def apply(self, log: Path, first: int, last: int, *, batches: list[int] | None = None,
              rate: float = 0.0, timeout: float = 120.0) -> dict[str, Any]:
        """Apply TXIDs first..last of the log at `log`."""
        return self.request({"cmd": "apply", "log": str(log), "from": first, "to": last,
                             "batches": batches or [1], "rate": rate}, timeout)

    def _read_reply(self, deadline: float) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise HarnessError(f"no answer from the harness in time\n{self.log_text()}")
            ready, _, _ = select.select([fd], [], [], remaining)
            if ready:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    raise HarnessError(f"harness exited ({self.proc.poll()})\n{self.log_text()}")
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)  # type: ignore[no-any-return]

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-5000:]
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = 15.0) -> int | None:
        """Stop the harness and make sure nothing stays mounted; its exit code."""
        code: int | None = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            try:
                code = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                abort_connection(str(self.mountpoint))
                self.proc.kill()
                try:
                    code = self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    code = None
            for stream in (self.proc.stdin, self.proc.stdout):
                if stream is not None:
                    try:
                        stream.close()
                    except OSError:
                        pass
        if is_mounted(str(self.mountpoint)):
            abort_connection(str(self.mountpoint))
            force_unmount(str(self.mountpoint))
        return code


# ---------------------------------------------------------------------- the child


def _child(argv: list[str]) -> None:
    import argparse
    import hashlib
    import logging
    import math
    from collections import Counter

    import trio

    from fs.access import Access
    from fs.apply import Applier
    from fs.mount import MountOptions, data_dir_lock, preflight, serve
    from fs.operations import Operations
    from fs.snapshot import read_consistent
    from pylitefs.startup import recover_databases
    from replication.log import TransactionLog
    from replication.store import Store
    from replication.txn import Transaction

    parser = argparse.ArgumentParser()
    parser.add_argument("mountpoint")
    parser.add_argument("data_dir")
    parser.add_argument("--primary-host")
    parser.add_argument("--lag-ms", type=int, default=0)
    parser.add_argument("--primary", action="store_true")
    parser.add_argument("--lock-timeout", type=float, default=10.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    applied: dict[str, tuple[int, int]] = {}

    class Positions:
        def position(self, db: str) -> tuple[int, int] | None:
            return applied.get(db)

    class Status:
        def primary_hostname(self) -> str | None:
            return args.primary_host  # type: ignore[no-any-return]

        def lag_ms(self) -> int:
            return args.lag_ms  # type: ignore[no-any-return]

    access = Access(primary=args.primary)
    store: Store | None = None
    if args.primary:
        os.makedirs(args.data_dir, exist_ok=True)
        store = Store(os.path.join(args.data_dir, ".pylitefs"), node_id="harness-primary")
        recover_databases(args.data_dir, store)
        ops = Operations(args.data_dir, store, access=access)
    else:
        ops = Operations(args.data_dir, Positions(), access=access, status=Status())  # type: ignore[arg-type]
    counts: Counter[str] = Counter()
    for name in ("lookup", "getattr", "setattr", "open", "create", "read", "write", "release",
                 "unlink", "rename", "fsync", "forget", "opendir", "readdir", "releasedir", "fsyncdir"):
        handler = getattr(ops, name)

        def counted(*a: Any, _h: Any = handler, _n: str = name) -> Any:
            counts[_n] += 1
            return _h(*a)

        setattr(ops, name, counted)
    applier = Applier(args.mountpoint, access, lock_timeout=args.lock_timeout)
    options = MountOptions(args.mountpoint, args.data_dir)

    def reply(obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    def run_apply(cmd: dict[str, Any]) -> dict[str, Any]:
        txlog = TransactionLog.open(cmd["log"], readonly=True)
        try:
            txns = [t for t in txlog.read(cmd["from"]) if t.txid <= cmd["to"]]
        finally:
            txlog.close()
        batches = cmd.get("batches") or [1]
        rate = float(cmd.get("rate") or 0)
        durations: list[float] = []
        lags: list[float] = []
        start = time.perf_counter()
        i = b = 0
        while i < len(txns):
            group: list[Transaction] = txns[i : i + batches[b % len(batches)]]
            b += 1
            if rate:
                due = start + (i + len(group) - 1) / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            t0 = time.perf_counter()
            applier.apply(group[0].db, group)
            if cmd.get("close_each"):  # benchmark: what keeping descriptors open saves
                applier.close()
            t1 = time.perf_counter()
            durations.append((t1 - t0) * 1e6)
            if rate:
                lags += [(t1 - (start + (i + k) / rate)) * 1e6 for k in range(len(group))]
            last = group[-1]
            applied[last.db] = (last.txid, last.post_checksum)
            i += len(group)
        return {"applied": txns[-1].txid if txns else None, "apply_us": durations, "lag_us": lags}

    def run_snapshot(cmd: dict[str, Any]) -> dict[str, Any]:
        assert store is not None, "snapshots are taken on a primary"
        db = cmd["db"]
        t0 = time.perf_counter()
        image, position = read_consistent(args.mountpoint, args.data_dir, db, access,
                                          lambda: store.position(db))
        us = (time.perf_counter() - t0) * 1e6
        with open(cmd["out"], "wb") as f:
            f.write(image)
        return {"position": list(position) if position else None, "us": us}

    def run_settle(db: str) -> dict[str, Any]:
        dir_fd = os.open(args.data_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            image = applier.settle(db, dir_fd)
        finally:
            os.close(dir_fd)
        return {"size": len(image), "sha256": hashlib.sha256(image).hexdigest()}

    async def commands() -> None:
        while True:
            line = await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
            if not line:
                return
            cmd = json.loads(line)
            try:
                if cmd["cmd"] == "apply":
                    reply(await trio.to_thread.run_sync(run_apply, cmd))
                elif cmd["cmd"] == "drop":
                    drop = Transaction(db=cmd["db"], txid=1, page_size=4096, commit_size=0, pages={},
                                       timestamp_ns=0, node_id="", pre_checksum=0, post_checksum=0,
                                       dropped=True)
                    await trio.to_thread.run_sync(applier.apply, cmd["db"], [drop])
                    applied.pop(cmd["db"], None)
                    reply({"dropped": cmd["db"]})
                elif cmd["cmd"] == "snapshot":
                    reply(await trio.to_thread.run_sync(run_snapshot, cmd))
                elif cmd["cmd"] == "fence":
                    until = cmd.get("in")
                    access.writable_until = math.inf if until is None else time.monotonic() + until
                    reply({"writable": access.writable()})
                elif cmd["cmd"] == "role":
                    if cmd["primary"] and not access.primary:
                        await trio.to_thread.run_sync(applier.close)
                        ops.reset_capture()
                    access.primary = bool(cmd["primary"])
                    reply({"writable": access.writable()})
                elif cmd["cmd"] == "settle":
                    reply(await trio.to_thread.run_sync(run_settle, cmd["db"]))
                elif cmd["cmd"] == "counts":
                    reply(dict(counts))
                    counts.clear()
                elif cmd["cmd"] == "quit":
                    reply({"bye": True})
                    return
                else:
                    reply({"error": f"unknown command {cmd['cmd']!r}"})
            except Exception as exc:
                logging.exception("command %s failed", cmd["cmd"])
                reply({"error": f"{type(exc).__name__}: {exc}"})

    async def main() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals, \
                data_dir_lock(args.data_dir):
            preflight(options)
            try:
                async with trio.open_nursery() as nursery:
                    await nursery.start(serve, ops, options)
                    reply({"ready": True})

                    async def on_signal() -> None:
                        async for _ in signals:
                            nursery.cancel_scope.cancel()

                    nursery.start_soon(on_signal)
                    await commands()
                    # Its descriptors are on the mount: close them while it still answers.
                    await trio.to_thread.run_sync(applier.close)
                    nursery.cancel_scope.cancel()
            finally:
                applier.close()
                ops.close()
                if store is not None:
                    store.close()

    trio.run(main)


if __name__ == "__main__":
    _child(sys.argv[1:])


def position(harness: ReplicaHarness, db: str) -> int:
    """The TXID the harness's `<db>-pos` shows."""
    return int((harness.mountpoint / f"{db}-pos").read_text().split("/")[0], 16)


def replayed_log(harness: ReplicaHarness, db: str) -> tuple[int, bytes]:
    """(last TXID, the database its replay builds) of `db`'s log under the harness's data dir."""
    txlog = TransactionLog.open(harness.data_dir / ".pylitefs" / "logs" / f"{db}.log", readonly=True)
    try:
        assert txlog.last is not None, f"{db} has no logged transaction"
        return txlog.last.txid, replay(txlog)
    finally:
        txlog.close()

