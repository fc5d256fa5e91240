"""WhatsApp's side of one account, on loopback, for several ``palaver run`` processes.

The in-process fake (:mod:`tests.fakes.neonize_fake`) stands in for neonize's Go library
inside one process; this server is what those Go libraries would talk to: WhatsApp's
servers.  Each process's fake Go library (:mod:`tests.fakes.neonize_remote`) connects
here when Go's ``Neonize()`` comes online with the linked device, so a test sees, across
processes, who was connected when and what each connection sent.

What it reproduces (whatsmeow's ``connectionevents.go``/``client.go``, WhatsApp's
delivery):

- One account, one linked device (:attr:`FakeWhatsApp.device_jid`): a connection
  for another device is refused (``failure`` 401: whatsmeow's LoggedOut).
- The same device connecting again REPLACES the connection that was up: that one gets
  a ``<stream:error><conflict type="replaced"/>`` and is closed (whatsmeow then
  dispatches ``StreamReplaced``, expects the disconnect and does not reconnect).
  Every such overlap is in :attr:`FakeWhatsApp.history` (``replaced``) and counted in
  :attr:`FakeWhatsApp.max_concurrent`.
- Messages for the account wait on the server until a connection of the device ACKS
  them: sent while nobody is connected (or to a connection that dies before acking,
  e.g. a killed process) they are delivered, in order, on the next connect, as
  WhatsApp delivers offline messages.  The client acks once Go handed the event to
  Python (neonize's callback only schedules the handler), so an acked message is never
  delivered again, whatever the process does with it.
- A connection's sends (text messages, reactions: both ``SendMessage``), presence,
  chat presence and read receipts are recorded per connection (:class:`Connection`).

Wire (JSON lines over TCP; ``message`` and ``event`` are base64 protobufs, neonize's own
types, so what crosses is exactly what Go would serialise):

  client -> server  {"op": "hello", "device", "pid", "client"}
                    {"op": "ack", "id"}
                    {"op": "passive", "req", "active"}          -> {"op": "result", "req"}
                    {"op": "send", "req", "to", "message"}        -> {"op": "result", "req", "id"}
                    {"op": "presence", "req", "state"}           -> {"op": "result", "req"}
                    {"op": "chat_presence", "req", "to", "state"} -> {"op": "result", "req"}
                    {"op": "receipt", "req", "ids", "chat", "sender"} -> {"op": "result", "req"}
  server -> client  {"op": "success"} | {"op": "failure", "reason"}
                    {"op": "message", "event"}
                    {"op": "stream_error", "conflict": "replaced"} (then the socket closes)
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from neonize.aioze.events import MessageEv
from neonize.proto import Neonize_pb2 as N
from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as waE2E
from neonize.utils.jid import build_jid

from tests.fakes.neonize_fake import Account

HANG_GUARD_S = 60.0

_EMPTY_JID = N.JID(User="", Server="", RawAgent=0, Device=0, Integrator=0, IsEmpty=True)


def encode(message: Any) -> str:
    return base64.b64encode(message.SerializeToString()).decode()


def decode(kind: Any, data: str) -> Any:
    return kind.FromString(base64.b64decode(data))


def message_event(chat: str, text: str, *, msg_id: str, sender: str | None = None,
                  pushname: str = "Ann", timestamp_ms: int | None = None) -> MessageEv:
    """A text ``MessageEv`` as Go encodes it (Timestamp in Unix milliseconds)."""
    sender = sender or chat
    chat_user, _, chat_server = chat.partition("@")
    sender_user, _, sender_server = sender.partition("@")
    is_group = chat_server == "g.us"
    source = N.MessageSource(
        Chat=build_jid(chat_user, chat_server), Sender=build_jid(sender_user, sender_server),
        IsFromMe=False, IsGroup=is_group,
        AddressingMode=N.LID if sender_server == "lid" else N.PN,
        SenderAlt=_EMPTY_JID, RecipientAlt=_EMPTY_JID, BroadcastListOwner=_EMPTY_JID)
    info = N.MessageInfo(
        MessageSource=source, ID=msg_id, ServerID=0, Type="text", Pushname=pushname,
        Timestamp=int(time.time() * 1000) if timestamp_ms is None else timestamp_ms,
        Category="", Multicast=False, MediaType="", Edit="")
    return MessageEv(
        Info=info, Message=waE2E.Message(conversation=text), IsEphemeral=False,
        IsViewOnce=False, IsViewOnceV2=False, IsViewOnceV2Extension=False,
        IsDocumentWithCaption=False, IsLottieSticker=False, IsEdit=False,
        UnavailableRequestID="", RetryCount=0)


@dataclass(frozen=True)
class HistoryEvent:
    """``connect``, ``disconnect`` (the socket closed), ``replaced`` (another connection
    of the device took over) or ``refused`` (not the linked device)."""

    kind: str
    conn: int
    pid: int
    time: float  # time.monotonic()


@dataclass
class Sent:
    """One ``SendMessage`` that reached the server."""

    conn: int
    pid: int
    to: str
    message: waE2E.Message
    id: str
    time: float

    @property
    def text(self) -> str | None:
        m = self.message
        if m.HasField("conversation") or m.conversation:
            return m.conversation
        if m.HasField("extendedTextMessage"):
            return m.extendedTextMessage.text
        return None

    @property
    def reaction(self) -> waE2E.ReactionMessage | None:
        return self.message.reactionMessage if self.message.HasField("reactionMessage") \
            else None


@dataclass
class Connection:
    """One connection of the device: a process's Go client, from hello to close."""

    index: int
    pid: int
    client: str
    opened: float
    writer: asyncio.StreamWriter = field(repr=False)
    closed: float | None = None
    replaced: bool = False
    sent: list[Sent] = field(default_factory=list)
    presences: list[str] = field(default_factory=list)
    chat_presences: list[tuple[str, str]] = field(default_factory=list)
    receipts: list[tuple[tuple[str, ...], str, str]] = field(default_factory=list)
    delivered: list[str] = field(default_factory=list)  # message ids pushed to it
    acked: list[str] = field(default_factory=list)

    @property
    def live(self) -> bool:
        return self.closed is None


class FakeWhatsApp:
    """The server; the test injects messages and reads what each connection did."""

    def __init__(self, account: Account | None = None) -> None:
        self.account = account or Account()
        self.history: list[HistoryEvent] = []
        self.connections: list[Connection] = []
        self.max_concurrent = 0
        # Connections (indexes) whose replacement's stream error never reaches them (a
        # partitioned network): they only see the socket go, an unexpected disconnect,
        # after which whatsmeow reconnects by itself.
        self.lost_stream_errors: set[int] = set()
        self._pending: dict[str, MessageEv] = {}  # not acked yet, in arrival order
        self._ids = itertools.count(1)
        self._sent_ids = itertools.count(1)
        self._server: asyncio.AbstractServer | None = None
        self._changed = asyncio.Event()
        self._handlers: set[asyncio.Task[None]] = set()
        self.port = 0

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> FakeWhatsApp:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in self.connections:
            if conn.live:
                conn.writer.close()
        for task in list(self._handlers):
            task.cancel()
        for task in list(self._handlers):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> FakeWhatsApp:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- what the test does --------------------------------------------------------

    @property
    def device_jid(self) -> str:
        """The linked device, as whatsmeow stores it (``phone:device@s.whatsapp.net``)."""
        return f"{self.account.phone}:{self.account.device}@s.whatsapp.net"

    def inject(self, chat: str, text: str, *, sender: str | None = None,
               pushname: str = "Ann") -> str:
        """Someone writes to the account from ``chat``: delivered to the live connection
        now, or on the next connect.  Returns the message id."""
        msg_id = f"3EB0{next(self._ids):08X}"
        event = message_event(chat, text, msg_id=msg_id, sender=sender, pushname=pushname)
        self._pending[msg_id] = event
        live = self.live
        if live is not None:
            self._push(live, event)
        self._notify()
        return msg_id

    @property
    def live(self) -> Connection | None:
        """The connection up now (at most one: a second replaces the first)."""
        return next((c for c in reversed(self.connections) if c.live), None)

    @property
    def pending(self) -> list[str]:
        """Messages not acked by any connection yet, in order."""
        return list(self._pending)

    @property
    def sent(self) -> list[Sent]:
        return sorted((s for c in self.connections for s in c.sent), key=lambda s: s.time)

    def texts_to(self, chat: str) -> list[str]:
        """The texts sent to ``chat``, in the order the server got them."""
        return [s.text for s in self.sent if s.to == chat and s.text is not None]

    def kinds(self) -> list[tuple[str, int]]:
        """``(kind, pid)`` of the history, in order."""
        return [(e.kind, e.pid) for e in self.history]

    async def wait_until(self, check: Callable[[], Any], what: str,
                         limit_s: float = HANG_GUARD_S) -> Any:
        """Until ``check()`` is truthy, woken by every change (a hang guard only)."""
        try:
            async with asyncio.timeout(limit_s):
                while True:
                    changed = self._changed
                    if got := check():
                        return got
                    await changed.wait()
        except TimeoutError:
            raise AssertionError(f"not in {limit_s:.0f} s: {what}") from None

    # -- the connection ------------------------------------------------------------------

    def _notify(self) -> None:
        """Wake every :meth:`wait_until` (each waits on the event current when it checked)."""
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _record(self, kind: str, conn: Connection) -> None:
        self.history.append(HistoryEvent(kind, conn.index, conn.pid, time.monotonic()))
        self._notify()

    @staticmethod
    def _write(conn: Connection, frame: dict[str, Any]) -> None:
        if conn.live and not conn.writer.is_closing():
            conn.writer.write(json.dumps(frame).encode() + b"\n")

    def _push(self, conn: Connection, event: MessageEv) -> None:
        conn.delivered.append(event.Info.ID)
        self._write(conn, {"op": "message", "event": encode(event)})

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        conn: Connection | None = None
        try:
            hello = json.loads(await reader.readline() or b"{}")
            if hello.get("op") != "hello":
                return
            conn = Connection(len(self.connections), int(hello.get("pid", 0)),
                              str(hello.get("client", "")), time.monotonic(), writer)
            if hello.get("device") != self.device_jid:
                # whatsmeow handleConnectFailure, reason 401: LoggedOut, store deleted.
                conn.closed = conn.opened
                self.connections.append(conn)
                self._record("refused", conn)
                writer.write(json.dumps({"op": "failure", "reason": "LOGGED_OUT"}).encode()
                             + b"\n")
                return
            # Counted before the older one is replaced: both were up at this moment.
            self.max_concurrent = max(self.max_concurrent,
                                      1 + sum(1 for c in self.connections if c.live))
            self._replace_live(conn)
            self.connections.append(conn)
            self._record("connect", conn)
            self._write(conn, {"op": "success"})
            for event in list(self._pending.values()):  # offline messages, in order
                self._push(conn, event)
            await writer.drain()
            while line := await reader.readline():
                await self._handle(conn, json.loads(line))
        except (ConnectionError, json.JSONDecodeError, asyncio.IncompleteReadError):
            pass
        finally:
            self._handlers.discard(task)
            if conn is not None and conn.live:
                conn.closed = time.monotonic()
                self._record("disconnect", conn)
            writer.close()

    def _replace_live(self, newcomer: Connection) -> None:
        """whatsmeow's quirk: the device's older connection gets a stream error
        (``conflict type="replaced"``) and is closed by the server."""
        for old in self.connections:
            if old.live:
                if old.index not in self.lost_stream_errors:
                    self._write(old, {"op": "stream_error", "conflict": "replaced"})
                old.replaced = True
                old.closed = time.monotonic()
                self._record("replaced", old)
                old.writer.close()

    async def _handle(self, conn: Connection, frame: dict[str, Any]) -> None:
        op = frame.get("op")
        if op == "ack":
            conn.acked.append(str(frame["id"]))
            self._pending.pop(str(frame["id"]), None)
            self._notify()
            return
        reply: dict[str, Any] = {"op": "result", "req": frame.get("req")}
        if op == "send":
            message = decode(waE2E.Message, frame["message"])
            sent = Sent(conn.index, conn.pid, str(frame["to"]), message,
                        f"3EB0SRV{next(self._sent_ids):06d}", time.monotonic())
            conn.sent.append(sent)
            reply["id"] = sent.id
        elif op == "passive":
            pass  # SetPassive(false) after connecting: nothing to record
        elif op == "presence":
            conn.presences.append(str(frame["state"]))
        elif op == "chat_presence":
            conn.chat_presences.append((str(frame["to"]), str(frame["state"])))
        elif op == "receipt":
            conn.receipts.append((tuple(frame["ids"]), str(frame["chat"]),
                                  str(frame["sender"])))
        else:
            reply["error"] = f"unknown op {op!r}"
        self._write(conn, reply)
        await conn.writer.drain()
        self._notify()
