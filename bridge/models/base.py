"""Request, reply and error types shared by every model client and the router."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from bridge.config.resolve import ResolvedModel


class ErrorClass(StrEnum):
    """The closed set of model failures; the router decides from these alone."""

    UNREACHABLE = "unreachable"  # refused, reset, DNS
    TIMEOUT = "timeout"  # connect, first token, idle gap, total
    RATE_LIMITED = "rate_limited"  # 429
    OVERLOADED = "overloaded"  # 503/529, model not loaded / loading
    SERVER_ERROR = "server_error"  # other 5xx
    AUTH = "auth"  # 401/403, missing key
    NOT_FOUND = "not_found"  # 404 model
    EMPTY_RESPONSE = "empty_response"  # nothing left after stripping reasoning
    BAD_RESPONSE = "bad_response"  # malformed JSON/SSE
    CONTEXT_OVERFLOW = "context_overflow"  # prompt too long for the model
    BAD_REQUEST = "bad_request"  # other 4xx
    # Not a failure of the call: the provider's spending budget is reached, so the router
    # did not call it (always a skipped attempt).
    BUDGET_EXHAUSTED = "budget_exhausted"


class ModelError(Exception):
    """A classified failure of one model call.  ``str()`` never contains secrets."""

    def __init__(
        self,
        error_class: ErrorClass,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{error_class.value}: {message}")
        self.error_class = error_class
        self.message = message
        self.status = status
        self.retry_after = retry_after
        # What the server reported it used before failing (an answer that was all
        # reasoning, a refusal to continue); None when it said nothing.
        self.usage: Usage | None = None


@dataclass(frozen=True, slots=True)
class TextPart:
    text: str


@dataclass(frozen=True, slots=True)
class ImagePart:
    """A prepared image (already normalised by bridge.media)."""

    data: bytes
    mime: str  # image/jpeg, image/png, image/gif, image/webp

    def data_url(self) -> str:
        import base64

        return f"data:{self.mime};base64,{base64.b64encode(self.data).decode('ascii')}"


Part = TextPart | ImagePart


@dataclass(frozen=True, slots=True)
class Turn:
    role: Literal["user", "assistant"]
    parts: tuple[Part, ...]

    @classmethod
    def text(cls, role: Literal["user", "assistant"], text: str) -> Turn:
        return cls(role, (TextPart(text),))


@dataclass(frozen=True, slots=True)
class ModelRequest:
    """Instructions (system prompt) plus the conversation, oldest turn first."""

    instructions: str | None
    turns: tuple[Turn, ...]
    max_tokens: int | None = None  # None: the model's configured maxTokens
    temperature: float | None = None


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens one model call used, normalised across the APIs.

    ``input_tokens`` is the whole prompt, cached parts included (Anthropic reports them
    apart; its client adds them); ``cached_tokens`` the part read from the prompt cache,
    ``cache_write_tokens`` the part written to it (Anthropic's cache creation).
    ``reasoning_tokens`` is part of ``output_tokens``.  ``estimated``: the server reported
    nothing and these are Palaver's own estimate.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    estimated: bool = False

    @property
    def reported(self) -> bool:
        """True when there is a count at all (no real call uses zero tokens)."""
        return bool(self.input_tokens or self.output_tokens)

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True, slots=True)
class Completion:
    """What one client returns: only final text (reasoning already stripped)."""

    text: str
    usage: Usage = field(default_factory=Usage)
    finish_reason: str | None = None  # stop, length, content_filter, ...


@dataclass(frozen=True, slots=True)
class Attempt:
    model_ref: str
    error_class: ErrorClass | None  # None: this attempt answered
    duration_s: float
    message: str = ""
    skipped: bool = False  # cooling down (or its provider's budget reached), not called
    # What the call used, as the server reported it (None: not called, or no report).
    usage: Usage | None = None


@dataclass(frozen=True, slots=True)
class ModelReply:
    """The router's answer for a turn."""

    text: str
    model_ref: str  # the model that answered
    usage: Usage
    finish_reason: str | None
    attempts: tuple[Attempt, ...]

    @property
    def fell_back(self) -> bool:
        return len([a for a in self.attempts if not a.skipped]) > 1 or any(
            a.skipped for a in self.attempts
        )


class AllModelsFailed(Exception):
    """Every candidate failed; lists each attempt."""

    def __init__(self, attempts: tuple[Attempt, ...]) -> None:
        self.attempts = attempts
        lines = ", ".join(
            f"{a.model_ref}: {_skip_word(a) if a.skipped else a.error_class}"
            + (f" ({a.message})" if a.message else "")
            for a in attempts
        )
        super().__init__(f"all models failed: {lines}")

    @property
    def context_overflow(self) -> bool:
        """True when the turn stopped on a context overflow (compact and retry)."""
        return bool(self.attempts) and self.attempts[-1].error_class is ErrorClass.CONTEXT_OVERFLOW


def _skip_word(attempt: Attempt) -> str:
    if attempt.error_class is ErrorClass.BUDGET_EXHAUSTED:
        return "budget exhausted"
    return "cooling down"


class StreamListener(Protocol):
    """Told about a streamed answer as it arrives (issue 17's live previews).

    Synchronous on purpose: it must never slow down reading the stream (it only updates
    state and wakes a task).  ``text`` pieces have passed the reasoning filter, so their
    concatenation is always a prefix of the final text of that attempt.
    """

    def attempt(self, model_ref: str) -> None:
        """The router is calling this candidate now (a fallback restarts the answer)."""
        ...

    def thinking(self) -> None:
        """The model is producing (reasoning or held text), nothing showable yet."""
        ...

    def text(self, piece: str) -> None:
        """Answer text the final reply of this attempt will contain."""
        ...


class ModelClient(Protocol):
    """One wire API.  Implementations: responses.py, completions.py, anthropic.py."""

    async def complete(self, request: ModelRequest, *,
                       listener: StreamListener | None = None) -> Completion:
        """Stream a completion and return only the final text; raise ModelError.
        ``listener`` hears the filtered answer text as it streams."""
        ...


# What a router is asked to answer: a request, or a callable building one for each
# candidate (to fit its context window or vision support), possibly async.
RequestSource = (
    ModelRequest | Callable[["ResolvedModel"], ModelRequest | Awaitable[ModelRequest]]
)


class Router(Protocol):
    """What the conversation core and the composition root need from a model router.

    Implementation: :class:`bridge.models.router.ModelRouter`; tests pass fakes.
    """

    async def complete(self, candidates: Sequence[ResolvedModel | str],
                       request: RequestSource, *,
                       listener: StreamListener | None = None) -> ModelReply:
        """Answer ``request`` with the first candidate that succeeds (in order).

        ``listener.attempt(ref)`` before each call really made; the client gets the
        listener unless the model has ``preview: false``.

        A candidate is resolved already (the conversation core resolves a turn's
        candidates once) or a ref the router resolves against the live config.

        Raises :class:`AllModelsFailed` listing every attempt.
        """
        ...

    async def aclose(self) -> None:
        """Release what the router holds (its HTTP session)."""
        ...
