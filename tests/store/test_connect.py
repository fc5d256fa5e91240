"""``Store.connect(config)``: the backend the config selects (store.url, else
$PALAVER_DATABASE_URL, else SQLite in dataDir)."""

from __future__ import annotations

import pytest

from bridge.config.schema import Config
from bridge.store import DATABASE_URL_ENV, Store, StoreError, database_url


def _config(tmp_path, url: str | None = None) -> Config:
    data = {"dataDir": str(tmp_path / "data")}
    if url is not None:
        data["store"] = {"url": url}
    return Config.model_validate(data)


async def test_without_a_url_the_store_is_sqlite_in_the_data_dir(tmp_path, monkeypatch):
    monkeypatch.delenv(DATABASE_URL_ENV, raising=False)
    config = _config(tmp_path)
    assert not Store.exists(config)
    store = await Store.connect(config)
    try:
        assert store.dialect == "sqlite" and store.path == tmp_path / "data" / "palaver.db"
    finally:
        await store.close()
    assert Store.exists(config)


async def test_store_url_selects_postgresql(tmp_path, pg_url, monkeypatch):
    monkeypatch.delenv(DATABASE_URL_ENV, raising=False)
    config = _config(tmp_path, pg_url)
    assert Store.exists(config)
    store = await Store.connect(config)
    try:
        assert store.dialect == "postgresql"
        await store.kv_set("t", "k", "v")
        assert await store.kv_get("t", "k") == "v"
    finally:
        await store.close()
    assert not (tmp_path / "data" / "palaver.db").exists()


async def test_the_environment_fills_in_when_the_config_has_no_url(tmp_path, pg_url,
                                                                    monkeypatch):
    monkeypatch.setenv(DATABASE_URL_ENV, pg_url)
    store = await Store.connect(_config(tmp_path))
    try:
        assert store.dialect == "postgresql"
    finally:
        await store.close()


def test_a_url_that_is_not_postgresql_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv(DATABASE_URL_ENV, raising=False)
    with pytest.raises(StoreError, match="postgresql://") as err:
        database_url(_config(tmp_path, "mysql://root:hunter2@db/x"))
    assert "hunter2" not in str(err.value)
    assert database_url(_config(tmp_path, "  ")) is None


async def test_is_palaver_running_on_postgresql_asks_the_processes_table(tmp_path, pg_url,
                                                                       monkeypatch):
    """On PostgreSQL `palaver run` takes no data-dir lock; the CLI's "a running Palaver
    applies it" hint comes from a process whose lease is fresh."""
    import asyncio

    from bridge.chats import palaver_running
    from bridge.store.coord import DB_NOW
    from bridge.store.sql import run_body

    monkeypatch.delenv(DATABASE_URL_ENV, raising=False)
    config = _config(tmp_path, pg_url)
    store = await Store.connect(config)  # creates the tables
    try:
        assert not await asyncio.to_thread(palaver_running, config)
        await store.atomically(run_body(
            "INSERT INTO processes (id, lock_key, app_name, started_at, heartbeat_at)"
            f" VALUES ('h:1:a', 1, 'palaver a', {DB_NOW} - 100, {DB_NOW} - 100)"))
        assert not await asyncio.to_thread(palaver_running, config)  # a stale lease
        await store.atomically(run_body(
            f"UPDATE processes SET heartbeat_at = {DB_NOW} WHERE id = 'h:1:a'"))
        assert await asyncio.to_thread(palaver_running, config)
    finally:
        await store.close()
