"""OpenAI Chat Completions client (``POST {baseUrl}/chat/completions``).

``reasoning_content`` / ``reasoning`` fields are dropped (and tell the filter that the
server parses reasoning itself); inline reasoning tags in ``content`` are stripped by
:class:`~bridge.models.reasoning.ReasoningFilter`.
"""

from __future__ import annotations

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
    empty_answer,
    is_error_event,
)
from bridge.models.http import ClientBase, HttpReply, openai_usage, url_host
from bridge.models.reasoning import ReasoningFilter


class CompletionsClient(ClientBase):
    """``openai-completions``: any OpenAI-compatible server (the most widely implemented)."""

    def build_payload(self, request: ModelRequest, *, stream: bool = True) -> dict[str, Any]:
        """The JSON body for ``request``."""
        messages: list[dict[str, Any]] = []
        if request.instructions:
            messages.append({"role": "system", "content": request.instructions})
        messages += self.wire_turns(request.turns)
        payload: dict[str, Any] = {"model": self.model.model_id, "messages": messages}
        # OpenAI's own reasoning models reject max_tokens; local servers know only it.
        host = url_host(self.model.base_url)
        limit_key = "max_completion_tokens" if host == "api.openai.com" else "max_tokens"
        payload[limit_key] = self._max_tokens(request.max_tokens)
        if request.temperature is not None:
            payload["temperature"] = request.temperature
        payload["stream"] = stream
        if stream:
            payload["stream_options"] = {"include_usage": True}
        return payload

    def _wire_part(self, part: Part) -> dict[str, Any]:
        if isinstance(part, TextPart):
            return {"type": "text", "text": part.text}
        return {"type": "image_url", "image_url": {"url": part.data_url()}}

    def _path(self) -> str:
        return "/chat/completions"

    async def _from_stream(self, reply: HttpReply,
                           listener: StreamListener | None = None) -> Completion:
        filt = self._filter()
        parts: list[str] = []
        finish: str | None = None
        usage = Usage()
        produced = False  # any output at all, reasoning included
        async for ev in reply.events():
            if ev.data.strip() == "[DONE]":
                return self._done(parts, filt, finish, usage, produced, listener)
            data = ev.json()
            if not isinstance(data, dict):
                raise ModelError(ErrorClass.BAD_RESPONSE, "stream chunk is not an object")
            if is_error_event(data) or ev.event == "error":
                # data: {"error": {…}} after a 200 (llama.cpp, vLLM, LiteLLM, this API's own)
                raise classify_event(data, secrets=self._secrets())
            if data.get("usage"):
                usage = _usage(data["usage"])
            if _has_content(data):
                reply.content()
                produced = True
            elif data.get("usage") or any(
                    isinstance(c, dict) and c.get("finish_reason")
                    for c in data.get("choices") or ()):
                reply.progress()
            # else a role-only or empty delta: a keepalive, deadlines stay
            for choice in data.get("choices") or ():
                if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                    continue
                delta = choice.get("delta") or {}
                if not isinstance(delta, dict):
                    delta = {}
                if any(delta.get(f) for f in _REASONING_FIELDS):
                    self._reasoning(filt, listener)
                content = delta.get("content")
                if not isinstance(content, str):
                    content = delta.get("refusal")
                if isinstance(content, str):
                    parts.append(self._heard(listener, filt.feed(content), fed=bool(content)))
                if choice.get("finish_reason"):
                    finish = choice["finish_reason"]
        if finish is not None:
            # Lenient: some servers close after the last chunk without "[DONE]".
            return self._done(parts, filt, finish, usage, produced, listener)
        # No finish_reason and no [DONE]: Ollama's mid-stream failure, a cut connection.
        raise ModelError(ErrorClass.BAD_RESPONSE, "stream ended without [DONE]")

    def _done(self, parts: list[str], filt: ReasoningFilter, finish: str | None,
              usage: Usage, produced: bool, listener: StreamListener | None) -> Completion:
        parts.append(self._heard(listener, filt.finish(), fed=False))
        return _completion("".join(parts), finish, usage, produced=produced)

    def _from_json(self, data: Any) -> Completion:
        if not isinstance(data, dict):
            raise ModelError(ErrorClass.BAD_RESPONSE, "body is not an object")
        if data.get("error"):  # an error body with status 200
            raise classify_event(data, secrets=self._secrets())
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise ModelError(ErrorClass.BAD_RESPONSE, "no choices in the reply")
        reply = choices[0].get("message") or {}
        content = reply.get("content") if isinstance(reply, dict) else None
        if content is None and isinstance(reply, dict):
            content = reply.get("refusal")
        if isinstance(content, list):  # some servers answer with content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if content is not None and not isinstance(content, str):
            raise ModelError(ErrorClass.BAD_RESPONSE, "message content is not text")
        filt = self._filter()
        if isinstance(reply, dict) and any(reply.get(f) for f in _REASONING_FIELDS):
            filt.server_parses_reasoning()  # as when streamed: reasoning comes first
        text = filt.feed(content or "") + filt.finish()
        produced = bool(content) or (isinstance(reply, dict) and any(
            reply.get(f) for f in _CONTENT_FIELDS))
        return _completion(text, choices[0].get("finish_reason"), _usage(data.get("usage")),
                           produced=produced)


_REASONING_FIELDS = ("reasoning_content", "reasoning")
_CONTENT_FIELDS = ("content", "refusal", "reasoning_content", "reasoning", "tool_calls",
                   "function_call")


def _has_content(chunk: dict[str, Any]) -> bool:
    """True when a stream chunk carries generated output (reasoning included)."""
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") if isinstance(choice, dict) else None
        if isinstance(delta, dict) and any(delta.get(f) for f in _CONTENT_FIELDS):
            return True
    return False


def _usage(raw: Any) -> Usage:
    """A Chat Completions ``usage`` object (the non-streamed body's, or the last chunk's
    with ``stream_options.include_usage``): ``prompt_tokens`` with
    ``prompt_tokens_details.cached_tokens``, ``completion_tokens`` with
    ``completion_tokens_details.reasoning_tokens``.  Missing or malformed: zeros."""
    return openai_usage(raw, "prompt_tokens", "completion_tokens")


def _completion(text: str, finish: str | None, usage: Usage, *,
                produced: bool) -> Completion:
    if not text:
        error = empty_answer(f"finish: {finish}", produced=produced,
                             output_tokens=usage.output_tokens)
        error.usage = usage if usage.reported else None
        raise error
    return Completion(text=text, usage=usage, finish_reason=finish)
