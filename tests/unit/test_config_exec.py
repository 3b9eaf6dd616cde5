"""The `exec:` key: one command, or a list of entries with `if-candidate`; errors name the entry."""

from __future__ import annotations

import pytest

from pylitefs.config import ConfigError, ExecCommand, parse


def test_no_exec_by_default() -> None:
    assert parse("").exec == ()


def test_a_string_is_one_command() -> None:
    assert parse("exec: python app.py --port 8081").exec == (ExecCommand("python app.py --port 8081"),)


def test_a_list_of_entries_in_order() -> None:
    config = parse("""
exec:
  - cmd: "python manage.py migrate"
    if-candidate: true
  - "echo ready"
  - cmd: "python app.py"
""")
    assert config.exec == (ExecCommand("python manage.py migrate", if_candidate=True),
                           ExecCommand("echo ready"), ExecCommand("python app.py"))


def test_dollar_dollar_keeps_a_shell_variable() -> None:
    """The file is env-expanded before parsing: `$$VAR` reaches the shell as `$VAR`."""
    config = parse('exec: "echo $$PYLITEFS_NODE $PORT"', env={"PORT": "8081"})
    assert config.exec == (ExecCommand("echo $PYLITEFS_NODE 8081"),)


@pytest.mark.parametrize(("text", "message"), [
    ("exec: 3", "'exec' must be a command (a string) or a list of {cmd, if-candidate} entries, not 3"),
    ("exec: {cmd: a}", "'exec' must be a command (a string) or a list of {cmd, if-candidate} entries"),
    ("exec: [a, [b]]", "'exec[1]' must be a command (a string) or a mapping with 'cmd', not ['b']"),
    ("exec: [{cmd: a, if-primary: true}]", "unknown key 'exec[0].if-primary'"),
    ("exec: [{if-candidate: true}]", "'exec[0].cmd' must be a non-empty command line"),
    ("exec: ['  ']", "'exec[0].cmd' must be a non-empty command line"),
    ("exec: [{cmd: a, if-candidate: sometimes}]", "'exec[0].if-candidate' must be true or false, not 'sometimes'"),
    ("exec: [{cmd: [a, b]}]", "'exec[0].cmd' must be a string, not ['a', 'b']"),
    ("exec: [\"sh -c 'echo\"]", "'exec[0].cmd': cannot split \"sh -c 'echo\" into words: No closing quotation"),
])
def test_bad_exec_names_the_entry(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(text, source="litefs.yml")
    assert str(info.value).startswith(f"litefs.yml: {message}")
