"""Anthropic Messages client (``POST {baseUrl}/v1/messages``).

``thinking`` and ``redacted_thinking`` blocks are dropped (they tell the filter that the
server parses reasoning itself), ``ping`` events ignored and ``error`` events classified;
only ``text`` blocks make the reply.
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
from bridge.models.http import ClientBase, HttpReply, token_count

ANTHROPIC_VERSION = "2023-06-01"


def messages_path(base_url: str) -> str:
    """``/v1/messages``, or ``/messages`` when the baseUrl already ends in ``/v1``."""
    return "/messages" if base_url.rstrip("/").endswith("/v1") else "/v1/messages"


class AnthropicClient(ClientBase):
    """``anthropic-messages``: Anthropic, and servers that mimic its API."""

    def build_payload(self, request: ModelRequest, *, stream: bool = True) -> dict[str, Any]:
        """The JSON body for ``request`` (``max_tokens`` is required by the API)."""
        payload: dict[str, Any] = {
            "model": self.model.model_id,
            "max_tokens": self._max_tokens(request.max_tokens),
            "messages": self.wire_turns(request.turns),
            "stream": stream,
        }
        if request.instructions:
            payload["system"] = request.instructions
        if request.temperature is not None:
            payload["temperature"] = request.temperature
        return payload

    def _wire_part(self, part: Part) -> dict[str, Any]:
        if isinstance(part, TextPart):
            return {"type": "text", "text": part.text}
        data = part.data_url().split(",", 1)[1]
        return {"type": "image", "source": {
            "type": "base64", "media_type": part.mime, "data": data}}

    def _path(self) -> str:
        return messages_path(self.model.base_url)

    @classmethod
    def key_headers(cls, key: str | None) -> dict[str, str]:
        """``x-api-key`` (when there is a key) and ``anthropic-version``."""
        headers = {"x-api-key": key} if key else {}
        headers["anthropic-version"] = ANTHROPIC_VERSION
        return headers

    async def _from_stream(self, reply: HttpReply,
                           listener: StreamListener | None = None) -> Completion:
        filt = self._filter()
        parts: list[str] = []
        blocks: dict[int, str] = {}  # index -> block type
        stop_reason: str | None = None
        usage = _UsageTally()
        produced = False  # any output at all, thinking included
        async for ev in reply.events():
            data = ev.json()
            if not isinstance(data, dict):
                raise ModelError(ErrorClass.BAD_RESPONSE, "stream event is not an object")
            kind = data.get("type") or ev.event
            if kind == "ping":
                continue  # a keepalive: deadlines stay
            if (kind == "content_block_delta" and _delta_has_content(data.get("delta"))) \
                    or (kind == "content_block_start"
                        and _delta_has_content(data.get("content_block"))):
                reply.content()  # text, thinking or tool input: the model is working
                produced = True
            elif kind != "message_start":
                reply.progress()
            if kind == "error" or is_error_event(data):
                raise classify_event(data, secrets=self._secrets())
            if kind == "message_start":
                message = data.get("message")
                usage.add(message.get("usage") if isinstance(message, dict) else None)
            elif kind == "content_block_start":
                block = data.get("content_block") or {}
                blocks[int(data.get("index", 0))] = block.get("type", "")
                if block.get("type") in _THINKING_BLOCKS:
                    self._reasoning(filt, listener)
                elif block.get("type") == "text" and block.get("text"):
                    parts.append(self._heard(listener, filt.feed(block["text"])))
            elif kind == "content_block_delta":
                delta = data.get("delta") or {}
                index = int(data.get("index", 0))
                if delta.get("type") == "text_delta" and blocks.get(index, "text") == "text":
                    text = delta.get("text") or ""
                    parts.append(self._heard(listener, filt.feed(text), fed=bool(text)))
                elif delta.get("type") == "thinking_delta":
                    self._reasoning(filt, listener)
            elif kind == "message_delta":
                stop_reason = (data.get("delta") or {}).get("stop_reason") or stop_reason
                usage.add(data.get("usage"))
            elif kind == "message_stop":
                parts.append(self._heard(listener, filt.finish(), fed=False))
                return _completion("".join(parts), stop_reason, usage.usage(),
                                   produced=produced)
        raise ModelError(ErrorClass.BAD_RESPONSE, "stream ended without message_stop")

    def _from_json(self, data: Any) -> Completion:
        if not isinstance(data, dict):
            raise ModelError(ErrorClass.BAD_RESPONSE, "body is not an object")
        if data.get("type") == "error" or data.get("error"):  # an error body with status 200
            raise classify_event(data, secrets=self._secrets())
        content = data.get("content")
        if not isinstance(content, list):
            raise ModelError(ErrorClass.BAD_RESPONSE, "message has no content list")
        text = "".join(
            b.get("text") or "" for b in content
            if isinstance(b, dict) and b.get("type") == "text"
        )
        filt = self._filter()
        if _thinking_first(content):
            filt.server_parses_reasoning()  # as when streamed
        tally = _UsageTally()
        tally.add(data.get("usage"))
        produced = any(isinstance(b, dict) and _delta_has_content(b) for b in content)
        return _completion(
            filt.feed(text) + filt.finish(), data.get("stop_reason"), tally.usage(),
            produced=produced,
        )


class _UsageTally:
    """Anthropic's usage, as ``message_start`` and ``message_delta`` report it.

    Each report holds cumulative counts (``message_delta``'s ``output_tokens`` is the
    total so far), so a field a later report carries replaces the earlier value.
    ``input_tokens`` excludes the cache: ``cache_read_input_tokens`` and
    ``cache_creation_input_tokens`` are added to make :class:`Usage`'s whole prompt.
    """

    _FIELDS = ("input_tokens", "output_tokens", "cache_read_input_tokens",
               "cache_creation_input_tokens")

    def __init__(self) -> None:
        self.counts = dict.fromkeys(self._FIELDS, 0)

    def add(self, raw: Any) -> None:
        if not isinstance(raw, dict):
            return
        for name in self._FIELDS:
            if raw.get(name) is not None:
                self.counts[name] = token_count(raw[name])

    def usage(self) -> Usage:
        c = self.counts
        read, write = c["cache_read_input_tokens"], c["cache_creation_input_tokens"]
        return Usage(input_tokens=c["input_tokens"] + read + write,
                     output_tokens=c["output_tokens"], cached_tokens=read,
                     cache_write_tokens=write)


_THINKING_BLOCKS = ("thinking", "redacted_thinking")


def _thinking_first(content: list[Any]) -> bool:
    """True when a thinking block precedes the first text block."""
    for block in content:
        if isinstance(block, dict) and block.get("type") == "text":
            return False
        if isinstance(block, dict) and block.get("type") in _THINKING_BLOCKS:
            return True
    return False


def _delta_has_content(delta: Any) -> bool:
    if not isinstance(delta, dict):
        return False
    return bool(delta.get("text") or delta.get("thinking") or delta.get("partial_json"))


def _completion(text: str, stop_reason: str | None, usage: Usage, *,
                produced: bool) -> Completion:
    error: ModelError | None = None
    if stop_reason == "model_context_window_exceeded":
        error = ModelError(ErrorClass.CONTEXT_OVERFLOW,
                           "stop_reason model_context_window_exceeded")
    elif not text:
        error = empty_answer(f"stop: {stop_reason}", produced=produced,
                             output_tokens=usage.output_tokens, removed="thinking")
    if error is not None:
        error.usage = usage if usage.reported else None
        raise error
    finish = {"end_turn": "stop", "max_tokens": "length", "stop_sequence": "stop"}.get(
        stop_reason or "", stop_reason)
    return Completion(text=text, usage=usage, finish_reason=finish)
