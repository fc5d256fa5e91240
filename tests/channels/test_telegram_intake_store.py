"""Telegram intake when the store cannot take a write: nothing is skipped nor confirmed.

FakeBotAPI <- real PTB <- App (real store, core) -> FakeModelServer (echo).  The disk is
made "full" by the store's write path raising what SQLite raises then; the lock is a real
second sqlite3 connection holding ``BEGIN IMMEDIATE``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sqlite3

import aiohttp
import pytest

import bridge.conversation
import bridge.store.db
from bridge.app import App
from bridge.config.schema import Config
from bridge.health import HealthServer
from bridge.metrics import Metrics
from bridge.store import DB_FILENAME, MessageStatus, Store
from bridge.store.db import StoreUnavailableError
from channels.telegram import TelegramChannel, translate
from channels.telegram.intake import Intake
from tests.fakes.telegram_api import FakeBotAPI

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32


@pytest.fixture(autouse=True)
def _fast(monkeypatch):
    monkeypatch.setattr(TelegramChannel, "poll_timeout", 1)
    monkeypatch.setattr(TelegramChannel, "typing_delay", 0)
    # Short enough that the code before the fix skipped (and confirmed) within the test.
    monkeypatch.setattr(TelegramChannel, "sink_retry_delays", (0.01, 0.02))
    monkeypatch.setattr(Intake, "store_backoff_base", 0.02, raising=False)
    monkeypatch.setattr(Intake, "store_backoff_max", 0.1, raising=False)
    monkeypatch.setattr(bridge.conversation, "STORE_RETRY_DELAYS", (0.01, 0.01),
                        raising=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_config(tmp_path, fake, models, **telegram) -> Config:
    return Config.model_validate({
        "dataDir": str(tmp_path / "data"),
        "models": {"mode": "replace", "providers": {"local": {
            "baseUrl": models.url_for("openai-completions"), "api": "openai-completions",
            "models": [{"id": "text", "contextWindow": 32000, "maxTokens": 1000}],
        }}},
        "agents": {"defaults": {"model": {"primary": "local/text"}}},
        "channels": {"telegram": {"botToken": fake.token, "apiRoot": fake.url,
                                  "dmPolicy": "open", "allowFrom": ["*"], **telegram}},
        "health": {"enabled": False},
    })


class Writes:
    """Counts the store's inbound writes; ``full`` makes them fail like a full disk."""

    def __init__(self, monkeypatch) -> None:
        self.full = False
        self.calls = 0
        self._changed = asyncio.Event()
        real = Store.record_inbound
        outer = self

        async def record_inbound(self, *args, **kwargs):
            outer.calls += 1
            outer._changed.set()
            if outer.full:
                raise StoreUnavailableError("disk full")
            return await real(self, *args, **kwargs)

        monkeypatch.setattr(Store, "record_inbound", record_inbound)

    async def wait_calls(self, n: int) -> None:
        async with asyncio.timeout(10):
            while self.calls < n:
                self._changed.clear()
                await self._changed.wait()


def _offsets(fake: FakeBotAPI) -> list[int]:
    return [c.params["offset"] for c in fake.calls_to("getUpdates") if c.params.get("offset")]


async def _inbound_rows(app: App) -> list:
    rows = []
    for key in await _session_keys(app):
        rows += [m for m in await app.store.messages_for(key)
                 if m.direction.value == "in"]
    return sorted(rows, key=lambda m: m.id)


async def _session_keys(app: App) -> list[str]:
    async with app.store.reading() as db:
        cur = await db.execute("SELECT DISTINCT session_key FROM messages")
        return [r[0] for r in await cur.fetchall()]


async def _healthz(app: App) -> int:
    server = HealthServer("127.0.0.1", 0, check=app.health, metrics=Metrics())
    async with server, aiohttp.ClientSession() as session, \
            session.get(server.url + "/healthz") as resp:
        return resp.status


async def test_disk_full_while_polling_holds_updates_until_a_write_succeeds(
        fake, models, tmp_path, run_app, monkeypatch, caplog):
    writes = Writes(monkeypatch)
    app = await run_app(make_config(tmp_path, fake, models))
    caplog.set_level(logging.INFO)
    fake.push_text(1001, 1001, "before")
    await fake.wait_for_sent(1, timeout=10)
    await app.core.wait_idle()

    writes.full = True
    ids = []
    for text in ("one", "two", "three"):
        fake.push_text(1001, 1001, text)
        ids.append(fake.pending_updates[-1])
    await writes.wait_calls(writes.calls + 15)  # several rounds of the core's retries
    assert fake.pending_updates == ids  # nothing skipped, nothing confirmed
    assert all(offset <= ids[0] for offset in _offsets(fake))
    assert app.core.store_problem == "disk full"
    report = await app.health()
    assert report["store"] == {"ok": False, "detail": "disk full"}
    assert await _healthz(app) == 503

    writes.full = False
    # The three may be answered together in one turn, or one by one.
    await fake.wait_until(lambda: any("three" in m.text for m in fake.sent), timeout=10)
    await fake.wait_until(lambda: not fake.pending_updates, timeout=10)
    await app.core.wait_idle()
    rows = await _inbound_rows(app)
    assert [r.text for r in rows] == ["before", "one", "two", "three"]
    assert all(r.status is MessageStatus.ANSWERED for r in rows)
    answered = " ".join(m.text for m in fake.sent)
    for text in ("before", "one", "two", "three"):
        assert answered.count(text) == 1  # each answered once
    assert (await app.health())["store"]["ok"] is True
    outage = [r for r in caplog.records if "store unavailable" in r.getMessage()]
    assert len(outage) == 1  # one line, not one per message (or per retry)
    assert any("writable again" in r.getMessage() for r in caplog.records)


async def test_write_lock_held_past_the_retries_loses_nothing(
        fake, models, tmp_path, run_app, monkeypatch):
    monkeypatch.setattr(bridge.store.db, "BUSY_TIMEOUT_MS", 50)
    writes = Writes(monkeypatch)  # counting only
    app = await run_app(make_config(tmp_path, fake, models))
    fake.push_text(1001, 1001, "before")
    await fake.wait_for_sent(1, timeout=10)
    await app.core.wait_idle()

    blocker = sqlite3.connect(tmp_path / "data" / DB_FILENAME, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")  # a backup tool, a sqlite3 shell ...
        ids = []
        for text in ("one", "two", "three"):
            fake.push_text(1001, 1001, text)
            ids.append(fake.pending_updates[-1])
        await writes.wait_calls(writes.calls + 9)
        assert app.core.store_problem == "database locked"
        assert fake.pending_updates == ids
        assert all(offset <= ids[0] for offset in _offsets(fake))
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()

    await fake.wait_until(lambda: any("three" in m.text for m in fake.sent), timeout=15)
    await fake.wait_until(lambda: not fake.pending_updates, timeout=10)
    await app.core.wait_idle()
    rows = await _inbound_rows(app)
    assert [r.text for r in rows] == ["before", "one", "two", "three"]
    assert all(r.status is MessageStatus.ANSWERED for r in rows)
    answered = " ".join(s.text for s in fake.sent)
    for text in ("one", "two", "three"):
        assert answered.count(text) == 1  # each answered once


async def test_webhook_answers_503_while_the_store_is_unavailable(
        fake, models, tmp_path, run_app, monkeypatch):
    writes = Writes(monkeypatch)
    port = free_port()
    app = await run_app(make_config(
        tmp_path, fake, models, mode="webhook", webhookUrl=f"http://127.0.0.1:{port}/hook",
        webhookSecret="s3cret-TOKEN_1", webhookHost="127.0.0.1", webhookPort=port,
        webhookPath="/hook"))
    writes.full = True
    fake.push_text(1001, 1001, "via webhook")
    (pending,) = fake.pending_updates
    assert await fake.deliver_webhook() == 503  # Telegram keeps it and retries
    assert await fake.deliver_webhook() == 503
    assert fake.pending_updates == [pending]
    assert fake.sent == []
    assert (await app.health())["store"]["ok"] is False
    writes.full = False
    assert await fake.deliver_webhook() == 200
    (sent,) = await fake.wait_for_sent(1, timeout=10)
    assert sent.text == "echo: via webhook"
    assert fake.pending_updates == []


async def test_poison_update_is_skipped_and_recorded(
        fake, models, tmp_path, run_app, monkeypatch, caplog):
    real = translate.draft

    def draft(msg, *args, **kwargs):
        if msg.text == "POISON":
            raise ValueError("cannot translate this")
        return real(msg, *args, **kwargs)

    monkeypatch.setattr(translate, "draft", draft)
    app = await run_app(make_config(tmp_path, fake, models))
    fake.push_text(1001, 1001, "POISON")
    poison = fake.pending_updates[-1]
    fake.push_text(1001, 1001, "fine")
    (sent,) = await fake.wait_for_sent(1, timeout=10)
    assert sent.text == "echo: fine"
    (channel,) = app.channels
    assert channel._intake.skipped == 1
    skipped = [r for r in caplog.records if r.levelno == logging.ERROR
               and f"update {poison}" in r.getMessage()]
    assert len(skipped) == 1 and "poison" in skipped[0].getMessage()


async def test_refused_photo_is_neither_downloaded_nor_kept(
        fake, models, tmp_path, run_app):
    app = await run_app(make_config(tmp_path, fake, models, dmPolicy="allowlist",
                                    allowFrom=["1001"]))
    fake.push_photo(2002, 2002, PNG, caption="a stranger's private caption")
    await fake.wait_until(lambda: not fake.pending_updates, timeout=10)
    await asyncio.sleep(0)  # the row is stored before the offset moves past it
    rows = await _inbound_rows(app)
    assert len(rows) == 1 and rows[0].status is MessageStatus.REFUSED
    assert rows[0].text == "" and rows[0].media == ()
    assert fake.calls_to("getFile") == []
    media = tmp_path / "data" / "media"
    assert not media.exists() or not [p for p in media.rglob("*") if p.is_file()]
