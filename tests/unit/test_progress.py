"""The transfer progress line: drawn in place on a terminal, silent otherwise."""

from __future__ import annotations

import io

from pylitefs import admin
from pylitefs.admin import Progress


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_draws_on_a_terminal_only(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(admin, "PROGRESS_INTERVAL", 0.0)
    tty = Tty()
    progress = Progress("uploading a.db", 4 << 20, stream=tty)
    progress.add(1 << 20)
    progress.add(1 << 20)
    progress.finish()
    out = tty.getvalue()
    assert out.startswith("\ruploading a.db: 1.0 / 4.0 MiB (25%)\ruploading a.db: 2.0 / 4.0 MiB (50%)")
    assert out.endswith("\n")
    quiet = io.StringIO()
    progress = Progress("uploading a.db", 4 << 20, stream=quiet)
    progress.add(1 << 20)
    progress.finish()
    assert quiet.getvalue() == "" and progress.done == 1 << 20
