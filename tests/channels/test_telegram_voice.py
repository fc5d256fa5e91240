"""Telegram voice intake: real PTB updates from the fake Bot API carrying real Ogg/Opus
bytes; voice, audio and round video notes become media with kind, duration and mime;
audioMaxSeconds and mediaMaxMb decide what is downloaded; a stranger's voice never is."""

from __future__ import annotations

import pytest

from bridge.config.schema import TelegramConfig
from bridge.envelope import ChatAddress, ChatKind, Inbound, MediaKind
from bridge.media import MediaStore
from bridge.ports import SendError
from bridge.voice.audio import duration_s, is_ogg_opus
from bridge.voice.service import is_transcribable
from channels.telegram.channel import TelegramChannel
from tests.channels.test_telegram import RecordingSink
from tests.fakes.audio_bytes import ogg_opus_bytes
from tests.fakes.telegram_api import FakeBotAPI


@pytest.fixture
async def make_channel(fake, tmp_path):
    made: list[TelegramChannel] = []

    async def build(sink, **overrides) -> TelegramChannel:
        fields = {"botToken": fake.token, "apiRoot": fake.url, **overrides}
        channel = TelegramChannel(TelegramConfig(**fields),
                                  media=MediaStore(tmp_path / "media"), data_dir=tmp_path)
        channel.poll_timeout = 1
        channel.typing_delay = 0
        made.append(channel)
        await channel.start(sink)
        return channel

    yield build
    for channel in made:
        await channel.stop()


async def test_voice_audio_and_video_notes_arrive_as_transcribable_media(make_channel, fake):
    sink = RecordingSink()
    channel = await make_channel(sink)
    voice = ogg_opus_bytes(12.0)
    mp4 = b"\0\0\0\x18ftypmp42" + b"\0" * 200
    fake.push_voice(1001, 1001, voice, duration=12)
    fake.push_audio(1001, 1001, b"ID3\x04" + b"\0" * 300, duration=95, filename="memo.mp3")
    fake.push_video_note(1001, 1001, mp4, duration=9)
    got_voice, got_audio, got_round = await sink.wait_for(3)

    ref = got_voice.media[0]
    assert (ref.kind, ref.duration_s, ref.mime) == (MediaKind.VOICE, 12, "audio/ogg")
    stored = channel.media.path_for(ref.media_id).read_bytes()
    assert stored == voice and is_ogg_opus(stored)
    assert duration_s(stored) == pytest.approx(12.0, abs=0.021)  # the header agrees
    audio = got_audio.media[0]
    assert (audio.kind, audio.duration_s, audio.filename) == (MediaKind.AUDIO, 95, "memo.mp3")
    assert audio.mime == "audio/mpeg" and audio.media_id
    rnd = got_round.media[0]
    assert (rnd.kind, rnd.duration_s, rnd.mime, rnd.note) == (
        MediaKind.VIDEO, 9, "video/mp4", "round video")
    assert channel.media.path_for(rnd.media_id).read_bytes() == mp4
    assert all(is_transcribable(i.media[0]) for i in (got_voice, got_audio, got_round))


async def test_audio_max_seconds_keeps_long_notes_undownloaded(make_channel, fake):
    sink = RecordingSink()
    await make_channel(sink, audioMaxSeconds=60)
    fake.push_voice(1001, 1001, ogg_opus_bytes(1.0), duration=61)
    fake.push_video_note(1001, 1001, b"mp4", duration=61)
    fake.push_voice(1001, 1001, ogg_opus_bytes(1.0), duration=60)
    fake.push_photo(1001, 1001, b"\x89PNG" + b"\0" * 50)  # not audio: no duration limit
    long_voice, long_round, ok_voice, photo = await sink.wait_for(4)
    assert long_voice.media[0].media_id is None
    assert long_voice.media[0].note == "not downloaded: 61 s is over the 60 s limit"
    assert long_voice.media[0].placeholder() == (
        "[voice note, 61 s, not downloaded: 61 s is over the 60 s limit]")
    assert long_round.media[0].media_id is None and "over the 60 s limit" in (
        long_round.media[0].note)
    assert ok_voice.media[0].media_id is not None and photo.media[0].media_id is not None
    assert len(fake.calls_to("getFile")) == 2  # the long ones are never asked for


async def test_the_default_limit_is_300_seconds(make_channel, fake):
    sink = RecordingSink()
    await make_channel(sink)
    fake.push_voice(1001, 1001, ogg_opus_bytes(1.0), duration=3600)
    fake.push_voice(1001, 1001, ogg_opus_bytes(1.0), duration=300)
    long_voice, ok_voice = await sink.wait_for(2)
    assert long_voice.media[0].media_id is None
    assert long_voice.media[0].note == "not downloaded: 3600 s is over the 300 s limit"
    assert ok_voice.media[0].media_id is not None


async def test_media_max_mb_applies_to_voice_too(make_channel, fake):
    sink = RecordingSink()
    await make_channel(sink, mediaMaxMb=0.001, audioMaxSeconds=600)
    fake.push_voice(1001, 1001, ogg_opus_bytes(30.0) + b"\0" * 2000, duration=30)
    (inbound,) = await sink.wait_for(1)
    assert inbound.media[0].media_id is None and "MB limit" in inbound.media[0].note


class RefusingSink(RecordingSink):
    """The door says no to everyone (a stranger, an unmentioned group message)."""

    async def admits(self, inbound: Inbound) -> bool:
        return False


async def test_a_voice_note_the_core_will_not_answer_is_never_downloaded(make_channel, fake):
    sink = RefusingSink()
    await make_channel(sink)
    fake.push_voice(-100, 2002, ogg_opus_bytes(2.0), duration=2, chat_type="group")
    (inbound,) = await sink.wait_for(1)
    assert inbound.media[0].kind is MediaKind.VOICE and inbound.media[0].media_id is None
    assert fake.calls_to("getFile") == [] and fake.downloads == []


# --------------------------------------------------------------------------- spoken replies


@pytest.fixture
async def voice_fake():
    async with FakeBotAPI() as server:
        yield server


async def _voice_channel(fake, tmp_path) -> TelegramChannel:
    channel = TelegramChannel(TelegramConfig(botToken=fake.token, apiRoot=fake.url),
                              media=MediaStore(tmp_path / "media"), data_dir=tmp_path)
    channel.poll_timeout = 1
    channel.pace_chat_interval = 0
    await channel.start(RecordingSink())
    return channel


async def test_send_voice_uploads_ogg_opus_as_a_voice_message(voice_fake, tmp_path):
    channel = await _voice_channel(voice_fake, tmp_path)
    try:
        audio = ogg_opus_bytes(4.0)
        group = ChatAddress("telegram", "default", "-100", ChatKind.GROUP, "7")
        sent_id = await channel.send_voice(group, audio, duration_s=4.2, caption="x" * 2000,
                                           reply_to_message_id="-100:55")
        (call,) = voice_fake.calls_to("sendVoice")
        upload = [u for u in voice_fake.uploads if u.method == "sendVoice"][0]
        assert (upload.field, upload.filename, upload.data) == ("voice", "reply.ogg", audio)
        assert call.params["duration"] == "4" and len(call.params["caption"]) == 1024
        assert call.params["message_thread_id"] == 7
        assert call.params["reply_parameters"]["message_id"] == 55
        assert sent_id.startswith("-100:")
        direct = ChatAddress("telegram", "default", "1001", ChatKind.DIRECT)
        await channel.send_voice(direct, audio, reply_to_message_id="1001:3")
        assert "reply_parameters" not in voice_fake.calls_to("sendVoice")[1].params
    finally:
        await channel.stop()


async def test_send_voice_failures_are_send_errors(voice_fake, tmp_path):
    channel = await _voice_channel(voice_fake, tmp_path)
    direct = ChatAddress("telegram", "default", "1001", ChatKind.DIRECT)
    try:
        voice_fake.fail("sendVoice", 403, "Forbidden: bot was blocked by the user")
        with pytest.raises(SendError) as err:
            await channel.send_voice(direct, ogg_opus_bytes(1.0))
        assert not err.value.retryable and "blocked" in str(err.value)
        voice_fake.fail("sendVoice", 429, "Too Many Requests: retry after 999",
                        retry_after=999)
        with pytest.raises(SendError) as err:
            await channel.send_voice(direct, ogg_opus_bytes(1.0))
        assert err.value.retryable
    finally:
        await channel.stop()
    with pytest.raises(SendError) as err:
        await channel.send_voice(direct, ogg_opus_bytes(1.0))
    assert err.value.retryable  # not running: the outbox tries again later


# --------------------------------------------------------------------------- voice replies
# The outbox (bridge.delivery) with a real TelegramChannel on the fake Bot API: a spoken
# reply goes as sendVoice; the text follows when only part was spoken; any voice failure
# ends in the text.


def _reply(msg_id: int, text: str, address: ChatAddress, reply_to: str | None = None):
    import time

    from bridge.store import MessageKind, MessageStatus, StoredMessage

    return StoredMessage(
        id=msg_id, direction="out", role="assistant", kind=MessageKind.CHAT,
        session_key="s", session_id=1, turn_id=msg_id, address=address,
        platform_message_id=None, sender_id=None, sender_name=None, mentioned=False,
        text=text, media=(), quoted=None, status=MessageStatus.PENDING, reason=None,
        model_ref=None, reply_to_message_id=reply_to, delivered=False,
        created_at=time.time())


def _outbox(channel, *queued):
    from bridge.delivery import Outbox
    from tests.core.test_delivery import FakeStore

    class IdStore(FakeStore):
        def __init__(self, *q) -> None:
            super().__init__(*q)
            self.ids: dict[int, list[str]] = {}

        async def mark_delivered(self, msg_id: int, ids: list[str]) -> None:
            self.ids[msg_id] = list(ids)
            await super().mark_delivered(msg_id, ids)

    store = IdStore(*queued)
    later: list[tuple[str, float]] = []
    return Outbox(store, lambda a: channel, lambda k, d: later.append((k, d)),
                  retry_delays=(5,)), store


DM = ChatAddress("telegram", "default", "1001", ChatKind.DIRECT)


async def test_a_spoken_reply_goes_as_a_voice_message_only(voice_fake, tmp_path):
    from bridge.envelope import VoiceClip

    channel = await _voice_channel(voice_fake, tmp_path)
    try:
        assert channel.capabilities.voice_notes
        audio = ogg_opus_bytes(2.5)
        outbox, store = _outbox(channel)
        msg = _reply(1, "See you at eight.", DM)
        assert await outbox.deliver(msg, voice=VoiceClip(audio, 2.5)) is True
        (call,) = voice_fake.calls_to("sendVoice")
        assert call.params["duration"] == "2"  # round(2.5): banker's rounding, as sent
        assert voice_fake.calls_to("sendMessage") == []
        upload = [u for u in voice_fake.uploads if u.method == "sendVoice"][0]
        assert upload.data == audio and is_ogg_opus(upload.data)
        [voice_id] = store.ids[1]
        assert voice_id.startswith("1001:")
    finally:
        await channel.stop()


async def test_a_long_reply_is_spoken_in_part_then_sent_whole_as_text(voice_fake, tmp_path):
    from bridge.envelope import VoiceClip

    channel = await _voice_channel(voice_fake, tmp_path)
    try:
        group = ChatAddress("telegram", "default", "-100", ChatKind.GROUP)
        outbox, store = _outbox(channel)
        text = "First sentence. " + "More words here. " * 30
        msg = _reply(1, text, group, reply_to="-100:9")
        assert await outbox.deliver(msg, voice=VoiceClip(ogg_opus_bytes(3.0), 3.0,
                                                         complete=False))
        methods = [c.method for c in voice_fake.calls if c.method in ("sendVoice",
                                                                       "sendMessage")]
        assert methods == ["sendVoice", "sendMessage"]  # the voice first, then the text
        (sent,) = voice_fake.sent
        assert sent.text == text.strip()
        assert voice_fake.calls_to("sendVoice")[0].params["reply_parameters"][
            "message_id"] == 9
        assert len(store.ids[1]) == 2  # the voice's id and the text's
    finally:
        await channel.stop()


@pytest.mark.parametrize("failure", ["forbidden", "bad_request", "not_ogg"])
async def test_every_voice_failure_ends_in_the_text(voice_fake, tmp_path, failure):
    from bridge.envelope import VoiceClip

    channel = await _voice_channel(voice_fake, tmp_path)
    try:
        if failure == "forbidden":
            voice_fake.voice_forbidden.add(1001)
        elif failure == "bad_request":
            voice_fake.fail("sendVoice", 400, "Bad Request: wrong type of the web page content")
        outbox, store = _outbox(channel)
        clip = VoiceClip(b"not audio at all" if failure == "not_ogg" else ogg_opus_bytes(1.0))
        assert await outbox.deliver(_reply(1, "the answer", DM), voice=clip)
        assert [s.text for s in voice_fake.sent] == ["the answer"]
        assert store.marks == [("delivered", 1)]
        if failure == "not_ogg":  # never uploaded: Telegram would show it as a file
            assert voice_fake.calls_to("sendVoice") == []
        # The voice is never retried: a later flush has nothing left to send.
        assert await outbox.flush("s") == {}
    finally:
        await channel.stop()


async def test_a_held_session_still_speaks_the_new_reply(voice_fake, tmp_path):
    from bridge.envelope import VoiceClip

    channel = await _voice_channel(voice_fake, tmp_path)
    try:
        first = _reply(1, "earlier reply", DM)
        outbox, store = _outbox(channel, first)
        outbox.held.add("s")
        second = _reply(2, "spoken reply", DM)
        store.queued.append(second)
        assert await outbox.deliver(second, voice=VoiceClip(ogg_opus_bytes(1.0), 1.0))
        assert [s.text for s in voice_fake.sent] == ["earlier reply"]
        assert len(voice_fake.calls_to("sendVoice")) == 1 and outbox.held == set()
    finally:
        await channel.stop()


async def test_a_channel_without_voice_gets_the_text(tmp_path):
    from bridge.envelope import VoiceClip
    from tests.core.helpers import RecordingChannel

    channel = RecordingChannel()
    outbox, _store = _outbox(channel)
    assert await outbox.deliver(_reply(1, "words", DM), voice=VoiceClip(ogg_opus_bytes(1.0)))
    assert channel.texts() == ["words"]
