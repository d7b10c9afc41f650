"""Keyset pagination's position and its cursor: a page starts after (sort value, id).

`Keyset` is what the page queries (db.orders, db.catalog) compare against; `CursorCodec`
turns one into the opaque, signed cursor a client holds and back, refusing any cursor
that was altered, made for another order, or by another version of the API.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson

from nexes.errors import Code, NexesError

CURSOR_VERSION = 1
_URLSAFE = bytes.maketrans(b"+/", b"-_")


def b64url(raw: bytes) -> str:
    """base64url without padding (binascii directly: base64.urlsafe_b64encode costs twice as much)."""
    return binascii.b2a_base64(raw, newline=False).translate(_URLSAFE).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Keyset:
    value: Any
    id: int


class CursorCodec:
    """Cursors: base64url(JSON [version, order, value, id]) + '.' + a 96-bit MAC, bound to their order.

    Time values travel as integer microseconds since the epoch, so no precision is lost.

    The MAC is keyed BLAKE2b with a 12-byte digest (RFC 7693's keyed mode, a MAC by design;
    the key derived from NEXES_CURSOR_SECRET, whatever its length). It replaced HMAC-SHA256
    truncated to 12 bytes, which cost 2.8x as much (1.90 against 0.67 us, the best of five
    timeit runs; a page of 50 edges with their cursors signs 50 of them: issue 21). A
    cursor signed the old way with the same secret is still accepted, so that a rolling
    upgrade breaks no client's next page.
    """

    def __init__(self, secret: bytes) -> None:
        self._secret = secret
        self._key = hashlib.blake2b(secret, digest_size=32, person=b"nexes.cursor").digest()

    def _sign(self, payload: bytes) -> str:
        return b64url(hashlib.blake2b(payload, key=self._key, digest_size=12).digest())

    def _sign_hmac(self, payload: bytes) -> str:
        """The MAC of cursors made before BLAKE2b: HMAC-SHA256, its first 12 bytes."""
        return b64url(hmac.new(self._secret, payload, hashlib.sha256).digest()[:12])

    def encode(self, order: str, value: Any, row_id: int) -> str:
        if isinstance(value, datetime):
            value = _micros(value)
        elif isinstance(value, Decimal):
            value = str(value)
        payload = orjson.dumps([CURSOR_VERSION, order, value, row_id])
        return f"{b64url(payload)}.{self._sign(payload)}"

    def decode(self, cursor: str, order: str, kind: type) -> Keyset:
        """The keyset of a cursor made for `order`; anything else is BAD_CURSOR."""
        try:
            body, _, signature = cursor.partition(".")
            payload = unb64url(body)
            if not (
                hmac.compare_digest(signature, self._sign(payload))
                or hmac.compare_digest(signature, self._sign_hmac(payload))
            ):
                raise ValueError("signature")
            version, cursor_order, value, row_id = orjson.loads(payload)
        except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError):
            raise NexesError(Code.BAD_CURSOR, "the cursor is malformed or was altered; take one from a page") from None
        if version != CURSOR_VERSION or not isinstance(row_id, int) or isinstance(row_id, bool):
            raise NexesError(Code.BAD_CURSOR, "the cursor is from another version of the API; start over")
        if cursor_order != order:
            raise NexesError(Code.BAD_CURSOR, f"the cursor belongs to order {cursor_order}, not {order}")
        return Keyset(_value_of(kind, value), row_id)


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _micros(value: datetime) -> int:
    delta = value - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _value_of(kind: type, value: Any) -> Any:
    try:
        if kind is datetime and isinstance(value, int) and not isinstance(value, bool):
            return EPOCH + timedelta(microseconds=value)
        if kind is Decimal and isinstance(value, str):
            parsed = Decimal(value)
            if parsed.is_finite():
                return parsed
        if kind is str and isinstance(value, str):
            return value
    except (InvalidOperation, OverflowError, ValueError):
        pass
    raise NexesError(Code.BAD_CURSOR, "the cursor's position is malformed; take one from a page")
