"""The Telegram adapter: lifecycle (connect, stop, health) and outbound (send, typing).

The adapter only translates.  Receiving is :mod:`channels.telegram.intake` (poll loop or
webhook), Message -> Inbound is :mod:`channels.telegram.translate` (pure), media
downloads :mod:`channels.telegram.download`; here an
:class:`~bridge.envelope.Outbound` becomes ``sendMessage`` calls (Markdown rendered to
Telegram HTML and chunked by :mod:`bridge.formatting`).  Access policy, ordering across
sessions and storage are the core's.

HTTP goes through :class:`channels.telegram.http.AiohttpRequest` (cheaper than PTB's httpx
transport, and it tells "nothing was sent" failures apart, so a send is retried only
when it cannot show up twice).

Lifecycle: we own the event loop, so PTB's ``Application`` runs without its ``Updater``:
``initialize`` (the ``getMe`` that checks the token), then either the intake's
``getUpdates`` loop or its webhook server; ``stop`` undoes it in reverse.  A token
Telegram rejects (at start or later while polling) stops the channel for good (health
says why); network failures at connect are retried in the background.

Live replies (previews, reactions; issue 17) are :mod:`channels.telegram.live`; the
methods here hand over to it.

Message ids: Telegram numbers messages per chat, so the envelope's ``message_id`` is
``"<chat_id>:<message_id>"`` (unique per bot); :meth:`TelegramChannel.send` returns ids in
the same form and accepts either form in ``Outbound.reply_to_message_id``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from telegram import Bot, BotCommand, InputFile
from telegram.constants import ChatAction, ParseMode
from telegram.error import (
    BadRequest,
    ChatMigrated,
    Forbidden,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TelegramError,
)
from telegram.ext import Application, ApplicationBuilder

from bridge.commands import COMMAND_MENU
from bridge.config.schema import TelegramConfig
from bridge.delivery import cap_chunks, overflow_note
from bridge.envelope import ChatAddress, ChatKind, Outbound
from bridge.formatting import chunk_text, html_to_plain, render, to_plain
from bridge.logs import RedactingFilter
from bridge.media import MediaStore
from bridge.ports import (
    Capabilities,
    Channel,
    ChannelHealth,
    InboundSink,
    Markup,
    Preview,
    PreviewKey,
    PreviewMode,
    SendError,
    SendProgress,
)
from bridge.secrets import register_secret
from bridge.voice.audio import is_ogg_opus
from channels.telegram.http import (
    AiohttpRequest,
    NotSent,
    ServerError,
    post,
    retry_after_seconds,
)
from channels.telegram.intake import Intake
from channels.telegram.live import Live
from channels.telegram.pacing import Pacer
from channels.telegram.token import FIX_TOKEN, TokenError, resolve_token

__all__ = ["TelegramChannel"]

log = logging.getLogger(__name__)

# Loggers that may print Bot API URLs (the token is part of every URL).
_GUARDED_LOGGERS = ("httpx", "httpcore", "telegram", "telegram.ext", "telegram.request",
                    "aiohttp", "aiohttp.client")
_REJECTED = (
    f"Telegram rejected the bot token (401 Unauthorized); the channel is stopped. {FIX_TOKEN}"
)


class _State(StrEnum):
    """Where the channel is in its lifecycle."""

    NOT_STARTED = "not started"
    CONNECTING = "connecting"
    RUNNING = "running"
    FAILED = "failed"
    STOPPED = "stopped"


def _split_message_id(value: str | None) -> int | None:
    """``"chat:id"`` or ``"id"`` -> the per-chat Telegram message id."""
    if not value:
        return None
    tail = value.rsplit(":", 1)[-1]
    return int(tail) if tail.lstrip("-").isdigit() else None


# One chunk of a reply: its text and parse mode (None: plain).
_Piece = tuple[str, str | None]


@dataclass(frozen=True, slots=True)
class _Document:
    """The last send of a capped reply: the rest as a text file, the note as its caption."""

    caption: str
    data: bytes


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
    sink_retry_delays: tuple[float, ...] = (0.5, 2.0, 5.0)  # core could not store: retry, skip
    stop_timeout = 10.0  # how long stop() lets the update being handed over finish
    max_send_attempts = 4  # per chunk: 429 and failures before anything was sent
    send_retry_delays = (0.5, 1.0, 2.0)  # between attempts that failed before sending
    max_retry_after = 120.0
    # Send pacing (Telegram's flood limits): seconds between sends to one private chat
    # after a burst, the same for a group (20 a minute), and between any two sends (~30/s).
    pace_chat_interval = 1.0
    pace_chat_burst = 5
    pace_group_interval = 60 / 17  # with the burst of 3: at most 19 in any minute
    pace_group_burst = 3
    pace_overall_interval = 1 / 30
    connect_retry_delays = (1.0, 2.0, 5.0, 10.0, 30.0)
    http_read_timeout = 20.0  # Bot API calls other than getUpdates
    http_connect_timeout = 10.0

    def __init__(self, config: TelegramConfig, *, media: MediaStore, data_dir: Path) -> None:
        # data_dir: the composition root passes it to every channel; Telegram keeps no
        # files of its own (its state lives with the Bot API and in the core's store).
        del data_dir
        self.config = config
        self.media = media
        self.capabilities = Capabilities(
            config.textChunkLimit, Markup.TELEGRAM_HTML, voice_notes=True,
            preview_modes=frozenset({PreviewMode.DRAFT, PreviewMode.EDIT}), reactions=True)
        self._sink: InboundSink | None = None
        self._app: Application | None = None
        self._requests: tuple[AiohttpRequest, ...] = ()
        self._bot_username = ""
        self._bot_first_name = ""
        self._state = _State.NOT_STARTED
        self._detail = "not started"
        self._intake = Intake(self)
        self._connect_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._typing_stops: dict[asyncio.Task[None], asyncio.Event] = {}
        # A send found no connection (or the channel not running): tell the core once the
        # Bot API answers again, so the queued reply does not wait for its backoff.
        self._ready_due = False
        self._token: str | None = None
        self._log_filter = RedactingFilter()
        self.pacer = Pacer(chat_interval=self.pace_chat_interval,
                           chat_burst=self.pace_chat_burst,
                           group_interval=self.pace_group_interval,
                           group_burst=self.pace_group_burst,
                           overall_interval=self.pace_overall_interval)
        self._live = Live(self)
        # Polling: the loop runs while this is set (always, unless follow_leader() said
        # that a leadership decides); _poll_check is asked before every getUpdates.
        self._poll_wanted = True
        self._poll_check: Callable[[], None] | None = None

    # ------------------------------------------------------------------ the intake's view

    @property
    def sink(self) -> InboundSink | None:
        """Where the intake hands updates (None before start)."""
        return self._sink

    @property
    def running(self) -> bool:
        """True while connected (polling or serving the webhook) and not failed."""
        return self._state is _State.RUNNING

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` began."""
        return self._stopping

    @property
    def bot(self) -> Bot | None:
        """The connected bot (None unless running): what :mod:`.live` posts through."""
        return self._app.bot if self._app is not None and self.running else None

    def poll_refusal(self) -> str | None:
        """Why this process must not call getUpdates now (the leadership's check said
        so), or None."""
        if self._poll_check is None:
            return None
        try:
            self._poll_check()
        except Exception as exc:  # bridge.store.coord.Lost
            return str(exc) or type(exc).__name__
        return None

    @property
    def ready_due(self) -> bool:
        """A send found no connection: the core is told when the Bot API answers again."""
        return self._ready_due

    # ------------------------------------------------------------------ polling leader

    @property
    def leadership(self) -> str | None:
        """The leadership that must be held to poll (``telegram/<account>:poll``), None
        in webhook mode (every process receives its share of Telegram's POSTs)."""
        return None if self.config.mode == "webhook" else f"telegram/{self.account}:poll"

    @property
    def poll_leadership(self) -> str | None:
        """:attr:`leadership` (its earlier name)."""
        return self.leadership

    @property
    def serves_only_while_leading(self) -> bool:
        """Every process sends through the Bot API: its chats stay served without the
        leadership."""
        return False

    def follow_leader(self, check: Callable[[], None],
                      leader: Callable[[], str | None] | None = None) -> None:
        """Before :meth:`start`: poll only between :meth:`start_leading` and
        :meth:`stop_leading`, asking ``check`` (raises when not the leader) before every
        getUpdates.  Sending works either way: any process may send through the Bot API.
        (``leader``, who leads, is not needed here.)"""
        self._poll_check = check
        self._poll_wanted = False

    async def start_leading(self) -> None:
        """This process holds the polling leadership: start the getUpdates loop (now, or
        once connected)."""
        self._poll_wanted = True
        if (self.config.mode != "webhook" and self.running and self._app is not None
                and self._intake.poll_task is None):
            self._intake.start_polling(self._app.bot)
            log.info("telegram: polling as @%s (this process leads)", self._bot_username)

    async def stop_leading(self) -> None:
        """The leadership is lost: stop polling at once, without confirming the offset
        (another process polls now; it fetches what was not confirmed)."""
        self._poll_wanted = False
        await self._intake.stop_polling(confirm=False)

    # ------------------------------------------------------------------ lifecycle

    async def start(self, sink: InboundSink) -> None:
        """Connect (getMe, setMyCommands, polling or webhook) and hand messages to ``sink``.

        Never raises for a bad or rejected token or an unreachable server: the channel
        then reports it through :meth:`health` (and retries the network in the background).
        """
        if self._state in (_State.RUNNING, _State.CONNECTING):
            return
        self._sink = sink
        self._stopping = False
        self._guard_logs()
        # A reaction Telegram would refuse turns reactions off (one warning), not errors.
        self.capabilities = dataclasses.replace(
            self.capabilities, reactions=self._live.check_reactions(self.config))
        try:
            self._token = await asyncio.to_thread(resolve_token, self.config)
        except TokenError as exc:
            self.fail(str(exc))
            return
        register_secret(self._token)
        self._state, self._detail = _State.CONNECTING, "connecting"
        try:
            await self._connect()
        except InvalidToken:
            self.fail(_REJECTED)
        except (NetworkError, TelegramError, OSError) as exc:
            self._detail = f"connecting: {type(exc).__name__}: {exc}"
            log.warning("telegram: cannot connect yet (%s); retrying in the background",
                        self._detail)
            self._connect_task = asyncio.create_task(self._connect_loop(),
                                                     name="telegram-connect")

    async def _connect_loop(self) -> None:
        attempt = 0
        while self._state is _State.CONNECTING:
            delay = self.connect_retry_delays[min(attempt, len(self.connect_retry_delays) - 1)]
            attempt += 1
            await asyncio.sleep(delay)
            try:
                await self._connect()
            except InvalidToken:
                self.fail(_REJECTED)
                return
            except (TelegramError, OSError) as exc:
                self._detail = f"connecting: {type(exc).__name__}: {exc}"
                log.warning("telegram: connect attempt %d failed: %s", attempt, self._detail)
                continue
            self.notify_ready()  # start() returned long ago: queued replies can go now
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
        # intake polls itself and uses the Application for its Bot.
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
            self._bot_username = app.bot.username or ""
            self._bot_first_name = app.bot.first_name or ""
            try:
                # The core's command table: the menu lists what the core implements.
                await app.bot.set_my_commands([BotCommand(c, d) for c, d in COMMAND_MENU])
            except (BadRequest, Forbidden, NetworkError) as exc:
                log.warning("telegram: setMyCommands failed: %s", exc)
            if self.config.mode == "webhook":
                await self._intake.start_webhook(app.bot)
                how = "webhook"
            else:
                # A webhook left from an earlier setup makes getUpdates answer 409.
                await app.bot.delete_webhook(drop_pending_updates=False)
                how = "polling"
        except BaseException:
            await self._teardown()
            raise
        self._state = _State.RUNNING
        self._detail = f"{how} as @{self._bot_username}"
        if how == "polling" and self._poll_wanted:
            self._intake.start_polling(app.bot)
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
        await self._intake.stop_polling()
        await self._stop_tasks()
        await self._teardown()
        if self._state is not _State.FAILED:
            self._state, self._detail = _State.STOPPED, "stopped"

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

    def notify_ready(self) -> None:
        """Tell the core (``sink.channel_ready``) that sending works again."""
        self._ready_due = False
        if self._sink is None or self._state is not _State.RUNNING:
            return
        try:
            self._sink.channel_ready(self)
        except Exception:  # the core's problem must not stop polling
            log.exception("telegram: channel_ready failed")

    async def _teardown(self) -> None:
        await self._intake.close_webhook()
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

    def fail(self, detail: str) -> None:
        """Stop for good (until a restart): health reports ``detail``."""
        self._state, self._detail = _State.FAILED, detail
        log.error("telegram: %s", detail)

    def health(self) -> ChannelHealth:
        """Connected while polling/serving the webhook; the detail says why not otherwise."""
        if self._state is not _State.RUNNING:
            return ChannelHealth(False, self._detail)
        detail = self._detail
        if self._poll_check is not None and self._intake.poll_task is None:
            detail = f"{detail} (standby: another process polls; sending works)"
        if self._intake.last_error is not None:
            detail = f"{detail} (last error: {self._intake.last_error})"
        if self._intake.problem:
            return ChannelHealth(False, f"{detail}: {self._intake.problem}")
        return ChannelHealth(True, detail)

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

    # ------------------------------------------------------------------ outbound

    async def send(self, out: Outbound, progress: SendProgress | None = None) -> list[str]:
        """Render, chunk, cap and send; returns ``"<chat_id>:<message_id>"`` per chunk sent.

        Chunking is deterministic (the same reply gives the same chunks), so a resumed
        send skips the ``progress.start`` chunks already delivered; after each chunk,
        ``progress.sent(index, id)`` is awaited.  Beyond ``maxReplyChunks`` the last send
        is a ``sendDocument``: the rest of the reply as ``reply.txt``, the note as its
        caption.  Sends are paced (:class:`~channels.telegram.pacing.Pacer`).

        A chunk Telegram's HTML parser rejects is sent again as plain text, links kept as
        "text (url)": the whole reply rendered by :func:`~bridge.formatting.to_plain`
        when it was the first chunk, else that chunk alone (under the same index).

        With ``out.edit_message_id`` (an edit-mode preview), chunk 0 is an
        ``editMessageText`` of that message and keeps its id; "not modified" counts as
        sent (a resumed chunk 0 is not sent twice), and a preview the user deleted gets
        a new message instead.
        Raises :class:`SendError`: ``retryable=True`` when nothing of the failed chunk
        went out (not running, no connection after the in-channel retries, 502/503, a
        rate limit longer than ``max_retry_after``, token refused); ``retryable=False``
        when Telegram refused it or when it may have been delivered (timeout or
        connection lost after sending).
        """
        app = self._app
        if app is None or self._state is not _State.RUNNING:
            self._ready_due = True
            raise SendError(f"telegram channel is not running ({self._detail})",
                            retryable=True)
        limit = self.capabilities.text_chunk_limit
        pieces: list[_Piece]
        if out.plain:
            pieces = [(c, None) for c in chunk_text(out.text, limit)]
        else:
            pieces = [(c, ParseMode.HTML) for c in render(out.text, Markup.TELEGRAM_HTML, limit)]
        items = self._capped(pieces)
        chat_id = int(out.address.chat_id)
        thread_id = int(out.address.thread_id) if out.address.thread_id else None
        group = out.address.chat_kind is ChatKind.GROUP
        reply_to = _split_message_id(out.reply_to_message_id) if group else None
        # Edit mode: chunk 0 finishes the preview message (issue 17).
        edit_id = _split_message_id(out.edit_message_id)
        sent: list[str] = []
        index = progress.start if progress is not None else 0
        while index < len(items):
            item = items[index]
            reply = _reply_parameters(reply_to) if index == 0 and reply_to is not None else None
            try:
                if isinstance(item, _Document):
                    if index == 0 and edit_id is not None:  # maxReplyChunks 1: no chunk 0
                        await self._drop_preview(out.address, chat_id, edit_id)
                    ids = [await self._send_document(chat_id, item, thread_id, reply, group)]
                else:
                    text, parse_mode = item
                    try:
                        edited = None
                        if index == 0 and edit_id is not None:
                            edited = await self._live.edit_chunk(chat_id, edit_id, text,
                                                                 parse_mode, group)
                            if edited is None:  # deleted by the user: a new message
                                edit_id = None
                        ids = [edited if edited is not None else await self._send_chunk(
                            chat_id, text, parse_mode, thread_id, reply, group)]
                    except _EntitiesRejected as exc:
                        log.warning("telegram: HTML rejected (%s); sending it as plain text",
                                    exc)
                        if index == 0:
                            plain: list[_Piece] = [(c, None) for c in chunk_text(to_plain(out.text), limit)]
                            items = self._capped(plain)
                            continue
                        # That chunk alone, under the same index (the chunks after it keep
                        # theirs, so a resumed send skips the right ones).
                        ids = []
                        for part in chunk_text(html_to_plain(text), limit):
                            try:
                                ids.append(await self._send_chunk(chat_id, part, None,
                                                                  thread_id, None, group))
                            except SendError as exc2:
                                sent.extend(f"{chat_id}:{i}" for i in ids)
                                exc2.sent_ids = list(sent)
                                raise
            except SendError as exc:
                exc.sent_ids = list(sent)
                raise
            chunk_ids = [f"{chat_id}:{i}" for i in ids]
            sent.extend(chunk_ids)
            if progress is not None:
                await progress.report(index, chunk_ids[-1])
            index += 1
        return sent

    def spoken_names(self) -> tuple[str, ...]:
        """``@username`` and the bot's first name (from getMe)."""
        names = [f"@{self._bot_username}" if self._bot_username else "", self._bot_first_name]
        return tuple(n for n in names if n)

    async def send_voice(self, address: ChatAddress, audio: bytes, *,
                         duration_s: float | None = None, caption: str | None = None,
                         reply_to_message_id: str | None = None) -> str:
        """Send OGG/Opus ``audio`` as a voice message (``sendVoice``, paced, failures
        raised as :meth:`send` raises them); returns ``"<chat_id>:<message_id>"``.

        Telegram shows only OGG/Opus as a voice message (other formats arrive as a
        file): the core converts first (:mod:`bridge.voice.audio`).  ``caption`` is
        plain text, cut to Telegram's 1024 characters.
        """
        if self._app is None or self._state is not _State.RUNNING:
            self._ready_due = True
            raise SendError(f"telegram channel is not running ({self._detail})",
                            retryable=True)
        if not is_ogg_opus(audio):
            raise SendError("not OGG/Opus audio: Telegram would show it as a file")
        chat_id = int(address.chat_id)
        group = address.chat_kind is ChatKind.GROUP
        params: dict[str, object] = {
            "chat_id": chat_id, "voice": InputFile(audio, filename="reply.ogg", attach=False)}
        if duration_s is not None:
            params["duration"] = max(1, round(duration_s))
        if caption:
            params["caption"] = caption[:1024]
        if address.thread_id:
            params["message_thread_id"] = int(address.thread_id)
        reply_to = _split_message_id(reply_to_message_id) if group else None
        if reply_to is not None:
            params["reply_parameters"] = _reply_parameters(reply_to)
        return f"{chat_id}:{await self.call_paced('sendVoice', chat_id, params, None, group)}"

    # ------------------------------------------------------------------ live replies

    def preview(self, address: ChatAddress, mode: PreviewMode, *, turn_id: int,
                reply_to: str | None = None,
                on_created: Callable[[PreviewKey], Awaitable[None]] | None = None,
                ) -> Preview | None:
        """A draft (private chats) or an editable message (:mod:`.live`), or None."""
        return self._live.preview(address, mode, turn_id=turn_id, reply_to=reply_to,
                                  on_created=on_created)

    def may_preview_now(self, address: ChatAddress) -> bool:
        """A pacer slot is free now with one left for the final; True takes it."""
        return self._live.may_preview_now(address)

    async def discard_preview(self, address: ChatAddress, key: PreviewKey) -> None:
        """Delete a stale edit-mode preview (else edit it to "…"); drafts: nothing."""
        await self._live.discard(address, key)

    async def react(self, address: ChatAddress, message_id: str, emoji: str) -> None:
        """``setMessageReaction`` (``""`` clears); a chat refusing it is left alone an hour."""
        await self._live.react(address, message_id, emoji)

    async def _drop_preview(self, address: ChatAddress, chat_id: int, message_id: int) -> None:
        """A preview the final reply does not reuse: removed, best effort."""
        key = PreviewKey(PreviewMode.EDIT, f"{chat_id}:{message_id}")
        try:
            await self._live.discard(address, key)
        except SendError as exc:
            log.warning("telegram: %s", exc)

    def _capped(self, pieces: list[_Piece]) -> list[_Piece | _Document]:
        """``pieces`` within ``maxReplyChunks``: the rest as one document, the note its caption."""
        kept, rest = cap_chunks(pieces, self.config.maxReplyChunks)
        if not rest:
            return list(kept)
        body = "\n".join(html_to_plain(t) if mode else t for t, mode in rest)
        note = overflow_note(len(pieces), len(kept), document=True)
        return [*kept, _Document(note, body.encode("utf-8"))]

    async def _send_document(self, chat_id: int, doc: _Document, thread_id: int | None,
                             reply: str | None, group: bool) -> int:
        """The overflow of a capped reply as ``reply.txt`` (sendDocument, paced, 429s
        honoured like a chunk)."""
        upload = InputFile(doc.data, filename="reply.txt", attach=False)
        params: dict[str, object] = {"chat_id": chat_id, "document": upload,
                                     "caption": doc.caption}
        if thread_id is not None:
            params["message_thread_id"] = thread_id
        if reply is not None:
            params["reply_parameters"] = reply
        return await self.call_paced("sendDocument", chat_id, params, None, group)

    async def _send_chunk(self, chat_id: int, text: str, parse_mode: str | None,
                          thread_id: int | None, reply: str | None, group: bool = False) -> int:
        """One sendMessage; retried here only when nothing went out (or on 429).

        Posted through the bot's transport directly (PTB's error mapping, no
        ``telegram.Message`` built from the answer): returns ``result.message_id``.
        ``reply`` is the ``reply_parameters`` JSON (:func:`_reply_parameters`).
        """
        params: dict[str, object] = {"chat_id": chat_id, "text": text}
        if parse_mode:
            params["parse_mode"] = parse_mode
        if thread_id is not None:
            params["message_thread_id"] = thread_id
        if reply is not None:
            params["reply_parameters"] = reply
        return await self.call_paced("sendMessage", chat_id, params, parse_mode, group)

    async def call_paced(self, method: str, chat_id: int, params: dict[str, object],
                         parse_mode: str | None, group: bool, *,
                         passthrough: tuple[str, ...] = ()) -> int:
        """One paced send call; retried here only when nothing went out (or on 429).

        A 400 whose description contains one of ``passthrough`` (lower case) is raised
        as PTB's ``BadRequest`` for the caller to read (an edit's "not modified").
        """
        assert self._app is not None
        bot = self._app.bot
        for attempt in range(1, self.max_send_attempts + 1):
            last = attempt == self.max_send_attempts
            try:
                await self.pacer.wait(chat_id, group=group)
                result = await post(bot, method, params)
                return _message_id(result)
            except RetryAfter as exc:
                wait = retry_after_seconds(exc)
                # Later chunks (and other replies to this chat) wait too.
                self.pacer.hold(chat_id, wait, group=group)
                if last or wait > self.max_retry_after:
                    raise SendError(f"telegram rate limit: retry after {wait:g} s",
                                    retryable=True) from None
                log.info("telegram: rate limited, retrying in %g s", wait)
            except BadRequest as exc:
                reason = str(exc).lower()
                if parse_mode and "can't parse entities" in reason:
                    raise _EntitiesRejected(str(exc)) from None
                if any(p in reason for p in passthrough):
                    raise
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
                log.info("telegram: %s not sent (%s); retrying in %g s", method, exc, delay)
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
            if app is not None and self._state is _State.RUNNING:
                params: dict[str, object] = {"chat_id": chat_id,
                                             "action": ChatAction.TYPING.value}
                if thread_id is not None:
                    params["message_thread_id"] = thread_id
                try:
                    # Through the transport directly, as sendMessage (see _send_chunk).
                    await post(app.bot, "sendChatAction", params,
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
