"""The mount: pyfuse3 operations over a flat directory of SQLite databases.

`fs` never imports `replication`'s network code nor `election`; the node
(`pylitefs`) wires them together.
"""
