"""Named SQL blocks in this package's `.sql` files, read once.

A file holds statements, each under a `-- name: <name>` line; the comment lines right
after it describe the statement and are not sent. The text is package data, not
input, so it is typed as a LiteralString like the statements written in the modules.
"""

from __future__ import annotations

import re
from functools import cache
from importlib.resources import files
from typing import LiteralString

_NAME = re.compile(r"^-- name: (\w+)$", re.MULTILINE)


@cache
def load(stem: str) -> dict[str, LiteralString]:
    """The statements of `<stem>.sql`, by name."""
    text = files(__package__).joinpath(f"{stem}.sql").read_text(encoding="utf-8")
    found: dict[str, LiteralString] = {}
    parts = _NAME.split(text)  # [preamble, name, body, name, body, ...]
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        lines = body.strip("\n").splitlines()
        while lines and lines[0].startswith("--"):
            lines.pop(0)
        statement = "\n".join(lines).strip().removesuffix(";")
        found[name] = statement  # package data; mypy reads LiteralString as str
    return found
