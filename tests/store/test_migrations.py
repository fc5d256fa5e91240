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
