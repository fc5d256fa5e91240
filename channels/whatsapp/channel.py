"""The WhatsApp adapter: a linked device of the operator's account (neonize, whatsmeow).

The adapter only translates: a neonize ``MessageEv`` becomes an
:class:`~bridge.envelope.Inbound` (through :mod:`channels.whatsapp.content`), an
:class:`~bridge.envelope.Outbound` becomes text messages.  It talks to WhatsApp through
the narrow :class:`~channels.whatsapp.client.WhatsAppClient`, so tests drive it with a
recording fake.

What it is designed around (see :mod:`channels.whatsapp.client` for neonize's traits):

- Go aborts the process when a call reaches it without a live session, so
  :meth:`WhatsAppChannel.send` does not even try while the channel is not connected
  (``SendError(retryable=True)``: the core keeps the reply) and every ``ConnectedEv``
  calls the core's ``channel_ready`` so kept replies go out then.
- whatsmeow reconnects a dropped socket by itself inside a session; this adapter's
  :class:`Backoff` (2 s doubling to 30 s, jittered) rebuilds the session when the Go
  call ends (connection refused at start, session died).
- ``download_any`` returns the whole file at once, so the size cap is checked on the
  declared ``fileLength`` before downloading and on the bytes after; see
  :meth:`WhatsAppChannel._fetch`.
- Presence stays "unavailable" (announced after every connect, retried after a
  failure): while a linked device is "available" the operator's phone gets no push
  notifications (whatsmeow #262), and on the first run after login announcing fails
  until the push name has synced.  Delivery receipts are forced on so ticks still
  show.  whatsmeow shows "typing…" to others only while "available", so with
  ``typing_presence`` the channel goes available around a reply only.
- whatsmeow emits ``ConnectFailureEv`` only after it has stopped reconnecting, and
  neonize's ``Neonize()`` does not return then: the channel ends that session itself so
  the reconnect loop rebuilds it with backoff (outdated / bad user agent are terminal).
- Posts of followed WhatsApp Channels (``@newsletter``) and status broadcasts are
  skipped; broadcast-list messages are answered in the sender's chat, but their read
  receipts go to the broadcast chat with the sender as participant.
- WhatsApp takes one connection per device: a second one gets the first replaced
  (whatsmeow's ``StreamReplaced``, after which it does not reconnect).  So with several
  Palavers on one PostgreSQL store (the device keys in that database, see
  :mod:`channels.whatsapp.session`) only the leader of ``whatsapp/<account>`` connects
  (:meth:`WhatsAppChannel.follow_leader`): the others stand by, serve none of its chats
  (:meth:`WhatsAppChannel.owns`), and the one that takes the leadership over connects
  with a fresh session.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from enum import StrEnum
from pathlib import Path
from typing import Any

from neonize.aioze.events import (
    ClientOutdatedEv,
    ConnectedEv,
    ConnectFailureEv,
    DisconnectedEv,
    LoggedOutEv,
    MessageEv,
    StreamReplacedEv,
    TemporaryBanEv,
)
from neonize.proto.Neonize_pb2 import JID
from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as waE2E
from neonize.utils.jid import build_jid

from bridge.backoff import Backoff
from bridge.config.schema import WhatsAppConfig
from bridge.envelope import (
    AcceptStatus,
    ChatAddress,
    ChatKind,
    Inbound,
    MediaKind,
    MediaRef,
    Outbound,
    Quoted,
)
from bridge.formatting import chunk_plain, render
from bridge.lru import LRU
from bridge.media import MediaStore
from bridge.ports import (
    Capabilities,
    Channel,
    ChannelHealth,
    InboundSink,
    Markup,
    SendError,
    SendProgress,
    StoreUnavailable,
)
from bridge.voice.audio import duration_s as duration_of
from bridge.voice.audio import is_ogg_opus
from channels.whatsapp.client import (
    ExitFunction,
    NeonizeClient,
    NotConnected,
    NotSent,
    Undeliverable,
    WhatsAppClient,
    arm_exit_guard,
)
from channels.whatsapp.content import (
    BROADCAST_SERVER,
    GROUP_SERVER,
    LID_SERVER,
    NEWSLETTER_SERVER,
    PHONE_SERVER,
    MediaSpec,
    QuoteRef,
    bare_ref,
    clip,
    describe,
    enum_name,
    jid_str,
    join_notes,
    parse_jid,
    quote_participant,
    timestamp_s,
    unwrap,
    user_of,
)
from channels.whatsapp.identity import LID_MAP_FILE, LidMap, SenderIdentity, sender_identity
from channels.whatsapp.quotes import QUOTES_FILE, QuoteJournal
from channels.whatsapp.session import KeyValue, SessionStore

log = logging.getLogger(__name__)

LOGIN_HINT = "run `palaver whatsapp login` to link this bridge as a device"
NOT_LINKED = f"not linked: {LOGIN_HINT}"

# ConnectFailure reasons after which reconnecting cannot help (besides the log-outs,
# the temporary ban and "outdated", which have their own events).
_LOGGED_OUT_REASONS = frozenset({"LOGGED_OUT", "MAIN_DEVICE_GONE", "UNKNOWN_LOGOUT"})
_TERMINAL_FAILURES = {
    "CLIENT_OUTDATED": "WhatsApp says this client is outdated; upgrade neonize",
    "BAD_USER_AGENT": "WhatsApp refused this client's user agent (bad user agent); "
                      "upgrade neonize",
}


class _InboxItem(StrEnum):
    """What the inbox worker is handed, in the order Go produced it."""

    ONLINE = "online"  # a session attempt starts: the catch-up reference until connected
    CONNECTED = "connected"  # refresh identity, announce presence, new catch-up reference
    MESSAGE = "message"  # a MessageEv


def _render(text: str, limit: int, plain: bool) -> list[str]:
    """The chunks to send: WhatsApp markup, or ``text`` as it is when ``plain``."""
    if plain:
        return chunk_plain(text, limit)
    return [chunk for chunk in render(text, Markup.WHATSAPP, limit) if chunk.strip()]


class WhatsAppChannel(Channel):
    """WhatsApp adapter: a linked device of the operator's account."""

    name = "whatsapp"
    account = "default"

    send_attempts = 3
    send_retry_delays = (0.5, 1.0)
    quote_cache_size = 512
    # A download that takes longer is abandoned (the message gets a note) so one stuck
    # transfer cannot hold up every later message.
    download_timeout_s = 60.0
    # stop() hands messages already received (and acknowledged to WhatsApp, which will
    # not send them again) to the core for at most this long.
    stop_drain_s = 10.0
    # A message is "catch-up" (sent while Palaver was offline) when it is older than the
    # moment this connection came up, less this allowance for clock differences.
    catch_up_skew_s = 30.0
    # When neonize's thread outlives the final stop, the process is ended this long
    # after stop() returned (the rest of the shutdown runs meanwhile).
    exit_grace_s = 15.0
    # A failed presence announcement is tried again this often while connected.
    presence_retry_s = 60.0
    # Received messages kept in memory while the store is unavailable; more are dropped.
    held_max = 500
    # A leader whose connection is replaced this often within one leadership term halts
    # (something outside the cluster uses the device); fewer are rebuilt.
    replaced_limit = 3
    # Not linked: the session is looked at this often, so a `palaver whatsapp login` made
    # while Palaver runs is picked up without a restart (a read of the session database,
    # no WhatsApp connection).
    link_check_s = 5.0

    def __init__(
        self,
        config: WhatsAppConfig,
        *,
        media: MediaStore,
        data_dir: Path,
        client_factory: Callable[[Path], WhatsAppClient] | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        typing_interval: float = 8.0,
        rng: random.Random | None = None,
        typing_presence: bool | None = None,
        exit_fn: ExitFunction | None = None,
        session: SessionStore | None = None,
        shared: KeyValue | None = None,
    ) -> None:
        """``session``: where the device keys are (default: the SQLite file under
        ``data_dir``); ``shared``: the store's key-value table, for the LID map and the
        quote journal when several Palavers share the account (default: files)."""
        self.config = config
        self.capabilities = Capabilities(config.textChunkLimit, Markup.WHATSAPP,
                                         voice_notes=True, reactions=True)
        self._media = media
        self._session = session or SessionStore.sqlite(Path(data_dir))
        self._dir = self._session.files
        self._client_factory = client_factory or NeonizeClient
        self._clock = clock
        self._sleep = sleep
        self._typing_interval = typing_interval
        self._backoff = Backoff(rng=rng or random.Random())
        self._lids = LidMap(self._dir / LID_MAP_FILE, shared=shared,
                            namespace=f"whatsapp.lid:{self.account}")
        self._quotes = QuoteJournal(self._dir / QUOTES_FILE, self.quote_cache_size,
                                    shared=shared, namespace=f"whatsapp.quotes:{self.account}")

        self._client: WhatsAppClient | None = None
        self._sink: InboundSink | None = None
        self._inbox: asyncio.Queue[tuple[_InboxItem, Any]] = asyncio.Queue()
        self._worker: asyncio.Task | None = None
        self._supervisor: asyncio.Task | None = None
        self._recent: LRU[str, MessageEv] = LRU(self.quote_cache_size)
        self._online_since: float | None = None  # when the current connection came up
        self._handling: str | None = None  # id of the message the worker is on
        self._me_users: frozenset[str] = frozenset()
        self._me_phone: str | None = None
        self._me_name = ""  # this account's push name (what people call the bot)
        self._connected = False
        self._stopping = False
        self._terminal: str | None = None
        self._ended_by: str | None = None  # why the channel ended a session itself
        self._detail = "not started"
        # "typing…" needs "available" presence, which silences the phone's notifications:
        # off unless configured (``typingPresence``) or asked.
        self._typing_presence = bool(
            config.typingPresence if typing_presence is None else typing_presence
        )
        self._presence_ok = False  # "unavailable" announced on the current connection
        self._presence_task: asyncio.Task | None = None
        self._exit_fn = exit_fn
        # Received messages the store could not take (StoreUnavailable), oldest first.
        self._held: collections.deque[tuple[Inbound, Callable[[AcceptStatus],
                                                              Awaitable[None]]]] = (
            collections.deque())
        self._held_dropped = 0
        self._release_task: asyncio.Task | None = None
        self.exit_guard: Any = None  # the armed timer when neonize's thread is stuck
        # Leadership (several Palavers on one store): set by follow_leader(); the session
        # runs only between start_leading() and stop_leading().
        self._following = False
        self._leading = False
        self._leader_check: Callable[[], None] | None = None
        self._leader_of: Callable[[], str | None] | None = None
        self._lead_lock = asyncio.Lock()  # start/stop_leading and stop, one at a time
        self._linked = False  # start() found a linked device
        self._closed = False  # stop() ran: leadership changes no longer apply
        self._stuck_clients: list[WhatsAppClient] = []  # earlier terms' unstoppable ones
        self._replacements = 0  # StreamReplaced seen in this leadership term
        self._link_watch: asyncio.Task | None = None  # not linked: waits for a login

    # -- lifecycle ----------------------------------------------------------------

    async def start(self, sink: InboundSink) -> None:
        """Open the stored session and connect in the background (while following a
        leader: only once :meth:`start_leading` says so); never raises for WhatsApp."""
        if self._worker is not None:
            return
        self._sink = sink
        self._stopping = self._closed = False
        self._terminal = None
        self._replacements = 0
        try:
            await self._session.prepare()
            await self._lids.load()
            await self._quotes.load()
            client = self._client_factory(self._client_target())
            linked = await client.has_session()
        except Exception as exc:
            self._detail = f"cannot open the WhatsApp session: {type(exc).__name__}: {exc}"
            log.error("WhatsApp: %s (%s); the channel stays off", self._detail,
                      self._session.label)
            return
        self._linked = linked
        if not linked:
            self._detail = NOT_LINKED
            log.warning("WhatsApp: no linked session in %s; %s (it is picked up within "
                        "%g s). Everything else keeps running.", self._session.location,
                        LOGIN_HINT, self.link_check_s)
            await self._warn_of_local_session()
            self._watch_for_link()
            return
        self._worker = asyncio.create_task(self._work(), name="whatsapp-inbox")
        if self._following and not self._leading:
            # Another process may hold the connection: a second one would replace it.
            self._detail = "standby"
            with contextlib.suppress(Exception):
                await client.close()
            return
        self._begin_session(client)

    def _fresh_term(self) -> None:
        """Before a new session of a term: what ended the last one does not carry over."""
        self._stopping = False
        self._terminal = self._ended_by = None
        self._connected = False
        self._replacements = 0
        self._backoff.reset()

    def _ensure_worker(self) -> None:
        """The inbox worker (handing received messages to the core), once."""
        if self._worker is None:
            self._worker = asyncio.create_task(self._work(), name="whatsapp-inbox")

    def _watch_for_link(self) -> None:
        """Not linked: look at the session every ``link_check_s`` until a device is
        (one watcher at a time; stop() ends it)."""
        if self._closed or (self._link_watch is not None and not self._link_watch.done()):
            return
        self._link_watch = asyncio.create_task(self._await_link(), name="whatsapp-link")

    async def _await_link(self) -> None:
        # The session is read without a client (a neonize client is a Go object, and
        # its finaliser a Go call): one is made only once a device is there.
        while not self._closed:
            await asyncio.sleep(self.link_check_s)
            try:
                if not await self._session.linked_devices():
                    continue
                client = self._client_factory(self._client_target())
                linked = await client.has_session()
            except Exception as exc:  # the store blinked: look again next time
                log.debug("WhatsApp: the session could not be read (%s: %s)",
                          type(exc).__name__, exc)
                continue
            if linked:
                await self._linked_meanwhile(client)
                return

    async def _linked_meanwhile(self, client: WhatsAppClient) -> None:
        """A device was linked while Palaver ran: connect it as start() would have (or,
        following a leader and not leading, stand by with it)."""
        async with self._lead_lock:
            if self._closed or self._linked or self._sink is None:
                return
            self._linked = True
            log.info("WhatsApp: a device was linked in %s", self._session.location)
            try:
                await self._lids.load()
                await self._quotes.load()
            except Exception:
                log.exception("WhatsApp: what the adapter learnt could not be loaded")
            self._ensure_worker()
            if (self._following and not self._leading) or self._supervisor is not None:
                self._detail = "standby" if self._following else self._detail
                with contextlib.suppress(Exception):
                    await client.close()
                return
            self._fresh_term()
            log.info("WhatsApp: connecting")
            self._begin_session(client)

    async def _warn_of_local_session(self) -> None:
        """On PostgreSQL: say so when a device is still linked in the SQLite file of a
        Palaver that ran before its store moved (``palaver store migrate``): its keys
        are not copied; the cluster needs a login of its own."""
        if not self._session.shared:
            return
        local = SessionStore.sqlite(self._dir.parent)
        try:
            devices = await local.linked_devices()
        except Exception:
            return
        if devices:
            log.warning("WhatsApp: a device is linked in %s, from before the store was on "
                        "PostgreSQL; its keys stay there. Run `palaver whatsapp login` to "
                        "link the cluster (the device keys go to PostgreSQL), then remove "
                        "the old device on the phone (Settings > Linked devices)",
                        local.label)

    def _client_target(self) -> Any:
        """What the client factory gets: the SQLite file, or the PostgreSQL store."""
        return self._session if self._session.shared else self._session.path

    def _begin_session(self, client: WhatsAppClient) -> None:
        """Register the handlers on a new client and start the reconnect loop."""
        self._client = client
        client.on(MessageEv, self._on_message)
        client.on(ConnectedEv, self._on_connected)
        client.on(DisconnectedEv, self._on_disconnected)
        client.on(LoggedOutEv, self._on_logged_out)
        client.on(TemporaryBanEv, self._on_temporary_ban)
        client.on(StreamReplacedEv, self._on_stream_replaced)
        client.on(ConnectFailureEv, self._on_connect_failure)
        client.on(ClientOutdatedEv, self._on_client_outdated)
        client.on_qr(self._on_qr)
        self._detail = "connecting"
        self._supervisor = asyncio.create_task(self._supervise(), name="whatsapp-session")

    # -- leadership (several Palavers on one store) ---------------------------------

    @property
    def leadership(self) -> str:
        """The leadership whose holder alone connects this account: WhatsApp takes one
        connection per device (``whatsapp/<account>``)."""
        return f"whatsapp/{self.account}"

    @property
    def serves_only_while_leading(self) -> bool:
        """A process that is not the leader cannot send either (no connection): its
        chats are given up when the leadership is lost."""
        return True

    def follow_leader(self, check: Callable[[], None],
                      leader: Callable[[], str | None] | None = None) -> None:
        """Before :meth:`start`: connect only between :meth:`start_leading` and
        :meth:`stop_leading`, asking ``check`` (raises when not the leader) before every
        connect; ``leader()`` names the process that leads (for :meth:`health`)."""
        self._following = True
        self._leader_check = check
        self._leader_of = leader

    async def start_leading(self) -> None:
        """This process holds the leadership: connect with a fresh session (what ended
        the previous one, a replaced stream included, does not carry over).

        Raises when the session cannot be read (the coordinator gives the leadership up
        and tries again); not linked is no error (nobody could connect)."""
        async with self._lead_lock:
            self._leading = True
            if self._sink is None or self._closed or self._supervisor is not None:
                return  # start() connects (or the channel is done)
            self._fresh_term()
            try:
                # What the previous leader learnt (shared store), then the device.
                await self._lids.load()
                await self._quotes.load()
                client = self._client_factory(self._client_target())
                linked = await client.has_session()
            except Exception as exc:
                self._leading = False  # the coordinator gives it up (and tries again)
                self._detail = (f"cannot open the WhatsApp session: {type(exc).__name__}: "
                                f"{exc}")
                raise RuntimeError(self._detail) from None
            self._linked = linked
            if not linked:
                self._detail = NOT_LINKED
                log.warning("WhatsApp: this process leads %s but no device is linked in "
                            "%s; %s", self.leadership, self._session.location, LOGIN_HINT)
                self._watch_for_link()
                return
            self._ensure_worker()
            log.info("WhatsApp: this process leads %s; connecting", self.leadership)
            self._begin_session(client)

    async def stop_leading(self) -> None:
        """The leadership is lost: disconnect at once (before the lease lets another
        process connect, which would replace this stream), then hand the messages
        already received to the core (WhatsApp acknowledged them and will not send them
        again; their media can no longer be fetched).  The inbox worker stays."""
        async with self._lead_lock:
            self._leading = False
            if self._closed or self._supervisor is None:
                if not self._closed and self._detail != NOT_LINKED:
                    self._detail = "standby"
                return
            self._stopping = True  # late connection events are ignored from here
            self._connected = False
            self._cancel_presence_retry()
            client, self._client = self._client, None
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.close()
                if client.stuck:
                    self._stuck_clients.append(client)
            supervisor, self._supervisor = self._supervisor, None
            if not supervisor.done():
                supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await supervisor
            await self._drain(asyncio.get_running_loop().time() + self.stop_drain_s)
            self._stopping = False
            self._terminal = self._ended_by = None
            self._detail = "standby"
            log.info("WhatsApp: disconnected (no longer the leader of %s)", self.leadership)

    def owns(self, address: ChatAddress) -> bool:
        """Whether this process serves WhatsApp chats: unless it follows a leader, or
        while it leads."""
        return self._leading or not self._following

    async def stop(self) -> None:
        """Stop the session (tells Go to stop), the reconnect loop and the inbox worker.

        Messages already received are handed to the core first (for at most
        ``stop_drain_s``): WhatsApp has acknowledged them and will not deliver them again.
        They are drained while the session is still up (so their media can be fetched),
        then once more after it stopped for anything that arrived meanwhile.
        """
        async with self._lead_lock:
            await self._stop()

    async def _stop(self) -> None:
        self._stopping = self._closed = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.stop_drain_s
        await self._drain(deadline)
        self._connected = False
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.close()  # the session, then its Go-call threads
        await self._drain(deadline)
        for task in (self._supervisor, self._worker):
            if task is not None and not task.done():
                task.cancel()
        for task in (self._supervisor, self._worker):
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._supervisor = self._worker = None
        if self._link_watch is not None:
            self._link_watch.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._link_watch
            self._link_watch = None
        self._cancel_presence_retry()
        self._discard_inbox()
        if self._release_task is not None:
            self._release_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._release_task
            self._release_task = None
        if self._held:
            log.error("WhatsApp: stopped with %d received message(s) the store never took; "
                      "WhatsApp will not deliver them again: %s", len(self._held),
                      ", ".join(i.message_id for i, _ in list(self._held)[:20]))
            self._held.clear()
        clients = [*self._stuck_clients, *([self._client] if self._client else [])]
        if any(client.stuck for client in clients):
            # neonize's Neonize() thread did not stop: interpreter exit would join it
            # forever, so the process is ended deliberately once shutdown had time.
            self.exit_guard = arm_exit_guard(0, self.exit_grace_s,
                                             exit_fn=self._exit_fn or os._exit)
        if self._terminal is None and self._detail != NOT_LINKED:
            self._detail = "stopped"

    def health(self) -> ChannelHealth:
        """Connected or not, and why (not linked, logged out, reconnecting, standby...)."""
        detail = self._detail
        if self._following and not self._leading and not self._closed:
            leader = None
            if self._leader_of is not None:
                with contextlib.suppress(Exception):
                    leader = self._leader_of()
            detail = f"standby (leader: {leader or 'none yet'})"
            if not self._linked and self._detail != "not started":
                detail += f"; {self._detail}"
        if self._held:
            detail += (f"; {len(self._held)} received message(s) held in memory "
                       "(the store is unavailable)")
        return ChannelHealth(self._connected, detail)

    async def wait_idle(self) -> None:
        """Wait until every event received so far has been handled (tests, shutdown)."""
        await self._inbox.join()

    async def _drain(self, deadline: float) -> None:
        """Let the worker finish the inbox, until ``deadline`` (loop time)."""
        if self._worker is None or self._worker.done():
            return
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._inbox.join(), remaining)

    def _discard_inbox(self) -> None:
        """Empty the inbox after the worker stopped; log messages that were not handled."""
        lost = [self._handling] if self._handling else []
        self._handling = None
        while not self._inbox.empty():
            kind, payload = self._inbox.get_nowait()
            self._inbox.task_done()
            if kind is _InboxItem.MESSAGE:
                lost.append(payload.Info.ID)
        if lost:
            log.warning("WhatsApp: %d received message(s) not handed to the core within "
                        "%.0f s of stopping; WhatsApp will not deliver them again: %s",
                        len(lost), self.stop_drain_s, ", ".join(lost[:20]))

    async def _supervise(self) -> None:
        assert self._client is not None
        while not self._stopping and self._terminal is None:
            if not self._may_connect():
                await self._sleep(self._backoff.next())
                continue
            error: BaseException | None = None
            # Until ConnectedEv says otherwise, the connection dates from this call.
            self._inbox.put_nowait((_InboxItem.ONLINE, self._clock()))
            try:
                session = await self._client.connect()
                await session
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                error = exc
            self._connected = False
            self._cancel_presence_retry()
            if self._stopping or self._terminal is not None:
                break
            with contextlib.suppress(Exception):
                await self._client.disconnect()  # always: Go's client may still be up
            delay = self._backoff.next()
            ended_by, self._ended_by = self._ended_by, None
            reason = (f"{type(error).__name__}: {error}" if error
                      else ended_by or "the session ended")
            self._detail = f"disconnected ({clip(reason, 120)}); retrying in {delay:.0f} s"
            log.warning("WhatsApp: connection failed or lost (%s); reconnecting in %.1f s",
                        clip(reason, 200), delay)
            await self._sleep(delay)
        self._connected = False

    def _may_connect(self) -> bool:
        """Whether the leadership (when followed) is still this process's to use."""
        if self._leader_check is None:
            return True
        try:
            self._leader_check()
        except Exception as exc:  # bridge.store.coord.Lost
            self._detail = f"not connecting: {clip(str(exc) or type(exc).__name__, 120)}"
            return False
        return True

    async def _halt(self, detail: str) -> None:
        """A terminal state: log it once, stop the session, leave the rest of Palaver alone."""
        if self._terminal is not None:
            return
        self._terminal = detail
        self._detail = detail
        self._connected = False
        log.error("WhatsApp: %s. The WhatsApp channel is stopped; everything else keeps "
                  "running.", detail)
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.disconnect()

    # -- connection events (run on the loop, straight from Go) ---------------------

    async def _on_connected(self, _event: Any) -> None:
        if self._stopping or self._terminal is not None:
            return  # a late event: sends stay refused
        if self._following and not self._may_connect():
            # whatsmeow reconnected by itself after the leadership went (a stall): this
            # connection would replace the leader's; end it at once.
            await self._end_unled_session("connected without the leadership")
            return
        self._backoff.reset()
        self._connected = True
        self._detail = "connected"
        # Identity refresh, presence and the catch-up reference, in order with messages.
        self._inbox.put_nowait((_InboxItem.CONNECTED, self._clock()))
        # Every connection comes up after start() returned (the session is built in the
        # background), so tell the core each time: replies it queued while WhatsApp was
        # away go out now instead of after their backoff.
        await self._report_ready()

    async def _report_ready(self) -> None:
        """Tell the core (``sink.channel_ready``) that WhatsApp is connected."""
        if self._sink is None:
            return
        try:
            self._sink.channel_ready(self)
        except Exception:
            log.exception("WhatsApp: telling the core that WhatsApp is connected failed")

    async def _on_disconnected(self, _event: Any) -> None:
        if self._stopping or self._terminal:
            return
        self._connected = False
        if self._following and not self._may_connect():
            # whatsmeow would reconnect by itself (nothing asks Python): not while another
            # process may lead, or this connection replaces its.
            await self._end_unled_session("disconnected without the leadership")
            return
        self._detail = "disconnected; reconnecting"
        log.warning("WhatsApp: connection dropped; reconnecting")

    async def _end_unled_session(self, why: str) -> None:
        """Stop the session now: this process cannot vouch for the leadership (the
        supervisor connects again only once the leadership check passes)."""
        self._connected = False
        self._ended_by = why
        log.warning("WhatsApp: %s; ending the session", why)
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.disconnect()

    async def _on_logged_out(self, event: Any) -> None:
        reason = enum_name(event, "Reason")
        await self._halt(f"logged out ({reason}): this device was unlinked from the phone or "
                         f"the session expired; {LOGIN_HINT} again")

    async def _on_temporary_ban(self, event: Any) -> None:
        code = enum_name(event, "Code")
        expire = getattr(event, "Expire", 0)
        await self._halt(f"temporarily banned by WhatsApp ({code}, expires in {expire} s); "
                         "restart Palaver after the ban ends")

    async def _on_stream_replaced(self, _event: Any) -> None:
        """Another connection of this device replaced this one (whatsmeow then does not
        reconnect).  Alone: another Palaver uses the session, a terminal state.  As the
        leader of a cluster it is most likely a process that led before and whose
        whatsmeow reconnected by itself after a stall (it lets go once it notices): the
        session is rebuilt, with backoff, and only ``replaced_limit`` replacements within
        one leadership term halt the channel (something outside the cluster uses it)."""
        if self._following and self._leading and not self._stopping:
            self._replacements += 1
            if self._replacements < self.replaced_limit and self._may_connect():
                self._connected = False
                self._ended_by = ("replaced by another connection of this device (a "
                                  "process that led before, reconnecting?)")
                self._detail = f"{self._ended_by}; reconnecting"
                log.warning("WhatsApp: %s (%d of %d); reconnecting", self._ended_by,
                            self._replacements, self.replaced_limit)
                if self._client is not None:
                    with contextlib.suppress(Exception):
                        await self._client.disconnect()
                return
        await self._halt("session replaced: the same linked session connected from another "
                         "place (another Palaver running?); stop the other one and restart")

    async def _on_client_outdated(self, _event: Any) -> None:
        await self._halt("WhatsApp says this client is outdated; upgrade neonize")

    async def _on_connect_failure(self, event: Any) -> None:
        reason = enum_name(event, "Reason")
        if reason in _LOGGED_OUT_REASONS:
            await self._on_logged_out(event)
        elif reason in _TERMINAL_FAILURES:
            await self._halt(f"{_TERMINAL_FAILURES[reason]} (connect failure {reason})")
        elif reason == "TEMP_BANNED":
            pass  # TemporaryBanEv follows with the code and expiry, and halts
        else:
            # whatsmeow sends this event only once it has turned its own reconnecting
            # off, and Neonize() does not return: end the session so the supervisor
            # rebuilds it with backoff.
            self._connected = False
            message = clip(getattr(event, "Message", "") or "", 120)
            self._ended_by = f"connect failure {reason}{': ' + message if message else ''}"
            self._detail = f"{self._ended_by}; reconnecting"
            log.warning("WhatsApp: %s; ending the session to reconnect", self._ended_by)
            if self._client is not None and not self._stopping:
                with contextlib.suppress(Exception):
                    await self._client.disconnect()

    async def _on_qr(self, _code: str) -> None:
        # A QR code during `palaver run` means the stored session is not valid.
        await self._halt(f"not linked (WhatsApp asked for a new QR login); {LOGIN_HINT}")

    # -- inbound ------------------------------------------------------------------

    async def _on_message(self, event: Any) -> None:
        # Go hands events over in order; queueing here keeps that order for the worker.
        self._inbox.put_nowait((_InboxItem.MESSAGE, event))

    async def _work(self) -> None:
        while True:
            kind, payload = await self._inbox.get()
            try:
                if kind is _InboxItem.ONLINE:
                    self._online_since = payload
                elif kind is _InboxItem.CONNECTED:
                    self._online_since = payload
                    await self._refresh_identity()
                    await self._announce_presence()
                else:
                    self._handling = payload.Info.ID  # left set if stop() cancels us
                    await self._handle_message(payload)
                    self._handling = None
            except asyncio.CancelledError:
                raise
            except Exception:
                self._handling = None
                log.exception("WhatsApp: failed to handle an inbound %s", kind)
            finally:
                self._inbox.task_done()

    async def _announce_presence(self) -> None:
        """After a connect: delivery receipts on, presence "unavailable" (retried)."""
        self._presence_ok = False
        if self._client is None:
            return
        try:
            await self._client.force_delivery_receipts()
        except Exception as exc:
            log.info("WhatsApp: could not force delivery receipts on: %s", clip(str(exc), 200))
        if not await self._try_presence():
            self._cancel_presence_retry()
            self._presence_task = asyncio.create_task(self._retry_presence(),
                                                      name="whatsapp-presence")

    async def _try_presence(self) -> bool:
        try:
            await self._require_client().set_presence(False)
        except Exception as exc:
            # On the first run after login this fails until the push name has synced.
            log.info("WhatsApp: could not announce presence yet (retrying every %.0f s): %s",
                     self.presence_retry_s, clip(str(exc), 200))
            return False
        self._presence_ok = True
        return True

    async def _retry_presence(self) -> None:
        while self._connected and not self._presence_ok:
            await self._sleep(self.presence_retry_s)
            if not self._connected or self._stopping:
                return
            await self._try_presence()

    def _cancel_presence_retry(self) -> None:
        task, self._presence_task = self._presence_task, None
        if task is not None and not task.done():
            task.cancel()

    async def _refresh_identity(self) -> None:
        if self._client is None:
            return
        try:
            me = await self._client.get_me()
        except Exception as exc:
            log.warning("WhatsApp: could not read this device's own JID: %s", exc)
            return
        users = set()
        phone = None
        if me.HasField("JID") and me.JID.User:
            phone = me.JID.User
            users.add(phone)
        if me.HasField("LID") and me.LID.User:
            users.add(me.LID.User)
            if phone:
                await self._lids.remember(me.LID.User, phone)
        self._me_users = frozenset(users)
        self._me_phone = phone
        self._me_name = me.PushName or ""
        if phone:
            self._detail = f"connected as +{phone}"

    async def _handle_message(self, ev: MessageEv) -> None:
        info = ev.Info
        src = info.MessageSource
        chat = src.Chat
        if chat.Server == BROADCAST_SERVER and chat.User == "status":
            log.debug("WhatsApp: skip status broadcast %s", info.ID)
            return
        if chat.Server == NEWSLETTER_SERVER:
            log.debug("WhatsApp: skip WhatsApp Channel post %s", info.ID)
            return
        if src.IsFromMe:
            log.debug("WhatsApp: skip own message %s", info.ID)
            return
        if ev.IsEdit:
            log.debug("WhatsApp: skip edit %s", info.ID)
            return
        content = describe(unwrap(ev.Message))
        if content.skipped:
            log.debug("WhatsApp: skip %s (%s)", info.ID, content.skipped)
            return
        timestamp = timestamp_s(info.Timestamp) if info.Timestamp else self._clock()
        age = self._catch_up_age(timestamp)
        if age is not None and age > self.config.catchUpMinutes * 60:
            log.info("WhatsApp: skip message %s sent while offline: %.0f min old "
                     "(catchUpMinutes=%s)", info.ID, age / 60, self.config.catchUpMinutes)
            return

        who = await self._identify(src.Sender, src.SenderAlt)
        receipt_chat = chat  # a broadcast list's receipt goes to the list, not the DM
        if chat.Server == BROADCAST_SERVER:  # a broadcast list reaches us as a direct chat
            chat = who.jid
        is_group = chat.Server == GROUP_SERVER
        address = ChatAddress(
            channel=self.name, account=self.account, chat_id=jid_str(chat),
            chat_kind=ChatKind.GROUP if is_group else ChatKind.DIRECT,
        )
        quoted, replied_to_bot = await self._quoted(content.context)
        mentioned = replied_to_bot or self._mentions_me(content.context)
        inbound = Inbound(
            address=address,
            sender_id=who.sender_id,
            message_id=info.ID,
            timestamp=timestamp,
            text=content.text,
            sender_name=clip(info.Pushname, 80) or None,
            sender_aliases=who.aliases,
            media=tuple(bare_ref(spec) for spec in content.media),
            quoted=quoted,
            mentioned=mentioned,
        )
        # Decide first, download after: a stranger's file or an unmentioned group photo
        # is never fetched.  A refused message still reaches accept() (pairing codes,
        # refusal records), with its media described but not downloaded.
        if any(spec.downloadable for spec in content.media) and await self._admits(inbound):
            media = tuple([await self._fetch(spec, ev.Message) for spec in content.media])
            inbound = dataclasses.replace(inbound, media=media)
        self._remember(ev)

        async def after(status: AcceptStatus) -> None:
            await self._after_accept(status, inbound, content.text, src, is_group,
                                     receipt_chat, who.jid)

        await self._accept(inbound, after)

    async def _accept(self, inbound: Inbound,
                      after: Callable[[AcceptStatus], Awaitable[None]]) -> None:
        """Hand ``inbound`` to the core; held in memory while the store is unavailable.

        WhatsApp will not deliver a message again once whatsmeow acknowledged it, so
        when ``accept`` raises :class:`StoreUnavailable` the message is kept here (at
        most ``held_max``, in order; later ones queue behind it) and offered again with
        backoff.  Its read receipt is sent only once it was stored.
        """
        assert self._sink is not None
        if self._held:
            self._hold(inbound, after)
            return
        try:
            status = await self._sink.accept(inbound)
        except StoreUnavailable as exc:
            self._hold(inbound, after, exc)
            return
        await after(status)

    def _hold(self, inbound: Inbound, after: Callable[[AcceptStatus], Awaitable[None]],
              error: Exception | None = None) -> None:
        if len(self._held) >= self.held_max:
            self._held_dropped += 1
            log.error("WhatsApp: the store is still unavailable and %d messages are held; "
                      "dropped message %s from %s (WhatsApp will not deliver it again)",
                      len(self._held), inbound.message_id, inbound.address.chat_id)
            return
        if not self._held:
            log.warning("WhatsApp: the store is unavailable (%s); holding received "
                        "messages in memory (at most %d) and retrying",
                        clip(str(error), 200) if error else "unknown", self.held_max)
        self._held.append((inbound, after))
        if self._release_task is None or self._release_task.done():
            self._release_task = asyncio.create_task(self._release_held(),
                                                     name="whatsapp-held")

    async def _release_held(self) -> None:
        """Offer held messages to the core again, oldest first, with backoff."""
        assert self._sink is not None
        backoff = Backoff(rng=random.Random())
        handed = 0
        while self._held:
            await self._sleep(backoff.next())
            while self._held:
                inbound, after = self._held[0]
                try:
                    status = await self._sink.accept(inbound)
                except StoreUnavailable:
                    break
                except Exception:
                    log.exception("WhatsApp: handing held message %s to the core failed; "
                                  "dropped", inbound.message_id)
                    self._held.popleft()
                    continue
                self._held.popleft()
                handed += 1
                try:
                    await after(status)
                except Exception:
                    log.exception("WhatsApp: after storing held message %s",
                                  inbound.message_id)
        log.warning("WhatsApp: the store is available again; %d held message(s) handed to "
                    "the core%s", handed,
                    f", {self._held_dropped} dropped" if self._held_dropped else "")
        self._held_dropped = 0

    async def _after_accept(self, status: AcceptStatus, inbound: Inbound, text: str,
                            src: Any, is_group: bool, receipt_chat: JID,
                            sender: JID) -> None:
        info_id, address = inbound.message_id, inbound.address
        log.debug("WhatsApp: message %s -> %s", info_id, status)
        content_text = text
        if status is AcceptStatus.ACCEPTED and is_group:
            shown = content_text or (inbound.media[0].placeholder() if inbound.media else "")
            try:
                await self._quotes.add(info_id, address.chat_id,
                                       quote_participant(src.Sender, src.SenderAlt), shown)
            except OSError as exc:
                log.warning("WhatsApp: cannot remember message %s for quoting: %s",
                            info_id, exc)
        if status is AcceptStatus.ACCEPTED and self.config.sendReadReceipts:
            try:
                await self._require_client().mark_read([info_id], chat=receipt_chat,
                                                       sender=sender)
            except Exception as exc:
                log.debug("WhatsApp: read receipt for %s failed: %s", info_id, exc)

    def _catch_up_age(self, timestamp: float) -> float | None:
        """How old a message sent while offline was when we came online; None when live.

        Live messages (sent after this connection came up) are always answered, however
        long they waited in the inbox; ``catchUpMinutes`` only limits the backlog.
        """
        since = self._online_since
        if since is None:  # no connection recorded (should not happen): judge by age
            return self._clock() - timestamp
        if timestamp >= since - self.catch_up_skew_s:
            return None
        return since - timestamp

    async def _admits(self, inbound: Inbound) -> bool:
        """Ask the core whether it would answer ``inbound`` (deny when it cannot say)."""
        if self._sink is None:
            return False
        try:
            return bool(await self._sink.admits(inbound))
        except Exception as exc:
            log.warning("WhatsApp: access check before downloading %s failed (%s); media "
                        "not downloaded", inbound.message_id, clip(str(exc), 200))
            return False

    async def _identify(self, sender: JID, alt: JID) -> SenderIdentity:
        """Map a sender (phone JID or LID) to ``+E164`` when possible; remember mappings."""
        jid = build_jid(sender.User, sender.Server)
        phone: str | None = None
        lid: str | None = None
        if sender.Server == LID_SERVER:
            lid = sender.User
            if alt.Server == PHONE_SERVER and alt.User:
                phone = alt.User
            else:
                phone = self._lids.phone_for(lid)
                if phone is None and self._client is not None:
                    with contextlib.suppress(Exception):
                        pn = await self._client.pn_for_lid(jid)
                        if pn is not None and pn.Server == PHONE_SERVER:
                            phone = pn.User
        elif sender.Server == PHONE_SERVER:
            phone = sender.User
            if alt.Server == LID_SERVER and alt.User:
                lid = alt.User
        if phone is not None and not phone.isdigit():
            phone = None
        if lid and phone:
            await self._lids.remember(lid, phone)
        return sender_identity(jid, phone=phone, lid=lid)

    def _mentions_me(self, context: waE2E.ContextInfo | None) -> bool:
        if context is None or not self._me_users:
            return False
        return any(user_of(j) in self._me_users for j in context.mentionedJID)

    async def _quoted(self, context: waE2E.ContextInfo | None) -> tuple[Quoted | None, bool]:
        if context is None or not (context.stanzaID or context.HasField("quotedMessage")):
            return None, False
        participant = context.participant
        user = user_of(participant) if participant else ""
        from_bot = bool(user) and user in self._me_users
        sender_id = None
        if participant and "@" in participant:
            server = participant.partition("@")[2]
            if from_bot and self._me_phone:
                sender_id = f"+{self._me_phone}"
            elif server == PHONE_SERVER:
                sender_id = f"+{user}"
            elif server == LID_SERVER and self._lids.phone_for(user):
                sender_id = f"+{self._lids.phone_for(user)}"
            else:
                sender_id = f"{user}@{server}"
        text = ""
        media: tuple[MediaRef, ...] = ()
        if context.HasField("quotedMessage"):
            inner = describe(unwrap(context.quotedMessage))
            text = inner.text
            # Described, never downloaded (a media item that is not downloadable, a
            # location or contact, has no mime type either).
            media = tuple(bare_ref(spec) for spec in inner.media)
        quoted = Quoted(message_id=context.stanzaID or None, sender_id=sender_id, text=text,
                        media=media, from_bot=from_bot)
        return quoted, from_bot

    async def _fetch(self, spec: MediaSpec, message: waE2E.Message) -> MediaRef:
        """Download one media item into the media store (bounded by ``mediaMaxMb``).

        neonize cannot stream a download or stop it at a size, and ``fileLength`` is
        whatever the sender's client wrote.  So: a declared size over the cap is not
        fetched; a video, audio, voice note or document WITHOUT a declared size is not
        fetched either (those can be large); an image or sticker without one is fetched
        and dropped if the bytes exceed the cap.  A sender who understates the size can
        still make Palaver hold one oversized file in memory until it is dropped; only
        senders the core admits get that far.  Downloads are abandoned after
        ``download_timeout_s`` (the worker thread finishes on its own, its bytes dropped).
        """
        def ref(note: str | None, size: int | None = spec.size) -> MediaRef:
            return bare_ref(spec, note=note, size=size)

        if not spec.downloadable:
            return ref(spec.note)
        limit = int(self.config.mediaMaxMb * 1024 * 1024)
        too_big = f"not downloaded: larger than the {self.config.mediaMaxMb:g} MB limit"
        if spec.size is not None and spec.size > limit:
            return ref(join_notes(spec.note, too_big))
        max_s = self.config.audioMaxSeconds
        if (spec.kind in _AUDIO_LIMITED and spec.duration_s is not None
                and spec.duration_s > max_s):
            # Not fetched at all: it would not be transcribed either.
            return ref(join_notes(spec.note, f"not downloaded: {round(spec.duration_s)} s "
                                             f"is over the {max_s:g} s limit"))
        if spec.size is None and spec.kind in _SIZE_REQUIRED:
            log.info("WhatsApp: %s without a stated size not downloaded", spec.kind)
            return ref(join_notes(spec.note, "not downloaded: size unknown"))
        try:
            data = await asyncio.wait_for(self._require_client().download(unwrap(message)),
                                          self.download_timeout_s)
        except TimeoutError:
            log.warning("WhatsApp: %s download took longer than %.0f s; abandoned",
                        spec.kind, self.download_timeout_s)
            return ref(join_notes(spec.note, "download timed out"))
        except Exception as exc:
            log.warning("WhatsApp: %s download failed: %s", spec.kind, clip(str(exc), 200))
            return ref(join_notes(spec.note, "download failed"))
        if len(data) > limit:
            return ref(join_notes(spec.note, too_big), size=len(data))
        if not data:
            return ref(join_notes(spec.note, "download failed (empty)"))
        stored = await self._media.put(
            data, kind=spec.kind, mime=spec.mime, filename=spec.filename,
            duration_s=spec.duration_s, width=spec.width, height=spec.height,
        )
        if spec.note:
            stored = MediaRef(kind=stored.kind, media_id=stored.media_id, mime=stored.mime,
                              filename=stored.filename, size=stored.size,
                              duration_s=stored.duration_s, width=stored.width,
                              height=stored.height, note=spec.note)
        return stored

    def _quote_for(self, message_id: str, chat_id: str) -> QuoteRef | None:
        """The quote for a reply: the cached event, else what quotes.jsonl remembers."""
        ev = self._recent.get(message_id)
        if ev is not None and jid_str(ev.Info.MessageSource.Chat) == chat_id:
            return QuoteRef.from_event(ev)
        return self._quotes.get(message_id, chat_id)

    def _remember(self, ev: MessageEv) -> None:
        self._recent.put(ev.Info.ID, ev)

    def _require_client(self) -> WhatsAppClient:
        if self._client is None or self._terminal is not None:
            raise NotConnected(self._detail)
        return self._client

    # -- outbound -----------------------------------------------------------------

    async def send(self, out: Outbound, progress: SendProgress | None = None) -> list[str]:
        """Render to WhatsApp markup, chunk, send in order (retrying); return message ids.

        Chunking is deterministic (the same ``out`` gives the same chunks); the first
        ``progress.start`` chunks are skipped (delivered before) and
        ``progress.sent(index, id)`` is awaited after each chunk, before the next one.

        Raises ``SendError(retryable=True)`` when nothing more can have gone out: the
        channel is not connected (connecting, reconnecting, stopped, logged out: no call
        reaches neonize then) or every attempt failed before the message left
        (:class:`NotSent`).  A plain ``SendError`` when the chat id is not a JID or a
        send failed in a way that may have delivered it (a retry could duplicate it).
        ``sent_ids`` always lists the chunks that did go out.
        """
        try:
            chat = parse_jid(out.address.chat_id)
        except ValueError as exc:
            raise SendError(str(exc)) from None
        chunks = _render(out.text, self.capabilities.text_chunk_limit, out.plain)
        quoted = None
        if out.reply_to_message_id and out.address.chat_kind is ChatKind.GROUP:
            quoted = self._quote_for(out.reply_to_message_id, out.address.chat_id)
        start = progress.start if progress is not None else 0
        sent: list[str] = []
        for index, chunk in enumerate(chunks):
            if index < start:
                continue
            quote = quoted if index == 0 else None
            message_id = await self._send_chunk(out.address.chat_id, chat, chunk, quote, sent)
            sent.append(message_id)
            if progress is not None:
                await progress.report(index, message_id)
        return sent

    def spoken_names(self) -> tuple[str, ...]:
        """This account's push name (its profile name, as people say it)."""
        return (self._me_name,) if self._me_name else ()

    async def send_voice(self, address: ChatAddress, audio: bytes, *,
                         duration_s: float | None = None, caption: str | None = None,
                         reply_to_message_id: str | None = None) -> str:
        """Send OGG/Opus ``audio`` as a voice note (an ``audioMessage`` with PTT,
        ``audio/ogg; codecs=opus`` and its seconds); return its message id.

        One attempt: any failure is a :class:`SendError` (the core then sends the text),
        retryable when nothing reached WhatsApp.  WhatsApp voice notes have no caption:
        ``caption`` is ignored.
        """
        try:
            chat = parse_jid(address.chat_id)
        except ValueError as exc:
            raise SendError(str(exc)) from None
        if not is_ogg_opus(audio):
            raise SendError("not OGG/Opus audio: WhatsApp would not play it as a voice note")
        seconds = duration_s if duration_s is not None else duration_of(audio)
        quoted = None
        if reply_to_message_id and address.chat_kind is ChatKind.GROUP:
            quoted = self._quote_for(reply_to_message_id, address.chat_id)
        client = self._client_for_send([])
        try:
            return await client.send_voice(chat, audio, seconds=round(seconds or 0),
                                           quoted=quoted)
        except NotSent as exc:
            raise SendError(f"WhatsApp voice note not sent: {clip(str(exc), 200)}",
                            retryable=True) from None
        except Exception as exc:
            raise SendError(f"WhatsApp voice note failed ({type(exc).__name__}: "
                            f"{clip(str(exc), 200)})") from None

    async def react(self, address: ChatAddress, message_id: str, emoji: str) -> None:
        """React to a received message (``""`` removes the reaction): a reaction message
        keyed by the chat, the message's author and its id.  No presence is involved, so
        the phone keeps its notifications.  One attempt; failures raise ``SendError``."""
        try:
            chat = parse_jid(address.chat_id)
        except ValueError as exc:
            raise SendError(str(exc)) from None
        author = self._author(address, message_id, chat)
        if author is None:
            raise SendError(f"WhatsApp: the author of {message_id} is not known any more")
        client = self._client_for_send([])
        try:
            await client.send_reaction(chat, author, message_id, emoji)
        except NotSent as exc:
            raise SendError(f"WhatsApp reaction not sent: {clip(str(exc), 200)}",
                            retryable=True) from None
        except Exception as exc:
            raise SendError(f"WhatsApp reaction failed ({type(exc).__name__}: "
                            f"{clip(str(exc), 200)})") from None

    def _author(self, address: ChatAddress, message_id: str, chat: JID) -> JID | None:
        """Who wrote ``message_id``: the other side of a direct chat; in a group the
        participant as WhatsApp delivered it (LID or phone JID), from the recent events,
        else the quote journal (after a restart)."""
        if address.chat_kind is not ChatKind.GROUP:
            return chat
        ev = self._recent.get(message_id)
        if ev is not None and jid_str(ev.Info.MessageSource.Chat) == address.chat_id:
            sender = ev.Info.MessageSource.Sender
            return build_jid(sender.User, sender.Server)
        quote = self._quotes.get(message_id, address.chat_id)
        if quote is None:
            return None
        try:
            return parse_jid(quote.participant)
        except ValueError:
            return None

    async def _send_chunk(self, chat_id: str, chat: JID, chunk: str, quote: QuoteRef | None,
                          sent: list[str]) -> str:
        """Send one chunk, retrying failures that provably sent nothing (see :meth:`send`)."""
        last_error: Exception | None = None
        for attempt in range(self.send_attempts):
            client = self._client_for_send(sent)
            try:
                return await client.send_text(chat, chunk, quoted=quote)
            except Undeliverable as exc:  # WhatsApp cannot reach this recipient at all
                raise SendError(f"WhatsApp cannot deliver to {chat_id}: "
                                f"{clip(str(exc), 200)}", sent_ids=list(sent)) from None
            except NotSent as exc:  # nothing went out: trying again cannot duplicate
                last_error = exc
                log.warning("WhatsApp: send to %s failed (attempt %d/%d): %s", chat_id,
                            attempt + 1, self.send_attempts, clip(str(exc), 200))
                if attempt + 1 < self.send_attempts:
                    delays = self.send_retry_delays
                    await self._sleep(delays[min(attempt, len(delays) - 1)])
            except Exception as exc:
                # The message may have reached WhatsApp (e.g. the server's ack timed
                # out): a retry could deliver it twice, so the core records a failure.
                log.warning("WhatsApp: send to %s failed and may have been delivered; "
                            "not retried: %s", chat_id, clip(str(exc), 200))
                raise SendError(
                    f"WhatsApp send failed, possibly after delivery, not retried "
                    f"({type(exc).__name__}: {clip(str(exc), 200)})",
                    sent_ids=list(sent),
                ) from None
        assert last_error is not None
        raise SendError(
            f"WhatsApp send failed after {self.send_attempts} attempts, before reaching WhatsApp "
            f"({type(last_error).__name__}: {clip(str(last_error), 200)})",
            sent_ids=list(sent), retryable=True,
        )

    def _client_for_send(self, sent: list[str]) -> WhatsAppClient:
        """The client when a session is connected, else a retryable :class:`SendError`.

        Checked before every call: after ``stop()`` or before the first connect, Go has
        no client for the session and a call reaching it would abort the process.
        """
        client = self._client
        if client is None or self._terminal is not None or not self._connected:
            raise SendError(f"WhatsApp is not connected ({self._detail})",
                            sent_ids=list(sent), retryable=True)
        return client

    @asynccontextmanager
    async def typing(self, address: ChatAddress) -> AsyncIterator[None]:
        """``composing`` presence, refreshed every few seconds, then ``paused``."""
        try:
            chat = parse_jid(address.chat_id)
        except ValueError:
            yield
            return
        if self._typing_presence:
            # whatsmeow shows "typing…" only while "available"; go back to
            # "unavailable" after the reply so the phone's notifications come back.
            await self._set_presence(True)
        refresher = asyncio.create_task(self._keep_composing(chat), name="whatsapp-typing")
        try:
            yield
        finally:
            refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresher
            await self._presence(chat, composing=False)
            if self._typing_presence:
                await self._set_presence(False)

    async def _set_presence(self, available: bool) -> None:
        try:
            await self._require_client().set_presence(available)
        except Exception as exc:  # cosmetic
            log.debug("WhatsApp: presence %s failed: %s",
                      "available" if available else "unavailable", exc)

    async def _keep_composing(self, chat: JID) -> None:
        while True:
            await self._presence(chat, composing=True)
            await asyncio.sleep(self._typing_interval)

    async def _presence(self, chat: JID, *, composing: bool) -> None:
        try:
            await self._require_client().chat_presence(chat, composing=composing)
        except Exception as exc:  # typing is cosmetic: never let it break a turn
            log.debug("WhatsApp: presence update failed: %s", exc)


# Kinds limited by audioMaxSeconds (what would be transcribed).
_AUDIO_LIMITED = frozenset({MediaKind.AUDIO, MediaKind.VOICE})
# Media kinds that can be large: not downloaded when the sender states no size.
_SIZE_REQUIRED = frozenset({MediaKind.VIDEO, MediaKind.AUDIO, MediaKind.VOICE,
                            MediaKind.DOCUMENT})
