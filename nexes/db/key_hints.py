"""Where an order lives, remembered: its id's created_at, so that reading an order by id can
skip the key table's round trip.

Why it is safe: an order's created_at never changes, ids are never reused and orders are
never deleted (docs/design.md, "Global identity"), so a pair (id, created_at) read from
service_order_key stays true. The order is still read from the database, whose grants and
snapshot decide what is seen; a hint only names the partition. A hint can name an order
that is not there: one read inside a transaction that then rolled back, or a database
restored to before the order. Then nothing is found at the hinted key (its id is never
given to another order), and the reader drops the hint and asks the key table: a wrong hint
costs a round trip and never gives a wrong answer.

Why: node(id) on an order took two round trips, the key table's, then the order's and its
lines' statements together; the second alone is the same work as the peer's one statement
(bench/README.md, "Seventh session on issue 21").

Cost: at most MAX_HINTS ids per database in a process, least recently used dropped first:
185 bytes an id (tracemalloc, 100,000 ids), so at most 9 MB for one database. Who: whoever
reads orders by id in this process; the hints name no more than an id and an instant, and
are never sent to a client.

An OrderedDict, as the token and document caches here are: cachetools is not a dependency,
and the least-recently-used order is the whole of what is needed.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from datetime import datetime

MAX_HINTS = 50_000


class KeyHints:
    """id -> created_at per database, at most `size` ids each, least recently used dropped first."""

    def __init__(self, size: int = MAX_HINTS) -> None:
        self.size = size
        self._at: dict[str, OrderedDict[int, datetime]] = {}

    def __len__(self) -> int:
        return sum(len(known) for known in self._at.values())

    def keys_of(self, database: str, ids: Sequence[int]) -> list[tuple[int, datetime]] | None:
        """(id, created_at) of every id, or None when any is not known."""
        known = self._at.get(database)
        if known is None:
            return None if ids else []
        found = []
        for i in dict.fromkeys(ids):
            when = known.get(i)
            if when is None:
                return None
            known.move_to_end(i)
            found.append((i, when))
        return found

    def remember(self, database: str, keys: Iterable[tuple[int, datetime]]) -> None:
        known = self._at.setdefault(database, OrderedDict())
        for i, when in keys:
            known[i] = when
            known.move_to_end(i)
        while len(known) > self.size:
            known.popitem(last=False)

    def forget(self, database: str, ids: Iterable[int]) -> None:
        known = self._at.get(database)
        if known is None:
            return
        for i in ids:
            known.pop(i, None)

    def clear(self) -> None:
        self._at.clear()


# One per process: every connection of this process to a database shares what it learnt.
ORDER_KEYS = KeyHints()
