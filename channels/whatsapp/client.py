"""The neonize transport: a narrow client over ``neonize.aioze.client.NewAClient``.

:class:`WhatsAppClient` is the slice of neonize the adapter uses (register handlers,
connect, send, react, presence, receipts, download, identity look-ups, pairing, logout), so
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
- ``neonize.aioze`` runs every Go function with ``asyncio.to_thread``, i.e. on the event
  loop's DEFAULT executor, which the rest of Palaver shares (``to_thread`` file I/O,
  ``getaddrinfo``), and no Go call takes a context or a timeout: a stalled one keeps its
  thread.  :class:`GoCalls` moves every Go call of Palaver's client to threads of its own
  (see there why it replaces the client's dispatcher rather than the loop's executor).
- The Go library prints some lines to the process's stdout/stderr itself (``fmt.Println``
  / ``println``: "Press Ctrl+C to exit" at each connect, "SendMessage: Error sending
  message: <error>" on every failed send, which can name the recipient's number, "Login
  event: …", Go panics); they bypass Python's logging and its redaction.  whatsmeow's
  own log lines come through neonize's log callback as Python loggers ``whatsmeow.*``
  (Palaver's handler, redacted), at warnings and above (:meth:`NeonizeClient.connect`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import os
import sqlite3
import sys
import threading
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from uuid import uuid4

from neonize.exc import SendMessageError
from neonize.proto.Neonize_pb2 import JID, Device
from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as waE2E

from bridge.ports import NotSent
from channels.whatsapp.content import QuoteRef, build_text_message, build_voice_message
from channels.whatsapp.session import SESSION_DB, SESSION_DIR, SessionStore

log = logging.getLogger(__name__)



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

    async def close(self) -> None:
        """:meth:`disconnect`, then end the client's Go-call threads (it is done)."""
        ...

    async def send_text(self, chat: JID, text: str, *, quoted: QuoteRef | None = None) -> str:
        """Send ``text`` (quoting ``quoted`` when given); return the new message id.

        Raises :class:`NotSent` when nothing reached WhatsApp (safe to retry); any other
        error means the message may have been delivered.
        """
        ...

    async def send_voice(self, chat: JID, ogg: bytes, *, seconds: int,
                         quoted: QuoteRef | None = None) -> str:
        """Upload OGG/Opus ``ogg`` and send it as a voice note (PTT); return its id.

        Raises :class:`NotSent` when the upload failed (nothing reached the chat); other
        errors as :meth:`send_text`.
        """
        ...

    async def send_reaction(self, chat: JID, sender: JID, message_id: str, emoji: str) -> str:
        """React with ``emoji`` to message ``message_id`` of ``sender`` (its author: the
        chat in a direct chat, the participant as received in a group) in ``chat``;
        ``""`` removes the reaction.  A plain message send (no presence needed); errors
        as :meth:`send_text`.  Returns the reaction message's id."""
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


class CallTimedOut(TimeoutError):
    """A neonize call did not return in time; it may still complete in Go (a send may
    have been delivered)."""


class NeonizeBusy(NotConnected):
    """A neonize call waited so long for a free Go-call thread that it was given up
    before it reached Go: nothing was sent (safe to retry)."""


@dataclass(slots=True)
class _CallState:
    """One call of :class:`NeonizeClient` on its way to Go (read and written under
    :attr:`GoCalls._lock`)."""

    started: bool = False  # a worker thread entered Go with it
    abandoned: bool = False  # given up before it started: it must never reach Go


# The call of NeonizeClient being made in this task; GoCalls reads it when neonize hands
# it the Go function (neonize's method runs in the same task, so it sees this value).
_current_call: ContextVar[_CallState | None] = ContextVar("neonize_call", default=None)

# Go functions that do not run on the bounded pool: Neonize() blocks for the whole
# session (a thread of its own per session), Stop must get through while every pool
# thread is stuck in a stalled call (its own thread).
_SESSION_CALLS = frozenset({"Neonize"})
_CONTROL_CALLS = frozenset({"Stop"})


class GoCalls:
    """Where the Go calls of one :class:`NeonizeClient` run: threads of its own.

    neonize 0.5's ``NewAClient`` reaches Go only through ``self.__client`` (the object
    ``neonize.aioze.client.async_gocode``, whose attributes run the Go library's function
    of that name with ``asyncio.to_thread``).  neonize accepts no executor, so
    :meth:`bind` replaces that attribute of Palaver's client with a dispatcher that runs
    the same Go function (``neonize.aioze.client.gocode``) on this object's threads;
    neonize's own Python code (serialising, error mapping) stays as it is.  Replacing
    the loop's default executor instead (``loop.set_default_executor``) would bound
    everything else on Palaver's loop that uses it (``asyncio.to_thread`` file I/O,
    DNS look-ups), so a few stalled Go calls would again starve the whole bridge; and
    patching ``asyncio.to_thread`` inside neonize's module would change every neonize
    client in the process.

    - ``Neonize()`` (blocks until the session stops) runs on a fresh thread per session
      ("neonize-session");
    - ``Stop`` on one control thread ("neonize-control"), so it is not queued behind
      stalled calls;
    - every other call on a pool of ``workers`` threads ("neonize-1" …): at most that
      many run at once, more wait in the pool's queue.  A call is refused (before Go)
      while the gate is closed, i.e. from :meth:`close_gate` (just before Stop) to the
      next :meth:`open_gate`: after Stop, Go has no client and a call would abort the
      process.
    """

    def __init__(self, library: Any, workers: int) -> None:
        self._library = library
        self.workers = workers
        numbers = itertools.count(1)

        def name_thread() -> None:
            threading.current_thread().name = f"neonize-{next(numbers)}"

        self._pool = ThreadPoolExecutor(workers, initializer=name_thread)
        self._control = ThreadPoolExecutor(1, thread_name_prefix="neonize-control")
        self._lock = threading.Lock()
        self._open = False
        self._running = 0  # pool and control calls inside Go right now
        self._idle_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self._closed = False

    def bind(self, client: Any) -> None:
        """Make ``client`` (a neonize ``NewAClient``) reach Go through this object."""
        if not hasattr(client, "_NewAClient__client"):
            raise RuntimeError("this neonize's NewAClient has no _NewAClient__client (its "
                               "Go-call dispatcher); Palaver supports neonize 0.5")
        client._NewAClient__client = _Dispatcher(self)

    @property
    def running(self) -> int:
        """Go calls (other than ``Neonize()``) running in a thread right now."""
        with self._lock:
            return self._running

    def open_gate(self) -> None:
        with self._lock:
            self._open = True

    def close_gate(self) -> None:
        """From now on no call reaches Go (they raise :class:`NotConnected`)."""
        with self._lock:
            self._open = False

    def abandon(self, state: _CallState) -> bool:
        """Give up ``state``'s call if it has not reached Go; whether it never will."""
        with self._lock:
            if state.started:
                return False
            state.abandoned = True
            return True

    def submit(self, name: str, args: tuple[Any, ...],
               kwargs: dict[str, Any]) -> asyncio.Future[Any]:
        """Run the Go function ``name`` in the right thread; a future of its result."""
        loop = asyncio.get_running_loop()
        function = getattr(self._library, name)
        try:
            if name in _SESSION_CALLS:
                session = ThreadPoolExecutor(1, thread_name_prefix="neonize-session")
                future = loop.run_in_executor(session,
                                              functools.partial(function, *args, **kwargs))
                session.shutdown(wait=False)  # its thread ends when Neonize() returns
                return future
            if name in _CONTROL_CALLS:
                return loop.run_in_executor(self._control, functools.partial(
                    self._run, function, None, False, args, kwargs))
            return loop.run_in_executor(self._pool, functools.partial(
                self._run, function, _current_call.get(), True, args, kwargs))
        except RuntimeError as exc:  # "cannot schedule new futures after shutdown"
            raise NotConnected(f"the WhatsApp client is closed ({exc})") from None

    def _run(self, function: Callable[..., Any], state: _CallState | None, gated: bool,
             args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        with self._lock:
            if state is not None and state.abandoned:
                raise NeonizeBusy("given up before it reached neonize")
            if gated and not self._open:
                raise NotConnected("the WhatsApp session stopped before this call "
                                   "reached neonize")
            if state is not None:
                state.started = True
            self._running += 1
        try:
            return function(*args, **kwargs)
        finally:
            with self._lock:
                self._running -= 1
                waiters = self._idle_waiters if self._running == 0 else []
                if waiters:
                    self._idle_waiters = []
            for loop, idle in waiters:
                with contextlib.suppress(RuntimeError):  # that loop is closed
                    loop.call_soon_threadsafe(idle.set)

    async def wait_idle(self, limit_s: float) -> bool:
        """Wait (at most ``limit_s``) until no call runs in Go; whether none does."""
        idle = asyncio.Event()
        waiter = (asyncio.get_running_loop(), idle)
        with self._lock:
            if self._running == 0:
                return True
            self._idle_waiters.append(waiter)
        try:
            await asyncio.wait_for(idle.wait(), limit_s)
            return True
        except TimeoutError:
            return False
        finally:
            with self._lock, contextlib.suppress(ValueError):
                self._idle_waiters.remove(waiter)

    def shutdown(self) -> None:
        """Close the gate and let the threads end (calls stuck in Go keep theirs)."""
        self.close_gate()
        self._closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._control.shutdown(wait=False, cancel_futures=True)

    @property
    def closed(self) -> bool:
        return self._closed


class _Dispatcher:
    """Stands in for ``neonize.aioze.client.async_gocode`` inside one ``NewAClient``:
    ``await dispatcher.SendMessage(...)`` runs Go's ``SendMessage`` on :class:`GoCalls`."""

    def __init__(self, calls: GoCalls) -> None:
        self._calls = calls

    def __getattr__(self, name: str) -> Callable[..., asyncio.Future[Any]]:
        if name.startswith("__"):
            raise AttributeError(name)

        def call(*args: Any, **kwargs: Any) -> asyncio.Future[Any]:
            return self._calls.submit(name, args, kwargs)

        return call


class NeonizeClient:
    """:class:`WhatsAppClient` backed by ``neonize.aioze.client.NewAClient``.

    ``new_client`` builds the neonize client (``NewAClient``'s signature); tests pass a
    fake of it (``tests/fakes/neonize_fake.py``, whose ``install`` also stands in for
    the Go library ``neonize.aioze.client.gocode``) so this class runs as in production.
    Every Go call runs on this client's own threads (:class:`GoCalls`, ``workers`` of
    them), each with a timeout (neonize has none); :meth:`close` ends them.
    """

    stop_timeout_s = 10.0
    # disconnect() lets calls already inside Go finish (for at most this long) before it
    # tells Go to drop the client; calls still queued for a thread are refused before
    # they reach Go (one arriving after Stop would crash).
    call_drain_s = 5.0
    # Stop before Go's first callback can crash (Stop deletes the client while FetchMe
    # reads it) and does not end Neonize() anyway (FetchMe spins while the device has no
    # id): disconnect() waits this long for that callback first.
    ready_wait_s = 10.0
    ready_poll_s = 0.05
    # Concurrent downloads: an abandoned one keeps its worker thread (the Go call has no
    # context), so they are capped to keep Go-call threads free for sends.
    max_downloads = 2
    # Go-call threads (GoCalls): at most this many neonize calls run at once.
    workers = 4
    # How long a call may take (neonize has no timeout of its own).  Above whatsmeow's
    # 75 s request timeout, so its own error (which says whether a send went out) wins.
    call_timeout_s = 90.0
    # A download may take longer (the whole file in one Go call).
    download_timeout_s = 300.0

    def __init__(self, db_path: Path | SessionStore, *,
                 new_client: Callable[..., Any] | None = None) -> None:
        from neonize.aioze import client as neonize_client
        from neonize.proto.waCompanionReg.WAWebProtobufsCompanionReg_pb2 import DeviceProps

        if new_client is None:
            new_client = neonize_client.NewAClient
        # A SQLite file, or a SessionStore (PostgreSQL: neonize gets the lib/pq URL).
        self._store = db_path if isinstance(db_path, SessionStore) else None
        self._db_path = Path(str(db_path)) if self._store is None else None
        name = self._store.neonize_name if self._store is not None else str(self._db_path)
        self._props = DeviceProps(os="Palaver", platformType=DeviceProps.SAFARI)
        # A unique uuid per instance: neonize's finaliser calls Stop(uuid) when a client
        # object is collected, which must never stop a newer client's session.
        self._client = new_client(name, props=self._props, uuid=f"palaver-{uuid4().hex}")
        self._go = GoCalls(neonize_client.gocode, self.workers)
        self._go.bind(self._client)
        self._session: asyncio.Task | None = None
        self._ready = False  # Go's first callback (the device record) arrived
        # Any event of the session arrived (a QR code during login): Go has registered
        # the client, so calls are safe, though Stop may not be yet (see disconnect).
        self._registered = False
        self._stuck = False
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
        if self._store is not None:
            return bool(await self._store.linked_devices())
        assert self._db_path is not None
        devices = await asyncio.to_thread(read_linked_devices, self._db_path)
        return bool(devices)

    @property
    def stuck(self) -> bool:
        # After close(), a Go call still running keeps a non-daemon thread that
        # interpreter exit joins (concurrent.futures' atexit): just as stuck.
        return self._stuck or (self._go.closed and self._go.running > 0)

    async def close(self) -> None:
        """Stop the session (:meth:`disconnect`) and end the Go-call threads."""
        await self.disconnect()
        self._go.shutdown()
        if self._go.running:
            log.warning("WhatsApp: %d neonize call(s) still running in Go after close",
                        self._go.running)

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
        self._go.open_gate()
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
        # New calls are refused from here on (no session, and the gate stops any call
        # still queued for a thread); the ones already in Go finish first (bounded).
        self._go.close_gate()
        if not await self._go.wait_idle(self.call_drain_s):
            log.warning("WhatsApp: %d call(s) still running at disconnect", self._go.running)
        if ready:
            with contextlib.suppress(Exception):
                # Go: Disconnect() and cancel -> Neonize() returns
                await asyncio.wait_for(self._client.stop(), self.stop_timeout_s)
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

    async def _call(self, what: str, call: Callable[[], Awaitable[Any]], *,
                    bounded: bool = True, state: _CallState | None = None) -> Any:
        """Every call into Go: refused without a live session, bounded by
        ``call_timeout_s`` (unless not ``bounded``: the caller bounds it).

        Timed out before a Go-call thread took it (all of them busy in stalled calls):
        :class:`NeonizeBusy` (nothing reached Go).  Timed out in Go: :class:`CallTimedOut`
        (its thread runs on; a send may have gone out).
        """
        self._require_live()
        state = state or _CallState()
        limit = self.call_timeout_s
        token = _current_call.set(state)
        try:
            # asyncio.timeout, not wait_for: Python 3.11's wait_for swallows a
            # cancellation that arrives as the call completes (gh-86296), and a typing
            # refresher cancelled that way never ended, holding its turn forever.
            async with asyncio.timeout(limit if bounded else None):
                return await call()
        except TimeoutError:
            if self._go.abandon(state):
                raise NeonizeBusy(f"{what} waited {limit:.0f} s for a free neonize thread "
                                  f"(all {self._go.workers} busy); not sent to WhatsApp"
                                  ) from None
            raise CallTimedOut(f"{what} did not return within {limit:.0f} s (it may "
                               "still complete in neonize)") from None
        finally:
            _current_call.reset(token)

    # -- calls --------------------------------------------------------------------

    async def send_text(self, chat: JID, text: str, *, quoted: QuoteRef | None = None) -> str:
        return await self._send(chat, build_text_message(text, quoted))

    async def send_voice(self, chat: JID, ogg: bytes, *, seconds: int,
                         quoted: QuoteRef | None = None) -> str:
        from neonize.exc import UploadError
        from neonize.utils.enum import MediaType

        try:
            # The media type given: neonize would ask libmagic otherwise.
            upload = await self._call("Upload", lambda: self._client.upload(
                ogg, MediaType.MediaAudio))
        except UploadError as exc:
            raise NotSent(f"upload failed: {exc}") from exc
        return await self._send(chat, build_voice_message(upload, seconds, quoted))

    async def send_reaction(self, chat: JID, sender: JID, message_id: str, emoji: str) -> str:
        # whatsmeow's BuildReaction keys it by (chat, sender, id); sent like any message.
        message = await self._call("BuildReaction", lambda: self._client.build_reaction(
            chat, sender, message_id, emoji))
        return await self._send(chat, message)

    async def _send(self, chat: JID, message: Any) -> str:
        """``SendMessage``; its errors as NotSent (never left) or Undeliverable."""
        try:
            response = await self._call("SendMessage",
                                        lambda: self._client.send_message(chat, message))
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

        presence = Presence.AVAILABLE if available else Presence.UNAVAILABLE
        await self._call("SendPresence", lambda: self._client.send_presence(presence))

    async def force_delivery_receipts(self) -> None:
        await self._call("SetForceActiveDeliveryReceipts",
                         lambda: self._client.set_force_activate_delivery_receipts(True))

    async def chat_presence(self, chat: JID, *, composing: bool) -> None:
        from neonize.utils.enum import ChatPresence, ChatPresenceMedia

        state = (ChatPresence.CHAT_PRESENCE_COMPOSING if composing
                 else ChatPresence.CHAT_PRESENCE_PAUSED)
        await self._call("SendChatPresence", lambda: self._client.send_chat_presence(
            chat, state, ChatPresenceMedia.CHAT_PRESENCE_MEDIA_TEXT))

    async def mark_read(self, message_ids: Sequence[str], *, chat: JID, sender: JID) -> None:
        from neonize.utils.enum import ReceiptType

        await self._call("MarkRead", lambda: self._client.mark_read(
            *message_ids, chat=chat, sender=sender, receipt=ReceiptType.READ))

    async def download(self, message: waE2E.Message) -> bytes:
        """Download one media item; at most ``max_downloads`` Go downloads at a time.

        A slot is held until the Go call itself returns, also when the caller gave up
        waiting or ``download_timeout_s`` passed (its thread is still busy), so stalled
        downloads never take more than ``max_downloads`` Go-call threads.
        """
        self._require_live()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.download_timeout_s
        try:
            await asyncio.wait_for(self._downloads.acquire(), self.download_timeout_s)
        except TimeoutError:
            raise NeonizeBusy(f"DownloadAny found no free slot within "
                              f"{self.download_timeout_s:.0f} s ({self.max_downloads} "
                              "downloads still running in neonize)") from None
        state = _CallState()
        try:
            self._require_live()
            # whatsmeow's DownloadAny knows image/video/audio/document/sticker only:
            # a video note (ptvMessage) is the same media as a videoMessage.
            if message.HasField("ptvMessage"):
                message = waE2E.Message(videoMessage=message.ptvMessage)
            wanted = message
            # No timeout inside: the slot is released when Go returns, not before.
            call = asyncio.ensure_future(self._call(
                "DownloadAny", lambda: self._client.download_any(wanted),
                bounded=False, state=state))
        except BaseException:
            self._downloads.release()
            raise
        call.add_done_callback(lambda _f: self._downloads.release())
        call.add_done_callback(_retrieve)
        try:
            data = await asyncio.wait_for(asyncio.shield(call),
                                          max(0.0, deadline - loop.time()))
        except TimeoutError:
            if self._go.abandon(state):  # still queued for a thread: drop it
                call.cancel()
                raise NeonizeBusy("DownloadAny waited for a free neonize thread for "
                                  f"{self.download_timeout_s:.0f} s") from None
            raise CallTimedOut(f"DownloadAny did not return within "
                               f"{self.download_timeout_s:.0f} s") from None
        except asyncio.CancelledError:
            if self._go.abandon(state):
                call.cancel()
            raise
        return bytes(data or b"")

    async def get_me(self) -> Device:
        return await self._call("GetMe", self._client.get_me)

    async def pn_for_lid(self, lid: JID) -> JID | None:
        return _jid_or_none(await self._call("GetPNFromLID",
                                             lambda: self._client.get_pn_from_lid(lid)))

    async def pair_phone(self, phone_digits: str) -> str:
        """Ask for a pairing code; the phone shows "Safari (Linux)" (the device props')."""
        from neonize.utils.enum import ClientName, ClientType

        # neonize derives the client type from DeviceProps.platformType by value, and the
        # two enums differ (DeviceProps.SAFARI is ClientType.OPERA): pass it explicitly.
        return await self._call("PairPhone", lambda: self._client.PairPhone(
            phone_digits, True, client_name=ClientName.LINUX, client_type=ClientType.SAFARI))

    async def logout(self) -> None:
        await self._call("Logout", self._client.logout)


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark an abandoned call's outcome as seen (no "exception never retrieved")."""
    if not future.cancelled():
        future.exception()


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
