"""The domain's input rules, each named once: what a SOD number, a customer code and a
SKU look like, how long a description may be, the line and quantity limits, and the
currency codes. The API's mutations and the import parser check against these (the
database's CHECK constraints in the migrations say the same).

Currency codes come from pycountry (the iso-codes data that Debian maintains), not
from a table kept by hand here, which would go stale as codes are added and withdrawn.
"""

from __future__ import annotations

import re

import pycountry

# SOD numbers and customer codes: 1 to 40 of A-Z, a-z, 0-9 and "-".
SOD_NUMBER = re.compile(r"[A-Za-z0-9-]{1,40}")
CUSTOMER_CODE = re.compile(r"[A-Za-z0-9-]{1,40}")
# SKUs also allow "." and "_".
SKU = re.compile(r"[A-Za-z0-9._-]{1,40}")
MAX_DESCRIPTION = 2_000
MAX_LINES = 999  # line numbers run from 1 to this
MAX_QUANTITY = 1_000_000

CURRENCIES: frozenset[str] = frozenset(str(c.alpha_3) for c in pycountry.currencies)


def is_currency(code: str) -> bool:
    """Whether `code` is an ISO 4217 alphabetic code as written (upper case: EUR, USD)."""
    return code in CURRENCIES
