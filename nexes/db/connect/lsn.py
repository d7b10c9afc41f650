"""WAL positions (pg_lsn) as integers, so they compare and order in Python."""

from __future__ import annotations

import re

LSN = re.compile(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})")


def parse_lsn(text: str) -> int | None:
    """`text` ("16/B374D848") as an integer, or None when it is not a WAL position."""
    match = LSN.fullmatch(text.strip())
    if match is None:
        return None
    return (int(match[1], 16) << 32) | int(match[2], 16)


def format_lsn(value: int) -> str:
    """An integer WAL position in PostgreSQL's own text form."""
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"
