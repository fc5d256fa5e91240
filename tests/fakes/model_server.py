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

- ``reply(text, *, reasoning=None, inline_think=False, chunks=3, delay=0.0,
  stream=None, finish="stop", refusal=None, reasoning_field="reasoning_content",
  redacted_thinking=False, stall_after=None, drop_after=None, terminal=True,
  usage=None, keepalive=None, keepalive_kind="comment", think=0.0)``: a successful
  answer.  ``text`` may be a list of exact chunks.
  ``reasoning`` goes out in the API's own form (Responses reasoning item + summary and
  reasoning_text events; Chat Completions ``reasoning_field`` deltas; Anthropic
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

Inspection: ``server.requests`` is a list of :class:`RecordedRequest` (``method``,
``path``, ``headers`` with lower-case keys, ``json``, ``api``, ``last_user_text()``);
``server.pending`` is the number of queued behaviours left.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

__all__ = ["FakeModelServer", "RecordedRequest"]


@dataclass
class RecordedRequest:
    """One request the fake received."""

    method: str
    path: str
    headers: dict[str, str]
    json: Any

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
    reasoning_field: str = "reasoning_content"
    redacted_thinking: bool = False
    stall_after: int | None = None
    drop_after: int | None = None
    terminal: bool = True
    usage: tuple[int, int] | None = None
    keepalive: float | None = None
    keepalive_kind: str = "comment"
    think: float = 0.0


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


def _split(text: str | list[str], n: int) -> list[str]:
    if isinstance(text, list):
        return list(text)
    if not text:
        return []
    n = max(1, min(n, len(text)))
    size = -(-len(text) // n)
    return [text[i:i + size] for i in range(0, len(text), size)]


class FakeModelServer:
    """See the module docstring for the whole API."""

    def __init__(self, *, api_key: str | None = None,
                 models: tuple[str, ...] | list[str] = ("fake-model",),
                 echo_key: bool = False) -> None:
        self.api_key = api_key
        self.echo_key = echo_key
        self.models = list(models)
        self.serve_models = True
        self.lmstudio_states: dict[str, str] | None = None
        self.requests: list[RecordedRequest] = []
        self._queue: deque[Any] = deque()
        self._default: Callable[[RecordedRequest], Any] = (
            lambda r: _Reply(f"echo: {r.last_user_text()}")
        )
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> FakeModelServer:
        """Listen on 127.0.0.1, an ephemeral port."""
        app = web.Application()
        app.router.add_post("/v1/responses", self._handle)
        app.router.add_post("/v1/chat/completions", self._handle)
        app.router.add_post("/v1/messages", self._handle)
        app.router.add_get("/v1/models", self._handle_models)
        app.router.add_get("/api/v0/models", self._handle_lmstudio_models)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def close(self) -> None:
        """Release hanging requests and stop listening."""
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeModelServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/v1"

    def url_for(self, api: str) -> str:
        """The baseUrl a provider with ``api`` should use."""
        return self.root_url if api == "anthropic-messages" else self.base_url

    @property
    def pending(self) -> int:
        return len(self._queue)

    # ------------------------------------------------------------------ script

    def reply(self, text: str | list[str], **kwargs: Any) -> FakeModelServer:
        """Queue a successful answer (see the module docstring for the options)."""
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
        return rec

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
        api = rec.api
        if not isinstance(rec.json, dict):
            return self._error_response(api, _Error(400, "body is not valid JSON"))
        if not self._authorized(rec):
            return self._error_response(api, self._auth_error(rec))
        behaviour = self._queue.popleft() if self._queue else self._default(rec)
        if isinstance(behaviour, _Hang):
            await self._closing.wait()
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
        if rep.usage is not None:
            return rep.usage
        return len(json.dumps(rec.json).split()), max(1, len(text.split()))

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
                message[rep.reasoning_field] = reasoning
            return {
                "id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion",
                "created": int(time.time()), "model": model,
                "choices": [{"index": 0, "message": message, "finish_reason": rep.finish,
                             "logprobs": None}],
                "usage": {"prompt_tokens": tin, "completion_tokens": tout,
                          "total_tokens": tin + tout},
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
            "stop_sequence": None, "usage": {"input_tokens": tin, "output_tokens": tout},
        }

    @staticmethod
    def _response_obj(model: str, text: str, reasoning: str | None, rep: _Reply, tin: int,
                      tout: int, status: str) -> dict[str, Any]:
        output: list[dict[str, Any]] = []
        if reasoning is not None:
            output.append({"type": "reasoning", "id": "rs_1",
                           "summary": [{"type": "summary_text", "text": reasoning}],
                           "content": [{"type": "reasoning_text", "text": reasoning}]})
        parts: list[dict[str, Any]] = []
        if text:
            parts.append({"type": "output_text", "text": text, "annotations": []})
        if rep.refusal is not None:
            parts.append({"type": "refusal", "refusal": rep.refusal})
        output.append({"type": "message", "id": "msg_1", "role": "assistant",
                       "status": "completed", "content": parts})
        incomplete = rep.finish == "length" and status != "in_progress"
        return {
            "id": "resp_fake", "object": "response", "created_at": int(time.time()),
            "model": model, "status": "incomplete" if incomplete else status,
            "output": output if status != "in_progress" else [],
            "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
            "error": None,
            "usage": {"input_tokens": tin, "output_tokens": tout,
                      "output_tokens_details": {"reasoning_tokens":
                                                len((reasoning or "").split())},
                      "total_tokens": tin + tout},
        }

    # ------------------------------------------------------------------ streams

    async def _stream(self, request: web.Request, api: str, rec: RecordedRequest,
                      rep: _Reply, error: _StreamError | None = None) -> web.StreamResponse:
        resp = web.StreamResponse(status=200, headers={
            "content-type": "text/event-stream", "cache-control": "no-cache"})
        await resp.prepare(request)
        text, chunks, reasoning = self._text_of(rep)
        tin, tout = self._usage(rec, rep, text)
        model = rec.json.get("model", "")
        seq = 0

        async def send(event: str | None, data: Any) -> None:
            nonlocal seq
            if isinstance(data, dict) and api == "responses":
                data = {"type": event, **data, "sequence_number": seq}
                seq += 1
            elif isinstance(data, dict) and api == "anthropic":
                data = {"type": event, **data}
            payload = data if isinstance(data, str) else json.dumps(data)
            head = f"event: {event}\n" if event and api != "completions" else ""
            await resp.write(f"{head}data: {payload}\n\n".encode())

        sent = 0

        async def keepalive() -> None:
            if rep.keepalive_kind == "comment":
                await resp.write(b": OPENROUTER PROCESSING\n\n")
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
                if seconds == float("inf"):
                    await self._closing.wait()
                elif seconds:
                    await asyncio.sleep(seconds)
                return
            end = time.monotonic() + seconds
            while not self._closing.is_set() and time.monotonic() < end:
                await keepalive()
                await asyncio.sleep(min(rep.keepalive, max(end - time.monotonic(), 0)))

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
        base = self._response_obj(model, "", None, rep, tin, tout, "in_progress")
        await send("response.created", {"response": base})
        await send("response.in_progress", {"response": base})
        await think()
        index = 0
        if reasoning is not None:
            item = {"type": "reasoning", "id": "rs_1", "summary": []}
            await send("response.output_item.added", {"output_index": 0, "item": item})
            await send("response.reasoning_summary_part.added", {
                "item_id": "rs_1", "output_index": 0, "summary_index": 0,
                "part": {"type": "summary_text", "text": ""}})
            for piece in _split(reasoning, 2):
                await send("response.reasoning_summary_text.delta", {
                    "item_id": "rs_1", "output_index": 0, "summary_index": 0,
                    "delta": piece})
                await send("response.reasoning_text.delta", {
                    "item_id": "rs_1", "output_index": 0, "content_index": 0,
                    "delta": piece})
            await send("response.reasoning_summary_text.done", {
                "item_id": "rs_1", "output_index": 0, "summary_index": 0, "text": reasoning})
            await send("response.output_item.done", {"output_index": 0, "item": {
                **item, "summary": [{"type": "summary_text", "text": reasoning}]}})
            index = 1
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
            if error.failed:
                failed = self._response_obj(model, text, None, rep, tin, tout, "failed")
                failed["error"] = {"code": error.code, "message": error.message}
                await send("response.failed", {"response": failed})
            else:
                await send("error", {"code": error.code, "message": error.message,
                                     "param": None})
            return
        await send("response.output_text.done", {**where, "text": text})
        if not rep.terminal:
            return
        final = self._response_obj(model, text, reasoning, rep, tin, tout, "completed")
        kind = "response.incomplete" if final["status"] == "incomplete" else "response.completed"
        await send(kind, {"response": final})

    async def _stream_completions(self, send, text_chunk, think, model, chunks, reasoning, rep,
                                  tin, tout, rec, error) -> None:
        cid = f"chatcmpl-{uuid.uuid4().hex[:12]}"

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()),
                    "model": model, "choices": [{"index": 0, "delta": delta,
                                                 "logprobs": None, "finish_reason": finish}]}

        await send(None, chunk({"role": "assistant", "content": ""}))
        await think()
        if reasoning is not None:
            for piece in _split(reasoning, 2):
                await send(None, chunk({rep.reasoning_field: piece}))
        for piece in chunks:
            if not await text_chunk(lambda p: send(None, chunk({"content": p})), piece):
                raise _Stop
        if rep.refusal is not None:
            await send(None, chunk({"refusal": rep.refusal}))
        if error is not None:
            await send(None, {"error": {"message": error.message, "type": error.code,
                                        "code": error.code, "param": None}})
            return
        if not rep.terminal:
            return
        await send(None, chunk({}, rep.finish))
        if (rec.json.get("stream_options") or {}).get("include_usage"):
            await send(None, {"id": cid, "object": "chat.completion.chunk",
                              "created": int(time.time()), "model": model, "choices": [],
                              "usage": {"prompt_tokens": tin, "completion_tokens": tout,
                                        "total_tokens": tin + tout}})
        await send(None, "[DONE]")

    async def _stream_anthropic(self, send, text_chunk, think, model, chunks, reasoning, rep,
                                tin, tout, error) -> None:
        await send("message_start", {"message": {
            "id": f"msg_{uuid.uuid4().hex[:12]}", "type": "message", "role": "assistant",
            "model": model, "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": tin, "output_tokens": 1}}})
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
        await send("content_block_stop", {"index": index})
        await send("message_delta", {"delta": {"stop_reason": _anthropic_stop(rep.finish),
                                               "stop_sequence": None},
                                     "usage": {"output_tokens": tout}})
        if rep.terminal:
            await send("message_stop", {})


class _Stop(Exception):
    """The script ended the stream early (stall or drop)."""


def _anthropic_stop(finish: str) -> str:
    return {"stop": "end_turn", "length": "max_tokens"}.get(finish, finish)
