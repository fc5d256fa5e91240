"""The one LRU map Palaver's caches use: bounded by entry count and by total size.

Prompt renderings (:mod:`bridge.prompt`), wire-form turns (:mod:`bridge.models.http`),
history turns (:mod:`bridge.store.messages`) and prepared images (:mod:`bridge.media`)
each keep one.  Not ``cachetools.LRUCache``: it has a single bound (entries *or* summed
size), and on these hot paths — hundreds of hits per turn with a long history — it is
about twice as slow per hit and 2.6 times per insert (``bench/bench_lru.py``); backing
this class with it cost ``bench/bench_pipeline.py``'s 300-turn chat about a tenth of its
throughput and of its late-history latency.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LRU(Generic[K, V]):
    """A map that forgets its least recently used entries beyond ``max_entries`` or
    beyond ``max_size`` summed over the sizes given to :meth:`put` (0: no size bound).

    The entry just put is never the one evicted, so one entry larger than ``max_size``
    stays until the next put.  Not thread-safe (see :class:`ThreadSafeLRU`).
    """

    __slots__ = ("_data", "_size", "max_entries", "max_size")

    def __init__(self, max_entries: int, max_size: int = 0) -> None:
        self.max_entries = max_entries
        self.max_size = max_size
        self._data: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._size = 0

    def __len__(self) -> int:
        return len(self._data)

    @property
    def size(self) -> int:
        """The sizes of the entries held, summed."""
        return self._size

    def get(self, key: K) -> V | None:
        """The value under ``key`` (now the most recently used), or None."""
        found = self._data.get(key)
        if found is None:
            return None
        self._data.move_to_end(key)
        return found[0]

    def peek(self, key: K) -> V | None:
        """The value under ``key``, or None, without counting as a use."""
        found = self._data.get(key)
        return None if found is None else found[0]

    def values(self) -> list[V]:
        """The values held, least recently used first."""
        return [value for value, _size in self._data.values()]

    def put(self, key: K, value: V, size: int = 0) -> None:
        """Store ``value`` under ``key`` (replacing any), then evict beyond the bounds."""
        data = self._data
        old = data.pop(key, None)
        if old is not None:
            self._size -= old[1]
        data[key] = (value, size)
        self._size += size
        while len(data) > 1 and (len(data) > self.max_entries
                                 or (self.max_size and self._size > self.max_size)):
            _key, (_value, dropped) = data.popitem(last=False)
            self._size -= dropped

    def clear(self) -> None:
        """Forget every entry."""
        self._data.clear()
        self._size = 0


class ThreadSafeLRU(LRU[K, V]):
    """:class:`LRU` for callers on several threads (one lock around each operation)."""

    __slots__ = ("_lock",)

    def __init__(self, max_entries: int, max_size: int = 0) -> None:
        super().__init__(max_entries, max_size)
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            return super().get(key)

    def peek(self, key: K) -> V | None:
        with self._lock:
            return super().peek(key)

    def values(self) -> list[V]:
        with self._lock:
            return super().values()

    def put(self, key: K, value: V, size: int = 0) -> None:
        with self._lock:
            super().put(key, value, size)

    def clear(self) -> None:
        with self._lock:
            super().clear()
