"""Chunk-level delivery: a crash mid-reply resumes at the first chunk not sent.

The crash is an App stopped (grace 0) while chunk k of an N-chunk reply is in flight on
the fake Bot API; a new App on the same data directory sends chunks k..N-1 only.
"""

from __future__ import annotations

import asyncio

import pytest

from bridge.app import App
from bridge.config.schema import Config
from channels.telegram import TelegramChannel

PARTS = 8
CRASH_AT = 3


def _reply() -> str:
    # One paragraph per chunk at textChunkLimit 200.
    return "\n\n".join(f"Part {i}: " + "words " * 25 for i in range(PARTS))


def _config(tmp_path, fake, models, **telegram) -> Config:
    return Config.model_validate({
        "dataDir": str(tmp_path / "data"),
        "models": {"mode": "replace", "providers": {"local": {
            "baseUrl": models.url_for("openai-completions"), "api": "openai-completions",
            "models": [{"id": "m", "contextWindow": 32000, "maxTokens": 500}],
        }}},
        "agents": {"defaults": {"model": {"primary": "local/m"}}},
        "channels": {"telegram": {"botToken": fake.token, "apiRoot": fake.url,
                                  "dmPolicy": "open", "allowFrom": ["*"],
                                  "textChunkLimit": 200, "maxReplyChunks": 0,
                                  **telegram}},
        "health": {"enabled": False},
    })


@pytest.fixture(autouse=True)
def _quick(monkeypatch):
    monkeypatch.setattr(TelegramChannel, "poll_timeout", 1)
    monkeypatch.setattr(TelegramChannel, "typing_delay", 0)
    monkeypatch.setattr(TelegramChannel, "pace_chat_interval", 0)  # pacing: another test


def _part(text: str) -> int:
    return int(text.split(":", 1)[0].removeprefix("Part "))


async def test_restart_after_a_crash_mid_reply_sends_only_the_chunks_not_sent(
        fake, models, tmp_path):
    models.reply(_reply())
    # Chunk CRASH_AT hangs in flight (the first time): the process dies meanwhile.
    fake.slow("sendMessage", 2.0, times=1,
              when=lambda p: str(p.get("text", "")).startswith(f"Part {CRASH_AT}:"))
    app = App(_config(tmp_path, fake, models))
    await app.start()
    try:
        fake.push_text(1001, 1001, "tell me everything")
        await fake.wait_until(lambda: len(fake.calls_to("sendMessage")) == CRASH_AT + 1,
                              timeout=10)
        assert [_part(s.text) for s in fake.sent] == list(range(CRASH_AT))
    finally:
        await app.stop(grace=0)  # the crash: chunk CRASH_AT never answered to this process
    before = len(fake.calls_to("sendMessage"))

    app = App(_config(tmp_path, fake, models))
    await app.start()
    try:
        await fake.wait_until(lambda: len(fake.calls_to("sendMessage")) >= before + PARTS
                              - CRASH_AT, timeout=10)
        await asyncio.sleep(0.3)  # nothing more comes
        again = [_part(c.params["text"]) for c in fake.calls_to("sendMessage")[before:]]
        # Chunk CRASH_AT was never recorded as sent, so it goes again (at least once per
        # chunk); chunks 0..CRASH_AT-1 are not repeated.
        assert again == list(range(CRASH_AT, PARTS))
        assert len(models.requests) == 1  # the reply was stored, not asked for again
        key = "telegram:default:direct:1001"
        assert await app.store.undelivered(key) == []
        (reply,) = [m for m in await app.store.messages_for(key) if m.direction == "out"]
        ids = await app.store.chunks_sent(reply.id)
        assert len(ids) == PARTS
        assert ids[:CRASH_AT] == [f"1001:{s.message_id}" for s in fake.sent[:CRASH_AT]]
        assert reply.status == "sent"
    finally:
        await app.stop(grace=0)
