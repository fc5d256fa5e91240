"""The SQLite backend: one aiosqlite connection, pragmas, and bodies run in one hop.

All writes go through one connection guarded by an asyncio lock, so the statements of
one transaction are never interleaved with another task's.  A body (see
:mod:`bridge.store.sql`) is driven inside aiosqlite's thread: ``BEGIN IMMEDIATE``, every
statement it yields, ``COMMIT``, in one hop, so the hot paths keep the lock short and the
event loop free.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import aiosqlite

from bridge.store import db as _db
from bridge.store.db import (
    Driver,
    Migration,
    StoreError,
    StoreUnavailableError,
    _statements,
    load_migrations,
    too_new,
    unavailable_reason,
)
from bridge.store.sql import Body, Q, to_sqlite

log = logging.getLogger(__name__)


def _closed() -> StoreUnavailableError:
    return StoreUnavailableError("closed", "the store is closed")


def _unavailable(exc: sqlite3.Error) -> BaseException:
    """``exc`` as a :class:`StoreUnavailableError` when it means the store cannot write
    now; otherwise ``exc`` itself (a bug or a bad row)."""
    reason = unavailable_reason(exc)
    if reason is None:
        return exc
    wrapped = StoreUnavailableError(reason, f"store unavailable ({reason}): {exc}")
    wrapped.__cause__ = exc
    return wrapped


def execute(raw: sqlite3.Connection, q: Q, trace: Callable[[str], None] | None) -> Any:
    """Run one statement request on ``raw``; the value handed back to the body."""
    kind = q.kind
    if kind == "dialect":
        return "sqlite"
    sql, args = to_sqlite(q.text("sqlite"), q.args)
    if trace is not None:
        trace(sql)
    if kind == "many":
        return raw.executemany(sql, args[0]).rowcount
    cur = raw.execute(sql, args)
    if kind == "run":
        return cur.rowcount
    if kind == "all":
        return cur.fetchall()
    row = cur.fetchone()
    cur.close()  # resets the statement (an INSERT ... RETURNING is then complete)
    if kind == "val":
        return None if row is None else row[0]
    return row


def drive(raw: sqlite3.Connection, work: Any, trace: Callable[[str], None] | None) -> Any:
    """Run the body ``work`` to its end on ``raw`` (or call a legacy ``work(raw)``)."""
    if not inspect.isgenerator(work):
        return work(raw)
    gen = cast(Body[Any], work)
    try:
        q: Q = next(gen)
        while True:
            q = gen.send(execute(raw, q, trace))
    except StopIteration as stop:
        return stop.value
    finally:
        gen.close()


class SqliteDriver(Driver):
    dialect = "sqlite"

    def __init__(self, path: Path, conn: aiosqlite.Connection) -> None:
        self.path = path
        self.where = str(path)
        self._conn = conn
        self._lock = asyncio.Lock()
        self._closed = False
        self.on_statement: Callable[[str], None] | None = None

    @classmethod
    async def open(cls, path: Path, *, migrations: list[Migration] | None = None
                   ) -> SqliteDriver:
        # Chat text and pairing codes live here: owner-only for a new data dir and file
        # (SQLite gives its -wal/-shm files the database file's mode).
        try:
            _create_private(path)
        except OSError as exc:
            raise StoreError(f"cannot create the database {path}: "
                             f"{exc.strerror or exc}") from exc
        migrations = load_migrations() if migrations is None else migrations
        try:
            conn = await aiosqlite.connect(str(path), isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open database {path}: {exc}") from exc
        conn.row_factory = sqlite3.Row
        try:
            await conn.execute(f"PRAGMA busy_timeout = {_db.BUSY_TIMEOUT_MS}")
            await _set_wal(conn)
            await conn.execute(f"PRAGMA synchronous = {_db.SYNCHRONOUS}")
            await conn.execute("PRAGMA foreign_keys = ON")
            # On a connection of its own in a worker thread: aiosqlite offers no public
            # way to run a function on its connection's thread.
            await asyncio.to_thread(_migrate_file, path, migrations)
            # A store that opens but cannot take a write (read-only file or directory,
            # full disk) would let the channels run and confirm messages it never keeps:
            # refuse to start instead.
            await conn.execute("BEGIN IMMEDIATE")
            try:
                # Rewrites the header's user_version with its own value: a real write
                # that changes nothing (and needs no table of the schema).
                cur = await conn.execute("PRAGMA user_version")
                row = await cur.fetchone()
                await conn.execute(f"PRAGMA user_version = {int(row[0]) if row else 0}")
            except BaseException:
                await conn.execute("ROLLBACK")
                raise
            await conn.execute("COMMIT")
        except sqlite3.Error as exc:
            await conn.close()
            raise StoreError(f"cannot write the database {path}: "
                             f"{unavailable_reason(exc) or exc}") from exc
        except BaseException:
            await conn.close()
            raise
        return cls(path, conn)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        async with self._lock:
            await self._conn.close()

    async def atomically(self, work: Any, *, durable: bool = False) -> Any:
        async with self._lock:
            if self._closed:
                raise _closed()
            sync = _db.SYNCHRONOUS
            trace = self.on_statement

            def go() -> Any:
                raw = self._conn._conn
                if durable and sync != "FULL":
                    raw.execute("PRAGMA synchronous = FULL")
                try:
                    raw.execute("BEGIN IMMEDIATE")
                    try:
                        result = drive(raw, work, trace)
                    except BaseException:
                        raw.execute("ROLLBACK")
                        raise
                    raw.execute("COMMIT")
                finally:
                    if durable and sync != "FULL":
                        raw.execute(f"PRAGMA synchronous = {sync}")
                return result

            try:
                return await self._conn._execute(go)
            except sqlite3.Error as exc:
                wrapped = _unavailable(exc)
                if wrapped is exc:
                    raise
                raise wrapped from exc

    async def read(self, work: Any) -> Any:
        async with self._lock:
            if self._closed:
                raise _closed()
            trace = self.on_statement
            try:
                return await self._conn._execute(drive, self._conn._conn, work, trace)
            except sqlite3.Error as exc:
                wrapped = _unavailable(exc)
                if wrapped is exc:
                    raise
                raise wrapped from exc

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on error), holding the lock."""
        async with self._lock:
            if self._closed:
                raise _closed()
            await self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                await self._conn.execute("ROLLBACK")
                raise
            else:
                await self._conn.execute("COMMIT")

    @asynccontextmanager
    async def reading(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._lock:
            if self._closed:
                raise _closed()
            yield self._conn

    async def schema_version(self) -> int:
        return await self.read(_current_version)


def _create_private(path: Path) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not path.exists():
        with contextlib.suppress(FileExistsError):
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))


async def _set_wal(conn: aiosqlite.Connection) -> None:
    """``PRAGMA journal_mode = WAL``, waiting like the busy timeout when another
    connection holds a lock: SQLite answers this pragma "database is locked" at once
    (no busy handler) while another process opens the same new file."""
    deadline = time.monotonic() + _db.BUSY_TIMEOUT_MS / 1000
    delay = 0.005
    while True:
        try:
            await conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            busy = "locked" in str(exc) or "busy" in str(exc)
            if not busy or time.monotonic() + delay > deadline:
                raise
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.1)


def _current_version(db: sqlite3.Connection) -> int:
    if db.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name ="
                  " 'schema_version'").fetchone() is None:
        return 0
    return int(db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0])


def _migrate_file(path: Path, migrations: list[Migration]) -> None:
    """:func:`_migrate` on a short-lived connection of its own."""
    db = sqlite3.connect(str(path), isolation_level=None)
    try:
        db.execute(f"PRAGMA busy_timeout = {_db.BUSY_TIMEOUT_MS}")
        db.execute("PRAGMA foreign_keys = ON")
        _migrate(db, path, migrations)
    finally:
        db.close()


def _migrate(db: sqlite3.Connection, path: Path, migrations: list[Migration]) -> None:
    """Apply the missing migrations, each in its own ``BEGIN IMMEDIATE`` transaction.

    The version is read again inside each transaction: two processes opening a fresh
    database at once serialise on the write lock, and the second one finds the
    migration already applied instead of running it twice.
    """
    known = migrations[-1].version if migrations else 0
    current = _current_version(db)  # fast path: nothing to do, no write lock taken
    if current > known:
        raise too_new(str(path), current, known)
    for migration in migrations:
        if migration.version <= current:
            continue
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute(
                    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY,"
                    " name TEXT NOT NULL, applied_at REAL NOT NULL)")
                current = _current_version(db)
                if current > known:
                    raise too_new(str(path), current, known)
                if current >= migration.version:  # another process was quicker
                    db.execute("COMMIT")
                    continue
                for statement in _statements(migration.sql):
                    db.execute(statement)
                db.execute("INSERT INTO schema_version (version, name, applied_at)"
                           " VALUES (?, ?, ?)", (migration.version, migration.name, time.time()))
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StoreError(
                f"migration {migration.version:04d}_{migration.name} failed on {path}: {exc}"
            ) from exc
        current = migration.version
        log.info("store %s migrated to schema version %d", path, migration.version)
