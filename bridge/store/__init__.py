"""The durable conversation store: SQLite in the data dir, or PostgreSQL (``store.url``).

``Store`` gathers the query modules: messages and turns (the queue), sessions, per-chat
settings and a key-value store, pairing, chunk progress of deliveries.  Open it with
``await Store.connect(config)`` (the configured backend), ``await Store.open(path)``
(a SQLite file) or ``await Store.open_url(url)`` (PostgreSQL).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from bridge.store.db import (
    Migration,
    SchemaTooNewError,
    StoreError,
    StoreUnavailableError,
    load_migrations,
)
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

if TYPE_CHECKING:
    from bridge.config.schema import Config

DB_FILENAME = "palaver.db"
# The PostgreSQL URL when the config sets none (e.g. from a container's environment).
DATABASE_URL_ENV = "PALAVER_DATABASE_URL"


def database_url(config: Config) -> str | None:
    """The PostgreSQL URL the config selects (``store.url``, else
    ``$PALAVER_DATABASE_URL``), or None: SQLite in the data dir."""
    secret = config.store.url
    url = secret.get_secret_value() if secret is not None else os.environ.get(DATABASE_URL_ENV)
    url = (url or "").strip()
    if not url:
        return None
    if url.split("://", 1)[0] not in ("postgresql", "postgres"):
        raise StoreError("store.url must be a postgresql://user:password@host:port/dbname URL"
                         f" (or leave it unset for SQLite in dataDir); got a {url.split(':')[0]!r}"
                         " URL")
    return url


class Store(MessageQueries, DeliveryQueries, SessionQueries, SettingsQueries, PairingQueries):
    """Every query Palaver makes; one instance per process, shared by all tasks."""

    @classmethod
    async def open_in(cls, data_dir: str | Path) -> Store:
        """Open ``<data_dir>/palaver.db`` (``data_dir`` already expanded, e.g. Config.data_dir)."""
        return await cls.open(Path(data_dir) / DB_FILENAME)

    @classmethod
    async def connect(cls, config: Config, *, application_name: str = "palaver") -> Store:
        """The store ``config`` selects: PostgreSQL at ``store.url`` (or
        ``$PALAVER_DATABASE_URL``) with a pool of ``store.poolSize``, else SQLite in
        ``dataDir``."""
        url = database_url(config)
        if url is None:
            return await cls.open_in(config.data_dir)
        return await cls.open_url(url, pool_size=config.store.poolSize,
                                  application_name=application_name)

    @staticmethod
    def exists(config: Config) -> bool:
        """Whether there may be a store to read (commands that only read: a missing
        SQLite file means "nothing yet"; a PostgreSQL URL always counts)."""
        return database_url(config) is not None or (config.data_dir / DB_FILENAME).exists()


__all__ = [
    "DATABASE_URL_ENV", "DB_FILENAME", "Claim", "Direction", "HistoryTurn", "HistoryWindow",
    "MessageKind", "MessageStatus", "Migration", "OpenWork", "PairingRequest",
    "RecoveryReport", "SchemaTooNewError", "SessionRecord", "Store", "StoreError",
    "StoreUnavailableError", "StoredMessage", "TurnRecord", "database_url", "load_migrations",
]
