"""A fake language-model server on 127.0.0.1 speaking the three wire APIs exactly.

Usage::

    from tests.fakes.model_server import FakeModelServer

    async with FakeModelServer() as server:
        server.reply("Hello!", reasoning="let me think", chunks=3)
        server.error(429, "slow down", headers={"retry-after": "7"})
        server.hang()
        ...  # point a provider at server.base_url (OpenAI-style) or server.root_url
        assert server.requests[0].json["model"] == "m"

Endpoints (real SSE framing, real error bodies and status codes, see shared/WIRE.md):

- ``POST /v1/responses``         OpenAI Responses (``event:`` + ``data:`` lines)
- ``POST /v1/chat/completions``  Chat Completions (``data:`` chunks, then ``data: [DONE]``)
- ``POST /v1/messages``          Anthropic Messages (``event:`` + ``data:``, ``ping``)
- ``GET  /v1/models``            ``{"object":"list","data":[...]}``, or Anthropic's form
                                 when the request carries ``anthropic-version``

Configure a provider with ``baseUrl = server.base_url`` (``http://127.0.0.1:PORT/v1``) for
``openai-responses`` / ``openai-completions`` and ``server.root_url`` for
``anthropic-messages`` (its client appends ``/v1/messages``); ``server.url_for(api)``
returns the right one.

Scripted behaviours form a FIFO queue; each POST to a completion endpoint takes the next
one (whatever the API).  Each method returns the server, so calls chain:

- ``reply(text, *, tokens_per_second=None, reasoning=None, inline_think=False, chunks=3,
  delay=0.0,
  stream=None, finish="stop", refusal=None, reasoning_field=None,
  redacted_thinking=False, stall_after=None, drop_after=None, terminal=True,
  usage=None, keepalive=None, keepalive_kind="comment", think=0.0)``: a successful
  answer.  ``text`` may be a list of exact chunks.  ``usage``: ``(input, output)``, or a
  dict with ``input``, ``output`` and any of ``cached``, ``cache_write``, ``reasoning``
  (written in each API's own fields: Responses ``input_tokens_details.cached_tokens`` /
  ``output_tokens_details.reasoning_tokens``, Chat Completions ``prompt_tokens_details`` /
  ``completion_tokens_details``, Anthropic ``cache_read_input_tokens`` /
  ``cache_creation_input_tokens`` beside an ``input_tokens`` that excludes them), or
  ``False`` for a server that reports no usage at all; None: counted from the words.
  ``tokens_per_second=N``: a model writing N tokens a second, one word (with the
  whitespace after it) per chunk and ``delay=1/N`` before each.
  ``reasoning`` goes out in the API's own form (Responses reasoning item + summary and
  reasoning_text events; Chat Completions ``reasoning_field`` deltas, by default
  ``reasoning_content`` or the profile's field; Anthropic
  ``thinking`` block); ``inline_think=True`` puts it in the text as ``<think>…</think>``
  instead, ``inline_think="lone"`` as ``…</think>`` (template-opened tag).
  ``stream=None`` follows the request's ``stream`` flag; ``False`` answers JSON anyway.
  ``finish``: "stop", "length" or an API-specific stop reason (e.g. Anthropic's
  ``model_context_window_exceeded``).  ``delay`` sleeps before each chunk.
  ``stall_after=k`` sends k text chunks then stalls (idle timeout); ``drop_after=k``
  sends k chunks then closes the connection; ``terminal=False`` ends the stream cleanly
  without its terminal event.
  ``keepalive=seconds`` makes every wait of the stream (``think``, ``delay``, a stall)
  send keepalives at that interval instead of silence, as hosted proxies do:
  ``keepalive_kind="comment"`` sends ``: OPENROUTER PROCESSING`` SSE comments,
  ``"event"`` the API's own no-content event (Responses ``response.in_progress``, a
  role-only Chat Completions delta, Anthropic ``ping``).  ``think=seconds`` waits after
  the stream's preamble (``response.created`` / role delta / ``message_start``) before any
  reasoning or text, like a model still loading or queued.
- ``error(status, message=None, *, code=None, type=None, body=None, headers=None)``:
  an HTTP error with the API's error body (``body`` verbatim when given: dict, str or
  bytes).
- ``stream_error(message, *, code="server_error", after_text="", failed=False)``: a 200
  stream that carries an error event (Responses ``error``, or ``response.failed`` with
  ``failed=True``; Anthropic ``error``; Chat Completions ``data: {"error": …}``).
- ``hang()``: accept the request and never answer (until the server closes).
- ``drop(text="partial answer", *, after_chunks=1)``: stream a little, then close the
  connection mid-stream.
- ``cut(text="", *, after_chunks=0)``: a 200 stream that sends its preamble (and
  ``after_chunks`` text chunks) and then ends cleanly, with no finish, terminal event or
  ``[DONE]`` (a backend whose template failed after the headers went out).
- ``raw(status, body, content_type="application/json")``: arbitrary bytes.
- ``default(text_or_fn=None, **reply_kwargs)``: what to answer when the queue is empty;
  initially ``"echo: <last user text>"``.  ``text_or_fn`` may be a function of the
  RecordedRequest.

Other knobs: ``FakeModelServer(api_key="k")`` answers 401 (per API) unless the request
carries ``Authorization: Bearer k`` or ``x-api-key: k``, and with ``echo_key=True`` its
401 repeats the key it was given (``Incorrect API key provided: <key>``, as OpenAI does,
unmasked, as some proxies do); ``server.models`` (list of ids)
feeds ``GET /v1/models``; ``server.serve_models = False`` makes it 404;
``server.lmstudio_states = {"id": "loaded" | "not-loaded"}`` makes the server answer LM
Studio's ``GET /api/v0/models`` (404 while it is None, as other servers do).

Behaviour profiles (real servers' quirks, researched in notes/quirks.md): pass
``FakeModelServer(profile="ollama")`` or set ``server.profile = "ollama"`` (also
``server.use_profile(name)``, which returns the server) at any time; ``PROFILES`` lists the
names.  A profile changes how every scripted behaviour is put on the wire and adds the
server's own refusals, which answer *before* the queue is consulted (a refused request does
not use up a scripted behaviour, so a proxy's retries see the same refusal):

- ``"default"``: the exact formats of shared/WIRE.md, lenient about requests (as before).
- ``"llamacpp-template"`` (alias ``"jinja-strict"``): a Python-Jinja chat template that does
  ``'…' + message['content']`` (llama-cpp-python's server and most GGUF templates; vLLM with
  a string-only template).  Any message whose ``content`` is a list (Chat Completions
  ``messages``, Anthropic ``messages``, and Responses ``input`` items, standing for a bridge
  such as LiteLLM that passes the list through) -> HTTP 500 with llama-cpp-python's body
  ``{"error": {"message": "can only concatenate str (not \"list\") to str",
  "type": "internal_server_error", "param": null, "code": null}}``.  String content works.
- ``"ollama"``: Chat Completions reasoning in ``delta.reasoning`` / ``message.reasoning``;
  ``max_completion_tokens`` ignored, only ``max_tokens`` limits the output (Responses:
  ``max_output_tokens``), a cut answer ends with ``finish_reason: "length"`` on chat but
  status ``completed`` on Responses (never ``incomplete``); Responses reasoning only as
  ``reasoning_summary_text.delta``/``.done``; images other than data URLs of jpeg/png/webp
  -> 400 ``invalid image input`` (gif) / ``image URLs are not currently supported``
  (http); errors ``{"error": {"message", "type", "param": null, "code": null}}``; a
  ``stream_error`` just stops the stream (chat: one empty-content chunk, no finish chunk, no
  ``[DONE]``; Responses: no further events, no terminal event).
- ``"llamacpp"`` (llama.cpp ``llama-server``, new build): Responses ``input`` assistant items
  without ``"type": "message"`` -> 400 ``{"error": {"code": 400, "message": "Cannot determine
  type of 'item'", "type": "invalid_request_error"}}``; ``previous_response_id`` -> 400;
  thin Responses events (``output_text.delta`` = ``{type, item_id, delta}``, no
  ``output_index`` / ``content_index`` / ``sequence_number``; ``response.created`` carries
  only ``{id, object, status}``); reasoning as ``reasoning_text.delta``; status always
  ``completed`` (also at the length limit), no ``output_tokens_details``; HTTP errors with an
  int ``code``; a ``stream_error`` is ``data: {"error": {"code": 500, "message", "type":
  "server_error"}}`` with no ``type`` field and no ``event:`` line, then the stream ends.
  Chat: first chunk ``content: null``, a ``timings`` object on chunks.
- ``"vllm"``: Chat Completions reasoning in ``reasoning`` only; Responses reasoning as a
  ``reasoning_text`` content part (``content_part.added`` + ``reasoning_text.delta`` /
  ``.done``, no summary), and no message item when the answer is all reasoning.
- ``"litellm-bridge"``: what LiteLLM's Responses->chat bridge sends (1.108.5, observed):
  data-only lines (``event:`` only on ``response.failed``), ``sequence_number`` only on
  ``output_item.done`` / ``response.failed``, a top-level ``model`` on every event, ``store:
  true`` in ``response.created``, ``data: [DONE]`` after the terminal event; a backend stream
  that was cut (``cut()`` or ``terminal=False``) becomes a ``response.completed`` with the
  text collected so far (empty, ``output_tokens: 0``, for ``cut()``); a ``stream_error``
  becomes ``event: response.failed`` (``error.code "server_error"``) then ``[DONE]``; HTTP
  errors carry ``code`` as a string (``"500"``).  Chat: ``stream_error`` is ``data: {"error":
  {"message", "type": null, "param": null, "code": "500"}}``, then the stream ends.

Inspection: ``server.requests`` is a list of :class:`RecordedRequest` (``method``,
``path``, ``headers`` with lower-case keys, ``json``, ``api``, ``last_user_text()``, and
``closed`` / ``closed_at`` / ``chunks_written`` / ``streaming`` / ``finished``: whether and
when the client hung up mid-answer, and that the fake stopped writing then);
``await server.wait_requests(n)`` returns the n-th request once it has arrived;
``server.pending`` is the number of queued behaviours left.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes.loopback import LoopbackServer

__all__ = ["PROFILES", "FakeModelServer", "RecordedRequest"]


@dataclass(frozen=True)
class _Profile:
    """The quirks of one real server (see the module docstring)."""

    name: str
    string_only_content: bool = False  # list content -> 500 (Python Jinja template)
    chat_reasoning_field: str = "reasoning_content"
    token_limit: bool = False  # honour max_tokens / max_output_tokens (not ..._completion_...)
    never_incomplete: bool = False  # Responses status stays "completed" at the limit
    refuse_images: bool = False  # only data URLs of jpeg/png/webp
    assistant_items_need_type: bool = False  # Responses input: assistant w/o type -> 400
    thin_events: bool = False  # llama.cpp's minimal Responses events
    litellm_framing: bool = False  # LiteLLM's bridge framing and cut -> completed
    responses_reasoning: str = "both"  # both | summary | text
    no_message_when_only_reasoning: bool = False
    llamacpp_chat: bool = False  # content:null role chunk, timings
    # How a mid-stream error is written: default | stop | bare | litellm
    stream_error_style: str = "default"
    # How an HTTP error body looks: openai | llamacpp | ollama | litellm
    error_style: str = "openai"


PROFILES: dict[str, _Profile] = {p.name: p for p in (
    _Profile("default"),
    _Profile("llamacpp-template", string_only_content=True),
    _Profile("jinja-strict", string_only_content=True),
    _Profile("ollama", chat_reasoning_field="reasoning", token_limit=True,
             never_incomplete=True, refuse_images=True, responses_reasoning="summary",
             stream_error_style="stop", error_style="ollama"),
    _Profile("llamacpp", assistant_items_need_type=True, thin_events=True,
             never_incomplete=True, responses_reasoning="text", llamacpp_chat=True,
             stream_error_style="bare", error_style="llamacpp"),
    _Profile("vllm", chat_reasoning_field="reasoning", responses_reasoning="text",
             no_message_when_only_reasoning=True),
    _Profile("litellm-bridge", litellm_framing=True, stream_error_style="litellm",
             error_style="litellm"),
)}

# llama-cpp-python's answer when the chat template concatenates a list (errors.py:
# any exception -> 500 internal_server_error; the text is Python's TypeError).
TEMPLATE_ERROR = 'can only concatenate str (not "list") to str'
_LLAMACPP_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                   403: "permission_error", 404: "not_found_error", 501: "not_supported_error",
                   503: "unavailable_error"}
_OLLAMA_TYPES = {400: "invalid_request_error", 404: "not_found_error"}
_OLLAMA_IMAGE_MIMES = ("image/jpeg", "image/jpg", "image/png", "image/webp")


@dataclass
class RecordedRequest:
    """One request the fake received.

    ``closed`` is set (and ``closed_at``, loop time, recorded) when the client went away
    while the fake was still answering: a write failed with a connection reset, or the
    transport was found closing while the fake waited (``delay``, ``think``, a stall, a
    hang).  From then on the fake writes nothing more to that request, as a real server
    that stops generating.  ``chunks_written`` counts the SSE events (keepalives included)
    that were written (``streaming`` is set at the first); it stops growing once
    ``closed`` is set.  ``finished`` is set when the fake's handler for the request has
    returned.
    """

    method: str
    path: str
    headers: dict[str, str]
    json: Any
    closed: asyncio.Event = field(default_factory=asyncio.Event, compare=False, repr=False)
    closed_at: float | None = None
    chunks_written: int = 0
    finished: asyncio.Event = field(default_factory=asyncio.Event, compare=False,
                                    repr=False)
    streaming: asyncio.Event = field(default_factory=asyncio.Event, compare=False,
                                     repr=False)

    def _client_left(self) -> None:
        if not self.closed.is_set():
            self.closed_at = asyncio.get_running_loop().time()
            self.closed.set()

    @property
    def api(self) -> str:
        """responses, completions, anthropic or models."""
        if self.path.endswith("/responses"):
            return "responses"
        if self.path.endswith("/chat/completions"):
            return "completions"
        if self.path.endswith("/messages"):
            return "anthropic"
        return "models"

    def last_user_text(self) -> str:
        """Text of the last user turn, whatever the API's shape."""
        body = self.json if isinstance(self.json, dict) else {}
        turns = body.get("input") or body.get("messages") or []
        if isinstance(turns, str):
            return turns
        for turn in reversed(turns):
            if not isinstance(turn, dict) or turn.get("role") != "user":
                continue
            content = turn.get("content")
            if isinstance(content, str):
                return content
            return " ".join(
                p.get("text", "") for p in content or ()
                if isinstance(p, dict) and p.get("type") in ("text", "input_text")
            )
        return ""


@dataclass
class _Reply:
    text: str | list[str]
    reasoning: str | None = None
    inline_think: bool | str = False
    chunks: int = 3
    delay: float = 0.0
    stream: bool | None = None
    finish: str = "stop"
    refusal: str | None = None
    reasoning_field: str | None = None  # None: the profile's chat reasoning field
    redacted_thinking: bool = False
    stall_after: int | None = None
    drop_after: int | None = None
    terminal: bool = True
    # (input, output), or a dict with input, output and any of cached, cache_write,
    # reasoning (put on the wire in each API's own fields), or False: no usage at all.
    usage: tuple[int, int] | dict[str, int] | bool | None = None
    keepalive: float | None = None
    keepalive_kind: str = "comment"
    think: float = 0.0
    cut_after: int | None = None  # end the stream cleanly after k text chunks


@dataclass
class _Error:
    status: int
    message: str | None = None
    code: str | None = None
    type: str | None = None
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class _StreamError:
    message: str
    code: str = "server_error"
    after_text: str = ""
    failed: bool = False


@dataclass
class _Hang:
    pass


@dataclass
class _Raw:
    status: int
    body: bytes
    content_type: str


_OPENAI_ERR = {
    400: ("invalid_request_error", None), 401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_error", None), 404: ("invalid_request_error", "model_not_found"),
    409: ("invalid_request_error", None), 422: ("invalid_request_error", None),
    429: ("requests", "rate_limit_exceeded"), 500: ("server_error", None),
    503: ("server_error", None),
}
_ANTHROPIC_ERR = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
    500: "api_error", 529: "overloaded_error",
}


def words(text: str) -> list[str]:
    """``text`` as one chunk per word, each with the whitespace after it (a model's
    tokens, roughly); joined they give ``text`` back."""
    return [w for w in re.split(r"(?<=\s)(?=\S)", text) if w]


def _gone(request: web.Request) -> bool:
    """True when the client's connection is closed or closing."""
    transport = request.transport
    return transport is None or transport.is_closing()


_WATCH_S = 0.02  # how often a waiting handler looks whether its client hung up


def _split(text: str | list[str], n: int) -> list[str]:
    if isinstance(text, list):
        return list(text)
    if not text:
        return []
    n = max(1, min(n, len(text)))
    size = -(-len(text) // n)
    return [text[i:i + size] for i in range(0, len(text), size)]


class FakeModelServer(LoopbackServer):
    """See the module docstring for the whole API."""

    def __init__(self, *, api_key: str | None = None,
                 models: tuple[str, ...] | list[str] = ("fake-model",),
                 echo_key: bool = False, profile: str = "default") -> None:
        self.profile = profile
        self.api_key = api_key
        self.echo_key = echo_key
        self.models = list(models)
        self.serve_models = True
        self.lmstudio_states: dict[str, str] | None = None
        self.requests: list[RecordedRequest] = []
        self._arrived = asyncio.Condition()
        self._queue: deque[Any] = deque()
        self._default: Callable[[RecordedRequest], Any] = (
            lambda r: _Reply(f"echo: {r.last_user_text()}")
        )
        super().__init__()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> FakeModelServer:
        """Listen on 127.0.0.1, an ephemeral port."""
        app = web.Application()
        app.router.add_post("/v1/responses", self._handle)
        app.router.add_post("/v1/chat/completions", self._handle)
        app.router.add_post("/v1/messages", self._handle)
        app.router.add_get("/v1/models", self._handle_models)
        app.router.add_get("/api/v0/models", self._handle_lmstudio_models)
        return await self._serve(app)

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/v1"

    def url_for(self, api: str) -> str:
        """The baseUrl a provider with ``api`` should use."""
        return self.root_url if api == "anthropic-messages" else self.base_url

    @property
    def pending(self) -> int:
        return len(self._queue)

    @property
    def profile(self) -> str:
        """The behaviour profile's name (one of ``PROFILES``)."""
        return self._profile.name

    @profile.setter
    def profile(self, name: str) -> None:
        if name not in PROFILES:
            raise ValueError(f"unknown profile {name!r}; known: {', '.join(PROFILES)}")
        self._profile = PROFILES[name]

    def use_profile(self, name: str) -> FakeModelServer:
        """Switch to the profile ``name`` (see the module docstring); returns the server."""
        self.profile = name
        return self

    # ------------------------------------------------------------------ script

    def reply(self, text: str | list[str], *, tokens_per_second: float | None = None,
              **kwargs: Any) -> FakeModelServer:
        """Queue a successful answer (see the module docstring for the options)."""
        if tokens_per_second is not None:
            if isinstance(text, str):
                text = words(text)
            kwargs["delay"] = 1 / tokens_per_second
        self._queue.append(_Reply(text, **kwargs))
        return self

    def error(self, status: int, message: str | None = None, *, code: str | None = None,
              type: str | None = None, body: Any = None,
              headers: dict[str, str] | None = None) -> FakeModelServer:
        """Queue an HTTP error with the API's own error body."""
        self._queue.append(_Error(status, message, code, type, body, dict(headers or {})))
        return self

    def stream_error(self, message: str, *, code: str = "server_error", after_text: str = "",
                     failed: bool = False) -> FakeModelServer:
        """Queue a 200 stream carrying an error event."""
        self._queue.append(_StreamError(message, code, after_text, failed))
        return self

    def hang(self) -> FakeModelServer:
        """Queue a request that is accepted and never answered."""
        self._queue.append(_Hang())
        return self

    def drop(self, text: str = "partial answer", *, after_chunks: int = 1) -> FakeModelServer:
        """Queue a stream that closes the connection after ``after_chunks`` text chunks."""
        return self.reply(text, chunks=max(after_chunks + 1, 2), drop_after=after_chunks)

    def cut(self, text: str = "", *, after_chunks: int = 0) -> FakeModelServer:
        """Queue a stream that ends cleanly after ``after_chunks`` text chunks, with no
        finish, terminal event or ``[DONE]``."""
        return self.reply(text, chunks=max(after_chunks + 1, 2), cut_after=after_chunks)

    def raw(self, status: int, body: bytes | str,
            content_type: str = "application/json") -> FakeModelServer:
        """Queue an arbitrary answer."""
        data = body.encode() if isinstance(body, str) else body
        self._queue.append(_Raw(status, data, content_type))
        return self

    def default(self, text_or_fn: str | Callable[[RecordedRequest], str] | None = None,
                **reply_kwargs: Any) -> FakeModelServer:
        """What to answer when the queue is empty (None: echo the last user text)."""
        def make(req: RecordedRequest) -> _Reply:
            if text_or_fn is None:
                text = f"echo: {req.last_user_text()}"
            elif callable(text_or_fn):
                text = text_or_fn(req)
            else:
                text = text_or_fn
            return _Reply(text, **reply_kwargs)

        self._default = make
        return self

    # ------------------------------------------------------------------ handlers

    async def _record(self, request: web.Request) -> RecordedRequest:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        rec = RecordedRequest(request.method, request.path,
                              {k.lower(): v for k, v in request.headers.items()}, body)
        self.requests.append(rec)
        async with self._arrived:
            self._arrived.notify_all()
        return rec

    async def wait_requests(self, n: int = 1) -> RecordedRequest:
        """Wait until ``n`` requests have arrived in all; return the ``n``-th."""
        async with self._arrived:
            await self._arrived.wait_for(lambda: len(self.requests) >= n)
        return self.requests[n - 1]

    def _auth_error(self, rec: RecordedRequest) -> _Error:
        if not self.echo_key:
            return _Error(401, "invalid api key")
        given = rec.headers.get("x-api-key") or rec.headers.get("authorization", "")
        given = given.removeprefix("Bearer ")
        return _Error(401, f"Incorrect API key provided: {given}. You can find your API key "
                           "at https://platform.openai.com/account/api-keys.")

    def _authorized(self, rec: RecordedRequest) -> bool:
        if self.api_key is None:
            return True
        return (rec.headers.get("authorization") == f"Bearer {self.api_key}"
                or rec.headers.get("x-api-key") == self.api_key)

    async def _handle_models(self, request: web.Request) -> web.StreamResponse:
        rec = await self._record(request)
        anthropic = "anthropic-version" in rec.headers
        api = "anthropic" if anthropic else "responses"
        if not self._authorized(rec):
            return self._error_response(api, _Error(401, "invalid api key"))
        if not self.serve_models:
            return self._error_response(api, _Error(404, "no such endpoint", code="not_found"))
        if anthropic:
            data = [{"type": "model", "id": m, "display_name": m,
                     "created_at": "2025-01-01T00:00:00Z"} for m in self.models]
            return web.json_response({"data": data, "has_more": False,
                                      "first_id": self.models[0] if self.models else None,
                                      "last_id": self.models[-1] if self.models else None})
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "fake"}
                for m in self.models]
        return web.json_response({"object": "list", "data": data})

    async def _handle_lmstudio_models(self, request: web.Request) -> web.StreamResponse:
        """LM Studio's REST API: every downloaded model with its ``state``."""
        await self._record(request)
        if self.lmstudio_states is None:
            return web.Response(status=404, text="Cannot GET /api/v0/models")
        data = [{"id": mid, "object": "model", "type": "llm", "publisher": "fake",
                 "arch": "qwen3", "compatibility_type": "gguf", "quantization": "Q4_K_M",
                 "state": state, "max_context_length": 32768}
                for mid, state in self.lmstudio_states.items()]
        return web.json_response({"object": "list", "data": data})

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        rec = await self._record(request)
        try:
            return await self._answer(request, rec)
        finally:
            rec.finished.set()

    async def _watch(self, request: web.Request, rec: RecordedRequest,
                     seconds: float) -> None:
        """Wait ``seconds`` (inf: until the server closes), watching the client: raise
        _Stop as soon as it has hung up (aiohttp does not cancel a handler when its
        client disconnects)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while not self._closing.is_set():
            if _gone(request):
                rec._client_left()
                raise _Stop
            left = end - loop.time()
            if left <= 0:
                return
            try:
                await asyncio.wait_for(self._closing.wait(), min(left, _WATCH_S))
            except TimeoutError:
                pass

    async def _answer(self, request: web.Request, rec: RecordedRequest
                      ) -> web.StreamResponse:
        api = rec.api
        if not isinstance(rec.json, dict):
            return self._error_response(api, _Error(400, "body is not valid JSON"))
        if not self._authorized(rec):
            return self._error_response(api, self._auth_error(rec))
        refusal = self._refusal(api, rec)
        if refusal is not None:
            return self._error_response(api, refusal)
        behaviour = self._queue.popleft() if self._queue else self._default(rec)
        if isinstance(behaviour, _Reply):
            behaviour = self._limited(api, rec, behaviour)
        if isinstance(behaviour, _Hang):
            try:
                await self._watch(request, rec, float("inf"))
            except _Stop:
                pass  # the client hung up
            return web.Response(status=503)
        if isinstance(behaviour, _Raw):
            return web.Response(status=behaviour.status, body=behaviour.body,
                                content_type=behaviour.content_type.split(";")[0])
        if isinstance(behaviour, _Error):
            return self._error_response(api, behaviour)
        stream = bool(rec.json.get("stream"))
        if isinstance(behaviour, _Reply) and behaviour.stream is not None:
            stream = behaviour.stream
        if isinstance(behaviour, _StreamError):
            return await self._stream(request, api, rec, _Reply(behaviour.after_text),
                                      error=behaviour)
        if not stream:
            return web.json_response(self._whole(api, rec, behaviour))
        return await self._stream(request, api, rec, behaviour)

    # ------------------------------------------------------------------ profile rules

    def _refusal(self, api: str, rec: RecordedRequest) -> _Error | None:
        """The error the profile's server answers ``rec`` with, or None."""
        prof = self._profile
        body = rec.json
        turns = body.get("input") if api == "responses" else body.get("messages")
        turns = turns if isinstance(turns, list) else []
        if prof.string_only_content and any(
                isinstance(t, dict) and isinstance(t.get("content"), list) for t in turns):
            return _Error(500, body={"error": {"message": TEMPLATE_ERROR,
                                               "type": "internal_server_error",
                                               "param": None, "code": None}})
        if prof.assistant_items_need_type and api == "responses":
            if body.get("previous_response_id"):
                return _Error(400, "llama.cpp does not support 'previous_response_id'")
            for item in turns:
                if isinstance(item, dict) and item.get("role") == "assistant" \
                        and item.get("type") != "message":
                    return _Error(400, "Cannot determine type of 'item'")
        if prof.refuse_images and api in ("responses", "completions"):
            for url in _image_urls(turns):
                if not url.startswith("data:"):
                    return _Error(400, "image URLs are not currently supported")
                mime = url[5:].split(";", 1)[0]
                if mime and mime not in _OLLAMA_IMAGE_MIMES:
                    return _Error(400, "invalid image input")
        return None

    def _limited(self, api: str, rec: RecordedRequest, rep: _Reply) -> _Reply:
        """``rep`` cut to the request's token limit (one word = one token), when the
        profile's server honours one; Ollama reads only ``max_tokens`` on chat."""
        if not self._profile.token_limit or not isinstance(rep.text, str):
            return rep
        key = "max_output_tokens" if api == "responses" else "max_tokens"
        limit = rec.json.get(key)
        words = rep.text.split(" ")
        if not isinstance(limit, int) or len(words) <= limit:
            return rep
        return dataclasses.replace(rep, text=" ".join(words[:limit]), finish="length")

    # ------------------------------------------------------------------ errors

    def _error_response(self, api: str, err: _Error) -> web.Response:
        if err.body is not None:
            body = err.body
            if isinstance(body, dict):
                body = json.dumps(body)
            data = body.encode() if isinstance(body, str) else body
            return web.Response(status=err.status, body=data, headers=err.headers,
                                content_type="application/json")
        message = err.message or f"fake error {err.status}"
        style = self._profile.error_style
        if api != "anthropic" and style == "llamacpp":
            etype = err.type or _LLAMACPP_TYPES.get(
                err.status, "server_error" if err.status >= 500 else "invalid_request_error")
            return web.json_response({"error": {"code": err.status, "message": message,
                                                "type": etype}},
                                     status=err.status, headers=err.headers)
        if api != "anthropic" and style == "ollama":
            etype = err.type or _OLLAMA_TYPES.get(err.status, "api_error")
            return web.json_response({"error": {"message": message, "type": etype,
                                                "param": None, "code": err.code}},
                                     status=err.status, headers=err.headers)
        if api != "anthropic" and style == "litellm":
            return web.json_response({"error": {"message": message, "type": err.type,
                                                "param": None,
                                                "code": err.code or str(err.status)}},
                                     status=err.status, headers=err.headers)
        if api == "anthropic":
            etype = err.type or _ANTHROPIC_ERR.get(
                err.status, "api_error" if err.status >= 500 else "invalid_request_error")
            payload: dict[str, Any] = {"type": "error",
                                       "error": {"type": etype, "message": message}}
        else:
            default_type, default_code = _OPENAI_ERR.get(
                err.status, ("server_error" if err.status >= 500 else "invalid_request_error",
                             None))
            payload = {"error": {"message": message, "type": err.type or default_type,
                                 "param": None, "code": err.code or default_code}}
        return web.json_response(payload, status=err.status, headers=err.headers)

    # ------------------------------------------------------------------ whole replies

    @staticmethod
    def _text_of(rep: _Reply) -> tuple[str, list[str], str | None]:
        """(full text, text chunks, reasoning for the API's own field)."""
        chunks = _split(rep.text, rep.chunks)
        reasoning = rep.reasoning
        if reasoning is not None and rep.inline_think:
            prefix = (f"{reasoning}</think>" if rep.inline_think == "lone"
                      else f"<think>{reasoning}</think>")
            chunks = [prefix + (chunks[0] if chunks else "")] + chunks[1:]
            reasoning = None
        return "".join(chunks), chunks, reasoning

    @staticmethod
    def _usage(rec: RecordedRequest, rep: _Reply, text: str) -> tuple[int, int]:
        if isinstance(rep.usage, tuple):
            return rep.usage
        if isinstance(rep.usage, dict):
            return rep.usage.get("input", 0), rep.usage.get("output", 0)
        return len(json.dumps(rec.json).split()), max(1, len(text.split()))

    @staticmethod
    def _detail(rep: _Reply, name: str) -> int | None:
        """A usage detail the script set (cached, cache_write, reasoning), else None."""
        return rep.usage.get(name) if isinstance(rep.usage, dict) else None

    def _chat_usage(self, rep: _Reply, tin: int, tout: int) -> dict[str, Any]:
        """Chat Completions ``usage``, with its ``*_tokens_details`` when scripted."""
        usage: dict[str, Any] = {"prompt_tokens": tin, "completion_tokens": tout,
                                 "total_tokens": tin + tout}
        if self._detail(rep, "cached") is not None:
            usage["prompt_tokens_details"] = {"cached_tokens": self._detail(rep, "cached")}
        if self._detail(rep, "reasoning") is not None:
            usage["completion_tokens_details"] = {
                "reasoning_tokens": self._detail(rep, "reasoning")}
        return usage

    def _anthropic_usage(self, rep: _Reply, tin: int, tout: int) -> dict[str, Any]:
        """Anthropic ``usage``: ``input_tokens`` without the cache, which is reported as
        ``cache_read_input_tokens`` / ``cache_creation_input_tokens``."""
        usage: dict[str, Any] = {"input_tokens": tin, "output_tokens": tout}
        if self._detail(rep, "cached") is not None:
            usage["cache_read_input_tokens"] = self._detail(rep, "cached")
        if self._detail(rep, "cache_write") is not None:
            usage["cache_creation_input_tokens"] = self._detail(rep, "cache_write")
        return usage

    def _whole(self, api: str, rec: RecordedRequest, rep: _Reply) -> dict[str, Any]:
        text, _, reasoning = self._text_of(rep)
        tin, tout = self._usage(rec, rep, text)
        model = rec.json.get("model", "")
        if api == "responses":
            return self._response_obj(model, text, reasoning, rep, tin, tout, "completed")
        if api == "completions":
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if rep.refusal is not None:
                message = {"role": "assistant", "content": None, "refusal": rep.refusal}
            if reasoning is not None:
                message[self._reasoning_field(rep)] = reasoning
            return {
                "id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion",
                "created": int(time.time()), "model": model,
                "choices": [{"index": 0, "message": message, "finish_reason": rep.finish,
                             "logprobs": None}],
                **({} if rep.usage is False else {"usage": self._chat_usage(rep, tin, tout)}),
            }
        content: list[dict[str, Any]] = []
        if reasoning is not None:
            content.append({"type": "thinking", "thinking": reasoning, "signature": "sig"})
        if rep.redacted_thinking:
            content.append({"type": "redacted_thinking", "data": "opaque"})
        if text:
            content.append({"type": "text", "text": text})
        return {
            "id": f"msg_{uuid.uuid4().hex[:12]}", "type": "message", "role": "assistant",
            "model": model, "content": content, "stop_reason": _anthropic_stop(rep.finish),
            "stop_sequence": None,
            **({} if rep.usage is False else {"usage": self._anthropic_usage(rep, tin, tout)}),
        }

    def _reasoning_field(self, rep: _Reply) -> str:
        return rep.reasoning_field or self._profile.chat_reasoning_field

    def _reasoning_item(self, reasoning: str) -> dict[str, Any]:
        style = self._profile.responses_reasoning
        item: dict[str, Any] = {"type": "reasoning", "id": "rs_1", "summary": []}
        if style in ("both", "summary"):
            item["summary"] = [{"type": "summary_text", "text": reasoning}]
        if style in ("both", "text"):
            item["content"] = [{"type": "reasoning_text", "text": reasoning}]
        if style == "summary":  # Ollama repeats the thinking as plain text here
            item["encrypted_content"] = reasoning
        return item

    def _response_obj(self, model: str, text: str, reasoning: str | None, rep: _Reply,
                      tin: int, tout: int, status: str) -> dict[str, Any]:
        prof = self._profile
        output: list[dict[str, Any]] = []
        if reasoning is not None:
            output.append(self._reasoning_item(reasoning))
        parts: list[dict[str, Any]] = []
        if text:
            parts.append({"type": "output_text", "text": text, "annotations": []})
        if rep.refusal is not None:
            parts.append({"type": "refusal", "refusal": rep.refusal})
        if parts or reasoning is None or not prof.no_message_when_only_reasoning:
            output.append({"type": "message", "id": "msg_1", "role": "assistant",
                           "status": "completed", "content": parts})
        incomplete = (rep.finish == "length" and status != "in_progress"
                      and not prof.never_incomplete)
        usage: dict[str, Any] = {"input_tokens": tin, "output_tokens": tout,
                                 "output_tokens_details": {"reasoning_tokens":
                                                           len((reasoning or "").split())},
                                 "total_tokens": tin + tout}
        if prof.thin_events:  # llama.cpp: no output_tokens_details
            usage = {"input_tokens": tin, "output_tokens": tout, "total_tokens": tin + tout,
                     "input_tokens_details": {"cached_tokens": 0}}
        elif prof.litellm_framing:
            usage["output_tokens_details"]["text_tokens"] = tout
        if self._detail(rep, "reasoning") is not None:
            usage["output_tokens_details"] = {"reasoning_tokens": self._detail(rep, "reasoning")}
        if self._detail(rep, "cached") is not None:
            usage["input_tokens_details"] = {"cached_tokens": self._detail(rep, "cached")}
        return {
            "id": "resp_fake", "object": "response", "created_at": int(time.time()),
            "model": model, "status": "incomplete" if incomplete else status,
            "output": output if status != "in_progress" else [],
            "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
            "error": None,
            "usage": None if rep.usage is False else usage,
        }

    # ------------------------------------------------------------------ streams

    async def _stream(self, request: web.Request, api: str, rec: RecordedRequest,
                      rep: _Reply, error: _StreamError | None = None) -> web.StreamResponse:
        resp = web.StreamResponse(status=200, headers={
            "content-type": "text/event-stream", "cache-control": "no-cache"})
        await resp.prepare(request)
        prof = self._profile
        text, chunks, reasoning = self._text_of(rep)
        tin, tout = self._usage(rec, rep, text)
        model = rec.json.get("model", "")
        seq = 0

        async def send(event: str | None, data: Any) -> None:
            """One SSE event; ``event=None`` writes ``data`` as it is, with no name."""
            nonlocal seq
            named = bool(event) and api != "completions"
            if isinstance(data, dict) and event and api == "responses":
                if prof.thin_events:
                    data = {"type": event, **_thin(event, data)}
                elif prof.litellm_framing:
                    data = {"type": event, **data, "model": model}
                    if event in ("response.output_item.done", "response.failed"):
                        data["sequence_number"] = seq
                        seq += 1
                    named = event == "response.failed"
                else:
                    data = {"type": event, **data, "sequence_number": seq}
                    seq += 1
            elif isinstance(data, dict) and event and api == "anthropic":
                data = {"type": event, **data}
            payload = data if isinstance(data, str) else json.dumps(data)
            head = f"event: {event}\n" if named else ""
            await write(f"{head}data: {payload}\n\n".encode())

        async def write(data: bytes) -> None:
            """Write, unless the client has hung up (then never again: _Stop)."""
            if rec.closed.is_set() or _gone(request):
                rec._client_left()
                raise _Stop
            try:
                await resp.write(data)
            except ConnectionResetError:  # aiohttp's ClientConnectionResetError too
                rec._client_left()
                raise _Stop from None
            rec.chunks_written += 1
            rec.streaming.set()

        sent = 0

        async def keepalive() -> None:
            if rep.keepalive_kind == "comment":
                await write(b": OPENROUTER PROCESSING\n\n")
            elif api == "responses":
                await send("response.in_progress", {"response": self._response_obj(
                    model, "", None, rep, tin, tout, "in_progress")})
            elif api == "completions":
                await send(None, {"id": "chatcmpl-keepalive", "object": "chat.completion.chunk",
                                  "created": int(time.time()), "model": model,
                                  "choices": [{"index": 0, "delta": {"role": "assistant",
                                                                     "content": ""},
                                               "logprobs": None, "finish_reason": None}]})
            else:
                await send("ping", {})

        async def wait(seconds: float) -> None:
            """Silence, or keepalives every ``rep.keepalive`` s, for ``seconds``."""
            if not rep.keepalive:
                if seconds:
                    await self._watch(request, rec, seconds)
                return
            end = time.monotonic() + seconds
            while not self._closing.is_set() and time.monotonic() < end:
                await keepalive()
                await self._watch(request, rec,
                                  min(rep.keepalive, max(end - time.monotonic(), 0)))

        async def think() -> None:
            if rep.think:
                await wait(rep.think)

        async def text_chunk(emit: Callable[[str], Any], piece: str) -> bool:
            """Send one text chunk; False when the script ends the stream here."""
            nonlocal sent
            if rep.delay:
                await wait(rep.delay)
            await emit(piece)
            sent += 1
            if rep.stall_after is not None and sent >= rep.stall_after:
                await wait(float("inf"))
                return False
            if rep.drop_after is not None and sent >= rep.drop_after:
                assert request.transport is not None
                request.transport.abort()
                return False
            return True

        if rep.cut_after is not None:  # the stream ends cleanly after these
            chunks = chunks[:rep.cut_after]
        try:
            if api == "responses":
                await self._stream_responses(send, text_chunk, think, model, text, chunks,
                                             reasoning, rep, tin, tout, error)
            elif api == "completions":
                await self._stream_completions(send, text_chunk, think, model, chunks,
                                               reasoning, rep, tin, tout, rec, error)
            else:
                await self._stream_anthropic(send, text_chunk, think, model, chunks, reasoning,
                                             rep, tin, tout, error)
            await resp.write_eof()
        except (ConnectionError, RuntimeError, _Stop):
            pass
        return resp

    async def _stream_responses(self, send, text_chunk, think, model, text, chunks, reasoning,
                                rep, tin, tout, error) -> None:
        prof = self._profile
        base = self._response_obj(model, "", None, rep, tin, tout, "in_progress")
        if prof.litellm_framing:
            base = {**base, "store": True}  # LiteLLM says so whatever the request said
        await send("response.created", {"response": base})
        await send("response.in_progress", {"response": base})
        await think()
        index = 0
        if reasoning is not None:
            await self._stream_reasoning(send, reasoning)
            index = 1
        cut = rep.cut_after is not None or not rep.terminal
        if cut:
            text = "".join(chunks)
        if (not text and rep.refusal is None and reasoning is not None and not cut
                and prof.no_message_when_only_reasoning):
            await self._responses_end(send, model, text, reasoning, rep, tin, tout)
            return
        msg = {"type": "message", "id": "msg_1", "role": "assistant",
               "status": "in_progress", "content": []}
        await send("response.output_item.added", {"output_index": index, "item": msg})
        await send("response.content_part.added", {
            "item_id": "msg_1", "output_index": index, "content_index": 0,
            "part": {"type": "output_text", "text": "", "annotations": []}})
        where = {"item_id": "msg_1", "output_index": index, "content_index": 0}
        for piece in chunks:
            if not await text_chunk(
                lambda p: send("response.output_text.delta", {**where, "delta": p}), piece
            ):
                raise _Stop
        if rep.refusal is not None:
            await send("response.refusal.delta", {**where, "delta": rep.refusal})
            await send("response.refusal.done", {**where, "refusal": rep.refusal})
        if error is not None:
            await self._responses_stream_error(send, model, text, rep, tin, tout, error)
            return
        if cut and not prof.litellm_framing:
            if rep.cut_after is None:  # terminal=False: the text was finished
                await send("response.output_text.done", {**where, "text": text})
            return
        await send("response.output_text.done", {**where, "text": text})
        if prof.litellm_framing:
            done = {**msg, "status": "completed", "content": [
                {"type": "output_text", "text": text, "annotations": []}]}
            await send("response.output_item.done", {"output_index": index, "item": done})
            if cut:  # the bridge builds "completed" from what it collected
                tout = len(text.split())
        await self._responses_end(send, model, text, reasoning, rep, tin, tout)

    async def _stream_reasoning(self, send, reasoning: str) -> None:
        """A reasoning item in the profile's form."""
        style = self._profile.responses_reasoning
        at = {"item_id": "rs_1", "output_index": 0}
        await send("response.output_item.added", {"output_index": 0, "item": {
            "type": "reasoning", "id": "rs_1", "summary": []}})
        if style == "both":
            await send("response.reasoning_summary_part.added", {
                **at, "summary_index": 0, "part": {"type": "summary_text", "text": ""}})
        if style == "text":
            await send("response.content_part.added", {
                **at, "content_index": 0, "part": {"type": "reasoning_text", "text": ""}})
        for piece in _split(reasoning, 2):
            if style in ("both", "summary"):
                await send("response.reasoning_summary_text.delta", {
                    **at, "summary_index": 0, "delta": piece})
            if style in ("both", "text"):
                await send("response.reasoning_text.delta", {
                    **at, "content_index": 0, "delta": piece})
        if style in ("both", "summary"):
            await send("response.reasoning_summary_text.done", {
                **at, "summary_index": 0, "text": reasoning})
        else:
            await send("response.reasoning_text.done", {
                **at, "content_index": 0, "text": reasoning})
        await send("response.output_item.done", {"output_index": 0,
                                                 "item": self._reasoning_item(reasoning)})

    async def _responses_end(self, send, model, text, reasoning, rep, tin, tout) -> None:
        final = self._response_obj(model, text, reasoning, rep, tin, tout, "completed")
        kind = "response.incomplete" if final["status"] == "incomplete" else "response.completed"
        await send(kind, {"response": final})
        if self._profile.litellm_framing:
            await send(None, "[DONE]")

    async def _responses_stream_error(self, send, model, text, rep, tin, tout,
                                      error: _StreamError) -> None:
        style = self._profile.stream_error_style
        if style == "stop":
            return  # Ollama: the error line is swallowed, the stream just ends
        if style == "bare":
            await send(None, {"error": {"code": 500, "message": error.message,
                                        "type": "server_error"}})
            return
        if error.failed or style == "litellm":
            failed = self._response_obj(model, text, None, rep, tin, tout, "failed")
            failed["error"] = {"code": error.code, "message": error.message}
            await send("response.failed", {"response": failed})
            if style == "litellm":
                await send(None, "[DONE]")
            return
        await send("error", {"code": error.code, "message": error.message, "param": None})

    async def _stream_completions(self, send, text_chunk, think, model, chunks, reasoning, rep,
                                  tin, tout, rec, error) -> None:
        prof = self._profile
        cid = f"chatcmpl-{uuid.uuid4().hex[:12]}"

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            out = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()),
                   "model": model, "choices": [{"index": 0, "delta": delta,
                                                "logprobs": None, "finish_reason": finish}]}
            if prof.llamacpp_chat:
                out["timings"] = {"prompt_n": tin, "predicted_n": tout}
            return out

        await send(None, chunk({"role": "assistant",
                                "content": None if prof.llamacpp_chat else ""}))
        await think()
        if reasoning is not None:
            for piece in _split(reasoning, 2):
                await send(None, chunk({self._reasoning_field(rep): piece}))
        for piece in chunks:
            if not await text_chunk(lambda p: send(None, chunk({"content": p})), piece):
                raise _Stop
        if rep.refusal is not None:
            await send(None, chunk({"refusal": rep.refusal}))
        if error is not None:
            style = prof.stream_error_style
            if style == "stop":  # Ollama: the error becomes one empty chunk, then nothing
                await send(None, chunk({"role": "assistant", "content": ""}))
            elif style == "bare":
                await send(None, {"error": {"code": 500, "message": error.message,
                                            "type": "server_error"}})
            elif style == "litellm":
                await send(None, {"error": {"message": error.message, "type": None,
                                            "param": None, "code": "500"}})
            else:
                await send(None, {"error": {"message": error.message, "type": error.code,
                                            "code": error.code, "param": None}})
            return
        if not rep.terminal or rep.cut_after is not None:
            return
        await send(None, chunk({}, rep.finish))
        if (rec.json.get("stream_options") or {}).get("include_usage") and rep.usage is not False:
            await send(None, {"id": cid, "object": "chat.completion.chunk",
                              "created": int(time.time()), "model": model, "choices": [],
                              "usage": self._chat_usage(rep, tin, tout)})
        await send(None, "[DONE]")

    async def _stream_anthropic(self, send, text_chunk, think, model, chunks, reasoning, rep,
                                tin, tout, error) -> None:
        await send("message_start", {"message": {
            "id": f"msg_{uuid.uuid4().hex[:12]}", "type": "message", "role": "assistant",
            "model": model, "content": [], "stop_reason": None, "stop_sequence": None,
            **({} if rep.usage is False
               else {"usage": self._anthropic_usage(rep, tin, 1)})}})
        await send("ping", {})
        await think()
        index = 0
        if reasoning is not None:
            await send("content_block_start", {"index": index, "content_block": {
                "type": "thinking", "thinking": "", "signature": ""}})
            for piece in _split(reasoning, 2):
                await send("content_block_delta", {"index": index, "delta": {
                    "type": "thinking_delta", "thinking": piece}})
            await send("content_block_delta", {"index": index, "delta": {
                "type": "signature_delta", "signature": "sig"}})
            await send("content_block_stop", {"index": index})
            index += 1
        if rep.redacted_thinking:
            await send("content_block_start", {"index": index, "content_block": {
                "type": "redacted_thinking", "data": "opaque"}})
            await send("content_block_stop", {"index": index})
            index += 1
        await send("content_block_start", {"index": index, "content_block": {
            "type": "text", "text": ""}})
        for piece in chunks:
            if not await text_chunk(lambda p: send("content_block_delta", {
                    "index": index, "delta": {"type": "text_delta", "text": p}}), piece):
                raise _Stop
            await send("ping", {})
        if error is not None:
            await send("error", {"error": {"type": error.code, "message": error.message}})
            return
        if rep.cut_after is not None:
            return
        await send("content_block_stop", {"index": index})
        await send("message_delta", {"delta": {"stop_reason": _anthropic_stop(rep.finish),
                                               "stop_sequence": None},
                                     **({} if rep.usage is False
                                        else {"usage": {"output_tokens": tout}})})
        if rep.terminal:
            await send("message_stop", {})


def _thin(event: str, data: dict[str, Any]) -> dict[str, Any]:
    """llama.cpp's minimal form of a Responses stream event."""
    if event in ("response.created", "response.in_progress"):
        r = data["response"]
        return {"response": {"id": r["id"], "object": r["object"], "status": r["status"]}}
    if event.startswith("response.output_item."):
        return data
    return {k: v for k, v in data.items()
            if k not in ("output_index", "content_index", "summary_index", "logprobs")}


def _image_urls(turns: list[Any]) -> list[str]:
    """Every image URL in Responses ``input`` items or Chat Completions ``messages``."""
    urls: list[str] = []
    for turn in turns:
        content = turn.get("content") if isinstance(turn, dict) else None
        for part in content if isinstance(content, list) else ():
            if not isinstance(part, dict):
                continue
            url = part.get("image_url")
            if isinstance(url, dict):
                url = url.get("url")
            if isinstance(url, str):
                urls.append(url)
    return urls


class _Stop(Exception):
    """The script ended the stream early (stall or drop)."""


def _anthropic_stop(finish: str) -> str:
    return {"stop": "end_turn", "length": "max_tokens"}.get(finish, finish)
