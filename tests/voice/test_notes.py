"""A message's voice notes through the real store and media store: transcribed once and
stored, history annotated from the store without a model call, the same note arriving
twice at once transcribed by one call, failures kept as words for the model."""

from __future__ import annotations

import asyncio

import pytest

from bridge.envelope import ChatAddress, ChatKind, Inbound, MediaKind, MediaRef
from bridge.media import MediaStore
from bridge.store import Store
from bridge.store.transcripts import TranscriptQueries
from bridge.voice.notes import TranscriptionSettings, VoiceNotes
from bridge.voice.service import InOrder, Transcriber, TranscriptStatus
from tests.fakes.audio_bytes import ogg_opus_bytes
from tests.voice.conftest import audio_model


@pytest.fixture
async def store(tmp_path):
    s = await Store.open(tmp_path / "p.db")
    yield s
    await s.close()


@pytest.fixture
def media(tmp_path):
    return MediaStore(tmp_path / "media")


@pytest.fixture
async def notes(store, media, session):
    n = VoiceNotes(Transcriber(InOrder(), session), TranscriptQueries(store), media)
    yield n
    await n.aclose()


async def _voice(media, seconds: float = 3.0) -> MediaRef:
    return await media.put(ogg_opus_bytes(seconds), kind=MediaKind.VOICE, mime="audio/ogg",
                           duration_s=seconds)


async def test_transcribed_once_then_history_reads_the_store(notes, media, audio_server):
    audio_server.transcript("call me back")
    settings = TranscriptionSettings((audio_model(audio_server.base_url),))
    ref = await _voice(media)
    image = MediaRef(MediaKind.IMAGE, "img")
    first = await notes.transcribe([ref, image], settings)
    assert first[ref.media_id].text == "call me back" and list(first) == [ref.media_id]
    again = await notes.transcribe([ref], settings)
    assert again[ref.media_id].text == "call me back"
    assert len(audio_server.requests) == 1  # the second came from the store
    assert audio_server.requests[0].file.data == ogg_opus_bytes(3.0)
    shown = await notes.annotate([ref, image])
    assert shown[0].placeholder() == '[voice note, 3 s, transcript: "call me back"]'
    assert shown[1] is image
    assert len(audio_server.requests) == 1  # annotate never calls a model


async def test_same_note_at_once_is_one_call(notes, media, audio_server):
    audio_server.slow(0.2).transcript("once")
    settings = TranscriptionSettings((audio_model(audio_server.base_url),))
    ref = await _voice(media)
    a, b = await asyncio.gather(notes.transcribe([ref], settings),
                                notes.transcribe([ref], settings))
    assert a[ref.media_id].text == b[ref.media_id].text == "once"
    assert len(audio_server.requests) == 1


async def test_failure_is_stored_as_words_and_not_retried_by_history(notes, media, store,
                                                                     audio_server):
    audio_server.error(500, "whisper crashed")
    settings = TranscriptionSettings((audio_model(audio_server.base_url),))
    ref = await _voice(media)
    result = (await notes.transcribe([ref], settings))[ref.media_id]
    assert result.status is TranscriptStatus.FAILED
    row = await TranscriptQueries(store).get(ref.media_id)
    assert (row.status, row.reason) == ("failed", "the transcription service failed")
    (shown,) = await notes.annotate([ref])
    assert shown.placeholder() == (
        "[voice note, 3 s, could not be transcribed: the transcription service failed]")
    await notes.transcribe([ref], settings)
    assert len(audio_server.requests) == 1


async def test_too_long_and_missing_audio(notes, media, audio_server):
    settings = TranscriptionSettings((audio_model(audio_server.base_url),), max_seconds=10)
    long_ref = await _voice(media, 12.0)
    gone = MediaRef(MediaKind.VOICE, "f" * 64, mime="audio/ogg", duration_s=2)
    out = await notes.transcribe([long_ref, gone], settings)
    assert out[long_ref.media_id].status is TranscriptStatus.TOO_LONG
    assert out[gone.media_id].status is TranscriptStatus.NO_AUDIO
    assert audio_server.requests == []
    undownloaded = MediaRef(MediaKind.VOICE, None, duration_s=400,
                            note="not downloaded: 400 s is over the 300 s limit")
    shown = await notes.annotate([long_ref, undownloaded])
    assert shown[0].placeholder() == (
        "[voice note, 12 s, could not be transcribed: 12 s is over the 10 s limit]")
    assert "could not be transcribed: not downloaded" in shown[1].placeholder()


async def test_message_id_and_language_are_stored(notes, media, store, audio_server):
    ref = await _voice(media)
    row_id = await store.record_inbound(Inbound(
        ChatAddress("whatsapp", "default", "+1", ChatKind.DIRECT), "+1", "w1", 0.0,
        media=(ref,)))
    settings = TranscriptionSettings((audio_model(audio_server.base_url),), language="de")
    await notes.transcribe([ref], settings, message_id=row_id)
    row = await TranscriptQueries(store).get(ref.media_id)
    assert (row.message_id, row.language) == (row_id, "de")
    assert audio_server.requests[0].fields["language"] == "de"


async def test_says_name_for_transcribe_for_mentions(notes, media, audio_server):
    audio_server.transcript("hey palaver what time is it")
    settings = TranscriptionSettings((audio_model(audio_server.base_url),),
                                     prompt="Palaver")
    ref = await _voice(media)
    assert await notes.says_name([ref], settings, ["@palaver_bot", "Palaver"])
    assert audio_server.requests[0].fields["prompt"] == "Palaver"
    other = await _voice(media, 4.0)
    audio_server.transcript("just chatting")
    assert not await notes.says_name([other], settings, ["Palaver"])


async def test_annotate_all_reads_a_window_at_once(notes, media, audio_server):
    settings = TranscriptionSettings((audio_model(audio_server.base_url),))
    a, b = await _voice(media, 2.0), await _voice(media, 5.0)
    audio_server.transcript("first").transcript("second")
    await notes.transcribe([a], settings)
    await notes.transcribe([b], settings)
    text = MediaRef(MediaKind.DOCUMENT, "doc", filename="x.pdf")
    window = await notes.annotate_all([[a], [], [text, b], [MediaRef(MediaKind.VOICE, None)]])
    assert [[r.placeholder() for r in m] for m in window] == [
        ['[voice note, 2 s, transcript: "first"]'], [],
        ["[document, 'x.pdf']", '[voice note, 5 s, transcript: "second"]'],
        ["[voice note, could not be transcribed]"]]
