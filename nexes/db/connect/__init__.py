"""Connections: pools, read routing, the replica monitor, WAL positions, the tagged cursor."""
