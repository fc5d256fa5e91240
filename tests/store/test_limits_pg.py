"""The limits' admission on PostgreSQL: read-then-write, serialised per chat by an
advisory transaction lock, across connections and processes."""

from __future__ import annotations

import asyncio

from bridge.store import Store
from bridge.usage.limits import LimitGate
from tests.core.helpers import group
from tests.usage.test_limits import Clock, _config


async def test_limits_admission_is_serialised_across_processes(tmp_path, pg_url):
    """Two stores (two pools: two Palavers) admit 30 racing messages of one group with 4
    slots left: exactly 4 pass and the one notice is given once."""
    config = _config(tmp_path, "group", {"messagesPerHour": 4})
    one = await Store.open_url(pg_url, pool_size=8)
    two = await Store.open_url(pg_url, pool_size=8)
    try:
        gates = [LimitGate(s, lambda: config, clock=Clock()) for s in (one, two)]
        verdicts = await asyncio.gather(*(
            gates[n % 2].admit(group(f"race {n}", chat="-100", sender=str(n)))
            for n in range(30)))
        assert sum(v.admitted for v in verdicts) == 4
        assert sum(v.notice is not None for v in verdicts) == 1
    finally:
        await one.close()
        await two.close()


async def test_the_older_query_style_works_on_both_backends(store):
    """``store.reading()`` / ``transaction()`` (``await db.execute(sql, params)``) for the
    callers not yet on bodies (the console's turn list)."""
    async with store.transaction() as db:
        await db.execute("INSERT INTO kv (namespace, key, value, updated_at) VALUES"
                         " (?, ?, ?, ?), (?, ?, ?, ?)", ("n", "a", "1", 1.0, "n", "b", "2", 2.0))
    async with store.reading() as db:
        cur = await db.execute("SELECT key, value FROM kv WHERE namespace = ? AND key IN"
                               " (?, ?) ORDER BY key", ["n", "a", "b"])
        rows = await cur.fetchall()
        cur = await db.execute("SELECT value FROM kv WHERE key = ?", ("zz",))
        missing = await cur.fetchone()
    assert [(r["key"], r[1]) for r in rows] == [("a", "1"), ("b", "2")] and missing is None
