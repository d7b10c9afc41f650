"""The one registry of error codes, each with the HTTP status it implies.

GraphQL errors carry the code in `extensions.code`; mutations return the same
codes in their `errors` list. The README documents this table.
"""

from __future__ import annotations

from enum import StrEnum


class Code(StrEnum):
    BAD_USER_INPUT = "BAD_USER_INPUT"
    BAD_CURSOR = "BAD_CURSOR"
    NOT_FOUND = "NOT_FOUND"
    TIMEOUT = "TIMEOUT"
    SERVICE_UNAVAILABLE = "SERVICE_UNAVAILABLE"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    INTERNAL = "INTERNAL"


# The HTTP status of a response whose only errors carry this code. A GraphQL
# response with data keeps 200; these apply when the request got nothing at all.
HTTP_STATUS: dict[Code, int] = {
    Code.BAD_USER_INPUT: 400,
    Code.BAD_CURSOR: 400,
    Code.NOT_FOUND: 404,
    Code.TIMEOUT: 504,
    Code.SERVICE_UNAVAILABLE: 503,
    Code.PAYLOAD_TOO_LARGE: 413,
    Code.INTERNAL: 500,
}

DESCRIPTION: dict[Code, str] = {
    Code.BAD_USER_INPUT: "an argument is malformed or out of range; the message names it",
    Code.BAD_CURSOR: "a pagination cursor is malformed, tampered with, or from another order",
    Code.NOT_FOUND: "the object does not exist",
    Code.TIMEOUT: "the statement ran past its timeout; narrow the filter",
    Code.SERVICE_UNAVAILABLE: "no database connection could be had in time; retry later",
    Code.PAYLOAD_TOO_LARGE: "the request body is larger than the limit",
    Code.INTERNAL: "an unexpected error; the request id finds it in the logs",
}


class NexesError(Exception):
    """An expected failure with a stable code and a message a person can act on."""

    def __init__(self, code: Code, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field


def bad_input(message: str, *, field: str | None = None) -> NexesError:
    return NexesError(Code.BAD_USER_INPUT, message, field=field)
