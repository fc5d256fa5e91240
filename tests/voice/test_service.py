"""Transcription and speech through the candidates (fallback on every error class, limits,
failures that end in words for the model), and the words the model and sender see."""

from __future__ import annotations

import pytest

from bridge.envelope import MediaKind, MediaRef
from bridge.models.base import ErrorClass
from bridge.voice.audio import Ffmpeg
from bridge.voice.client import AudioInput
from bridge.voice.service import (
    InOrder,
    ReplyWithVoice,
    Speaker,
    SpeechFailed,
    Transcriber,
    Transcription,
    TranscriptStatus,
    echo_prefix,
    is_transcribable,
    model_text,
    names_the_bot,
    split_for_speech,
    wants_voice,
)
from tests.fakes.audio_bytes import ogg_opus_bytes, wav_bytes
from tests.fakes.audio_server import FakeAudioServer
from tests.voice.conftest import audio_config, audio_model
from tests.voice.test_audio import _fake_ffmpeg

VOICE = AudioInput(ogg_opus_bytes(3.0), "audio/ogg")


async def test_primary_answers(audio_server, session):
    audio_server.transcript("hello")
    result = await Transcriber(InOrder(), session).transcribe(
        VOICE, [audio_model(audio_server.base_url)])
    assert result.status is TranscriptStatus.OK and result.text == "hello"
    assert result.model_ref == "local/whisper-1"
    assert result.duration_s == pytest.approx(3.0, abs=0.021)


@pytest.mark.parametrize("status,cls", [(500, ErrorClass.SERVER_ERROR),
                                        (503, ErrorClass.OVERLOADED),
                                        (400, ErrorClass.BAD_REQUEST),
                                        (401, ErrorClass.AUTH)])
async def test_fallback_answers_after_any_failure(audio_server, audio_server2, session,
                                                  status, cls):
    audio_server.error(status, "primary down")
    audio_server2.transcript("from the fallback")
    config = audio_config({"a": audio_server.base_url, "b": audio_server2.base_url})
    result = await Transcriber(InOrder(config.model), session).transcribe(
        VOICE, ["a/whisper-1", "b/whisper-1"])
    assert (result.text, result.model_ref) == ("from the fallback", "b/whisper-1")
    assert [(a.model_ref, a.error_class) for a in result.attempts] == [
        ("a/whisper-1", cls), ("b/whisper-1", None)]
    assert len(audio_server2.requests) == 1


async def test_whispercpp_wav_only_falls_through_to_a_server_that_reads_ogg(session):
    async with FakeAudioServer(profile="whispercpp", request_path="/v1/audio",
                               inference_path="/transcriptions") as cpp, \
            FakeAudioServer(profile="localai") as local:
        local.transcript("ogg read")
        result = await Transcriber(InOrder(), session).transcribe(
            VOICE, [audio_model(cpp.base_url, provider="cpp"), audio_model(local.base_url)])
    assert result.text == "ogg read"
    assert result.attempts[0].error_class is ErrorClass.BAD_REQUEST


async def test_unknown_ref_is_not_found_and_the_next_is_tried(audio_server, session):
    config = audio_config({"a": audio_server.base_url})
    result = await Transcriber(InOrder(config.model), session).transcribe(
        VOICE, ["nope/x", "a/whisper-1"])
    assert result.ok and result.attempts[0].error_class is ErrorClass.NOT_FOUND


async def test_too_long_is_never_sent(audio_server, session):
    long_voice = AudioInput(ogg_opus_bytes(40.0), "audio/ogg")
    result = await Transcriber(InOrder(), session).transcribe(
        long_voice, [audio_model(audio_server.base_url)], max_seconds=30)
    assert result.status is TranscriptStatus.TOO_LONG
    assert result.reason == "40 s is over the 30 s limit"
    assert audio_server.requests == []
    # The platform's duration wins over the header when given.
    result = await Transcriber(InOrder(), session).transcribe(
        AudioInput(ogg_opus_bytes(1.0), "audio/ogg", duration_s=45), [
            audio_model(audio_server.base_url)], max_seconds=30)
    assert result.status is TranscriptStatus.TOO_LONG


async def test_every_model_failing_is_an_outcome_not_an_exception(audio_server, audio_server2,
                                                                 session):
    audio_server.hang()
    audio_server2.error(500, "boom sk-should-not-leak-1234567890")
    fast = {"connectSeconds": 1, "firstTokenSeconds": 0.3, "idleSeconds": 0.3,
            "totalSeconds": 2}
    result = await Transcriber(InOrder(), session).transcribe(VOICE, [
        audio_model(audio_server.base_url, provider="a", timeouts=fast),
        audio_model(audio_server2.base_url, provider="b")])
    assert result.status is TranscriptStatus.FAILED
    assert result.reason == "the transcription service failed"
    assert [a.error_class for a in result.attempts] == [ErrorClass.TIMEOUT,
                                                         ErrorClass.SERVER_ERROR]
    text = model_text(MediaRef(MediaKind.VOICE, "m1", duration_s=3.0), result)
    assert text == "[voice note, 3 s, could not be transcribed: the transcription service failed]"
    assert "sk-should-not-leak" not in text


async def test_no_bytes_is_no_audio(audio_server, session):
    result = await Transcriber(InOrder(), session).transcribe(
        AudioInput(b""), [audio_model(audio_server.base_url)])
    assert result.status is TranscriptStatus.NO_AUDIO and audio_server.requests == []


def test_model_text_marks_voice_notes_with_their_duration():
    voice = MediaRef(MediaKind.VOICE, "m1", mime="audio/ogg", duration_s=12.4)
    ok = Transcription(TranscriptStatus.OK, "see you\n at eight", "local/whisper-1", 12.4)
    assert model_text(voice, ok) == '[voice note, 12 s, transcript: "see you at eight"]'
    silent = Transcription(TranscriptStatus.OK, "", "local/whisper-1")
    assert model_text(voice, silent) == "[voice note, 12 s, no speech]"
    song = MediaRef(MediaKind.AUDIO, "m2", filename="song.mp3", duration_s=200)
    assert model_text(song, ok).startswith("[audio, 'song.mp3', 200 s, transcript: ")
    round_video = MediaRef(MediaKind.VIDEO, "m3", duration_s=9, note="round video")
    assert model_text(round_video, ok) == (
        '[video, 9 s, round video, transcript: "see you at eight"]')
    not_downloaded = MediaRef(MediaKind.VOICE, None, duration_s=700,
                              note="not downloaded: 700 s is over the 300 s limit")
    assert model_text(not_downloaded, None) == (
        "[voice note, 700 s, could not be transcribed: not downloaded: 700 s is over the "
        "300 s limit]")
    assert model_text(voice, None) == "[voice note, 12 s]"  # never tried: as before
    no_duration = MediaRef(MediaKind.VOICE, "m4")
    assert model_text(no_duration, ok).startswith("[voice note, 12 s, transcript:")


def test_which_media_are_transcribed():
    assert is_transcribable(MediaRef(MediaKind.VOICE))
    assert is_transcribable(MediaRef(MediaKind.AUDIO))
    assert is_transcribable(MediaRef(MediaKind.VIDEO, note="round video"))
    assert not is_transcribable(MediaRef(MediaKind.VIDEO))
    assert not is_transcribable(MediaRef(MediaKind.IMAGE))


def test_echo_prefix_quotes_every_line():
    assert echo_prefix("hello\nworld") == "> 🎙 hello\n> world\n\n"


@pytest.mark.parametrize("transcript,expected", [
    ("Hey Palaver, what's the weather", True),
    ("hey palaver_bot are you there", True),
    ("hey palaver bot are you there", True),
    ("Hé Pálaver!", True),
    ("palavering is fun", False),
    ("nothing to see", False),
])
def test_names_the_bot(transcript, expected):
    assert names_the_bot(transcript, ["@palaver_bot", "Palaver"]) is expected


def test_split_for_speech():
    assert split_for_speech("Short.", 100) == ("Short.", "")
    text = "First sentence here. Second one is longer. Third."
    spoken, rest = split_for_speech(text, 30)
    assert spoken == "First sentence here." and rest == "Second one is longer. Third."
    spoken, rest = split_for_speech("a" * 50, 20)
    assert len(spoken) == 20 and spoken + rest == "a" * 50


def test_wants_voice():
    assert not wants_voice("never", asked_by_voice=True)
    assert wants_voice(ReplyWithVoice.WHEN_VOICE, asked_by_voice=True)
    assert not wants_voice("whenVoice", asked_by_voice=False)
    assert wants_voice("always", asked_by_voice=False)


async def test_speaker_sends_ogg_opus_as_is(audio_server, session):
    reply = await Speaker(InOrder(), session).speak(
        "Hello. " * 3, [audio_model(audio_server.base_url, "tts-1")], voice="alloy",
        max_chars=10)
    assert reply.audio.startswith(b"OggS") and reply.spoken == "Hello."
    assert reply.rest == "Hello. Hello." and reply.model_ref == "local/tts-1"
    assert audio_server.requests[0].json["response_format"] == "opus"


async def test_speaker_without_ffmpeg_skips_a_server_that_is_not_opus(session, audio_server):
    async with FakeAudioServer() as wav_only:
        wav_only.audio(wav_bytes(0.5), content_type="audio/wav")
        reply = await Speaker(InOrder(), session).speak("hi", [
            audio_model(wav_only.base_url, "tts", provider="w"),
            audio_model(audio_server.base_url, "tts-1")], voice="v")
    assert reply.model_ref == "local/tts-1" and reply.audio.startswith(b"OggS")


async def test_speaker_converts_with_ffmpeg(session, tmp_path):
    async with FakeAudioServer() as wav_only:
        wav_only.audio(wav_bytes(0.5), content_type="audio/wav")
        reply = await Speaker(InOrder(), session, ffmpeg=Ffmpeg(_fake_ffmpeg(tmp_path))).speak(
            "hi", [audio_model(wav_only.base_url, "tts")], voice="v")
    assert reply.audio.startswith(b"OggS") and (tmp_path / "calls.jsonl").exists()


async def test_speech_failure_is_speech_failed(audio_server, session):
    audio_server.error(500, "tts down")
    with pytest.raises(SpeechFailed):
        await Speaker(InOrder(), session).speak(
            "hi", [audio_model(audio_server.base_url, "tts-1")], voice="v")
    with pytest.raises(SpeechFailed, match="nothing to speak"):
        await Speaker(InOrder(), session).speak(
            "  ", [audio_model(audio_server.base_url, "tts-1")], voice="v")
