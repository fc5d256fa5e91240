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
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
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
)
_UNSENT_NODE_ERRORS = ("websocket not connected", "frame socket is closed")


def send_error_means_unsent(text: str) -> bool:
    """Whether a whatsmeow send error proves that nothing was sent (safe to retry)."""
    text = text.strip()
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

    async def connect(self) -> Awaitable[None]:
        """Start a session; return an awaitable that ends (or raises) when it ends."""
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

    async def set_available(self) -> None:
        """Announce ``available`` presence (whatsmeow shows "typing…" only after that)."""
        ...

    async def chat_presence(self, chat: JID, *, composing: bool) -> None:
        """Show "typing..." (``composing``) or stop showing it (paused)."""
        ...

    async def mark_read(self, message_ids: Sequence[str], *, chat: JID, sender: JID) -> None:
        """Send read receipts (blue ticks)."""
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
    """:class:`WhatsAppClient` backed by ``neonize.aioze.client.NewAClient``."""

    stop_timeout_s = 10.0
    # disconnect() lets calls already on their way to Go finish (for at most this long)
    # before it tells Go to drop the client: a call arriving after that would crash.
    call_drain_s = 5.0

    def __init__(self, db_path: Path) -> None:
        from neonize.aioze.client import NewAClient
        from neonize.proto.waCompanionReg.WAWebProtobufsCompanionReg_pb2 import DeviceProps

        self._db_path = Path(db_path)
        # A unique uuid per instance: neonize's finaliser calls Stop(uuid) when a client
        # object is collected, which must never stop a newer client's session.
        self._client = NewAClient(
            str(self._db_path),
            props=DeviceProps(os="Palaver", platformType=DeviceProps.SAFARI),
            uuid=f"palaver-{uuid4().hex}",
        )
        self._session: asyncio.Task | None = None
        self._calls = 0  # calls between the liveness check and their return
        self._calls_done = asyncio.Event()
        self._calls_done.set()

    # -- registration -------------------------------------------------------------

    def on(self, event_type: type, handler: EventHandler) -> None:
        async def dispatch(_client: Any, event: Any) -> None:
            await handler(event)

        self._client.event(event_type)(dispatch)

    def on_qr(self, handler: Callable[[str], Awaitable[None]]) -> None:
        async def dispatch(_client: Any, data: bytes) -> None:
            await handler(data.decode("utf-8", "replace"))

        self._client.qr(dispatch)

    # -- lifecycle ----------------------------------------------------------------

    async def has_session(self) -> bool:
        if not self._db_path.is_file():
            return False
        from neonize.aioze.client import ClientFactory

        devices = await asyncio.to_thread(
            ClientFactory.get_all_devices_from_db, str(self._db_path)
        )
        return bool(devices)

    async def connect(self) -> Awaitable[None]:
        if self._live():
            raise RuntimeError("a WhatsApp session is already running")
        _bind_event_loop(asyncio.get_running_loop())
        # whatsmeow's log level is taken from this logger at connect(); unset, neonize
        # passes an empty level to Go.  Default to warnings (they surface as whatsmeow.*).
        neonize_log = logging.getLogger("neonize.utils.log")
        if neonize_log.level == logging.NOTSET:
            neonize_log.setLevel(logging.WARNING)
        self._session = await self._client.connect()
        return self._session

    async def disconnect(self) -> None:
        task, self._session = self._session, None
        if task is None:
            return
        if not task.done():
            # New calls are refused from here on (no session); the ones in flight may
            # not have reached Go yet, so Stop(uuid) waits for them (bounded).
            try:
                await asyncio.wait_for(self._calls_done.wait(), self.call_drain_s)
            except TimeoutError:
                log.warning("WhatsApp: %d call(s) still running at disconnect", self._calls)
            with contextlib.suppress(Exception):
                await self._client.stop()  # Go: Disconnect() and cancel -> Neonize() returns
            try:
                await asyncio.wait_for(asyncio.shield(task), self.stop_timeout_s)
            except TimeoutError:
                log.warning("WhatsApp: the neonize session did not stop within %.0f s",
                            self.stop_timeout_s)
            except Exception:  # the session's own error; already reported by its owner
                pass
        elif not task.cancelled():
            task.exception()  # mark retrieved

    def _live(self) -> bool:
        return self._session is not None and not self._session.done()

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
                raise
        return response.ID

    async def set_available(self) -> None:
        from neonize.utils.enum import Presence

        async with self._live_call():
            await self._client.send_presence(Presence.AVAILABLE)

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
        # neonize's aioze wraps every Go call in asyncio.to_thread, so the download and
        # decryption run in a worker thread, never on the event loop.
        async with self._live_call():
            data = await self._client.download_any(message)
        return bytes(data or b"")

    async def get_me(self) -> Device:
        async with self._live_call():
            return await self._client.get_me()

    async def pn_for_lid(self, lid: JID) -> JID | None:
        async with self._live_call():
            return _jid_or_none(await self._client.get_pn_from_lid(lid))

    async def pair_phone(self, phone_digits: str) -> str:
        from neonize.utils.enum import ClientName

        async with self._live_call():
            return await self._client.PairPhone(phone_digits, True,
                                                client_name=ClientName.LINUX)

    async def logout(self) -> None:
        async with self._live_call():
            await self._client.logout()

