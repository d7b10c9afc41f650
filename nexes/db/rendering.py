"""The SQL side of rendering (nexes.schema.rendered): which fields of which types PostgreSQL
can print exactly as their GraphQL scalars do, and the expression that prints a page's row.

A spec is the selection a rendered value stands for: (response name, field name,
sub-selection) per field, in the selection's order. The resolver finds it in the document
(nexes.resolvers.selection.node_render_spec) and the compiled completer in its grouped
fields (nexes.execution.compiled); a rendered value is used only where the two are one spec.
"""

from __future__ import annotations

import base64
import itertools

import orjson
from psycopg import sql

# Response name, field name, sub-selection (for an object field), per selected field.
Spec = tuple[tuple[str, str, "Spec | None"], ...]

# The fields PostgreSQL can render, by type, with the object field's type where there is one.
RENDERABLE: dict[str, dict[str, str | None]] = {
    "ServiceOrder": {
        "__typename": None,
        "id": None,
        "sodNumber": None,
        "status": None,
        "createdAt": None,
        "updatedAt": None,
        "totalAmount": None,
        "currency": None,
        "description": None,
        "customer": "Customer",
    },
    "Customer": {"__typename": None, "id": None, "code": None, "name": None},
}
# A longer response name is left to Python: the same bound as a column alias has (63 bytes),
# so that no selection grows a statement's text without end.
MAX_NAME = 63
# The type a rendered value is: its JSON holds the others (RENDERABLE's object fields).
ROOT = "ServiceOrder"

_interned: dict[Spec, Spec] = {}


def intern(spec: Spec) -> Spec:
    """The one instance of an equal spec, so that completers compare specs by identity."""
    if len(_interned) > 10_000:
        _interned.clear()
    return _interned.setdefault(spec, spec)


def renderable(type_name: str, field: str, response_name: str, arguments: object, directives: object) -> bool:
    """Whether a selected field (its type's name, the field's name, its response name and
    the AST node's arguments and directives) may be printed by PostgreSQL: one test for the
    resolver's reading of the document and the compiled completer's of its grouped fields."""
    return (
        field in RENDERABLE[type_name] and not arguments and not directives and len(response_name.encode()) <= MAX_NAME
    )


def nodes_of(spec: Spec) -> int:
    """The JSON objects one rendered value holds (for actualNodes): itself and its objects."""
    return 1 + sum(nodes_of(sub) for _, _, sub in spec if sub is not None)


# Each renderable field (RENDERABLE) as an expression over the page's
# row `p` and its customer `c`, giving the text its GraphQL scalar serialises to:
# - a global id is base64url("Type:key") without padding (nexes.resolvers.ids; base64 of
#   at most 28 bytes fits one line, so encode() adds no newline);
# - a DateTime is isoformat(timespec="microseconds") in the session's time zone, as
#   psycopg hands it to Python: the offset as +HH:MM (TZH:TZM);
# - a Decimal is format(value, "f"): the digits of numeric's own text;
# - a Status is its name, which is the enum's text.
def _global_id(type_name: str, key: sql.Composable) -> list[str | sql.Composable]:
    """base64url("Type:key"): the whole groups of three bytes of "Type:" are encoded here,
    once, and only the rest with the key by PostgreSQL (half the cost per row). The rest is
    ASCII digits and at most two characters of a type name, so its cast to bytea reads no
    escape."""
    prefix = f"{type_name}:".encode()
    whole = len(prefix) // 3 * 3
    constant = base64.urlsafe_b64encode(prefix[:whole]).decode()
    tail = prefix[whole:]
    encoded = sql.SQL("encode(({} || {}::text)::bytea, 'base64')").format(sql.Literal(tail.decode()), key)
    if not _plain_base64(tail + b"-0123456789"):
        encoded = sql.SQL("translate({}, '+/', '-_')").format(encoded)
    return [constant, sql.SQL("rtrim({}, '=')").format(encoded)]


def _plain_base64(alphabet: bytes) -> bool:
    """Whether base64 of any text made of these bytes has no '+' or '/' (so base64url is the
    same text, and translate() can be left out: 1-4% of read 5's pages statement under
    pgbench, bench/README.md). Every output character comes from one group of three input
    bytes, so checking every group of three of them checks every text."""
    return not any(
        c in b"+/" for group in itertools.product(alphabet, repeat=3) for c in base64.b64encode(bytes(group))
    )


def _timestamp(column: sql.Composable) -> sql.Composed:
    return sql.SQL("to_char({}, 'YYYY-MM-DD\"T\"HH24:MI:SS.USTZH:TZM')").format(column)


# Values Python cannot hold or prints otherwise: a timestamp outside years 1-9999 (or
# infinite) fails in psycopg, and an offset with seconds (local mean time before 1900 in
# some zones) has isoformat print its seconds. Such a row is not rendered: its order takes
# the ordinary path, which answers as it always did.
# date_part, not extract: with extract's numeric result the statement of read 5's pages
# served 6-10% fewer per second (pgbench, bench/README.md); date_part's float8 holds the
# offset's seconds exactly.
def printable(column: sql.Composable) -> sql.Composed:
    return sql.SQL(
        "{c} >= '0001-01-02 00:00:00+00' AND {c} < '9999-12-30 00:00:00+00' "
        "AND mod(date_part('timezone', {c})::int, 60) = 0"
    ).format(c=column)


# Each a value, or a global id's tokens (constant text and the value's).
_FIELDS: dict[str, dict[str, sql.Composable | list[str | sql.Composable]]] = {
    "ServiceOrder": {
        "id": _global_id("ServiceOrder", sql.SQL("p.id")),
        "sodNumber": sql.SQL("p.sod_number"),
        "status": sql.SQL("p.status::text"),
        "createdAt": _timestamp(sql.SQL("p.created_at")),
        "updatedAt": _timestamp(sql.SQL("p.updated_at")),
        "totalAmount": sql.SQL("p.total_amount::text"),
        "currency": sql.SQL("p.currency"),
        "description": sql.SQL("p.description"),
    },
    "Customer": {
        "id": _global_id("Customer", sql.SQL("p.customer_id")),
        "code": sql.SQL("c.code"),
        "name": sql.SQL("c.name"),
    },
}
# Values whose text needs no JSON escaping (base64url, digits and signs, an enum's name):
# quoted as they are, which costs less than to_json().
_PLAIN_TEXT = {"id", "status", "createdAt", "updatedAt", "totalAmount"}
_CHECKS: dict[str, sql.Composable] = {
    "createdAt": printable(sql.SQL("p.created_at")),
    "updatedAt": printable(sql.SQL("p.updated_at")),
}


def rendered_column(spec: Spec) -> sql.Composed:
    """The order's JSON for `spec` as text, or NULL for a row `printable` refuses.

    The text is concatenated: constant keys, and each value through to_json(), which
    escapes it as JSON (or in quotes as it is, for _PLAIN_TEXT). row_to_json over a
    subquery printed the same, but planning its subplans doubled the page's planning time
    (1.0 -> 1.9 ms for 20 customers' pages), and json_build_object prints spaces
    (`{"a" : 1, "b" : 2}`). A NULL value makes the whole text NULL, so a row the schema
    would refuse (a null in a non-null field) is left to Python, which reports it as it
    always did."""
    checks = [_CHECKS[field] for _, field, _ in spec if field in _CHECKS]
    pieces: list[sql.Composable] = []
    text = ""
    for token in _tokens(ROOT, spec):
        if isinstance(token, str):
            text += token
            continue
        if text:
            pieces.append(sql.Literal(text))
            text = ""
        pieces.append(token)
    if text:
        pieces.append(sql.Literal(text))
    value = sql.SQL("({})").format(sql.SQL(" || ").join(pieces))
    if not checks:
        return value
    return sql.SQL("CASE WHEN {} THEN {} END").format(sql.SQL(" AND ").join(checks), value)


def _tokens(type_name: str, spec: Spec) -> list[str | sql.Composable]:
    """One object's JSON: constant text (str) and values (SQL giving JSON text), `{` to `}`."""
    fields = RENDERABLE[type_name]
    out: list[str | sql.Composable] = ["{"]
    for i, (response_name, field, sub) in enumerate(spec):
        if field not in fields or len(response_name.encode()) > MAX_NAME or (sub is None) != (fields[field] is None):
            raise ValueError(f"{type_name}.{field} as {response_name!r} cannot be rendered")
        out.append(("," if i else "") + orjson.dumps(response_name).decode() + ":")
        inner = fields[field]
        if field == "__typename":
            out.append(orjson.dumps(type_name).decode())
        elif inner is None or sub is None:
            value = _FIELDS[type_name][field]
            if field in _PLAIN_TEXT:
                out += ['"', *(value if isinstance(value, list) else [value]), '"']
            else:
                assert not isinstance(value, list)
                out.append(sql.SQL("to_json({})::text").format(value))
        else:
            out += _tokens(inner, sub)
    out.append("}")
    return out
