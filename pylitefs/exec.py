"""The application under the node (`exec:`), as LiteFS runs it.

Once the mount is ready and the node can serve (it is the primary, or a
replica connected to the primary and caught up with the positions of the
primary's last heartbeat), the `exec` entries run one after another. Every
entry but the last must exit 0 before the next starts (migrations); an
`if-candidate` entry runs only on a candidate that is the primary at its
turn. The last entry is the application: pylitefs runs until it ends and then
exits with its exit code.

As in LiteFS, a command line is split into words as a shell would (quotes,
backslashes) and run directly, not through a shell: the signals reach the
program itself and its exit code is pylitefs's. Pipes, `&&` or redirections
need an explicit `sh -c '...'`, whose last command should be `exec`ed (Debian's
sh does not replace itself with it, and would die of the signal first).

Each command runs in its own process group, like a shell's foreground job:
the signals pylitefs receives (SIGINT, SIGTERM, SIGHUP, SIGUSR1, SIGUSR2) go
to that group (a terminal's Ctrl-C reaches it once, through pylitefs), and
whatever a command leaves behind in its group is killed when it ends. After
SIGINT or SIGTERM no further entry starts, and a command still running
`APP_STOP_TIMEOUT` seconds later is killed.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Protocol

import trio

from pylitefs.config import Config, ExecCommand

log = logging.getLogger(__name__)

#: Signals that stop the node: forwarded to the running command, then pylitefs stops once it has ended.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: Signals only forwarded to the running command (reload, log rotation, ...).
FORWARDED_SIGNALS = (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
#: How long a command may take to exit after a stop signal before it is killed.
APP_STOP_TIMEOUT = 10.0
#: Exit codes of a command that could not be started, as a shell reports them.
EXIT_CANNOT_RUN = 126
EXIT_NOT_FOUND = 127
#: How often the readiness condition is checked while waiting.
READY_POLL_INTERVAL = 0.05


class ReplicaView(Protocol):
    """What the readiness check reads of `replication.replica.ReplicaClient`."""

    connected: bool
    heartbeats: int

    def caught_up(self) -> bool: ...


class NodeView(Protocol):
    """What the readiness check reads of `pylitefs.node.Node`."""

    role: str
    replica: ReplicaView


def exit_status(returncode: int) -> int:
    """A process's exit status as a shell reports it: its exit code, or 128+N when signal N ended it."""
    return 128 - returncode if returncode < 0 else returncode


def environment(config: Config, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The commands' environment: pylitefs's own, plus PYLITEFS_NODE (this node's name) and PYLITEFS_MOUNT."""
    env = dict(os.environ if base is None else base)
    env["PYLITEFS_NODE"] = config.hostname
    env["PYLITEFS_MOUNT"] = config.fuse.dir
    return env


class Exec:
    """Runs the `exec` entries of one node and forwards signals to them; `run()` returns the exit code."""

    def __init__(self, config: Config, node: NodeView, *, stop_timeout: float = APP_STOP_TIMEOUT) -> None:
        self.commands = config.exec
        self.node = node
        self.candidate = config.lease.candidate
        self.env = environment(config)
        self.stop_timeout = stop_timeout
        self._process: trio.Process | None = None
        self._stop_signal: int | None = None
        self._idle_scope: trio.CancelScope | None = None  # a wait a stop signal ends at once (no command runs)
        self._nursery: trio.Nursery | None = None

    async def run(self, signals: AsyncIterator[int]) -> int:
        """Wait until the node can serve, run the entries, forward `signals`; the exit code pylitefs exits with.

        Returns when the application (the last entry) has ended: its exit
        status; when an earlier entry failed: its exit status; when a stop
        signal arrived before any command ran, or the last entry was skipped
        and a stop signal came: 0.
        """
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._forward, signals)
            code = await self._run_commands()
            nursery.cancel_scope.cancel()
        return code

    async def _run_commands(self) -> int:
        """Once the node is ready, run the entries in order; the exit code `run` returns."""
        await self._idle(self._wait_ready)
        for i, command in enumerate(self.commands):
            last = i == len(self.commands) - 1
            if self._stop_signal is not None:
                return 0
            if command.if_candidate and not (self.candidate and self.node.role == "primary"):
                log.info("skipping %r (if-candidate: this node is not the primary)", command.cmd)
                continue
            code = await self._run_one(command, "the application" if last else "step")
            if last or self._stop_signal is not None:
                return code
            if code != 0:
                log.error("step %r failed with exit code %d: not starting the application; "
                          "stopping the node", command.cmd, code)
                return code
        log.info("the last entry was skipped: no application runs on this node")
        await self._idle(trio.sleep_forever)
        return 0

    async def _idle(self, wait: Callable[[], Awaitable[None]]) -> None:
        """`await wait()`, unless a stop signal came or comes meanwhile (no command runs)."""
        with trio.CancelScope() as self._idle_scope:
            if self._stop_signal is None:
                await wait()
        self._idle_scope = None

    async def _wait_ready(self) -> None:
        """Return once the node is primary, or a replica caught up with a heartbeat heard while connected.

        The replica counts heartbeats; the positions of one counted while
        disconnected, or before the first check while connected, may be an
        earlier stream's, so the wait goes on until another arrives.
        """
        replica: ReplicaView | None = None
        seen = -1
        logged = False
        while True:
            if self.node.role == "primary":
                log.info("this node is the primary: starting")
                return
            current = self.node.replica
            if current is not replica or not current.connected:
                replica, seen = current, current.heartbeats
            elif current.heartbeats != seen and current.caught_up():
                log.info("this replica is caught up with the primary: starting")
                return
            if not logged:
                log.info("waiting until this node is the primary or caught up with it")
                logged = True
            await trio.sleep(READY_POLL_INTERVAL)

    async def _run_one(self, command: ExecCommand, what: str) -> int:
        """Run `command` in its own process group until it ends; its exit status (126/127 if it cannot start).

        Whatever it leaves running in its group is killed after it; if this
        task is cancelled, the command is terminated (then killed) first.
        """
        try:
            process = await trio.lowlevel.open_process(
                shlex.split(command.cmd), env=self.env, stdin=subprocess.DEVNULL, process_group=0)
        except OSError as exc:  # as a shell says it: 127 not found, 126 not executable
            code = EXIT_NOT_FOUND if isinstance(exc, FileNotFoundError) else EXIT_CANNOT_RUN
            log.error("cannot start %s %r: %s (exit code %d)", what, command.cmd, exc.strerror, code)
            return code
        self._process = process
        log.info("started %s %r (pid %d)", what, command.cmd, process.pid)
        try:
            if self._stop_signal is not None:  # it came while the process was being created
                self._stop(process, self._stop_signal)
            code = exit_status(await process.wait())
        finally:
            self._process = None
            with trio.CancelScope(shield=True):
                await self._end(process)
        if process.returncode is not None and process.returncode < 0:
            log.info("%s %r ended by %s (exit code %d)", what, command.cmd,
                     signal.Signals(-process.returncode).name, code)
        else:
            log.info("%s %r exited with code %d", what, command.cmd, code)
        return code

    async def _end(self, process: trio.Process) -> None:
        """After `process` ended (or the node is going away): nothing of it keeps running."""
        if process.returncode is None:  # cancelled from outside, e.g. the FUSE session ended
            log.warning("the node is stopping: terminating pid %d", process.pid)
            _signal_group(process, signal.SIGTERM)
            with trio.move_on_after(self.stop_timeout):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()
        if _signal_group(process, signal.SIGKILL):
            log.warning("killed the processes pid %d left running in its process group", process.pid)

    async def _forward(self, signals: AsyncIterator[int]) -> None:
        """Pass each of `signals` to the running command's group; a stop signal also ends the entries."""
        async for signum in signals:
            name = signal.Signals(signum).name
            process = self._process
            if signum in STOP_SIGNALS:
                first = self._stop_signal is None
                self._stop_signal = signum
                if process is None:
                    log.info("received %s: stopping", name)
                    if self._idle_scope is not None:
                        self._idle_scope.cancel()
                elif first:
                    self._stop(process, signum)
                else:
                    log.info("received %s again: forwarding it to pid %d", name, process.pid)
                    _signal_group(process, signum)
            elif process is not None:
                log.info("received %s: forwarding it to pid %d", name, process.pid)
                _signal_group(process, signum)
            else:
                log.info("received %s: no command is running, ignored", name)

    def _stop(self, process: trio.Process, signum: int) -> None:
        """Forward the stop signal `signum` to `process`; kill it if it still runs after the stop timeout."""
        log.info("received %s: forwarding it to pid %d, stopping once it has exited (at most %.0fs)",
                 signal.Signals(signum).name, process.pid, self.stop_timeout)
        _signal_group(process, signum)
        assert self._nursery is not None
        self._nursery.start_soon(self._kill_after_timeout, process)

    async def _kill_after_timeout(self, process: trio.Process) -> None:
        """Kill `process`'s group if it still runs `stop_timeout` seconds from now."""
        await trio.sleep(self.stop_timeout)
        if process.returncode is None:
            log.warning("pid %d still runs %.0fs after the stop signal: killing it",
                        process.pid, self.stop_timeout)
            _signal_group(process, signal.SIGKILL)


def _signal_group(process: trio.Process, signum: int) -> bool:
    """Send `signum` to the process group `process` leads; False when the group is gone (empty)."""
    try:
        os.killpg(process.pid, signum)
    except ProcessLookupError:
        return False
    return True
