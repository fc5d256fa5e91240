"""Sessions: the active conversation of a session key, its end (/new) and its summary."""

from __future__ import annotations

import time

from bridge.store.db import Database
from bridge.store.records import SessionRecord, session_from_row

_session = session_from_row


class SessionQueries(Database):
    async def active_session(self, session_key: str) -> SessionRecord | None:
        """The open session of a key (``None`` before its first claimed message)."""
        async with self.reading() as db:
            cur = await db.execute(
                "SELECT * FROM sessions WHERE session_key = ? AND ended_at IS NULL",
                (session_key,))
            row = await cur.fetchone()
        return _session(row) if row else None

    async def session(self, session_id: int) -> SessionRecord | None:
        row = await self.read_with(lambda db: db.execute(
            "SELECT * FROM sessions WHERE id = ?", (session_id,)).fetchone())
        return _session(row) if row else None

    async def end_session(self, session_key: str) -> bool:
        """End the key's open session (``/new``); the next claim opens a fresh one."""
        async with self.transaction() as db:
            cur = await db.execute(
                "UPDATE sessions SET ended_at = ? WHERE session_key = ? AND ended_at IS NULL",
                (time.time(), session_key))
            return cur.rowcount > 0

    async def save_summary(self, session_id: int, summary: str, through_turn: int) -> None:
        """Compaction: ``summary`` replaces every turn up to ``through_turn``."""
        async with self.transaction() as db:
            await db.execute(
                "UPDATE sessions SET summary = ?, summary_through_turn = ? WHERE id = ?",
                (summary, through_turn, session_id))

    async def session_stats(self, session_id: int) -> dict[str, int]:
        """Counts for /status: answered turns and messages in the session."""
        async with self.reading() as db:
            cur = await db.execute(
                "SELECT COUNT(*) FROM turns WHERE session_id = ? AND kind = 'chat'"
                " AND status = 'answered'", (session_id,))
            row = await cur.fetchone()
            turns = row[0] if row is not None else 0  # COUNT(*) always gives one row
            cur = await db.execute(
                "SELECT COUNT(*) FROM messages WHERE session_id = ?", (session_id,))
            row = await cur.fetchone()
            messages = row[0] if row is not None else 0
        return {"turns": turns, "messages": messages}
