"""Sessions: the active conversation of a session key, its end (/new) and its summary."""

from __future__ import annotations

import time

from bridge.store.db import Database
from bridge.store.records import SessionRecord, session_from_row
from bridge.store.sql import Body, one_body, run_body, val

_session = session_from_row


class SessionQueries(Database):
    async def active_session(self, session_key: str) -> SessionRecord | None:
        """The open session of a key (``None`` before its first claimed message)."""
        row = await self.read_with(one_body(
            "SELECT * FROM sessions WHERE session_key = ? AND ended_at IS NULL", session_key))
        return _session(row) if row else None

    async def session(self, session_id: int) -> SessionRecord | None:
        row = await self.read_with(one_body("SELECT * FROM sessions WHERE id = ?", session_id))
        return _session(row) if row else None

    async def end_session(self, session_key: str) -> bool:
        """End the key's open session (``/new``); the next claim opens a fresh one."""
        return await self.atomically(run_body(
            "UPDATE sessions SET ended_at = ? WHERE session_key = ? AND ended_at IS NULL",
            time.time(), session_key)) > 0

    async def save_summary(self, session_id: int, summary: str, through_turn: int) -> None:
        """Compaction: ``summary`` replaces every turn up to ``through_turn``."""
        await self.atomically(run_body(
            "UPDATE sessions SET summary = ?, summary_through_turn = ? WHERE id = ?",
            summary, through_turn, session_id))

    async def session_stats(self, session_id: int) -> dict[str, int]:
        """Counts for /status: answered turns and messages in the session."""
        def read() -> Body[dict[str, int]]:
            turns = yield val(
                "SELECT COUNT(*) FROM turns WHERE session_id = ? AND kind = 'chat'"
                " AND status = 'answered'", session_id)
            messages = yield val("SELECT COUNT(*) FROM messages WHERE session_id = ?",
                                 session_id)
            return {"turns": int(turns or 0), "messages": int(messages or 0)}

        return await self.read_with(read())
