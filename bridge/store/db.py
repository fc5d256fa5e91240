"""The SQLite connection: pragmas, append-only migrations, one transaction at a time.

All writes go through one aiosqlite connection guarded by an asyncio lock, so the
statements of one transaction are never interleaved with another task's.  SQLite runs in
WAL with foreign keys on and a busy timeout (another process, e.g. ``palaver pairing``,
may open the same file).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TypeVar

import aiosqlite

T = TypeVar("T")

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 5000
# NORMAL in WAL mode: a commit is safe from a crash of the process, but the last ones can
# be lost to a power cut.  Transactions that must survive even that — storing an inbound
# message, which the channel confirms to the platform right after — ask for
# ``atomically(..., durable=True)`` (synchronous FULL for that commit only).  Losing any
# other commit to a power cut only repeats work (a reply sent twice), never loses it.
# bench/bench_pipeline.py: FULL for every commit costs ~20 % of pipeline throughput,
# durable inbound alone ~11 % (and +0.3 ms per message).
SYNCHRONOUS = "NORMAL"
_MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class StoreError(Exception):
    """The store cannot be opened or used (message says what and where)."""


class SchemaTooNewError(StoreError):
    """The database was written by a newer Palaver than this one."""


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
    locked past the busy timeout, read-only, I/O error, closed), else ``None``."""
    if isinstance(exc, StoreError):
        return "closed" if "closed" in str(exc) else None
    if not isinstance(exc, sqlite3.OperationalError | sqlite3.DatabaseError):
        return None
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int) and (code & 0xFF) in _UNAVAILABLE_CODES:
        return _UNAVAILABLE_CODES[code & 0xFF]
    text = str(exc).lower()
    for words, reason in _UNAVAILABLE_WORDS:
        if words in text:
            return reason
    return None


def inserted_id(cur: sqlite3.Cursor) -> int:
    """The rowid of the row the INSERT just run on ``cur`` wrote."""
    row_id = cur.lastrowid
    if row_id is None:  # sqlite3 sets it after every INSERT; None means no INSERT ran
        raise StoreError("an INSERT wrote no row")
    return row_id


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations() -> list[Migration]:
    """Every ``migrations/NNNN_name.sql`` shipped with the package, in version order."""
    found: list[Migration] = []
    folder = resources.files("bridge.store") / "migrations"
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


class Database:
    """Connection, pragmas, migrations and transaction helpers (the base of ``Store``)."""

    def __init__(self, path: Path, conn: aiosqlite.Connection) -> None:
        self.path = path
        self._conn = conn
        self._lock = asyncio.Lock()
        self._closed = False
        self._unwritable = False  # the last check_writable() failed (logged once)

    # -- opening -------------------------------------------------------------------

    @classmethod
    async def open(
        cls, path: str | Path, *, migrations: list[Migration] | None = None
    ):
        """Open (creating if needed) and migrate the database at ``path``.

        Raises :class:`SchemaTooNewError` when the file is newer than this code.
        """
        path = Path(path)
        # Chat text and pairing codes live here: owner-only for a new data dir and file
        # (SQLite gives its -wal/-shm files the database file's mode).
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not path.exists():
                with contextlib.suppress(FileExistsError):
                    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
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
            await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            await _set_wal(conn)
            await conn.execute(f"PRAGMA synchronous = {SYNCHRONOUS}")
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
        """Close the connection; idempotent."""
        if self._closed:
            return
        self._closed = True
        async with self._lock:
            await self._conn.close()

    # -- transactions --------------------------------------------------------------

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on error), holding the lock."""
        async with self._lock:
            if self._closed:
                raise StoreError("the store is closed")
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
        """The connection for reads (autocommit), holding the lock."""
        async with self._lock:
            if self._closed:
                raise StoreError("the store is closed")
            yield self._conn

    async def atomically(self, fn: Callable[[sqlite3.Connection], T], *,
                         durable: bool = False) -> T:
        """Run ``fn(conn)`` as one transaction inside the connection's thread.

        aiosqlite hops to its thread for every statement; the hot paths (record, claim,
        finish, deliver) run their few statements in one hop instead, which keeps the
        lock short and the event loop free.  ``durable``: the commit is synced to disk
        (``PRAGMA synchronous = FULL`` for this transaction), surviving a power cut.
        """
        async with self._lock:
            if self._closed:
                raise StoreError("the store is closed")

            def run() -> T:
                raw = self._conn._conn
                if durable and SYNCHRONOUS != "FULL":
                    raw.execute("PRAGMA synchronous = FULL")
                try:
                    raw.execute("BEGIN IMMEDIATE")
                    try:
                        result = fn(raw)
                    except BaseException:
                        raw.execute("ROLLBACK")
                        raise
                    raw.execute("COMMIT")
                finally:
                    if durable and SYNCHRONOUS != "FULL":
                        raw.execute(f"PRAGMA synchronous = {SYNCHRONOUS}")
                return result

            return await self._conn._execute(run)

    async def read_with(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run read-only ``fn(conn)`` in the connection's thread (one hop, autocommit)."""
        async with self._lock:
            if self._closed:
                raise StoreError("the store is closed")
            return await self._conn._execute(fn, self._conn._conn)

    async def schema_version(self) -> int:
        return await self.read_with(_current_version)

    async def check_writable(self) -> bool:
        """True when a write transaction can be taken and committed (for health checks)."""
        try:
            async with self.transaction() as db:
                await db.execute(_PROBE_SQL, ("palaver", "health", "ok", time.time()))
        except (sqlite3.Error, StoreError) as exc:
            if not self._unwritable:  # once per outage, not once per health probe
                log.warning("store is not writable: %s", unavailable_reason(exc) or exc)
            self._unwritable = True
            return False
        if self._unwritable:
            log.info("store is writable again")
        self._unwritable = False
        return True


_PROBE_SQL = ("INSERT INTO kv (namespace, key, value, updated_at) VALUES (?, ?, ?, ?) "
              "ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value, "
              "updated_at = excluded.updated_at")


async def _set_wal(conn: aiosqlite.Connection) -> None:
    """``PRAGMA journal_mode = WAL``, waiting like the busy timeout when another
    connection holds a lock: SQLite answers this pragma "database is locked" at once
    (no busy handler) while another process opens the same new file."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
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


def _statements(sql: str) -> list[str]:
    """Split a migration script into complete statements (comments kept, empties dropped)."""
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


def _migrate_file(path: Path, migrations: list[Migration]) -> None:
    """:func:`_migrate` on a short-lived connection of its own."""
    db = sqlite3.connect(str(path), isolation_level=None)
    try:
        db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
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

    def too_new(current: int) -> SchemaTooNewError:
        return SchemaTooNewError(
            f"database {path} has schema version {current}, but this Palaver only knows "
            f"up to {known}: upgrade Palaver, or point dataDir at another directory"
        )

    current = _current_version(db)  # fast path: nothing to do, no write lock taken
    if current > known:
        raise too_new(current)
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
                    raise too_new(current)
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
