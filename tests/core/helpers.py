"""Fakes for the conversation core: a router with the real ``complete()`` contract, a
recording channel, envelope builders and a config builder."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bridge.config.schema import Config
from bridge.envelope import ChatAddress, ChatKind, Inbound, MediaRef, Outbound, Quoted
from bridge.models.base import (
    AllModelsFailed,
    Attempt,
    ErrorClass,
    ModelError,
    ModelReply,
    ModelRequest,
    TextPart,
    Usage,
)
from bridge.ports import Capabilities, Channel, ChannelHealth, Markup, SendError, SendProgress


def make_config(tmp_path=None, **sections: Any) -> Config:
    """A config with providers ``local`` (small, big) and ``backup`` (m); overrides merge."""
    data: dict[str, Any] = {
        "models": {"mode": "replace", "providers": {
            "local": {"baseUrl": "http://127.0.0.1:9/v1", "api": "openai-completions",
                      "models": [{"id": "small", "contextWindow": 32000, "maxTokens": 1000},
                                 {"id": "big", "contextWindow": 64000, "maxTokens": 1000,
                                  "input": ["text", "image"]}]},
            "backup": {"baseUrl": "http://127.0.0.1:9/v1", "api": "openai-completions",
                       "models": [{"id": "m", "contextWindow": 32000, "maxTokens": 1000}]},
        }},
        "agents": {"defaults": {
            "model": {"primary": "local/small", "fallbacks": ["backup/m"]},
            "models": {"local/big": {"alias": "Big"}, "backup/m": {"alias": "Backup"}},
        }},
        "channels": {"telegram": {"dmPolicy": "open", "allowFrom": ["*"],
                                  "groupPolicy": "open"}},
    }
    if tmp_path is not None:
        data["dataDir"] = str(tmp_path / "data")
    for key, value in sections.items():
        _merge(data, key, value)
    return Config.model_validate(data)


def _merge(data: dict, key: str, value: Any) -> None:
    """``agents__defaults__systemPrompt="x"`` style nested override."""
    parts = key.split("__")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value


_ids = itertools.count(1)


def dm(text: str, *, sender: str = "42", channel: str = "telegram", msg_id: str | None = None,
       aliases: tuple[str, ...] = (), media: tuple[MediaRef, ...] = (),
       quoted: Quoted | None = None, name: str | None = "Alice") -> Inbound:
    return Inbound(
        address=ChatAddress(channel, "default", sender, ChatKind.DIRECT),
        sender_id=sender, message_id=msg_id or f"m{next(_ids)}", timestamp=time.time(),
        text=text, sender_name=name, sender_aliases=aliases, media=media, quoted=quoted)


def group(text: str, *, chat: str = "-100", sender: str = "7", mentioned: bool = True,
          thread: str | None = None, msg_id: str | None = None, channel: str = "telegram",
          name: str = "Bob") -> Inbound:
    return Inbound(
        address=ChatAddress(channel, "default", chat, ChatKind.GROUP, thread),
        sender_id=sender, message_id=msg_id or f"g{next(_ids)}", timestamp=time.time(),
        text=text, sender_name=name, mentioned=mentioned)


def overflow_once(answer: str = "fine", summary: str = "short summary"):
    """A FakeRouter behaviour: the first request with history answers context_overflow,
    compaction requests get ``summary``, everything else ``answer``."""
    state = {"overflowed": False}

    def behaviour(ref, req):
        if req.instructions and req.instructions.startswith("You condense"):
            return summary
        if len(req.turns) > 2 and not state["overflowed"]:
            state["overflowed"] = True
            raise ModelError(ErrorClass.CONTEXT_OVERFLOW, "prompt too long")
        return answer

    return behaviour


@dataclass
class Call:
    candidates: list[str]
    ref: str  # the candidate whose request is recorded (the one that answered, or last)
    request: ModelRequest

    @property
    def user_texts(self) -> list[str]:
        return ["".join(p.text for p in t.parts if isinstance(p, TextPart))
                for t in self.request.turns if t.role == "user"]

    @property
    def last_user(self) -> str:
        return self.user_texts[-1]

    @property
    def is_compaction(self) -> bool:
        return bool(self.request.instructions and
                    self.request.instructions.startswith("You condense"))


Behaviour = Callable[[str, ModelRequest], Any]


class FakeRouter:
    """``complete(candidates, request)`` like ModelRouter, answering from ``behaviour``.

    Candidates are ResolvedModels or refs (like the router's); ``Call.candidates`` lists
    their refs.

    ``behaviour(ref, request)`` returns the reply text (or awaitable of it) or raises
    ModelError; the default echoes the last user text.  Fallback and stop rules follow
    the router: context_overflow and bad_request stop at once.  A ``listener`` hears
    ``attempt(ref)`` before each call and the answer as one piece (``listeners`` keeps
    what each call got).
    """

    def __init__(self, config: Callable[[], Config] | Config,
                 behaviour: Behaviour | None = None) -> None:
        self._config = config if callable(config) else (lambda: config)
        self.behaviour = behaviour or (lambda ref, req: "echo: " + _last_user(req))
        self.calls: list[Call] = []
        self.listeners: list[Any] = []

    async def complete(self, candidates, request, *, listener=None) -> ModelReply:
        self.listeners.append(listener)
        attempts: list[Attempt] = []
        refs = [c if isinstance(c, str) else c.ref for c in candidates]
        for candidate, ref in zip(candidates, refs, strict=True):
            model = self._config().model(ref) if isinstance(candidate, str) else candidate
            req = request(model) if callable(request) else request
            if inspect.isawaitable(req):
                req = await req
            call = Call(refs, ref, req)
            self.calls.append(call)
            if listener is not None:
                listener.attempt(ref)
            started = time.monotonic()
            try:
                result = self.behaviour(ref, req)
                if inspect.isawaitable(result):
                    result = await result
            except ModelError as exc:
                attempts.append(Attempt(ref, exc.error_class, time.monotonic() - started,
                                        exc.message))
                if exc.error_class in (ErrorClass.CONTEXT_OVERFLOW, ErrorClass.BAD_REQUEST):
                    break
                continue
            attempts.append(Attempt(ref, None, time.monotonic() - started))
            if listener is not None:
                listener.text(str(result))
            return ModelReply(str(result), ref, Usage(10, 5), "stop", tuple(attempts))
        raise AllModelsFailed(tuple(attempts))

    async def aclose(self) -> None:
        pass

    @property
    def chat_calls(self) -> list[Call]:
        return [c for c in self.calls if not c.is_compaction]


def _last_user(req: ModelRequest) -> str:
    for turn in reversed(req.turns):
        if turn.role == "user":
            return "".join(p.text for p in turn.parts if isinstance(p, TextPart))
    return ""


class RecordingChannel(Channel):
    """A Channel that records what it is asked to send."""

    def __init__(self, name: str = "telegram", account: str = "default") -> None:
        self.name = name
        self.account = account
        self.capabilities = Capabilities(text_chunk_limit=4000, markup=Markup.PLAIN)
        self.sent: list[Outbound] = []
        self.typing_count = 0
        self.fail_sends = 0  # raise SendError this many times
        self.failures: list[BaseException] = []  # raised by the next sends, in order
        self.attempts = 0  # send() calls
        self.sink = None
        self.started = False
        self.stopped = False
        self.sent_event = asyncio.Event()

    async def start(self, sink) -> None:
        self.sink = sink
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    async def send(self, out: Outbound, progress: SendProgress | None = None) -> list[str]:
        # One chunk per reply: progress.start 1 means it went out already.
        self.attempts += 1
        if progress is not None and progress.start >= 1:
            return []
        if self.failures:
            raise self.failures.pop(0)
        if self.fail_sends:
            self.fail_sends -= 1
            raise SendError("chat not found", sent_ids=[])
        self.sent.append(out)
        self.sent_event.set()
        platform_id = f"out{len(self.sent)}"
        if progress is not None:
            await progress.report(0, platform_id)
        return [platform_id]

    @contextlib.asynccontextmanager
    async def typing(self, address: ChatAddress):
        self.typing_count += 1
        yield

    def health(self) -> ChannelHealth:
        return ChannelHealth(connected=self.started and not self.stopped)

    def texts(self) -> list[str]:
        return [o.text for o in self.sent]
