"""Read-only queries for ``palaver chats``: every chat the store has seen.

Functions over a :class:`~bridge.store.db.Database` (the ``Store``), one read each; they
never write, so they are safe beside a running ``palaver run``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bridge.store.db import Database
from bridge.store.messages import CHAT_TITLE_NAMESPACE
from bridge.store.sql import all_body


@dataclass(frozen=True, slots=True)
class ChatActivity:
    """One session key's traffic: who, where, how much, what is still to do."""

    session_key: str
    channel: str
    account: str
    chat_kind: str  # "direct" or "group" (a topic is a group with a thread_id)
    chat_id: str
    thread_id: str | None
    sender_id: str | None  # the latest inbound sender (a direct chat's peer)
    sender_name: str | None  # the latest inbound sender's name
    title: str | None  # a group's latest title, where the platform gives one
    last_at: float  # unix seconds of the latest message in or out
    messages: int  # messages in and out
    pending_in: int  # inbound messages not answered yet (received, processing)
    pending_out: int  # replies not delivered yet
    model_choice: str | None  # the chat's stored /model choice


# One statement for both backends: the address columns come from the session key's
# newest message (PostgreSQL has no "bare columns" beside an aggregate, as SQLite has).
_CHATS_SQL = """
SELECT g.session_key, l.channel, l.account, l.chat_kind, l.chat_id, l.thread_id,
       g.last_at, g.messages, g.pending_in, g.pending_out,
       (SELECT s.sender_id FROM messages s WHERE s.session_key = g.session_key
          AND s.direction = 'in' AND s.sender_id IS NOT NULL ORDER BY s.id DESC LIMIT 1)
          AS sender_id,
       (SELECT s.sender_name FROM messages s WHERE s.session_key = g.session_key
          AND s.direction = 'in' AND s.sender_name IS NOT NULL ORDER BY s.id DESC LIMIT 1)
          AS sender_name,
       (SELECT c.value FROM chat_settings c WHERE c.session_key = g.session_key
          AND c.name = 'model') AS model_choice,
       (SELECT k.value FROM kv k WHERE k.namespace = ?
          AND k.key = g.session_key) AS title
FROM (SELECT session_key, MAX(created_at) AS last_at, MAX(id) AS last_id,
             COUNT(*) AS messages,
             COUNT(*) FILTER (WHERE direction = 'in'
                              AND status IN ('received', 'processing')) AS pending_in,
             COUNT(*) FILTER (WHERE direction = 'out' AND status = 'pending') AS pending_out
      FROM messages GROUP BY session_key) g
JOIN messages l ON l.id = g.last_id
ORDER BY g.last_at DESC, g.session_key
"""


def _row(r: Mapping[str, Any]) -> ChatActivity:
    return ChatActivity(
        session_key=r["session_key"], channel=r["channel"], account=r["account"],
        chat_kind=r["chat_kind"], chat_id=r["chat_id"], thread_id=r["thread_id"],
        sender_id=r["sender_id"], sender_name=r["sender_name"], title=r["title"],
        last_at=float(r["last_at"] or 0), messages=int(r["messages"] or 0),
        pending_in=int(r["pending_in"] or 0), pending_out=int(r["pending_out"] or 0),
        model_choice=r["model_choice"])


async def chat_activity(store: Database) -> list[ChatActivity]:
    """Every session key with at least one message, the most recently active first."""

    return [_row(r) for r in await store.read_with(all_body(_CHATS_SQL,
                                                          CHAT_TITLE_NAMESPACE))]


async def chat_by_session_key(store: Database, session_key: str) -> ChatActivity | None:
    """One chat's activity (``None``: the store has no message of it)."""
    for chat in await chat_activity(store):  # small tables; one query keeps one shape
        if chat.session_key == session_key:
            return chat
    return None
