"""Leases that decide which node is primary (static, etcd)."""
