"""The client side of the admin API (`POST /handoff`, ...): for the CLI and for nodes asking each other.

Blocking (urllib); call it from a worker thread in trio code.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

DEFAULT_TIMEOUT = 15.0


class AdminError(Exception):
    """The node could not be reached or did not answer with JSON; the message says which and why."""


def admin_call(url: str, path: str, params: dict[str, str], token: bytes,
               timeout: float = DEFAULT_TIMEOUT) -> tuple[int, dict[str, Any]]:
    """POST `path`?`params` to the node at `url` with the admin token; (HTTP status, JSON answer)."""
    target = url.rstrip("/") + path + ("?" + urllib.parse.urlencode(params) if params else "")
    request = urllib.request.Request(target, data=b"", method="POST",
                                     headers={"Authorization": "Bearer " + token.decode()})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"{}")
        except ValueError:
            return exc.code, {"error": f"HTTP {exc.code}"}
    except (OSError, ValueError) as exc:
        raise AdminError(f"cannot call {target}: {exc}") from None


__all__ = ["AdminError", "admin_call"]
