"""The pylitefs node: CLI, configuration, and the wiring of fs/replication/election."""

__version__ = "0.1.0"
