"""Chunk progress of replies being delivered: which chunks already went out; and the
live previews of answers being written (edit mode), to finish or remove after a crash."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from bridge.envelope import ChatAddress, ChatKind
from bridge.ports import PreviewKey, PreviewMode
from bridge.store.db import Database
from bridge.store.sql import Dialects, all_body, one_body, run_body


@dataclass(frozen=True, slots=True)
class StalePreview:
    """A stored preview no turn will finish: its turn is not running any more and its
    reply (if any) is no longer waiting to be delivered."""

    turn_id: int
    address: ChatAddress
    key: PreviewKey


class DeliveryQueries(Database):
    async def record_chunk_sent(self, message_id: int, index: int, platform_id: str) -> None:
        """Chunk ``index`` of reply ``message_id`` was accepted by the platform.

        A committed write survives a crash of the process (WAL); a power cut may lose the
        last few, and those chunks go again (at least once per chunk), so no extra sync.
        """
        now = time.time()
        await self.atomically(run_body(
            "INSERT INTO reply_chunks (message_id, chunk_index, platform_id, sent_at)"
            " VALUES (?, ?, ?, ?) ON CONFLICT (message_id, chunk_index) DO UPDATE SET"
            " platform_id = excluded.platform_id, sent_at = excluded.sent_at",
            message_id, index, platform_id, now))

    async def chunks_sent(self, message_id: int) -> list[str]:
        """Platform ids of the chunks of a reply already sent, in order: the contiguous
        run from chunk 0 (its length is where a resumed send starts)."""
        rows = await self.read_with(all_body(
            "SELECT chunk_index, platform_id FROM reply_chunks WHERE message_id = ?"
            " ORDER BY chunk_index", message_id))
        ids: list[str] = []
        for index, platform_id in rows:
            if index != len(ids):
                break
            ids.append(platform_id)
        return ids

    # -- live previews (issue 17) ----------------------------------------------------

    async def save_preview(self, turn_id: int, address: ChatAddress, key: PreviewKey) -> None:
        """Remember turn ``turn_id``'s preview message (before it is updated again)."""
        now = time.time()
        await self.atomically(run_body(
            _SAVE_PREVIEW, address.channel, address.account, address.chat_id,
            address.chat_kind.value, address.thread_id, key.mode.value, key.platform_id,
            now, turn_id))

    async def preview_for_turn(self, turn_id: int) -> PreviewKey | None:
        """The stored preview of a turn, if it has one."""
        row = await self.read_with(one_body(
            "SELECT mode, platform_id FROM reply_previews WHERE turn_id = ?", turn_id))
        return None if row is None else PreviewKey(PreviewMode(row[0]), row[1])

    async def drop_preview(self, turn_id: int) -> None:
        """Forget a turn's preview (it became the reply, or was removed)."""
        await self.atomically(run_body("DELETE FROM reply_previews WHERE turn_id = ?", turn_id))

    async def stale_previews(self, channels: Iterable[tuple[str, str]]) -> list[StalePreview]:
        """Previews of the given ``(channel, account)`` pairs that nothing will finish:
        the turn ended without a reply still to deliver (interrupted by a crash, stopped,
        or its reply already sent or failed)."""
        pairs = list(channels)
        if not pairs:
            return []
        where = " OR ".join("(p.channel = ? AND p.account = ?)" for _ in pairs)
        params = [part for pair in pairs for part in pair]

        rows = await self.read_with(all_body(
            "SELECT p.* FROM reply_previews p JOIN turns t ON t.id = p.turn_id"
            f" WHERE ({where}) AND t.status != 'running' AND NOT EXISTS (SELECT 1 FROM"
            " messages m WHERE m.turn_id = p.turn_id AND m.direction = 'out'"
            " AND m.status = 'pending') ORDER BY p.turn_id", *params))
        return [StalePreview(
            turn_id=r["turn_id"],
            address=ChatAddress(r["channel"], r["account"], r["chat_id"],
                                ChatKind(r["chat_kind"]), r["thread_id"]),
            key=PreviewKey(PreviewMode(r["mode"]), r["platform_id"])) for r in rows]


# The select list's parameters have no column to take a type from on PostgreSQL (it would
# read them as text): cast there.
_SAVE_PREVIEW = Dialects(
    sqlite="INSERT INTO reply_previews (turn_id, session_key, channel, account, chat_id,"
           " chat_kind, thread_id, mode, platform_id, created_at)"
           " SELECT id, session_key, ?, ?, ?, ?, ?, ?, ?, ? FROM turns WHERE id = ?"
           " ON CONFLICT (turn_id) DO UPDATE SET mode = excluded.mode,"
           " platform_id = excluded.platform_id",
    postgresql="INSERT INTO reply_previews (turn_id, session_key, channel, account, chat_id,"
               " chat_kind, thread_id, mode, platform_id, created_at)"
               " SELECT id, session_key, ?::text, ?::text, ?::text, ?::text, ?::text,"
               " ?::text, ?::text, ?::float8 FROM turns WHERE id = ?"
               " ON CONFLICT (turn_id) DO UPDATE SET mode = excluded.mode,"
               " platform_id = excluded.platform_id")



