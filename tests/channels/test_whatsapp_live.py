"""Live replies on WhatsApp (issue 17): acknowledgement reactions and ``/stop``, through
the real NeonizeClient and the fake of neonize's own NewAClient."""

from __future__ import annotations

import asyncio
import inspect
import sqlite3
import time

import pytest
from neonize.aioze import client as neonize_client
from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as E

from bridge.app import App
from bridge.config.schema import Config
from bridge.envelope import ChatAddress, ChatKind
from bridge.media import MediaStore
from bridge.ports import SendError
from bridge.store import DB_FILENAME
from bridge.store.records import STOPPED_REASON, MessageStatus
from channels.whatsapp import WhatsAppChannel
from tests.channels.test_whatsapp_fake import message_event, until
from tests.channels.test_whatsapp_neonize import ANN, ANN_JID, DM, db_of, started
from tests.fakes.neonize_fake import install_bounded

EYES = "\U0001F440"
GROUP_JID = "120363000000000001@g.us"
GROUP = ChatAddress(channel="whatsapp", account="default", chat_id=GROUP_JID,
                    chat_kind=ChatKind.GROUP)


@pytest.fixture
async def go(monkeypatch):
    fake = install_bounded(monkeypatch)
    yield fake
    fake.release()


def test_the_fakes_build_reaction_has_neonizes_signature():
    """The fake stands in for neonize 0.5's NewAClient.build_reaction, argument for
    argument (Palaver's client calls it positionally)."""
    real = inspect.signature(neonize_client.NewAClient.build_reaction)
    from tests.fakes.neonize_fake import FakeNewAClient

    fake = inspect.signature(FakeNewAClient.build_reaction)
    assert list(real.parameters) == list(fake.parameters) == [
        "self", "chat", "sender", "message_id", "reaction"]


async def test_a_dm_reaction_is_keyed_by_the_chat_and_empty_text_removes_it(tmp_path, go):
    channel, _sink = await started(tmp_path, go)
    try:
        go.deliver(message_event(E.Message(conversation="hi"), chat=ANN_JID, sender=ANN_JID,
                                 msg_id="IN1"))
        await until(lambda: _sink.received)
        presence_before = list(go.presence_calls)
        await channel.react(DM, "IN1", EYES)
        await channel.react(DM, "IN1", "")
        sent = go.reactions_to("IN1")
        assert [chat for chat, _ in sent] == [ANN_JID, ANN_JID]
        first, second = (r for _, r in sent)
        assert first.key.remoteJID == ANN_JID and first.key.ID == "IN1"
        assert first.key.fromMe is False  # someone else's message
        assert not first.key.HasField("participant")  # a direct chat names no participant
        assert first.text == EYES and first.senderTimestampMS > 0
        assert second.text == ""  # WhatsApp's way to take a reaction back
        # Built by Go, then sent: both on the client's own Go-call threads.
        names = [name for name, _ in go.calls]
        assert names.count("BuildReaction") == 2
        assert all(thread.startswith("neonize-") for fn, thread in go.threads
                   if fn in ("BuildReaction", "SendMessage"))
        # No presence: the phone keeps its notifications.
        assert go.presence_calls == presence_before
    finally:
        await channel.stop()


async def test_a_group_reaction_names_the_author_as_received(tmp_path, go):
    channel, sink = await started(tmp_path, go, groupPolicy="open")
    try:
        lid_author = "88112233445566@lid"
        go.deliver(message_event(E.Message(conversation="hello group"), chat=GROUP_JID,
                                 sender=lid_author, sender_alt=ANN_JID, msg_id="G1"))
        await until(lambda: sink.received)
        await channel.react(GROUP, "G1", EYES)
        (_chat, reaction), = go.reactions_to("G1")
        assert reaction.key.remoteJID == GROUP_JID
        # The LID the message came from, not the phone number behind it.
        assert reaction.key.participant == lid_author
        assert reaction.key.fromMe is False
    finally:
        await channel.stop()


async def test_a_reaction_while_disconnected_reaches_no_go_call(tmp_path, go):
    go.link(db_of(tmp_path))
    from tests.channels.test_whatsapp_neonize import channel_for

    channel = channel_for(tmp_path)  # never started: Go has no client
    with pytest.raises(SendError):
        await channel.react(DM, "IN1", EYES)
    assert go.calls == [] and not go.crashes


async def test_an_unknown_group_author_is_an_error_not_a_guess(tmp_path, go):
    channel, _sink = await started(tmp_path, go, groupPolicy="open")
    try:
        with pytest.raises(SendError, match="author"):
            await channel.react(GROUP, "NEVER-SEEN", EYES)
        assert go.reactions_to("NEVER-SEEN") == []
    finally:
        await channel.stop()


# ------------------------------------------------------------------ through the core


def _config(data, models) -> Config:
    return Config.model_validate({
        "dataDir": str(data),
        "models": {"mode": "replace", "providers": {"fake": {
            "baseUrl": models.url_for("openai-completions"),
            "api": "openai-completions", "apiKey": "k",
            "models": [{"id": "m"}]}}},
        "agents": {"defaults": {"model": "fake/m"}},
        "channels": {"whatsapp": {"dmPolicy": "allowlist", "allowFrom": ["+" + ANN]}},
    })


def _texts(go) -> list[str]:
    return [m.conversation or m.extendedTextMessage.text for _chat, m in go.sent
            if isinstance(m, E.Message) and not m.HasField("reactionMessage")]

async def _running_app(tmp_path, go, models) -> tuple[App, WhatsAppChannel]:
    """The whole app on the WhatsApp fake, connected."""
    data = tmp_path / "data"
    go.link(db_of(tmp_path))
    config = _config(data, models)
    channel = WhatsAppChannel(config.channels.whatsapp, media=MediaStore(data / "media"),
                              data_dir=data)
    app = App(config, channels=[channel])
    await app.start()
    await until(lambda: channel.health().detail.startswith("connected as"), 5)
    return app, channel



async def test_stop_mid_answer_closes_the_model_stream_and_says_stopped(tmp_path, go, models):
    now_ms = int(time.time() * 1000)
    # A slow answer: ten words, a second apart.
    models.reply(" ".join(f"word{n}" for n in range(10)), chunks=10, delay=1.0)
    models.reply("The next answer.")
    data = tmp_path / "data"
    app, channel = await _running_app(tmp_path, go, models)
    try:
        go.deliver(message_event(E.Message(conversation="tell me a long story"),
                                 chat=ANN_JID, sender=ANN_JID, msg_id="Q1",
                                 timestamp_ms=now_ms))
        await until(lambda: models.requests, 10)
        request = models.requests[0]
        await until(lambda: request.chunks_written >= 1, 10)  # it is streaming
        # The ack came before the answer.
        assert [r.text for _, r in go.reactions_to("Q1")] == [EYES]
        go.deliver(message_event(E.Message(conversation="/stop"), chat=ANN_JID,
                                 sender=ANN_JID, msg_id="S1", timestamp_ms=now_ms))
        await asyncio.wait_for(request.closed.wait(), 10)  # the server saw it go
        await until(lambda: "Stopped." in _texts(go), 10)
        await app.core.wait_idle()
        written = request.chunks_written
        # The ack is taken back; the /stop itself gets none.
        await until(lambda: [r.text for _, r in go.reactions_to("Q1")] == [EYES, ""], 5)
        assert go.reactions_to("S1") == []

        go.deliver(message_event(E.Message(conversation="and now?"), chat=ANN_JID,
                                 sender=ANN_JID, msg_id="N1", timestamp_ms=now_ms))
        await until(lambda: "The next answer." in _texts(go), 10)
        await app.core.wait_idle()
        assert request.chunks_written == written  # nothing more was generated
        assert _texts(go) == ["Stopped.", "The next answer."]
        assert len(models.requests) == 2 and "and now?" in models.requests[1].last_user_text()
        assert "tell me a long story" not in models.requests[1].last_user_text()
    finally:
        await app.stop(1)
    assert not go.crashes
    with sqlite3.connect(data / DB_FILENAME) as db:
        rows = {r[0]: (r[1], r[2]) for r in db.execute(
            "SELECT platform_message_id, status, reason FROM messages WHERE direction = 'in'")}
    # The stopped question is closed for good (a restart does not answer it); the /stop
    # is an answered command of its own.
    assert rows["Q1"] == (MessageStatus.FAILED.value, STOPPED_REASON)
    assert rows["S1"][0] == MessageStatus.ANSWERED.value
    assert rows["N1"][0] == MessageStatus.ANSWERED.value


async def test_the_ack_goes_when_the_answer_is_delivered_and_turns_sad_when_models_fail(
        tmp_path, go, models):
    """Through the whole app: 👀 before the answer, taken back once the answer went out;
    when every model failed, the 👀 becomes 😢 (and the apology is sent)."""
    models.reply("Here you are.")
    models.error(400, "the model refused")  # not retried: one model, a client error
    app, channel = await _running_app(tmp_path, go, models)
    try:
        now_ms = int(time.time() * 1000)
        go.deliver(message_event(E.Message(conversation="first"), chat=ANN_JID,
                                 sender=ANN_JID, msg_id="A1", timestamp_ms=now_ms))
        await until(lambda: "Here you are." in _texts(go), 10)
        await until(lambda: [r.text for _, r in go.reactions_to("A1")] == [EYES, ""], 5)
        # The reaction was set before the answer was sent, and taken back after it.
        order = [("reaction" if m.HasField("reactionMessage") else "text")
                 for _chat, m in go.sent if isinstance(m, E.Message)]
        assert order[:3] == ["reaction", "text", "reaction"]

        go.deliver(message_event(E.Message(conversation="second"), chat=ANN_JID,
                                 sender=ANN_JID, msg_id="A2", timestamp_ms=now_ms))
        await until(lambda: len(_texts(go)) == 2, 10)  # the apology
        await until(lambda: [r.text for _, r in go.reactions_to("A2")] == [EYES, "\U0001F622"],
                    5)
    finally:
        await app.stop(1)
    assert not go.crashes
