"""WhatsApp voice notes through Palaver's real NeonizeClient and the fake of neonize's
NewAClient: real ``audioMessage`` protobufs with PTT carrying real Ogg/Opus bytes in,
audioMaxSeconds before any download, and voice replies out (Upload, then an
``audioMessage`` with PTT, ``audio/ogg; codecs=opus`` and its seconds), every failure
ending in the text through the outbox."""

from __future__ import annotations

import hashlib

import pytest
from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as E
from neonize.utils.enum import MediaType

from bridge.envelope import ChatAddress, ChatKind, MediaKind, VoiceClip
from bridge.ports import SendError
from bridge.voice.audio import duration_s, is_ogg_opus
from bridge.voice.service import is_transcribable
from tests.channels.test_telegram_voice import _outbox, _reply
from tests.channels.test_whatsapp_fake import message_event, until
from tests.channels.test_whatsapp_neonize import ANN_JID, DM, started
from tests.fakes.audio_bytes import ogg_opus_bytes
from tests.fakes.neonize_fake import install_bounded

GROUP_JID = "120363000000000001@g.us"


@pytest.fixture
def go(monkeypatch):
    """The fake Go library (as in test_whatsapp_neonize), short bounded waits."""
    fake = install_bounded(monkeypatch)
    yield fake
    fake.release()


def _voice_event(ogg: bytes, *, seconds: int, msg_id: str, chat: str = ANN_JID,
                 ptt: bool = True, mimetype: str = "audio/ogg; codecs=opus"):
    audio = E.AudioMessage(PTT=ptt, seconds=seconds, mimetype=mimetype,
                           fileLength=len(ogg), URL="https://mmg.whatsapp.net/v/x.enc",
                           directPath="/v/x.enc", mediaKey=b"k" * 32,
                           fileSHA256=hashlib.sha256(ogg).digest())
    # As it comes off the wire: the protobuf parsed from its bytes.
    message = E.Message.FromString(E.Message(audioMessage=audio).SerializeToString())
    return message_event(message, chat=chat, sender=ANN_JID, msg_id=msg_id)


async def test_a_ptt_voice_note_arrives_downloaded_and_transcribable(tmp_path, go):
    ogg = ogg_opus_bytes(7.0)
    go.download_data = ogg
    channel, sink = await started(tmp_path, go)
    try:
        go.deliver(_voice_event(ogg, seconds=7, msg_id="V1"))
        go.deliver(_voice_event(ogg, seconds=7, msg_id="A1", ptt=False, mimetype="audio/ogg"))
        await until(lambda: len(sink.received) == 2)
        voice, audio = (i.media[0] for i in sink.received)
        assert voice.kind is MediaKind.VOICE and audio.kind is MediaKind.AUDIO
        assert voice.duration_s == 7.0 and is_transcribable(voice) and is_transcribable(audio)
        stored = channel._media.path_for(voice.media_id).read_bytes()
        assert stored == ogg and is_ogg_opus(stored) and round(duration_s(stored) or 0) == 7
    finally:
        await channel.stop()


async def test_a_voice_note_over_audio_max_seconds_is_never_downloaded(tmp_path, go):
    ogg = ogg_opus_bytes(1.0)
    go.download_data = ogg
    channel, sink = await started(tmp_path, go, audioMaxSeconds=60)
    try:
        go.deliver(_voice_event(ogg, seconds=61, msg_id="LONG"))
        go.deliver(_voice_event(ogg, seconds=60, msg_id="OK"))
        await until(lambda: len(sink.received) == 2)
        long_ref, ok_ref = (i.media[0] for i in sink.received)
        assert long_ref.media_id is None
        assert long_ref.note == "not downloaded: 61 s is over the 60 s limit"
        assert ok_ref.media_id is not None
        assert [c for c, _ in go.calls].count("DownloadAny") == 1
    finally:
        await channel.stop()


async def test_send_voice_uploads_and_sends_a_ptt_audio_message(tmp_path, go):
    channel, _sink = await started(tmp_path, go)
    try:
        assert channel.capabilities.voice_notes
        assert channel.spoken_names() == (go.account.push_name,)
        ogg = ogg_opus_bytes(4.4)
        message_id = await channel.send_voice(DM, ogg)
        [(data, media_type)] = go.uploads
        assert data == ogg and media_type is MediaType.MediaAudio
        [(to, message)] = go.sent
        assert to == ANN_JID and message_id.startswith("3EB0FAKE")
        # What whatsmeow would put on the wire, read back.
        wire = E.Message.FromString(message.SerializeToString())
        audio = wire.audioMessage
        assert audio.PTT is True and audio.mimetype == "audio/ogg; codecs=opus"
        assert audio.seconds == 4  # from the Ogg granule: no ffprobe
        assert audio.fileLength == len(ogg)
        assert audio.fileSHA256 == hashlib.sha256(ogg).digest()
        assert audio.URL.startswith("https://mmg.whatsapp.net/v/") and audio.directPath
        assert len(audio.mediaKey) == 32 and len(audio.fileEncSHA256) == 32
        assert not wire.HasField("conversation")
    finally:
        await channel.stop()


async def test_a_group_voice_reply_quotes_the_message(tmp_path, go):
    ogg = ogg_opus_bytes(2.0)
    go.download_data = ogg
    channel, sink = await started(tmp_path, go, groupPolicy="open")
    try:
        go.deliver(_voice_event(ogg, seconds=2, msg_id="Q1", chat=GROUP_JID))
        await until(lambda: len(sink.received) == 1)
        group = ChatAddress("whatsapp", "default", GROUP_JID, ChatKind.GROUP)
        await channel.send_voice(group, ogg, duration_s=2.0, reply_to_message_id="Q1")
        [(to, message)] = go.sent
        context = message.audioMessage.contextInfo
        assert to == GROUP_JID and context.stanzaID == "Q1"
        assert context.quotedMessage.HasField("audioMessage")
    finally:
        await channel.stop()


async def test_voice_reply_through_the_outbox_then_the_rest_as_text(tmp_path, go):
    channel, _sink = await started(tmp_path, go)
    try:
        outbox, store = _outbox(channel)
        text = "A long answer. " * 40
        assert await outbox.deliver(_reply(1, text, DM),
                                    voice=VoiceClip(ogg_opus_bytes(3.0), 3.0, complete=False))
        kinds = ["audio" if m.HasField("audioMessage") else "text" for _, m in go.sent]
        assert kinds == ["audio", "text"]
        assert go.sent[1][1].conversation == text.strip()
        assert len(store.ids[1]) == 2
    finally:
        await channel.stop()


async def test_every_voice_failure_ends_in_the_text(tmp_path, go):
    channel, _sink = await started(tmp_path, go)
    try:
        # The upload fails (nothing reached the chat): a retryable SendError ...
        go.upload_errors.append("failed to upload: unexpected status 500")
        try:
            await channel.send_voice(DM, ogg_opus_bytes(1.0))
        except SendError as exc:
            assert exc.retryable
        else:
            raise AssertionError("expected a SendError")
        # ... and through the outbox the reply goes as text, once.
        go.upload_errors.append("failed to upload: unexpected status 500")
        outbox, store = _outbox(channel)
        assert await outbox.deliver(_reply(1, "plain words", DM),
                                    voice=VoiceClip(ogg_opus_bytes(1.0), 1.0))
        # The message send fails after the upload: the text still goes.
        go.send_errors.append("server returned error 479")
        assert await outbox.deliver(_reply(2, "more words", DM),
                                    voice=VoiceClip(ogg_opus_bytes(1.0), 1.0))
        # Bytes WhatsApp would not play as a voice note are never uploaded.
        assert await outbox.deliver(_reply(3, "last words", DM),
                                    voice=VoiceClip(b"RIFF....WAVEfmt ", 1.0))
        assert [m.conversation for _, m in go.sent] == ["plain words", "more words",
                                                         "last words"]
        assert len(go.uploads) == 1  # only the one whose send then failed
        assert store.marks == [("delivered", 1), ("delivered", 2), ("delivered", 3)]
    finally:
        await channel.stop()
