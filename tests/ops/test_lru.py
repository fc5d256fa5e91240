"""bridge.lru: the one LRU map behind the prompt, wire, history and image caches."""

from __future__ import annotations

import threading

from bridge.lru import LRU, ThreadSafeLRU


def test_bounded_by_entries_least_recently_used_first_out():
    cache: LRU[str, int] = LRU(max_entries=2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # "b" is now the least recently used
    cache.put("c", 3)
    assert cache.get("b") is None and cache.values() == [1, 3] and len(cache) == 2


def test_bounded_by_size_and_replacing_a_key_resizes():
    cache: LRU[str, str] = LRU(max_entries=10, max_size=10)
    cache.put("a", "x", 4)
    cache.put("b", "y", 4)
    cache.put("a", "z", 2)  # replaced: 4 + 2
    assert cache.size == 6 and cache.values() == ["y", "z"]
    cache.put("c", "w", 5)  # 11 > 10: the oldest ("b") goes
    assert cache.peek("b") is None and cache.size == 7


def test_the_entry_just_put_is_never_evicted_and_peek_keeps_recency():
    cache: LRU[str, str] = LRU(max_entries=5, max_size=10)
    cache.put("small", "s", 1)
    cache.put("huge", "h", 50)
    assert cache.values() == ["h"] and cache.size == 50
    cache.put("a", "1", 1)
    cache.put("b", "2", 1)  # "huge" went when "a" came; now a, b
    assert cache.peek("a") == "1"  # not a use: "a" stays the oldest
    cache.put("c", "3", 9)  # 11 > 10: "a" goes, not "b"
    assert cache.values() == ["2", "3"]
    cache.clear()
    assert len(cache) == 0 and cache.size == 0


def test_thread_safe_variant_keeps_its_bounds_under_threads():
    cache: ThreadSafeLRU[int, int] = ThreadSafeLRU(max_entries=64, max_size=1000)

    def work(base: int) -> None:
        for i in range(2000):
            cache.put(base + i, i, 3)
            cache.get(base + i // 2)

    threads = [threading.Thread(target=work, args=(n * 10_000,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(cache) <= 64 and cache.size == 3 * len(cache)
