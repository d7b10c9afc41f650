"""Scalars: DateTime always with microseconds and an offset, Decimal as a fixed-point string,
Upload for the GraphQL multipart request spec."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal, InvalidOperation
from typing import Any, NewType

import strawberry

from nexes.imports.upload import StoredUpload


def serialize_datetime(value: dt.datetime) -> str:
    return value.isoformat(timespec="microseconds")


def parse_datetime(value: Any) -> dt.datetime:
    if not isinstance(value, str):
        raise ValueError("DateTime must be an ISO-8601 string with an offset, e.g. 2025-01-31T08:00:00+00:00")
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"DateTime {value[:64]!r} is not ISO-8601 (e.g. 2025-01-31T08:00:00.000000+00:00)") from None
    if parsed.tzinfo is None:
        raise ValueError(f"DateTime {value[:64]!r} has no offset; add one, e.g. +00:00 or Z")
    return parsed


def serialize_decimal(value: Decimal) -> str:
    return format(value, "f")


def parse_decimal(value: Any) -> Decimal:
    if not isinstance(value, str):
        raise ValueError('Decimal must be a string such as "12.50"')
    try:
        parsed = Decimal(value.strip())
    except InvalidOperation:
        raise ValueError(f"Decimal {value[:64]!r} is not a number") from None
    if not parsed.is_finite():
        raise ValueError(f"Decimal {value[:64]!r} is not finite; NaN and Infinity are refused")
    return parsed


def parse_date(value: Any) -> dt.date:
    if not isinstance(value, str):
        raise ValueError("Date must be an ISO-8601 string, e.g. 2025-01-31")
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise ValueError(f"Date {value[:64]!r} is not an ISO-8601 date (YYYY-MM-DD)") from None


# The value of an Upload argument: the file, already stored and finalized by the endpoint.
Upload = NewType("Upload", StoredUpload)


def parse_upload(value: Any) -> Upload:
    if not isinstance(value, StoredUpload):
        raise ValueError(
            "Upload values come only from the files of a multipart request (graphql-multipart-request-spec): "
            "send the file as a part, named in 'map', with null in its place in 'variables'"
        )
    return Upload(value)


def serialize_upload(value: Any) -> Any:
    raise ValueError("Upload is an input-only scalar")


# Overrides of Strawberry's built-in DateTime, Decimal and Date (StrawberryConfig.scalar_map).
SCALAR_MAP: dict[object, Any] = {
    dt.datetime: strawberry.scalar(
        name="DateTime",
        description="ISO-8601 date and time, always with microseconds and an offset; naive input is refused.",
        serialize=serialize_datetime,
        parse_value=parse_datetime,
    ),
    Decimal: strawberry.scalar(
        name="Decimal",
        description='A fixed-point decimal as a string, e.g. "1234.50"; NaN and Infinity are refused.',
        serialize=serialize_decimal,
        parse_value=parse_decimal,
    ),
    dt.date: strawberry.scalar(
        name="Date",
        description="An ISO-8601 calendar date, e.g. 2025-01-31 (UTC days).",
        serialize=dt.date.isoformat,
        parse_value=parse_date,
    ),
    Upload: strawberry.scalar(
        name="Upload",
        description="A file sent as a part of a multipart request (graphql-multipart-request-spec).",
        serialize=serialize_upload,
        parse_value=parse_upload,
    ),
}
