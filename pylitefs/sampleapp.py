"""A small WSGI application on a SQLite database (stdlib only): what the proxy fronts in tests and demos.

    python -m pylitefs.sampleapp --db /litefs/app.db --port 8081 [--host 127.0.0.1] [--name NODE]

- `GET /` — `{"node": NAME, "rows": [{"id", "text", "node"}, ...]}` (oldest first);
- `POST /` — a form (`text=...`) or JSON (`{"text": ...}`) body: inserts a row
  (created with the table on the first write) and answers `201` with it.

The database is in WAL mode with a busy timeout; every request opens its own
connection and a threading server serves requests concurrently. A write on
a replica fails with SQLite's "attempt to write a readonly database": the
app answers `500` with that message (behind the proxy, writes reach the
primary and this does not happen). NAME is `--name`, else $PYLITEFS_NODE,
else the host name.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import socketserver
import sqlite3
import urllib.parse
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 5000
MAX_BODY = 1 << 20
SCHEMA = "CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, text TEXT NOT NULL, node TEXT NOT NULL)"

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    """wsgiref's server, one thread per request."""

    daemon_threads = True


class QuietHandler(WSGIRequestHandler):
    """Access lines go to logging (debug), not stderr."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        log.debug("%s " + format, self.address_string(), *args)


class SampleApp:
    """The WSGI callable for the database at `db_path`, answering as node `node`."""

    def __init__(self, db_path: str, node: str) -> None:
        self.db_path = db_path
        self.node = node

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method = environ["REQUEST_METHOD"]
        if environ.get("PATH_INFO", "/") != "/":
            return _json(start_response, "404 Not Found", {"error": "no such path"})
        try:
            if method in ("GET", "HEAD"):
                body = _json(start_response, "200 OK", {"node": self.node, "rows": self.rows()})
                return [] if method == "HEAD" else body
            if method == "POST":
                try:
                    text = _text(environ)
                except ValueError as exc:
                    return _json(start_response, "400 Bad Request", {"error": str(exc)})
                return _json(start_response, "201 Created", self.insert(text))
        except sqlite3.Error as exc:
            log.warning("%s %s failed: %s", method, self.db_path, exc)
            return _json(start_response, "500 Internal Server Error", {"error": str(exc), "node": self.node})
        return _json(start_response, "405 Method Not Allowed", {"error": f"{method} is not allowed"},
                     [("Allow", "GET, HEAD, POST")])

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.db_path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        return conn

    def rows(self) -> list[dict[str, Any]]:
        """Every row, oldest first ([] before the first write)."""
        if not os.path.exists(self.db_path):  # connecting would create it (a write)
            return []
        conn = self._connect()
        try:
            try:
                cursor = conn.execute("SELECT id, text, node FROM items ORDER BY id")
            except sqlite3.OperationalError as exc:
                if "no such table" in str(exc):
                    return []
                raise
            return [{"id": i, "text": t, "node": n} for i, t, n in cursor]
        finally:
            conn.close()

    def insert(self, text: str) -> dict[str, Any]:
        """Insert a row written by this node; return it."""
        conn = self._connect()
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode = wal")
            conn.execute(SCHEMA)
            row_id = conn.execute("INSERT INTO items (text, node) VALUES (?, ?)", (text, self.node)).lastrowid
            return {"id": row_id, "text": text, "node": self.node}
        finally:
            conn.close()


def _text(environ: dict[str, Any]) -> str:
    """The `text` of a POST body (form or JSON); ValueError if missing or malformed."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise ValueError("bad Content-Length") from None
    if length > MAX_BODY:
        raise ValueError(f"body larger than {MAX_BODY} bytes")
    body = environ["wsgi.input"].read(length) if length else b""
    if environ.get("CONTENT_TYPE", "").startswith("application/json"):
        try:
            payload = json.loads(body)
        except ValueError:
            raise ValueError("the body is not JSON") from None
        text = payload.get("text") if isinstance(payload, dict) else None
    else:
        text = urllib.parse.parse_qs(body.decode("utf-8", "replace")).get("text", [None])[0]
    if not isinstance(text, str) or not text:
        raise ValueError("give a non-empty 'text' (form field or JSON key)")
    return text


def _json(start_response: StartResponse, status: str, payload: dict[str, Any],
          extra: list[tuple[str, str]] | None = None) -> list[bytes]:
    """Start a JSON response with `status`; its body."""
    body = json.dumps(payload).encode() + b"\n"
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
                   + (extra or []))
    return [body]


def main(argv: list[str] | None = None) -> None:
    """Serve the sample app on --host:--port until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m pylitefs.sampleapp", description=__doc__.split("\n")[0])
    parser.add_argument("--db", required=True, help="the SQLite database (on the pylitefs mount)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--name", default=os.environ.get("PYLITEFS_NODE") or socket.gethostname(),
                        help="the node name shown in responses")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s sampleapp %(levelname)s %(message)s")
    server = make_server(args.host, args.port, SampleApp(args.db, args.name),
                         server_class=ThreadingWSGIServer, handler_class=QuietHandler)
    log.info("serving %s as %s on http://%s:%d", args.db, args.name, args.host, args.port)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
