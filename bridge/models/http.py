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
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp

from bridge.config.schema import ResolvedModel, Timeouts
from bridge.lru import LRU
from bridge.models.base import (
    Completion,
    ErrorClass,
    ImagePart,
    ModelError,
    ModelRequest,
    Part,
    StreamListener,
    TextPart,
    Turn,
    Usage,
)
from bridge.models.catalog import BUILTIN_KEY_ENV
from bridge.models.errors import classify_exception, classify_http
from bridge.models.reasoning import ReasoningFilter
from bridge.secrets import header_secrets

T = TypeVar("T")
log = logging.getLogger("bridge.models.http")

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


# A line ending: CRLF, LF or a lone CR.
_EOL = re.compile(r"\r\n?|\n")


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
        for eol in _EOL.finditer(buf):
            if eol.end() >= n and eol.group() == "\r":
                break  # a CR at the end may be the first half of CRLF
            line = buf[start:eol.start()]
            start = eol.end()
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
            chunk = await _classified(
                self._deadlines.wait_until(self._resp.content.readany(), deadline, what,
                                           configured),
                "the response stream")
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
    body = encode_json(payload)
    all_headers = {"content-type": "application/json", **headers}
    resp = await _send(session, "POST", url, deadlines, "first token", secrets,
                       data=body, headers=all_headers)
    try:
        first = await _classified(
            deadlines.wait_until(resp.content.readany(), deadlines.first_token_deadline,
                                 "first token", t.firstTokenSeconds),
            "the first token")
        ctype = resp.content_type or ""
        if ctype == "text/event-stream":
            is_json = False
        elif ctype.endswith("json"):
            is_json = True
        else:
            is_json = first.lstrip()[:1] in (b"{", b"[")
        yield HttpReply(resp, deadlines, first, is_json)
    except asyncio.CancelledError:
        # The turn was cancelled (/stop, shutdown): close the connection outright so the
        # server sees it drop and stops generating, rather than relying on release()
        # closing an unfinished stream.
        resp.close()
        raise
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
    resp = await _send(session, "GET", url, deadlines, "first byte", secrets,
                       headers=dict(headers))
    try:
        reply = HttpReply(resp, deadlines, b"", True)
        return await reply.json()
    finally:
        resp.release()


async def _send(session: aiohttp.ClientSession, method: str, url: str,
                deadlines: _Deadlines, what: str, secrets: tuple[str, ...],
                **kwargs: Any) -> aiohttp.ClientResponse:
    """Send the request and return its 2xx response (the caller releases it).

    The response must start within ``firstTokenSeconds`` (named ``what``); a non-2xx
    answer is released and raised as a ModelError classified from its status and body.
    """
    t = deadlines.t
    timeout = aiohttp.ClientTimeout(
        total=None, connect=t.connectSeconds, sock_connect=t.connectSeconds
    )
    resp = await _classified(
        deadlines.wait(
            session.request(method, url, timeout=timeout, allow_redirects=False, **kwargs),
            t.firstTokenSeconds, what,
        ),
        "connect")
    if resp.status >= 300:
        try:
            raw = await _read_error_body(resp, deadlines)
        finally:
            resp.release()
        raise classify_http(resp.status, raw, resp.headers, secrets=secrets)
    return resp


async def _classified(aw: Awaitable[T], phase: str) -> T:
    """Await ``aw``; a failure that is not a ModelError yet is classified (``phase`` names
    where it happened, for the message)."""
    try:
        return await aw
    except ModelError:
        raise
    except Exception as exc:
        raise classify_exception(exc, phase=phase) from None


# --------------------------------------------------------------------------- JSON


def token_count(value: Any) -> int:
    """A token count from a usage object on the wire: a non-negative int, else 0 (absent,
    null, a string, junk)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    return max(0, int(value))


def openai_usage(raw: Any, inputs: str, outputs: str) -> Usage:
    """An OpenAI-style usage object: ``<inputs>`` tokens with ``<inputs>_details.
    cached_tokens`` among them, ``<outputs>`` tokens with ``<outputs>_details.
    reasoning_tokens`` among them (Responses: input/output_tokens; Chat Completions:
    prompt/completion_tokens).  Missing or malformed: zeros."""
    if not isinstance(raw, dict):
        return Usage()
    in_details = raw.get(f"{inputs}_details")
    out_details = raw.get(f"{outputs}_details")
    return Usage(
        input_tokens=token_count(raw.get(inputs)),
        output_tokens=token_count(raw.get(outputs)),
        reasoning_tokens=token_count(out_details.get("reasoning_tokens"))
        if isinstance(out_details, dict) else 0,
        cached_tokens=token_count(in_details.get("cached_tokens"))
        if isinstance(in_details, dict) else 0,
    )


class WireJSON(dict):
    """A wire-format JSON object that carries its own encoding (:attr:`encoded`, UTF-8),
    so that :func:`encode_json` encodes it once however many requests it goes into.
    Read-only by convention (the clients share one per history turn): a change would not
    reach :attr:`encoded`."""

    __slots__ = ("encoded",)

    def __init__(self, value: Mapping[str, Any]) -> None:
        super().__init__(value)
        self.encoded = json.dumps(value, ensure_ascii=False).encode("utf-8")


def encode_json(value: Any) -> bytes:
    """``json.dumps(value, ensure_ascii=False).encode("utf-8")``, reusing the encoding of
    every :class:`WireJSON` held in a list (at any depth of lists and str-keyed objects)."""
    if isinstance(value, WireJSON):
        return value.encoded
    if isinstance(value, list) and any(isinstance(v, WireJSON) for v in value):
        return b"[" + b", ".join(map(encode_json, value)) + b"]"
    if (isinstance(value, dict) and all(isinstance(k, str) for k in value)
            and any(isinstance(v, (list, dict)) for v in value.values())):
        return b"{" + b", ".join(encode_json(k) + b": " + encode_json(v)
                                 for k, v in value.items()) + b"}"
    return json.dumps(value, ensure_ascii=False).encode("utf-8")


# Converted history turns kept per client class (see ClientBase.wire_turns).
WIRE_CACHE_TURNS = 4096
WIRE_CACHE_BYTES = 4_000_000


class _WireTurnCache:
    """Text-only turns in one API's wire form, an LRU keyed by the Turn object's ``id``.

    Each entry holds its Turn, so the ``id`` cannot be reused while the entry lives (Turn
    has ``__slots__`` and no weakref); the identity check guards the rest.  Turns with
    images are converted every time: hashing or keeping their bytes costs more than it
    saves, and the core builds them anew for each prompt anyway.
    """

    def __init__(self, max_turns: int = WIRE_CACHE_TURNS,
                 max_bytes: int = WIRE_CACHE_BYTES) -> None:
        self.max_turns = max_turns
        self.max_bytes = max_bytes
        self._data: LRU[int, tuple[Turn, WireJSON]] = LRU(max_turns, max_bytes)

    def __len__(self) -> int:
        return len(self._data)

    def get(self, turn: Turn, convert: Callable[[Turn], dict[str, Any]]) -> dict[str, Any]:
        """``convert(turn)``, remembered when the turn is text only."""
        key = id(turn)
        found = self._data.get(key)
        if found is not None and found[0] is turn:
            return found[1]
        wire = convert(turn)
        if all(type(p) is TextPart for p in turn.parts):
            wire = WireJSON(wire)
            size = len(wire.encoded)
            if self.max_turns > 0 and size <= self.max_bytes // 4:
                self._data.put(key, (turn, wire), size)
        return wire

    def clear(self) -> None:
        """Forget every turn."""
        self._data.clear()


# --------------------------------------------------------------------------- listeners


class GuardedListener:
    """A :class:`~bridge.models.base.StreamListener` whose failures stay its own.

    A preview is a nicety: a listener that raises must not turn a good answer into a
    failed attempt (the router would fall back, or fail the turn).  The first error is
    logged with its traceback and the listener is not called again for this request.
    """

    __slots__ = ("_inner", "_broken")

    def __init__(self, inner: StreamListener) -> None:
        self._inner = inner
        self._broken = False

    @classmethod
    def wrap(cls, listener: StreamListener | None) -> GuardedListener | None:
        """``listener`` guarded (once), or None."""
        if listener is None or isinstance(listener, cls):
            return listener
        return cls(listener)

    def _call(self, name: str, *args: str) -> None:
        if self._broken:
            return
        try:
            getattr(self._inner, name)(*args)
        except Exception:
            self._broken = True
            log.warning("stream listener %s.%s() failed; no more live updates for this "
                        "request", type(self._inner).__name__, name, exc_info=True)

    def attempt(self, model_ref: str) -> None:
        self._call("attempt", model_ref)

    def thinking(self) -> None:
        self._call("thinking")

    def text(self, piece: str) -> None:
        self._call("text", piece)


# --------------------------------------------------------------------------- clients


class ClientBase:
    """What the three wire clients share: the model and session, keys and limits, the
    request/response driving of :meth:`complete`, and the memo of converted turns.

    A client supplies its wire format: :meth:`build_payload` (using :meth:`wire_turns`),
    :meth:`_wire_part` (and :meth:`_text_turn` where text turns need more than role and
    content), :meth:`_path`, :meth:`key_headers`, :meth:`_from_json` and
    :meth:`_from_stream`.
    """

    _turn_cache: _WireTurnCache = _WireTurnCache()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._turn_cache = _WireTurnCache()  # one per wire format

    def __init__(self, model: ResolvedModel, session: aiohttp.ClientSession) -> None:
        self.model = model
        self.session = session
        # How the last call's answer came (read by `palaver doctor`): streamed at all,
        # and whether the filter let any text out before the stream ended.
        self.streamed = False
        self.text_before_end = False

    # -- the wire format (each client)

    def build_payload(self, request: ModelRequest, *, stream: bool = True) -> dict[str, Any]:
        """The JSON body for ``request``."""
        raise NotImplementedError

    def _wire_part(self, part: Part) -> dict[str, Any]:
        """One text or image part of a user turn in the wire format."""
        raise NotImplementedError

    def _text_turn(self, role: str, text: str) -> dict[str, Any]:
        """A turn without images: its text as a plain string ``content``."""
        return {"role": role, "content": text}

    def _path(self) -> str:
        """The endpoint, appended to the model's baseUrl."""
        raise NotImplementedError

    @classmethod
    def key_headers(cls, key: str | None) -> dict[str, str]:
        """The headers carrying the API key (none without one) and the API's own."""
        return {"authorization": f"Bearer {key}"} if key else {}

    def _from_json(self, data: Any) -> Completion:
        """The completion in a whole JSON reply (not streamed)."""
        raise NotImplementedError

    async def _from_stream(self, reply: HttpReply,
                           listener: StreamListener | None = None) -> Completion:
        """The completion in an SSE reply; ``listener`` hears each filtered text piece
        (:meth:`_heard`) and each sign of reasoning (:meth:`_reasoning`)."""
        raise NotImplementedError

    # -- shared

    def _wire_turn(self, turn: Turn) -> dict[str, Any]:
        """One history turn in the wire format: a plain string ``content`` unless it is a
        user turn carrying an image for a model that takes images; then a list of parts.

        Strings are what every server understands: most local servers render the prompt
        with a Jinja chat template doing ``'…' + message['content']``, which fails on a
        list ("can only concatenate str (not "list") to str", a 500 from llama-cpp-python
        or vLLM, an empty answer through LiteLLM's bridge).  The conversation core gives a
        text-only model placeholders instead of images; an image that reaches one anyway
        is left out rather than sent as a list the model cannot use.
        """
        if (turn.role == "user" and self.model.vision
                and any(isinstance(p, ImagePart) for p in turn.parts)):
            return {"role": "user", "content": [self._wire_part(p) for p in turn.parts]}
        text = "".join(p.text for p in turn.parts if isinstance(p, TextPart))
        return self._text_turn(turn.role, text)

    def wire_turns(self, turns: Sequence[Turn]) -> list[dict[str, Any]]:
        """``turns`` in the wire format; text-only turns are converted (and JSON-encoded)
        once per Turn object.  The objects are shared between requests: do not change them.
        """
        get, convert = self._turn_cache.get, self._wire_turn
        return [get(turn, convert) for turn in turns]

    async def complete(self, request: ModelRequest, *,
                       listener: StreamListener | None = None) -> Completion:
        """Send ``request`` (streamed) and return the final text (reasoning stripped).

        ``listener`` hears the answer text as it streams, already through the reasoning
        filter (a JSON reply streams nothing).  Cancelling the call closes the connection.
        """
        headers = self._headers()
        payload = self.build_payload(request)
        async with self._post(self._path(), payload, headers) as reply:
            if reply.is_json:
                return self._from_json(await reply.json())
            self.streamed = True
            return await self._from_stream(reply, GuardedListener.wrap(listener))

    def _filter(self) -> ReasoningFilter:
        """A reasoning filter for this model: ``thinkTags: "paired"`` models never open
        ``<think>`` in their template, so no lone closing tag is waited for."""
        return ReasoningFilter(lone_close=self.model.think_tags != "paired")

    def _heard(self, listener: StreamListener | None, piece: str, *, fed: bool = True) -> str:
        """Tell ``listener`` about ``piece``, the filter's output for one delta (``fed``)
        or for the end of the stream: text to show, or (for a non-empty delta whose text
        is held) that the model is working.  Returns ``piece``."""
        if piece and fed:
            self.text_before_end = True
        if listener is not None:
            if piece:
                listener.text(piece)
            elif fed:
                listener.thinking()
        return piece

    @staticmethod
    def _reasoning(filt: ReasoningFilter, listener: StreamListener | None) -> None:
        """Reasoning arrived through its own channel: the server parses reasoning (see
        :meth:`ReasoningFilter.server_parses_reasoning`), and nothing is showable."""
        filt.server_parses_reasoning()
        if listener is not None:
            listener.thinking()

    def _headers(self) -> dict[str, str]:
        headers = dict(self.model.headers)
        headers.update(self.key_headers(api_key(self.model)))
        headers["accept"] = "text/event-stream, application/json"
        return headers

    def _secrets(self) -> tuple[str, ...]:
        return model_secrets(self.model)

    def _max_tokens(self, requested: int | None) -> int:
        return max(1, min(requested or self.model.max_tokens, self.model.max_tokens))

    def _post(self, path: str, payload: Mapping[str, Any], headers: Mapping[str, str]):
        return post(self.session, self.model, f"{self.model.base_url}{path}", payload,
                    headers, secrets=self._secrets())
