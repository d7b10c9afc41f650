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
    # The write path: mutation payload errors and import row errors.
    DUPLICATE_CONFLICT = "DUPLICATE_CONFLICT"
    CONFLICT = "CONFLICT"
    INVALID_TRANSITION = "INVALID_TRANSITION"
    UNKNOWN_SKU = "UNKNOWN_SKU"
    UNKNOWN_CUSTOMER = "UNKNOWN_CUSTOMER"
    CREATED_AT_OUT_OF_RANGE = "CREATED_AT_OUT_OF_RANGE"
    ORDER_REJECTED = "ORDER_REJECTED"
    BAD_ENCODING = "BAD_ENCODING"
    BAD_ROW = "BAD_ROW"
    BAD_FILE = "BAD_FILE"
    CSRF_HEADER_REQUIRED = "CSRF_HEADER_REQUIRED"
    FORBIDDEN = "FORBIDDEN"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    REQUEST_TIMEOUT = "REQUEST_TIMEOUT"
    RESPONSE_TOO_LARGE = "RESPONSE_TOO_LARGE"
    QUERY_TOO_COMPLEX = "QUERY_TOO_COMPLEX"
    RATE_LIMITED = "RATE_LIMITED"
    PERSISTED_QUERY_NOT_FOUND = "PERSISTED_QUERY_NOT_FOUND"
    DOCUMENT_NOT_TRUSTED = "DOCUMENT_NOT_TRUSTED"


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
    Code.DUPLICATE_CONFLICT: 409,
    Code.CONFLICT: 409,
    Code.INVALID_TRANSITION: 409,
    Code.UNKNOWN_SKU: 400,
    Code.UNKNOWN_CUSTOMER: 400,
    Code.CREATED_AT_OUT_OF_RANGE: 400,
    Code.ORDER_REJECTED: 400,
    Code.BAD_ENCODING: 400,
    Code.BAD_ROW: 400,
    Code.BAD_FILE: 400,
    Code.CSRF_HEADER_REQUIRED: 400,
    Code.FORBIDDEN: 403,
    Code.UNAUTHENTICATED: 401,
    Code.QUERY_TOO_COMPLEX: 400,
    Code.RATE_LIMITED: 429,
    Code.REQUEST_TIMEOUT: 408,
    Code.RESPONSE_TOO_LARGE: 400,
    # Apollo's clients read it from a 200 answer, then send the query with its hash.
    Code.PERSISTED_QUERY_NOT_FOUND: 200,
    Code.DOCUMENT_NOT_TRUSTED: 403,
}

DESCRIPTION: dict[Code, str] = {
    Code.BAD_USER_INPUT: "an argument is malformed or out of range; the message names it",
    Code.BAD_CURSOR: "a pagination cursor is malformed, tampered with, or from another order",
    Code.NOT_FOUND: "the object does not exist",
    Code.TIMEOUT: "a statement ran past its timeout, or the request past its deadline (NEXES_REQUEST_DEADLINE_<ROLE>: "
    "at the paths that did not finish, beside the data that did); narrow the filter, ask for less",
    Code.SERVICE_UNAVAILABLE: "no database connection could be had in time, or the process already runs "
    "NEXES_MAX_CONCURRENT_REQUESTS requests (Retry-After); retry later",
    Code.PAYLOAD_TOO_LARGE: "the request body is larger than the limit",
    Code.INTERNAL: "an unexpected error; the request id finds it in the logs",
    Code.DUPLICATE_CONFLICT: "the SOD number exists with different content (or twice, differently, in one file)",
    Code.CONFLICT: "the order changed since you read it (expectedUpdatedAt); read it again and retry",
    Code.INVALID_TRANSITION: "the status change is not allowed (DRAFT > OPEN > IN_PROGRESS > COMPLETED; "
    "any non-final > CANCELLED); COMPLETED and CANCELLED orders do not change",
    Code.UNKNOWN_SKU: "no stock item has this SKU",
    Code.UNKNOWN_CUSTOMER: "no customer has this code (or id)",
    Code.CREATED_AT_OUT_OF_RANGE: "created_at falls in no live quarter (too old, archived, or too far ahead)",
    Code.ORDER_REJECTED: "an import row rejected because another row of the same order is bad",
    Code.BAD_ENCODING: "an import row holds bytes that are not UTF-8",
    Code.BAD_ROW: "an import row cannot be parsed (quoting, number of columns)",
    Code.BAD_FILE: "the import file cannot be read at all (format, missing columns); the job fails",
    Code.FORBIDDEN: "the caller's roles may not use this field, mutation or route; the message names who may",
    Code.QUERY_TOO_COMPLEX: "the operation asks for more nodes than the caller's roles may (extensions.cost: "
    "requested and limit); ask for smaller pages or fewer nested connections",
    Code.RATE_LIMITED: "the caller's points for this hour are spent; retry after Retry-After seconds",
    Code.UNAUTHENTICATED: "no valid bearer token: missing, malformed, expired, revoked or wrongly signed "
    "(the message says which)",
    Code.CSRF_HEADER_REQUIRED: "uploads need X-Nexes-CSRF, Apollo-Require-Preflight or X-Apollo-Operation-Name "
    "(any non-empty value) so a browser cannot forge them",
    Code.REQUEST_TIMEOUT: "the request body came too slowly (the whole body within NEXES_BODY_READ_SECONDS; "
    "an upload pausing at most NEXES_UPLOAD_IDLE_SECONDS); send it again",
    Code.RESPONSE_TOO_LARGE: "the answer would be larger than NEXES_MAX_RESPONSE_BYTES; ask for fewer rows "
    "or fields (smaller pages)",
    Code.PERSISTED_QUERY_NOT_FOUND: "the server holds no document with that sha256Hash; send the query with "
    "its hash (Apollo's persisted-query link does so by itself)",
    Code.DOCUMENT_NOT_TRUSTED: "in allow-list mode (NEXES_TRUSTED_DOCUMENTS=on) viewers and operators run only "
    "documents registered with `nexes documents add`; register it, or ask as an analyst",
}


class NexesError(Exception):
    """An expected failure with a stable code and a message a person can act on."""

    def __init__(
        self, code: Code, message: str, *, field: str | None = None, extensions: dict[str, object] | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.extensions = extensions  # more of `extensions` in the error the client sees


def bad_input(message: str, *, field: str | None = None) -> NexesError:
    return NexesError(Code.BAD_USER_INPUT, message, field=field)
