"""The HTTP layer every model client shares: POST with explicit timeouts, SSE parsing.

Timeouts come from :class:`~bridge.config.schema.Timeouts`:

- ``connectSeconds``: TCP (and TLS) connect;
- ``firstTokenSeconds``: from sending the request until the first *content* arrives (a
  cold-loading local model hangs here).  Content is generated output: answer text, a
  refusal, a tool call, and also reasoning (a thinking model that streams its reasoning is
  working, not hung).  Bytes that only keep the connection open do not count: SSE
  comments (``: OPENROUTER PROCESSING``), ``ping`` events, ``response.created`` /
  ``response.in_progress``, Chat Completions deltas carrying only a role, whitespace
  before a JSON body;
- ``idleSeconds``: once content has started, the longest gap between two meaningful
  events (content or structural events such as ``content_block_stop``); keepalives do not
  reset it;
- ``totalSeconds``: the whole call.

The wire clients report what they saw through :meth:`HttpReply.content` and
:meth:`HttpReply.progress`; every other event leaves the deadlines where they are.

Every failure leaves this module as a :class:`~bridge.models.base.ModelError` classified by
:mod:`bridge.models.errors`.
"""

from __future__ import annotations

import asyncio
import codecs
import json
from collections.abc import AsyncIterator, Awaitable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp

from bridge.config.schema import ResolvedModel, Timeouts
from bridge.models.base import ErrorClass, ModelError
from bridge.models.catalog import BUILTIN_KEY_ENV
from bridge.models.errors import classify_exception, classify_http

T = TypeVar("T")

# Hosted APIs refuse every call without a key: fail fast with `auth` instead of a 401.
_KEYED_HOSTS = ("api.openai.com", "api.anthropic.com", "openrouter.ai")
_MAX_ERROR_BODY = 64 * 1024
_MAX_JSON_BODY = 32 * 1024 * 1024


# --------------------------------------------------------------------------- SSE


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched server-sent event (``event`` is "message" when none was named)."""

    event: str
    data: str
    id: str | None = None

    def json(self) -> Any:
        """The data parsed as JSON; ModelError(BAD_RESPONSE) if it is not JSON."""
        try:
            return json.loads(self.data)
        except ValueError:
            raise ModelError(
                ErrorClass.BAD_RESPONSE, f"malformed JSON in {self.event!r} event"
            ) from None


class SSEParser:
    """Incremental parser for ``text/event-stream`` (WHATWG rules).

    Lines end with CRLF, LF or CR; ``field: value`` lines build an event; several
    ``data:`` lines join with ``\\n``; lines starting with ``:`` are comments (keepalives);
    a blank line dispatches the event (nothing is dispatched when no data was set).
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None
        self._first = True

    def feed(self, chunk: bytes | str) -> list[SSEEvent]:
        """Add bytes; return the events completed by them."""
        text = self._decoder.decode(chunk) if isinstance(chunk, bytes) else chunk
        if self._first and text:
            self._first = False
            text = text.removeprefix("\ufeff")
        buf = self._pending + text
        events: list[SSEEvent] = []
        start = 0
        n = len(buf)
        while True:
            i = start
            while i < n and buf[i] not in "\r\n":
                i += 1
            if i >= n:
                break
            if buf[i] == "\r" and i + 1 >= n:
                break  # a CR at the end may be the first half of CRLF
            line = buf[start:i]
            start = i + 2 if buf[i] == "\r" and buf[i + 1] == "\n" else i + 1
            event = self._line(line)
            if event is not None:
                events.append(event)
        self._pending = buf[start:]
        return events

    def finish(self) -> list[SSEEvent]:
        """End of stream: a final event not followed by a blank line is still dispatched."""
        events = self.feed(self._decoder.decode(b"", final=True))
        if self._pending:
            line, self._pending = self._pending.rstrip("\r"), ""
            event = self._line(line)
            if event is not None:
                events.append(event)
        event = self._line("")
        if event is not None:
            events.append(event)
        return events

    def _line(self, line: str) -> SSEEvent | None:
        if not line:
            if not self._data:
                self._event = ""
                return None
            event = SSEEvent(self._event or "message", "\n".join(self._data), self._id)
            self._event, self._data = "", []
            return event
        if line.startswith(":"):
            return None
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value
        return None  # "retry" and unknown fields are ignored


# --------------------------------------------------------------------------- timeouts


class _Deadlines:
    """Applies firstToken/idle limits, each capped by what is left of the total."""

    def __init__(self, timeouts: Timeouts) -> None:
        self.t = timeouts
        self._loop = asyncio.get_running_loop()
        self.start = self._loop.time()
        self.total_deadline = self.start + timeouts.totalSeconds

    def now(self) -> float:
        return self._loop.time()

    async def wait(self, aw: Awaitable[T], limit: float, what: str) -> T:
        """Await ``aw`` for at most ``limit`` seconds from now."""
        return await self.wait_until(aw, self.now() + limit, what, limit)

    async def wait_until(self, aw: Awaitable[T], deadline: float, what: str,
                         configured: float) -> T:
        """Await ``aw`` until ``deadline`` (loop time) or the total deadline, if earlier.

        ``configured`` is the limit as set (for the message).
        """
        bound_by_total = self.total_deadline <= deadline
        cm = asyncio.timeout_at(min(deadline, self.total_deadline))
        try:
            async with cm:
                return await aw
        except TimeoutError:
            if not cm.expired():
                raise  # not ours: e.g. aiohttp's connect timeout, classified by the caller
            if bound_by_total:
                raise ModelError(
                    ErrorClass.TIMEOUT, f"total timeout ({self.t.totalSeconds:g}s)"
                ) from None
            raise ModelError(ErrorClass.TIMEOUT, f"{what} timeout ({configured:g}s)") from None

    @property
    def first_token_deadline(self) -> float:
        return self.start + self.t.firstTokenSeconds


# --------------------------------------------------------------------------- POST


def url_host(url: str) -> str:
    """The lower-case host of ``url``; "" when there is none or the URL is malformed."""
    try:
        return (urlsplit(url).hostname or "").lower()
    except ValueError:
        return ""


def check_url(url: str) -> None:
    """ModelError(UNREACHABLE) unless ``url`` is an http(s) URL with a host.

    A broken baseUrl is the provider's problem, not the request's: the router falls
    through to the next candidate.  The URL itself is never echoed (it may hold a key).
    """
    try:
        parts = urlsplit(url)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        ok = False
    if not ok:
        raise ModelError(ErrorClass.UNREACHABLE,
                         "invalid baseUrl (expected http(s)://host[:port]/path)")


def needs_api_key(model: ResolvedModel) -> bool:
    """True for providers that refuse every call without a key (hosted APIs)."""
    if model.provider in BUILTIN_KEY_ENV:
        return True
    host = url_host(model.base_url)
    return any(host == h or host.endswith("." + h) for h in _KEYED_HOSTS)


def api_key(model: ResolvedModel) -> str | None:
    """The key's value, or None; ModelError(AUTH) when a hosted provider has none."""
    key = model.api_key.get_secret_value() if model.api_key is not None else None
    if not key and needs_api_key(model):
        hint = BUILTIN_KEY_ENV.get(model.provider)
        raise ModelError(
            ErrorClass.AUTH,
            f"no API key configured for provider {model.provider!r}"
            + (f" (set {hint})" if hint else ""),
        )
    return key or None


def model_secrets(model: ResolvedModel) -> tuple[str, ...]:
    """What must never appear in an error about ``model``: its API key and the values of
    credential headers (``Authorization``, ``x-api-key``, ``api-key``, …) it sends."""
    from bridge.config.load import header_secrets

    key = model.api_key.get_secret_value() if model.api_key is not None else ""
    values = ([key] if key else []) + header_secrets(model.headers)
    return tuple(sorted(set(values), key=len, reverse=True))


class HttpReply:
    """A 2xx answer: either a JSON body (``.json``) or a stream of SSE events.

    While reading, the first-token deadline holds until :meth:`content` is called; after
    that the idle deadline runs from the last :meth:`content` or :meth:`progress`.
    """

    def __init__(self, resp: aiohttp.ClientResponse, deadlines: _Deadlines,
                 first: bytes, is_json: bool) -> None:
        self._resp = resp
        self._deadlines = deadlines
        self._first = first
        self.status = resp.status
        self.headers = resp.headers
        self.is_json = is_json
        self._content_seen = False
        self._last_progress = deadlines.now()

    def content(self) -> None:
        """The server produced content (text, refusal, tool call or reasoning)."""
        self._content_seen = True
        self._last_progress = self._deadlines.now()

    def progress(self) -> None:
        """A meaningful non-content event (resets the idle timer once content started)."""
        if self._content_seen:
            self._last_progress = self._deadlines.now()

    def _read_deadline(self) -> tuple[float, str, float]:
        t = self._deadlines.t
        if not self._content_seen:
            return self._deadlines.first_token_deadline, "first token", t.firstTokenSeconds
        return (self._last_progress + t.idleSeconds, "idle (gap between events)",
                t.idleSeconds)

    async def _chunks(self) -> AsyncIterator[bytes]:
        if self._first:
            yield self._first
        while True:
            deadline, what, configured = self._read_deadline()
            try:
                chunk = await self._deadlines.wait_until(
                    self._resp.content.readany(), deadline, what, configured)
            except ModelError:
                raise
            except Exception as exc:
                raise classify_exception(exc, phase="the response stream") from None
            if not chunk:
                return
            yield chunk

    async def json(self) -> Any:
        """The whole body parsed as JSON (ModelError(BAD_RESPONSE) if malformed).

        Whitespace before the body (a keepalive some servers send) is not content.
        """
        parts: list[bytes] = []
        size = 0
        async for chunk in self._chunks():
            size += len(chunk)
            if size > _MAX_JSON_BODY:
                raise ModelError(ErrorClass.BAD_RESPONSE, "response body too large")
            if chunk.strip():
                self.content()
            parts.append(chunk)
        try:
            return json.loads(b"".join(parts))
        except ValueError:
            raise ModelError(ErrorClass.BAD_RESPONSE, "malformed JSON body") from None

    async def events(self) -> AsyncIterator[SSEEvent]:
        """Every SSE event of the body, in order (comments never reach the caller)."""
        parser = SSEParser()
        async for chunk in self._chunks():
            for event in parser.feed(chunk):
                yield event
        for event in parser.finish():
            yield event


@asynccontextmanager
async def post(
    session: aiohttp.ClientSession,
    model: ResolvedModel,
    url: str,
    payload: Mapping[str, Any],
    headers: Mapping[str, str],
    *,
    secrets: tuple[str, ...] = (),
) -> AsyncIterator[HttpReply]:
    """POST ``payload`` as JSON and yield the 2xx reply; raise a classified ModelError."""
    check_url(url)
    deadlines = _Deadlines(model.timeouts)
    t = model.timeouts
    timeout = aiohttp.ClientTimeout(
        total=None, connect=t.connectSeconds, sock_connect=t.connectSeconds
    )
    body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
    all_headers = {"content-type": "application/json", **headers}
    try:
        resp = await deadlines.wait(
            session.post(url, data=body, headers=all_headers, timeout=timeout,
                         allow_redirects=False),
            t.firstTokenSeconds, "first token",
        )
    except ModelError:
        raise
    except Exception as exc:
        raise classify_exception(exc, phase="connect") from None
    try:
        if resp.status >= 300:
            raw = await _read_error_body(resp, deadlines)
            raise classify_http(resp.status, raw, resp.headers, secrets=secrets)
        try:
            first = await deadlines.wait_until(
                resp.content.readany(), deadlines.first_token_deadline, "first token",
                t.firstTokenSeconds,
            )
        except ModelError:
            raise
        except Exception as exc:
            raise classify_exception(exc, phase="the first token") from None
        ctype = resp.content_type or ""
        if ctype == "text/event-stream":
            is_json = False
        elif ctype.endswith("json"):
            is_json = True
        else:
            is_json = first.lstrip()[:1] in (b"{", b"[")
        yield HttpReply(resp, deadlines, first, is_json)
    finally:
        resp.release()


async def _read_error_body(resp: aiohttp.ClientResponse, deadlines: _Deadlines) -> bytes:
    parts: list[bytes] = []
    size = 0
    try:
        while size < _MAX_ERROR_BODY:
            chunk = await deadlines.wait(resp.content.readany(), deadlines.t.idleSeconds, "idle")
            if not chunk:
                break
            parts.append(chunk)
            size += len(chunk)
    except (ModelError, aiohttp.ClientError, OSError):
        pass  # the status alone still classifies the failure
    return b"".join(parts)[:_MAX_ERROR_BODY]


async def get_json(
    session: aiohttp.ClientSession,
    url: str,
    headers: Mapping[str, str],
    timeouts: Timeouts,
    *,
    secrets: tuple[str, ...] = (),
) -> Any:
    """GET a JSON document (used by ``palaver doctor``); raise a classified ModelError."""
    check_url(url)
    deadlines = _Deadlines(timeouts)
    timeout = aiohttp.ClientTimeout(
        total=None, connect=timeouts.connectSeconds, sock_connect=timeouts.connectSeconds
    )
    try:
        resp = await deadlines.wait(
            session.get(url, headers=dict(headers), timeout=timeout, allow_redirects=False),
            timeouts.firstTokenSeconds, "first byte",
        )
    except ModelError:
        raise
    except Exception as exc:
        raise classify_exception(exc, phase="connect") from None
    try:
        if resp.status >= 300:
            raw = await _read_error_body(resp, deadlines)
            raise classify_http(resp.status, raw, resp.headers, secrets=secrets)
        reply = HttpReply(resp, deadlines, b"", True)
        return await reply.json()
    finally:
        resp.release()


# --------------------------------------------------------------------------- clients


class ClientBase:
    """What the three wire clients share: the model, the session, keys and limits."""

    def __init__(self, model: ResolvedModel, session: aiohttp.ClientSession) -> None:
        self.model = model
        self.session = session

    def _secrets(self) -> tuple[str, ...]:
        return model_secrets(self.model)

    def _max_tokens(self, requested: int | None) -> int:
        return max(1, min(requested or self.model.max_tokens, self.model.max_tokens))

    def _post(self, path: str, payload: Mapping[str, Any], headers: Mapping[str, str]):
        return post(self.session, self.model, f"{self.model.base_url}{path}", payload,
                    headers, secrets=self._secrets())
