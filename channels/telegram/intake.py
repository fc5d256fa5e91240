"""Receiving: our own ``getUpdates`` loop or a small aiohttp webhook server.

Both hand one update at a time to the sink and confirm it to Telegram (the next
``getUpdates`` offset, or the webhook's 200) only after ``sink.accept`` returned -- i.e.
after the core stored it -- so a crash at any moment loses no update; the store drops
the redelivered duplicates.  Media are downloaded only for a message the core will
answer (``sink.admits``).  Network failures are retried with a jittered, capped backoff;
a token Telegram rejects while polling stops the channel for good.

A store that cannot take the write (``StoreUnavailable``: disk full, locked, read-only)
is never a reason to skip: polling stops confirming and pauses on the unstored update,
retrying it with backoff until the core stores it (Telegram keeps updates 24 h); the
webhook answers 503 so that Telegram sends the update again.  Only an update that cannot
be translated or taken at all (a poison message) is skipped, with an ERROR line naming it
and counted in ``Intake.skipped``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from typing import Protocol

from aiohttp import web
from telegram import Bot, Message, Update
from telegram.error import (
    Conflict,
    Forbidden,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TelegramError,
)

from bridge.backoff import Backoff
from bridge.config.schema import TelegramConfig
from bridge.envelope import ChatKind, Inbound
from bridge.media import MediaStore
from bridge.ports import InboundSink, StoreUnavailable
from channels.telegram import translate
from channels.telegram.download import materialise
from channels.telegram.http import retry_after_seconds
from channels.telegram.token import FIX_TOKEN

__all__ = ["DeliveryAborted", "Intake", "IntakeHost"]

log = logging.getLogger(__name__)

ALLOWED_UPDATES = ["message"]
_REJECTED_WHILE_POLLING = (
    "Telegram rejected the bot token while polling (401 Unauthorized: revoked or replaced in "
    f"BotFather?); polling stopped until a restart. {FIX_TOKEN}"
)


def _audio_max_seconds(config: TelegramConfig) -> float | None:
    """``audioMaxSeconds`` of the channel's config."""
    return float(config.audioMaxSeconds)


class DeliveryAborted(Exception):
    """The channel is stopping while an update was still being handed over."""


class IntakeHost(Protocol):
    """What the intake needs from its channel (timings are attributes tests shorten)."""

    name: str
    account: str
    config: TelegramConfig
    media: MediaStore
    poll_timeout: int
    poll_limit: int
    poll_backoff_base: float
    poll_backoff_max: float
    poll_failures_before_disconnected: int
    sink_retry_delays: tuple[float, ...]
    stop_timeout: float
    max_retry_after: float

    @property
    def sink(self) -> InboundSink | None:
        """Where updates go (None before start)."""

    @property
    def running(self) -> bool:
        """True while connected and not failed."""

    @property
    def stopping(self) -> bool:
        """True once stop() began."""

    @property
    def ready_due(self) -> bool:
        """A send found no connection: tell the core when the Bot API answers again."""

    def notify_ready(self) -> None:
        """Tell the core (``sink.channel_ready``) that sending works again."""

    def fail(self, detail: str) -> None:
        """Stop for good; health says ``detail``."""

    def poll_refusal(self) -> str | None:
        """Why this process must not call getUpdates now (another one holds the
        polling leadership: ``bridge.store.coord``), or None."""


class Intake:
    """One bot's incoming updates, handed to the sink in order, confirmed once stored.

    ``problem`` is set while polling does not work (health is then not ok), and
    ``last_error`` names the last network failure until polling works again.
    ``store_paused`` names the store's problem while polling waits for it; ``skipped``
    counts the poison updates skipped since start.
    """

    # Waits between offers of an update the store could not take (tests shorten them).
    store_backoff_base = 1.0
    store_backoff_max = 30.0

    def __init__(self, host: IntakeHost) -> None:
        self._host = host
        self._bot: Bot | None = None
        self._me = translate.BotIdentity(None, "")
        self.poll_task: asyncio.Task[None] | None = None
        self._poll_idle = False  # the poll loop waits on getUpdates or a backoff
        self.problem: str | None = None
        self.last_error: str | None = None
        self._next_offset: int | None = None  # update_id + 1 of the last update handed over
        self._confirmed_offset: int | None = None  # the offset Telegram last saw
        self._webhook_runner: web.AppRunner | None = None
        self._webhook_lock = asyncio.Lock()
        self._groups_seen: set[int] = set()
        self.store_paused: str | None = None
        self.skipped = 0

    def _begin(self, bot: Bot) -> None:
        self._bot = bot
        self._me = translate.BotIdentity(bot.id, bot.username or "")
        self.problem = self.last_error = None

    # ------------------------------------------------------------------ polling

    def start_polling(self, bot: Bot) -> None:
        """Start the getUpdates loop (a task; :meth:`stop_polling` ends it)."""
        self._begin(bot)
        self.poll_task = asyncio.create_task(self._poll_loop(bot), name="telegram-poll")

    async def stop_polling(self, *, confirm: bool = True) -> None:
        """End the poll loop (the update being handed over is finished), confirm the offset.

        ``confirm=False`` when this process lost the polling leadership: the confirming
        getUpdates would meet the new leader's (a 409); the new leader fetches what was
        not confirmed, and the store drops what it already has."""
        task, self.poll_task = self.poll_task, None
        if task is None:
            return
        try:
            if self._poll_idle:
                task.cancel()  # waiting on getUpdates or a backoff: nothing to finish
            # Otherwise the loop is handing an update to the core: let that finish
            # (it returns right after, seeing stopping), within stop_timeout.
            await asyncio.wait({task}, timeout=self._host.stop_timeout)
            if not task.done():
                log.warning("telegram: the core did not take an update within %g s; "
                            "it is fetched again on the next start", self._host.stop_timeout)
                task.cancel()
                await asyncio.wait({task})
        finally:
            if not task.done():  # stop() itself was cancelled
                task.cancel()
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.error("telegram: the polling loop failed: %s: %s", type(exc).__name__, exc)
        if confirm:
            await self._confirm_offset()

    async def _confirm_offset(self) -> None:
        """Tell Telegram which updates are stored (the next getUpdates would have)."""
        bot, offset = self._bot, self._next_offset
        if bot is None or offset is None or offset == self._confirmed_offset:
            return
        if not self._host.running:
            return
        try:
            await asyncio.wait_for(bot.get_updates(
                offset=offset, timeout=0, limit=1, allowed_updates=ALLOWED_UPDATES), 5.0)
            self._confirmed_offset = offset
        except (TelegramError, OSError, TimeoutError) as exc:
            # Harmless: those updates are fetched again and the store drops the duplicates.
            log.info("telegram: could not confirm the update offset: %s", exc)

    async def _poll_loop(self, bot: Bot) -> None:
        """Fetch updates and hand them over in order; confirm only what the core stored.

        Telegram drops an update once a getUpdates call passes an ``offset`` above its
        ``update_id``.  ``_next_offset`` moves past an update only after ``sink.accept``
        returned (the core has stored it durably) or the update was deliberately skipped,
        so after a crash at any point the unconfirmed updates are fetched again and the
        store's idempotency drops the ones it already has.
        """
        host = self._host
        failures = 0
        refused: str | None = None
        while not host.stopping and host.running:
            self._poll_idle = True
            # Only the leader polls (one getUpdates per bot token, or Telegram answers
            # 409): asked before every call.  Not the leader now: no call; the lost
            # leadership's stop ends this loop, or the lease comes back and it goes on.
            why = host.poll_refusal()
            if why is not None:
                if why != refused:
                    log.info("telegram: not polling now: %s", why)
                refused = why
                await asyncio.sleep(host.poll_backoff_base)
                continue
            refused = None
            try:
                # After failures, a short poll first: health turns good as soon as the
                # Bot API answers, not when the next long poll returns (up to 30 s).
                recovering = bool(failures or self.problem)
                updates = await bot.get_updates(
                    offset=self._next_offset, timeout=0 if recovering else host.poll_timeout,
                    limit=host.poll_limit, allowed_updates=ALLOWED_UPDATES)
            except (InvalidToken, Forbidden):
                self._poll_idle = False
                host.fail(_REJECTED_WHILE_POLLING)
                return
            except Exception as exc:  # any other failure backs off; none ends the loop
                failures += 1
                await self._poll_backoff(exc, failures)
                self._poll_idle = False
                continue
            self._poll_idle = False
            self._confirmed_offset = self._next_offset
            if failures or self.problem:
                log.info("telegram: polling works again")
                failures, self.problem, self.last_error = 0, None, None
                host.notify_ready()
            elif host.ready_due:
                host.notify_ready()  # the Bot API answers: retry the replies waiting
            for update in updates:
                if not await self._hand_over_polled(update):
                    return  # stopping: not confirmed, fetched again next time
                self._next_offset = update.update_id + 1
                if host.stopping:
                    return

    async def _hand_over_polled(self, update: Update) -> bool:
        """Hand ``update`` over until it is stored (or skipped as poison): while the store
        is unavailable, wait with backoff and offer it again -- the offset stays before
        it, so Telegram keeps it.  False when the channel stops first."""
        host = self._host
        backoff = Backoff(self.store_backoff_base, self.store_backoff_max)
        while True:
            try:
                await self.handle_update(update)
            except DeliveryAborted:
                return False
            except StoreUnavailable as exc:
                # The core logs the outage once; here only the pause, at debug level.
                self.store_paused = exc.reason
                if host.stopping:
                    return False
                delay = backoff.next()
                log.debug("telegram: update %s not stored (%s); offering it again in "
                          "%.1f s", update.update_id, exc.reason, delay)
                self._poll_idle = True  # stop() may cancel the wait: nothing is lost
                try:
                    await asyncio.sleep(delay)
                finally:
                    self._poll_idle = False
                if host.stopping:
                    return False
                continue
            self.store_paused = None
            return True

    async def _poll_backoff(self, exc: Exception, failures: int) -> None:
        """Log a failed getUpdates, update health, sleep before the next try."""
        host = self._host
        delay = Backoff(host.poll_backoff_base, host.poll_backoff_max, low=0.5,
                        high=1.0).delay(failures - 1)
        if isinstance(exc, RetryAfter):
            delay = min(retry_after_seconds(exc), host.max_retry_after)
            log.warning("telegram: getUpdates rate limited; retrying in %.1f s", delay)
        elif isinstance(exc, Conflict):
            self.problem = ("another process is polling with this bot token "
                            "(409 Conflict); only one instance may run")
            log.warning("telegram: %s; retrying in %.1f s", self.problem, delay)
        elif isinstance(exc, NetworkError):  # includes TimedOut
            if failures >= host.poll_failures_before_disconnected:
                self.problem = f"cannot reach Telegram ({type(exc).__name__}: {exc})"
            self.last_error = str(exc)
            log.warning("telegram: getUpdates failed (%s: %s); retrying in %.1f s",
                        type(exc).__name__, exc, delay)
        else:
            # Not expected (a Bot API change, a bad answer): keep trying, loudly.
            self.problem = f"getUpdates failed: {type(exc).__name__}: {exc}"
            log.error("telegram: getUpdates failed (%s: %s); retrying in %.1f s",
                      type(exc).__name__, exc, delay, exc_info=exc)
        await asyncio.sleep(delay)

    # ------------------------------------------------------------------ one update

    async def handle_update(self, update: Update) -> None:
        """Translate one update and give it to the sink; returns once stored or skipped.

        :class:`StoreUnavailable` from the sink propagates at once (the core already
        retried): the caller must not confirm the update and offers it again later.
        Any other failure (translation, download, a sink bug) is retried after each of
        ``sink_retry_delays``; then the update is skipped as poison, with an ERROR log
        naming it, and counted in ``skipped``.  Retrying for ever would let one update
        the core can never take hold back every later message of every chat.  Raises
        :class:`DeliveryAborted` instead of retrying while the channel stops, so the
        update is not confirmed.
        """
        host = self._host
        msg = update.message
        sink = host.sink
        if msg is None or sink is None:
            return  # edits, channel posts, ...: confirmed and forgotten
        delays = host.sink_retry_delays
        inbound: Inbound | None = None
        for attempt in range(len(delays) + 1):
            try:
                if inbound is None:
                    self._note_group(msg)
                    draft = translate.draft(msg, self._me, channel=host.name,
                                            account=host.account)
                    if draft is None:
                        return
                    # Media are fetched only for a message the core will answer: a
                    # stranger's file or an unmentioned group photo is never downloaded.
                    if draft.has_downloads and await sink.admits(draft.inbound):
                        assert self._bot is not None
                        inbound = await materialise(draft, self._bot, host.media,
                                                    host.config.mediaMaxMb,
                                                    _audio_max_seconds(host.config))
                    else:
                        inbound = draft.inbound
                status = await sink.accept(inbound)
            except StoreUnavailable:
                if host.stopping:
                    raise DeliveryAborted from None
                raise
            except Exception as exc:
                where = "translate" if inbound is None else "store"
                if attempt == len(delays):
                    self.skipped += 1
                    log.error("telegram: could not %s update %s after %d attempts; skipped "
                              "as poison (%s: %s)", where, update.update_id, attempt + 1,
                              type(exc).__name__, exc, exc_info=exc)
                    return
                if host.stopping:
                    raise DeliveryAborted from exc
                delay = delays[attempt]
                log.warning("telegram: could not %s update %s (%s: %s); retrying in %g s",
                            where, update.update_id, type(exc).__name__, exc, delay)
                await asyncio.sleep(delay)
                continue
            log.debug("telegram: inbound %s from %s: %s", inbound.message_id,
                      inbound.sender_id, status)
            return

    def _note_group(self, msg: Message) -> None:
        """Log a group the first time someone we may answer writes in it."""
        chat = msg.chat
        if chat.id in self._groups_seen:
            return
        who = translate.speaker(msg)
        if who is not None and who.kind is ChatKind.GROUP:
            self._groups_seen.add(chat.id)  # operators look the group id up here
            log.info("telegram: message in group %r (chat %s)", chat.title or "", chat.id)

    # ------------------------------------------------------------------ webhook

    async def start_webhook(self, bot: Bot) -> None:
        """Serve the webhook on webhookHost:webhookPort and register it with setWebhook."""
        self._begin(bot)
        cfg = self._host.config
        secret = cfg.webhookSecret.get_secret_value() if cfg.webhookSecret else ""
        path = cfg.webhookPath if cfg.webhookPath.startswith("/") else "/" + cfg.webhookPath

        async def receive(request: web.Request) -> web.Response:
            given = request.headers.get("X-Telegram-Bot-Api-Secret-Token", "")
            if not secret or not hmac.compare_digest(given.encode(), secret.encode()):
                log.warning("telegram: webhook request with a wrong or missing secret refused")
                return web.Response(status=403, text="forbidden")
            try:
                data = await request.json()
                update = Update.de_json(data, bot)
            except (ValueError, TypeError, KeyError, json.JSONDecodeError):
                return web.Response(status=400, text="bad update")
            if update is None:
                return web.Response(status=400, text="bad update")
            if self._host.ready_due:
                self._host.notify_ready()  # Telegram reaches us, so we can likely reach it
            # Answered only once the core has stored the update: Telegram re-sends
            # anything not answered 2xx, so a crash here loses nothing.  One at a time,
            # in arrival order (setWebhook asks for a single connection).
            async with self._webhook_lock:
                try:
                    await self.handle_update(update)
                except DeliveryAborted:
                    return web.Response(status=503, text="stopping")
                except StoreUnavailable as exc:
                    # Not stored: Telegram sends it again later (its own backoff).
                    self.store_paused = exc.reason
                    return web.Response(status=503, text="store unavailable",
                                        headers={"Retry-After": "5"})
            self.store_paused = None
            return web.Response(text="ok")

        server = web.Application(client_max_size=2 * 1024 * 1024)
        server.router.add_post(path, receive)
        runner = web.AppRunner(server, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        site = web.TCPSite(runner, cfg.webhookHost, cfg.webhookPort)
        await site.start()
        self._webhook_runner = runner
        await bot.set_webhook(
            url=cfg.webhookUrl or "",
            secret_token=secret,
            allowed_updates=ALLOWED_UPDATES,
            drop_pending_updates=False,
            max_connections=1,  # Telegram then sends updates one by one, in order
        )

    async def close_webhook(self) -> None:
        """Stop the webhook server, if one runs."""
        runner, self._webhook_runner = self._webhook_runner, None
        if runner is not None:
            await runner.cleanup()
