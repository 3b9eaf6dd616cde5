"""The node: runs the mount for a configuration until a signal asks it to stop."""

from __future__ import annotations

import logging
import os
import signal
import socket

import trio

from fs.mount import MountOptions, data_dir_lock, preflight, serve
from fs.operations import Operations
from pylitefs.config import Config
from pylitefs.startup import recover_databases
from replication.store import Store

#: Under data.dir: the transaction logs and the node's own state.
STATE_DIR = ".pylitefs"

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


async def run(config: Config, *, capture: bool = True) -> None:
    """Recover, mount, log one line when ready, and unmount cleanly on SIGINT/SIGTERM.

    With `capture` (always, but for benchmarks), every committed transaction
    is recorded in the data dir's transaction logs. Returns when a stop signal
    arrives or the kernel ends the FUSE session (e.g. an administrator
    unmounted it). Raises MountError when the mount cannot start.
    """
    options = MountOptions(
        mountpoint=config.fuse.dir,
        data_dir=config.data.dir,
        allow_other=config.fuse.allow_other,
        debug=config.fuse.debug,
    )
    with trio.open_signal_receiver(*STOP_SIGNALS) as signals, data_dir_lock(options.data_dir):
        preflight(options)
        store = None
        if capture:
            store = Store(os.path.join(options.data_dir, STATE_DIR), node_id=socket.gethostname(),
                          retention_seconds=config.data.retention,
                          retention_max_bytes=config.data.retention_max_size or None)
            await trio.to_thread.run_sync(recover_databases, options.data_dir, store)
        ops = Operations(options.data_dir, sink=store)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(_serve_then_cancel, ops, options, nursery.cancel_scope)
                if store is not None:
                    nursery.start_soon(monitor_retention, store, config.data.retention_monitor_interval)
                log.info("pylitefs ready: %s mounted (data dir %s)", options.mountpoint, options.data_dir)
                async for signum in signals:
                    log.info("received %s: unmounting", signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    break
        finally:
            ops.close()
            if store is not None:
                store.close()


async def monitor_retention(store: Store, interval: float) -> None:
    """Every `interval` seconds, drop logged transactions older than the retention."""
    while True:
        await trio.sleep(interval)
        try:
            dropped = await trio.to_thread.run_sync(store.compact)
        except Exception as exc:  # keep monitoring: the next round may succeed
            log.warning("cannot enforce retention, retrying in %.0fs: %s", interval, exc)
            continue
        if any(dropped.values()):
            log.info("retention: dropped %s", ", ".join(f"{n} from {db}" for db, n in dropped.items() if n))


async def _serve_then_cancel(
    ops: Operations,
    options: MountOptions,
    scope: trio.CancelScope,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    await serve(ops, options, task_status=task_status)
    log.info("FUSE session ended")
    scope.cancel()
