"""OpenAI Responses API client (``POST {baseUrl}/responses``), stateless (``store: false``).

Only ``output_text`` and ``refusal`` content of ``message`` items is kept: ``reasoning``
items and the reasoning text / summary events are dropped (they tell the filter that the
server parses reasoning itself), and inline reasoning tags are stripped by
:class:`~bridge.models.reasoning.ReasoningFilter`.

Input items: text-only turns carry a plain string ``content`` (a list only for a user turn
with an image, to a model that takes images); assistant items say ``"type": "message"``.
"""

from __future__ import annotations

import logging
from typing import Any

from bridge.models.base import (
    Completion,
    ErrorClass,
    ModelError,
    ModelRequest,
    Part,
    StreamListener,
    TextPart,
    Usage,
)
from bridge.models.errors import (
    classify_event,
    classify_payload,
    empty_answer,
    error_fields,
    is_error_event,
)
from bridge.models.http import ClientBase, HttpReply, openai_usage
from bridge.models.reasoning import ReasoningFilter

log = logging.getLogger("bridge.models.responses")

_TERMINAL = ("response.completed", "response.incomplete", "response.failed")
# Events a server may send while the model has produced nothing yet (see http.py).
_KEEPALIVE = frozenset({"response.created", "response.in_progress", "response.queued",
                        "keepalive", "ping"})
# Model refs already told that their server relabels streamed text (logged once each).
_RELABEL_HINTED: set[str] = set()


class ResponsesClient(ClientBase):
    """``openai-responses``: LM Studio, vLLM, Ollama, LocalAI, llama.cpp, OpenAI."""

    def build_payload(self, request: ModelRequest, *, stream: bool = True) -> dict[str, Any]:
        """The JSON body for ``request`` (full history as ``input``)."""
        payload: dict[str, Any] = {
            "model": self.model.model_id,
            "input": self.wire_turns(request.turns),
            "max_output_tokens": self._max_tokens(request.max_tokens),
            "store": False,
            "stream": stream,
        }
        if request.instructions:
            payload["instructions"] = request.instructions
        if request.temperature is not None:
            payload["temperature"] = request.temperature
        return payload

    def _wire_part(self, part: Part) -> dict[str, Any]:
        if isinstance(part, TextPart):
            return {"type": "input_text", "text": part.text}
        return {"type": "input_image", "image_url": part.data_url(), "detail": "auto"}

    def _text_turn(self, role: str, text: str) -> dict[str, Any]:
        # llama.cpp's /responses converter refuses an assistant item without "type"
        # (400 "Cannot determine type of 'item'"); with it, every server takes a string.
        if role == "assistant":
            return {"type": "message", "role": "assistant", "content": text}
        return {"role": role, "content": text}

    def _path(self) -> str:
        return "/responses"

    async def _from_stream(self, reply: HttpReply,
                           listener: StreamListener | None = None) -> Completion:
        filt = self._filter()
        parts: list[str] = []
        streamed = False  # answer text (or a refusal) arrived as deltas
        produced = False  # any output at all, reasoning included
        async for ev in reply.events():
            if ev.data.strip() == "[DONE]":
                continue
            data = ev.json()
            if not isinstance(data, dict):
                raise ModelError(ErrorClass.BAD_RESPONSE, "stream event is not an object")
            if is_error_event(data):  # {"type": "error"}, or {"error": {…}} with no type
                raise classify_event(data, secrets=self._secrets())
            kind = data.get("type") or ev.event
            if kind in _KEEPALIVE:
                continue  # says nothing about the model working: deadlines stay
            if isinstance(kind, str) and kind.endswith(".delta") and data.get("delta"):
                reply.content()  # text, refusal, reasoning, tool-call arguments
                produced = True
            else:
                reply.progress()
            if kind in ("response.output_text.delta", "response.refusal.delta"):
                delta = data.get("delta")
                if isinstance(delta, str):
                    streamed = True
                    parts.append(self._heard(listener, filt.feed(delta), fed=bool(delta)))
            elif _is_reasoning_event(kind, data):
                self._reasoning(filt, listener)
            elif kind == "error":  # named by the event line only
                raise classify_event(data, secrets=self._secrets())
            elif kind in _TERMINAL:
                response = data.get("response")
                if not isinstance(response, dict):
                    raise ModelError(ErrorClass.BAD_RESPONSE, f"{kind} without response")
                if kind == "response.failed" or not streamed:
                    # Servers that send no deltas still carry the output here.
                    return self._from_json(response, produced=produced)
                rest = filt.finish()
                parts.append(rest)
                # The final response is the server's own account of the answer: LocalAI
                # streams a thinking model's reasoning as output_text deltas and moves it
                # into a reasoning item only here (LocalAI#9658).  Deltas are kept when it
                # carries no text (a bridge that lost its backend mid-stream).
                final = _output_text(response)
                if final.strip():
                    ffilt = ReasoningFilter(lone_close=filt.lone_close)
                    text = ffilt.feed(final) + ffilt.finish()
                    if text == "".join(parts):
                        self._heard(listener, rest, fed=False)
                    else:
                        self._relabelled()
                    return _completion(text, response, produced=True)
                self._heard(listener, rest, fed=False)
                return _completion("".join(parts), response, produced=True)
        # Ollama's mid-stream failure, a proxy that lost its backend: no terminal event.
        raise ModelError(ErrorClass.BAD_RESPONSE,
                         "stream ended without response.completed")

    def _from_json(self, response: Any, *, produced: bool = False) -> Completion:
        """A response object: the whole JSON body, or the one a terminal event carries
        (``produced``: output was streamed before it)."""
        if not isinstance(response, dict):
            raise ModelError(ErrorClass.BAD_RESPONSE, "response is not an object")
        if response.get("object") not in (None, "response") and "output" not in response:
            code, message = error_fields(response)
            raise classify_payload(code, message or "unexpected body", secrets=self._secrets())
        status = response.get("status")
        if status == "failed" or (response.get("error") and status != "completed"):
            code, message = error_fields({"error": response.get("error") or {}})
            error = classify_payload(code or "server_error", message or "response failed",
                                     secrets=self._secrets())
            usage = response_usage(response.get("usage"))
            error.usage = usage if usage.reported else None  # a failed call may still bill
            raise error
        output = response.get("output")
        if not isinstance(output, list):
            raise ModelError(ErrorClass.BAD_RESPONSE, "response has no output list")
        produced = produced or any(isinstance(item, dict) and item.get("type") != "message"
                                   and _has_output(item) for item in output)
        filt = self._filter()
        if _reasoning_first(output):
            filt.server_parses_reasoning()  # as when streamed
        joined = _output_text(response)
        return _completion(filt.feed(joined) + filt.finish(), response,
                           produced=produced or bool(joined))

    def _relabelled(self) -> None:
        """The final text is not what was streamed: a preview showed text that is not
        the answer.  Say once per model how to stop that."""
        ref = self.model.ref
        if ref in _RELABEL_HINTED:
            return
        _RELABEL_HINTED.add(ref)
        log.warning(
            "model %s: the final response's text differs from the text it streamed (the "
            "server relabels streamed text, e.g. as reasoning); set \"preview\": false for "
            "this model so that live previews never show it", ref,
            extra={"event": "model_relabels_stream", "model": ref})


def _is_reasoning_event(kind: Any, data: dict[str, Any]) -> bool:
    """A stream event carrying (or opening) reasoning: ``response.reasoning_*`` events, a
    reasoning output item, or a ``reasoning_text`` content part (vLLM)."""
    if not isinstance(kind, str):
        return False
    if kind.startswith("response.reasoning"):
        return True
    if kind == "response.output_item.added":
        item = data.get("item")
        return isinstance(item, dict) and item.get("type") == "reasoning"
    if kind == "response.content_part.added":
        part = data.get("part")
        return isinstance(part, dict) and part.get("type") == "reasoning_text"
    return False


def _reasoning_first(output: list[Any]) -> bool:
    """True when a reasoning item precedes the first message item (the server parsed the
    reasoning out, as :func:`_is_reasoning_event` tells while streaming)."""
    for item in output:
        if isinstance(item, dict) and item.get("type") == "message":
            return False
        if isinstance(item, dict) and item.get("type") == "reasoning":
            return True
    return False


def _output_text(response: dict[str, Any]) -> str:
    """The answer text (and refusals) of a response object's message items, joined."""
    output = response.get("output")
    texts: list[str] = []
    for item in output if isinstance(output, list) else ():
        if not isinstance(item, dict) or item.get("type") != "message":
            continue
        for part in item.get("content") or ():
            if not isinstance(part, dict):
                continue
            if part.get("type") == "output_text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif part.get("type") == "refusal" and isinstance(part.get("refusal"), str):
                texts.append(part["refusal"])
    return "".join(texts)


def _has_output(item: dict[str, Any]) -> bool:
    """True when a non-message output item holds anything (reasoning text, a call)."""
    if item.get("type") == "function_call":
        return True
    return any(isinstance(p, dict) and p.get("text")
               for key in ("summary", "content") for p in item.get(key) or ())


def _completion(text: str, response: dict[str, Any], *, produced: bool) -> Completion:
    finish = "stop"
    if response.get("status") == "incomplete":
        reason = (response.get("incomplete_details") or {}).get("reason")
        finish = "length" if reason == "max_output_tokens" else (reason or "incomplete")
    usage = response_usage(response.get("usage"))
    if not text:
        error = empty_answer(f"finish: {finish}", produced=produced,
                             output_tokens=usage.output_tokens)
        error.usage = usage if usage.reported else None
        raise error
    return Completion(text=text, usage=usage, finish_reason=finish)


def response_usage(raw: Any) -> Usage:
    """A Responses ``usage`` object: ``input_tokens`` (cached ones included, as
    ``input_tokens_details.cached_tokens``), ``output_tokens`` (reasoning included, as
    ``output_tokens_details.reasoning_tokens``).  Missing or malformed: zeros."""
    return openai_usage(raw, "input_tokens", "output_tokens")

