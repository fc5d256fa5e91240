"""WhatsApp channel (neonize, a Python binding of whatsmeow).

The adapter only translates: a neonize ``MessageEv`` becomes an
:class:`~bridge.envelope.Inbound`, an :class:`~bridge.envelope.Outbound` becomes text
messages.  It talks to a narrow :class:`WhatsAppClient` (the few calls it needs) so that
tests can drive it with a recording fake; :class:`NeonizeClient` is the real one.

neonize traits this file is designed around (checked against neonize 0.5.2's source):

- Go dispatches events with ``asyncio.run_coroutine_threadsafe`` to ONE loop stored in
  ``neonize.aioze.events.event_global_loop``; ``set_event_loop`` only sets it once per
  process.  :func:`_bind_event_loop` rebinds it when the old loop is gone.
- ``NewAClient.connect()`` returns at once with a task running the blocking Go call
  ``Neonize()`` in a worker thread; that call only returns when Go is told to stop
  (``client.stop()`` -> ``Stop(uuid)``).  Every session is stopped that way.
- One handler per event type (a dict keyed by event code: the last registration wins),
  and the set of subscribed events is handed to Go at ``connect()``: register first.
- Exceptions raised in a handler vanish (nobody reads the concurrent future), so every
  handler here catches and logs.
- After ``Stop(uuid)`` (or before the first connect) Go has no client for the uuid and
  any call that reaches it dereferences nil and aborts the whole process, so
  :class:`NeonizeClient` refuses calls while no session is live and lets calls in flight
  finish before it stops one; :meth:`WhatsAppChannel.send` does not even try while the
  channel is not connected (``SendError(retryable=True)``: the core keeps the reply) and
  every ``ConnectedEv`` calls the core's ``channel_ready`` so kept replies go out then.
- whatsmeow reconnects a dropped socket by itself inside a session; this adapter's
  backoff (2 s doubling to 30 s, jittered) rebuilds the session when the Go call ends
  (connection refused at start, session died).
- Protobufs are proto2 with required fields; JIDs are built with ``build_jid``.
- ``download_any`` returns the whole file at once (no streaming, no size limit of its
  own), so the size cap is checked on the declared ``fileLength`` before downloading and
  on the bytes after; see :meth:`WhatsAppChannel._fetch`.
- whatsmeow shows ``composing`` to others only once the account announced ``available``
  presence, so the channel does that after every (re)connect.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import random
import re
import tempfile
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from uuid import uuid4

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
from neonize.exc import SendMessageError
from neonize.proto.Neonize_pb2 import JID, Device
from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as waE2E
from neonize.utils.jid import build_jid

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
from bridge.media import MediaStore
from bridge.ports import Capabilities, Channel, ChannelHealth, InboundSink, Markup, SendError

log = logging.getLogger(__name__)

SESSION_DIR = "whatsapp"
SESSION_DB = "session.db"
LID_MAP_FILE = "lid-map.json"
QUOTES_FILE = "quotes.jsonl"
LOGIN_HINT = "run `palaver whatsapp login` to link this bridge as a device"

PHONE_SERVER = "s.whatsapp.net"
LID_SERVER = "lid"
GROUP_SERVER = "g.us"
BROADCAST_SERVER = "broadcast"

__all__ = [
    "Backoff",
    "NeonizeClient",
    "NotConnected",
    "NotSent",
    "QuoteRef",
    "WhatsAppChannel",
    "WhatsAppClient",
    "build_text_message",
    "cmd_login",
    "cmd_logout",
    "session_db_path",
    "split_plain",
]


# --------------------------------------------------------------------------- client


class NotSent(Exception):
    """A send failed before anything reached WhatsApp, so trying again cannot duplicate it."""


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

    async def lid_for_pn(self, pn: JID) -> JID | None:
        """The LID of a phone-number JID, when known."""
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


@dataclass(frozen=True)
class QuoteRef:
    """What a reply needs to quote a message.

    WhatsApp finds the quoted message by ``message_id`` (stanza id) and ``participant``
    (its sender's JID, needed in groups); ``message`` is the quoted content, which only
    the bot account's own devices display (other clients use their own copy).
    """

    message_id: str
    participant: str
    message: waE2E.Message | None = None

    @classmethod
    def from_event(cls, ev: MessageEv) -> QuoteRef:
        """Quote a received message (its content without nested quotes)."""
        src = ev.Info.MessageSource
        inner = waE2E.Message()
        inner.CopyFrom(ev.Message)
        for desc, value in inner.ListFields():
            if (desc.message_type is not None
                    and "contextInfo" in desc.message_type.fields_by_name):
                value.ClearField("contextInfo")  # quotes do not nest
        return cls(ev.Info.ID, _quote_participant(src.Sender, src.SenderAlt), inner)


def _quote_participant(sender: JID, alt: JID) -> str:
    if sender.Server == LID_SERVER and alt.User:
        sender = alt  # as WhatsApp clients do: quote by phone JID when known
    return f"{sender.User}@{sender.Server}"


def build_text_message(text: str, quoted: QuoteRef | MessageEv | None = None) -> waE2E.Message:
    """The protobuf for a text message, quoting ``quoted`` when given.

    Built by hand rather than with neonize's ``build_reply_message``: that one clears the
    quoted message's ``contextInfo`` in place (our cached event) and turns any ``@digits``
    or ``@…@g.us`` in model output into mentions and group look-ups.
    """
    if quoted is None:
        return waE2E.Message(conversation=text)
    if isinstance(quoted, MessageEv):
        quoted = QuoteRef.from_event(quoted)
    context = waE2E.ContextInfo(stanzaID=quoted.message_id, participant=quoted.participant)
    if quoted.message is not None:
        context.quotedMessage.CopyFrom(quoted.message)
    return waE2E.Message(
        extendedTextMessage=waE2E.ExtendedTextMessage(text=text, contextInfo=context)
    )


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

    async def lid_for_pn(self, pn: JID) -> JID | None:
        async with self._live_call():
            return _jid_or_none(await self._client.get_lid_from_pn(pn))

    async def pair_phone(self, phone_digits: str) -> str:
        from neonize.utils.enum import ClientName

        async with self._live_call():
            return await self._client.PairPhone(phone_digits, True,
                                                client_name=ClientName.LINUX)

    async def logout(self) -> None:
        async with self._live_call():
            await self._client.logout()


# --------------------------------------------------------------------------- helpers


def session_db_path(data_dir: Path) -> Path:
    """Where the whatsmeow session database lives under ``dataDir``."""
    return Path(data_dir) / SESSION_DIR / SESSION_DB


@dataclass
class Backoff:
    """Reconnect delays: ``initial`` doubling up to ``cap``, each jittered by ±``jitter``."""

    initial: float = 2.0
    cap: float = 30.0
    jitter: float = 0.2
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0

    def next(self) -> float:
        """The delay before the next attempt (and count the attempt)."""
        base = min(self.cap, self.initial * (2 ** min(self.attempt, 16)))
        self.attempt += 1
        return base * (1 + self.rng.uniform(-self.jitter, self.jitter))

    def reset(self) -> None:
        """After a successful connection the next drop starts from ``initial`` again."""
        self.attempt = 0


def split_plain(text: str, limit: int) -> list[str]:
    """Chunk ``text`` under ``limit`` at paragraph, then line, then word boundaries."""
    text = text.strip()
    if not text:
        return []
    chunks: list[str] = []
    while len(text) > limit:
        window = text[:limit]
        cut = max(window.rfind("\n\n"), -1)
        if cut <= limit // 4:
            cut = window.rfind("\n")
        if cut <= limit // 4:
            cut = window.rfind(" ")
        if cut <= limit // 4:
            cut = limit
        chunks.append(text[:cut].rstrip())
        text = text[cut:].lstrip()
    if text:
        chunks.append(text)
    return [c for c in chunks if c]


def _render(text: str, limit: int, plain: bool) -> list[str]:
    if not plain:
        try:
            from bridge.formatting import render
        except ImportError:  # formatting not available: send readable plain chunks
            render = None
        if render is not None:
            return [chunk for chunk in render(text, Markup.WHATSAPP, limit) if chunk.strip()]
    return split_plain(text, limit)


def _jid_str(jid: JID) -> str:
    """``user@server`` without device or agent (what a chat id is)."""
    if not jid.User:
        return jid.Server
    return f"{jid.User}@{jid.Server}"


def _parse_jid(text: str) -> JID:
    user, sep, server = text.partition("@")
    if not sep or not server:
        raise ValueError(f"not a WhatsApp JID: {text!r}")
    user = user.split(":", 1)[0].split(".", 1)[0]
    return build_jid(user, server)


def _user_of(jid_text: str) -> str:
    """The user part of a JID string, without agent or device (``123.0:4@lid`` -> 123)."""
    return jid_text.partition("@")[0].split(":", 1)[0].split(".", 1)[0]


def _timestamp_s(raw: int) -> float:
    # neonize's Go side encodes MessageInfo.Timestamp as Unix milliseconds (older builds
    # used seconds); anything past year 33658 in seconds is milliseconds.
    return raw / 1000.0 if raw > 10**12 else float(raw)


_WRAPPERS = ("ephemeralMessage", "viewOnceMessage", "viewOnceMessageV2",
             "viewOnceMessageV2Extension", "documentWithCaptionMessage", "editedMessage")
_SKIPPED = ("protocolMessage", "reactionMessage", "encReactionMessage", "pollUpdateMessage",
            "keepInChatMessage", "pinInChatMessage", "encEventResponseMessage")


def _unwrap(msg: waE2E.Message) -> waE2E.Message:
    for _ in range(5):
        for name in _WRAPPERS:
            if msg.HasField(name) and getattr(msg, name).HasField("message"):
                msg = getattr(msg, name).message
                break
        else:
            return msg
    return msg


def _clip(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


_TEL = re.compile(r"^(?:item\d+\.)?TEL[^:]*?(?:waid=(\d+))?[^:]*:(.+)$", re.I | re.M)


def _vcard_numbers(vcard: str) -> list[str]:
    numbers = []
    for waid, value in _TEL.findall(vcard or ""):
        digits = waid or re.sub(r"[^\d]", "", value)
        if digits:
            numbers.append("+" + digits)
    return numbers[:5]


@dataclass
class _MediaSpec:
    kind: MediaKind
    sub: Any = None  # the waE2E sub-message holding the media
    mime: str | None = None
    filename: str | None = None
    duration_s: float | None = None
    width: int | None = None
    height: int | None = None
    size: int | None = None
    note: str | None = None
    downloadable: bool = True


@dataclass
class _Content:
    text: str = ""
    media: list[_MediaSpec] = field(default_factory=list)
    context: waE2E.ContextInfo | None = None
    skipped: str | None = None  # why the message carries nothing to answer


def _dims(sub: Any) -> tuple[int | None, int | None]:
    width = sub.width if sub.HasField("width") and sub.width else None
    height = sub.height if sub.HasField("height") and sub.height else None
    return width, height


def _size(sub: Any) -> int | None:
    return int(sub.fileLength) if sub.HasField("fileLength") and sub.fileLength else None


def _describe(msg: waE2E.Message) -> _Content:
    """Text, media and contextInfo of one (unwrapped) waE2E message."""
    out = _Content()
    for name in _SKIPPED:
        if msg.HasField(name):
            out.skipped = name
            return out
    contexts = []

    if msg.HasField("conversation") and msg.conversation:
        out.text = msg.conversation
    if msg.HasField("extendedTextMessage"):
        ext = msg.extendedTextMessage
        out.text = out.text or ext.text
        contexts.append(ext)
    if msg.HasField("imageMessage"):
        sub = msg.imageMessage
        width, height = _dims(sub)
        out.media.append(_MediaSpec(MediaKind.IMAGE, sub, sub.mimetype or "image/jpeg",
                                    width=width, height=height, size=_size(sub)))
        out.text = out.text or sub.caption
        contexts.append(sub)
    for name in ("videoMessage", "ptvMessage"):
        if msg.HasField(name):
            sub = getattr(msg, name)
            width, height = _dims(sub)
            out.media.append(_MediaSpec(
                MediaKind.VIDEO, sub, sub.mimetype or "video/mp4",
                duration_s=float(sub.seconds) if sub.seconds else None,
                width=width, height=height, size=_size(sub),
                note="GIF" if sub.gifPlayback else None,
            ))
            out.text = out.text or sub.caption
            contexts.append(sub)
    if msg.HasField("audioMessage"):
        sub = msg.audioMessage
        out.media.append(_MediaSpec(
            MediaKind.VOICE if sub.PTT else MediaKind.AUDIO, sub,
            (sub.mimetype or "audio/ogg").split(";")[0].strip(),
            duration_s=float(sub.seconds) if sub.seconds else None, size=_size(sub),
        ))
        contexts.append(sub)
    if msg.HasField("documentMessage"):
        sub = msg.documentMessage
        out.media.append(_MediaSpec(
            MediaKind.DOCUMENT, sub, sub.mimetype or "application/octet-stream",
            filename=_clip(sub.fileName or sub.title, 120) or None, size=_size(sub),
        ))
        out.text = out.text or sub.caption
        contexts.append(sub)
    if msg.HasField("stickerMessage"):
        sub = msg.stickerMessage
        width, height = _dims(sub)
        out.media.append(_MediaSpec(
            MediaKind.STICKER, sub, sub.mimetype or "image/webp", width=width, height=height,
            size=_size(sub), note=_clip(sub.emojis, 20) or None,
        ))
        contexts.append(sub)
    for name in ("locationMessage", "liveLocationMessage"):
        if msg.HasField(name):
            sub = getattr(msg, name)
            bits = [f"{sub.degreesLatitude:.5f}, {sub.degreesLongitude:.5f}"]
            for attr in ("name", "address", "comment", "caption"):
                if attr in sub.DESCRIPTOR.fields_by_name and getattr(sub, attr):
                    bits.append(_clip(getattr(sub, attr), 80))
            if name == "liveLocationMessage":
                bits.append("live")
            out.media.append(_MediaSpec(MediaKind.LOCATION, note=" — ".join(bits),
                                        downloadable=False))
            contexts.append(sub)
    contacts = []
    if msg.HasField("contactMessage"):
        contacts.append(msg.contactMessage)
        contexts.append(msg.contactMessage)
    if msg.HasField("contactsArrayMessage"):
        contacts.extend(msg.contactsArrayMessage.contacts)
        contexts.append(msg.contactsArrayMessage)
    for contact in contacts[:10]:
        bits = [_clip(contact.displayName, 60)] if contact.displayName else []
        bits.extend(_vcard_numbers(contact.vcard))
        out.media.append(_MediaSpec(MediaKind.CONTACT, note=" ".join(bits) or None,
                                    downloadable=False))

    for sub in contexts:
        if sub.HasField("contextInfo"):
            out.context = sub.contextInfo
            break
    if not out.text and not out.media:
        out.skipped = "no supported content"
    return out


class _LidMap:
    """LID user -> phone number digits, remembered in ``lid-map.json``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._map: dict[str, str] = {}
        self._lock = asyncio.Lock()

    async def load(self) -> None:
        def read() -> dict[str, str]:
            try:
                data = json.loads(self.path.read_text("utf-8"))
            except FileNotFoundError:
                return {}
            except (OSError, ValueError) as exc:
                log.warning("WhatsApp: ignoring unreadable %s: %s", self.path.name, exc)
                return {}
            if not isinstance(data, dict):
                return {}
            return {str(k): str(v) for k, v in data.items()
                    if str(k).isdigit() and str(v).isdigit()}

        self._map = await asyncio.to_thread(read)

    def phone_for(self, lid_user: str) -> str | None:
        return self._map.get(lid_user)

    async def remember(self, lid_user: str, phone: str) -> None:
        if not (lid_user.isdigit() and phone.isdigit()) or self._map.get(lid_user) == phone:
            return
        async with self._lock:
            self._map[lid_user] = phone
            snapshot = dict(self._map)
            await asyncio.to_thread(self._write, snapshot)

    def _write(self, snapshot: dict[str, str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".lid-map-")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(snapshot, fh, indent=0, sort_keys=True)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


class _QuoteJournal:
    """Recent group messages the bot may quote, kept in ``quotes.jsonl`` across restarts.

    The core's store keeps the platform message id and chat of an inbound message but not
    its sender JID, which WhatsApp needs to find a quoted message in a group.  One JSON
    line per accepted group message (id, chat, participant, a clipped text for the bot's
    own devices); the file is rewritten with the newest ``capacity`` entries when it holds
    twice as many lines.
    """

    def __init__(self, path: Path, capacity: int) -> None:
        self.path = path
        self.capacity = capacity
        self._entries: OrderedDict[str, dict[str, str]] = OrderedDict()
        self._lines = 0
        self._lock = asyncio.Lock()

    async def load(self) -> None:
        def read() -> tuple[OrderedDict[str, dict[str, str]], int]:
            entries: OrderedDict[str, dict[str, str]] = OrderedDict()
            lines = 0
            try:
                with self.path.open(encoding="utf-8") as fh:
                    for line in fh:
                        lines += 1
                        try:
                            item = json.loads(line)
                        except ValueError:
                            continue  # a line cut short by a crash
                        if isinstance(item, dict) and all(
                            isinstance(item.get(k), str) for k in ("id", "chat", "participant")
                        ):
                            entries[item["id"]] = item
                            entries.move_to_end(item["id"])
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("WhatsApp: ignoring unreadable %s: %s", self.path.name, exc)
            while len(entries) > self.capacity:
                entries.popitem(last=False)
            return entries, lines

        self._entries, self._lines = await asyncio.to_thread(read)

    def get(self, message_id: str, chat: str) -> QuoteRef | None:
        item = self._entries.get(message_id)
        if item is None or item["chat"] != chat:
            return None
        text = item.get("text") or ""
        return QuoteRef(message_id, item["participant"],
                        waE2E.Message(conversation=text) if text else None)

    async def add(self, message_id: str, chat: str, participant: str, text: str) -> None:
        item = {"id": message_id, "chat": chat, "participant": participant,
                "text": _clip(text, 200)}
        async with self._lock:
            self._entries[message_id] = item
            self._entries.move_to_end(message_id)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
            if self._lines + 1 > 2 * self.capacity:
                snapshot = list(self._entries.values())
                await asyncio.to_thread(self._rewrite, snapshot)
                self._lines = len(snapshot)
            else:
                await asyncio.to_thread(self._append, item)
                self._lines += 1

    def _append(self, item: dict[str, str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(item, ensure_ascii=False) + "\n")

    def _rewrite(self, items: list[dict[str, str]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".quotes-")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                for item in items:
                    fh.write(json.dumps(item, ensure_ascii=False) + "\n")
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


@dataclass
class _Identity:
    sender_id: str
    jid: JID  # the sender JID as it arrived (device stripped)
    aliases: tuple[str, ...]


# --------------------------------------------------------------------------- channel


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
    ) -> None:
        self.config = config
        self.capabilities = Capabilities(config.textChunkLimit, Markup.WHATSAPP)
        self._media = media
        self._dir = Path(data_dir) / SESSION_DIR
        self._db_path = self._dir / SESSION_DB
        self._client_factory = client_factory or NeonizeClient
        self._clock = clock
        self._sleep = sleep
        self._typing_interval = typing_interval
        self._backoff = Backoff(rng=rng or random.Random())
        self._lids = _LidMap(self._dir / LID_MAP_FILE)
        self._quotes = _QuoteJournal(self._dir / QUOTES_FILE, self.quote_cache_size)

        self._client: WhatsAppClient | None = None
        self._sink: InboundSink | None = None
        self._inbox: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._worker: asyncio.Task | None = None
        self._supervisor: asyncio.Task | None = None
        self._recent: OrderedDict[str, MessageEv] = OrderedDict()
        self._online_since: float | None = None  # when the current connection came up
        self._handling: str | None = None  # id of the message the worker is on
        self._me_users: frozenset[str] = frozenset()
        self._me_phone: str | None = None
        self._connected = False
        self._stopping = False
        self._terminal: str | None = None
        self._detail = "not started"

    # -- lifecycle ----------------------------------------------------------------

    async def start(self, sink: InboundSink) -> None:
        """Connect with the stored session in the background; never raises for WhatsApp."""
        if self._supervisor is not None:
            return
        self._sink = sink
        self._stopping = False
        self._terminal = None
        try:
            await asyncio.to_thread(self._dir.mkdir, parents=True, exist_ok=True)
            await self._lids.load()
            await self._quotes.load()
            client = self._client_factory(self._db_path)
            linked = await client.has_session()
        except Exception as exc:
            self._detail = f"cannot open the WhatsApp session: {type(exc).__name__}: {exc}"
            log.error("WhatsApp: %s (%s); the channel stays off", self._detail, self._db_path)
            return
        if not linked:
            self._detail = f"not linked: {LOGIN_HINT}"
            log.warning("WhatsApp: no linked session under %s; %s. Everything else keeps "
                        "running.", self._dir, LOGIN_HINT)
            return
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
        self._worker = asyncio.create_task(self._work(), name="whatsapp-inbox")
        self._supervisor = asyncio.create_task(self._supervise(), name="whatsapp-session")

    async def stop(self) -> None:
        """Stop the session (tells Go to stop), the reconnect loop and the inbox worker.

        Messages already received are handed to the core first (for at most
        ``stop_drain_s``): WhatsApp has acknowledged them and will not deliver them again.
        They are drained while the session is still up (so their media can be fetched),
        then once more after it stopped for anything that arrived meanwhile.
        """
        self._stopping = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.stop_drain_s
        await self._drain(deadline)
        self._connected = False
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.disconnect()
        await self._drain(deadline)
        for task in (self._supervisor, self._worker):
            if task is not None and not task.done():
                task.cancel()
        for task in (self._supervisor, self._worker):
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._supervisor = self._worker = None
        self._discard_inbox()
        if self._terminal is None and self._detail != f"not linked: {LOGIN_HINT}":
            self._detail = "stopped"

    def health(self) -> ChannelHealth:
        """Connected or not, and why (not linked, logged out, reconnecting...)."""
        return ChannelHealth(self._connected, self._detail)

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
            if kind == "message":
                lost.append(payload.Info.ID)
        if lost:
            log.warning("WhatsApp: %d received message(s) not handed to the core within "
                        "%.0f s of stopping; WhatsApp will not deliver them again: %s",
                        len(lost), self.stop_drain_s, ", ".join(lost[:20]))

    async def _supervise(self) -> None:
        assert self._client is not None
        while not self._stopping and self._terminal is None:
            error: BaseException | None = None
            # Until ConnectedEv says otherwise, the connection dates from this call.
            self._inbox.put_nowait(("online", self._clock()))
            try:
                session = await self._client.connect()
                await session
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                error = exc
            self._connected = False
            if self._stopping or self._terminal is not None:
                break
            with contextlib.suppress(Exception):
                await self._client.disconnect()
            delay = self._backoff.next()
            reason = f"{type(error).__name__}: {error}" if error else "the session ended"
            self._detail = f"disconnected ({_clip(reason, 120)}); retrying in {delay:.0f} s"
            log.warning("WhatsApp: connection failed or lost (%s); reconnecting in %.1f s",
                        _clip(reason, 200), delay)
            await self._sleep(delay)
        self._connected = False

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
        self._backoff.reset()
        self._connected = True
        self._detail = "connected"
        # Identity refresh, presence and the catch-up reference, in order with messages.
        self._inbox.put_nowait(("connected", self._clock()))
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
        self._detail = "disconnected; reconnecting"
        log.warning("WhatsApp: connection dropped; reconnecting")

    async def _on_logged_out(self, event: Any) -> None:
        reason = _enum_name(event, "Reason")
        await self._halt(f"logged out ({reason}): this device was unlinked from the phone or "
                         f"the session expired; {LOGIN_HINT} again")

    async def _on_temporary_ban(self, event: Any) -> None:
        code = _enum_name(event, "Code")
        expire = getattr(event, "Expire", 0)
        await self._halt(f"temporarily banned by WhatsApp ({code}, expires in {expire} s); "
                         "restart Palaver after the ban ends")

    async def _on_stream_replaced(self, _event: Any) -> None:
        await self._halt("session replaced: the same linked session connected from another "
                         "place (another Palaver running?); stop the other one and restart")

    async def _on_client_outdated(self, _event: Any) -> None:
        await self._halt("WhatsApp says this client is outdated; upgrade neonize")

    async def _on_connect_failure(self, event: Any) -> None:
        reason = _enum_name(event, "Reason")
        if reason in ("LOGGED_OUT", "MAIN_DEVICE_GONE", "UNKNOWN_LOGOUT"):
            await self._on_logged_out(event)
        elif reason == "CLIENT_OUTDATED":
            await self._on_client_outdated(event)
        else:  # whatsmeow retries these by itself
            self._connected = False
            self._detail = f"connect failure ({reason}); retrying"
            log.warning("WhatsApp: connect failure (%s); retrying", reason)

    async def _on_qr(self, _code: str) -> None:
        # A QR code during `palaver run` means the stored session is not valid.
        await self._halt(f"not linked (WhatsApp asked for a new QR login); {LOGIN_HINT}")

    # -- inbound ------------------------------------------------------------------

    async def _on_message(self, event: Any) -> None:
        # Go hands events over in order; queueing here keeps that order for the worker.
        self._inbox.put_nowait(("message", event))

    async def _work(self) -> None:
        while True:
            kind, payload = await self._inbox.get()
            try:
                if kind == "online":
                    self._online_since = payload
                elif kind == "connected":
                    self._online_since = payload
                    await self._refresh_identity()
                    await self._announce_available()
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

    async def _announce_available(self) -> None:
        if self._client is None:
            return
        try:
            await self._client.set_available()
        except Exception as exc:  # cosmetic: only "typing…" depends on it
            log.info("WhatsApp: could not announce available presence (\"typing…\" may not "
                     "show): %s", _clip(str(exc), 200))

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
        if phone:
            self._detail = f"connected as +{phone}"

    async def _handle_message(self, ev: MessageEv) -> None:
        info = ev.Info
        src = info.MessageSource
        chat = src.Chat
        if chat.Server == BROADCAST_SERVER and chat.User == "status":
            log.debug("WhatsApp: skip status broadcast %s", info.ID)
            return
        if src.IsFromMe:
            log.debug("WhatsApp: skip own message %s", info.ID)
            return
        if ev.IsEdit:
            log.debug("WhatsApp: skip edit %s", info.ID)
            return
        content = _describe(_unwrap(ev.Message))
        if content.skipped:
            log.debug("WhatsApp: skip %s (%s)", info.ID, content.skipped)
            return
        timestamp = _timestamp_s(info.Timestamp) if info.Timestamp else self._clock()
        age = self._catch_up_age(timestamp)
        if age is not None and age > self.config.catchUpMinutes * 60:
            log.info("WhatsApp: skip message %s sent while offline: %.0f min old "
                     "(catchUpMinutes=%s)", info.ID, age / 60, self.config.catchUpMinutes)
            return

        who = await self._identify(src.Sender, src.SenderAlt)
        if chat.Server == BROADCAST_SERVER:  # a broadcast list reaches us as a direct chat
            chat = who.jid
        is_group = chat.Server == GROUP_SERVER
        address = ChatAddress(
            channel=self.name, account=self.account, chat_id=_jid_str(chat),
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
            sender_name=_clip(info.Pushname, 80) or None,
            sender_aliases=who.aliases,
            media=tuple(_bare_ref(spec) for spec in content.media),
            quoted=quoted,
            mentioned=mentioned,
            extra={"chat_jid": _jid_str(chat), "sender_jid": _jid_str(who.jid)},
        )
        # Decide first, download after: a stranger's file or an unmentioned group photo
        # is never fetched.  A refused message still reaches accept() (pairing codes,
        # refusal records), with its media described but not downloaded.
        if any(spec.downloadable for spec in content.media) and await self._admits(inbound):
            media = tuple([await self._fetch(spec, ev.Message) for spec in content.media])
            inbound = dataclasses.replace(inbound, media=media)
        self._remember(ev)
        assert self._sink is not None
        status = await self._sink.accept(inbound)
        log.debug("WhatsApp: message %s -> %s", info.ID, status)
        if status is AcceptStatus.ACCEPTED and is_group:
            shown = content.text or (inbound.media[0].placeholder() if inbound.media else "")
            try:
                await self._quotes.add(info.ID, address.chat_id,
                                       _quote_participant(src.Sender, src.SenderAlt), shown)
            except OSError as exc:
                log.warning("WhatsApp: cannot remember message %s for quoting: %s",
                            info.ID, exc)
        if status is AcceptStatus.ACCEPTED and self.config.sendReadReceipts:
            try:
                await self._require_client().mark_read([info.ID], chat=chat, sender=who.jid)
            except Exception as exc:
                log.debug("WhatsApp: read receipt for %s failed: %s", info.ID, exc)

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
                        "not downloaded", inbound.message_id, _clip(str(exc), 200))
            return False

    async def _identify(self, sender: JID, alt: JID) -> _Identity:
        """Map a sender (phone JID or LID) to ``+E164`` when possible; remember mappings."""
        jid = build_jid(sender.User, sender.Server)
        raw = _jid_str(jid)
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
        # "+E164" as the id; the bare digits too, so allowFrom entries written either way
        # ("+15551234567" or "15551234567") match the core's literal comparison.
        sender_id = f"+{phone}" if phone else raw
        aliases = [raw]
        if lid:
            aliases.append(f"{lid}@{LID_SERVER}")
        if phone:
            aliases.append(f"{phone}@{PHONE_SERVER}")
            aliases.append(phone)
        unique = tuple(dict.fromkeys(a for a in aliases if a != sender_id))
        return _Identity(sender_id, jid, unique)

    def _mentions_me(self, context: waE2E.ContextInfo | None) -> bool:
        if context is None or not self._me_users:
            return False
        return any(_user_of(j) in self._me_users for j in context.mentionedJID)

    async def _quoted(self, context: waE2E.ContextInfo | None) -> tuple[Quoted | None, bool]:
        if context is None or not (context.stanzaID or context.HasField("quotedMessage")):
            return None, False
        participant = context.participant
        user = _user_of(participant) if participant else ""
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
            inner = _describe(_unwrap(context.quotedMessage))
            text = inner.text
            media = tuple(
                MediaRef(kind=s.kind, mime=s.mime, filename=s.filename, size=s.size,
                         duration_s=s.duration_s, width=s.width, height=s.height, note=s.note)
                for s in inner.media
            )
        quoted = Quoted(message_id=context.stanzaID or None, sender_id=sender_id, text=text,
                        media=media, from_bot=from_bot)
        return quoted, from_bot

    async def _fetch(self, spec: _MediaSpec, message: waE2E.Message) -> MediaRef:
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
            return _bare_ref(spec, note=note, size=size)

        if not spec.downloadable:
            return ref(spec.note)
        limit = int(self.config.mediaMaxMb * 1024 * 1024)
        too_big = f"not downloaded: larger than the {self.config.mediaMaxMb:g} MB limit"
        if spec.size is not None and spec.size > limit:
            return ref(_join(spec.note, too_big))
        if spec.size is None and spec.kind in _SIZE_REQUIRED:
            log.info("WhatsApp: %s without a stated size not downloaded", spec.kind)
            return ref(_join(spec.note, "not downloaded: size unknown"))
        try:
            data = await asyncio.wait_for(self._require_client().download(_unwrap(message)),
                                          self.download_timeout_s)
        except TimeoutError:
            log.warning("WhatsApp: %s download took longer than %.0f s; abandoned",
                        spec.kind, self.download_timeout_s)
            return ref(_join(spec.note, "download timed out"))
        except Exception as exc:
            log.warning("WhatsApp: %s download failed: %s", spec.kind, _clip(str(exc), 200))
            return ref(_join(spec.note, "download failed"))
        if len(data) > limit:
            return ref(_join(spec.note, too_big), size=len(data))
        if not data:
            return ref(_join(spec.note, "download failed (empty)"))
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
        if ev is not None and _jid_str(ev.Info.MessageSource.Chat) == chat_id:
            return QuoteRef.from_event(ev)
        return self._quotes.get(message_id, chat_id)

    def _remember(self, ev: MessageEv) -> None:
        self._recent[ev.Info.ID] = ev
        self._recent.move_to_end(ev.Info.ID)
        while len(self._recent) > self.quote_cache_size:
            self._recent.popitem(last=False)

    def _require_client(self) -> WhatsAppClient:
        if self._client is None or self._terminal is not None:
            raise NotConnected(self._detail)
        return self._client

    # -- outbound -----------------------------------------------------------------

    async def send(self, out: Outbound) -> list[str]:
        """Render to WhatsApp markup, chunk, send in order (retrying); return message ids.

        Raises ``SendError(retryable=True)`` when nothing more can have gone out: the
        channel is not connected (connecting, reconnecting, stopped, logged out: no call
        reaches neonize then) or every attempt failed before the message left
        (:class:`NotSent`).  A plain ``SendError`` when the chat id is not a JID or a
        send failed in a way that may have delivered it (a retry could duplicate it).
        ``sent_ids`` always lists the chunks that did go out.
        """
        try:
            chat = _parse_jid(out.address.chat_id)
        except ValueError as exc:
            raise SendError(str(exc)) from None
        chunks = _render(out.text, self.capabilities.text_chunk_limit, out.plain)
        quoted = None
        if out.reply_to_message_id and out.address.chat_kind is ChatKind.GROUP:
            quoted = self._quote_for(out.reply_to_message_id, out.address.chat_id)
        sent: list[str] = []
        for index, chunk in enumerate(chunks):
            quote = quoted if index == 0 else None
            sent.append(await self._send_chunk(out.address.chat_id, chat, chunk, quote, sent))
        return sent

    async def _send_chunk(self, chat_id: str, chat: JID, chunk: str, quote: QuoteRef | None,
                          sent: list[str]) -> str:
        """Send one chunk, retrying failures that provably sent nothing (see :meth:`send`)."""
        last_error: Exception | None = None
        for attempt in range(self.send_attempts):
            client = self._client_for_send(sent)
            try:
                return await client.send_text(chat, chunk, quoted=quote)
            except NotSent as exc:  # nothing went out: trying again cannot duplicate
                last_error = exc
                log.warning("WhatsApp: send to %s failed (attempt %d/%d): %s", chat_id,
                            attempt + 1, self.send_attempts, _clip(str(exc), 200))
                if attempt + 1 < self.send_attempts:
                    delays = self.send_retry_delays
                    await self._sleep(delays[min(attempt, len(delays) - 1)])
            except Exception as exc:
                # The message may have reached WhatsApp (e.g. the server's ack timed
                # out): a retry could deliver it twice, so the core records a failure.
                log.warning("WhatsApp: send to %s failed and may have been delivered; "
                            "not retried: %s", chat_id, _clip(str(exc), 200))
                raise SendError(
                    f"WhatsApp send failed, possibly after delivery, not retried "
                    f"({type(exc).__name__}: {_clip(str(exc), 200)})",
                    sent_ids=list(sent),
                ) from None
        assert last_error is not None
        raise SendError(
            f"WhatsApp send failed after {self.send_attempts} attempts, before reaching WhatsApp "
            f"({type(last_error).__name__}: {_clip(str(last_error), 200)})",
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
            chat = _parse_jid(address.chat_id)
        except ValueError:
            yield
            return
        refresher = asyncio.create_task(self._keep_composing(chat), name="whatsapp-typing")
        try:
            yield
        finally:
            refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresher
            await self._presence(chat, composing=False)

    async def _keep_composing(self, chat: JID) -> None:
        while True:
            await self._presence(chat, composing=True)
            await asyncio.sleep(self._typing_interval)

    async def _presence(self, chat: JID, *, composing: bool) -> None:
        try:
            await self._require_client().chat_presence(chat, composing=composing)
        except Exception as exc:  # typing is cosmetic: never let it break a turn
            log.debug("WhatsApp: presence update failed: %s", exc)


# Media kinds that can be large: not downloaded when the sender states no size.
_SIZE_REQUIRED = frozenset({MediaKind.VIDEO, MediaKind.AUDIO, MediaKind.VOICE,
                            MediaKind.DOCUMENT})


def _bare_ref(spec: _MediaSpec, *, note: str | None = None,
              size: int | None = None) -> MediaRef:
    """The description of a media item without its bytes (``media_id`` None)."""
    return MediaRef(kind=spec.kind, mime=spec.mime if spec.downloadable else None,
                    filename=spec.filename, size=spec.size if size is None else size,
                    duration_s=spec.duration_s, width=spec.width, height=spec.height,
                    note=spec.note if note is None else note)


def _join(*notes: str | None) -> str | None:
    joined = "; ".join(n for n in notes if n)
    return joined or None


def _enum_name(event: Any, field_name: str) -> str:
    value = getattr(event, field_name, None)
    if value is None:
        return "unknown"
    try:
        return event.DESCRIPTOR.fields_by_name[field_name].enum_type.values_by_number[
            int(value)].name
    except (KeyError, AttributeError, TypeError):
        return str(value)


# --------------------------------------------------------------------------- commands


def cmd_login(args: Any) -> int:
    """``palaver whatsapp login``: link this bridge (QR code or ``--phone`` pairing code)."""
    from channels.whatsapp.login import cmd_login as run

    return run(args)


def cmd_logout(args: Any) -> int:
    """``palaver whatsapp logout``: unlink this device and remove the session."""
    from channels.whatsapp.login import cmd_logout as run

    return run(args)
