"""WhatsApp DMs through the real core (App, store, access, router) and a fake model server."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("bridge.app")

from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as E  # noqa: E402

from bridge.app import App  # noqa: E402
from bridge.config.schema import Config  # noqa: E402
from bridge.media import MediaStore  # noqa: E402
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
