"""OpenAI's audio API on the wire: one transcription or one speech call to one model.

``POST {baseUrl}/audio/transcriptions`` is ``multipart/form-data`` built by
:class:`aiohttp.FormData` (``file`` with a filename whose extension names the bytes,
``model``, ``response_format=json``, optional ``language`` / ``prompt``); the answer is
``{"text": …}`` JSON, or plain text from servers that send it whatever was asked
(whisper.cpp's ``text/html``, LocalAI's verbose shape with ``segments`` also carries
``text``).  ``POST {baseUrl}/audio/speech`` is JSON ``{model, input, voice,
response_format, speed?}`` and answers audio bytes.

Timeouts are the model's own (:class:`~bridge.config.schema.Timeouts`): ``connectSeconds``
to connect, ``firstTokenSeconds`` until the answer's headers (a transcription server
answers when it is done), ``idleSeconds`` between chunks of the body, ``totalSeconds``
for the whole call.  Every failure leaves as a :class:`~bridge.models.base.ModelError`
classified by :mod:`bridge.models.errors` (HTTP status and body, transport exceptions),
so the router decides on a transcription exactly as on a chat call.  API keys and
credential headers never appear in an error.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp

from bridge.config.resolve import ResolvedModel
from bridge.models.base import ErrorClass, ModelError
from bridge.models.errors import classify_exception, classify_http
from bridge.models.http import api_key, check_url, model_secrets
from bridge.voice.audio import is_ogg_opus, sniff, upload_name

T = TypeVar("T")

# What an OpenAI-style audio server is: any api but Anthropic's (which has no audio API).
AUDIO_APIS = frozenset({"openai-responses", "openai-completions"})
MAX_TRANSCRIPT_BYTES = 1024 * 1024
MAX_SPEECH_BYTES = 25 * 1024 * 1024
_MAX_ERROR_BODY = 64 * 1024


@dataclass(frozen=True, slots=True)
class AudioInput:
    """Audio to transcribe: the bytes and what the platform said they are."""

    data: bytes
    mime: str | None = None
    duration_s: float | None = None


@dataclass(frozen=True, slots=True)
class SpeechAudio:
    """What a speech server returned: the bytes, their container and mime type."""

    data: bytes
    container: str | None  # ogg, wav, mp3, flac, mp4, webm; None when unknown
    content_type: str

    @property
    def ogg_opus(self) -> bool:
        """True when the bytes are OGG/Opus (sendable as a voice message as they are)."""
        return is_ogg_opus(self.data)


def _check_api(model: ResolvedModel) -> None:
    if model.api not in AUDIO_APIS:
        # Not the request's fault: another candidate may serve audio.
        raise ModelError(ErrorClass.NOT_FOUND,
                         f"api {model.api!r} has no audio endpoints (use an OpenAI-compatible "
                         "provider)")


async def transcribe_once(session: aiohttp.ClientSession, model: ResolvedModel,
                          audio: AudioInput, *, language: str | None = None,
                          prompt: str | None = None) -> str:
    """The transcript of ``audio`` by ``model`` (stripped; "" for silence)."""
    _check_api(model)
    if not audio.data:
        raise ModelError(ErrorClass.BAD_REQUEST, "no audio bytes to transcribe")
    filename, content_type = upload_name(audio.data, audio.mime)
    form = aiohttp.FormData()
    form.add_field("file", audio.data, filename=filename, content_type=content_type)
    form.add_field("model", model.model_id)
    form.add_field("response_format", "json")
    if language:
        form.add_field("language", language)
    if prompt:
        form.add_field("prompt", prompt)
    status, ctype, body = await _post(session, model, "/audio/transcriptions", data=form,
                                      limit=MAX_TRANSCRIPT_BYTES)
    return _transcript_text(ctype, body)


def _transcript_text(ctype: str, body: bytes) -> str:
    text = body.decode("utf-8", "replace")
    if ctype.endswith("json") or text.lstrip()[:1] == "{":
        try:
            data = json.loads(text)
        except ValueError:
            raise ModelError(ErrorClass.BAD_RESPONSE, "malformed JSON transcript") from None
        value = data.get("text") if isinstance(data, dict) else None
        if not isinstance(value, str):
            raise ModelError(ErrorClass.BAD_RESPONSE, "transcript JSON without a \"text\" string")
        return value.strip()
    return text.strip()  # text/plain (or whisper.cpp's text/html) when asked for json


async def speak_once(session: aiohttp.ClientSession, model: ResolvedModel, text: str, *,
                     voice: str, response_format: str = "opus",
                     speed: float | None = None) -> SpeechAudio:
    """``text`` spoken by ``model`` in ``voice``; raises ModelError (BAD_RESPONSE when the
    answer is not audio: a JSON or HTML body with a 200 status, or nothing)."""
    _check_api(model)
    payload: dict[str, Any] = {"model": model.model_id, "input": text, "voice": voice,
                               "response_format": response_format}
    if speed is not None:
        payload["speed"] = speed
    status, ctype, body = await _post(
        session, model, "/audio/speech",
        data=json.dumps(payload, ensure_ascii=False).encode("utf-8"),
        headers={"content-type": "application/json"}, limit=MAX_SPEECH_BYTES)
    container = sniff(body)
    if not body or (container is None and (ctype.endswith("json") or ctype.startswith("text/"))):
        raise ModelError(ErrorClass.BAD_RESPONSE,
                         f"the speech server answered {ctype or 'no content type'}, not audio")
    return SpeechAudio(body, container, ctype or "application/octet-stream")


async def _post(session: aiohttp.ClientSession, model: ResolvedModel, path: str, *,
                data: Any, limit: int, headers: dict[str, str] | None = None,
                ) -> tuple[int, str, bytes]:
    """POST to ``{baseUrl}{path}``; (status, content type, body) of a 2xx answer."""
    url = f"{model.base_url}{path}"
    check_url(url)
    secrets = model_secrets(model)
    t = model.timeouts
    all_headers = dict(model.headers)
    key = api_key(model)
    if key:
        all_headers["authorization"] = f"Bearer {key}"
    all_headers.update(headers or {})
    timeout = aiohttp.ClientTimeout(total=None, connect=t.connectSeconds,
                                    sock_connect=t.connectSeconds)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + t.totalSeconds

    async def within(aw: Awaitable[T], seconds: float, what: str) -> T:
        bound = min(loop.time() + seconds, deadline)
        total = bound == deadline
        try:
            async with asyncio.timeout_at(bound):
                return await aw
        except TimeoutError:
            if total:
                raise ModelError(ErrorClass.TIMEOUT,
                                 f"total timeout ({t.totalSeconds:g}s)") from None
            raise ModelError(ErrorClass.TIMEOUT, f"{what} timeout ({seconds:g}s)") from None

    try:
        resp = await within(session.post(url, data=data, headers=all_headers, timeout=timeout,
                                         allow_redirects=False),
                            t.firstTokenSeconds, "first token")
        try:
            if resp.status >= 300:
                raw = await _read(resp, _MAX_ERROR_BODY, within, t.idleSeconds, clip=True)
                raise classify_http(resp.status, raw, resp.headers, secrets=secrets)
            body = await _read(resp, limit, within, t.idleSeconds)
            return resp.status, (resp.content_type or "").lower(), body
        finally:
            resp.release()
    except ModelError:
        raise
    except Exception as exc:
        raise classify_exception(exc, phase="the audio call") from None


async def _read(resp: aiohttp.ClientResponse, limit: int, within: Any, idle: float, *,
                clip: bool = False) -> bytes:
    parts: list[bytes] = []
    size = 0
    try:
        while True:
            chunk = await within(resp.content.readany(), idle, "idle (gap between chunks)")
            if not chunk:
                break
            size += len(chunk)
            if size > limit:
                if clip:
                    break
                raise ModelError(ErrorClass.BAD_RESPONSE,
                                 f"response body larger than {limit // 1024 // 1024} MB")
            parts.append(chunk)
    except (ModelError, aiohttp.ClientError, OSError):
        if not clip:
            raise
    return b"".join(parts)
