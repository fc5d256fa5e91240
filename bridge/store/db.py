"""The store's base: errors, migrations, and one transaction API over two backends.

``Database`` holds a driver: :class:`~bridge.store.sqlite.SqliteDriver` (one aiosqlite
connection guarded by an asyncio lock, in WAL with foreign keys on and a busy timeout:
another process, e.g. ``palaver pairing``, may open the same file) or
:class:`~bridge.store.pg.PgDriver` (an asyncpg pool).  A query module writes each
transaction once, as a generator body of statement requests (:mod:`bridge.store.sql`),
and hands it to :meth:`Database.atomically` or :meth:`Database.read_with`.

Driver errors that mean "the store cannot take a write now" (disk full, locked,
read-only, unreachable) surface as :class:`StoreUnavailableError`, a :class:`StoreError`,
so the core never needs to know which database is behind the store.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from bridge.store.sql import Body, run

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

T = TypeVar("T")

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 5000
# NORMAL in WAL mode: a commit is safe from a crash of the process, but the last ones can
# be lost to a power cut.  Transactions that must survive even that — storing an inbound
# message, which the channel confirms to the platform right after — ask for
# ``atomically(..., durable=True)`` (synchronous FULL for that commit only).  Losing any
# other commit to a power cut only repeats work (a reply sent twice), never loses it.
# bench/bench_pipeline.py: FULL for every commit costs ~20 % of pipeline throughput,
# durable inbound alone ~11 % (and +0.3 ms per message).  (PostgreSQL: every commit is
# durable, synchronous_commit stays on.)
SYNCHRONOUS = "NORMAL"
_MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class StoreError(Exception):
    """The store cannot be opened or used (message says what and where)."""


class SchemaTooNewError(StoreError):
    """The database was written by a newer Palaver than this one."""


class StoreUnavailableError(StoreError):
    """The store cannot take a write right now (``reason``: "disk full", "database
    locked", "read-only", "database unreachable", "closed", ...): the work must wait,
    not be skipped."""

    def __init__(self, reason: str, message: str | None = None) -> None:
        super().__init__(message or f"store unavailable: {reason}")
        self.reason = reason


# SQLite primary result codes that mean "the store cannot take a write now" (as opposed
# to a bug or a bad row): the message must wait, not be skipped.
_UNAVAILABLE_CODES = {
    5: "database locked",  # SQLITE_BUSY
    6: "database locked",  # SQLITE_LOCKED
    8: "read-only",  # SQLITE_READONLY
    10: "I/O error",  # SQLITE_IOERR
    13: "disk full",  # SQLITE_FULL
    14: "cannot open the database file",  # SQLITE_CANTOPEN
}
_UNAVAILABLE_WORDS = (
    ("disk is full", "disk full"),
    ("database is locked", "database locked"),
    ("database table is locked", "database locked"),
    ("readonly", "read-only"),
    ("read-only", "read-only"),
    ("disk i/o error", "I/O error"),
    ("unable to open database", "cannot open the database file"),
)


def unavailable_reason(exc: BaseException) -> str | None:
    """A short cause when ``exc`` means the store cannot write right now (disk full,
    locked past the busy timeout, read-only, I/O error, unreachable, closed), else
    ``None``."""
    if isinstance(exc, StoreUnavailableError):
        return exc.reason
    if isinstance(exc, StoreError):
        return "closed" if "closed" in str(exc) else None
    if isinstance(exc, sqlite3.OperationalError | sqlite3.DatabaseError):
        code = getattr(exc, "sqlite_errorcode", None)
        if isinstance(code, int) and (code & 0xFF) in _UNAVAILABLE_CODES:
            return _UNAVAILABLE_CODES[code & 0xFF]
        text = str(exc).lower()
        for words, reason in _UNAVAILABLE_WORDS:
            if words in text:
                return reason
        return None
    if "asyncpg" in sys.modules:  # only a PostgreSQL store raises its errors
        from bridge.store.pg import pg_unavailable_reason

        return pg_unavailable_reason(exc)
    return None


def inserted_id(cur: sqlite3.Cursor) -> int:
    """The rowid of the row the INSERT just run on ``cur`` wrote (SQLite only; bodies
    use ``INSERT ... RETURNING id``)."""
    row_id = cur.lastrowid
    if row_id is None:  # sqlite3 sets it after every INSERT; None means no INSERT ran
        raise StoreError("an INSERT wrote no row")
    return row_id


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations(dialect: str = "sqlite") -> list[Migration]:
    """Every ``migrations/NNNN_name.sql`` shipped with the package (PostgreSQL's:
    ``migrations/postgresql/``, the same numbers and names), in version order."""
    found: list[Migration] = []
    folder = resources.files("bridge.store") / "migrations"
    if dialect == "postgresql":
        folder = folder / "postgresql"
    elif dialect != "sqlite":
        raise ValueError(f"unknown dialect {dialect!r}")
    for entry in folder.iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match is None:
            continue
        found.append(Migration(int(match.group(1)), match.group(2), entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    for expected, migration in enumerate(found, start=1):
        if migration.version != expected:
            raise StoreError(f"migration {migration.version:04d} is out of sequence "
                             f"(expected {expected:04d})")
    return found


def too_new(where: str, current: int, known: int) -> SchemaTooNewError:
    other = ("store.url at another database" if "://" in where
             else "dataDir at another directory")
    return SchemaTooNewError(
        f"database {where} has schema version {current}, but this Palaver only knows "
        f"up to {known}: upgrade Palaver, or point {other}")


class Driver:
    """What a backend gives :class:`Database` (see sqlite.py and pg.py)."""

    dialect: str
    where: str  # the file, or the URL without its password (for messages and logs)
    on_statement: Callable[[str], None] | None

    async def atomically(self, work: Any, *, durable: bool = False) -> Any:
        raise NotImplementedError

    async def read(self, work: Any) -> Any:
        raise NotImplementedError

    def reading(self) -> AbstractAsyncContextManager[Any]:
        raise NotImplementedError

    def transaction(self) -> AbstractAsyncContextManager[Any]:
        raise NotImplementedError

    async def schema_version(self) -> int:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class Database:
    """Transactions over a backend driver (the base of ``Store``)."""

    def __init__(self, driver: Driver) -> None:
        self._driver = driver
        self._unwritable = False  # the last check_writable() failed (logged once)
        # The registered process id fencing this store's claims and finishes
        # (bridge.store.coord sets it on PostgreSQL with several processes); None: one
        # process (SQLite), nothing to fence.
        self.owner: str | None = None

    # -- opening -------------------------------------------------------------------

    @classmethod
    async def open(cls, path: str | Path, *, migrations: list[Migration] | None = None):
        """Open (creating if needed) and migrate the SQLite database at ``path``.

        Raises :class:`SchemaTooNewError` when the file is newer than this code.
        """
        from bridge.store.sqlite import SqliteDriver

        return cls(await SqliteDriver.open(Path(path), migrations=migrations))

    @classmethod
    async def open_url(cls, url: str, *, migrations: list[Migration] | None = None,
                       pool_size: int = 10, application_name: str = "palaver"):
        """Connect to (and migrate) the PostgreSQL database at ``url``
        (``postgresql://user:password@host:port/dbname``).  ``application_name`` names
        the pool's backends (the coordinator's reaper ends a dead process's by name)."""
        from bridge.store.pg import PgDriver

        return cls(await PgDriver.open(url, migrations=migrations, pool_size=pool_size,
                                       application_name=application_name))

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self._driver.dialect

    @property
    def where(self) -> str:
        """The database file, or its URL without the password."""
        return self._driver.where

    @property
    def path(self) -> Path | None:
        """The SQLite file (None on PostgreSQL)."""
        return getattr(self._driver, "path", None)

    @property
    def _conn(self):  # the aiosqlite connection: SQLite-only tests reach for it
        return self._driver._conn

    @property
    def on_statement(self) -> Callable[[str], None] | None:
        """Called with the SQL of every statement a body runs (tests, benchmarks)."""
        return self._driver.on_statement

    @on_statement.setter
    def on_statement(self, callback: Callable[[str], None] | None) -> None:
        self._driver.on_statement = callback

    async def close(self) -> None:
        """Close the connection (or pool); idempotent."""
        await self._driver.close()

    # -- transactions --------------------------------------------------------------

    async def atomically(self, work: Body[T], *, durable: bool = False) -> T:
        """Run the body ``work`` (a generator of statement requests) as one transaction.

        SQLite runs it in one hop to its connection's thread, which keeps the lock short
        and the event loop free; PostgreSQL awaits each statement inside one
        transaction.  ``durable``: the commit survives a power cut (SQLite: synchronous
        FULL for this commit; PostgreSQL: always).  On SQLite, ``work`` may also be a
        function of the ``sqlite3.Connection`` (older callers).
        """
        return await self._driver.atomically(work, durable=durable)

    async def read_with(self, work: Body[T]) -> T:
        """Run the read-only body ``work`` outside a write transaction."""
        return await self._driver.read(work)

    def transaction(self) -> AbstractAsyncContextManager[Any]:
        """A connection with ``await db.execute(sql, params)`` in one transaction (the
        older style; new code writes bodies)."""
        return self._driver.transaction()

    def reading(self) -> AbstractAsyncContextManager[Any]:
        """A connection with ``await db.execute(sql, params)`` for reads."""
        return self._driver.reading()

    async def schema_version(self) -> int:
        return await self._driver.schema_version()

    async def check_writable(self) -> bool:
        """True when a write transaction can be taken and committed (for health checks)."""
        try:
            await self.atomically(_probe())
        except (sqlite3.Error, StoreError) as exc:
            if not self._unwritable:  # once per outage, not once per health probe
                log.warning("store is not writable: %s", unavailable_reason(exc) or exc)
            self._unwritable = True
            return False
        if self._unwritable:
            log.info("store is writable again")
        self._unwritable = False
        return True


PROBE_SQL = ("INSERT INTO kv (namespace, key, value, updated_at) VALUES (?, ?, ?, ?) "
             "ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value, "
             "updated_at = excluded.updated_at")


def _probe() -> Body[None]:
    yield run(PROBE_SQL, "palaver", "health", "ok", time.time())


def _statements(sql: str) -> list[str]:
    """Split a SQLite migration script into complete statements (comments kept, empties
    dropped).  PostgreSQL runs a whole file in one ``execute``."""
    out: list[str] = []
    pending = ""
    for line in sql.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            if pending.strip().rstrip(";").strip() and not _only_comments(pending):
                out.append(pending)
            pending = ""
    if pending.strip() and not _only_comments(pending):
        raise StoreError(f"incomplete SQL statement at the end of a migration: {pending[:80]!r}")
    return out


def _only_comments(sql: str) -> bool:
    return all(not line.strip() or line.strip().startswith("--") or line.strip() == ";"
               for line in sql.splitlines())
