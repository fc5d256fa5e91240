"""WhatsApp channel: real neonize protobuf events in, recorded client calls out."""

from __future__ import annotations

import asyncio
import json
import logging
import random
from dataclasses import dataclass, field

import pytest
from neonize.aioze.events import (
    ConnectedEv,
    DisconnectedEv,
    LoggedOutEv,
    MessageEv,
    StreamReplacedEv,
    TemporaryBanEv,
)
from neonize.proto import Neonize_pb2 as N
from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as E

from bridge.backoff import Backoff
from bridge.config.schema import WhatsAppConfig
from bridge.envelope import (
    AcceptStatus,
    ChatAddress,
    ChatKind,
    Inbound,
    MediaKind,
    Outbound,
)
from bridge.formatting import chunk_plain
from bridge.media import MediaStore
from bridge.ports import InboundSink, Markup, SendError
from channels.whatsapp import WhatsAppChannel
from channels.whatsapp.client import NeonizeClient, NotConnected, _bind_event_loop
from channels.whatsapp.content import QuoteRef, build_text_message
from tests.channels.test_whatsapp_fake import (
    BOT_LID,
    BOT_PHONE,
    NOW,
    FakeWhatsAppClient,
    message_event,
    until,
)

ANN = "15551234567"  # allowed (allowFrom)
BOB_PHONE, BOB_LID = "15557654321", "88112233"
GROUP = "120363041234567890@g.us"
JPEG = b"\xff\xd8\xff\xe0" + b"fake-jpeg-bytes" * 50


class RecordingSink(InboundSink):
    """Stands in for the core: records envelopes, idempotent on message id like the store."""

    def __init__(self) -> None:
        self.received: list[Inbound] = []
        self.statuses: list[AcceptStatus] = []
        self._seen: set[str] = set()

    async def accept(self, inbound: Inbound) -> AcceptStatus:
        self.received.append(inbound)
        status = (AcceptStatus.DUPLICATE if inbound.message_id in self._seen
                  else AcceptStatus.ACCEPTED)
        self._seen.add(inbound.message_id)
        self.statuses.append(status)
        return status


@dataclass
class Rig:
    channel: WhatsAppChannel
    fake: FakeWhatsAppClient
    sink: RecordingSink
    media: MediaStore
    clock: list[float]
    sleeps: list[float] = field(default_factory=list)

    async def deliver(self, event: MessageEv) -> None:
        await self.fake.emit(event)
        await self.channel.wait_idle()


def make_channel(tmp_path, fake, *, sleeps=None, clock=None, **config):
    config.setdefault("allowFrom", ("+" + ANN,))
    config.setdefault("dmPolicy", "allowlist")
    clock = clock if clock is not None else [NOW + 5]
    sleeps = sleeps if sleeps is not None else []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        await asyncio.sleep(0)

    channel = WhatsAppChannel(
        WhatsAppConfig(**config),
        media=MediaStore(tmp_path / "media"),
        data_dir=tmp_path / "data",
        client_factory=lambda path: fake,
        clock=lambda: clock[0],
        sleep=sleep,
        typing_interval=0.02,
        rng=random.Random(7),
    )
    return channel, clock, sleeps


@pytest.fixture
async def rig(tmp_path):
    fake = FakeWhatsAppClient()
    channel, clock, sleeps = make_channel(tmp_path, fake)
    sink = RecordingSink()
    await channel.start(sink)
    await until(lambda: channel.health().detail.startswith("connected as"))
    yield Rig(channel, fake, sink, channel._media, clock, sleeps)
    await channel.stop()


# --------------------------------------------------------------------------- inbound


async def test_dm_text_becomes_envelope_and_gets_read_receipt(rig):
    ev = message_event(E.Message(conversation="Hello there"), chat=f"{ANN}@s.whatsapp.net",
                       sender=f"{ANN}@s.whatsapp.net", msg_id="DM1", pushname="Ann")
    await rig.deliver(ev)

    [inbound] = rig.sink.received
    assert inbound.address == ChatAddress("whatsapp", "default", f"{ANN}@s.whatsapp.net",
                                          ChatKind.DIRECT)
    assert inbound.sender_id == "+" + ANN
    assert inbound.message_id == "DM1"
    assert inbound.text == "Hello there"
    assert inbound.sender_name == "Ann"
    assert inbound.timestamp == pytest.approx(NOW)  # Go sends milliseconds
    assert inbound.media == () and inbound.quoted is None and not inbound.mentioned
    assert inbound.session_key.scope == f"direct:+{ANN}"
    assert rig.fake.reads == [(["DM1"], f"{ANN}@s.whatsapp.net", f"{ANN}@s.whatsapp.net")]


async def test_group_image_with_caption_from_lid_sender_mentioning_bot(rig, tmp_path):
    rig.fake.download_data = JPEG
    image = E.ImageMessage(
        caption=f"@{BOT_LID} what is this?", mimetype="image/jpeg", fileLength=len(JPEG),
        width=640, height=480,
        contextInfo=E.ContextInfo(mentionedJID=[f"{BOT_LID}@lid"]),
    )
    ev = message_event(E.Message(imageMessage=image), chat=GROUP, sender=f"{BOB_LID}@lid",
                       sender_alt=f"{BOB_PHONE}@s.whatsapp.net", msg_id="G1", pushname="Bob")
    await rig.deliver(ev)

    [inbound] = rig.sink.received
    assert inbound.address.chat_kind is ChatKind.GROUP
    assert inbound.address.chat_id == GROUP
    assert inbound.session_key.scope == f"group:{GROUP}"
    assert inbound.sender_id == "+" + BOB_PHONE  # LID mapped to the phone number
    assert f"{BOB_LID}@lid" in inbound.sender_aliases
    assert inbound.mentioned is True
    assert inbound.text == f"@{BOT_LID} what is this?"
    [ref] = inbound.media
    assert ref.kind is MediaKind.IMAGE and ref.mime == "image/jpeg"
    assert (ref.width, ref.height, ref.size) == (640, 480, len(JPEG))
    assert rig.media.path_for(ref.media_id).read_bytes() == JPEG
    # what was handed to neonize's download_any: the message holding the image
    assert rig.fake.downloads[0].imageMessage.fileLength == len(JPEG)
    # the mapping is remembered on disk
    saved = json.loads((tmp_path / "data" / "whatsapp" / "lid-map.json").read_text())
    assert saved[BOB_LID] == BOB_PHONE
    assert rig.fake.reads == [(["G1"], GROUP, f"{BOB_LID}@lid")]


async def test_group_message_without_mention_is_not_mentioned(rig):
    ev = message_event(
        E.Message(extendedTextMessage=E.ExtendedTextMessage(
            text="@42 lunch?", contextInfo=E.ContextInfo(mentionedJID=["4242@s.whatsapp.net"]))),
        chat=GROUP, sender=f"{ANN}@s.whatsapp.net", msg_id="G2")
    await rig.deliver(ev)
    assert rig.sink.received[0].mentioned is False


async def test_mention_by_phone_jid_counts(rig):
    ev = message_event(
        E.Message(extendedTextMessage=E.ExtendedTextMessage(
            text="hey bot", contextInfo=E.ContextInfo(
                mentionedJID=[f"{BOT_PHONE}@s.whatsapp.net"]))),
        chat=GROUP, sender=f"{ANN}@s.whatsapp.net", msg_id="G3")
    await rig.deliver(ev)
    assert rig.sink.received[0].mentioned is True


async def test_lid_without_sender_alt_uses_lookup_then_remembered_map(tmp_path):
    fake = FakeWhatsAppClient()
    fake.lid_to_pn[BOB_LID] = BOB_PHONE
    channel, _, _ = make_channel(tmp_path, fake)
    sink = RecordingSink()
    await channel.start(sink)
    try:
        await fake.emit(message_event(E.Message(conversation="hi"), chat=f"{BOB_LID}@lid",
                                      sender=f"{BOB_LID}@lid", msg_id="L1"))
        await channel.wait_idle()
        assert sink.received[0].sender_id == "+" + BOB_PHONE
        assert fake.pn_lookups == [f"{BOB_LID}@lid"]
    finally:
        await channel.stop()

    # A restarted channel knows the mapping from lid-map.json without asking again.
    fake2 = FakeWhatsAppClient()
    channel2, _, _ = make_channel(tmp_path, fake2)
    sink2 = RecordingSink()
    await channel2.start(sink2)
    try:
        await fake2.emit(message_event(E.Message(conversation="again"), chat=f"{BOB_LID}@lid",
                                       sender=f"{BOB_LID}@lid", msg_id="L2"))
        await channel2.wait_idle()
        assert sink2.received[0].sender_id == "+" + BOB_PHONE
        assert fake2.pn_lookups == []
    finally:
        await channel2.stop()


async def test_unknown_lid_keeps_raw_jid_as_sender(rig):
    await rig.deliver(message_event(E.Message(conversation="who am i"), chat="777@lid",
                                    sender="777@lid", msg_id="L3"))
    inbound = rig.sink.received[0]
    assert inbound.sender_id == "777@lid"
    assert not inbound.sender_id.startswith("+")


async def test_voice_note(rig):
    rig.fake.download_data = b"OggS" + b"\x00" * 300
    audio = E.AudioMessage(PTT=True, seconds=7, mimetype="audio/ogg; codecs=opus",
                           fileLength=304)
    await rig.deliver(message_event(E.Message(audioMessage=audio), chat=f"{ANN}@s.whatsapp.net",
                                    sender=f"{ANN}@s.whatsapp.net", msg_id="V1"))
    [ref] = rig.sink.received[0].media
    assert ref.kind is MediaKind.VOICE
    assert ref.duration_s == 7.0 and ref.mime == "audio/ogg"
    assert rig.media.path_for(ref.media_id).suffix == ".ogg"
    assert ref.placeholder() == "[voice note, 7 s]"


async def test_document_with_caption_keeps_filename_as_display_text_only(rig):
    data = b"%PDF-1.7 fake"
    doc = E.DocumentMessage(fileName="../../etc/passwd report.pdf", mimetype="application/pdf",
                            caption="summarise this", fileLength=len(data))
    rig.fake.download_data = data
    await rig.deliver(message_event(E.Message(documentMessage=doc),
                                    chat=f"{ANN}@s.whatsapp.net",
                                    sender=f"{ANN}@s.whatsapp.net", msg_id="D1"))
    inbound = rig.sink.received[0]
    [ref] = inbound.media
    assert inbound.text == "summarise this"
    assert ref.kind is MediaKind.DOCUMENT and ref.filename == "../../etc/passwd report.pdf"
    stored = rig.media.path_for(ref.media_id)
    assert stored.read_bytes() == data
    assert "passwd" not in str(stored) and stored.is_relative_to(rig.media.root)


async def test_document_with_caption_wrapper_is_unwrapped(rig):
    rig.fake.download_data = b"data"
    inner = E.Message(documentMessage=E.DocumentMessage(fileName="a.txt", caption="read it",
                                                        mimetype="text/plain", fileLength=4))
    msg = E.Message(documentWithCaptionMessage=E.FutureProofMessage(message=inner))
    await rig.deliver(message_event(msg, chat=f"{ANN}@s.whatsapp.net",
                                    sender=f"{ANN}@s.whatsapp.net", msg_id="D2"))
    inbound = rig.sink.received[0]
    assert inbound.text == "read it" and inbound.media[0].filename == "a.txt"


async def test_too_big_media_is_not_downloaded(tmp_path):
    fake = FakeWhatsAppClient()
    channel, _, _ = make_channel(tmp_path, fake, mediaMaxMb=1)
    sink = RecordingSink()
    await channel.start(sink)
    try:
        video = E.VideoMessage(mimetype="video/mp4", seconds=90, fileLength=5 * 1024 * 1024,
                               caption="look")
        await fake.emit(message_event(E.Message(videoMessage=video),
                                      chat=f"{ANN}@s.whatsapp.net",
                                      sender=f"{ANN}@s.whatsapp.net", msg_id="BIG"))
        await channel.wait_idle()
        [ref] = sink.received[0].media
        assert ref.kind is MediaKind.VIDEO and ref.media_id is None
        assert "1 MB limit" in ref.note and ref.duration_s == 90.0
        assert fake.downloads == []
        assert sink.received[0].text == "look"
    finally:
        await channel.stop()


async def test_download_reporting_more_bytes_than_limit_is_dropped(tmp_path):
    fake = FakeWhatsAppClient()
    fake.download_data = b"x" * (1024 * 1024 + 1)
    channel, _, _ = make_channel(tmp_path, fake, mediaMaxMb=1)
    await channel.start(sink := RecordingSink())
    try:
        await fake.emit(message_event(E.Message(imageMessage=E.ImageMessage(mimetype="image/png")),
                                      chat=f"{ANN}@s.whatsapp.net",
                                      sender=f"{ANN}@s.whatsapp.net", msg_id="BIG2"))
        await channel.wait_idle()
        [ref] = sink.received[0].media
        assert ref.media_id is None and "limit" in ref.note
        assert not (tmp_path / "media").exists() or not any((tmp_path / "media").rglob("*.png"))
    finally:
        await channel.stop()


@pytest.mark.parametrize(
    ("message", "kind", "note_part"),
    [
        (E.Message(stickerMessage=E.StickerMessage(mimetype="image/webp", emojis="😀")),
         MediaKind.STICKER, "😀"),
        (E.Message(locationMessage=E.LocationMessage(degreesLatitude=52.52,
                                                     degreesLongitude=13.405, name="Café")),
         MediaKind.LOCATION, "52.52000, 13.40500 — Café"),
        (E.Message(contactMessage=E.ContactMessage(
            displayName="Carol",
            vcard="BEGIN:VCARD\nVERSION:3.0\nFN:Carol\nTEL;type=CELL;waid=4915111:+49 151 11\n"
                  "END:VCARD")),
         MediaKind.CONTACT, "Carol +4915111"),
        (E.Message(videoMessage=E.VideoMessage(mimetype="video/mp4", seconds=3,
                                               gifPlayback=True, fileLength=5)),
         MediaKind.VIDEO, "GIF"),
        (E.Message(audioMessage=E.AudioMessage(PTT=False, seconds=200, mimetype="audio/mpeg",
                                               fileLength=5)),
         MediaKind.AUDIO, None),
    ],
)
async def test_other_shapes(rig, message, kind, note_part):
    rig.fake.download_data = b"bytes"
    await rig.deliver(message_event(message, chat=f"{ANN}@s.whatsapp.net",
                                    sender=f"{ANN}@s.whatsapp.net", msg_id="S1"))
    [ref] = rig.sink.received[0].media
    assert ref.kind is kind
    if note_part:
        assert note_part in ref.note
    downloadable = kind not in (MediaKind.LOCATION, MediaKind.CONTACT)
    assert (ref.media_id is not None) is downloadable
    assert len(rig.fake.downloads) == (1 if downloadable else 0)


async def test_quoted_reply_to_bot_in_group(rig):
    ctx = E.ContextInfo(stanzaID="OUT7", participant=f"{BOT_PHONE}@s.whatsapp.net",
                        quotedMessage=E.Message(conversation="The answer is 42."))
    ev = message_event(
        E.Message(extendedTextMessage=E.ExtendedTextMessage(text="why?", contextInfo=ctx)),
        chat=GROUP, sender=f"{ANN}@s.whatsapp.net", msg_id="Q1")
    await rig.deliver(ev)
    inbound = rig.sink.received[0]
    assert inbound.quoted is not None
    assert inbound.quoted.message_id == "OUT7"
    assert inbound.quoted.text == "The answer is 42."
    assert inbound.quoted.from_bot is True
    assert inbound.quoted.sender_id == "+" + BOT_PHONE
    assert inbound.mentioned is True  # a reply to the bot counts as a mention


async def test_quoted_reply_to_someone_else(rig):
    ctx = E.ContextInfo(stanzaID="X9", participant=f"{BOB_PHONE}@s.whatsapp.net",
                        quotedMessage=E.Message(imageMessage=E.ImageMessage(caption="cat")))
    ev = message_event(
        E.Message(extendedTextMessage=E.ExtendedTextMessage(text="nice", contextInfo=ctx)),
        chat=GROUP, sender=f"{ANN}@s.whatsapp.net", msg_id="Q2")
    await rig.deliver(ev)
    quoted = rig.sink.received[0].quoted
    assert quoted.from_bot is False and quoted.sender_id == "+" + BOB_PHONE
    assert quoted.text == "cat" and quoted.media[0].kind is MediaKind.IMAGE
    assert quoted.media[0].media_id is None  # quoted media is context, not downloaded
    assert rig.sink.received[0].mentioned is False
    assert rig.fake.downloads == []


@pytest.mark.parametrize(
    "case",
    ["status", "own", "stale", "reaction", "protocol", "empty", "edit"],
)
async def test_skipped_messages(rig, case, caplog):
    kwargs = dict(chat=f"{ANN}@s.whatsapp.net", sender=f"{ANN}@s.whatsapp.net", msg_id="SK")
    msg = E.Message(conversation="hello")
    if case == "status":
        kwargs["chat"] = "status@broadcast"
    elif case == "own":
        kwargs["from_me"] = True
        kwargs["sender"] = f"{BOT_PHONE}@s.whatsapp.net"
    elif case == "stale":
        kwargs["timestamp_ms"] = int((NOW - 11 * 60) * 1000)  # catchUpMinutes defaults to 10
    elif case == "reaction":
        msg = E.Message(reactionMessage=E.ReactionMessage(text="👍"))
    elif case == "protocol":
        msg = E.Message(protocolMessage=E.ProtocolMessage(type=E.ProtocolMessage.REVOKE))
    elif case == "empty":
        msg = E.Message()
    elif case == "edit":
        kwargs["is_edit"] = True
    rig.fake.download_data = b"x"
    with caplog.at_level(logging.DEBUG, logger="channels.whatsapp"):
        await rig.deliver(message_event(msg, **kwargs))
    assert rig.sink.received == []
    assert rig.fake.reads == [] and rig.fake.downloads == []
    if case == "stale":
        assert "min old" in caplog.text


async def test_message_within_catch_up_window_is_answered(rig):
    await rig.deliver(message_event(E.Message(conversation="sent while offline"),
                                    chat=f"{ANN}@s.whatsapp.net",
                                    sender=f"{ANN}@s.whatsapp.net", msg_id="OLD",
                                    timestamp_ms=int((NOW - 9 * 60) * 1000)))
    assert [i.message_id for i in rig.sink.received] == ["OLD"]


async def test_duplicate_delivery_passes_same_id_and_is_read_once(rig):
    ev = message_event(E.Message(conversation="once"), chat=f"{ANN}@s.whatsapp.net",
                       sender=f"{ANN}@s.whatsapp.net", msg_id="DUP")
    await rig.deliver(ev)
    await rig.deliver(ev)
    assert [i.message_id for i in rig.sink.received] == ["DUP", "DUP"]
    assert rig.sink.statuses == [AcceptStatus.ACCEPTED, AcceptStatus.DUPLICATE]
    assert rig.fake.reads == [(["DUP"], f"{ANN}@s.whatsapp.net", f"{ANN}@s.whatsapp.net")]


async def test_no_read_receipts_when_disabled(tmp_path):
    fake = FakeWhatsAppClient()
    channel, _, _ = make_channel(tmp_path, fake, sendReadReceipts=False)
    await channel.start(sink := RecordingSink())
    try:
        await fake.emit(message_event(E.Message(conversation="hi"),
                                      chat=f"{ANN}@s.whatsapp.net",
                                      sender=f"{ANN}@s.whatsapp.net", msg_id="NR"))
        await channel.wait_idle()
        assert len(sink.received) == 1 and fake.reads == []
    finally:
        await channel.stop()


async def test_broken_sink_does_not_stop_the_channel(rig, caplog):
    calls = []

    async def broken(inbound):
        calls.append(inbound.message_id)
        if len(calls) == 1:
            raise RuntimeError("store is locked")
        return AcceptStatus.ACCEPTED

    rig.channel._sink.accept = broken
    for mid in ("B1", "B2"):
        await rig.deliver(message_event(E.Message(conversation="x"),
                                        chat=f"{ANN}@s.whatsapp.net",
                                        sender=f"{ANN}@s.whatsapp.net", msg_id=mid))
    assert calls == ["B1", "B2"]
    assert rig.fake.reads == [(["B2"], f"{ANN}@s.whatsapp.net", f"{ANN}@s.whatsapp.net")]
    assert "failed to handle" in caplog.text


# --------------------------------------------------------------------------- outbound


DM = ChatAddress("whatsapp", "default", f"{ANN}@s.whatsapp.net", ChatKind.DIRECT)
GROUP_ADDR = ChatAddress("whatsapp", "default", GROUP, ChatKind.GROUP)


async def test_send_renders_whatsapp_markup(rig):
    ids = await rig.channel.send(Outbound(DM, "This is **bold** and ~~gone~~."))
    assert ids == ["OUT1"]
    [(chat, text, quoted)] = rig.fake.sent
    assert chat == f"{ANN}@s.whatsapp.net" and quoted is None
    assert "**" not in text and "*bold*" in text
    assert rig.channel.capabilities.markup is Markup.WHATSAPP


async def test_plain_outbound_is_sent_as_is(rig):
    await rig.channel.send(Outbound(DM, "code **ABC-123**", plain=True))
    assert rig.fake.sent[0][1] == "code **ABC-123**"


async def test_long_reply_is_chunked_in_order_and_group_quotes_first_chunk(tmp_path):
    fake = FakeWhatsAppClient()
    channel, _, _ = make_channel(tmp_path, fake, textChunkLimit=200)
    await channel.start(RecordingSink())
    try:
        trigger = message_event(E.Message(conversation=f"@{BOT_PHONE} tell me a lot"),
                                chat=GROUP, sender=f"{ANN}@s.whatsapp.net", msg_id="TRIG")
        await fake.emit(trigger)
        await channel.wait_idle()
        paragraphs = [f"Paragraph {i} " + "word " * 30 for i in range(5)]
        ids = await channel.send(Outbound(GROUP_ADDR, "\n\n".join(paragraphs),
                                          reply_to_message_id="TRIG"))
        assert len(ids) == len(fake.sent) >= 3
        assert all(len(text) <= 200 for _, text, _ in fake.sent)
        assert fake.sent[0][2] == "TRIG"
        assert all(q is None for _, _, q in fake.sent[1:])
        joined = " ".join(text for _, text, _ in fake.sent)
        positions = [joined.index(f"Paragraph {i}") for i in range(5)]
        assert positions == sorted(positions)
    finally:
        await channel.stop()


async def test_direct_reply_does_not_quote(rig):
    await rig.deliver(message_event(E.Message(conversation="hi"), chat=f"{ANN}@s.whatsapp.net",
                                    sender=f"{ANN}@s.whatsapp.net", msg_id="DQ"))
    await rig.channel.send(Outbound(DM, "hello", reply_to_message_id="DQ"))
    assert rig.fake.sent == [(f"{ANN}@s.whatsapp.net", "hello", None)]


async def test_failed_send_is_retried(rig):
    rig.fake.send_failures = 2
    ids = await rig.channel.send(Outbound(DM, "eventually"))
    assert ids == ["OUT1"] and rig.sleeps == [0.5, 1.0]


async def test_send_gives_up_after_three_attempts(rig):
    rig.fake.send_failures = 3
    with pytest.raises(SendError) as info:
        await rig.channel.send(Outbound(DM, "never"))
    assert "3 attempts" in str(info.value) and info.value.sent_ids == []
    assert info.value.retryable  # nothing went out: the core tries again later
    assert rig.fake.sent == [] and rig.fake.send_calls == 3


async def test_send_error_reports_chunks_already_sent(tmp_path):
    fake = FakeWhatsAppClient()
    channel, _, _ = make_channel(tmp_path, fake, textChunkLimit=200)
    await channel.start(RecordingSink())
    await until(lambda: channel.health().connected)
    try:
        original = fake.send_text

        async def fail_after_first(chat, text, *, quoted=None):
            if fake.sent:
                raise RuntimeError("boom")
            return await original(chat, text, quoted=quoted)

        fake.send_text = fail_after_first
        with pytest.raises(SendError) as info:
            await channel.send(Outbound(DM, ("x " * 90 + "\n\n") * 3, plain=True))
        assert info.value.sent_ids == ["OUT1"]
        assert not info.value.retryable  # "boom" may have delivered chunk 2
    finally:
        await channel.stop()


async def test_send_without_session_raises_send_error(tmp_path):
    fake = FakeWhatsAppClient(linked=False)
    channel, _, _ = make_channel(tmp_path, fake)
    await channel.start(RecordingSink())
    with pytest.raises(SendError) as info:
        await channel.send(Outbound(DM, "hi"))
    assert info.value.retryable and "not linked" in str(info.value)
    assert fake.send_calls == 0
    await channel.stop()


async def test_typing_composes_refreshes_then_pauses(rig):
    async with rig.channel.typing(DM):
        await until(lambda: len(rig.fake.presence) >= 3)
    assert all(composing for _, composing in rig.fake.presence[:-1])
    assert rig.fake.presence[-1] == (f"{ANN}@s.whatsapp.net", False)


async def test_typing_survives_presence_errors(rig):
    async def broken(chat, *, composing):
        raise RuntimeError("not connected")

    rig.fake.chat_presence = broken
    async with rig.channel.typing(DM):
        await asyncio.sleep(0.03)  # nothing raises out of the context


def test_build_text_message_quotes_by_phone_jid_without_nesting():
    ctx = E.ContextInfo(mentionedJID=[f"{BOT_LID}@lid"])
    trigger = message_event(E.Message(imageMessage=E.ImageMessage(caption="hi", contextInfo=ctx)),
                            chat=GROUP, sender=f"{BOB_LID}@lid",
                            sender_alt=f"{BOB_PHONE}@s.whatsapp.net", msg_id="T1")
    msg = build_text_message("reply", QuoteRef.from_event(trigger))
    quote = msg.extendedTextMessage.contextInfo
    assert msg.extendedTextMessage.text == "reply"
    assert quote.stanzaID == "T1" and quote.participant == f"{BOB_PHONE}@s.whatsapp.net"
    assert quote.quotedMessage.imageMessage.caption == "hi"
    assert not quote.quotedMessage.imageMessage.HasField("contextInfo")
    assert trigger.Message.imageMessage.HasField("contextInfo")  # the cached event is untouched
    plain = build_text_message("@491234567 no mention parsing")
    assert plain.conversation == "@491234567 no mention parsing"
    E.Message.FromString(msg.SerializeToString())  # valid on the wire


def test_plain_chunks_respect_limit_and_boundaries():
    text = "alpha beta\n\n" + "gamma " * 100 + "\nomega"
    chunks = chunk_plain(text, 200)
    assert all(len(c) <= 200 for c in chunks)
    assert chunks[0].startswith("alpha beta") and chunks[0].endswith("gamma")
    assert chunk_plain("a " * 60 + "\n\n" + "b " * 60, 200) == ["a " * 59 + "a", "b " * 59 + "b"]
    assert " ".join(" ".join(chunks).split()) == " ".join(text.split())
    assert chunk_plain("x" * 450, 200) == ["x" * 200, "x" * 200, "x" * 50]


# --------------------------------------------------------------------------- lifecycle


async def test_no_session_logs_how_to_log_in_and_health_says_so(tmp_path, caplog):
    fake = FakeWhatsAppClient(linked=False)
    channel, _, _ = make_channel(tmp_path, fake)
    with caplog.at_level(logging.WARNING, logger="channels.whatsapp"):
        await channel.start(RecordingSink())
    health = channel.health()
    assert not health.connected and "palaver whatsapp login" in health.detail
    assert "palaver whatsapp login" in caplog.text
    assert fake.connects == 0
    await channel.stop()
    assert "palaver whatsapp login" in channel.health().detail


@pytest.mark.parametrize(
    ("event", "words"),
    [
        (LoggedOutEv(OnConnect=False, Reason=N.ConnectFailureReason.Value("LOGGED_OUT")),
         "logged out"),
        (TemporaryBanEv(Code=N.TemporaryBan.TempBanReason.Value("SENT_TOO_MANY_SAME_MESSAGE"), Expire=3600),
         "temporarily banned"),
        (StreamReplacedEv(), "session replaced"),
    ],
)
async def test_terminal_events_stop_only_the_channel(rig, event, words, caplog):
    with caplog.at_level(logging.ERROR, logger="channels.whatsapp"):
        await rig.fake.emit(event)
    await until(lambda: rig.channel._supervisor.done())
    health = rig.channel.health()
    assert not health.connected and words in health.detail
    assert words in caplog.text and "everything else keeps running" in caplog.text
    assert rig.fake.connects == 1  # no reconnect after a terminal event
    assert rig.fake.disconnects >= 1
    with pytest.raises(SendError) as info:
        await rig.channel.send(Outbound(DM, "hi"))
    assert info.value.retryable and words in str(info.value)  # kept for after a restart
    assert rig.fake.sent == [] and rig.fake.send_calls == 0
    await rig.fake.emit(ConnectedEv(status=True))  # a late event does not revive it
    assert not rig.channel.health().connected


async def test_qr_during_run_means_not_linked(rig):
    await rig.fake.emit_qr("2@abc")
    await until(lambda: rig.channel._supervisor.done())
    assert "not linked" in rig.channel.health().detail


async def test_dropped_connection_is_reported_and_reconnect_resets(rig):
    await rig.fake.emit(DisconnectedEv(status=True))
    assert not rig.channel.health().connected
    assert "reconnecting" in rig.channel.health().detail
    # the Go session dies: the supervisor starts a new one after the first backoff step
    rig.fake.drop(ConnectionError("stream end"))
    await until(lambda: rig.fake.connects == 2 and rig.channel.health().connected)
    assert len(rig.sleeps) == 1 and 1.6 <= rig.sleeps[0] <= 2.4


async def test_reconnect_backoff_schedule(tmp_path):
    fake = FakeWhatsAppClient(connect_errors=7)
    channel, _, sleeps = make_channel(tmp_path, fake)
    await channel.start(RecordingSink())
    try:
        await until(lambda: channel.health().connected)
        assert fake.connects == 8
        expected = [2, 4, 8, 16, 30, 30, 30]
        assert len(sleeps) == len(expected)
        for got, want in zip(sleeps, expected, strict=True):
            assert want * 0.8 <= got <= want * 1.2
        assert len(set(sleeps)) == len(sleeps)  # jittered
        # connected again: the next drop starts from ~2 s
        fake.drop(ConnectionError("reset"))
        await until(lambda: fake.connects == 9)
        assert 1.6 <= sleeps[-1] <= 2.4
    finally:
        await channel.stop()
    assert channel._supervisor is None and channel._worker is None


async def test_stop_is_idempotent_and_stops_the_session(rig):
    await rig.channel.stop()
    await rig.channel.stop()
    assert rig.fake.session.done() and rig.fake.disconnects >= 1
    assert not rig.channel.health().connected


async def test_restart_after_logout_uses_a_fresh_client(tmp_path):
    clients = [FakeWhatsAppClient(), FakeWhatsAppClient()]
    channel, _, _ = make_channel(tmp_path, None)
    channel._client_factory = lambda path: clients.pop(0)
    await channel.start(RecordingSink())
    first = channel._client
    await until(lambda: channel.health().connected)
    await first.emit(StreamReplacedEv())
    await until(lambda: channel._supervisor.done())
    await channel.stop()
    await channel.start(RecordingSink())
    try:
        await until(lambda: channel.health().connected)
        assert channel._client is not first and first.connects == 1
    finally:
        await channel.stop()


async def test_client_that_cannot_be_built_only_disables_whatsapp(tmp_path, caplog):
    channel, _, _ = make_channel(tmp_path, None)

    def broken(path):
        raise OSError("libneonize.so: cannot open shared object file")

    channel._client_factory = broken
    await channel.start(RecordingSink())  # does not raise
    assert not channel.health().connected
    assert "cannot open shared object" in channel.health().detail
    await channel.stop()


def test_backoff_unit():
    backoff = Backoff(rng=random.Random(1), low=1, high=1)
    assert [backoff.next() for _ in range(7)] == [2, 4, 8, 16, 30, 30, 30]
    backoff.reset()
    assert backoff.next() == 2


# --------------------------------------------------------------------------- neonize glue


async def test_neonize_client_refuses_calls_without_a_session(tmp_path):
    # Go would dereference nil (and abort the process) for a uuid it has no client for.
    client = NeonizeClient(tmp_path / "session.db")
    assert await client.has_session() is False
    with pytest.raises(NotConnected):
        await client.send_text(N.JID(User="1", Server="s.whatsapp.net", RawAgent=0, Device=0,
                                     Integrator=0, IsEmpty=False), "hi")
    with pytest.raises(NotConnected):
        await client.get_me()
    await client.disconnect()  # nothing running: a no-op


async def test_events_travel_neonizes_own_dispatch_path_to_our_loop(tmp_path):
    """Feed wire bytes to neonize's Event.execute from a foreign thread, as Go does."""
    import ctypes

    from neonize.aioze import events as neonize_events
    from neonize.events import EVENT_TO_INT

    saved = neonize_events.event_global_loop
    try:
        _bind_event_loop(asyncio.get_running_loop())
        client = NeonizeClient(tmp_path / "session.db")
        got, codes = [], []

        async def on_message(event):
            got.append(event)

        async def on_qr(code):
            codes.append(code)

        client.on(MessageEv, on_message)
        client.on_qr(on_qr)
        wire = message_event(E.Message(conversation="via Go"), chat=f"{ANN}@s.whatsapp.net",
                             sender=f"{ANN}@s.whatsapp.net", msg_id="GO1").SerializeToString()
        buf = ctypes.create_string_buffer(wire, len(wire))
        await asyncio.to_thread(client._client.event.execute, 0, ctypes.addressof(buf),
                                len(wire), EVENT_TO_INT[MessageEv])
        qr = ctypes.create_string_buffer(b"2@qr-code")
        await asyncio.to_thread(client._client._NewAClient__onQr, 0, ctypes.addressof(qr))
        await until(lambda: got and codes)
        assert got[0].Info.ID == "GO1" and got[0].Message.conversation == "via Go"
        assert codes == ["2@qr-code"]
    finally:
        neonize_events.event_global_loop = saved


async def test_bind_event_loop_replaces_a_dead_loop():
    from neonize.aioze import events as neonize_events

    saved = neonize_events.event_global_loop
    dead = asyncio.new_event_loop()
    dead.close()
    try:
        neonize_events.event_global_loop = dead
        loop = asyncio.get_running_loop()
        _bind_event_loop(loop)
        assert neonize_events.event_global_loop is loop
        _bind_event_loop(loop)  # same loop: fine
        assert neonize_events.event_global_loop is loop
    finally:
        neonize_events.event_global_loop = saved
