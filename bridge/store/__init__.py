"""The durable conversation store (SQLite through aiosqlite).

``Store`` gathers the query modules: messages and turns (the queue), sessions, per-chat
settings and a key-value store, pairing, chunk progress of deliveries.  Open it with ``await Store.open(path)``.
"""

from __future__ import annotations

from pathlib import Path

from bridge.store.db import Migration, SchemaTooNewError, StoreError, load_migrations
from bridge.store.deliveries import DeliveryQueries
from bridge.store.messages import MessageQueries
from bridge.store.pairing import PairingQueries
from bridge.store.records import (
    Claim,
    Direction,
    HistoryTurn,
    HistoryWindow,
    MessageKind,
    MessageStatus,
    OpenWork,
    PairingRequest,
    RecoveryReport,
    SessionRecord,
    StoredMessage,
    TurnRecord,
)
from bridge.store.sessions import SessionQueries
from bridge.store.settings import SettingsQueries

DB_FILENAME = "palaver.db"


class Store(MessageQueries, DeliveryQueries, SessionQueries, SettingsQueries, PairingQueries):
    """Every query Palaver makes; one instance per process, shared by all tasks."""

    @classmethod
    async def open_in(cls, data_dir: str | Path) -> Store:
        """Open ``<data_dir>/palaver.db`` (``data_dir`` already expanded, e.g. Config.data_dir)."""
        return await cls.open(Path(data_dir) / DB_FILENAME)


__all__ = [
    "DB_FILENAME", "Claim", "Direction", "HistoryTurn", "HistoryWindow", "MessageKind", "MessageStatus",
    "Migration", "OpenWork", "PairingRequest", "RecoveryReport", "SchemaTooNewError", "SessionRecord", "Store",
    "StoreError", "StoredMessage", "TurnRecord", "load_migrations",
]
