"""Which names may exist in the mount, and what each one is.

The mount is one flat directory. A name is a SQLite database, one of a
database's three companions (`-journal`, `-wal`, `-shm`), or its read-only
position file (`-pos`), which the daemon serves itself. Names starting with a
dot are reserved; SQLite super-journals (`-mjXXXXXXXX`, multi-database commits in
rollback mode) are refused, because a transaction spanning several databases
cannot be replicated atomically.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from fs.errors import NotPermitted


class Kind(enum.Enum):
    """The kinds of file a mount holds."""

    DATABASE = "database"
    JOURNAL = "journal"
    WAL = "wal"
    SHM = "shm"
    POSITION = "position"
    STATUS = "status"  # `.primary` and `.lag`: served by the daemon, never classified from a name


COMPANION_SUFFIXES: dict[str, Kind] = {
    "-journal": Kind.JOURNAL,
    "-wal": Kind.WAL,
    "-shm": Kind.SHM,
    "-pos": Kind.POSITION,
}

_SUPER_JOURNAL = re.compile(r"-mj[0-9A-Fa-f]{8}$")


@dataclass(frozen=True, slots=True)
class FileName:
    """A valid name in the mount: its kind and the database it belongs to."""

    name: str
    kind: Kind
    database: str


def classify(name: str) -> FileName:
    """Return what `name` is, or raise NotPermitted for a name the mount refuses."""
    if not name or name in (".", "..") or "/" in name:
        raise NotPermitted(f"invalid name {name!r}")
    if name.startswith("."):
        raise NotPermitted(f"{name!r}: names starting with '.' are reserved")
    if _SUPER_JOURNAL.search(name):
        raise NotPermitted(
            f"{name!r}: SQLite super-journals (transactions across ATTACHed "
            "databases in rollback mode) are not supported"
        )
    for suffix, kind in COMPANION_SUFFIXES.items():
        if name.endswith(suffix):
            base = name[: -len(suffix)]
            if not base:
                raise NotPermitted(f"invalid name {name!r}")
            classify(base)
            return FileName(name, kind, base)
    return FileName(name, Kind.DATABASE, name)


def is_valid(name: str) -> bool:
    """True when `classify(name)` would accept the name."""
    try:
        classify(name)
    except NotPermitted:
        return False
    return True
