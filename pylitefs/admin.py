"""The client side of the node's HTTP API, for the CLI and for nodes asking each other.

`admin_call` (POST an admin call), `get_json`, `download` (`GET /export`)
and `upload` (`POST /import`). Blocking (urllib); call them from a worker
thread in trio code. `Progress` draws a `\\r`-updated progress line on stderr
when stderr is a terminal, and nothing otherwise.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import IO, Any

DEFAULT_TIMEOUT = 15.0
#: Transfers (export, import) wait this long for the node between two pieces.
TRANSFER_TIMEOUT = 120.0
CHUNK = 1 << 20
#: A progress line is redrawn at most this often (seconds).
PROGRESS_INTERVAL = 0.2


class AdminError(Exception):
    """The node could not be reached or did not answer with JSON; the message says which and why."""


def _target(url: str, path: str, params: dict[str, str]) -> str:
    return url.rstrip("/") + path + ("?" + urllib.parse.urlencode(params) if params else "")


def _headers(token: bytes | None) -> dict[str, str]:
    return {"Authorization": "Bearer " + token.decode()} if token else {}


def _error_reply(exc: urllib.error.HTTPError) -> tuple[int, dict[str, Any]]:
    try:
        return exc.code, json.loads(exc.read() or b"{}")
    except ValueError:
        return exc.code, {"error": f"HTTP {exc.code}"}


def admin_call(url: str, path: str, params: dict[str, str], token: bytes,
               timeout: float = DEFAULT_TIMEOUT) -> tuple[int, dict[str, Any]]:
    """POST `path`?`params` to the node at `url` with the admin token; (HTTP status, JSON answer)."""
    target = _target(url, path, params)
    request = urllib.request.Request(target, data=b"", method="POST", headers=_headers(token))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return _error_reply(exc)
    except (OSError, ValueError) as exc:
        raise AdminError(f"cannot call {target}: {exc}") from None


def get_json(url: str, path: str, params: dict[str, str] | None = None, token: bytes | None = None,
             timeout: float = DEFAULT_TIMEOUT) -> tuple[int, dict[str, Any]]:
    """GET `path` from the node at `url`; (HTTP status, JSON answer)."""
    target = _target(url, path, params or {})
    try:
        with urllib.request.urlopen(urllib.request.Request(target, headers=_headers(token)),
                                    timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return _error_reply(exc)
    except (OSError, ValueError) as exc:
        raise AdminError(f"cannot call {target}: {exc}") from None


class Progress:
    """`label: 12.0 / 40.0 MiB (30%)` redrawn in place on stderr when it is a terminal; silent otherwise."""

    def __init__(self, label: str, total: int | None, stream: IO[str] | None = None) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty()
        self._drawn = 0.0

    def add(self, n: int) -> None:
        self.done += n
        if self.enabled and time.monotonic() - self._drawn >= PROGRESS_INTERVAL:
            self._draw()

    def finish(self) -> None:
        if self.enabled:
            self._draw()
            self.stream.write("\n")
            self.stream.flush()

    def _draw(self) -> None:
        self._drawn = time.monotonic()
        mib = self.done / (1 << 20)
        if self.total:
            text = f"{self.label}: {mib:.1f} / {self.total / (1 << 20):.1f} MiB ({100 * self.done // self.total}%)"
        else:
            text = f"{self.label}: {mib:.1f} MiB"
        self.stream.write("\r" + text)
        self.stream.flush()


def download(url: str, path: str, params: dict[str, str], token: bytes, out: str,
             timeout: float = TRANSFER_TIMEOUT) -> tuple[int, dict[str, Any], dict[str, str]]:
    """GET `path` into the file `out` (written beside it, renamed into place on success).

    Returns (HTTP status, JSON error answer or {}, response headers).
    """
    target = _target(url, path, params)
    tmp = f"{out}.tmp-{os.getpid()}"
    try:
        with urllib.request.urlopen(urllib.request.Request(target, headers=_headers(token)),
                                    timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            progress = Progress(f"downloading {params.get('name', path)}", int(length) if length else None)
            with open(tmp, "wb") as f:
                while chunk := response.read(CHUNK):
                    f.write(chunk)
                    progress.add(len(chunk))
                f.flush()
                os.fsync(f.fileno())
            progress.finish()
            if length is not None and progress.done != int(length):
                raise AdminError(f"{target}: the answer ended after {progress.done} of {length} bytes")
            os.replace(tmp, out)
            return response.status, {}, dict(response.headers.items())
    except urllib.error.HTTPError as exc:
        status, payload = _error_reply(exc)
        return status, payload, dict(exc.headers.items())
    except (OSError, ValueError) as exc:
        raise AdminError(f"cannot download {target}: {exc}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class _CountingReader:
    """A file whose reads advance a Progress (what urllib sends as a request body)."""

    def __init__(self, f: IO[bytes], progress: Progress) -> None:
        self._f = f
        self._progress = progress

    def read(self, size: int = -1) -> bytes:
        data = self._f.read(CHUNK if size is None or size < 0 else max(size, CHUNK))
        self._progress.add(len(data))
        return data


def upload(url: str, path: str, params: dict[str, str], token: bytes, source: str,
           timeout: float = TRANSFER_TIMEOUT) -> tuple[int, dict[str, Any]]:
    """POST the file `source` as the body of `path`?`params`; (HTTP status, JSON answer)."""
    target = _target(url, path, params)
    size = os.path.getsize(source)
    progress = Progress(f"uploading {os.path.basename(source)}", size)
    try:
        with open(source, "rb") as f:
            request = urllib.request.Request(
                target, data=_CountingReader(f, progress), method="POST",  # type: ignore[arg-type]
                headers={**_headers(token), "Content-Length": str(size),
                         "Content-Type": "application/octet-stream"})
            with urllib.request.urlopen(request, timeout=timeout) as response:
                progress.finish()
                return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        progress.finish()
        return _error_reply(exc)
    except (OSError, ValueError) as exc:
        raise AdminError(f"cannot upload to {target}: {exc}") from None


__all__ = ["AdminError", "Progress", "admin_call", "download", "get_json", "upload"]
