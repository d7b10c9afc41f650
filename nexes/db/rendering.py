"""The SQL side of rendering (nexes.schema.rendered): which fields of which types PostgreSQL
can print exactly as their GraphQL scalars do, and the expression that prints a page's row.

A spec is the selection a rendered value stands for: (response name, field name,
sub-selection) per field, in the selection's order. The resolver finds it in the document
(nexes.resolvers.selection.node_render_spec) and the compiled completer in its grouped
fields (nexes.execution.compiled); a rendered value is used only where the two are one spec.
"""

from __future__ import annotations

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
# A response name becomes a column alias, and PostgreSQL cuts identifiers at 63 bytes.
MAX_NAME = 63

_interned: dict[Spec, Spec] = {}


def intern(spec: Spec) -> Spec:
    """The one instance of an equal spec, so that completers compare specs by identity."""
    if len(_interned) > 10_000:
        _interned.clear()
    return _interned.setdefault(spec, spec)


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
def _global_id(type_name: str, key: sql.Composable) -> sql.Composed:
    return sql.SQL("rtrim(translate(encode(convert_to({} || {}::text, 'UTF8'), 'base64'), '+/', '-_'), '=')").format(
        sql.Literal(f"{type_name}:"), key
    )


def _timestamp(column: sql.Composable) -> sql.Composed:
    return sql.SQL("to_char({}, 'YYYY-MM-DD\"T\"HH24:MI:SS.USTZH:TZM')").format(column)


# Values Python cannot hold or prints otherwise: a timestamp outside years 1-9999 (or
# infinite) fails in psycopg, and an offset with seconds (local mean time before 1900 in
# some zones) has isoformat print its seconds. Such a row is not rendered: its order takes
# the ordinary path, which answers as it always did.
def printable(column: sql.Composable) -> sql.Composed:
    return sql.SQL(
        "{c} >= '0001-01-02 00:00:00+00' AND {c} < '9999-12-30 00:00:00+00' "
        "AND mod(extract(timezone FROM {c})::int, 60) = 0"
    ).format(c=column)


_FIELDS: dict[str, dict[str, sql.Composable]] = {
    "ServiceOrder": {
        "__typename": sql.Literal("ServiceOrder"),
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
        "__typename": sql.Literal("Customer"),
        "id": _global_id("Customer", sql.SQL("p.customer_id")),
        "code": sql.SQL("c.code"),
        "name": sql.SQL("c.name"),
    },
}
_CHECKS: dict[str, sql.Composable] = {
    "createdAt": printable(sql.SQL("p.created_at")),
    "updatedAt": printable(sql.SQL("p.updated_at")),
}


# The subqueries' aliases (r$, x$) are not GraphQL names, so no response name, which becomes
# a column of theirs, can shadow them.
def rendered_column(spec: Spec) -> sql.Composed:
    """The order's JSON for `spec` as text (row_to_json: compact, its keys in the selection's
    order), or NULL for a row `printable` refuses."""
    checks = [_CHECKS[field] for _, field, _ in spec if field in _CHECKS]
    value = sql.SQL("(SELECT row_to_json(r$)::text FROM ({}) AS r$)").format(_object("ServiceOrder", spec))
    if not checks:
        return value
    return sql.SQL("CASE WHEN {} THEN {} END").format(sql.SQL(" AND ").join(checks), value)


def _object(type_name: str, spec: Spec) -> sql.Composed:
    columns = []
    for response_name, field, sub in spec:
        fields = RENDERABLE[type_name]
        if field not in fields or len(response_name.encode()) > MAX_NAME or (sub is None) != (fields[field] is None):
            raise ValueError(f"{type_name}.{field} as {response_name!r} cannot be rendered")
        inner = fields[field]
        if inner is None or sub is None:
            expression: sql.Composable = _FIELDS[type_name][field]
        else:
            expression = sql.SQL("(SELECT row_to_json(x$) FROM ({}) AS x$)").format(_object(inner, sub))
        columns.append(sql.SQL("{} AS {}").format(expression, sql.Identifier(response_name)))
    return sql.SQL("SELECT {}").format(sql.SQL(", ").join(columns))
