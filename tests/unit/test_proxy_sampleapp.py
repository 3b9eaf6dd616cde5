"""The sample application (pylitefs/sampleapp.py) as a WSGI callable on a real SQLite file."""

from __future__ import annotations

import io
import json
import sqlite3
from pathlib import Path
from typing import Any
from wsgiref.util import setup_testing_defaults

from pylitefs.sampleapp import SampleApp


def call(app: SampleApp, method: str, body: bytes = b"", content_type: str = "") -> tuple[str, Any]:
    environ: dict[str, Any] = {"REQUEST_METHOD": method, "wsgi.input": io.BytesIO(body),
                               "CONTENT_LENGTH": str(len(body)), "CONTENT_TYPE": content_type}
    setup_testing_defaults(environ)
    got: list[str] = []
    out = b"".join(app(environ, lambda status, headers: got.append(status)))
    return got[0], json.loads(out) if out else None


def test_rows_inserts_and_bad_input(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    app = SampleApp(str(db), "node1")
    assert call(app, "GET") == ("200 OK", {"node": "node1", "rows": []})
    assert not db.exists()  # a read creates nothing
    assert call(app, "POST", b"text=a+b", "application/x-www-form-urlencoded") == (
        "201 Created", {"id": 1, "text": "a b", "node": "node1"})
    assert call(app, "POST", b'{"text": "c"}', "application/json")[1]["id"] == 2
    assert [r["text"] for r in call(app, "GET")[1]["rows"]] == ["a b", "c"]
    assert call(app, "HEAD") == ("200 OK", None)
    status, payload = call(app, "POST", b"{nope", "application/json")
    assert status == "400 Bad Request" and "not JSON" in payload["error"]
    assert call(app, "POST", b"other=1")[0] == "400 Bad Request"
    assert call(app, "DELETE")[0] == "405 Method Not Allowed"
    assert sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
