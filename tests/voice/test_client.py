"""One transcription or speech call on the wire, against the fake audio servers: the
multipart form aiohttp builds, each server's answer shapes, and every failure classified
into the model error classes (secrets never in a message)."""

from __future__ import annotations

import pytest

from bridge.models.base import ErrorClass, ModelError
from bridge.voice.client import AudioInput, speak_once, transcribe_once
from tests.fakes.audio_bytes import ogg_opus_bytes, wav_bytes
from tests.fakes.audio_server import FakeAudioServer
from tests.models.conftest import closed_port
from tests.voice.conftest import audio_model

FAST = {"connectSeconds": 1, "firstTokenSeconds": 0.4, "idleSeconds": 0.4,
        "totalSeconds": 5}


async def test_transcription_sends_an_openai_multipart_form(audio_server, session):
    audio_server.transcript("  bonjour tout le monde \n")
    voice = ogg_opus_bytes(2.0)
    model = audio_model(audio_server.base_url, "whisper-1", apiKey="sk-local-123")
    text = await transcribe_once(session, model, AudioInput(voice, "audio/ogg", 2.0),
                                 language="fr", prompt="Palaver")
    assert text == "bonjour tout le monde"
    rec = audio_server.requests[0]
    assert rec.path == "/v1/audio/transcriptions"
    assert rec.headers["Authorization"] == "Bearer sk-local-123"
    assert rec.fields == {"model": "whisper-1", "response_format": "json", "language": "fr",
                          "prompt": "Palaver"}
    assert (rec.file.filename, rec.file.content_type, rec.file.data) == (
        "voice.ogg", "audio/ogg", voice)


async def test_upload_is_named_by_its_bytes_not_the_platform_mime(audio_server, session):
    model = audio_model(audio_server.base_url)
    await transcribe_once(session, model, AudioInput(wav_bytes(0.2), "audio/ogg"))
    await transcribe_once(session, model, AudioInput(b"\0\0\0\x18ftypmp42" + b"\0" * 64,
                                                     "video/mp4"))
    names = [(r.file.filename, r.file.content_type) for r in audio_server.requests]
    assert names == [("voice.wav", "audio/wav"), ("voice.mp4", "video/mp4")]


@pytest.mark.parametrize("profile", ["localai", "speaches"])
async def test_transcript_from_each_servers_json(session, profile):
    async with FakeAudioServer(profile=profile) as server:
        server.transcript("ok then")
        model = audio_model(server.base_url)
        assert await transcribe_once(session, model, AudioInput(ogg_opus_bytes(1))) == "ok then"


async def test_whispercpp_text_html_answer_and_wav_only(session):
    async with FakeAudioServer(profile="whispercpp", request_path="/v1/audio",
                               inference_path="/transcriptions") as server:
        model = audio_model(server.base_url)
        with pytest.raises(ModelError) as err:
            await transcribe_once(session, model, AudioInput(ogg_opus_bytes(1)))
        assert err.value.error_class is ErrorClass.BAD_REQUEST
        assert "failed to read audio data" in err.value.message
        server.raw(200, "from wav\n", "text/html; charset=utf-8")
        assert await transcribe_once(session, model, AudioInput(wav_bytes(0.3))) == "from wav"


@pytest.mark.parametrize("status,body,cls", [
    (401, None, ErrorClass.AUTH),
    (404, None, ErrorClass.NOT_FOUND),
    (429, None, ErrorClass.RATE_LIMITED),
    (500, None, ErrorClass.SERVER_ERROR),
    (503, None, ErrorClass.OVERLOADED),
    (400, None, ErrorClass.BAD_REQUEST),
    (413, None, ErrorClass.CONTEXT_OVERFLOW),
])
async def test_http_errors_are_classified(audio_server, session, status, body, cls):
    audio_server.error(status, "nope", body=body)
    with pytest.raises(ModelError) as err:
        await transcribe_once(session, audio_model(audio_server.base_url),
                              AudioInput(ogg_opus_bytes(1)))
    assert err.value.error_class is cls and err.value.status == status


async def test_localai_loading_is_overloaded_with_retry_after(session):
    async with FakeAudioServer(profile="localai") as server:
        server.loading(retry_after=9)
        with pytest.raises(ModelError) as err:
            await transcribe_once(session, audio_model(server.base_url),
                                  AudioInput(ogg_opus_bytes(1)))
    assert err.value.error_class is ErrorClass.OVERLOADED and err.value.retry_after == 9


async def test_bad_answers_are_bad_response(audio_server, session):
    model = audio_model(audio_server.base_url)
    for body in ('{"txt": "x"}', "{not json"):
        audio_server.raw(200, body)
        with pytest.raises(ModelError) as err:
            await transcribe_once(session, model, AudioInput(ogg_opus_bytes(1)))
        assert err.value.error_class is ErrorClass.BAD_RESPONSE


async def test_hanging_and_slow_servers_time_out(audio_server, session):
    model = audio_model(audio_server.base_url, timeouts=FAST)
    audio_server.hang()
    with pytest.raises(ModelError) as err:
        await transcribe_once(session, model, AudioInput(ogg_opus_bytes(1)))
    assert err.value.error_class is ErrorClass.TIMEOUT
    assert "first token timeout (0.4s)" in err.value.message
    audio_server.slow(0.1).transcript("in time")
    assert await transcribe_once(session, model, AudioInput(ogg_opus_bytes(1))) == "in time"


async def test_unreachable_server_and_anthropic_api(session):
    with pytest.raises(ModelError) as err:
        await transcribe_once(session, audio_model(f"http://127.0.0.1:{closed_port()}/v1"),
                              AudioInput(ogg_opus_bytes(1)))
    assert err.value.error_class is ErrorClass.UNREACHABLE
    with pytest.raises(ModelError) as err:
        await transcribe_once(session, audio_model("http://127.0.0.1:1", api="anthropic-messages"),
                              AudioInput(ogg_opus_bytes(1)))
    assert err.value.error_class is ErrorClass.NOT_FOUND  # falls through to the next model


async def test_hosted_provider_without_key_fails_fast_and_key_never_echoed(session):
    with pytest.raises(ModelError) as err:
        await transcribe_once(session, audio_model("https://api.openai.com/v1",
                                                   provider="openai"),
                              AudioInput(ogg_opus_bytes(1)))
    assert err.value.error_class is ErrorClass.AUTH
    async with FakeAudioServer() as server:
        server.error(401, "Incorrect API key provided: sk-secret-abcdefghijklmnop")
        with pytest.raises(ModelError) as err:
            await transcribe_once(session, audio_model(server.base_url,
                                                       apiKey="sk-secret-abcdefghijklmnop"),
                                  AudioInput(ogg_opus_bytes(1)))
    assert "sk-secret-abcdefghijklmnop" not in str(err.value)


async def test_speech_asks_for_opus_and_returns_ogg(audio_server, session):
    model = audio_model(audio_server.base_url, "tts-1")
    audio = await speak_once(session, model, "Hello there", voice="alloy", speed=1.1)
    assert audio.ogg_opus and audio.container == "ogg"
    assert audio_server.requests[0].json == {"model": "tts-1", "input": "Hello there",
                                             "voice": "alloy", "response_format": "opus",
                                             "speed": 1.1}


async def test_speech_that_is_not_audio_is_bad_response(audio_server, session):
    model = audio_model(audio_server.base_url, "tts-1")
    audio_server.raw(200, '{"error": "oops"}')
    with pytest.raises(ModelError) as err:
        await speak_once(session, model, "hi", voice="alloy")
    assert err.value.error_class is ErrorClass.BAD_RESPONSE
    audio_server.error(400, "Missing voice", param="voice")
    with pytest.raises(ModelError) as err:
        await speak_once(session, model, "hi", voice="alloy")
    assert err.value.error_class is ErrorClass.BAD_REQUEST


async def test_localai_pcm_comes_back_as_wav(session):
    async with FakeAudioServer(profile="localai") as server:
        audio = await speak_once(session, audio_model(server.base_url, "tts"), "hi", voice="v",
                                 response_format="pcm")
    assert audio.container == "wav" and not audio.ogg_opus
