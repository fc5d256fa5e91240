"""WhatsApp DMs through the real core (App, store, access, router) and a fake model server."""

from __future__ import annotations

import asyncio
import time

import pytest

pytest.importorskip("bridge.app")

from neonize.aioze.events import ConnectedEv, DisconnectedEv  # noqa: E402
from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as E  # noqa: E402

from bridge.app import App  # noqa: E402
from bridge.config.schema import Config  # noqa: E402
from bridge.media import MediaStore  # noqa: E402
from bridge.store import MessageStatus, StoredMessage  # noqa: E402
from channels.whatsapp import WhatsAppChannel  # noqa: E402
from tests.channels.test_whatsapp_fake import (  # noqa: E402
    FakeWhatsAppClient,
    message_event,
    until,
)
from tests.fakes.model_server import FakeModelServer  # noqa: E402

ALLOWED = "15551234567"
STRANGER = "15559990000"


@pytest.mark.parametrize("policy", ["allowlist", "pairing"])
async def test_dm_from_allowed_and_unknown_numbers(tmp_path, policy):
    sent_ms = int(time.time() * 1000)  # the events were sent just now
    async with FakeModelServer() as server:
        server.reply("Hi **Ann**, nice to meet you.", reasoning="private thoughts")
        data = tmp_path / "data"
        config = Config.model_validate({
            "dataDir": str(data),
            "models": {"mode": "replace", "providers": {"fake": {
                "baseUrl": server.url_for("openai-completions"),
                "api": "openai-completions", "apiKey": "k",
                "models": [{"id": "m"}]}}},
            "agents": {"defaults": {"model": "fake/m"}},
            "channels": {"whatsapp": {"dmPolicy": policy, "allowFrom": ["+" + ALLOWED]}},
        })
        fake = FakeWhatsAppClient()
        channel = WhatsAppChannel(config.channels.whatsapp, media=MediaStore(data / "media"),
                                  data_dir=data, client_factory=lambda path: fake)
        app = App(config, channels=[channel])
        await app.start()
        try:
            await until(lambda: channel.health().connected)
            await fake.emit(message_event(
                E.Message(conversation="hello"), chat=f"{ALLOWED}@s.whatsapp.net",
                sender=f"{ALLOWED}@s.whatsapp.net", msg_id="OK1", timestamp_ms=sent_ms))
            await fake.emit(message_event(
                E.Message(conversation="let me in"), chat=f"{STRANGER}@s.whatsapp.net",
                sender=f"{STRANGER}@s.whatsapp.net", msg_id="NO1", timestamp_ms=sent_ms))
            await channel.wait_idle()
            await until(lambda: any(chat.startswith(ALLOWED) for chat, _, _ in fake.sent),
                        limit_s=10)
            await app.core.wait_idle()
            # a duplicate delivery of the allowed message is not answered again
            await fake.emit(message_event(
                E.Message(conversation="hello"), chat=f"{ALLOWED}@s.whatsapp.net",
                sender=f"{ALLOWED}@s.whatsapp.net", msg_id="OK1", timestamp_ms=sent_ms))
            await channel.wait_idle()
            await app.core.wait_idle()
        finally:
            await app.stop(1)

    to_allowed = [text for chat, text, _ in fake.sent if chat.startswith(ALLOWED)]
    to_stranger = [text for chat, text, _ in fake.sent if chat.startswith(STRANGER)]
    assert to_allowed == ["Hi *Ann*, nice to meet you."]  # WhatsApp markup, no reasoning
    assert len(server.requests) == 1  # only the allowed sender reached a model
    assert "hello" in server.requests[0].last_user_text()
    assert (["OK1"], f"{ALLOWED}@s.whatsapp.net", f"{ALLOWED}@s.whatsapp.net") in fake.reads
    assert all(ids != ["NO1"] for ids, _, _ in fake.reads)  # refused: no blue ticks
    composing = [c for chat, c in fake.presence if chat.startswith(ALLOWED)]
    assert composing and composing[0] is True and composing[-1] is False
    if policy == "allowlist":
        assert to_stranger == []
    else:
        assert len(to_stranger) == 1 and "pairing approve whatsapp" in to_stranger[0]


def _config(data, server) -> Config:
    return Config.model_validate({
        "dataDir": str(data),
        "models": {"mode": "replace", "providers": {"fake": {
            "baseUrl": server.url_for("openai-completions"),
            "api": "openai-completions", "apiKey": "k",
            "models": [{"id": "m"}]}}},
        "agents": {"defaults": {"model": "fake/m"}},
        "channels": {"whatsapp": {"dmPolicy": "allowlist", "allowFrom": ["+" + ALLOWED]}},
    })


@pytest.mark.parametrize("outage", ["socket", "session"])
async def test_reply_ready_while_disconnected_is_kept_then_sent_once_on_reconnect(
    tmp_path, outage
):
    """The reply is ready while WhatsApp is away: it stays pending (no call reaches the
    client), and the reconnect's channel_ready sends it at once — not after the core's
    5 s backoff — exactly once."""
    sent_ms = int(time.time() * 1000)
    reconnect = asyncio.Event()

    async def backoff_sleep(_seconds: float) -> None:  # the supervisor waits for the test
        await reconnect.wait()

    async with FakeModelServer() as server:
        server.reply("Here you go.")
        data = tmp_path / "data"
        config = _config(data, server)
        fake = FakeWhatsAppClient()
        channel = WhatsAppChannel(config.channels.whatsapp, media=MediaStore(data / "media"),
                                  data_dir=data, client_factory=lambda path: fake,
                                  sleep=backoff_sleep)
        app = App(config, channels=[channel])
        await app.start()
        try:
            await until(lambda: channel.health().connected)
            await fake.emit(message_event(
                E.Message(conversation="hello"), chat=f"{ALLOWED}@s.whatsapp.net",
                sender=f"{ALLOWED}@s.whatsapp.net", msg_id="IN1", timestamp_ms=sent_ms))
            await fake.emit(DisconnectedEv(status=True))  # before the reply is ready
            if outage == "session":
                fake.drop(ConnectionError("stream end"))  # the Go session dies too
                await until(lambda: fake.disconnects == 1)  # supervisor in its backoff
            await channel.wait_idle()
            key = None

            async def pending_reply() -> StoredMessage | None:
                nonlocal key
                work = await app.store.open_work(["whatsapp"])
                if work:
                    key = work[0].session_key
                if key is None:
                    return None
                outs = [m for m in await app.store.messages_for(key) if m.direction == "out"]
                return outs[0] if outs and outs[0].send_attempts >= 1 else None

            for _ in range(500):
                if (reply := await pending_reply()) is not None:
                    break
                await asyncio.sleep(0.01)
            else:
                raise AssertionError("no reply was kept for a retry")
            assert reply.status is MessageStatus.PENDING and not reply.delivered
            assert reply.send_attempts == 1 and reply.next_attempt_at > time.time() + 2
            assert fake.send_calls == 0 and fake.sent == []  # nothing reached neonize

            started = time.monotonic()
            if outage == "socket":
                await fake.emit(ConnectedEv(status=True))  # whatsmeow reconnected
            else:
                reconnect.set()  # the supervisor builds a new session -> ConnectedEv
            await until(lambda: fake.sent, limit_s=4)
            assert time.monotonic() - started < 4  # channel_ready, not the 5 s backoff
            await app.core.wait_idle()
            done = [m for m in await app.store.messages_for(key) if m.direction == "out"]
            assert await app.store.undelivered(key) == []
        finally:
            reconnect.set()
            await app.stop(1)

    assert fake.sent == [(f"{ALLOWED}@s.whatsapp.net", "Here you go.", None)]  # once
    assert fake.send_calls == 1
    assert len(done) == 1 and done[0].status is MessageStatus.SENT and done[0].delivered
    assert fake.connects == (2 if outage == "session" else 1)
