"""Telegram channel (python-telegram-bot 22): Updates <-> envelopes.

The adapter only translates.  An incoming ``Message`` becomes an
:class:`~bridge.envelope.Inbound` (replies as :class:`~bridge.envelope.Quoted`, the
``mentioned`` flag computed; media downloaded into the media store only once
``sink.admits`` says the core will answer it); an
:class:`~bridge.envelope.Outbound` becomes ``sendMessage`` calls (Markdown rendered to
Telegram HTML and chunked by :mod:`bridge.formatting`).  Access policy, ordering across
sessions and storage are the core's.

HTTP goes through :class:`channels.telegram.http.AiohttpRequest` (cheaper than PTB's httpx
transport, and it tells "nothing was sent" failures apart, so a send is retried only
when it cannot show up twice).

Lifecycle: we own the event loop, so PTB's ``Application`` runs without its ``Updater``:
``initialize`` (the ``getMe`` that checks the token), then either our own ``getUpdates``
loop or our own small aiohttp webhook server; ``stop`` undoes it in reverse.  Both hand
one update at a time to the sink and confirm it to Telegram (the next ``getUpdates``
offset, or the webhook's 200) only after ``sink.accept`` returned -- i.e. after the core
stored it -- so a crash at any moment loses no update; the store drops the redelivered
duplicates.  A token Telegram rejects (at start or later while polling) stops the channel
for good (health says why); network failures are retried with a jittered, capped backoff.

Message ids: Telegram numbers messages per chat, so the envelope's ``message_id`` is
``"<chat_id>:<message_id>"`` (unique per bot); :meth:`TelegramChannel.send` returns ids in
the same form and accepts either form in ``Outbound.reply_to_message_id``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import hmac
import html
import json
import logging
import os
import random
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from telegram import (
    Bot,
    BotCommand,
    Message,
    MessageEntity,
    Update,
)
from telegram.constants import ChatAction, ChatType, ParseMode
from telegram.error import (
    BadRequest,
    ChatMigrated,
    Conflict,
    Forbidden,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TelegramError,
)
from telegram.ext import Application, ApplicationBuilder
from telegram.request import RequestData
from telegram.request._requestparameter import RequestParameter

from bridge.config.schema import TelegramConfig
from bridge.envelope import (
    ChatAddress,
    ChatKind,
    Inbound,
    MediaKind,
    MediaRef,
    Outbound,
    Quoted,
)
from bridge.formatting import chunk_text, render, to_plain
from bridge.logs import RedactingFilter, register_secret
from bridge.media import MediaStore
from bridge.ports import Capabilities, Channel, ChannelHealth, InboundSink, Markup, SendError
from channels.telegram.http import AiohttpRequest, NotSent, RateLimited, ServerError

log = logging.getLogger(__name__)

TOKEN_RE = re.compile(r"^\d+:[A-Za-z0-9_-]{30,}$")
_TELEGRAM_SERVICE_ID = 777000  # "Telegram": posts forwarded from linked channels, notices

# The command menu (setMyCommands); the core implements them.
COMMANDS = (
    ("new", "Start a new conversation"),
    ("reset", "Start over (same as /new)"),
    ("model", "Show or switch this chat's model"),
    ("models", "List the models you can use"),
    ("status", "Session, model and usage"),
    ("help", "What this bot can do"),
)

# Loggers that may print Bot API URLs (the token is part of every URL).
_GUARDED_LOGGERS = ("httpx", "httpcore", "telegram", "telegram.ext", "telegram.request",
                    "aiohttp", "aiohttp.client")
_ALLOWED_UPDATES = ["message"]
_FIX_TOKEN = "Check channels.telegram.botToken / tokenFile / $TELEGRAM_BOT_TOKEN"
_REJECTED = (
    f"Telegram rejected the bot token (401 Unauthorized); the channel is stopped. {_FIX_TOKEN}"
)
_REJECTED_WHILE_POLLING = (
    "Telegram rejected the bot token while polling (401 Unauthorized: revoked or replaced in "
    f"BotFather?); polling stopped until a restart. {_FIX_TOKEN}"
)


class TokenError(Exception):
    """No usable bot token (missing, unreadable or malformed)."""


@dataclass(frozen=True, slots=True)
class _Download:
    """What to fetch for one attachment."""

    file_id: str
    size: int | None


@dataclass(frozen=True, slots=True)
class _Fetch:
    """A download still to do for one MediaRef (``meta``: the MediaRef's fields)."""

    kind: MediaKind
    item: _Download
    meta: dict[str, Any]


@dataclass(frozen=True, slots=True)
class _Draft:
    """An Inbound whose media are not downloaded yet, and the downloads (None: nothing),
    in the order of ``inbound.media`` and ``inbound.quoted.media``."""

    inbound: Inbound
    media: list[_Fetch | None]
    quoted_media: list[_Fetch | None]

    @property
    def has_downloads(self) -> bool:
        return any(self.media) or any(self.quoted_media)


def resolve_token(config: TelegramConfig) -> str:
    """The bot token from botToken, tokenFile or $TELEGRAM_BOT_TOKEN (in that order).

    Raises :class:`TokenError` (never containing the token) when there is none or it
    does not look like a BotFather token.
    """
    if config.botToken is not None:
        token, source = config.botToken.get_secret_value().strip(), "botToken"
    elif config.tokenFile:
        path = Path(config.tokenFile).expanduser()
        try:
            token = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise TokenError(f"cannot read tokenFile {path}: {exc.strerror}") from None
        source = f"tokenFile {path}"
    elif os.environ.get("TELEGRAM_BOT_TOKEN"):
        token, source = os.environ["TELEGRAM_BOT_TOKEN"].strip(), "$TELEGRAM_BOT_TOKEN"
    else:
        raise TokenError(
            "no bot token: set channels.telegram.botToken, tokenFile or $TELEGRAM_BOT_TOKEN"
        )
    if not TOKEN_RE.match(token):
        raise TokenError(f"the token in {source} does not look like a bot token from BotFather")
    return token


def _split_message_id(value: str | None) -> int | None:
    """``"chat:id"`` or ``"id"`` -> the per-chat Telegram message id."""
    if not value:
        return None
    tail = value.rsplit(":", 1)[-1]
    return int(tail) if tail.lstrip("-").isdigit() else None


_LINK_RE = re.compile(r'<a href="([^"]*)">(.*?)</a>', re.S)


def _html_to_plain(chunk: str) -> str:
    """One rendered Telegram-HTML chunk as plain text; links become "text (url)"."""

    def link(match: re.Match[str]) -> str:
        url, text = html.unescape(match.group(1)), match.group(2)
        plain_text = html.unescape(re.sub(r"<[^>]+>", "", text))
        return match.group(2) if plain_text == url else f"{text} ({html.escape(url)})"

    return html.unescape(re.sub(r"<[^>]+>", "", _LINK_RE.sub(link, chunk)))


class _DeliveryAborted(Exception):
    """The channel is stopping while an update was still being handed over."""


class _EntitiesRejected(Exception):  # noqa: N818 - a signal, not an error to report
    """Telegram could not parse the HTML of a chunk ("can't parse entities")."""


class TelegramChannel(Channel):
    """The Telegram adapter (one bot account)."""

    name = "telegram"
    account = "default"

    # Seconds; class attributes so tests can shorten them.
    typing_delay = 1.0  # before the first sendChatAction: fast turns send none
    typing_interval = 4.0
    typing_request_timeout = 5.0  # read timeout of one sendChatAction
    typing_exit_wait = 1.0  # how long leaving typing() waits for a sendChatAction in flight
    poll_timeout = 30  # getUpdates long-poll
    poll_limit = 100  # updates per getUpdates
    poll_backoff_base = 1.0  # first delay after a failed getUpdates, doubled per failure
    poll_backoff_max = 30.0
    poll_failures_before_disconnected = 3  # consecutive network failures -> health not ok
    sink_retry_delays = (0.5, 2.0, 5.0)  # an update the core could not store: retry, then skip
    stop_timeout = 10.0  # how long stop() lets the update being handed over finish
    max_send_attempts = 4  # per chunk: 429 and failures before anything was sent
    send_retry_delays = (0.5, 1.0, 2.0)  # between attempts that failed before sending
    max_retry_after = 120.0
    connect_retry_delays = (1.0, 2.0, 5.0, 10.0, 30.0)
    http_read_timeout = 20.0  # Bot API calls other than getUpdates
    http_connect_timeout = 10.0

    def __init__(self, config: TelegramConfig, *, media: MediaStore, data_dir: Path) -> None:
        self.config = config
        self.media = media
        self.data_dir = Path(data_dir)
        self.capabilities = Capabilities(config.textChunkLimit, Markup.TELEGRAM_HTML)
        self._max_media_bytes = int(config.mediaMaxMb * 1024 * 1024)
        self._sink: InboundSink | None = None
        self._app: Application | None = None
        self._requests: tuple[AiohttpRequest, ...] = ()
        self._bot_id: int | None = None
        self._bot_username = ""
        self._state = "not started"  # not started | connecting | running | failed | stopped
        self._detail = "not started"
        self._webhook_runner: web.AppRunner | None = None
        self._webhook_lock = asyncio.Lock()
        self.webhook_port: int | None = None  # the bound port (webhook mode)
        self._connect_task: asyncio.Task | None = None
        self._poll_task: asyncio.Task | None = None
        self._poll_idle = False  # the poll loop waits on getUpdates or a backoff
        self._poll_problem: str | None = None  # set while polling does not work
        self._next_offset: int | None = None  # update_id + 1 of the last update handed over
        self._confirmed_offset: int | None = None  # the offset Telegram last saw
        self._stopping = False
        self._tasks: set[asyncio.Task] = set()
        self._typing_stops: dict[asyncio.Task, asyncio.Event] = {}
        # A send found no connection (or the channel not running): tell the core once the
        # Bot API answers again, so the queued reply does not wait for its backoff.
        self._ready_due = False
        self._token: str | None = None
        self._log_filter = RedactingFilter()
        self._groups_seen: set[int] = set()

    # ------------------------------------------------------------------ lifecycle

    async def start(self, sink: InboundSink) -> None:
        """Connect (getMe, setMyCommands, polling or webhook) and hand messages to ``sink``.

        Never raises for a bad or rejected token or an unreachable server: the channel
        then reports it through :meth:`health` (and retries the network in the background).
        """
        if self._state in ("running", "connecting"):
            return
        self._sink = sink
        self._stopping = False
        self._guard_logs()
        try:
            self._token = await asyncio.to_thread(resolve_token, self.config)
        except TokenError as exc:
            self._fail(str(exc))
            return
        register_secret(self._token)
        self._state, self._detail = "connecting", "connecting"
        try:
            await self._connect()
        except InvalidToken:
            self._fail(_REJECTED)
        except (NetworkError, TelegramError, OSError) as exc:
            self._detail = f"connecting: {type(exc).__name__}: {exc}"
            log.warning("telegram: cannot connect yet (%s); retrying in the background",
                        self._detail)
            self._connect_task = asyncio.create_task(self._connect_loop(),
                                                     name="telegram-connect")

    async def _connect_loop(self) -> None:
        attempt = 0
        while self._state == "connecting":
            delay = self.connect_retry_delays[min(attempt, len(self.connect_retry_delays) - 1)]
            attempt += 1
            await asyncio.sleep(delay)
            try:
                await self._connect()
            except InvalidToken:
                self._fail(_REJECTED)
                return
            except (TelegramError, OSError) as exc:
                self._detail = f"connecting: {type(exc).__name__}: {exc}"
                log.warning("telegram: connect attempt %d failed: %s", attempt, self._detail)
                continue
            self._notify_ready()  # start() returned long ago: queued replies can go now
            return

    def _build(self, token: str) -> Application:
        root = self.config.apiRoot.rstrip("/")
        request = AiohttpRequest(connection_pool_size=16, read_timeout=self.http_read_timeout,
                                 connect_timeout=self.http_connect_timeout, pool_timeout=5.0,
                                 media_write_timeout=60.0)
        # getUpdates gets its own pool; PTB adds the long-poll timeout (poll_timeout) to
        # this read timeout, so the answer may take up to 10 s longer than the poll.
        updates_request = AiohttpRequest(connection_pool_size=2, read_timeout=10.0,
                                         connect_timeout=self.http_connect_timeout,
                                         pool_timeout=5.0)
        self._requests = (request, updates_request)
        # No PTB Updater: it confirms a getUpdates offset as soon as updates are fetched,
        # before they are stored, so a crash in between would lose them for good.  The
        # channel polls itself (see _poll_loop) and uses the Application for its Bot.
        return (
            ApplicationBuilder()
            .token(token)
            .base_url(f"{root}/bot")
            .base_file_url(f"{root}/file/bot")
            .request(request)
            .get_updates_request(updates_request)
            .updater(None)
            .build()
        )

    async def _connect(self) -> None:
        assert self._token is not None
        app = self._build(self._token)
        try:
            await app.initialize()  # getMe: InvalidToken when Telegram says 401
        except BaseException:
            await self._close_requests()
            raise
        self._app = app
        try:
            self._bot_id = app.bot.id
            self._bot_username = app.bot.username or ""
            try:
                await app.bot.set_my_commands([BotCommand(c, d) for c, d in COMMANDS])
            except (BadRequest, Forbidden, NetworkError) as exc:
                log.warning("telegram: setMyCommands failed: %s", exc)
            if self.config.mode == "webhook":
                await self._start_webhook(app)
                how = "webhook"
            else:
                # A webhook left from an earlier setup makes getUpdates answer 409.
                await app.bot.delete_webhook(drop_pending_updates=False)
                how = "polling"
        except BaseException:
            await self._teardown()
            raise
        self._state = "running"
        self._detail = f"{how} as @{self._bot_username}"
        self._poll_problem = None
        if how == "polling":
            self._poll_task = asyncio.create_task(self._poll_loop(app.bot),
                                                  name="telegram-poll")
        log.info("telegram: connected as @%s (%s)", self._bot_username, how)

    async def stop(self) -> None:
        """Stop receiving (the update being handed over is finished), close; idempotent.

        The offset of every update the core has stored is confirmed to Telegram; the rest
        is fetched again on the next start.
        """
        self._stopping = True
        if self._connect_task is not None:
            self._connect_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connect_task
            self._connect_task = None
        await self._stop_polling()
        await self._stop_tasks()
        await self._teardown()
        if self._state != "failed":
            self._state, self._detail = "stopped", "stopped"

    async def _stop_tasks(self) -> None:
        """End the typing loops (a request in flight may finish), then anything left."""
        for event in self._typing_stops.values():
            event.set()
        tasks = set(self._tasks)
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=self.typing_exit_wait)
            for task in late:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _notify_ready(self) -> None:
        """Tell the core (``sink.channel_ready``) that sending works again."""
        self._ready_due = False
        if self._sink is None or self._state != "running":
            return
        try:
            self._sink.channel_ready(self)
        except Exception:  # the core's problem must not stop polling
            log.exception("telegram: channel_ready failed")

    async def _stop_polling(self) -> None:
        task, self._poll_task = self._poll_task, None
        if task is None:
            return
        try:
            if self._poll_idle:
                task.cancel()  # waiting on getUpdates or a backoff: nothing to finish
            # Otherwise the loop is handing an update to the core: let that finish
            # (it returns right after, seeing _stopping), within stop_timeout.
            await asyncio.wait({task}, timeout=self.stop_timeout)
            if not task.done():
                log.warning("telegram: the core did not take an update within %g s; "
                            "it is fetched again on the next start", self.stop_timeout)
                task.cancel()
                await asyncio.wait({task})
        finally:
            if not task.done():  # stop() itself was cancelled
                task.cancel()
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.error("telegram: the polling loop failed: %s: %s", type(exc).__name__, exc)
        await self._confirm_offset()

    async def _confirm_offset(self) -> None:
        """Tell Telegram which updates are stored (the next getUpdates would have)."""
        app, offset = self._app, self._next_offset
        if app is None or offset is None or offset == self._confirmed_offset:
            return
        if self._state != "running":
            return
        try:
            await asyncio.wait_for(app.bot.get_updates(
                offset=offset, timeout=0, limit=1, allowed_updates=_ALLOWED_UPDATES), 5.0)
            self._confirmed_offset = offset
        except (TelegramError, OSError, TimeoutError) as exc:
            # Harmless: those updates are fetched again and the store drops the duplicates.
            log.info("telegram: could not confirm the update offset: %s", exc)

    async def _teardown(self) -> None:
        if self._webhook_runner is not None:
            await self._webhook_runner.cleanup()
            self._webhook_runner = None
        app, self._app = self._app, None
        if app is not None:
            try:
                if app.running:
                    await app.stop()
                await app.shutdown()
            except Exception as exc:  # shutting down must not raise
                log.warning("telegram: error while stopping: %s: %s", type(exc).__name__, exc)
        await self._close_requests()

    async def _close_requests(self) -> None:
        for request in self._requests:
            with contextlib.suppress(Exception):
                await request.shutdown()
        self._requests = ()

    def _fail(self, detail: str) -> None:
        self._state, self._detail = "failed", detail
        log.error("telegram: %s", detail)

    def health(self) -> ChannelHealth:
        """Connected while polling/serving the webhook; the detail says why not otherwise."""
        if self._state == "running" and self._poll_problem:
            return ChannelHealth(False, f"{self._detail}: {self._poll_problem}")
        return ChannelHealth(self._state == "running", self._detail)

    def _guard_logs(self) -> None:
        # httpx logs every request URL at INFO, and the token is in every URL.
        for name in ("httpx", "httpcore"):
            logger = logging.getLogger(name)
            if logger.getEffectiveLevel() < logging.WARNING:
                logger.setLevel(logging.WARNING)
        names = set(_GUARDED_LOGGERS) | {
            n for n in logging.root.manager.loggerDict if n.startswith(("telegram", "httpx"))
        }
        for name in names:
            logger = logging.getLogger(name)
            if not any(isinstance(f, RedactingFilter) for f in logger.filters):
                logger.addFilter(self._log_filter)

    # ------------------------------------------------------------------ polling

    async def _poll_loop(self, bot: Bot) -> None:
        """Fetch updates and hand them over in order; confirm only what the core stored.

        Telegram drops an update once a getUpdates call passes an ``offset`` above its
        ``update_id``.  ``_next_offset`` moves past an update only after ``sink.accept``
        returned (the core has stored it durably) or the update was deliberately skipped,
        so after a crash at any point the unconfirmed updates are fetched again and the
        store's idempotency drops the ones it already has.
        """
        failures = 0
        while not self._stopping and self._state == "running":
            self._poll_idle = True
            try:
                # After failures, a short poll first: health turns good as soon as the
                # Bot API answers, not when the next long poll returns (up to 30 s).
                recovering = bool(failures or self._poll_problem)
                updates = await bot.get_updates(
                    offset=self._next_offset, timeout=0 if recovering else self.poll_timeout,
                    limit=self.poll_limit, allowed_updates=_ALLOWED_UPDATES)
            except (InvalidToken, Forbidden):
                self._poll_idle = False
                self._fail(_REJECTED_WHILE_POLLING)
                return
            except Exception as exc:  # any other failure backs off; none ends the loop
                failures += 1
                await self._poll_backoff(exc, failures)
                self._poll_idle = False
                continue
            self._poll_idle = False
            self._confirmed_offset = self._next_offset
            if failures or self._poll_problem:
                log.info("telegram: polling works again")
                failures, self._poll_problem = 0, None
                self._detail = f"polling as @{self._bot_username}"
                self._notify_ready()
            elif self._ready_due:
                self._notify_ready()  # the Bot API answers: retry the replies waiting
            for update in updates:
                try:
                    await self._handle_update(update)
                except _DeliveryAborted:
                    return  # stopping: not confirmed, fetched again next time
                self._next_offset = update.update_id + 1
                if self._stopping:
                    return

    async def _poll_backoff(self, exc: Exception, failures: int) -> None:
        """Log a failed getUpdates, update health, sleep before the next try."""
        base = min(self.poll_backoff_max, self.poll_backoff_base * 2 ** (failures - 1))
        delay = random.uniform(base / 2, base)  # jitter: restarted bots do not poll in step
        if isinstance(exc, RetryAfter):
            delay = min(_retry_after_seconds(exc), self.max_retry_after)
            log.warning("telegram: getUpdates rate limited; retrying in %.1f s", delay)
        elif isinstance(exc, Conflict):
            self._poll_problem = ("another process is polling with this bot token "
                                  "(409 Conflict); only one instance may run")
            log.warning("telegram: %s; retrying in %.1f s", self._poll_problem, delay)
        elif isinstance(exc, NetworkError):  # includes TimedOut
            if failures >= self.poll_failures_before_disconnected:
                self._poll_problem = f"cannot reach Telegram ({type(exc).__name__}: {exc})"
            self._detail = f"polling as @{self._bot_username} (last error: {exc})"
            log.warning("telegram: getUpdates failed (%s: %s); retrying in %.1f s",
                        type(exc).__name__, exc, delay)
        else:
            # Not expected (a Bot API change, a bad answer): keep trying, loudly.
            self._poll_problem = f"getUpdates failed: {type(exc).__name__}: {exc}"
            log.error("telegram: getUpdates failed (%s: %s); retrying in %.1f s",
                      type(exc).__name__, exc, delay, exc_info=exc)
        await asyncio.sleep(delay)

    async def _handle_update(self, update: Update) -> None:
        """Translate one update and give it to the sink; returns once stored or skipped.

        A failure (translation or the sink) is retried after each of
        ``sink_retry_delays``; then the update is skipped with an ERROR log.  Retrying for
        ever would let one update the core can never take (a bug, a poisoned message)
        hold back every later message of every chat; the bounded retries cover the
        transient cases (a locked database).  Raises :class:`_DeliveryAborted` instead of
        retrying while the channel stops, so the update is not confirmed.
        """
        msg = update.message
        sink = self._sink
        if msg is None or sink is None:
            return  # edits, channel posts, ...: confirmed and forgotten
        inbound: Inbound | None = None
        for attempt in range(len(self.sink_retry_delays) + 1):
            try:
                if inbound is None:
                    draft = self._draft(msg)
                    if draft is None:
                        return
                    # Media are fetched only for a message the core will answer: a
                    # stranger's file or an unmentioned group photo is never downloaded.
                    if draft.has_downloads and await sink.admits(draft.inbound):
                        inbound = await self._materialise(draft)
                    else:
                        inbound = draft.inbound
                status = await sink.accept(inbound)
            except Exception as exc:
                where = "translate" if inbound is None else "store"
                if attempt == len(self.sink_retry_delays):
                    log.error("telegram: could not %s update %s after %d attempts; skipped "
                              "(%s: %s)", where, update.update_id, attempt + 1,
                              type(exc).__name__, exc, exc_info=exc)
                    return
                if self._stopping:
                    raise _DeliveryAborted from exc
                delay = self.sink_retry_delays[attempt]
                log.warning("telegram: could not %s update %s (%s: %s); retrying in %g s",
                            where, update.update_id, type(exc).__name__, exc, delay)
                await asyncio.sleep(delay)
                continue
            log.debug("telegram: inbound %s from %s: %s", inbound.message_id,
                      inbound.sender_id, status)
            return

    # ------------------------------------------------------------------ webhook

    async def _start_webhook(self, app: Application) -> None:
        cfg = self.config
        secret = cfg.webhookSecret.get_secret_value() if cfg.webhookSecret else ""
        path = cfg.webhookPath if cfg.webhookPath.startswith("/") else "/" + cfg.webhookPath

        async def receive(request: web.Request) -> web.Response:
            given = request.headers.get("X-Telegram-Bot-Api-Secret-Token", "")
            if not secret or not hmac.compare_digest(given.encode(), secret.encode()):
                log.warning("telegram: webhook request with a wrong or missing secret refused")
                return web.Response(status=403, text="forbidden")
            try:
                data = await request.json()
                update = Update.de_json(data, app.bot)
            except (ValueError, TypeError, KeyError, json.JSONDecodeError):
                return web.Response(status=400, text="bad update")
            if update is None:
                return web.Response(status=400, text="bad update")
            if self._ready_due:
                self._notify_ready()  # Telegram reaches us, so we can likely reach it
            # Answered only once the core has stored the update: Telegram re-sends
            # anything not answered 2xx, so a crash here loses nothing.  One at a time,
            # in arrival order (setWebhook asks for a single connection).
            async with self._webhook_lock:
                try:
                    await self._handle_update(update)
                except _DeliveryAborted:
                    return web.Response(status=503, text="stopping")
            return web.Response(text="ok")

        server = web.Application(client_max_size=2 * 1024 * 1024)
        server.router.add_post(path, receive)
        runner = web.AppRunner(server, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        site = web.TCPSite(runner, cfg.webhookHost, cfg.webhookPort)
        await site.start()
        self._webhook_runner = runner
        sockets = getattr(site._server, "sockets", None) or []
        self.webhook_port = sockets[0].getsockname()[1] if sockets else cfg.webhookPort
        await app.bot.set_webhook(
            url=cfg.webhookUrl or "",
            secret_token=secret,
            allowed_updates=_ALLOWED_UPDATES,
            drop_pending_updates=False,
            max_connections=1,  # Telegram then sends updates one by one, in order
        )

    # ------------------------------------------------------------------ inbound

    async def translate(self, msg: Message) -> Inbound | None:
        """A Telegram message -> an Inbound with its media downloaded, or None when it is
        not for us (see :meth:`_draft`; no access check: the channel itself asks
        ``sink.admits`` before downloading)."""
        draft = self._draft(msg)
        return None if draft is None else await self._materialise(draft)

    def _draft(self, msg: Message) -> _Draft | None:
        """A Telegram message -> an Inbound whose media are not downloaded yet, or None.

        Ignored: channel chats, automatic forwards of a linked channel's posts into its
        discussion group, messages sent on behalf of a channel, other bots and
        Telegram's service account, commands addressed to another bot, and messages with
        nothing we understand.  An anonymous group admin (``sender_chat`` is the group
        itself) is a sender whose id is the group's id, named by its signature or the
        group's title.
        """
        user = msg.from_user
        chat = msg.chat
        if chat.type == ChatType.CHANNEL or msg.is_automatic_forward:
            return None
        kind = ChatKind.DIRECT if chat.type == ChatType.PRIVATE else ChatKind.GROUP
        sender = msg.sender_chat
        if sender is not None:
            if kind is ChatKind.DIRECT or sender.id != chat.id:
                return None  # a channel speaking (its own post forwarded, or "send as")
            sender_id = str(chat.id)
            sender_name = msg.author_signature or chat.title or None
            aliases: tuple[str, ...] = ()
        elif user is None or user.is_bot or user.id == _TELEGRAM_SERVICE_ID:
            return None
        else:
            sender_id, sender_name = str(user.id), user.full_name or None
            aliases = (f"@{user.username}",) if user.username else ()
        if kind is ChatKind.GROUP and chat.id not in self._groups_seen:
            self._groups_seen.add(chat.id)  # operators look the group id up here
            log.info("telegram: message in group %r (chat %s)", chat.title or "", chat.id)
        text = msg.text or msg.caption or ""
        text, for_other_bot = self._normalise_command(msg, text)
        if for_other_bot:
            return None
        media = self._media_of(msg)
        if not text and not media:
            return None
        thread = str(msg.message_thread_id) if msg.is_topic_message and msg.message_thread_id else None
        quoted, quoted_media = self._quoted(msg)
        inbound = Inbound(
            address=ChatAddress(self.name, self.account, str(chat.id), kind, thread),
            sender_id=sender_id,
            message_id=f"{chat.id}:{msg.message_id}",
            timestamp=msg.date.timestamp(),
            text=text,
            sender_name=sender_name,
            sender_aliases=aliases,
            media=tuple(ref for ref, _ in media),
            quoted=quoted,
            mentioned=self._is_mentioned(msg),
            extra={"chat_id": str(chat.id), "message_id": str(msg.message_id)},
        )
        return _Draft(inbound, [job for _, job in media], quoted_media)

    async def _materialise(self, draft: _Draft) -> Inbound:
        """Download the draft's media (within mediaMaxMb); the Inbound with media ids."""
        inbound = draft.inbound
        if not draft.has_downloads:
            return inbound

        async def fetched(refs: tuple[MediaRef, ...], jobs: list[_Fetch | None]
                          ) -> tuple[MediaRef, ...]:
            return tuple([ref if job is None else await self._fetch(job.kind, job.item,
                                                                    **job.meta)
                          for ref, job in zip(refs, jobs, strict=True)])

        media = await fetched(inbound.media, draft.media)
        quoted = inbound.quoted
        if quoted is not None and any(draft.quoted_media):
            quoted = dataclasses.replace(quoted, media=await fetched(quoted.media,
                                                                     draft.quoted_media))
        return dataclasses.replace(inbound, media=media, quoted=quoted)

    def _command_entity(self, msg: Message) -> tuple[MessageEntity, str] | None:
        parsed = (msg.parse_entities([MessageEntity.BOT_COMMAND]) if msg.text
                  else msg.parse_caption_entities([MessageEntity.BOT_COMMAND]))
        for entity, value in parsed.items():
            if entity.offset == 0:
                return entity, value
        return None

    def _normalise_command(self, msg: Message, text: str) -> tuple[str, bool]:
        """Strip our ``@botname`` from a leading command; flag commands for other bots."""
        found = self._command_entity(msg)
        if not found:
            return text, False
        _, value = found
        if "@" not in value:
            return text, False
        command, _, target = value.partition("@")
        if target.lower() != self._bot_username.lower():
            return text, True
        return command + text[len(value):], False

    def _is_mentioned(self, msg: Message) -> bool:
        username = self._bot_username.lower()
        types = [MessageEntity.MENTION, MessageEntity.TEXT_MENTION, MessageEntity.BOT_COMMAND]
        parsed = {**msg.parse_entities(types), **msg.parse_caption_entities(types)}
        for entity, value in parsed.items():
            if entity.type == MessageEntity.MENTION and value[1:].lower() == username:
                return True
            if (entity.type == MessageEntity.TEXT_MENTION and entity.user is not None
                    and entity.user.id == self._bot_id):
                return True
            if (entity.type == MessageEntity.BOT_COMMAND and "@" in value
                    and value.split("@", 1)[1].lower() == username):
                return True
        reply = self._real_reply(msg)
        return bool(reply and reply.from_user and reply.from_user.id == self._bot_id)

    @staticmethod
    def _real_reply(msg: Message) -> Message | None:
        """The replied-to message, unless it is a forum topic's creation (Telegram adds it)."""
        reply = msg.reply_to_message
        if reply is None or reply.forum_topic_created is not None:
            return None
        return reply

    def _quoted(self, msg: Message) -> tuple[Quoted | None, list[_Fetch | None]]:
        reply = self._real_reply(msg)
        if reply is None:
            return None, []
        sender = reply.from_user
        media = self._media_of(reply, images_only=True)
        return Quoted(
            message_id=f"{reply.chat.id}:{reply.message_id}",
            sender_id=str(sender.id) if sender else None,
            sender_name=(sender.full_name or None) if sender else None,
            text=reply.text or reply.caption or "",
            media=tuple(ref for ref, _ in media),
            from_bot=bool(sender and sender.id == self._bot_id),
        ), [job for _, job in media]

    def _media_of(self, msg: Message, *, images_only: bool = False
                  ) -> list[tuple[MediaRef, _Fetch | None]]:
        """Attachments of ``msg``: a MediaRef without bytes and what to download for it."""
        refs: list[tuple[MediaRef, _Fetch | None]] = []

        def add(kind: MediaKind, item: _Download | None, **meta: Any) -> None:
            ref = MediaRef(kind=kind, size=item.size if item else None, **meta)
            fetch = item is not None and (not images_only or kind is MediaKind.IMAGE)
            refs.append((ref, _Fetch(kind, item, meta) if fetch and item else None))

        if msg.photo:
            best = max(msg.photo, key=lambda p: (p.width * p.height, p.file_size or 0))
            add(MediaKind.IMAGE, _Download(best.file_id, best.file_size),
                mime="image/jpeg", width=best.width, height=best.height)
        elif msg.animation:
            a = msg.animation
            add(MediaKind.VIDEO, _Download(a.file_id, a.file_size),
                mime=a.mime_type or "video/mp4", filename=a.file_name,
                duration_s=_seconds(a), width=a.width, height=a.height, note="animation")
        elif msg.document:
            d = msg.document
            is_image = (d.mime_type or "").startswith("image/")
            add(MediaKind.IMAGE if is_image else MediaKind.DOCUMENT,
                _Download(d.file_id, d.file_size), mime=d.mime_type, filename=d.file_name)
        elif msg.voice:
            v = msg.voice
            add(MediaKind.VOICE, _Download(v.file_id, v.file_size),
                mime=v.mime_type or "audio/ogg", duration_s=_seconds(v))
        elif msg.audio:
            a = msg.audio
            add(MediaKind.AUDIO, _Download(a.file_id, a.file_size),
                mime=a.mime_type or "audio/mpeg", filename=a.file_name or a.title,
                duration_s=_seconds(a))
        elif msg.video or msg.video_note:
            v = msg.video or msg.video_note
            assert v is not None
            width = getattr(v, "width", None) or getattr(v, "length", None)
            height = getattr(v, "height", None) or getattr(v, "length", None)
            add(MediaKind.VIDEO, _Download(v.file_id, v.file_size),
                mime=getattr(v, "mime_type", None) or "video/mp4",
                duration_s=_seconds(v), width=width, height=height,
                note=None if msg.video else "round video")
        elif msg.sticker:
            s = msg.sticker
            static = not (s.is_animated or s.is_video)
            mime = "image/webp" if static else ("video/webm" if s.is_video
                                                else "application/x-tgsticker")
            add(MediaKind.STICKER, _Download(s.file_id, s.file_size) if static else None,
                mime=mime, width=s.width, height=s.height, note=s.emoji or None)
        if msg.venue:
            v = msg.venue
            refs.append((MediaRef(kind=MediaKind.LOCATION, note=(
                f"{v.title}, {v.address} ({v.location.latitude:.5f}, "
                f"{v.location.longitude:.5f})")), None))
        elif msg.location:
            loc = msg.location
            refs.append((MediaRef(kind=MediaKind.LOCATION,
                                  note=f"{loc.latitude:.5f}, {loc.longitude:.5f}"), None))
        if msg.contact:
            c = msg.contact
            name = " ".join(p for p in (c.first_name, c.last_name) if p)
            refs.append((MediaRef(kind=MediaKind.CONTACT,
                                  note=f"{name}, {c.phone_number}"), None))
        return refs

    async def _fetch(self, kind: MediaKind, item: _Download, **meta: Any) -> MediaRef:
        """Download one file through getFile, within mediaMaxMb."""
        limit = self._max_media_bytes
        limit_mb = f"{self.config.mediaMaxMb:g} MB"

        def too_large(size: int) -> MediaRef:
            return MediaRef(kind=kind, size=size, note=(
                f"not downloaded: {size / 1024 / 1024:.1f} MB is over the {limit_mb} limit"),
                **{k: v for k, v in meta.items() if k != "note"})

        if item.size is not None and item.size > limit:
            return too_large(item.size)
        assert self._app is not None
        try:
            file = await self._app.bot.get_file(item.file_id)
            if file.file_size is not None and file.file_size > limit:
                return too_large(file.file_size)
            data = bytes(await file.download_as_bytearray())
        except BadRequest as exc:
            if "too big" in str(exc).lower():
                return too_large(item.size or limit + 1)
            log.warning("telegram: could not download a %s: %s", kind, exc)
            return MediaRef(kind=kind, size=item.size, note="could not be downloaded", **{
                k: v for k, v in meta.items() if k != "note"})
        except (TelegramError, OSError) as exc:
            log.warning("telegram: could not download a %s: %s", kind, exc)
            return MediaRef(kind=kind, size=item.size, note="could not be downloaded", **{
                k: v for k, v in meta.items() if k != "note"})
        if len(data) > limit:
            return too_large(len(data))
        note = meta.pop("note", None)
        ref = await self.media.put(data, kind=kind, **{
            k: v for k, v in meta.items() if k in ("mime", "filename", "duration_s", "width",
                                                   "height")})
        return dataclasses.replace(ref, note=note) if note else ref

    # ------------------------------------------------------------------ outbound

    async def send(self, out: Outbound) -> list[str]:
        """Render, chunk and send; returns ``"<chat_id>:<message_id>"`` per sent chunk.

        A chunk Telegram's HTML parser rejects is sent again as plain text, links kept as
        "text (url)": the whole reply rendered by :func:`~bridge.formatting.to_plain`
        when it was the first chunk, else that chunk alone.  Raises :class:`SendError`:
        ``retryable=True`` when nothing of the failed chunk went out (not running, no
        connection after the in-channel retries, 502/503, a rate limit longer than
        ``max_retry_after``, token refused); ``retryable=False`` when Telegram refused it
        or when it may have been delivered (timeout or connection lost after sending).
        """
        app = self._app
        if app is None or self._state != "running":
            self._ready_due = True
            raise SendError(f"telegram channel is not running ({self._detail})",
                            retryable=True)
        limit = self.capabilities.text_chunk_limit
        pieces: list[tuple[str, str | None]]
        if out.plain:
            pieces = [(c, None) for c in chunk_text(out.text, limit)]
        else:
            pieces = [(c, ParseMode.HTML) for c in render(out.text, Markup.TELEGRAM_HTML, limit)]
        chat_id = int(out.address.chat_id)
        thread_id = int(out.address.thread_id) if out.address.thread_id else None
        reply_to = (_split_message_id(out.reply_to_message_id)
                    if out.address.chat_kind is ChatKind.GROUP else None)
        sent: list[str] = []
        index = 0
        while index < len(pieces):
            text, parse_mode = pieces[index]
            reply = (_reply_parameters(reply_to)
                     if not sent and reply_to is not None else None)
            try:
                message_id = await self._send_chunk(chat_id, text, parse_mode, thread_id,
                                                    reply)
            except _EntitiesRejected as exc:
                log.warning("telegram: HTML rejected (%s); sending it as plain text", exc)
                plain = chunk_text(to_plain(out.text), limit) if not sent else []
                if plain:
                    pieces, index = [(c, None) for c in plain], 0
                else:
                    pieces[index:index + 1] = [
                        (c, None) for c in chunk_text(_html_to_plain(text), limit)]
                continue
            except SendError as exc:
                exc.sent_ids = list(sent)
                raise
            sent.append(f"{chat_id}:{message_id}")
            index += 1
        return sent

    async def _send_chunk(self, chat_id: int, text: str, parse_mode: str | None,
                          thread_id: int | None, reply: str | None) -> int:
        """One sendMessage; retried here only when nothing went out (or on 429).

        Posted through the bot's transport directly (PTB's error mapping, no
        ``telegram.Message`` built from the answer): returns ``result.message_id``.
        ``reply`` is the ``reply_parameters`` JSON (:func:`_reply_parameters`).
        """
        assert self._app is not None
        bot = self._app.bot
        params: list[RequestParameter] = [RequestParameter("chat_id", chat_id, None),
                                          RequestParameter("text", text, None)]
        if parse_mode:
            params.append(RequestParameter("parse_mode", parse_mode, None))
        if thread_id is not None:
            params.append(RequestParameter("message_thread_id", thread_id, None))
        if reply is not None:
            params.append(RequestParameter("reply_parameters", reply, None))
        url = f"{bot.base_url}/sendMessage"
        for attempt in range(1, self.max_send_attempts + 1):
            last = attempt == self.max_send_attempts
            try:
                result = await bot.request.post(url, RequestData(params))
                return _message_id(result)
            except RetryAfter as exc:
                wait = _retry_after_seconds(exc)
                if last or wait > self.max_retry_after:
                    raise SendError(f"telegram rate limit: retry after {wait:g} s",
                                    retryable=True) from None
                log.info("telegram: rate limited, retrying in %g s", wait)
                await asyncio.sleep(wait)
            except BadRequest as exc:
                if parse_mode and "can't parse entities" in str(exc).lower():
                    raise _EntitiesRejected(str(exc)) from None
                raise SendError(f"telegram refused the message: {exc}") from None
            except (NotSent, ServerError) as exc:
                if isinstance(exc, ServerError) and exc.status not in (502, 503):
                    # 500, 504...: the Bot API may have sent it before failing.
                    raise SendError(f"telegram server error, the message may have been "
                                    f"sent: {exc}") from None
                if last:
                    # Not 5xx: the next getUpdates that works shows Telegram is reachable.
                    if isinstance(exc, NotSent):
                        self._ready_due = True
                    raise SendError(f"telegram unreachable: {exc}", retryable=True) from None
                delay = self.send_retry_delays[min(attempt, len(self.send_retry_delays)) - 1]
                log.info("telegram: sendMessage not sent (%s); retrying in %g s", exc, delay)
                await asyncio.sleep(delay)
            except InvalidToken as exc:
                # 401: refused before anything was sent; a restart with a good token helps.
                raise SendError(f"telegram refused the bot token: {exc}",
                                retryable=True) from None
            except NetworkError as exc:  # includes TimedOut
                # The request was (maybe partly) sent: it may have been delivered, and
                # sending it again could show it twice.
                raise SendError(f"telegram send failed after the request went out, it may "
                                f"have been delivered: {type(exc).__name__}: {exc}") from None
            except (Forbidden, ChatMigrated, TelegramError) as exc:
                raise SendError(f"telegram refused the message: {type(exc).__name__}: {exc}"
                                ) from None
        raise SendError("telegram send failed after retries")  # pragma: no cover

    @contextlib.asynccontextmanager
    async def typing(self, address: ChatAddress) -> AsyncIterator[None]:
        """Show "typing…" after ``typing_delay`` s, then about every ``typing_interval`` s.

        Leaving the context stops the loop without cancelling a ``sendChatAction`` in
        flight (a cancelled request can leave the HTTP pool in a bad state, and a late
        action would show "typing…" after the answer): that call may finish, up to
        ``typing_exit_wait`` s; after that it finishes in the background (``stop`` awaits it).
        """
        stop = asyncio.Event()
        task = asyncio.create_task(self._typing_loop(address, stop), name="telegram-typing")
        self._tasks.add(task)
        self._typing_stops[task] = stop

        def forget(done: asyncio.Task) -> None:
            self._tasks.discard(done)
            self._typing_stops.pop(done, None)

        task.add_done_callback(forget)
        try:
            yield
        finally:
            stop.set()
            # asyncio.wait never cancels the task, even when we are cancelled here.
            await asyncio.wait({task}, timeout=self.typing_exit_wait)

    async def _typing_loop(self, address: ChatAddress, stop: asyncio.Event) -> None:
        chat_id = int(address.chat_id)
        thread_id = int(address.thread_id) if address.thread_id else None
        if await _stopped_within(stop, self.typing_delay):
            return
        while True:
            app = self._app
            if app is not None and self._state == "running":
                params = [RequestParameter("chat_id", chat_id, None),
                          RequestParameter("action", ChatAction.TYPING.value, None)]
                if thread_id is not None:
                    params.append(RequestParameter("message_thread_id", thread_id, None))
                try:
                    # Through the transport directly, as sendMessage (see _send_chunk).
                    await app.bot.request.post(f"{app.bot.base_url}/sendChatAction",
                                               RequestData(params),
                                               read_timeout=self.typing_request_timeout)
                except TelegramError as exc:
                    log.debug("telegram: sendChatAction failed: %s", exc)
            if await _stopped_within(stop, self.typing_interval):
                return


async def _stopped_within(stop: asyncio.Event, seconds: float) -> bool:
    """Wait up to ``seconds`` for ``stop``; True when it was set."""
    if stop.is_set():
        return True
    if seconds <= 0:
        return False
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stop.wait()
    return stop.is_set()


def _period_seconds(value: int | float | dt.timedelta | None) -> float | None:
    """A PTB time period in seconds: an int/float today, a timedelta with PTB_TIMEDELTA=1."""
    if value is None:
        return None
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    return float(value)


def _seconds(media: Any) -> float | None:
    """A media object's ``duration`` in seconds.

    Read from its wire form: PTB 22's ``duration`` property warns (PTBDeprecationWarning)
    unless $PTB_TIMEDELTA is set.
    """
    value = media.to_dict().get("duration")
    return None if value is None else _period_seconds(value)


def _reply_parameters(message_id: int) -> str:
    """``reply_parameters`` for sendMessage, as JSON (what PTB's ReplyParameters sends)."""
    return json.dumps({"message_id": message_id, "allow_sending_without_reply": True})


def _message_id(result: Any) -> int:
    """``result.message_id`` of a sendMessage answer (raises SendError when absent)."""
    message_id = result.get("message_id") if isinstance(result, dict) else None
    if not isinstance(message_id, int) or isinstance(message_id, bool):
        raise SendError("telegram answered sendMessage without a message_id; the message "
                        "may have been delivered")
    return message_id


def _retry_after_seconds(exc: RetryAfter) -> float:
    """How long a :class:`RetryAfter` asks us to wait, in seconds."""
    if isinstance(exc, RateLimited):
        return exc.seconds or 1.0
    return _period_seconds(exc.retry_after) or 1.0
