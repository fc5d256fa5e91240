"""Every model failure is classified here, and only here, into an :class:`ErrorClass`.

HTTP statuses and error bodies, error events inside a stream, and transport exceptions all
go through these functions, so the router can decide from the class alone.  Messages are
redacted: API keys and ``Authorization`` values never leave this module in an error.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import os
import re
import time
from collections.abc import Iterable, Mapping
from typing import Any

import aiohttp

from bridge.models.base import ErrorClass, ModelError
from bridge.secrets import redact

# Longest server message kept in an error (bodies can be whole HTML pages).
_MAX_MESSAGE = 300
# Retry-After values beyond this are capped (a bogus header must not bench a model for days).
MAX_RETRY_AFTER_S = 3600.0

_CONTEXT_RE = re.compile(
    r"context_length_exceeded|maximum context length|prompt is too long"
    r"|exceed_context_size|exceeds the available context size|context length exceeded"
    r"|exceeds? (the )?(model'?s? )?(maximum )?context (length|window|size)"
    r"|context window (exceeded|is too small)|larger than the context window"
    r"|too many tokens in (the )?prompt|input is too long|reduce the length of the messages",
    re.IGNORECASE,
)
# A local server that is up but has no (or not this) model in memory: LM Studio answers
# 400 "No models loaded. Please load a model …", "Model is unloaded", 'model "x" is not
# loaded'; llama.cpp 503 "Loading model"; Ollama/vLLM "model is loading".  Overloaded, so
# the router falls through to the next candidate.
_LOADING_RE = re.compile(
    r"\bmodel (is )?(not loaded|unloaded|loading|still loading|currently loading"
    r"|being loaded)"
    r"|\bmodel\b[^\n]{0,80}?\b(is|was|has been) (not |un)loaded"
    r"|\bmodel\b[^\n]{0,80}?\bis (still |currently )?loading"
    r"|\bloading (the )?model|model not yet loaded|\bno models? (is |are )?(currently )?loaded"
    r"|unavailable_error",
    re.IGNORECASE,
)

# Codes/types found in error bodies and stream error events.
_CODE_CLASSES: dict[str, ErrorClass] = {
    "context_length_exceeded": ErrorClass.CONTEXT_OVERFLOW,
    "exceed_context_size_error": ErrorClass.CONTEXT_OVERFLOW,
    "model_context_window_exceeded": ErrorClass.CONTEXT_OVERFLOW,
    "rate_limit_exceeded": ErrorClass.RATE_LIMITED,
    "rate_limit_error": ErrorClass.RATE_LIMITED,
    "insufficient_quota": ErrorClass.RATE_LIMITED,
    "overloaded_error": ErrorClass.OVERLOADED,
    "server_is_overloaded": ErrorClass.OVERLOADED,
    "slow_down": ErrorClass.OVERLOADED,
    "unavailable_error": ErrorClass.OVERLOADED,
    "server_error": ErrorClass.SERVER_ERROR,
    "api_error": ErrorClass.SERVER_ERROR,
    "internal_error": ErrorClass.SERVER_ERROR,
    "authentication_error": ErrorClass.AUTH,
    "permission_error": ErrorClass.AUTH,
    "invalid_api_key": ErrorClass.AUTH,
    "not_found_error": ErrorClass.NOT_FOUND,
    "model_not_found": ErrorClass.NOT_FOUND,
    "invalid_request_error": ErrorClass.BAD_REQUEST,
    "invalid_prompt": ErrorClass.BAD_REQUEST,
    "request_too_large": ErrorClass.BAD_REQUEST,
}


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 1] + "…"


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` / ``Retry-After`` (seconds or HTTP date)."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            seconds = float(ms) / 1000.0
        except ValueError:
            pass
        else:
            if not math.isnan(seconds):
                return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)
    value = headers.get("retry-after")
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return None if math.isnan(seconds) else min(max(seconds, 0.0), MAX_RETRY_AFTER_S)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    now = time.time() if now is None else now
    return min(max(when.timestamp() - now, 0.0), MAX_RETRY_AFTER_S)


def _status_like(code: Any) -> int | None:
    """``code`` as an HTTP status when it is one (llama.cpp sends ints, LiteLLM "500")."""
    if isinstance(code, bool):
        return None
    if isinstance(code, str) and code.isascii() and code.isdigit():
        code = int(code)
    return code if isinstance(code, int) and 100 <= code <= 599 else None


def error_fields(payload: Any) -> tuple[str | None, str]:
    """(code or type, message) from any of the error shapes the APIs use.

    A textual ``code`` wins; a numeric one (llama.cpp's int ``code``, LiteLLM's ``"500"``)
    says less than the ``type`` beside it, so the type is taken then (see
    :func:`error_status` for the number).
    """
    if not isinstance(payload, dict):
        return None, str(payload) if payload is not None else ""
    err = payload.get("error", payload)
    if isinstance(err, str):
        return payload.get("code") or payload.get("type"), err
    if not isinstance(err, dict):
        return None, ""
    code = err.get("code")
    etype = err.get("type")
    if _status_like(code) is not None:  # a number: error_status() has it
        code = etype if isinstance(etype, str) and etype else None
    elif not (isinstance(code, str) and code):
        if isinstance(etype, str) and etype:
            code = etype
        else:
            code = str(code) if code not in (None, "") else None
    if code == "error":  # Anthropic's envelope type, not the error's
        code = None
    message = err.get("message") or err.get("detail") or ""
    return code, message if isinstance(message, str) else json.dumps(message)


def error_status(payload: Any) -> int | None:
    """The HTTP-like status an error object carries in its ``code`` (None if none)."""
    err = payload.get("error", payload) if isinstance(payload, dict) else None
    return _status_like(err.get("code")) if isinstance(err, dict) else None


def is_error_event(data: Any) -> bool:
    """True for a stream event that is an error: ``type`` "error", or a top-level
    ``error`` and no ``type`` at all (llama.cpp, vLLM and LiteLLM write
    ``data: {"error": {…}}`` into a 200 stream, with no ``event:`` line)."""
    if not isinstance(data, dict):
        return False
    return data.get("type") == "error" or (bool(data.get("error")) and not data.get("type"))


def classify_event(data: Any, *, secrets: Iterable[str] = ()) -> ModelError:
    """Classify an error event inside a 200 stream like an HTTP error: by its code or
    type, its message, and the status its numeric ``code`` names (500, 400, 503, …)."""
    code, message = error_fields(data)
    return classify_payload(code, message, status=error_status(data), secrets=secrets,
                            in_stream=True)


def empty_answer(detail: str, *, produced: bool, output_tokens: int,
                 removed: str = "reasoning") -> ModelError:
    """EMPTY_RESPONSE for an answer without final text.

    ``produced``: the server sent any output at all (text, reasoning, a refusal);
    ``output_tokens``: what its usage says (0 when absent).  Nothing sent and no token
    counted means the server failed without saying so (LiteLLM's bridge turns a backend
    stream that broke off into such a "completed" response); output that was all
    reasoning is the model's doing.
    """
    if not produced and output_tokens == 0:
        return ModelError(
            ErrorClass.EMPTY_RESPONSE,
            f"the server produced no output at all ({detail}, 0 output tokens): check its "
            "log; a chat template failing on the request is a common cause")
    return ModelError(ErrorClass.EMPTY_RESPONSE,
                      f"no text left after removing {removed} ({detail})")


def classify_payload(
    code: str | None,
    message: str,
    *,
    status: int | None = None,
    retry_after: float | None = None,
    secrets: Iterable[str] = (),
    in_stream: bool = False,
) -> ModelError:
    """Classify an error given as code/type + message (+ HTTP status when there is one).

    ``in_stream``: the status comes from an error event inside a 200 stream; it classifies
    the same way but is not the answer's HTTP status (``ModelError.status`` stays None).
    """
    secrets = tuple(secrets)
    text = f"{code or ''} {message}"
    cls: ErrorClass | None = None
    if _CONTEXT_RE.search(text):
        cls = ErrorClass.CONTEXT_OVERFLOW
    elif _LOADING_RE.search(text):
        cls = ErrorClass.OVERLOADED
    elif status is not None:
        cls = _class_for_status(status)
        by_code = _CODE_CLASSES.get((code or "").lower())
        if cls is ErrorClass.BAD_REQUEST and by_code not in (None, ErrorClass.SERVER_ERROR):
            cls = by_code  # e.g. a 400 carrying rate_limit_exceeded from a proxy
    elif code is not None:
        cls = _CODE_CLASSES.get(code.lower())
    if cls is None:
        cls = ErrorClass.SERVER_ERROR  # an error event we don't know: the server failed
    if in_stream:
        label = "error event" + (f" ({status})" if status is not None else "")
    else:
        label = f"HTTP {status}" if status is not None else "error event"
    detail = _clip(redact(f"{code}: {message}" if code else message or "(no message)", secrets))
    return ModelError(cls, f"{label}: {detail}", status=None if in_stream else status,
                      retry_after=retry_after)


def _class_for_status(status: int) -> ErrorClass:
    if status < 400:
        return ErrorClass.BAD_RESPONSE  # a redirect: baseUrl is probably wrong
    if status == 429:
        return ErrorClass.RATE_LIMITED
    if status in (503, 529):
        return ErrorClass.OVERLOADED
    if status >= 500:
        return ErrorClass.SERVER_ERROR
    if status in (401, 402, 403):  # 402: out of credits (OpenRouter) needs the operator
        return ErrorClass.AUTH
    if status == 408:  # a proxy gave up waiting for the model
        return ErrorClass.TIMEOUT
    if status in (404, 405):  # 405: the server has no such endpoint
        return ErrorClass.NOT_FOUND
    if status == 413:
        return ErrorClass.CONTEXT_OVERFLOW
    return ErrorClass.BAD_REQUEST


def classify_http(
    status: int,
    body: bytes,
    headers: Mapping[str, str],
    *,
    secrets: Iterable[str] = (),
) -> ModelError:
    """Classify a non-2xx HTTP answer from its status, body and headers."""
    text = body.decode("utf-8", "replace")
    try:
        code, message = error_fields(json.loads(text))
    except ValueError:
        code, message = None, text
    retry_after = parse_retry_after(headers) if status in (429, 503, 529) else None
    return classify_payload(code, message, status=status, retry_after=retry_after,
                            secrets=secrets)


def classify_exception(exc: BaseException, *, phase: str = "request") -> ModelError:
    """Classify a transport exception (never includes request headers)."""
    if isinstance(exc, ModelError):
        return exc
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return ModelError(ErrorClass.TIMEOUT, "connect timeout")
    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return ModelError(ErrorClass.TIMEOUT, f"timeout during {phase}")
    if isinstance(exc, aiohttp.InvalidURL | aiohttp.NonHttpUrlClientError):
        # A broken baseUrl is this provider's problem, not the request's: fall through.
        return ModelError(ErrorClass.UNREACHABLE,
                          "invalid baseUrl (expected http(s)://host[:port]/path)")
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return ModelError(ErrorClass.UNREACHABLE, f"DNS lookup failed for {_host(exc)}")
    if isinstance(exc, aiohttp.ClientConnectorError):
        err = exc.os_error
        reason = (os.strerror(err.errno) if err.errno else err.strerror) or type(err).__name__
        return ModelError(ErrorClass.UNREACHABLE, f"cannot connect to {_host(exc)}: {reason}")
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return ModelError(ErrorClass.UNREACHABLE, f"server disconnected during {phase}")
    if isinstance(exc, aiohttp.ClientPayloadError):
        return ModelError(ErrorClass.UNREACHABLE, f"connection lost during {phase}")
    if isinstance(exc, (aiohttp.ClientOSError, ConnectionError, OSError)):
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        return ModelError(ErrorClass.UNREACHABLE, f"connection error during {phase}: {reason}")
    if isinstance(exc, aiohttp.ClientResponseError):
        return ModelError(ErrorClass.BAD_RESPONSE, f"malformed HTTP response ({exc.status})")
    if isinstance(exc, aiohttp.ClientError):
        return ModelError(ErrorClass.BAD_RESPONSE, f"{type(exc).__name__} during {phase}")
    if isinstance(exc, (ValueError, KeyError, TypeError)):
        return ModelError(ErrorClass.BAD_RESPONSE, f"malformed response ({type(exc).__name__})")
    return ModelError(ErrorClass.BAD_RESPONSE, f"unexpected {type(exc).__name__} during {phase}")


def _host(exc: aiohttp.ClientConnectorError) -> str:
    return f"{exc.host}:{exc.port}"
