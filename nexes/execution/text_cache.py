"""The parse and validation caches' store: least recently used first out, bounded by
entries and by the memory of the query texts it keys (NEXES_DOCUMENT_CACHE_BYTES).

functools.lru_cache bounds entries only: 1,000 documents of 1 MB each (the body limit)
held a gigabyte of text, and their syntax trees several times that. cachetools (not a
dependency) bounds by one measure, the values' sizes; here the keys' sizes are what is
known cheaply, so this is a dozen lines of OrderedDict instead.

A text larger than a sixteenth of the budget is never stored (one document must not
empty the cache), only remembered as the last one computed, so that the validation of
the document just parsed does not parse it again. The event loop's one thread uses it:
no lock.
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

V = TypeVar("V")
LARGEST_SHARE = 16  # a text above max_bytes / LARGEST_SHARE is not stored


class TextCache(Generic[V]):
    """`compute(text)`, memoised: at most `max_entries` texts of `max_bytes` together."""

    def __init__(self, compute: Callable[[str], V], max_entries: int, max_bytes: int) -> None:
        self.compute = compute
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0  # sys.getsizeof of the stored texts, summed
        self._entries: OrderedDict[str, V] = OrderedDict()
        self._last: tuple[str, V] | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def __call__(self, text: str) -> V:
        entries = self._entries
        if text in entries:
            entries.move_to_end(text)
            return entries[text]
        last = self._last
        if last is not None and last[0] == text:
            return last[1]
        value = self.compute(text)
        self._store(text, value)
        return value

    def _store(self, text: str, value: V) -> None:
        size = sys.getsizeof(text)
        if size * LARGEST_SHARE > self.max_bytes:
            self._last = (text, value)
            return
        self._last = None
        entries = self._entries
        entries[text] = value
        self.bytes += size
        while len(entries) > self.max_entries or self.bytes > self.max_bytes:
            evicted, _ = entries.popitem(last=False)
            self.bytes -= sys.getsizeof(evicted)
