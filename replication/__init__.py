"""Transactions, the on-disk log, rolling checksums and the replica stream."""
