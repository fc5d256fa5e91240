"""LRU caches: the hand-rolled OrderedDict pattern against cachetools.LRUCache.

Needs ``pip install cachetools`` (not a dependency of Palaver: it lost this comparison).

Palaver keeps four LRUs bounded by entries *and* by size (prompt renderings, wire turns,
history turns: 4096 entries / 4M chars; prepared images: 256 entries / 32 MB).  This times
the operations they do per turn — a hit (get + recency update), a miss, and a put that
evicts — at those sizes, for:

- ``ordereddict``: ``OrderedDict`` + ``move_to_end`` / ``popitem(last=False)`` inline;
- ``cachetools``: ``cachetools.LRUCache`` with ``getsizeof`` (size bound) and the entry
  bound added in ``__setitem__`` (cachetools has one bound per cache).

Run: ``.venv/bin/python bench/bench_lru.py`` (ns per operation, best of 5).
"""

from __future__ import annotations

import timeit
from collections import OrderedDict
from typing import Any

import cachetools

ENTRIES = 4096
MAX_SIZE = 4_000_000
SIZE = 500  # a typical text turn's characters


class OrderedLRU:
    """The pattern of bridge/prompt.py, bridge/models/http.py, bridge/store/messages.py."""

    def __init__(self, max_entries: int, max_size: int) -> None:
        self.max_entries, self.max_size = max_entries, max_size
        self._data: OrderedDict[Any, tuple[Any, int]] = OrderedDict()
        self._size = 0

    def get(self, key: Any) -> Any:
        found = self._data.get(key)
        if found is None:
            return None
        self._data.move_to_end(key)
        return found[0]

    def put(self, key: Any, value: Any, size: int) -> None:
        old = self._data.pop(key, None)
        if old is not None:
            self._size -= old[1]
        self._data[key] = (value, size)
        self._size += size
        while len(self._data) > self.max_entries or self._size > self.max_size:
            _key, (_value, dropped) = self._data.popitem(last=False)
            self._size -= dropped


class ToolsLRU(cachetools.LRUCache):  # type: ignore[type-arg]
    """cachetools' LRU (size bound by getsizeof) plus an entry bound."""

    def __init__(self, max_entries: int, max_size: int) -> None:
        super().__init__(max_size, getsizeof=lambda v: v[1])
        self.max_entries = max_entries

    def put(self, key: Any, value: Any, size: int) -> None:
        self[key] = (value, size)
        while len(self) > self.max_entries:
            self.popitem()

    def get_value(self, key: Any) -> Any:
        found = self.get(key)
        return None if found is None else found[0]


def measure(cache: Any, get: Any) -> dict[str, float]:
    for i in range(ENTRIES):
        cache.put(i, object(), SIZE)
    keys = list(range(ENTRIES))
    n = 200_000

    def hits() -> None:
        for k in keys:
            get(k)

    def misses() -> None:
        for k in keys:
            get(-1 - k)

    counter = iter(range(ENTRIES, 10**9))

    def puts() -> None:
        for _ in range(ENTRIES):
            cache.put(next(counter), None, SIZE)

    out = {}
    for name, fn in (("hit", hits), ("miss", misses), ("put+evict", puts)):
        reps = max(1, n // ENTRIES)
        best = min(timeit.repeat(fn, number=reps, repeat=5))
        out[name] = best / (reps * ENTRIES) * 1e9
    return out


def main() -> None:
    old = OrderedLRU(ENTRIES, MAX_SIZE)
    new = ToolsLRU(ENTRIES, MAX_SIZE)
    results = {"ordereddict": measure(old, old.get),
               "cachetools": measure(new, new.get_value)}
    print(f"LRU at {ENTRIES} entries, {SIZE}-char values (ns per operation, best of 5)")
    print(f"{'operation':<12}{'ordereddict':>14}{'cachetools':>14}{'ratio':>8}")
    for op in ("hit", "miss", "put+evict"):
        a, b = results["ordereddict"][op], results["cachetools"][op]
        print(f"{op:<12}{a:>14.0f}{b:>14.0f}{b / a:>8.2f}")


if __name__ == "__main__":
    main()
