"""`http.admin-token`: the token of the admin calls, its fallbacks and its key's spelling."""

from __future__ import annotations

import pytest

from pylitefs.config import ConfigError, parse


def test_admin_token_from_the_file_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYLITEFS_ADMIN_TOKEN", "from-env")
    config = parse("http:\n  admin-token: from-file\ncluster:\n  secret: s3cret\n")
    assert config.http.admin_token == "from-file" and config.admin_token == b"from-file"


def test_admin_token_from_the_environment_then_the_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYLITEFS_ADMIN_TOKEN", raising=False)
    monkeypatch.delenv("PYLITEFS_CLUSTER_SECRET", raising=False)
    config = parse("cluster:\n  secret: s3cret\n")
    assert config.admin_token == b"s3cret"
    monkeypatch.setenv("PYLITEFS_ADMIN_TOKEN", "from-env")
    assert config.admin_token == b"from-env"


def test_no_token_at_all_is_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYLITEFS_ADMIN_TOKEN", raising=False)
    monkeypatch.delenv("PYLITEFS_CLUSTER_SECRET", raising=False)
    assert parse("").admin_token == b""  # the server then refuses every admin call


def test_a_misspelt_key_names_itself() -> None:
    with pytest.raises(ConfigError, match="unknown key .http.admin-tokn."):
        parse("http:\n  admin-tokn: x\n")
