"""The neonize transport: a narrow client over ``neonize.aioze.client.NewAClient``.

:class:`WhatsAppClient` is the slice of neonize the adapter uses (register handlers,
connect, send, presence, receipts, download, identity look-ups, pairing, logout), so
tests can drive the adapter and the login with a recording fake;
:class:`NeonizeClient` is the real one.

neonize traits this module is designed around (checked against neonize 0.5.2's source):

- Go dispatches events with ``asyncio.run_coroutine_threadsafe`` to ONE loop stored in
  ``neonize.aioze.events.event_global_loop``; ``set_event_loop`` only sets it once per
  process.  :func:`_bind_event_loop` rebinds it when the old loop is gone.
- ``NewAClient.connect()`` returns at once with a task running the blocking Go call
  ``Neonize()`` in a worker thread; that call only returns when Go is told to stop
  (``client.stop()`` -> ``Stop(uuid)``).  Every session is stopped that way.
- One handler per event type (a dict keyed by event code: the last registration wins),
  and the set of subscribed events is handed to Go at ``connect()``: register first.
- Exceptions raised in a handler vanish (nobody reads the concurrent future), so every
  handler the adapter registers catches and logs.
- After ``Stop(uuid)`` (or before the first connect) Go has no client for the uuid and
  any call that reaches it dereferences nil and aborts the whole process, so
  :class:`NeonizeClient` refuses calls while no session is live and lets calls in flight
  finish before it stops one.
- ``download_any`` returns the whole file at once (no streaming, no size limit of its
  own); the adapter bounds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from uuid import uuid4

from neonize.exc import SendMessageError
from neonize.proto.Neonize_pb2 import JID, Device
from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as waE2E

from bridge.ports import NotSent
from channels.whatsapp.content import QuoteRef, build_text_message

log = logging.getLogger(__name__)

SESSION_DIR = "whatsapp"  # under dataDir: whatsmeow's session and the adapter's files
SESSION_DB = "session.db"


def session_db_path(data_dir: Path) -> Path:
    """Where the whatsmeow session database lives under ``dataDir``."""
    return Path(data_dir) / SESSION_DIR / SESSION_DB


class NotConnected(NotSent):
    """A call needs a live WhatsApp session and there is none."""


@dataclass(frozen=True, slots=True)
class LinkedDevice:
    """The linked device whatsmeow stored (``whatsmeow_device``), read without Go."""

    jid: str  # "491512345678:7@s.whatsapp.net" (user:device@server)
    lid: str
    push_name: str
    business_name: str
    platform: str

    @property
    def phone(self) -> str:
        """The account's phone number digits (``jid`` without device and server)."""
        return self.jid.partition("@")[0].split(":", 1)[0].split(".", 1)[0]

    @property
    def name(self) -> str:
        """The business name when there is one, else the push name (may contain commas)."""
        return self.business_name or self.push_name


def read_linked_devices(db_path: Path) -> list[LinkedDevice]:
    """The devices in whatsmeow's session database, read-only and without Go.

    neonize's ``ClientFactory.get_all_devices_from_db`` splits Go's ``"%s,%s,%s,%t"``
    record on every comma, so a push or business name with a comma ("Doe, Jane") raises
    there; this reads the same table (``jid, lid, platform, business_name, push_name``,
    as whatsmeow's ``sqlstore`` schema names them) directly.  A missing file or a
    database whatsmeow has not yet created its tables in is no device; an unreadable
    file raises ``sqlite3.Error``.
    """
    path = Path(db_path)
    if not path.is_file():
        return []
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5.0)
    try:
        try:
            rows = conn.execute(
                "SELECT jid, COALESCE(lid, ''), COALESCE(push_name, ''), "
                "COALESCE(business_name, ''), COALESCE(platform, '') FROM whatsmeow_device"
            ).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return []
            raise
    finally:
        conn.close()
    return [LinkedDevice(*(str(v) for v in row)) for row in rows]


# whatsmeow errors raised before the message node is written to the socket (the strings
# are in neonize 0.5.2's Go library; where they arise follows whatsmeow's send.go:
# SendMessage checks login, looks up devices or group members, encrypts, and only then
# writes the node, wrapping a write failure as "failed to send message node: ...").
# Anything else, notably
# "timed out waiting for message send response", a bare "websocket not connected" (also
# returned when the socket dropped AFTER the node went out) or "websocket disconnected
# before message send returned response", may mean the message was delivered.
_UNSENT_PREFIXES = (
    "the store doesn't contain a device JID",  # ErrNotLoggedIn, checked first
    "client is nil",  # ErrClientIsNil
    "failed to get device list",  # usync of the recipient's devices, before encrypting
    "failed to get group members",  # group participants, before encrypting
    "failed to get LID for PN",  # the LID look-up of a phone JID, before encrypting
    "failed to get user info for",  # usync of the recipient, before encrypting
)
# A recipient WhatsApp has no LID for cannot be written to at all: never retried.
_PERMANENT_MARKERS = ("no LID found",)
_UNSENT_NODE_ERRORS = ("websocket not connected", "frame socket is closed")


def send_error_means_unsent(text: str) -> bool:
    """Whether a whatsmeow send error proves that nothing was sent (safe to retry)."""
    text = text.strip()
    if any(marker in text for marker in _PERMANENT_MARKERS):
        return False
    if text.startswith("failed to send message node:"):
        return any(marker in text for marker in _UNSENT_NODE_ERRORS)
    return text.startswith(_UNSENT_PREFIXES)


EventHandler = Callable[[Any], Awaitable[None]]


class WhatsAppClient(Protocol):
    """The narrow slice of neonize the adapter uses; JIDs are neonize ``JID`` protobufs."""

    def on(self, event_type: type, handler: EventHandler) -> None:
        """Register THE handler for a neonize event class (before :meth:`connect`)."""
        ...

    def on_qr(self, handler: Callable[[str], Awaitable[None]]) -> None:
        """Register the handler receiving each (rotated) login QR code string."""
        ...

    async def has_session(self) -> bool:
        """Whether the session database holds a linked device."""
        ...

    @property
    def stuck(self) -> bool:
        """Whether a stopped session's Go thread is still running (process exit hangs)."""
        ...

    async def connect(self) -> Awaitable[None]:
        """Start a session; return an awaitable that ends (or raises) when it ends.

        Calls are refused (:class:`NotConnected`) until Go has delivered its first
        callback for the session (its device record): before that Go may not have
        registered the client and a call would abort the process.
        """
        ...

    async def disconnect(self) -> None:
        """Tell the session to stop and wait (bounded) for it to end; idempotent."""
        ...

    async def send_text(self, chat: JID, text: str, *, quoted: QuoteRef | None = None) -> str:
        """Send ``text`` (quoting ``quoted`` when given); return the new message id.

        Raises :class:`NotSent` when nothing reached WhatsApp (safe to retry); any other
        error means the message may have been delivered.
        """
        ...

    async def set_presence(self, available: bool) -> None:
        """Announce ``available`` or ``unavailable`` presence.

        While "available" the phone gets no push notifications; whatsmeow shows
        "typing…" to others only while available.
        """
        ...

    async def force_delivery_receipts(self) -> None:
        """Send delivery receipts (grey ticks) even while presence is "unavailable"."""
        ...

    async def chat_presence(self, chat: JID, *, composing: bool) -> None:
        """Show "typing..." (``composing``) or stop showing it (paused)."""
        ...

    async def mark_read(self, message_ids: Sequence[str], *, chat: JID, sender: JID) -> None:
        """Send read receipts (blue ticks) for messages in ``chat`` from ``sender``."""
        ...

    async def download(self, message: waE2E.Message) -> bytes:
        """Download and decrypt the media of ``message``."""
        ...

    async def get_me(self) -> Device:
        """This device: ``JID`` (phone, with device number) and ``LID``."""
        ...

    async def pn_for_lid(self, lid: JID) -> JID | None:
        """The phone-number JID behind a LID, when whatsmeow's store knows it."""
        ...

    async def pair_phone(self, phone_digits: str) -> str:
        """Ask for a pairing code for ``phone_digits`` (call after the first QR event)."""
        ...

    async def logout(self) -> None:
        """Unlink this device from the account (needs a connected session)."""
        ...


def _bind_event_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Point neonize's process-wide event loop at ``loop``.

    ``neonize.aioze.events.set_event_loop`` only sets the loop the first time; a second
    ``asyncio.run`` in the same process (login then run, tests) would have events sent
    to a closed loop, so a dead loop is replaced here.
    """
    from neonize.aioze import events as neonize_events

    current = neonize_events.event_global_loop
    if current is None or current is loop:
        neonize_events.set_event_loop(loop)
        return
    if current.is_closed() or not current.is_running():
        neonize_events.event_global_loop = loop
        return
    raise RuntimeError("neonize already dispatches events to another running event loop")


def _jid_or_none(jid: JID) -> JID | None:
    return jid if jid.User and jid.Server else None


class NeonizeClient:
    """:class:`WhatsAppClient` backed by ``neonize.aioze.client.NewAClient``.

    ``new_client`` builds the neonize client (``NewAClient``'s signature); tests pass a
    fake of it (``tests/fakes/neonize_fake.py``) so this class runs as in production.
    """

    stop_timeout_s = 10.0
    # disconnect() lets calls already on their way to Go finish (for at most this long)
    # before it tells Go to drop the client: a call arriving after that would crash.
    call_drain_s = 5.0
    # Stop before Go's first callback can crash (Stop deletes the client while FetchMe
    # reads it) and does not end Neonize() anyway (FetchMe spins while the device has no
    # id): disconnect() waits this long for that callback first.
    ready_wait_s = 10.0
    ready_poll_s = 0.05
    # Concurrent downloads: an abandoned one keeps its worker thread (the Go call has no
    # context), so they are capped to keep asyncio's thread pool free for sends.
    max_downloads = 2

    def __init__(self, db_path: Path, *, new_client: Callable[..., Any] | None = None) -> None:
        from neonize.proto.waCompanionReg.WAWebProtobufsCompanionReg_pb2 import DeviceProps

        if new_client is None:
            from neonize.aioze.client import NewAClient

            new_client = NewAClient
        self._db_path = Path(db_path)
        self._props = DeviceProps(os="Palaver", platformType=DeviceProps.SAFARI)
        # A unique uuid per instance: neonize's finaliser calls Stop(uuid) when a client
        # object is collected, which must never stop a newer client's session.
        self._client = new_client(str(self._db_path), props=self._props,
                                  uuid=f"palaver-{uuid4().hex}")
        self._session: asyncio.Task | None = None
        self._ready = False  # Go's first callback (the device record) arrived
        # Any event of the session arrived (a QR code during login): Go has registered
        # the client, so calls are safe, though Stop may not be yet (see disconnect).
        self._registered = False
        self._stuck = False
        self._calls = 0  # calls between the liveness check and their return
        self._calls_done = asyncio.Event()
        self._calls_done.set()
        self._downloads = asyncio.Semaphore(self.max_downloads)

    # -- registration -------------------------------------------------------------

    def on(self, event_type: type, handler: EventHandler) -> None:
        async def dispatch(_client: Any, event: Any) -> None:
            self._registered = True  # Go sends events only for a registered client
            await handler(event)

        self._client.event(event_type)(dispatch)

    def on_qr(self, handler: Callable[[str], Awaitable[None]]) -> None:
        async def dispatch(_client: Any, data: bytes) -> None:
            self._registered = True
            await handler(data.decode("utf-8", "replace"))

        self._client.qr(dispatch)

    # -- lifecycle ----------------------------------------------------------------

    async def has_session(self) -> bool:
        devices = await asyncio.to_thread(read_linked_devices, self._db_path)
        return bool(devices)

    @property
    def stuck(self) -> bool:
        return self._stuck

    async def connect(self) -> Awaitable[None]:
        if self._session is not None and not self._session.done():
            raise RuntimeError("a WhatsApp session is already running")
        _bind_event_loop(asyncio.get_running_loop())
        # whatsmeow's log level is taken from this logger at connect(); unset, neonize
        # passes an empty level to Go.  Default to warnings (they surface as whatsmeow.*).
        neonize_log = logging.getLogger("neonize.utils.log")
        if neonize_log.level == logging.NOTSET:
            neonize_log.setLevel(logging.WARNING)
        # neonize sets ``me`` from Go's first callback of a session: reset it so this
        # session counts as live only once ITS first callback arrived.
        self._ready = self._registered = False
        self._client.me = None
        self._session = await self._client.connect()
        return self._session

    async def disconnect(self) -> None:
        """Stop the session: always tell Go to stop (idempotent), bounded waits.

        Stop is sent even when the session already ended on its own (neonize's loop can
        die while Go's client stays connected), but never before Go's first callback
        (the device record, which ``FetchMe`` sends only once the device has an id):
        that is waited for (``ready_wait_s``) first.  Stopped earlier (a login that did
        not link), Go would drop the client that ``FetchMe`` then dereferences.  When the Go thread still runs after
        ``stop_timeout_s``, :attr:`stuck` is set: the process must then end deliberately
        (see :func:`exit_if_stuck`).
        """
        task, self._session = self._session, None
        if task is None:
            return
        ready = self._ready or await self._wait_ready(task)
        self._ready = self._registered = False
        # New calls are refused from here on (no session); the ones in flight may not
        # have reached Go yet, so Stop(uuid) waits for them (bounded).
        try:
            await asyncio.wait_for(self._calls_done.wait(), self.call_drain_s)
        except TimeoutError:
            log.warning("WhatsApp: %d call(s) still running at disconnect", self._calls)
        if ready:
            with contextlib.suppress(Exception):
                await self._client.stop()  # Go: Disconnect() and cancel -> Neonize() returns
        else:
            log.warning("WhatsApp: neonize never finished starting (no device record within "
                        "%.0f s); not telling Go to stop (that can crash)", self.ready_wait_s)
        if not task.done():
            try:
                await asyncio.wait_for(asyncio.shield(task), self.stop_timeout_s)
            except TimeoutError:
                self._stuck = True
                log.warning("WhatsApp: the neonize session did not stop within %.0f s",
                            self.stop_timeout_s)
            except Exception:  # the session's own error; already reported by its owner
                pass
        elif not task.cancelled():
            task.exception()  # mark retrieved

    async def _wait_ready(self, task: asyncio.Task) -> bool:
        """Wait (bounded) for Go's first callback of the session; whether it came."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.ready_wait_s
        while not self._check_ready():
            if task.done() or loop.time() >= deadline:
                return self._check_ready()
            await asyncio.sleep(self.ready_poll_s)
        return True

    def _check_ready(self) -> bool:
        if not self._ready and getattr(self._client, "me", None) is not None:
            self._ready = True
        return self._ready

    def _live(self) -> bool:
        return (self._session is not None and not self._session.done()
                and (self._registered or self._check_ready()))

    def _require_live(self) -> None:
        if not self._live():
            raise NotConnected("no WhatsApp session is running")

    @asynccontextmanager
    async def _live_call(self) -> AsyncIterator[None]:
        """Around every call into Go: refuse without a session, count it while it runs."""
        self._require_live()
        self._calls += 1
        self._calls_done.clear()
        try:
            yield
        finally:
            self._calls -= 1
            if self._calls == 0:
                self._calls_done.set()

    # -- calls --------------------------------------------------------------------

    async def send_text(self, chat: JID, text: str, *, quoted: QuoteRef | None = None) -> str:
        async with self._live_call():
            try:
                response = await self._client.send_message(chat,
                                                           build_text_message(text, quoted))
            except SendMessageError as exc:
                detail = str(exc)
                if send_error_means_unsent(detail):
                    raise NotSent(detail) from exc
                if any(marker in detail for marker in _PERMANENT_MARKERS):
                    raise Undeliverable(detail) from exc
                raise
        return response.ID

    async def set_presence(self, available: bool) -> None:
        from neonize.utils.enum import Presence

        async with self._live_call():
            await self._client.send_presence(Presence.AVAILABLE if available
                                             else Presence.UNAVAILABLE)

    async def force_delivery_receipts(self) -> None:
        async with self._live_call():
            await self._client.set_force_activate_delivery_receipts(True)

    async def chat_presence(self, chat: JID, *, composing: bool) -> None:
        from neonize.utils.enum import ChatPresence, ChatPresenceMedia

        state = (ChatPresence.CHAT_PRESENCE_COMPOSING if composing
                 else ChatPresence.CHAT_PRESENCE_PAUSED)
        async with self._live_call():
            await self._client.send_chat_presence(
                chat, state, ChatPresenceMedia.CHAT_PRESENCE_MEDIA_TEXT
            )

    async def mark_read(self, message_ids: Sequence[str], *, chat: JID, sender: JID) -> None:
        from neonize.utils.enum import ReceiptType

        async with self._live_call():
            await self._client.mark_read(*message_ids, chat=chat, sender=sender,
                                         receipt=ReceiptType.READ)

    async def download(self, message: waE2E.Message) -> bytes:
        """Download one media item; at most ``max_downloads`` Go downloads at a time.

        A slot is held until the Go call itself returns, also when the caller gave up
        waiting (its thread is still busy), so stalled downloads never take more than
        ``max_downloads`` worker threads.
        """
        self._require_live()
        await self._downloads.acquire()
        try:
            self._require_live()
            # whatsmeow's DownloadAny knows image/video/audio/document/sticker only:
            # a video note (ptvMessage) is the same media as a videoMessage.
            if message.HasField("ptvMessage"):
                message = waE2E.Message(videoMessage=message.ptvMessage)
            call = asyncio.ensure_future(self._tracked_download(message))
        except BaseException:
            self._downloads.release()
            raise
        call.add_done_callback(lambda _f: self._downloads.release())
        data = await asyncio.shield(call)
        return bytes(data or b"")

    async def _tracked_download(self, message: waE2E.Message) -> Any:
        async with self._live_call():
            return await self._client.download_any(message)

    async def get_me(self) -> Device:
        async with self._live_call():
            return await self._client.get_me()

    async def pn_for_lid(self, lid: JID) -> JID | None:
        async with self._live_call():
            return _jid_or_none(await self._client.get_pn_from_lid(lid))

    async def pair_phone(self, phone_digits: str) -> str:
        """Ask for a pairing code; the phone shows "Safari (Linux)" (the device props')."""
        from neonize.utils.enum import ClientName, ClientType

        # neonize derives the client type from DeviceProps.platformType by value, and the
        # two enums differ (DeviceProps.SAFARI is ClientType.OPERA): pass it explicitly.
        async with self._live_call():
            return await self._client.PairPhone(phone_digits, True,
                                                client_name=ClientName.LINUX,
                                                client_type=ClientType.SAFARI)

    async def logout(self) -> None:
        async with self._live_call():
            await self._client.logout()


class Undeliverable(Exception):  # noqa: N818 - a fact about a recipient
    """WhatsApp cannot deliver to this recipient (e.g. no LID for the number): permanent."""


def flush_output() -> None:
    """Flush every logging handler and Python's stdout/stderr (before a hard exit)."""
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


ExitFunction = Callable[[int], Any]


def exit_if_stuck(client: WhatsAppClient, code: int, *,
                  exit_fn: ExitFunction = os._exit) -> bool:
    """End the process with ``code`` (after flushing) when ``client``'s Go thread outlived
    its stop; returns whether it did (only an injected ``exit_fn`` returns at all).

    neonize's ``Neonize()`` runs in a non-daemon worker thread that ``asyncio.run`` and
    the interpreter join on exit; when it cannot be stopped, exiting normally hangs.
    """
    if not client.stuck:
        return False
    log.warning("WhatsApp: neonize's thread is still running after stop; ending the "
                "process (exit %d)", code)
    flush_output()
    exit_fn(code)
    return True


def arm_exit_guard(code: int, after_s: float, *, exit_fn: ExitFunction = os._exit,
                   start: bool = True) -> threading.Timer:
    """A daemon timer ending the process with ``code`` after ``after_s`` unless it has
    exited by then: for a ``palaver run`` whose neonize thread cannot be stopped, the
    rest of the shutdown still gets ``after_s`` to finish."""
    def fire() -> None:
        log.error("WhatsApp: the process did not exit within %.0f s of stopping (neonize's "
                  "thread is stuck); ending it", after_s)
        flush_output()
        exit_fn(code)

    timer = threading.Timer(after_s, fire)
    timer.daemon = True
    if start:
        timer.start()
    return timer
