"""Opaque global ids ("Type:key", base64url). Keyset cursors are in nexes.db.keyset."""

from __future__ import annotations

import binascii

from nexes.db.keyset import b64url, unb64url
from nexes.errors import bad_input


def global_id(type_name: str, key: int) -> str:
    return b64url(f"{type_name}:{key}".encode())


def parse_global_id(value: str, expected: str, *, field: str = "id") -> int:
    """The integer key of a global id of type `expected`; anything else is BAD_USER_INPUT."""
    try:
        type_name, _, key = unb64url(value).decode().partition(":")
        if type_name == expected and key.isascii() and key.isdigit() and len(key) < 19:
            return int(key)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        pass
    raise bad_input(f"{field} {value[:64]!r} is not the global id of a {expected}", field=field)


def decode_any_global_id(value: str) -> tuple[str, int] | None:
    try:
        type_name, _, key = unb64url(value).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    # isascii: str.isdigit also holds for digits int() refuses ("²").
    return (type_name, int(key)) if key.isascii() and key.isdigit() and len(key) < 19 else None
