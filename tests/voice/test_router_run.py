"""Transcription through the model router's own loop (``ModelRouter.run``): cooldowns
shared with the router's other calls, the failed model skipped while it cools, probed
after; a bad_request falls through for audio."""

from __future__ import annotations

from bridge.models.base import ErrorClass
from bridge.models.router import ModelRouter
from bridge.voice.client import AudioInput
from bridge.voice.service import Transcriber
from tests.fakes.audio_bytes import ogg_opus_bytes
from tests.models.conftest import FakeClock
from tests.voice.conftest import audio_config

VOICE = AudioInput(ogg_opus_bytes(2.0), "audio/ogg")


async def test_router_run_cools_down_a_failed_transcription_model(audio_server, audio_server2,
                                                                 session):
    config = audio_config({"a": audio_server.base_url, "b": audio_server2.base_url})
    clock = FakeClock()
    router = ModelRouter(lambda: config, clock=clock, session=session)
    transcriber = Transcriber(router, session)
    audio_server.error(503, "loading")
    first = await transcriber.transcribe(VOICE, ["a/whisper-1", "b/whisper-1"])
    assert first.model_ref == "b/whisper-1"
    assert first.attempts[0].error_class is ErrorClass.OVERLOADED
    # While "a" cools down it is skipped, never called.
    second = await transcriber.transcribe(VOICE, ["a/whisper-1", "b/whisper-1"])
    assert second.attempts[0].skipped and len(audio_server.requests) == 1
    assert router.status()["a/whisper-1"]["last_error"] == "overloaded"
    clock.now += 31  # cooldown over: the next call probes it and it answers
    audio_server.transcript("back")
    third = await transcriber.transcribe(VOICE, ["a/whisper-1", "b/whisper-1"])
    assert (third.model_ref, third.text) == ("a/whisper-1", "back")
    assert "a/whisper-1" not in router.status()


async def test_router_run_bad_request_falls_through_for_audio(audio_server, audio_server2,
                                                             session):
    config = audio_config({"a": audio_server.base_url, "b": audio_server2.base_url})
    router = ModelRouter(lambda: config, session=session)
    audio_server.error(400, "Invalid file format.")
    result = await Transcriber(router, session).transcribe(
        VOICE, ["a/whisper-1", "b/whisper-1"])
    assert result.model_ref == "b/whisper-1"
