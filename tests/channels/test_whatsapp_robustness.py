"""WhatsApp channel: stop drains the inbox, media only after the access decision, no
double sends, catch-up versus live messages, presence, E.164 aliases, quotes that survive
a restart.  Real neonize events in, a recording fake client out."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from neonize.aioze.events import ConnectedEv, DisconnectedEv
from neonize.exc import SendMessageError
from neonize.proto import Neonize_pb2 as N
from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as E
from neonize.utils.enum import Presence

from bridge.access import AccessControl
from bridge.config.schema import Config
from bridge.envelope import AcceptStatus, ChatAddress, ChatKind, Inbound, MediaKind, Outbound
from bridge.ports import SendError
from bridge.store import Store
from channels.whatsapp.client import NeonizeClient, NotSent, send_error_means_unsent
from channels.whatsapp.content import build_text_message
from channels.whatsapp.quotes import QuoteJournal
from tests.channels.test_whatsapp import (
    ANN,
    BOB_LID,
    BOB_PHONE,
    DM,
    GROUP,
    GROUP_ADDR,
    JPEG,
    RecordingSink,
    make_channel,
)
from tests.channels.test_whatsapp_fake import (
    BOT_LID,
    NOW,
    FakeWhatsAppClient,
    message_event,
    until,
)

STRANGER = "15559990000"
ANN_JID = f"{ANN}@s.whatsapp.net"


class GateSink(RecordingSink):
    """A recording core that also answers ``admits`` the way the access policy would:
    allowed senders, and in groups only when mentioned.  Records what it was asked and
    how many downloads had happened by then."""

    def __init__(self, fake: FakeWhatsAppClient, allowed=("+" + ANN,)) -> None:
        super().__init__()
        self.fake = fake
        self.allowed = set(allowed)
        self.checked: list[tuple[Inbound, int]] = []

    def _decide(self, inbound: Inbound) -> bool:
        if not {inbound.sender_id, *inbound.sender_aliases} & self.allowed:
            return False
        return inbound.address.chat_kind is ChatKind.DIRECT or inbound.mentioned

    async def admits(self, inbound: Inbound) -> bool:
        self.checked.append((inbound, len(self.fake.downloads)))
        return self._decide(inbound)

    async def accept(self, inbound: Inbound) -> AcceptStatus:
        status = await super().accept(inbound)
        if not self._decide(inbound):
            status = AcceptStatus.REFUSED
            self.statuses[-1] = status
        return status


class AccessSink(RecordingSink):
    """The core's real access policy (bridge.access) behind a recording sink."""

    def __init__(self, access: AccessControl) -> None:
        super().__init__()
        self.access = access
        self.decisions = []

    async def admits(self, inbound: Inbound) -> bool:
        return (await self.access.check(inbound)).allowed

    async def accept(self, inbound: Inbound) -> AcceptStatus:
        decision = await self.access.check(inbound)
        self.decisions.append(decision)
        await super().accept(inbound)
        status = AcceptStatus.ACCEPTED if decision.allowed else AcceptStatus.REFUSED
        self.statuses[-1] = status
        return status


async def started(tmp_path, fake=None, sink=None, **config):
    fake = fake or FakeWhatsAppClient()
    channel, clock, sleeps = make_channel(tmp_path, fake, **config)
    sink = sink if sink is not None else RecordingSink()
    await channel.start(sink)
    await until(lambda: channel.health().detail.startswith("connected as"))
    await channel.wait_idle()
    return channel, fake, sink, clock, sleeps


def image(caption: str = "", *, mention: bool = False, size: int | None = len(JPEG)):
    ctx = E.ContextInfo(mentionedJID=[f"{BOT_LID}@lid"]) if mention else None
    msg = E.ImageMessage(caption=caption, mimetype="image/jpeg")
    if size is not None:
        msg.fileLength = size
    if ctx is not None:
        msg.contextInfo.CopyFrom(ctx)
    return E.Message(imageMessage=msg)


# --------------------------------------------------------------------------- stop


class SlowSink(RecordingSink):
    async def accept(self, inbound: Inbound) -> AcceptStatus:
        await asyncio.sleep(0.02)
        return await super().accept(inbound)


async def test_stop_hands_every_received_message_to_the_core(tmp_path):
    fake = FakeWhatsAppClient()
    fake.download_data = JPEG
    channel, fake, sink, _, _ = await started(tmp_path, fake, SlowSink())
    for i in range(4):
        await fake.emit(message_event(E.Message(conversation=f"m{i}"), chat=ANN_JID,
                                      sender=ANN_JID, msg_id=f"Q{i}"))
    await fake.emit(message_event(image("look"), chat=ANN_JID, sender=ANN_JID, msg_id="QIMG"))
    await channel.stop()

    assert [i.message_id for i in sink.received] == ["Q0", "Q1", "Q2", "Q3", "QIMG"]
    # drained while the session was still up, so the queued photo was still fetched
    assert sink.received[-1].media[0].media_id is not None
    assert fake.disconnects >= 1 and channel._worker is None


async def test_stop_drain_is_bounded_and_names_what_was_lost(tmp_path, caplog):
    gate = asyncio.Event()  # never set: the core hangs

    class StuckSink(RecordingSink):
        async def accept(self, inbound):
            self.received.append(inbound)
            await gate.wait()

    channel, fake, sink, _, _ = await started(tmp_path, sink=StuckSink())
    channel.stop_drain_s = 0.05
    for i in range(3):
        await fake.emit(message_event(E.Message(conversation="x"), chat=ANN_JID, sender=ANN_JID,
                                      msg_id=f"L{i}"))
    await until(lambda: len(sink.received) == 1)
    loop = asyncio.get_running_loop()
    began = loop.time()
    with caplog.at_level(logging.WARNING, logger="channels.whatsapp"):
        await channel.stop()
    assert loop.time() - began < 1.0
    assert "3 received message(s) not handed to the core" in caplog.text
    assert all(f"L{i}" in caplog.text for i in range(3))
    assert channel._inbox.empty()
    await asyncio.wait_for(channel.wait_idle(), 1)  # nothing left unaccounted


# --------------------------------------------------------------------------- media


async def test_refused_sender_media_is_described_but_never_downloaded(tmp_path):
    fake = FakeWhatsAppClient()
    fake.download_data = JPEG
    channel, fake, sink, _, _ = await started(tmp_path, fake, GateSink(fake))
    try:
        await fake.emit(message_event(image("hi"), chat=f"{STRANGER}@s.whatsapp.net",
                                      sender=f"{STRANGER}@s.whatsapp.net", msg_id="S1"))
        await channel.wait_idle()
        assert fake.downloads == []
        [(asked, _)] = sink.checked
        [inbound] = sink.received  # still handed over: pairing codes, refusal records
        assert sink.statuses == [AcceptStatus.REFUSED]
        for seen in (asked, inbound):
            [ref] = seen.media
            assert ref.kind is MediaKind.IMAGE and ref.media_id is None
            assert ref.size == len(JPEG) and ref.mime == "image/jpeg"
        assert fake.reads == []
    finally:
        await channel.stop()


async def test_group_photo_is_downloaded_only_when_the_bot_is_mentioned(tmp_path):
    fake = FakeWhatsAppClient()
    fake.download_data = JPEG
    channel, fake, sink, _, _ = await started(tmp_path, fake, GateSink(fake))
    try:
        await fake.emit(message_event(image("holiday"), chat=GROUP, sender=ANN_JID,
                                      msg_id="G1"))
        await channel.wait_idle()
        assert fake.downloads == []
        assert sink.received[0].media[0].media_id is None

        await fake.emit(message_event(image("what is this?", mention=True), chat=GROUP,
                                      sender=ANN_JID, msg_id="G2"))
        await channel.wait_idle()
        assert len(fake.downloads) == 1
        asked, downloads_before = sink.checked[-1]
        assert downloads_before == 0  # asked first, downloaded after
        assert asked.media[0].media_id is None
        stored = sink.received[-1].media[0]
        assert channel._media.path_for(stored.media_id).read_bytes() == JPEG
    finally:
        await channel.stop()


@pytest.mark.parametrize(
    ("message", "kind", "downloaded"),
    [
        (E.Message(videoMessage=E.VideoMessage(mimetype="video/mp4")), MediaKind.VIDEO, False),
        (E.Message(documentMessage=E.DocumentMessage(mimetype="application/zip",
                                                     fileName="big.zip")),
         MediaKind.DOCUMENT, False),
        (E.Message(audioMessage=E.AudioMessage(mimetype="audio/mpeg")), MediaKind.AUDIO, False),
        (E.Message(audioMessage=E.AudioMessage(mimetype="audio/ogg", PTT=True)),
         MediaKind.VOICE, False),
        (E.Message(imageMessage=E.ImageMessage(mimetype="image/jpeg", fileLength=0)),
         MediaKind.IMAGE, True),  # small kind: fetched, dropped if over the cap
    ],
)
async def test_media_without_a_stated_size(tmp_path, message, kind, downloaded):
    fake = FakeWhatsAppClient()
    fake.download_data = b"abc"
    channel, fake, sink, _, _ = await started(tmp_path, fake)
    try:
        await fake.emit(message_event(message, chat=ANN_JID, sender=ANN_JID, msg_id="NS"))
        await channel.wait_idle()
        [ref] = sink.received[0].media
        assert ref.kind is kind
        assert (ref.media_id is not None) is downloaded
        assert len(fake.downloads) == (1 if downloaded else 0)
        if not downloaded:
            assert "size unknown" in ref.note
    finally:
        await channel.stop()


async def test_stuck_download_is_abandoned_and_the_inbox_moves_on(tmp_path, caplog):
    fake = FakeWhatsAppClient()
    fake.download_gate = asyncio.Event()  # the download never finishes
    channel, fake, sink, _, _ = await started(tmp_path, fake)
    channel.download_timeout_s = 0.05
    try:
        await fake.emit(message_event(image("stuck"), chat=ANN_JID, sender=ANN_JID,
                                      msg_id="I1"))
        await fake.emit(message_event(E.Message(conversation="next"), chat=ANN_JID,
                                      sender=ANN_JID, msg_id="T2"))
        with caplog.at_level(logging.WARNING, logger="channels.whatsapp"):
            await asyncio.wait_for(channel.wait_idle(), 2)
        assert [i.message_id for i in sink.received] == ["I1", "T2"]
        [ref] = sink.received[0].media
        assert ref.media_id is None and "download timed out" in ref.note
        assert "abandoned" in caplog.text
    finally:
        await channel.stop()


async def test_failing_admission_check_downloads_nothing(tmp_path):
    fake = FakeWhatsAppClient()
    fake.download_data = JPEG
    sink = RecordingSink()

    async def broken(inbound):
        raise RuntimeError("database is locked")

    sink.admits = broken
    channel, fake, sink, _, _ = await started(tmp_path, fake, sink)
    try:
        await fake.emit(message_event(image(), chat=ANN_JID, sender=ANN_JID, msg_id="B1"))
        await channel.wait_idle()
        assert fake.downloads == [] and len(sink.received) == 1
    finally:
        await channel.stop()


# --------------------------------------------------------------------------- sending


async def test_send_failure_after_the_message_went_out_is_not_retried(tmp_path):
    channel, fake, _, _, sleeps = await started(tmp_path)
    try:
        fake.ambiguous_failures = 1
        with pytest.raises(SendError) as info:
            await channel.send(Outbound(DM, "hello"))
        assert [text for _, text, _ in fake.sent] == ["hello"]  # exactly one copy
        assert sleeps == [] and "not retried" in str(info.value)
        assert info.value.sent_ids == [] and not info.value.retryable
    finally:
        await channel.stop()


async def test_send_failure_before_sending_is_retried_once_per_attempt(tmp_path):
    channel, fake, _, _, sleeps = await started(tmp_path)
    try:
        fake.send_failures = 1
        assert await channel.send(Outbound(DM, "hello")) == ["OUT1"]
        assert [text for _, text, _ in fake.sent] == ["hello"] and sleeps == [0.5]
    finally:
        await channel.stop()


@pytest.mark.parametrize(
    ("error", "unsent"),
    [
        ("failed to send message node: websocket not connected", True),
        ("failed to send message node: frame socket is closed", True),
        ("failed to get device list: failed to send usync query: websocket not connected",
         True),
        ("failed to get group members: info query timed out", True),
        ("the store doesn't contain a device JID", True),
        ("timed out waiting for message send response", False),
        ("websocket not connected", False),  # also what a retried frame reports
        ("websocket disconnected before message send returned response", False),
        ("server returned error 479", False),
        ("failed to send message node: write tcp 10.0.0.1:1: broken pipe", False),
        ("failed to get reply to message: context deadline exceeded", False),
    ],
)
def test_send_error_classification(error, unsent):
    assert send_error_means_unsent(error) is unsent


async def test_neonize_client_maps_send_errors_and_announces_presence(tmp_path):
    client = NeonizeClient(tmp_path / "session.db")

    class Stub:
        error = "failed to send message node: websocket not connected"
        presences: list = []
        me = object()  # Go's first callback arrived: the session is live

        async def send_message(self, chat, message):
            raise SendMessageError(self.error)

        async def send_presence(self, presence):
            self.presences.append(presence)

    real, stub = client._client, Stub()
    client._client = stub
    client._session = asyncio.get_running_loop().create_future()  # a live session
    chat = N.JID(User=ANN, Server="s.whatsapp.net", RawAgent=0, Device=0, Integrator=0,
                 IsEmpty=False)
    try:
        with pytest.raises(NotSent):
            await client.send_text(chat, "hi")
        stub.error = "timed out waiting for message send response"
        with pytest.raises(SendMessageError) as info:
            await client.send_text(chat, "hi")
        assert not isinstance(info.value, NotSent)
        await client.set_presence(False)
        await client.set_presence(True)
        assert stub.presences == [Presence.UNAVAILABLE, Presence.AVAILABLE]
    finally:
        client._session.cancel()
        client._session = None
        client._client = real


# --------------------------------------------------------------------------- catch-up


@pytest.mark.parametrize(
    ("catch_up", "sent_at", "answered"),
    [
        (0, NOW + 60, True),  # live: sent after the connection came up (at NOW + 5)
        (0, NOW - 120, False),  # sent while offline
        (10, NOW + 60, True),
        (10, NOW - 9 * 60, True),
        (10, NOW - 11 * 60, False),
    ],
)
async def test_catch_up_minutes_limits_only_messages_sent_while_offline(
    tmp_path, catch_up, sent_at, answered
):
    channel, fake, sink, clock, _ = await started(tmp_path, catchUpMinutes=catch_up)
    try:
        clock[0] = NOW + 30 * 60  # handled late (a long backlog): live still counts as live
        await fake.emit(message_event(E.Message(conversation="hi"), chat=ANN_JID,
                                      sender=ANN_JID, msg_id="C1",
                                      timestamp_ms=int(sent_at * 1000)))
        await channel.wait_idle()
        assert [i.message_id for i in sink.received] == (["C1"] if answered else [])
    finally:
        await channel.stop()


async def test_reconnect_moves_the_catch_up_reference(tmp_path):
    channel, fake, sink, clock, _ = await started(tmp_path, catchUpMinutes=0)
    try:
        await fake.emit(DisconnectedEv(status=True))
        clock[0] = NOW + 600
        await fake.emit(ConnectedEv(status=True))  # whatsmeow reconnected by itself
        for msg_id, sent_at in (("GAP", NOW + 300), ("LIVE", NOW + 601)):
            await fake.emit(message_event(E.Message(conversation="x"), chat=ANN_JID,
                                          sender=ANN_JID, msg_id=msg_id,
                                          timestamp_ms=int(sent_at * 1000)))
        await channel.wait_idle()
        assert [i.message_id for i in sink.received] == ["LIVE"]
    finally:
        await channel.stop()


# --------------------------------------------------------------------------- presence


async def test_unavailable_presence_is_announced_after_every_connect(tmp_path):
    # "available" would silence the phone's push notifications (whatsmeow #262).
    channel, fake, _, _, _ = await started(tmp_path)
    try:
        assert fake.presences == [False] and fake.forced_receipts == 1
        fake.drop(ConnectionError("stream end"))
        await until(lambda: fake.connects == 2 and fake.presences == [False, False])
        assert fake.available == 0
    finally:
        await channel.stop()


async def test_presence_failure_does_not_stop_messages(tmp_path, caplog):
    fake = FakeWhatsAppClient()

    fake.presence_failures = 1  # the push name has not synced yet
    with caplog.at_level(logging.INFO, logger="channels.whatsapp"):
        channel, fake, sink, _, _ = await started(tmp_path, fake)
    try:
        await until(lambda: "could not announce presence yet" in caplog.text)
        # ... and it is tried again (once the push name synced it goes through).
        await until(lambda: fake.presences == [False])
        await fake.emit(message_event(E.Message(conversation="hi"), chat=ANN_JID,
                                      sender=ANN_JID, msg_id="P1"))
        await channel.wait_idle()
        assert [i.message_id for i in sink.received] == ["P1"]
    finally:
        await channel.stop()


# --------------------------------------------------------------------------- identity


async def access_sink(tmp_path, **whatsapp) -> tuple[AccessSink, Store]:
    config = Config.model_validate({"dataDir": str(tmp_path / "core"),
                                    "channels": {"whatsapp": whatsapp}})
    store = await Store.open_in(tmp_path / "core")
    return AccessSink(AccessControl(store, lambda: config)), store


@pytest.mark.parametrize("entry", ["+" + ANN, ANN])
async def test_allow_from_matches_numbers_with_or_without_plus(tmp_path, entry):
    sink, store = await access_sink(tmp_path, dmPolicy="allowlist", allowFrom=[entry])
    channel, fake, sink, _, _ = await started(tmp_path, sink=sink)
    try:
        await fake.emit(message_event(E.Message(conversation="hi"), chat=ANN_JID,
                                      sender=ANN_JID, msg_id="A1"))
        await fake.emit(message_event(E.Message(conversation="hi"),
                                      chat=f"{STRANGER}@s.whatsapp.net",
                                      sender=f"{STRANGER}@s.whatsapp.net", msg_id="A2"))
        await channel.wait_idle()
        first = sink.received[0]
        assert first.sender_id == "+" + ANN and ANN in first.sender_aliases
        assert sink.statuses == [AcceptStatus.ACCEPTED, AcceptStatus.REFUSED]
    finally:
        await channel.stop()
        await store.close()


@pytest.mark.parametrize("mapped_by", ["sender_alt", "lookup"])
async def test_lid_group_sender_in_allow_from_is_admitted(tmp_path, mapped_by):
    sink, store = await access_sink(
        tmp_path, dmPolicy="allowlist", groupPolicy="allowlist",
        groups={GROUP: {"requireMention": True, "allowFrom": ["+" + BOB_PHONE]}})
    fake = FakeWhatsAppClient()
    fake.download_data = JPEG
    if mapped_by == "lookup":
        fake.lid_to_pn[BOB_LID] = BOB_PHONE
    alt = f"{BOB_PHONE}@s.whatsapp.net" if mapped_by == "sender_alt" else None
    channel, fake, sink, _, _ = await started(tmp_path, fake, sink)
    try:
        await fake.emit(message_event(image(f"@{BOT_LID} what is it?", mention=True),
                                      chat=GROUP, sender=f"{BOB_LID}@lid", sender_alt=alt,
                                      msg_id="LG1"))
        # someone else in the same group, also mentioning the bot: refused, not fetched
        await fake.emit(message_event(image(f"@{BOT_LID} me too", mention=True), chat=GROUP,
                                      sender=f"{STRANGER}@s.whatsapp.net", msg_id="LG2"))
        await channel.wait_idle()
        bob, stranger = sink.received
        assert bob.sender_id == "+" + BOB_PHONE and f"{BOB_LID}@lid" in bob.sender_aliases
        assert sink.statuses == [AcceptStatus.ACCEPTED, AcceptStatus.REFUSED]
        assert bob.media[0].media_id is not None and stranger.media[0].media_id is None
        assert len(fake.downloads) == 1
    finally:
        await channel.stop()
        await store.close()


# --------------------------------------------------------------------------- quotes


async def test_group_reply_after_restart_still_quotes_the_trigger(tmp_path):
    first, fake1, _, _, _ = await started(tmp_path)
    ctx = E.ContextInfo(mentionedJID=[f"{BOT_LID}@lid"])
    await fake1.emit(message_event(
        E.Message(extendedTextMessage=E.ExtendedTextMessage(text="what time is it?",
                                                            contextInfo=ctx)),
        chat=GROUP, sender=f"{BOB_LID}@lid", sender_alt=f"{BOB_PHONE}@s.whatsapp.net",
        msg_id="TRIG"))
    await first.wait_idle()
    await first.stop()

    second, fake2, _, _, _ = await started(tmp_path)  # same dataDir, empty memory
    try:
        await second.send(Outbound(GROUP_ADDR, "It is noon.", reply_to_message_id="TRIG"))
        [quote] = fake2.quotes
        assert quote.message_id == "TRIG"
        assert quote.participant == f"{BOB_PHONE}@s.whatsapp.net"
        assert quote.message.conversation == "what time is it?"
        wire = E.Message.FromString(build_text_message("It is noon.", quote)
                                    .SerializeToString())
        context = wire.extendedTextMessage.contextInfo
        assert (context.stanzaID, context.participant) == ("TRIG",
                                                           f"{BOB_PHONE}@s.whatsapp.net")
        assert context.quotedMessage.conversation == "what time is it?"
        # the same id in another chat is not the same message
        other = ChatAddress("whatsapp", "default", "999@g.us", ChatKind.GROUP)
        await second.send(Outbound(other, "x", reply_to_message_id="TRIG"))
        assert fake2.quotes[-1] is None
    finally:
        await second.stop()


async def test_refused_group_messages_are_not_remembered_for_quoting(tmp_path):
    fake = FakeWhatsAppClient()
    channel, fake, _, _, _ = await started(tmp_path, fake, GateSink(fake))
    await fake.emit(message_event(E.Message(conversation="no mention"), chat=GROUP,
                                  sender=ANN_JID, msg_id="NOQ"))
    await channel.wait_idle()
    await channel.stop()
    journal = tmp_path / "data" / "whatsapp" / "quotes.jsonl"
    assert not journal.exists() or "NOQ" not in journal.read_text()


async def test_quote_journal_is_bounded_and_survives_a_torn_line(tmp_path):
    path = tmp_path / "quotes.jsonl"
    journal = QuoteJournal(path, capacity=3)
    await journal.load()
    for i in range(7):
        await journal.add(f"M{i}", GROUP, f"{BOB_PHONE}@s.whatsapp.net", f"text {i}")
    assert len(path.read_text().splitlines()) <= 6
    with path.open("a") as fh:
        fh.write('{"id": "M9", "chat')  # a crash mid-write
    again = QuoteJournal(path, capacity=3)
    await again.load()
    assert again.get("M3", GROUP) is None  # evicted
    quote = again.get("M6", GROUP)
    assert quote.participant == f"{BOB_PHONE}@s.whatsapp.net"
    assert quote.message.conversation == "text 6"
    assert again.get("M6", "other@g.us") is None
    assert all(json.loads(line)["id"].startswith("M")
               for line in path.read_text().splitlines()[:-1])
