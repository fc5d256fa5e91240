"""Migrations: append-only, one transaction each, fresh install == upgraded, newer refused."""

from __future__ import annotations

import sqlite3

import pytest

from bridge.envelope import ChatAddress, ChatKind, Inbound
from bridge.store import Migration, SchemaTooNewError, Store, StoreError, load_migrations


def _schema(path) -> list[tuple]:
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"
            " ORDER BY type, name").fetchall()
        columns = {}
        for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
            columns[table] = conn.execute(f"PRAGMA table_info({table})").fetchall()
        return [*rows, sorted(columns.items())]
    finally:
        conn.close()


def test_migrations_are_numbered_in_sequence():
    migrations = load_migrations()
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    assert len(migrations) >= 2


async def test_fresh_install_equals_upgraded(tmp_path):
    fresh = tmp_path / "fresh.db"
    store = await Store.open(fresh)
    assert await store.schema_version() == len(load_migrations())
    await store.close()

    # An install made by an older Palaver (first migration only), with data in it.
    old = tmp_path / "old.db"
    first = load_migrations()[:1]
    store = await Store.open(old, migrations=first)
    assert await store.schema_version() == 1
    await store.close()
    inbound = Inbound(ChatAddress("telegram", "default", "1", ChatKind.DIRECT), "1", "m1",
                      0.0, text="kept across the upgrade")
    # Written as that Palaver wrote it: today's queries may use columns added since.
    conn = sqlite3.connect(old)
    conn.execute(
        "INSERT INTO messages (direction, role, session_key, channel, account, chat_id,"
        " chat_kind, platform_message_id, sender_id, text, status, created_at, updated_at)"
        " VALUES ('in', 'user', ?, 'telegram', 'default', '1', 'direct', 'm1', '1', ?,"
        " 'received', 0, 0)", (str(inbound.session_key), inbound.text))
    conn.commit()
    conn.close()

    store = await Store.open(old)
    try:
        assert await store.schema_version() == len(load_migrations())
        rows = await store.messages_for(str(inbound.session_key))
        assert rows[0].text == "kept across the upgrade"
    finally:
        await store.close()
    assert _schema(fresh) == _schema(old)


async def test_database_newer_than_the_code_is_refused(tmp_path):
    path = tmp_path / "p.db"
    store = await Store.open(path)
    await store.close()
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO schema_version VALUES (999, 'future', 0)")
    conn.commit()
    conn.close()
    with pytest.raises(SchemaTooNewError) as err:
        await Store.open(path)
    assert "999" in str(err.value) and str(path) in str(err.value)


async def test_failing_migration_rolls_back_whole(tmp_path):
    good = load_migrations()
    bad = Migration(len(good) + 1, "broken",
                    "CREATE TABLE half_done (x INTEGER);\nTHIS IS NOT SQL;")
    path = tmp_path / "p.db"
    with pytest.raises(StoreError, match="broken"):
        await Store.open(path, migrations=[*good, bad])
    conn = sqlite3.connect(path)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        version = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0]
    finally:
        conn.close()
    assert "half_done" not in tables and version == len(good)


async def test_pragmas(tmp_path):
    store = await Store.open(tmp_path / "p.db")
    try:
        async with store.reading() as db:
            mode = (await (await db.execute("PRAGMA journal_mode")).fetchone())[0]
            fk = (await (await db.execute("PRAGMA foreign_keys")).fetchone())[0]
            busy = (await (await db.execute("PRAGMA busy_timeout")).fetchone())[0]
        assert (mode, fk) == ("wal", 1) and busy >= 1000
        assert await store.check_writable()
    finally:
        await store.close()


_OPENER = """
import asyncio, sys
from bridge.store import Store
async def main():
    store = await Store.open(sys.argv[1])
    await store.close()
asyncio.run(main())
"""


async def test_migration_applied_by_another_process_meanwhile_is_skipped(tmp_path,
                                                                         monkeypatch):
    """The race of two first opens, made deterministic: right after this process read
    "version 0", another process migrates the whole file.  This one must notice inside
    its own transaction and not run the migrations a second time."""
    import inspect
    import os
    import subprocess
    import sys
    from pathlib import Path

    from bridge.store import sqlite as db_mod

    path = tmp_path / "race.db"
    repo = str(Path(__file__).parents[2])
    original = db_mod._current_version
    calls = [0]

    def other_process_wins() -> None:
        subprocess.run([sys.executable, "-c", _OPENER, str(path)], check=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": repo}, capture_output=True)

    if inspect.iscoroutinefunction(original):
        async def racing(conn):
            version = await original(conn)
            calls[0] += 1
            if calls[0] == 1:
                other_process_wins()
            return version
    else:
        def racing(conn):
            version = original(conn)
            calls[0] += 1
            if calls[0] == 1:
                other_process_wins()
            return version

    monkeypatch.setattr(db_mod, "_current_version", racing)
    store = await Store.open(path)
    try:
        assert await store.schema_version() == len(load_migrations())
    finally:
        await store.close()
    conn = sqlite3.connect(path)
    try:
        versions = [r[0] for r in conn.execute("SELECT version FROM schema_version")]
    finally:
        conn.close()
    assert versions == list(range(1, len(load_migrations()) + 1))


async def test_concurrent_opens_in_threads(tmp_path):
    import asyncio
    import threading

    errors: list[BaseException] = []
    path = tmp_path / "threads.db"
    barrier = threading.Barrier(4)

    def opener() -> None:
        async def go() -> None:
            barrier.wait()
            store = await Store.open(path)
            await store.close()
        try:
            asyncio.run(go())
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=opener) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_migration_statements_split():
    from bridge.store.db import _statements

    sql = "-- c\nCREATE TABLE a (x TEXT DEFAULT ';');\n\n-- only a comment\n" \
          "ALTER TABLE a ADD COLUMN y INTEGER;\n"
    got = _statements(sql)
    assert len(got) == 2 and "DEFAULT ';'" in got[0] and "ADD COLUMN y" in got[1]


async def test_new_database_and_data_dir_are_owner_only(tmp_path):
    import stat

    data = tmp_path / "fresh" / "data"
    store = await Store.open_in(data)
    try:
        await store.check_writable()
    finally:
        await store.close()
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    for f in data.iterdir():
        if f.name.startswith("palaver.db"):
            assert stat.S_IMODE(f.stat().st_mode) == 0o600, f.name


# ------------------------------------------------------------------ PostgreSQL's twins


def test_both_backends_have_the_same_migrations():
    """A migration added for one backend only fails here: write both files
    (migrations/NNNN_name.sql and migrations/postgresql/NNNN_name.sql)."""
    lite = [(m.version, m.name) for m in load_migrations("sqlite")]
    pg = [(m.version, m.name) for m in load_migrations("postgresql")]
    assert pg == lite


async def _pg(url: str, sql: str, *args):
    """Rows of ``sql`` (several statements, without arguments: run, no rows)."""
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        if ";" in sql and not args:
            await conn.execute(sql)
            return []
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


_PG_CATALOG = (
    "SELECT table_name, column_name, data_type, is_nullable, column_default"
    " FROM information_schema.columns WHERE table_schema = 'public'"
    " ORDER BY table_name, column_name")
_PG_INDEXES = "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1"
_PG_CONSTRAINTS = ("SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)"
                   " FROM pg_constraint WHERE connamespace = 'public'::regnamespace"
                   " ORDER BY 1, 2")


async def _pg_schema(url: str) -> list:
    return [[tuple(r) for r in await _pg(url, q)]
            for q in (_PG_CATALOG, _PG_INDEXES, _PG_CONSTRAINTS)]


async def test_pg_fresh_install_equals_upgraded(pg_server, pg_url):
    fresh = await Store.open_url(pg_url)
    assert await fresh.schema_version() == len(load_migrations("postgresql"))
    await fresh.close()
    want = await _pg_schema(pg_url)
    await _pg(pg_url, "DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    first = load_migrations("postgresql")[:1]
    old = await Store.open_url(pg_url, migrations=first)
    assert await old.schema_version() == 1
    await old.close()
    await _pg(pg_url, "INSERT INTO messages (direction, role, session_key, channel, account,"
                      " chat_id, chat_kind, platform_message_id, sender_id, text, status,"
                      " created_at, updated_at) VALUES ('in', 'user', 'k', 'telegram',"
                      " 'default', '1', 'direct', 'm1', '1', 'kept', 'received', 0, 0)")
    upgraded = await Store.open_url(pg_url)
    try:
        assert await upgraded.schema_version() == len(load_migrations("postgresql"))
        assert [m.text for m in await upgraded.messages_for("k")] == ["kept"]
    finally:
        await upgraded.close()
    assert await _pg_schema(pg_url) == want


_TYPES = {"INTEGER": {"integer", "bigint"}, "REAL": {"double precision"}, "TEXT": {"text"},
          "BLOB": {"bytea"}}


async def test_backends_have_the_same_tables_columns_and_indexes(tmp_path, pg_url):
    lite = await Store.open(tmp_path / "p.db")
    await lite.close()
    pg = await Store.open_url(pg_url)
    await pg.close()
    conn = sqlite3.connect(tmp_path / "p.db")
    try:
        tables = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
        lite_cols = {(t, c[1]): c[2] for t in tables
                     for c in conn.execute(f"PRAGMA table_info({t})")}
        lite_indexes = {r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")}
    finally:
        conn.close()
    pg_cols = {(r["table_name"], r["column_name"]): r["data_type"]
               for r in await _pg(pg_url, _PG_CATALOG)}
    assert set(pg_cols) == set(lite_cols)
    for column, lite_type in lite_cols.items():
        assert pg_cols[column] in _TYPES[lite_type], column
    pg_indexes = {r["indexname"] for r in await _pg(pg_url, _PG_INDEXES)
                  if not r["indexname"].endswith("_pkey")}
    assert pg_indexes == lite_indexes


async def test_pg_database_newer_than_the_code_is_refused(pg_url):
    store = await Store.open_url(pg_url)
    await store.close()
    await _pg(pg_url, "INSERT INTO schema_version VALUES (999, 'future', 0)")
    with pytest.raises(SchemaTooNewError) as err:
        await Store.open_url(pg_url)
    assert "999" in str(err.value) and "store.url" in str(err.value)


async def test_pg_failing_migration_rolls_back_whole(pg_url):
    good = load_migrations("postgresql")
    bad = Migration(len(good) + 1, "broken",
                    "CREATE TABLE half_done (x INTEGER);\nTHIS IS NOT SQL;")
    with pytest.raises(StoreError, match="broken"):
        await Store.open_url(pg_url, migrations=[*good, bad])
    tables = {r[0] for r in await _pg(
        pg_url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    version = (await _pg(pg_url, "SELECT MAX(version) FROM schema_version"))[0][0]
    assert "half_done" not in tables and version == len(good)


async def test_pg_two_processes_migrate_a_fresh_database_once(pg_url):
    """Four stores opening a fresh database at once (connections of their own, as
    processes would): the advisory lock lets one migrate; each version is there once."""
    import asyncio

    stores = await asyncio.gather(*(Store.open_url(pg_url) for _ in range(4)))
    for store in stores:
        await store.close()
    versions = [r[0] for r in await _pg(pg_url, "SELECT version FROM schema_version"
                                                " ORDER BY version")]
    assert versions == list(range(1, len(load_migrations("postgresql")) + 1))


async def test_pg_unreachable_is_a_clear_store_error():
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(StoreError) as err:
        await Store.open_url(f"postgresql://palaver:s3cret@127.0.0.1:{port}/x")
    text = str(err.value)
    assert "database unreachable" in text and "s3cret" not in text and "***" in text


async def test_pg_dropped_connections_are_replaced(pg_url):
    """The server ends the pool's connections (a restart, an operator): a write that
    meets the dead connection raises StoreUnavailableError("database unreachable") (the
    door's "retry later"; the pool may also have noticed first), and the next one goes
    through on a new connection."""
    from bridge.store.db import StoreUnavailableError

    store = await Store.open_url(pg_url, pool_size=1)
    try:
        await store.kv_set("t", "k", "1")
        ended = await _pg(pg_url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                                  " WHERE datname = current_database()"
                                  " AND pid <> pg_backend_pid()")
        assert ended and all(r[0] for r in ended)
        try:
            await store.kv_set("t", "k", "2")
        except StoreUnavailableError as err:
            assert err.reason == "database unreachable"
            await store.kv_set("t", "k", "2")
        assert await store.kv_get("t", "k") == "2"
    finally:
        await store.close()


def test_pg_errors_map_to_store_unavailable_reasons():
    import asyncpg

    from bridge.store.db import StoreUnavailableError, unavailable_reason
    from bridge.store.pg import _wrap

    cases = {
        asyncpg.exceptions.DiskFullError("no space"): "disk full",
        asyncpg.exceptions.TooManyConnectionsError("sorry"): "too many connections",
        asyncpg.exceptions.ReadOnlySQLTransactionError("standby"): "read-only",
        asyncpg.exceptions.CannotConnectNowError("starting"): "database unreachable",
        asyncpg.exceptions.AdminShutdownError("bye"): "database unreachable",
        asyncpg.exceptions.ConnectionDoesNotExistError("gone"): "database unreachable",
        ConnectionRefusedError(111, "refused"): "database unreachable",
    }
    for exc, reason in cases.items():
        assert unavailable_reason(exc) == reason, exc
        wrapped = _wrap(exc, "postgresql://u:***@h/db")
        assert isinstance(wrapped, StoreUnavailableError) and wrapped.reason == reason
        assert wrapped.__cause__ is exc
    closed = asyncpg.exceptions.InterfaceError("connection is closed")
    assert unavailable_reason(closed) == "database unreachable"
    # What a pooled connection the server terminated says at the next statement (seen in
    # CI: the protocol is still consuming the FATAL message).
    dying = asyncpg.exceptions.InternalClientError(
        "cannot switch to state 15; another operation (2) is in progress")
    assert unavailable_reason(dying) == "database unreachable"
    for bug in (asyncpg.exceptions.UniqueViolationError("duplicate key"),
                asyncpg.exceptions.InterfaceError("another operation is in progress"),
                asyncpg.exceptions.InternalClientError(
                    "cannot switch to state 15; another operation (16) is in progress")):
        assert unavailable_reason(bug) is None and _wrap(bug, "x") is bug
