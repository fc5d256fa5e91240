"""An aiohttp transport for python-telegram-bot (a :class:`telegram.request.BaseRequest`).

Why not PTB's default ``HTTPXRequest``: a Bot API call through httpx costs about 1.2 ms
more CPU than the same POST through aiohttp (bench/README.md), and httpcore 1.0.9 leaks
a pool slot when a request is cancelled in flight (encode/httpcore#1093).  aiohttp is
already a dependency (model clients, webhook server).

Behaviour matches ``HTTPXRequest`` (PTB 22.8): parameters go out form-encoded, or as
``multipart/form-data`` when the request carries files (:class:`telegram.InputFile`
uploads, bytes or file handles); the answer's status and body go back to
:class:`~telegram.request.BaseRequest`, which turns non-2xx answers into PTB's errors.
Timeouts become :class:`telegram.error.TimedOut`, other transport failures
:class:`telegram.error.NetworkError` -- with refinements the channel's send retries rely
on: failures that happen before anything was sent (DNS, connection refused, connect or
pool timeout) are :class:`ConnectFailed` / :class:`ConnectTimedOut` (both
:class:`NotSent`), 5xx answers are :class:`ServerError` carrying the status, and a 429
is :class:`RateLimited` (a ``RetryAfter`` that does not trigger PTB 22's deprecation
warning about ``retry_after``).

:func:`post` makes one Bot API call through a bot's transport without building PTB
objects from the answer (the channel's sendMessage and sendChatAction); it is the one
place that uses PTB's private ``RequestParameter``.

The bot token is part of every Bot API URL, so no message raised here contains the URL
(the token is replaced by ``<token>`` wherever it could appear) and aiohttp's own
exceptions are never chained.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Mapping
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import aiohttp
from telegram import InputFile
from telegram._utils.defaultvalue import DefaultValue
from telegram._utils.types import ODVInput
from telegram.error import NetworkError, RetryAfter, TelegramError, TimedOut
from telegram.request import BaseRequest, RequestData
from telegram.request._requestparameter import RequestParameter

from bridge.ports import NotSent
from channels.telegram.translate import period_seconds

if TYPE_CHECKING:
    from telegram import Bot

__all__ = ["AiohttpRequest", "ConnectFailed", "ConnectTimedOut", "NotSent", "RateLimited",
           "ServerError", "post", "retry_after_seconds"]

# "/bot<token>/<method>" and "/file/bot<token>/<path>": the token segment of a URL.
_TOKEN_SEGMENT = re.compile(r"/bot([^/]+)/")


class ConnectFailed(NetworkError, NotSent):
    """No connection could be made (DNS, refused, TLS, proxy): nothing was sent."""


class ConnectTimedOut(TimedOut, NotSent):
    """Connecting (or waiting for a free pooled connection) timed out: nothing was sent."""


class RateLimited(RetryAfter):
    """429 with ``parameters.retry_after``: a :class:`telegram.error.RetryAfter` whose wait
    is also ``seconds`` (a float).

    PTB 22 warns (PTBDeprecationWarning) whenever ``RetryAfter.retry_after`` is read
    unless $PTB_TIMEDELTA is set -- including inside its own constructor -- so this one
    is built without reading it; read ``seconds``.
    """

    __slots__ = ("seconds",)

    def __init__(self, seconds: float) -> None:
        self.seconds = float(seconds)
        self._retry_after = dt.timedelta(seconds=self.seconds)
        TelegramError.__init__(
            self, f"Flood control exceeded. Retry in {self.seconds:g} seconds")


class ServerError(NetworkError):
    """The server answered 5xx; ``status`` is the HTTP status code."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def retry_after_seconds(exc: RetryAfter) -> float:
    """How long a :class:`RetryAfter` asks us to wait, in seconds."""
    if isinstance(exc, RateLimited):
        return exc.seconds or 1.0
    return period_seconds(exc.retry_after) or 1.0


async def post(bot: Bot, method: str, params: Mapping[str, object], *,
               read_timeout: ODVInput[float] = BaseRequest.DEFAULT_NONE) -> Any:
    """One Bot API call through ``bot``'s transport; returns the answer's ``result`` JSON.

    PTB's error mapping applies (``BadRequest``, ``RetryAfter``...), but no PTB object
    is built from the answer: cheaper, and the caller reads only what it needs.
    """
    data = RequestData([
        # A file (sendDocument) goes through PTB's own mapping: a multipart part.
        RequestParameter.from_input(name, value) if isinstance(value, InputFile)
        else RequestParameter(name, value, None)
        for name, value in params.items()])
    return await bot.request.post(f"{bot.base_url}/{method}", data, read_timeout=read_timeout)


def _redact(text: str, url: str) -> str:
    """``text`` without the token segment of ``url`` (and without ``url`` itself)."""
    match = _TOKEN_SEGMENT.search(url)
    if match:
        text = text.replace(match.group(1), "<token>")
    return text


class AiohttpRequest(BaseRequest):
    """PTB's transport on one :class:`aiohttp.ClientSession` (a pool of keep-alive connections).

    Timeouts (seconds, ``None`` = no limit) are the defaults for calls that do not pass
    their own: ``connect_timeout`` for the TCP/TLS connect, ``pool_timeout`` for waiting
    for a free connection when all ``connection_pool_size`` are busy, ``read_timeout``
    for each wait for data once the request is written (PTB adds the long-poll ``timeout``
    to it for ``getUpdates``).  ``write_timeout`` (``media_write_timeout`` by default for
    requests with files): aiohttp has no per-write timeout, so it bounds only uploads, as
    part of a limit on the whole request (the sum of the four).
    """

    __slots__ = (
        "_connect_timeout",
        "_keepalive_timeout",
        "_media_write_timeout",
        "_pool_size",
        "_pool_timeout",
        "_read_timeout",
        "_session",
        "_timeouts",
        "_write_timeout",
    )

    def __init__(
        self,
        *,
        connection_pool_size: int = 16,
        read_timeout: float | None = 5.0,
        write_timeout: float | None = 5.0,
        connect_timeout: float | None = 5.0,
        pool_timeout: float | None = 1.0,
        media_write_timeout: float | None = 20.0,
        keepalive_timeout: float = 15.0,
    ) -> None:
        if connection_pool_size < 1:
            raise ValueError("connection_pool_size must be at least 1")
        self._pool_size = connection_pool_size
        self._read_timeout = read_timeout
        self._write_timeout = write_timeout
        self._connect_timeout = connect_timeout
        self._pool_timeout = pool_timeout
        self._media_write_timeout = media_write_timeout
        self._keepalive_timeout = keepalive_timeout
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[tuple, aiohttp.ClientTimeout] = {}

    @property
    def read_timeout(self) -> float | None:
        """The default read timeout in seconds (see :attr:`BaseRequest.read_timeout`)."""
        return self._read_timeout

    async def initialize(self) -> None:
        """Open the session (idempotent; again after :meth:`shutdown`)."""
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._pool_size, limit_per_host=0,
                                             keepalive_timeout=self._keepalive_timeout)
            # trust_env: HTTP(S)_PROXY like httpx, which PTB's default transport uses.
            self._session = aiohttp.ClientSession(
                connector=connector, trust_env=True, raise_for_status=False,
                headers={"User-Agent": self.USER_AGENT})

    async def shutdown(self) -> None:
        """Close the session and its connections (idempotent)."""
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()

    def _timeout(self, read: float | None, write: float | None, connect: float | None,
                 pool: float | None, upload: bool) -> aiohttp.ClientTimeout:
        key = (read, write, connect, pool, upload)
        timeout = self._timeouts.get(key)
        if timeout is None:
            # aiohttp's ``connect`` covers waiting for a pooled connection plus making one;
            # ``sock_connect`` the connect alone; ``sock_read`` starts once the body is out
            # and bounds each wait for data (a long download keeps going while data flows).
            # No per-write timeout exists: an upload is bounded as a whole instead.
            acquire = None if connect is None or pool is None else connect + pool
            parts = [p for p in (read, write, connect, pool) if p is not None]
            total = sum(parts) if upload and len(parts) == 4 else None
            timeout = aiohttp.ClientTimeout(total=total, connect=acquire, sock_connect=connect,
                                            sock_read=read)
            if len(self._timeouts) < 64:
                self._timeouts[key] = timeout
        return timeout

    @staticmethod
    def _body(request_data: RequestData | None) -> tuple[Any, dict[str, str]]:
        """The request body and its extra headers, as HTTPXRequest would send them."""
        if request_data is None:
            return None, {}
        params = request_data.json_parameters
        if request_data.contains_files:
            # quote_fields=False: names and filenames in raw UTF-8, as httpx (PTB's default)
            # and browsers send them, not percent-encoded.
            form = aiohttp.FormData(quote_fields=False, default_to_multipart=True)
            for name, value in params.items():
                form.add_field(name, value)
            for name, (filename, content, mimetype) in request_data.multipart_data.items():
                form.add_field(name, content, filename=filename, content_type=mimetype)
            return form, {}
        if not params:
            return None, {}
        return (urlencode(params).encode("ascii"),
                {"Content-Type": "application/x-www-form-urlencoded"})

    async def do_request(
        self,
        url: str,
        method: str,
        request_data: RequestData | None = None,
        read_timeout: ODVInput[float] = BaseRequest.DEFAULT_NONE,
        write_timeout: ODVInput[float] = BaseRequest.DEFAULT_NONE,
        connect_timeout: ODVInput[float] = BaseRequest.DEFAULT_NONE,
        pool_timeout: ODVInput[float] = BaseRequest.DEFAULT_NONE,
    ) -> tuple[int, bytes]:
        """One HTTP request; returns ``(status, body)`` (see :meth:`BaseRequest.do_request`)."""
        session = self._session
        if session is None or session.closed:
            raise RuntimeError("This AiohttpRequest is not initialized!")
        files = request_data is not None and request_data.contains_files
        if isinstance(read_timeout, DefaultValue):
            read_timeout = self._read_timeout
        if isinstance(connect_timeout, DefaultValue):
            connect_timeout = self._connect_timeout
        if isinstance(pool_timeout, DefaultValue):
            pool_timeout = self._pool_timeout
        if isinstance(write_timeout, DefaultValue):
            write_timeout = self._media_write_timeout if files else self._write_timeout
        timeout = self._timeout(read_timeout, write_timeout, connect_timeout, pool_timeout,
                                files)
        try:
            body, headers = self._body(request_data)
            async with session.request(method, url, data=body, headers=headers,
                                       timeout=timeout, allow_redirects=False) as response:
                payload = await response.read()
                status = response.status
        except aiohttp.ConnectionTimeoutError:
            raise ConnectTimedOut(
                "Timed out connecting to the Bot API (or waiting for a free connection); "
                "the request was not sent") from None
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise TimedOut("Timed out waiting for the Bot API's answer") from None
        except aiohttp.ClientConnectorError as exc:
            # host:port and the OS error; never the URL.
            os_error = exc.os_error
            reason = (os_error.strerror or type(os_error).__name__) if os_error else ""
            raise ConnectFailed(_redact(
                f"aiohttp.{type(exc).__name__}: cannot connect to {exc.host}:{exc.port}"
                + (f" ({reason})" if reason else ""), url)) from None
        except aiohttp.ClientError as exc:
            raise NetworkError(_redact(_describe(exc), url)) from None
        except (OSError, ValueError) as exc:  # e.g. an unreadable upload, a bad URL
            raise NetworkError(_redact(f"{type(exc).__name__}: {exc}", url)) from None
        if status >= 500:
            raise ServerError(_redact(_server_message(status, payload), url), status)
        if status == 429:
            seconds = _retry_after(payload)
            if seconds is not None:
                raise RateLimited(seconds)
        return status, payload


def _describe(exc: aiohttp.ClientError) -> str:
    """A short description of an aiohttp failure that names no URL."""
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "aiohttp.ServerDisconnectedError: the server closed the connection"
    if isinstance(exc, aiohttp.ClientOSError):
        return f"aiohttp.ClientOSError: {exc.strerror or 'connection error'}"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "aiohttp.ClientPayloadError: the answer was cut short"
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"aiohttp.{type(exc).__name__}: {exc.status} {exc.message}"
    return f"aiohttp.{type(exc).__name__}"


def _retry_after(payload: bytes) -> float | None:
    """``parameters.retry_after`` of a Bot API error answer, if any."""
    try:
        data = json.loads(payload.decode("utf-8", "replace"))
        value = data["parameters"]["retry_after"]
        return float(value) if value else None
    except (ValueError, TypeError, KeyError):
        return None


def _server_message(status: int, payload: bytes) -> str:
    """PTB's wording for a 5xx answer: the Bot API's description, else the status."""
    try:
        data = json.loads(payload.decode("utf-8", "replace"))
        description = data.get("description") if isinstance(data, dict) else None
    except ValueError:
        description = None
    if description:
        return str(description)
    try:
        return f"{HTTPStatus(status).phrase} ({status})"
    except ValueError:
        return f"Unknown HTTPError ({status})"
