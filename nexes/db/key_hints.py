"""Where an order lives, remembered: its id's created_at, so that reading an order by id can
skip the key table's round trip.

Why it is safe: an order's created_at never changes, ids are never reused and orders are
never deleted (docs/design.md, "Global identity"), so a pair (id, created_at) read from
service_order_key stays true. The order is still read from the database, whose grants and
snapshot decide what is seen; a hint only names the partition. A hint can go wrong only if
the database itself goes back in time (a restore to before the order): then the order is not
found at its hinted key, and the reader drops the hint and asks the key table, so a wrong
hint costs a round trip and never gives a wrong answer.

Why: node(id) on an order took two round trips, the key table's, then the order's and its
lines' statements together; the second alone is the same work as the peer's one statement
(bench/README.md, "Seventh session on issue 21").

Cost: at most MAX_HINTS pairs per process (about 150 bytes each), least recently used
dropped first. Who: whoever reads orders by id in this process; the hints name no more than
an id and an instant, and are never sent to a client.

An OrderedDict, as the token and document caches here are: cachetools is not a dependency,
and the least-recently-used order is the whole of what is needed.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from datetime import datetime

MAX_HINTS = 100_000


class KeyHints:
    """(database, id) -> created_at, bounded, least recently used dropped first."""

    def __init__(self, size: int = MAX_HINTS) -> None:
        self.size = size
        self._at: OrderedDict[tuple[str, int], datetime] = OrderedDict()

    def __len__(self) -> int:
        return len(self._at)

    def keys_of(self, database: str, ids: Sequence[int]) -> list[tuple[int, datetime]] | None:
        """(id, created_at) of every id, or None when any is not known."""
        found = []
        at = self._at
        for i in dict.fromkeys(ids):
            key = (database, i)
            when = at.get(key)
            if when is None:
                return None
            at.move_to_end(key)
            found.append((i, when))
        return found

    def remember(self, database: str, keys: Iterable[tuple[int, datetime]]) -> None:
        at = self._at
        for i, when in keys:
            at[database, i] = when
            at.move_to_end((database, i))
        while len(at) > self.size:
            at.popitem(last=False)

    def forget(self, database: str, ids: Iterable[int]) -> None:
        for i in ids:
            self._at.pop((database, i), None)

    def clear(self) -> None:
        self._at.clear()


# One per process: every connection of this process to a database shares what it learnt.
ORDER_KEYS = KeyHints()
