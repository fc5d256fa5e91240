"""The fake audio server speaks OpenAI's audio API exactly, and each profile its server's
quirks (checked against LocalAI, speaches and whisper.cpp's sources)."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from tests.fakes.audio_bytes import (
    ogg_crc,
    ogg_opus_bytes,
    ogg_opus_duration,
    wav_bytes,
    wav_duration,
)
from tests.fakes.audio_server import ACCEPTED_EXTENSIONS, FakeAudioServer


def form(data: bytes = b"", *, filename: str = "voice.ogg", content_type: str = "audio/ogg",
         **fields: str) -> aiohttp.FormData:
    f = aiohttp.FormData()
    f.add_field("file", data or ogg_opus_bytes(2.0), filename=filename,
                content_type=content_type)
    for name, value in fields.items():
        f.add_field(name, value)
    return f


async def post_form(session, url, f):
    async with session.post(url, data=f) as resp:
        return resp.status, resp.content_type, await resp.read()


# ------------------------------------------------------------------ generated audio


def test_generated_ogg_opus_is_a_valid_stream():
    data = ogg_opus_bytes(3.0)
    pages = []
    pos = 0
    while pos < len(data):
        assert data[pos:pos + 4] == b"OggS"
        nsegs = data[pos + 26]
        size = sum(data[pos + 27:pos + 27 + nsegs])
        page = bytearray(data[pos:pos + 27 + nsegs + size])
        crc = int.from_bytes(page[22:26], "little")
        page[22:26] = b"\0\0\0\0"
        assert ogg_crc(bytes(page)) == crc
        pages.append(page)
        pos += len(page)
    assert pages[0][5] & 0x02 and pages[-1][5] & 0x04  # BOS first, EOS last
    assert b"OpusHead" in pages[0] and b"OpusTags" in pages[1]
    assert ogg_opus_duration(data) == pytest.approx(3.0, abs=0.02)


def test_generated_wav_has_its_length():
    assert wav_duration(wav_bytes(1.5)) == pytest.approx(1.5)


# ------------------------------------------------------------------ transcriptions


async def test_transcription_parses_the_multipart_form_and_records_it(audio_server, session):
    audio_server.transcript("hola")
    audio = ogg_opus_bytes(1.0)
    status, ctype, body = await post_form(
        session, audio_server.base_url + "/audio/transcriptions",
        form(audio, model="whisper-1", language="es", prompt="Palaver", temperature="0.2"))
    assert (status, ctype, json.loads(body)) == (200, "application/json", {"text": "hola"})
    rec = audio_server.requests[0]
    assert rec.content_type.startswith("multipart/form-data; boundary=")
    assert rec.fields == {"model": "whisper-1", "language": "es", "prompt": "Palaver",
                          "temperature": "0.2"}
    assert (rec.file.filename, rec.file.content_type, rec.file.data) == (
        "voice.ogg", "audio/ogg", audio)


@pytest.mark.parametrize("fmt,ctype,expected", [
    ("text", "text/plain", b"hi there\n"),
    ("srt", "application/x-subrip", b"1\n00:00:00,000 --> 00:00:02,000\nhi there\n\n"),
    ("vtt", "text/vtt", b"WEBVTT\n\n00:00:00.000 --> 00:00:02.000\nhi there\n\n"),
])
async def test_text_response_formats(audio_server, session, fmt, ctype, expected):
    audio_server.transcript("hi there", duration=2.0)
    status, got_type, body = await post_form(
        session, audio_server.base_url + "/audio/transcriptions",
        form(model="whisper-1", response_format=fmt))
    assert (status, got_type, body) == (200, ctype, expected)


async def test_verbose_json_has_duration_and_segments(audio_server, session):
    audio_server.transcript("one two")
    status, _, body = await post_form(
        session, audio_server.base_url + "/audio/transcriptions",
        form(wav_bytes(1.25), filename="a.wav", content_type="audio/wav", model="whisper-1",
             response_format="verbose_json"))
    data = json.loads(body)
    assert status == 200 and data["task"] == "transcribe" and data["text"] == "one two"
    assert data["duration"] == 1.25 and data["segments"][0]["text"] == "one two"


@pytest.mark.parametrize("fields,filename,param", [
    ({}, "voice.ogg", "model"),
    ({"model": "whisper-1"}, "voice.opus", "file"),
    ({"model": "whisper-1"}, "voice", "file"),
    ({"model": "whisper-1", "response_format": "xml"}, "voice.ogg", "response_format"),
    ({"model": "whisper-1", "temperature": "3"}, "voice.ogg", "temperature"),
])
async def test_invalid_requests_get_openai_400_bodies(audio_server, session, fields, filename,
                                                      param):
    status, _, body = await post_form(session, audio_server.base_url + "/audio/transcriptions",
                                      form(filename=filename, **fields))
    error = json.loads(body)["error"]
    assert status == 400
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["param"]) == ("invalid_request_error", param)


async def test_unsupported_extension_message_lists_openai_formats(audio_server, session):
    _, _, body = await post_form(session, audio_server.base_url + "/audio/transcriptions",
                                 form(filename="x.opus", model="whisper-1"))
    message = json.loads(body)["error"]["message"]
    assert all(f"'{ext}'" in message for ext in ACCEPTED_EXTENSIONS)


async def test_not_multipart_is_refused(audio_server, session):
    async with session.post(audio_server.base_url + "/audio/transcriptions",
                            json={"model": "whisper-1"}) as resp:
        assert resp.status == 400
        assert "multipart/form-data" in (await resp.json())["error"]["message"]


async def test_scripted_errors_keep_headers_and_queue_order(audio_server, session):
    audio_server.error(429, "Rate limit reached", code="rate_limit_exceeded",
                       headers={"retry-after": "7"}).transcript("after")
    url = audio_server.base_url + "/audio/transcriptions"
    async with session.post(url, data=form(model="whisper-1")) as resp:
        assert resp.status == 429 and resp.headers["retry-after"] == "7"
        assert (await resp.json())["error"]["code"] == "rate_limit_exceeded"
    status, _, body = await post_form(session, url, form(model="whisper-1"))
    assert (status, json.loads(body)) == (200, {"text": "after"})


async def test_api_key_and_unknown_model(session):
    async with FakeAudioServer(api_key="sk-audio", models=["whisper-1"]) as server:
        url = server.base_url + "/audio/transcriptions"
        status, _, body = await post_form(session, url, form(model="whisper-1"))
        assert status == 401 and json.loads(body)["error"]["code"] == "invalid_api_key"
        async with session.post(url, data=form(model="nope"),
                                headers={"authorization": "Bearer sk-audio"}) as resp:
            assert resp.status == 404
            assert (await resp.json())["error"]["code"] == "model_not_found"


async def test_hang_and_slow(audio_server, session):
    url = audio_server.base_url + "/audio/transcriptions"
    audio_server.hang()
    with pytest.raises(asyncio.TimeoutError):
        async with asyncio.timeout(0.3):
            await post_form(session, url, form(model="whisper-1"))
    audio_server.slow(0.2).transcript("late")
    status, _, body = await post_form(session, url, form(model="whisper-1"))
    assert (status, json.loads(body)) == (200, {"text": "late"})


# ------------------------------------------------------------------ speech


@pytest.mark.parametrize("fmt,ctype,magic", [
    ("opus", "audio/ogg", b"OggS"), ("mp3", "audio/mpeg", b"ID3"), ("wav", "audio/wav", b"RIFF"),
    ("flac", "audio/flac", b"fLaC"), ("aac", "audio/aac", b"\xff\xf1"),
])
async def test_speech_returns_audio_in_the_format_asked(audio_server, session, fmt, ctype, magic):
    async with session.post(audio_server.base_url + "/audio/speech", json={
            "model": "tts-1", "input": "hello", "voice": "alloy",
            "response_format": fmt}) as resp:
        assert (resp.status, resp.content_type) == (200, ctype)
        assert (await resp.read()).startswith(magic)
    assert audio_server.requests[0].json["voice"] == "alloy"


async def test_speech_default_format_is_mp3_and_validates(audio_server, session):
    url = audio_server.base_url + "/audio/speech"
    async with session.post(url, json={"model": "tts-1", "input": "hi", "voice": "alloy"}) as r:
        assert r.content_type == "audio/mpeg"
    for body, param in [({"model": "tts-1", "input": "hi"}, "voice"),
                        ({"model": "tts-1", "input": "hi", "voice": "a", "speed": 9}, "speed"),
                        ({"model": "tts-1", "input": "hi", "voice": "a",
                          "response_format": "ogg"}, "response_format")]:
        async with session.post(url, json=body) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]["param"] == param


# ------------------------------------------------------------------ profiles


async def test_localai_profile(session):
    async with FakeAudioServer(profile="localai") as server:
        url = server.base_url + "/audio/transcriptions"
        server.transcript("ciao", language="it")
        _, _, body = await post_form(session, url, form(model="whisper-1"))
        data = json.loads(body)  # no response_format: the verbose shape
        assert data["text"] == "ciao" and data["segments"] and data["words"] == []
        server.transcript("ciao")
        _, _, body = await post_form(session, url, form(model="whisper-1",
                                                        response_format="json"))
        data = json.loads(body)
        assert data["segments"] == [] and "duration" in data and data["text"] == "ciao"
        server.transcript("ciao")
        status, ctype, body = await post_form(session, url, form(model="whisper-1",
                                                                 response_format="text"))
        assert (ctype, body) == ("text/plain", b"ciao\n")
        server.error(500, "rpc error: code = Unavailable")
        status, _, body = await post_form(session, url, form(model="whisper-1"))
        assert (status, json.loads(body)) == (500, {"error": {
            "message": "rpc error: code = Unavailable", "code": 500}})
        server.loading(retry_after=4)
        async with session.post(url, data=form(model="whisper-1")) as resp:
            assert resp.status == 503 and resp.headers["retry-after"] == "4"
            assert (await resp.json())["error"]["code"] == "model_loading"
        async with session.post(server.base_url + "/audio/speech", json={
                "model": "tts", "input": "hi", "voice": "v", "response_format": "pcm"}) as resp:
            assert (await resp.read()).startswith(b"RIFF")  # pcm stays WAV
            assert resp.headers["content-disposition"].startswith("attachment;")
        async with session.post(server.base_url + "/audio/speech", json={
                "model": "tts", "input": "hi", "voice": "v", "response_format": "opus"}) as resp:
            assert (await resp.read()).startswith(b"OggS")
            assert 'filename="tts.ogg"' in resp.headers["content-disposition"]


async def test_speaches_profile(session):
    async with FakeAudioServer(profile="speaches", models=["Systran/faster-whisper-small"]) as s:
        url = s.base_url + "/audio/transcriptions"
        status, _, body = await post_form(session, url, form(model="whisper-1"))
        assert status == 404
        assert json.loads(body)["detail"].startswith("Model 'whisper-1' is not installed")
        status, _, body = await post_form(session, url, form())
        assert status == 422 and json.loads(body)["detail"][0]["loc"] == ["body", "model"]
        async with session.post(s.base_url + "/audio/speech", json={
                "model": "Systran/faster-whisper-small", "input": "hi", "voice": "af",
                "response_format": "opus"}) as resp:
            assert resp.content_type == "audio/opus"


async def test_whispercpp_profile(session):
    async with FakeAudioServer(profile="whispercpp") as server:
        status, ctype, body = await post_form(
            session, server.root_url + "/v1/audio/transcriptions", form(model="whisper-1"))
        assert (status, ctype) == (404, "text/plain")
        assert body == b"File Not Found (/v1/audio/transcriptions)"
        inference = server.root_url + "/inference"
        status, _, body = await post_form(session, inference, form())  # Ogg, no --convert
        assert (status, json.loads(body)) == (400, {"error": "failed to read audio data"})
        server.transcript("from wav")
        status, ctype, body = await post_form(
            session, inference, form(wav_bytes(0.5), filename="a.wav", content_type="audio/wav",
                                     response_format="text"))
        assert (status, ctype, body) == (200, "text/html", b"from wav\n")
    async with FakeAudioServer(profile="whispercpp", request_path="/v1/audio",
                               inference_path="/transcriptions", convert=True) as server:
        assert server.base_url == server.root_url + "/v1"
        status, _, body = await post_form(session, server.base_url + "/audio/transcriptions",
                                          form())
        assert (status, json.loads(body)) == (200, {"text": "hello from the fake"})
        async with session.post(server.base_url + "/audio/speech", json={}) as resp:
            assert resp.status == 404
