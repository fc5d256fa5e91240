"""WhatsApp delivery contract: retryable SendErrors while WhatsApp is away, channel_ready
when it is back, and no call reaching neonize (Go) without a live session."""

from __future__ import annotations

import logging

import pytest
from neonize.aioze.events import ConnectedEv, DisconnectedEv
from neonize.proto import Neonize_pb2 as N

from bridge.envelope import ChatAddress, ChatKind, Outbound
from bridge.ports import SendError
from channels.whatsapp import WhatsAppChannel
from tests.channels.test_whatsapp import ANN, DM, RecordingSink, make_channel
from tests.channels.test_whatsapp_fake import FakeWhatsAppClient, until


class ReadySink(RecordingSink):
    """A recording core that also implements ``channel_ready`` (like ConversationCore)."""

    def __init__(self) -> None:
        super().__init__()
        self.ready: list[tuple[WhatsAppChannel, bool]] = []  # (channel, connected then)

    def channel_ready(self, channel: WhatsAppChannel) -> None:
        self.ready.append((channel, channel.health().connected))


async def start(tmp_path, fake, sink=None, **kw):
    channel, clock, sleeps = make_channel(tmp_path, fake, **kw)
    sink = sink if sink is not None else ReadySink()
    await channel.start(sink)
    return channel, sink, sleeps


def chat_jid(number: str = ANN) -> N.JID:
    return N.JID(User=number, Server="s.whatsapp.net", RawAgent=0, Device=0, Integrator=0,
                 IsEmpty=False)


# --------------------------------------------------------------------------- send()


async def test_send_while_connecting_is_retryable_and_never_reaches_the_client(tmp_path):
    fake = FakeWhatsAppClient(auto_connect=False)  # the session is up, ConnectedEv not yet
    channel, sink, _ = await start(tmp_path, fake)
    try:
        await until(lambda: fake.connects == 1)
        with pytest.raises(SendError) as info:
            await channel.send(Outbound(DM, "too early"))
        assert info.value.retryable and info.value.sent_ids == []
        assert "connecting" in str(info.value)
        assert fake.send_calls == 0 and sink.ready == []
        await fake.emit(ConnectedEv(status=True))
        assert sink.ready == [(channel, True)]  # connected before the core is told
        assert await channel.send(Outbound(DM, "now")) == ["OUT1"]
    finally:
        await channel.stop()


async def test_send_after_stop_is_retryable_and_never_reaches_the_client(tmp_path):
    fake = FakeWhatsAppClient()
    channel, _, _ = await start(tmp_path, fake)
    await until(lambda: channel.health().connected)
    await channel.stop()
    with pytest.raises(SendError) as info:
        await channel.send(Outbound(DM, "after stop"))
    assert info.value.retryable and "stopped" in str(info.value)
    assert fake.send_calls == 0


async def test_send_during_whatsmeow_reconnect_waits_for_channel_ready(tmp_path):
    fake = FakeWhatsAppClient()
    channel, sink, _ = await start(tmp_path, fake)
    try:
        await until(lambda: len(sink.ready) == 1)
        await fake.emit(DisconnectedEv(status=True))  # whatsmeow reconnects by itself
        with pytest.raises(SendError) as info:
            await channel.send(Outbound(DM, "while away"))
        assert info.value.retryable and fake.send_calls == 0
        await fake.emit(ConnectedEv(status=True))
        assert len(sink.ready) == 2 and sink.ready[-1] == (channel, True)
        assert await channel.send(Outbound(DM, "back")) == ["OUT1"]
        assert fake.sent == [(f"{ANN}@s.whatsapp.net", "back", None)]
    finally:
        await channel.stop()


async def test_connection_lost_between_in_channel_retries_hands_over_to_the_core(tmp_path):
    fake = FakeWhatsAppClient()
    sleeps: list[float] = []
    channel, _, _ = make_channel(tmp_path, fake, sleeps=sleeps)

    async def sleep_while_the_socket_drops(seconds: float) -> None:
        sleeps.append(seconds)
        await fake.emit(DisconnectedEv(status=True))

    channel._sleep = sleep_while_the_socket_drops
    await channel.start(ReadySink())
    try:
        await until(lambda: channel.health().connected)
        fake.send_failures = 1  # "websocket not connected": nothing went out
        with pytest.raises(SendError) as info:
            await channel.send(Outbound(DM, "hello"))
        assert info.value.retryable
        assert fake.send_calls == 1 and sleeps == [0.5]  # no second call while away
    finally:
        await channel.stop()


async def test_sent_ids_name_the_chunks_that_went_out_before_a_passing_failure(tmp_path):
    fake = FakeWhatsAppClient()
    channel, _, _ = await start(tmp_path, fake, textChunkLimit=200)
    try:
        await until(lambda: channel.health().connected)
        original = fake.send_text

        async def first_then_unsent(chat, text, *, quoted=None):
            if fake.sent:
                fake.send_failures = 1
            return await original(chat, text, quoted=quoted)

        fake.send_text = first_then_unsent
        with pytest.raises(SendError) as info:
            await channel.send(Outbound(DM, ("x " * 90 + "\n\n") * 3, plain=True))
        assert info.value.retryable and info.value.sent_ids == ["OUT1"]
        assert len(fake.sent) == 1 and fake.send_calls == 1 + channel.send_attempts
        # the list handed over is a snapshot, not the channel's working list
        info.value.sent_ids.append("x")
    finally:
        await channel.stop()


async def test_bad_chat_id_is_a_permanent_error(tmp_path):
    fake = FakeWhatsAppClient()
    channel, _, _ = await start(tmp_path, fake)
    try:
        await until(lambda: channel.health().connected)
        bad = ChatAddress(channel="whatsapp", account="default", chat_id="no-at-sign",
                          chat_kind=ChatKind.DIRECT)
        with pytest.raises(SendError) as info:
            await channel.send(Outbound(bad, "hi"))
        assert not info.value.retryable and "not a WhatsApp JID" in str(info.value)
        assert fake.send_calls == 0
    finally:
        await channel.stop()


# --------------------------------------------------------------------------- channel_ready


async def test_channel_ready_after_every_connection_including_rebuilt_sessions(tmp_path):
    fake = FakeWhatsAppClient()
    channel, sink, sleeps = await start(tmp_path, fake)
    try:
        await until(lambda: len(sink.ready) == 1)
        fake.drop(ConnectionError("stream end"))  # the Go session died: rebuilt
        await until(lambda: fake.connects == 2 and len(sink.ready) == 2)
        assert len(sleeps) == 1
        assert all(ch is channel and connected for ch, connected in sink.ready)
    finally:
        await channel.stop()
    await fake.emit(ConnectedEv(status=True))  # a straggler after stop
    assert len(sink.ready) == 2 and not channel.health().connected


async def test_failing_channel_ready_is_logged_and_harmless(tmp_path, caplog):
    class BrokenReadySink(RecordingSink):
        def channel_ready(self, channel) -> None:
            raise RuntimeError("core exploded")

    fake = FakeWhatsAppClient()
    with caplog.at_level(logging.ERROR, logger="channels.whatsapp"):
        channel, _, _ = await start(tmp_path, fake, sink=BrokenReadySink())
        try:
            await until(lambda: channel.health().detail.startswith("connected as"))
            assert await channel.send(Outbound(DM, "still works")) == ["OUT1"]
        finally:
            await channel.stop()
    assert "core exploded" in caplog.text


# The neonize glue (disconnect waits for calls in Go, bounded) is tested through the real
# Go-call path in tests/channels/test_whatsapp_executor.py.
