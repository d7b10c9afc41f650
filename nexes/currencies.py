"""ISO 4217 currency codes.

The list comes from pycountry (the iso-codes data that Debian maintains), not from a
table kept by hand here, which would go stale as codes are added and withdrawn.
"""

from __future__ import annotations

import pycountry

CODES: frozenset[str] = frozenset(str(c.alpha_3) for c in pycountry.currencies)


def is_currency(code: str) -> bool:
    """Whether `code` is an ISO 4217 alphabetic code as written (upper case: EUR, USD)."""
    return code in CODES
