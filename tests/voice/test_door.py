"""The door with voice notes (bridge/conversation.py + bridge/voice/wiring.py), against a
real store and media store and the fake transcription server: a group voice note heard
for the bot's name under transcribeForMentions, a stranger's never, an admitted one
transcribed once at the door with its message, and one not for the bot leaving no
transcript."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from bridge.conversation import ConversationCore
from bridge.envelope import AcceptStatus, ChatAddress, ChatKind, Inbound, MediaKind, MediaRef
from bridge.media import MediaStore
from bridge.store import Store
from bridge.store.transcripts import TranscriptQueries
from bridge.voice.service import InOrder
from bridge.voice.wiring import VoiceService
from tests.core.helpers import FakeRouter, RecordingChannel, make_config
from tests.fakes.audio_bytes import ogg_opus_bytes
from tests.fakes.audio_server import FakeAudioServer


class NamedChannel(RecordingChannel):
    def spoken_names(self) -> tuple[str, ...]:
        return ("@palaver_test_bot", "Palaver")


@pytest.fixture
async def whisper():
    async with FakeAudioServer() as server:
        yield server


@pytest.fixture
async def rig(tmp_path, whisper):
    config = make_config(tmp_path, **{
        "models__providers__stt": {"baseUrl": whisper.base_url, "api": "openai-completions",
                                   "models": [{"id": "whisper-1", "kind": "transcription"}]},
        "agents__defaults__transcription": {"model": "stt/whisper-1"},
        "channels__telegram__groupPolicy": "allowlist",
        "channels__telegram__groups": {
            "-100": {"requireMention": True, "transcribeForMentions": True},
            "-200": {"requireMention": True},
            "-300": {"requireMention": False, "allowFrom": ["7"],
                     "transcribeForMentions": True}},
    })
    store = await Store.open_in(tmp_path / "data")
    media = MediaStore(tmp_path / "data" / "media")
    voice = VoiceService(InOrder(config.model), store, media, lambda: config)
    core = ConversationCore(store, config, FakeRouter(config), media=media,
                            channels=[NamedChannel()], voice=voice)
    await core.start()
    yield core, store, media, voice
    await core.stop(grace=0)
    await voice.aclose()
    await store.close()


_n = iter(range(1, 10_000))


def voice_in(chat: str, ref: MediaRef | None, *, sender: str = "7",
             mentioned: bool = False) -> Inbound:
    media = (ref,) if ref is not None else (MediaRef(MediaKind.VOICE, duration_s=2.0),)
    return Inbound(address=ChatAddress("telegram", "default", chat, ChatKind.GROUP),
                   sender_id=sender, message_id=f"v{next(_n)}", timestamp=time.time(),
                   sender_name="Bob", media=media, mentioned=mentioned)


async def stored_voice(media: MediaStore, seconds: float = 2.0) -> MediaRef:
    return await media.put(ogg_opus_bytes(seconds), kind=MediaKind.VOICE, mime="audio/ogg",
                           duration_s=seconds)


async def test_a_voice_note_saying_the_bots_name_is_a_mention(rig, whisper):
    core, store, media, _voice = rig
    bare = voice_in("-100", None)
    assert await core.admits(bare)  # downloaded: it may name the bot
    whisper.transcript("Palaver, what's the weather like?")
    status = await core.accept(voice_in("-100", await stored_voice(media)))
    assert status is AcceptStatus.ACCEPTED
    [call] = whisper.requests
    assert "palaver_test_bot" in call.fields["prompt"]  # the name Whisper should expect


async def test_a_voice_note_not_for_the_bot_is_ignored_and_its_words_not_kept(rig, whisper):
    core, store, media, _voice = rig
    whisper.transcript("let's have lunch at noon")
    ref = await stored_voice(media, 3.0)
    assert await core.accept(voice_in("-100", ref)) is AcceptStatus.IGNORED
    assert len(whisper.requests) == 1
    assert await TranscriptQueries(store).get(ref.media_id) is None


async def test_without_transcribe_for_mentions_nothing_is_fetched_or_heard(rig, whisper):
    core, _store, media, _voice = rig
    assert not await core.admits(voice_in("-200", None))
    ref = await stored_voice(media)
    assert await core.accept(voice_in("-200", ref)) is AcceptStatus.IGNORED
    assert whisper.requests == []


async def test_a_strangers_voice_is_refused_before_any_download(rig, whisper):
    core, _store, media, _voice = rig
    assert not await core.admits(voice_in("-300", None, sender="99"))
    assert await core.accept(voice_in("-300", await stored_voice(media), sender="99")) is (
        AcceptStatus.REFUSED)
    assert whisper.requests == []


async def test_an_admitted_voice_note_is_transcribed_once_with_its_message(rig, whisper):
    core, store, media, voice = rig
    whisper.transcript("see you at eight")
    ref = await stored_voice(media)
    inbound = voice_in("-100", ref, mentioned=True)
    assert await core.accept(inbound) is AcceptStatus.ACCEPTED
    assert await core.accept(replace(inbound)) is AcceptStatus.DUPLICATE
    await core.wait_idle()
    for task in list(voice._tasks):
        await task
    row = await TranscriptQueries(store).get(ref.media_id)
    assert row is not None and row.text == "see you at eight" and row.message_id is not None
    assert len(whisper.requests) == 1
