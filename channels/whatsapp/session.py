"""Where whatsmeow keeps the linked device's keys: a SQLite file, or Palaver's PostgreSQL.

Alone, the session is ``<dataDir>/whatsapp/session.db``.  With the store on PostgreSQL
several Palavers share one account and any of them may have to take the connection
over, so the keys live in that PostgreSQL database, in a schema of their own
(``whatsmeow``), where neonize opens them itself.  Facts this is built on (neonize
0.5.2's Go library, checked against the real ``.so``):

- Go's ``getDB(name)`` takes ``name`` as a SQLite file unless it starts with
  ``postgres``; then it is a lib/pq URL (``sqlstore.New("postgres", name)``), upgraded
  (17 ``whatsmeow_*`` tables) in the first schema of the ``search_path``.
- lib/pq's ``sslmode`` defaults to ``require`` (asyncpg's, and libpq's, to ``prefer``):
  against a server without SSL every call then fails with "pq: SSL is not enabled on
  the server" (and neonize's ``get_all_devices_from_db`` raises ``ValueError`` splitting
  that text on commas).  lib/pq 1.12 takes ``disable``, ``allow``, ``prefer``,
  ``require``, ``verify-ca`` and ``verify-full``, so the store URL's own ``sslmode`` is
  kept and a missing one becomes ``prefer`` (``$PGSSLMODE`` when set), as asyncpg does.
- lib/pq sends every query parameter that is not one of its own settings to the server
  as a run-time parameter: ``search_path=whatsmeow`` puts the tables in that schema, which
  must exist first ("no schema has been selected to create in" otherwise), so
  :meth:`SessionStore.prepare` creates it.  asyncpg-only parameters that lib/pq would
  send on as (unknown) run-time parameters are dropped.
- whatsmeow's upgrade looks for its version table by name in any schema: a database
  whose ``public`` schema already holds ``whatsmeow_*`` tables confuses it.  One schema
  of their own keeps them apart from Palaver's tables too (``palaver store copy`` and
  the migrations see only Palaver's).

The URL carries the password: it is registered for redaction, and what is shown
(:attr:`SessionStore.label`, errors) never contains the URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from bridge.config.schema import Config
    from bridge.store.db import Database
    from channels.whatsapp.client import LinkedDevice

log = logging.getLogger(__name__)

SCHEMA = "whatsmeow"  # the PostgreSQL schema of whatsmeow's tables
SESSION_DIR = "whatsapp"  # under dataDir: the SQLite session and the adapter's files
SESSION_DB = "session.db"

# Query parameters asyncpg understands and lib/pq does not (lib/pq would send them to
# the server as run-time parameters, which the server refuses).
_ASYNCPG_ONLY = frozenset({"sslcrl", "ssl_min_protocol_version",
                           "ssl_max_protocol_version", "gsslib", "server_settings"})
# lib/pq 1.12's sslmode values (asyncpg's are the same six).
_SSLMODES = frozenset({"disable", "allow", "prefer", "require", "verify-ca", "verify-full"})


class KeyValue(Protocol):
    """The store's key-value table (``bridge.store.settings``): where the adapter keeps
    what it learns (the LID map, the quote journal) when several Palavers share the
    account, so the next leader knows it too."""

    async def kv_set(self, namespace: str, key: str, value: str | None) -> None: ...

    async def kv_items(self, namespace: str) -> dict[str, str]: ...


class SessionStoreError(ValueError):
    """The store URL cannot be used for the session (the message never holds it)."""


def lib_pq_url(url: str, *, schema: str = SCHEMA) -> str:
    """Palaver's store URL (asyncpg's form) as the lib/pq URL neonize opens: the same
    server, database and credentials, ``sslmode`` explicit, ``search_path`` = ``schema``."""
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("postgresql", "postgres"):
        raise SessionStoreError("the store URL is not a postgresql:// URL")
    query = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
             if k not in _ASYNCPG_ONLY and k not in ("search_path", "sslmode")]
    given = dict(urllib.parse.parse_qsl(parts.query)).get("sslmode")
    sslmode = (given or os.environ.get("PGSSLMODE") or "prefer").strip().lower()
    if sslmode not in _SSLMODES:
        raise SessionStoreError(f"store URL: sslmode={sslmode!r} is not one of "
                                f"{', '.join(sorted(_SSLMODES))}")
    query += [("sslmode", sslmode), ("search_path", schema)]
    return urllib.parse.urlunsplit(("postgresql", parts.netloc, parts.path,
                                    urllib.parse.urlencode(query), ""))


def _where(url: str) -> str:
    """``host:port/db`` of a PostgreSQL URL (no user, no password)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or "localhost"
    port = f":{parts.port}" if parts.port else ""
    return f"{host}{port}{parts.path or '/'}"


@dataclass(frozen=True)
class SessionStore:
    """Where whatsmeow keeps this Palaver's linked device.

    ``path`` is the SQLite file (None on PostgreSQL); ``url`` the store's PostgreSQL URL
    in asyncpg's form (a secret: never shown).  ``files`` is the directory of the
    adapter's own files (``<dataDir>/whatsapp``: the LID map and quote journal on SQLite).
    """

    files: Path
    path: Path | None = None
    url: str | None = field(default=None, repr=False)
    schema: str = SCHEMA
    # The running Palaver's store (None: the commands open their own when needed).
    db: Database | None = field(default=None, repr=False, compare=False)

    @classmethod
    def sqlite(cls, data_dir: Path) -> SessionStore:
        files = Path(data_dir) / SESSION_DIR
        return cls(files=files, path=files / SESSION_DB)

    @classmethod
    def postgres(cls, url: str, data_dir: Path, *, schema: str = SCHEMA,
                 db: Database | None = None) -> SessionStore:
        from bridge.logs import register_secret

        password = urllib.parse.urlsplit(url).password
        if password:
            register_secret(password)
        store = cls(files=Path(data_dir) / SESSION_DIR, url=url, schema=schema, db=db)
        lib_pq_url(url, schema=schema)  # refuse an unusable URL now, not in Go
        return store

    @classmethod
    def for_config(cls, config: Config, *, db: Database | None = None) -> SessionStore:
        """PostgreSQL when the config's store is (``store.url`` or
        ``$PALAVER_DATABASE_URL``; ``db``: that store, open), else the SQLite file in
        ``dataDir``."""
        from bridge.store import database_url

        url = database_url(config)
        if url is None:
            return cls.sqlite(config.data_dir)
        return cls.postgres(url, config.data_dir, db=db)

    @property
    def shared(self) -> bool:
        """On PostgreSQL: every Palaver of the cluster sees the same device."""
        return self.url is not None

    @property
    def neonize_name(self) -> str:
        """What neonize's ``getDB`` is given (the lib/pq URL is a secret)."""
        if self.url is None:
            assert self.path is not None
            return str(self.path)
        return lib_pq_url(self.url, schema=self.schema)

    @property
    def label(self) -> str:
        """Where the session is, fit for logs and health (no credentials)."""
        if self.url is None:
            return str(self.path)
        return f"PostgreSQL {_where(self.url)} (schema {self.schema})"

    @property
    def location(self) -> str:
        """Where to say the session is, for the operator: the directory or database."""
        if self.url is None:
            assert self.path is not None
            return str(self.path.parent)
        return self.label

    async def prepare(self) -> None:
        """Before Go opens it: the directory (SQLite) or the schema (PostgreSQL)."""
        await asyncio.to_thread(self.files.mkdir, parents=True, exist_ok=True)
        if self.url is None:
            return
        from bridge.store.sql import run_body, val_body

        async with self._database() as db:
            exists = await db.read_with(val_body(
                "SELECT 1 FROM pg_namespace WHERE nspname = ?", self.schema))
            if not exists:
                await db.atomically(run_body(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"'))

    async def linked_devices(self) -> list[LinkedDevice]:
        """The devices whatsmeow stored, read without Go (see ``read_linked_devices``)."""
        from bridge.store.sql import all_body, val_body
        from channels.whatsapp.client import LinkedDevice, read_linked_devices

        if self.url is None:
            assert self.path is not None
            return await asyncio.to_thread(read_linked_devices, self.path)
        async with self._database() as db:
            table = await db.read_with(val_body("SELECT to_regclass(?)::text",
                                                f'"{self.schema}".whatsmeow_device'))
            if table is None:  # no schema or no tables yet: nothing linked
                return []
            rows = await db.read_with(all_body(
                "SELECT jid, COALESCE(lid, '') AS lid, COALESCE(push_name, '') AS push,"
                " COALESCE(business_name, '') AS business, COALESCE(platform, '') AS"
                f' platform FROM "{self.schema}".whatsmeow_device ORDER BY jid'))
        return [LinkedDevice(str(r["jid"]), str(r["lid"]), str(r["push"]),
                             str(r["business"]), str(r["platform"])) for r in rows]

    async def forget(self) -> bool:
        """Delete the stored session (after a logout); whether there was one.

        SQLite: the database files.  PostgreSQL: the device rows (whatsmeow's other
        tables cascade from ``whatsmeow_device``)."""
        if self.url is None:
            assert self.path is not None
            return bool(await asyncio.to_thread(remove_session_files, self.path))
        from bridge.store.sql import run_body, val_body

        async with self._database() as db:
            table = await db.read_with(val_body("SELECT to_regclass(?)::text",
                                                f'"{self.schema}".whatsmeow_device'))
            if table is None:
                return False
            deleted = await db.atomically(run_body(
                f'DELETE FROM "{self.schema}".whatsmeow_device'))
        return bool(deleted)

    @contextlib.asynccontextmanager
    async def _database(self) -> AsyncIterator[Database]:
        """The store to read whatsmeow's tables through: ``db`` (the running Palaver's)
        or, for the ``palaver whatsapp`` commands, a small one of their own (opened like
        ``palaver run`` opens it, migrations included).  Errors are the store's
        (``StoreError``: they name the server, never the password)."""
        if self.db is not None:
            yield self.db
            return
        from bridge.store.db import Database

        assert self.url is not None
        db = await Database.open_url(self.url, pool_size=2,
                                     application_name="palaver whatsapp")
        try:
            yield db
        finally:
            with contextlib.suppress(Exception):
                await db.close()


def remove_session_files(db_path: Path) -> list[Path]:
    """Delete a SQLite session database and its journal files; the ones removed."""
    removed = []
    for suffix in ("", "-wal", "-shm", "-journal"):
        path = db_path.with_name(db_path.name + suffix)
        if path.exists():
            path.unlink()
            removed.append(path)
    return removed
