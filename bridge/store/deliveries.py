"""Chunk progress of replies being delivered: which chunks already went out."""

from __future__ import annotations

import sqlite3
import time

from bridge.store.db import Database


class DeliveryQueries(Database):
    async def record_chunk_sent(self, message_id: int, index: int, platform_id: str) -> None:
        """Chunk ``index`` of reply ``message_id`` was accepted by the platform.

        A committed write survives a crash of the process (WAL); a power cut may lose the
        last few, and those chunks go again (at least once per chunk), so no extra sync.
        """
        now = time.time()
        await self.atomically(lambda db: db.execute(
            "INSERT INTO reply_chunks (message_id, chunk_index, platform_id, sent_at)"
            " VALUES (?, ?, ?, ?) ON CONFLICT (message_id, chunk_index) DO UPDATE SET"
            " platform_id = excluded.platform_id, sent_at = excluded.sent_at",
            (message_id, index, platform_id, now)))

    async def chunks_sent(self, message_id: int) -> list[str]:
        """Platform ids of the chunks of a reply already sent, in order: the contiguous
        run from chunk 0 (its length is where a resumed send starts)."""
        def read(db: sqlite3.Connection) -> list[str]:
            ids: list[str] = []
            for index, platform_id in db.execute(
                    "SELECT chunk_index, platform_id FROM reply_chunks WHERE message_id = ?"
                    " ORDER BY chunk_index", (message_id,)):
                if index != len(ids):
                    break
                ids.append(platform_id)
            return ids

        return await self.read_with(read)
