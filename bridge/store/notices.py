"""A notice to a chat outside any turn (an owner approved a pairing request: the requester
is told), stored as a pending reply so the outbox delivers it like any other."""

from __future__ import annotations

import time

from bridge.envelope import ChatAddress
from bridge.store.db import Database
from bridge.store.messages import insert_outbound, notify_work
from bridge.store.records import MessageKind
from bridge.store.sql import Body


async def queue_notice(store: Database, address: ChatAddress, session_key: str, text: str,
                       *, kind: MessageKind = MessageKind.PAIRING) -> int:
    """Store ``text`` as a pending reply to ``address`` (session ``session_key``); returns
    its row id.  Delivered by the outbox when the session is next flushed."""
    def tx() -> Body[int]:
        row_id = yield from insert_outbound(
            key=session_key, address=address, text=text, kind=kind, session_id=None,
            turn_id=None, reply_to=None, now=time.time())
        yield from notify_work(session_key, outbound=True)
        return row_id

    return await store.atomically(tx(), durable=True)
