"""A fake speech-to-text and text-to-speech server on 127.0.0.1 (OpenAI's audio API).

Usage::

    from tests.fakes.audio_server import FakeAudioServer

    async with FakeAudioServer() as server:
        server.transcript("hello there")           # the next transcription answers this
        server.error(429, "slow down", headers={"retry-after": "3"})
        server.hang()
        ...  # point a provider's baseUrl at server.base_url (http://127.0.0.1:PORT/v1)
        rec = server.requests[0]
        rec.fields["model"], rec.file.filename, rec.file.content_type, rec.file.data

Endpoints (see shared/WIRE.md "OpenAI audio"):

- ``POST /v1/audio/transcriptions``: ``multipart/form-data``, parsed with aiohttp's own
  multipart reader: ``file`` (a filename whose extension OpenAI accepts, a content type,
  non-empty bytes), ``model``, optional ``language``, ``prompt``, ``response_format``
  (``json`` -> ``{"text"}``, ``text`` -> ``text/plain``, ``verbose_json`` -> ``{"task",
  "language", "duration", "text", "segments"}``, ``srt``, ``vtt``), ``temperature``.
  A request that is not multipart, lacks ``file`` or ``model``, has an unsupported file
  extension, an empty file, an unknown ``response_format`` or a ``temperature`` outside
  0..1 is refused with OpenAI's 400 body ``{"error": {"message", "type":
  "invalid_request_error", "param", "code"}}``.
- ``POST /v1/audio/speech``: JSON ``{model, input, voice, response_format?, speed?}``
  (``response_format`` mp3 (default) | opus | aac | flac | wav | pcm; ``speed`` 0.25..4)
  -> audio bytes in that format: ``opus`` is a real Ogg/Opus stream
  (:func:`tests.fakes.audio_bytes.ogg_opus_bytes`), ``wav`` a real WAV, the others
  bytes with their format's magic (ID3, ADTS, fLaC, raw PCM).

Scripted behaviours form a FIFO queue shared by both endpoints (each request that gets
past validation takes the next one); every method returns the server:

- ``transcript(text, *, language="english", duration=None, segments=None, delay=0.0)``;
- ``audio(data=None, *, content_type=None, delay=0.0)``: the next speech answer (None:
  generated for the requested format);
- ``error(status, message=None, *, type=None, code=None, param=None, body=None,
  headers=None)``: the profile's error body (``body`` verbatim when given);
- ``hang()``: accept the request and never answer (until the server closes);
- ``slow(delay)``: the next answer (scripted or default) waits ``delay`` seconds first;
- ``raw(status, body, content_type)``: arbitrary bytes.

With an empty queue transcriptions answer ``default_text`` (``"hello from the fake"``) and
speech answers generated audio.  ``FakeAudioServer(api_key="k")`` answers 401 unless the
request carries ``Authorization: Bearer k``.  ``server.models`` (when not None) lists the
only model ids served; another id gets the profile's "model not found" 404.

Profiles (real servers' quirks; ``FakeAudioServer(profile=...)``, ``PROFILES``), each
checked against the server's source:

- ``"openai"`` (default): as above.
- ``"localai"`` (mudler/LocalAI ``core/http/endpoints/openai/transcription.go``,
  ``core/http/app.go``, ``pkg/utils/ffmpeg.go``): no ``response_format`` -> the verbose
  shape with ``segments`` and ``words`` ("backwards compatibility"); ``json`` -> ``{"text",
  "language", "duration", "words": [], "segments": []}``; ``text`` ->
  ``text/plain; charset=UTF-8``; errors ``{"error": {"message", "code": <the status as a
  number>}}`` with no ``type``; ``loading()`` -> 503 ``{"error": {"message", "code":
  "model_loading", "type": "model_loading"}, "loading": {…}}`` with ``Retry-After``;
  speech: ``pcm`` or an unknown format -> WAV bytes (its converter only knows opus ->
  .ogg, mp3/aac/flac, else the .wav as generated), sent as an attachment
  (``Content-Disposition``).
- ``"speaches"`` (speaches-ai/speaches, FastAPI): errors ``{"detail": "…"}``
  (``HTTPException``), an unknown model -> 404 "Model 'x' is not installed locally. …",
  validation failures -> 422 ``{"detail": [{"loc", "msg", "type"}]}``; speech ``opus``
  served as ``audio/opus``.
- ``"whispercpp"`` (ggml-org/whisper.cpp ``examples/server/server.cpp``): transcription at
  ``{request_path}{inference_path}`` (default ``/inference``; ``whisper-server
  --request-path /v1/audio --inference-path /transcriptions`` gives OpenAI's path, set with
  ``FakeAudioServer(profile="whispercpp", request_path="/v1/audio",
  inference_path="/transcriptions")``); ``model`` is ignored; without ``--convert``
  (``convert=False``, the default) only WAV decodes, anything else -> 400
  ``{"error": "failed to read audio data"}`` (a string, not an object); ``text`` ->
  ``text/html; charset=utf-8``; no ``file`` -> 400 ``{"error": "no 'file' field in the
  request"}``; any other path -> 404 ``text/plain`` "File Not Found (<path>)"; no speech
  endpoint.
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from tests.fakes.audio_bytes import ogg_opus_bytes, ogg_opus_duration, wav_bytes, wav_duration
from tests.fakes.loopback import LoopbackServer

__all__ = ["ACCEPTED_EXTENSIONS", "PROFILES", "FakeAudioServer", "RecordedAudioRequest",
           "UploadedFile"]

# OpenAI's list, in the order its error message gives it.
ACCEPTED_EXTENSIONS = ("flac", "m4a", "mp3", "mp4", "mpeg", "mpga", "oga", "ogg", "wav", "webm")
TRANSCRIPT_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
SPEECH_FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
PROFILES = ("openai", "localai", "speaches", "whispercpp")

_SPEECH_TYPES = {"mp3": "audio/mpeg", "opus": "audio/ogg", "aac": "audio/aac",
                 "flac": "audio/flac", "wav": "audio/wav", "pcm": "audio/pcm"}
_ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error",
                403: "invalid_request_error", 404: "invalid_request_error",
                429: "requests", 500: "server_error", 503: "server_error"}


@dataclass(frozen=True)
class UploadedFile:
    """The ``file`` part of a transcription request."""

    filename: str | None
    content_type: str | None
    data: bytes


@dataclass
class RecordedAudioRequest:
    """One request the fake received (``fields``: the text parts of a multipart form)."""

    path: str
    headers: dict[str, str]
    content_type: str
    fields: dict[str, str] = field(default_factory=dict)
    file: UploadedFile | None = None
    json: Any = None

    @property
    def endpoint(self) -> str:
        return "speech" if self.path.endswith("/speech") else "transcriptions"


@dataclass(frozen=True)
class _Transcript:
    text: str
    language: str = "english"
    duration: float | None = None
    segments: list[dict[str, Any]] | None = None
    delay: float = 0.0


@dataclass(frozen=True)
class _Audio:
    data: bytes | None = None
    content_type: str | None = None
    delay: float = 0.0


@dataclass(frozen=True)
class _Error:
    status: int
    message: str | None
    type: str | None = None
    code: str | None = None
    param: str | None = None
    body: Any = None
    headers: dict[str, str] | None = None


@dataclass(frozen=True)
class _Raw:
    status: int
    body: bytes
    content_type: str


class _Hang:
    pass


class _Refused(Exception):  # noqa: N818 - control flow inside the fake
    def __init__(self, error: _Error) -> None:
        self.error = error


class FakeAudioServer(LoopbackServer):
    """See the module docstring."""

    def __init__(self, *, profile: str = "openai", api_key: str | None = None,
                 models: list[str] | None = None, request_path: str = "",
                 inference_path: str = "/inference", convert: bool = False) -> None:
        if profile not in PROFILES:
            raise ValueError(f"unknown profile {profile!r} (one of {', '.join(PROFILES)})")
        self.profile = profile
        self.api_key = api_key
        self.models = models
        self.request_path = request_path
        self.inference_path = inference_path
        self.convert = convert
        self.default_text = "hello from the fake"
        self.requests: list[RecordedAudioRequest] = []
        self._queue: deque[Any] = deque()
        self._next_delay = 0.0
        super().__init__()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> FakeAudioServer:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        if self.profile == "whispercpp":
            app.router.add_post(self.request_path + self.inference_path, self._transcriptions)
        else:
            app.router.add_post("/v1/audio/transcriptions", self._transcriptions)
            app.router.add_post("/v1/audio/speech", self._speech)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        return await self._serve(app)

    @property
    def base_url(self) -> str:
        """What a provider's ``baseUrl`` is set to (the client appends ``/audio/...``)."""
        if self.profile == "whispercpp":
            return self.root_url + self.request_path.removesuffix("/audio")
        return self.root_url + "/v1"

    @property
    def pending(self) -> int:
        return len(self._queue)

    # ------------------------------------------------------------------ scripting

    def transcript(self, text: str, *, language: str = "english", duration: float | None = None,
                   segments: list[dict[str, Any]] | None = None,
                   delay: float = 0.0) -> FakeAudioServer:
        self._queue.append(_Transcript(text, language, duration, segments, delay))
        return self

    def audio(self, data: bytes | None = None, *, content_type: str | None = None,
              delay: float = 0.0) -> FakeAudioServer:
        self._queue.append(_Audio(data, content_type, delay))
        return self

    def error(self, status: int, message: str | None = None, *, type: str | None = None,
              code: str | None = None, param: str | None = None, body: Any = None,
              headers: dict[str, str] | None = None) -> FakeAudioServer:
        self._queue.append(_Error(status, message, type, code, param, body, headers))
        return self

    def loading(self, retry_after: int = 5) -> FakeAudioServer:
        """LocalAI's 503 while a model loads (any profile may script it)."""
        body = {"error": {"message": "model is loading", "code": "model_loading",
                          "type": "model_loading"},
                "loading": {"stage": "loading", "progress": 0.4}}
        return self.error(503, body=body, headers={"retry-after": str(retry_after)})

    def hang(self) -> FakeAudioServer:
        self._queue.append(_Hang())
        return self

    def slow(self, delay: float) -> FakeAudioServer:
        """The next answer (scripted or default) starts only after ``delay`` seconds."""
        self._next_delay = delay
        return self

    def raw(self, status: int, body: bytes | str,
            content_type: str = "application/json") -> FakeAudioServer:
        self._queue.append(_Raw(status, body.encode() if isinstance(body, str) else body,
                                content_type))
        return self

    # ------------------------------------------------------------------ errors

    def _error_response(self, err: _Error) -> web.Response:
        headers = dict(err.headers or {})
        if err.body is not None:
            if isinstance(err.body, (dict, list)):
                return web.json_response(err.body, status=err.status, headers=headers)
            raw = err.body.encode() if isinstance(err.body, str) else err.body
            return web.Response(status=err.status, body=raw, headers=headers,
                                content_type="application/json")
        message = err.message or "error"
        if self.profile == "localai":
            body: Any = {"error": {"message": message, "code": err.status}}
        elif self.profile == "speaches":
            body = {"detail": message}
        elif self.profile == "whispercpp":
            body = {"error": message}
        else:
            body = {"error": {"message": message,
                              "type": err.type or _ERROR_TYPES.get(err.status, "server_error"),
                              "param": err.param, "code": err.code}}
        return web.json_response(body, status=err.status, headers=headers)

    def _invalid(self, message: str, param: str | None) -> _Refused:
        if self.profile == "speaches":
            return _Refused(_Error(422, None, body={"detail": [
                {"loc": ["body", param or "body"], "msg": message, "type": "value_error"}]}))
        return _Refused(_Error(400, message, param=param))

    def _check_model(self, model: str) -> None:
        if self.models is None or model in self.models:
            return
        if self.profile == "speaches":
            raise _Refused(_Error(404, f"Model '{model}' is not installed locally. You can "
                                       "download the model using `POST /v1/models`"))
        if self.profile == "localai":
            raise _Refused(_Error(404, f"model {model} not found"))
        raise _Refused(_Error(404, f"The model `{model}` does not exist or you do not have "
                                   "access to it.", code="model_not_found"))

    def _check_key(self, request: web.Request) -> None:
        if self.api_key is None:
            return
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            raise _Refused(_Error(401, "Incorrect API key provided.", code="invalid_api_key"))

    # ------------------------------------------------------------------ handlers

    async def _not_found(self, request: web.Request) -> web.Response:
        if self.profile == "whispercpp":
            return web.Response(status=404, text=f"File Not Found ({request.path})")
        if self.profile == "speaches":
            return web.json_response({"detail": "Not Found"}, status=404)
        return self._error_response(_Error(404, f"Invalid URL (POST {request.path})"))

    async def _transcriptions(self, request: web.Request) -> web.StreamResponse:
        rec = RecordedAudioRequest(request.path, dict(request.headers),
                                   request.headers.get("content-type", ""))
        self.requests.append(rec)
        try:
            self._check_key(request)
            await self._read_form(request, rec)
            fmt = self._validate_transcription(rec)
        except _Refused as refused:
            return self._error_response(refused.error)
        behaviour = await self._next(rec)
        if isinstance(behaviour, web.StreamResponse):
            return behaviour
        if isinstance(behaviour, _Audio) or behaviour is None:
            behaviour = _Transcript(self.default_text)
        assert isinstance(behaviour, _Transcript)
        return self._transcription_body(rec, behaviour, fmt)

    async def _read_form(self, request: web.Request, rec: RecordedAudioRequest) -> None:
        if not rec.content_type.startswith("multipart/form-data"):
            if self.profile == "whispercpp":
                raise _Refused(_Error(400, "no 'file' field in the request"))
            raise self._invalid("Invalid Content-Type header: expected multipart/form-data",
                                None)
        reader = await request.multipart()
        while True:
            part = await reader.next()
            if part is None:
                break
            if not isinstance(part, aiohttp.BodyPartReader):
                continue
            if part.name == "file":
                data = bytes(await part.read())
                rec.file = UploadedFile(part.filename,
                                        part.headers.get("content-type"), data)
            elif part.name:
                rec.fields[part.name] = await part.text()

    def _validate_transcription(self, rec: RecordedAudioRequest) -> str | None:
        """The response_format asked for (None: not given); raise _Refused when invalid."""
        if rec.file is None:
            if self.profile == "whispercpp":
                raise _Refused(_Error(400, "no 'file' field in the request"))
            raise self._invalid("you must provide a file", "file")
        if self.profile == "whispercpp":
            if not self.convert and not rec.file.data.startswith(b"RIFF"):
                raise _Refused(_Error(400, "failed to read audio data"))
            return rec.fields.get("response_format", "json")
        if "model" not in rec.fields or not rec.fields["model"]:
            raise self._invalid("you must provide a model parameter", "model")
        self._check_model(rec.fields["model"])
        name = rec.file.filename or ""
        ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
        if ext not in ACCEPTED_EXTENSIONS:
            raise self._invalid(
                f"Invalid file format. Supported formats: {list(ACCEPTED_EXTENSIONS)}", "file")
        if not rec.file.data:
            raise self._invalid("The audio file could not be decoded or its format is not "
                                "supported.", "file")
        fmt = rec.fields.get("response_format")
        if fmt is not None and fmt not in TRANSCRIPT_FORMATS:
            raise self._invalid(f"'{fmt}' is not one of {list(TRANSCRIPT_FORMATS)} - "
                                "'response_format'", "response_format")
        temperature = rec.fields.get("temperature")
        if temperature is not None:
            try:
                ok = 0.0 <= float(temperature) <= 1.0
            except ValueError:
                ok = False
            if not ok:
                raise self._invalid(f"Invalid 'temperature': {temperature!r}", "temperature")
        return fmt

    def _duration(self, rec: RecordedAudioRequest, t: _Transcript) -> float:
        if t.duration is not None:
            return t.duration
        data = rec.file.data if rec.file else b""
        try:
            if data.startswith(b"RIFF"):
                return round(wav_duration(data), 3)
            if data.startswith(b"OggS"):
                return round(ogg_opus_duration(data), 3)
        except (ValueError, struct.error, EOFError):
            pass
        return 1.0

    def _transcription_body(self, rec: RecordedAudioRequest, t: _Transcript,
                            fmt: str | None) -> web.Response:
        duration = self._duration(rec, t)
        segments = t.segments if t.segments is not None else [
            {"id": 0, "seek": 0, "start": 0.0, "end": duration, "text": t.text, "tokens": [],
             "temperature": 0.0, "avg_logprob": -0.2, "compression_ratio": 1.0,
             "no_speech_prob": 0.01}]
        if fmt == "text":
            ctype = {"localai": "text/plain; charset=UTF-8",
                     "whispercpp": "text/html; charset=utf-8"}.get(self.profile,
                                                                   "text/plain; charset=utf-8")
            return web.Response(body=(t.text + "\n").encode(), headers={"content-type": ctype})
        if fmt in ("srt", "vtt"):
            stamp = _stamp(duration, "," if fmt == "srt" else ".")
            start = _stamp(0.0, "," if fmt == "srt" else ".")
            body = (f"1\n{start} --> {stamp}\n{t.text}\n\n" if fmt == "srt"
                    else f"WEBVTT\n\n{start} --> {stamp}\n{t.text}\n\n")
            ctype = "application/x-subrip" if fmt == "srt" else "text/vtt"
            return web.Response(body=body.encode(), headers={"content-type": ctype})
        if self.profile == "localai":
            verbose = fmt in (None, "verbose_json")
            return web.json_response({
                "segments": segments if verbose else [], "words": [], "text": t.text,
                "language": t.language, "duration": duration})
        if fmt == "verbose_json":
            return web.json_response({"task": "transcribe", "language": t.language,
                                      "duration": duration, "text": t.text,
                                      "segments": segments})
        return web.json_response({"text": t.text})

    async def _speech(self, request: web.Request) -> web.StreamResponse:
        rec = RecordedAudioRequest(request.path, dict(request.headers),
                                   request.headers.get("content-type", ""))
        self.requests.append(rec)
        try:
            self._check_key(request)
            try:
                rec.json = await request.json()
            except ValueError:
                raise self._invalid("We could not parse the JSON body of your request.",
                                    None) from None
            fmt = self._validate_speech(rec.json)
        except _Refused as refused:
            return self._error_response(refused.error)
        behaviour = await self._next(rec)
        if isinstance(behaviour, web.StreamResponse):
            return behaviour
        audio = behaviour if isinstance(behaviour, _Audio) else _Audio()
        return self._speech_body(fmt, audio)

    def _validate_speech(self, body: Any) -> str:
        if not isinstance(body, dict):
            raise self._invalid("the body must be a JSON object", None)
        for name in ("model", "input", "voice"):
            if not isinstance(body.get(name), str) or not body[name]:
                raise self._invalid(f"Missing required parameter: '{name}'.", name)
        self._check_model(body["model"])
        if len(body["input"]) > 4096:
            raise self._invalid("String should have at most 4096 characters", "input")
        fmt = body.get("response_format", "mp3")
        if self.profile != "localai" and fmt not in SPEECH_FORMATS:
            raise self._invalid(f"'{fmt}' is not one of {list(SPEECH_FORMATS)} - "
                                "'response_format'", "response_format")
        speed = body.get("speed", 1.0)
        if not isinstance(speed, int | float) or not 0.25 <= speed <= 4.0:
            raise self._invalid("Invalid 'speed': expected a number from 0.25 to 4.0", "speed")
        return str(fmt)

    def _speech_body(self, fmt: str, audio: _Audio) -> web.Response:
        headers: dict[str, str] = {}
        if self.profile == "localai" and fmt not in ("opus", "mp3", "aac", "flac"):
            fmt = "wav"  # pkg/utils/ffmpeg.go AudioConvert: anything else stays .wav
        if self.profile == "localai":
            ext = "ogg" if fmt == "opus" else fmt
            headers["content-disposition"] = f'attachment; filename="tts.{ext}"'
        data = audio.data if audio.data is not None else _generated(fmt)
        ctype = audio.content_type or (
            "audio/opus" if fmt == "opus" and self.profile == "speaches"
            else _SPEECH_TYPES[fmt])
        headers["content-type"] = ctype
        return web.Response(body=data, headers=headers)

    async def _next(self, rec: RecordedAudioRequest) -> Any:
        """Wait for slow()/delays, then the scripted behaviour (None: the default), or a
        finished response for errors, raw answers and hangs."""
        behaviour = self._queue.popleft() if self._queue else None
        delay = self._next_delay + getattr(behaviour, "delay", 0.0)
        self._next_delay = 0.0
        if delay:
            await self._sleep(delay)
        if isinstance(behaviour, _Hang):
            await self._closing.wait()
            return web.Response(status=503)
        if isinstance(behaviour, _Error):
            return self._error_response(behaviour)
        if isinstance(behaviour, _Raw):
            return web.Response(status=behaviour.status, body=behaviour.body,
                                headers={"content-type": behaviour.content_type})
        return behaviour

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._closing.wait(), seconds)
        except TimeoutError:
            pass


def _stamp(seconds: float, sep: str) -> str:
    ms = int(round(seconds * 1000))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def _generated(fmt: str) -> bytes:
    """Audio of about a second in ``fmt`` (real for opus and wav; magic bytes otherwise)."""
    if fmt == "opus":
        return ogg_opus_bytes(1.0)
    if fmt == "wav":
        return wav_bytes(1.0, rate=24000)
    if fmt == "pcm":
        return b"\x00\x00" * 24000
    if fmt == "mp3":
        return b"ID3\x04\x00\x00\x00\x00\x00\x00" + b"\xff\xfb\x90\x64" + b"\x00" * 400
    if fmt == "aac":
        return b"\xff\xf1\x50\x80\x02\x1f\xfc" + b"\x00" * 400
    if fmt == "flac":
        return b"fLaC" + b"\x00" * 400
    return json.dumps({"unknown": fmt}).encode()
