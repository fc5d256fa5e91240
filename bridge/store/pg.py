"""The PostgreSQL backend: an asyncpg pool, bodies run one await per statement.

A body (see :mod:`bridge.store.sql`) runs inside one ``conn.transaction()`` on a pooled
connection, its ``?`` placeholders rewritten to ``$n``.  Every commit is durable
(``synchronous_commit`` stays on), so ``durable=True`` changes nothing here.

Migrations (``migrations/postgresql/NNNN_name.sql``, the same numbers and names as
SQLite's) run one transaction each, under ``pg_advisory_xact_lock``: two processes
starting on a fresh database migrate it once, as ``BEGIN IMMEDIATE`` does for SQLite.
PostgreSQL's DDL is transactional, so a failing migration leaves nothing behind.

Driver errors that mean "the store cannot write now" become
:class:`~bridge.store.db.StoreUnavailableError` (see :func:`pg_unavailable_reason`).
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from bridge.store.db import (
    Driver,
    Migration,
    StoreError,
    StoreUnavailableError,
    load_migrations,
    too_new,
)
from bridge.store.sql import Body, Q, rowcount_of, to_postgres

log = logging.getLogger(__name__)

# pg_advisory_xact_lock(MIGRATION_LOCK, 0) serialises migrations across processes.
MIGRATION_LOCK = 7218152
# No store transaction waits on anything but the database: one left open this long
# belongs to a stalled process, and the server ends it.
IDLE_IN_TRANSACTION_MS = 5000
CONNECT_TIMEOUT_S = 10.0

_UNREACHABLE = (
    asyncpg.exceptions.PostgresConnectionError,  # SQLSTATE class 08
    asyncpg.exceptions.CannotConnectNowError,  # 57P03: starting up, shutting down
    asyncpg.exceptions.AdminShutdownError,  # 57P01
    asyncpg.exceptions.CrashShutdownError,  # 57P02
    asyncpg.exceptions.ConnectionDoesNotExistError,
    ConnectionError,
    TimeoutError,
)


# asyncpg's PROTOCOL_ERROR_CONSUME: an error arrived outside any query (the server's
# FATAL "terminating connection") and the protocol waits for a ReadyForQuery that never comes.
_DYING = "another operation (2) is in progress"


def pg_unavailable_reason(exc: BaseException) -> str | None:
    """A short cause when the asyncpg (or socket) error ``exc`` means the database
    cannot take a write now, else None (a bug, a bad row: not worth waiting for)."""
    if isinstance(exc, asyncpg.exceptions.DiskFullError):
        return "disk full"
    if isinstance(exc, asyncpg.exceptions.TooManyConnectionsError):
        return "too many connections"
    if isinstance(exc, asyncpg.exceptions.ReadOnlySQLTransactionError):
        return "read-only"
    if isinstance(exc, asyncpg.exceptions.LockNotAvailableError
                  | asyncpg.exceptions.DeadlockDetectedError
                  | asyncpg.exceptions.SerializationError):
        return "database locked"
    if isinstance(exc, asyncpg.exceptions.InsufficientResourcesError):
        return "out of resources"
    if isinstance(exc, _UNREACHABLE) or (isinstance(exc, OSError)
                                         and not isinstance(exc, FileNotFoundError)):
        return "database unreachable"
    # The server ended the connection while it sat in the pool: asyncpg's protocol is
    # still consuming the FATAL message ("cannot switch to state 15; another operation
    # (2) is in progress") when the next statement starts.  The connection is dead.
    if isinstance(exc, asyncpg.exceptions.InternalClientError) and _DYING in str(exc):
        return "database unreachable"
    # "connection is closed", "pool is closing": the connection went away under us (other
    # interface errors, e.g. two operations on one connection, are bugs).
    if isinstance(exc, asyncpg.exceptions.InterfaceError) and "clos" in str(exc).lower():
        return "database unreachable"
    return None


def redact(url: str) -> str:
    """``url`` without its password (for messages and logs)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid database URL>"
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host += f":{parts.port}"
    user = parts.username or ""
    return urlunsplit((parts.scheme, f"{user}:***@{host}", parts.path, parts.query, ""))


def is_postgres_url(url: str | None) -> bool:
    return url is not None and url.split("://", 1)[0] in ("postgresql", "postgres")


def _wrap(exc: BaseException, where: str) -> BaseException:
    reason = pg_unavailable_reason(exc)
    if reason is None:
        return exc
    wrapped = StoreUnavailableError(reason, f"store {where} unavailable ({reason}):"
                                            f" {type(exc).__name__}: {exc}")
    wrapped.__cause__ = exc
    return wrapped


def _text_safe(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """PostgreSQL text cannot hold NUL (SQLite's can): a message carrying one keeps its
    other characters, the NUL becomes U+FFFD, instead of the write failing."""
    if any(type(a) is str and "\x00" in a for a in args):
        return tuple(a.replace("\x00", "\ufffd") if type(a) is str else a for a in args)
    return args


async def execute(conn: asyncpg.Connection, q: Q,
                  trace: Callable[[str], None] | None) -> Any:
    """Run one statement request on ``conn``; the value handed back to the body."""
    kind = q.kind
    if kind == "dialect":
        return "postgresql"
    if kind == "many":  # one parameter tuple per row; no In()
        rows = q.args[0]
        if not rows:
            return 0
        sql = to_postgres(q.text("postgresql"), tuple(rows[0]))[0]
        if trace is not None:
            trace(sql)
        await conn.executemany(sql, [_text_safe(tuple(r)) for r in rows])
        return len(rows)
    sql, args = to_postgres(q.text("postgresql"), _text_safe(q.args))
    if trace is not None:
        trace(sql)
    if kind == "val":
        return await conn.fetchval(sql, *args)
    if kind == "one":
        return await conn.fetchrow(sql, *args)
    if kind == "all":
        return await conn.fetch(sql, *args)
    return rowcount_of(await conn.execute(sql, *args))


async def drive(conn: asyncpg.Connection, work: Any,
                trace: Callable[[str], None] | None) -> Any:
    if not inspect.isgenerator(work):
        raise StoreError("a PostgreSQL store runs statement bodies (bridge.store.sql),"
                         " not functions of a sqlite3 connection")
    gen = cast(Body[Any], work)
    try:
        q: Q = next(gen)
        while True:
            q = gen.send(await execute(conn, q, trace))
    except StopIteration as stop:
        return stop.value
    finally:
        gen.close()


class _Cursor:
    """What ``await db.execute(...)`` gives in :meth:`PgDriver.reading`: aiosqlite's
    cursor surface over rows already fetched."""

    def __init__(self, rows: list[Any], rowcount: int) -> None:
        self._rows = rows
        self.rowcount = rowcount
        self.lastrowid = None  # use INSERT ... RETURNING id

    async def fetchone(self) -> Any:
        return self._rows.pop(0) if self._rows else None

    async def fetchall(self) -> list[Any]:
        rows, self._rows = self._rows, []
        return rows


class _Connection:
    """``await db.execute(sql, params)`` with ``?`` SQL on an asyncpg connection (the
    older query style some callers still use)."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, params: Any = ()) -> _Cursor:
        text, args = to_postgres(sql, tuple(params))
        stripped = text.lstrip().upper()
        if stripped.startswith(("SELECT", "WITH")) or " RETURNING " in stripped:
            rows = list(await self._conn.fetch(text, *args))
            return _Cursor(rows, len(rows))
        return _Cursor([], rowcount_of(await self._conn.execute(text, *args)))


class PgDriver(Driver):
    dialect = "postgresql"

    def __init__(self, pool: asyncpg.Pool, url: str) -> None:
        self._pool = pool
        self.url = url
        self.where = redact(url)
        self._closed = False
        self.on_statement: Callable[[str], None] | None = None

    @classmethod
    async def open(cls, url: str, *, migrations: list[Migration] | None = None,
                   pool_size: int = 10, application_name: str = "palaver") -> PgDriver:
        where = redact(url)
        migrations = load_migrations("postgresql") if migrations is None else migrations
        try:
            conn = await asyncpg.connect(url, timeout=CONNECT_TIMEOUT_S)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            reason = pg_unavailable_reason(exc)
            raise StoreError(f"cannot open database {where}: "
                             f"{reason + ': ' if reason else ''}{exc}") from exc
        try:
            await migrate(conn, where, migrations)
            # A store that opens but cannot take a write (a standby, a read-only role)
            # would let the channels confirm messages it never keeps: refuse.
            if await conn.fetchval("SELECT pg_is_in_recovery()"):
                raise StoreError(f"cannot write the database {where}: it is a standby"
                                 " (read-only)")
            try:
                async with conn.transaction():
                    # A real write that changes nothing (and needs no table but the one
                    # the migrations keep).
                    if await conn.fetchval("SELECT to_regclass('schema_version')"):
                        await conn.execute(
                            "UPDATE schema_version SET name = name WHERE version ="
                            " (SELECT MAX(version) FROM schema_version)")
            except asyncpg.PostgresError as exc:
                raise StoreError(f"cannot write the database {where}: "
                                 f"{pg_unavailable_reason(exc) or exc}") from exc
        finally:
            await conn.close()
        try:
            pool = await asyncpg.create_pool(
                url, min_size=1, max_size=max(1, pool_size), timeout=CONNECT_TIMEOUT_S,
                server_settings={
                    "application_name": application_name,
                    "idle_in_transaction_session_timeout": str(IDLE_IN_TRANSACTION_MS),
                })
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            raise StoreError(f"cannot open database {where}: {exc}") from exc
        assert pool is not None
        return cls(pool, url)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._pool.close()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreUnavailableError("closed", "the store is closed")

    async def atomically(self, work: Any, *, durable: bool = False) -> Any:
        return await self._drive(work, transaction=True)

    async def read(self, work: Any) -> Any:
        return await self._drive(work, transaction=False)

    async def _drive(self, work: Any, *, transaction: bool) -> Any:
        """Run ``work`` on a pooled connection (in one transaction when asked); driver
        errors that mean "cannot write now" come out as StoreUnavailableError."""
        self._check_open()
        try:
            async with self._pool.acquire() as conn:
                try:
                    if not transaction:
                        return await drive(conn, work, self.on_statement)
                    async with conn.transaction():
                        return await drive(conn, work, self.on_statement)
                except asyncpg.exceptions.InternalClientError:
                    conn.terminate()  # a dying connection: the pool opens a new one
                    raise
        except Exception as exc:
            wrapped = _wrap(exc, self.where)
            if wrapped is exc:
                raise
            raise wrapped from exc

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_Connection]:
        self._check_open()
        async with self._pool.acquire() as conn, conn.transaction():
            yield _Connection(conn)

    @asynccontextmanager
    async def reading(self) -> AsyncIterator[_Connection]:
        self._check_open()
        async with self._pool.acquire() as conn:
            yield _Connection(conn)

    async def schema_version(self) -> int:
        self._check_open()
        async with self._pool.acquire() as conn:
            return await current_version(conn)


async def current_version(conn: asyncpg.Connection) -> int:
    if await conn.fetchval("SELECT to_regclass('schema_version')") is None:
        return 0
    return int(await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_version"))


async def migrate(conn: asyncpg.Connection, where: str, migrations: list[Migration]) -> None:
    """Apply the missing migrations, each in one transaction under the migration lock;
    the version is read again under the lock (another process may have been quicker)."""
    known = migrations[-1].version if migrations else 0
    current = await current_version(conn)  # fast path: nothing to do, no lock taken
    if current > known:
        raise too_new(where, current, known)
    for migration in migrations:
        if migration.version <= current:
            continue
        try:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1, 0)", MIGRATION_LOCK)
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY,"
                    " name TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)")
                current = await current_version(conn)
                if current > known:
                    raise too_new(where, current, known)
                if current >= migration.version:
                    continue
                await conn.execute(migration.sql)  # one simple query: the whole file
                await conn.execute(
                    "INSERT INTO schema_version (version, name, applied_at)"
                    " VALUES ($1, $2, $3)", migration.version, migration.name, time.time())
        except asyncpg.PostgresError as exc:
            raise StoreError(f"migration {migration.version:04d}_{migration.name} failed"
                             f" on {where}: {exc}") from exc
        current = migration.version
        log.info("store %s migrated to schema version %d", where, migration.version)
