"""Logging set-up: text or one JSON object per line, and secrets redacted from every record.

``setup_logging(level, fmt)`` installs one handler on the root logger.  Its filter
(:class:`RedactingFilter`) rewrites each record before any formatter sees it: Telegram bot
tokens (also inside ``/bot<token>/`` URLs), ``sk-…`` keys, ``Bearer …`` credentials,
``x-api-key``/``api_key`` values and every secret registered at runtime with
:func:`register_secret` are replaced by ``[REDACTED]`` in the message, its arguments, the
exception text and ``extra`` fields (the rules are :mod:`bridge.secrets`).

Structured context goes in ``extra``: ``log.info("turn answered", extra={"session": key,
"model": ref, "attempts": 2, "duration_ms": 812})`` prints ``... session=… model=…`` in text
format and separate keys in JSON format.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import traceback
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any

# The secret rules and the marker live in bridge.secrets; these names stay importable
# from here because every log user reaches for them with the handler.
from bridge.secrets import REDACTED, clear_secrets, redact, register_secret

if TYPE_CHECKING:
    from bridge.models.base import Attempt, ModelReply

__all__ = [
    "NOISY_LOGGERS",
    "REDACTED",
    "JsonFormatter",
    "RedactingFilter",
    "TextFormatter",
    "clear_secrets",
    "redact",
    "register_secret",
    "set_log_flags",
    "setup_logging",
    "setup_logging_with_flags",
    "turn_fields",
]

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR, "critical": logging.CRITICAL}

# Libraries that log request URLs (the Telegram token is part of every Bot API URL) or one
# line per request.  Quiet unless the operator asked for debug.
NOISY_LOGGERS = ("httpx", "httpcore", "aiohttp.access", "telegram.request", "hpack")


# --------------------------------------------------------------------------- records

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None))
) | {"message", "asctime", "taskName"}


def record_extras(record: logging.LogRecord) -> dict[str, Any]:
    """The ``extra=`` fields of ``record`` (names that are not standard LogRecord attributes)."""
    return {
        key: value
        for key, value in record.__dict__.items()
        if key not in _STANDARD_ATTRS and not key.startswith("_")
    }


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, list | tuple):
        return [_redact_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _redact_value(v) for k, v in value.items()}
    return redact(str(value))


# Line breaks and other control characters in a log's string arguments (a sender's name,
# a chat title) would start a forged line; they are written escaped, in both formats.  Tab
# stays, and so do the line breaks of the message's own format and of exceptions (a config
# error's lines, a traceback).
_LINE_BREAKERS = re.compile("[\x00-\x08\x0a-\x1f\x7f\x85\u2028\u2029]")


def _escape_control(match: re.Match[str]) -> str:
    char = match.group()
    if char == "\n":
        return "\\n"
    if char == "\r":
        return "\\r"
    return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"


def _escape_arg(value: object) -> object:
    if isinstance(value, str) and _LINE_BREAKERS.search(value):
        return _LINE_BREAKERS.sub(_escape_control, value)
    return value


def _escape_args(args: Any) -> Any:
    """%-arguments with the control characters of their strings escaped."""
    if isinstance(args, tuple):
        return tuple(_escape_arg(a) for a in args)
    if isinstance(args, dict):
        return {k: _escape_arg(a) for k, a in args.items()}
    return args


class RedactingFilter(logging.Filter):
    """Rewrite a record so that no secret survives in msg, args, exception or extras.

    The message is formatted once (``getMessage()``) and stored back with ``args=None``
    so that an argument holding a secret cannot be re-inserted later.  Control characters
    in string arguments are escaped first (``\\n``), so a sender's name cannot start a
    log line of its own; the message's own line breaks and tracebacks keep theirs.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        record.args = _escape_args(record.args)
        try:
            message = record.getMessage()
        except Exception:  # a broken %-format must not lose the record
            message = f"{record.msg!r} % {record.args!r}"
        record.msg = redact(message)
        record.args = None
        if record.exc_info and record.exc_info[0] is not None:
            exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
            record.exc_text = redact(exc_text)
            # exc_text now carries the (redacted) traceback; formatters use it as is.
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        for key, value in record_extras(record).items():
            setattr(record, key, _redact_value(value))
        return True


# --------------------------------------------------------------------------- formatters


# Whitespace (re's \s is str.isspace), a quote or "=": the value is printed as JSON.
_NEEDS_QUOTES = re.compile(r'[\s"=]')


def _format_extra_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if not text or _NEEDS_QUOTES.search(text) is not None:
        return json.dumps(text)
    return text


class TextFormatter(logging.Formatter):
    """``2025-01-02 10:00:00,123 INFO bridge.x: message key=value …`` (extras appended).

    """

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = record_extras(record)
        if extras:
            # A field the message already spells out (``session=...``) is not repeated.
            message = record.getMessage()
            tail = " ".join(f"{k}={_format_extra_value(v)}" for k, v in extras.items()
                            if f"{k}=" not in message)
            head, sep, rest = line.partition("\n")  # extras belong on the message line
            line = f"{head} {tail}{sep}{rest}"
        return redact(line)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, extras, and exc when present."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, UTC)
        payload: dict[str, Any] = {
            "ts": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        for key, value in record_extras(record).items():
            payload.setdefault(key, _redact_value(value))
        if record.exc_info and record.exc_info[0] is not None:
            payload["exc"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            payload["exc"] = redact(record.exc_text)
        if record.stack_info:
            payload["stack"] = redact(record.stack_info)
        # U+2028/U+2029 are valid inside JSON strings but split lines for most readers.
        return (json.dumps(payload, ensure_ascii=False, default=str)
                .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


# --------------------------------------------------------------------------- set-up


class _PalaverHandler(logging.StreamHandler):
    """The handler setup_logging installs (recognised and replaced on a second call)."""


def parse_level(level: str | int) -> int:
    """``"info"`` (any case) or a logging constant -> the logging constant; ValueError else."""
    if isinstance(level, int):
        return level
    try:
        return _LEVELS[level.strip().lower()]
    except KeyError:
        raise ValueError(
            f"unknown log level {level!r} (expected one of: {', '.join(_LEVELS)})"
        ) from None


def setup_logging(level: str = "info", fmt: str = "text", *, stream: IO[str] | None = None) -> None:
    """Configure the root logger: ``fmt`` is ``text`` or ``json``; secrets always redacted.

    Safe to call again (hot reload, ``--log-format`` after the config): the previous
    Palaver handler is replaced.  Plain ``StreamHandler``s installed by ``basicConfig`` —
    neonize calls it at import time — are removed so no unredacted copy of a record is
    printed; other handlers (pytest's capture, a file handler an operator added) stay.
    """
    numeric = parse_level(level)
    if fmt not in ("text", "json"):
        raise ValueError(f"unknown log format {fmt!r} (expected text or json)")
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _PalaverHandler) or type(handler) is logging.StreamHandler:
            root.removeHandler(handler)
    handler = _PalaverHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RedactingFilter())
    root.addHandler(handler)
    root.setLevel(numeric)
    for name in NOISY_LOGGERS:
        # At debug the operator wants the request lines (still redacted), but not the
        # byte-level traces of httpcore/hpack; otherwise warnings only.
        if numeric > logging.DEBUG:
            quiet = max(numeric, logging.WARNING)
        else:
            quiet = logging.INFO if name in ("httpcore", "hpack") else logging.NOTSET
        logging.getLogger(name).setLevel(quiet)


# --log-level / --log-format given to this process (None: not given).  They outrank the
# config file, also when a reload re-applies its logging section.
_flags: dict[str, str | None] = {"level": None, "format": None}


def set_log_flags(level: str | None, fmt: str | None) -> None:
    """Remember this process's ``--log-level`` / ``--log-format`` (None: not given)."""
    _flags["level"], _flags["format"] = level, fmt


def setup_logging_with_flags(level: str, fmt: str, *, stream: IO[str] | None = None) -> None:
    """:func:`setup_logging` with the config's ``level`` and ``fmt``, except where a
    command-line flag (:func:`set_log_flags`) outranks them."""
    setup_logging(_flags["level"] or level, _flags["format"] or fmt, stream=stream)


# --------------------------------------------------------------------------- turn line


def turn_fields(
    *,
    session: str,
    outcome: str,
    duration_s: float,
    reply: ModelReply | None = None,
    attempts: Iterable[Attempt] = (),
) -> dict[str, Any]:
    """The ``extra`` for the one log line per turn (no message text in it).

    ``log.info("turn %s", outcome, extra=turn_fields(session=str(key), outcome=outcome,
    duration_s=elapsed, reply=reply))`` gives ``session``, ``outcome``, ``model`` (the
    one that answered, or None), ``attempts`` (how many were made), ``duration_ms`` and
    ``tried`` (``"ref:class:ms"`` per attempt, class ``ok`` or ``skipped`` when not an
    error).
    """
    tried = tuple(reply.attempts if reply is not None else attempts)
    parts = []
    for a in tried:
        cls = "skipped" if a.skipped else ("ok" if a.error_class is None else str(a.error_class))
        parts.append(f"{a.model_ref}:{cls}:{round(a.duration_s * 1000)}")
    return {
        "session": session,
        "outcome": outcome,
        "model": reply.model_ref if reply is not None else None,
        "attempts": len([a for a in tried if not a.skipped]),
        "duration_ms": round(duration_s * 1000, 1),
        "tried": ",".join(parts),
    }
