"""The fake Go library of :mod:`tests.fakes.neonize_fake`, talking to a fake WhatsApp
server in another process (:mod:`tests.fakes.whatsapp_server`).

:class:`RemoteGo` is :class:`~tests.fakes.neonize_fake.FakeGo` (the same blocking Go
calls on the caller's thread, registration only once the store is open, nil-client
crashes, ``FetchMe`` spinning while the device has no id, ``Neonize()`` blocking until
Stop) whose clients, once Go has the device from the session store, CONNECT to the
server (``host:port``) instead of faking a connection locally; their sends, presence and
read receipts go there too.  What the connection does follows whatsmeow:

- ``success`` -> the post-connect IQ round trip, then ``Connected`` (whatsmeow's
  ``handleConnectSuccess`` goroutine); the server's queued messages, pushed right after
  ``success``, are read meanwhile, so they reach Python before ``Connected`` (each
  acked once Go handed it to Python: neonize's callback only schedules the handler).
- ``stream_error`` ``replaced`` -> ``StreamReplaced``; the disconnect is expected, so
  no ``Disconnected`` and no reconnect (``Neonize()`` keeps blocking until Stop).
- ``failure`` 401 -> ``LoggedOut`` (and the stored device is deleted, as
  ``handleConnectFailure`` does).
- The socket dropping otherwise -> ``Disconnected`` and whatsmeow's auto-reconnect
  (after ``AutoReconnectErrors * 2`` s).
- A call needing the socket while it is down fails as whatsmeow's ``ErrNotConnected``
  ("websocket not connected"; a send: "failed to send message node: websocket not
  connected", nothing went out); a send whose socket drops before the server answered
  fails as "failed to send message node: websocket disconnected before message send
  returned response" (it may have gone out).

:func:`install` puts it in place in a process (``palaver run`` under
``tests/cluster/whatsapp_member.py``).
"""

from __future__ import annotations

import json
import os
import socket
import threading
from dataclasses import dataclass
from typing import Any

from neonize.aioze.events import ConnectedEv, DisconnectedEv, LoggedOutEv, StreamReplacedEv
from neonize.exc import MarkReadError, SendMessageError, SendPresenceError
from neonize.proto import Neonize_pb2 as N
from neonize.utils.jid import Jid2String

from tests.fakes import neonize_fake
from tests.fakes.neonize_fake import FakeGo, FakeNewAClient, _jid
from tests.fakes.whatsapp_server import decode, encode

NOT_CONNECTED = "websocket not connected"  # whatsmeow ErrNotConnected
NODE_ERROR = "failed to send message node: "  # whatsmeow send.go wraps the write
DROPPED = "websocket disconnected before message send returned response"
REQUEST_TIMEOUT_S = 75.0  # whatsmeow's defaultRequestTimeout
_POLL_S = 0.05  # how often the socket loop looks at Stop


class _Dropped(Exception):
    pass


@dataclass
class RemoteGo(FakeGo):
    """The Go library, connecting its clients to the fake WhatsApp at ``server``."""

    server: str = ""  # "host:port"

    def new_client(self, name: str, jid: N.JID | None = None, props: Any = None,
                   uuid: str | None = None, new_device: bool = False) -> RemoteNewAClient:
        return RemoteNewAClient(name, jid, props, uuid, new_device, go=self)


class _Socket:
    """One connection to the server: writes from any thread, answers by request id."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._lock = threading.Lock()
        self._reqs = 0
        self._waiting: dict[int, tuple[threading.Event, list[dict[str, Any]]]] = {}
        self.closed = False

    def write(self, frame: dict[str, Any]) -> None:
        data = json.dumps(frame).encode() + b"\n"
        with self._lock:
            if self.closed:
                raise _Dropped(NOT_CONNECTED)
            try:
                self.sock.sendall(data)
            except OSError:
                raise _Dropped(NOT_CONNECTED) from None

    def request(self, op: str, **fields: Any) -> dict[str, Any]:
        """Send ``op`` and block this thread until the server answers it."""
        done = threading.Event()
        answer: list[dict[str, Any]] = []
        with self._lock:
            self._reqs += 1
            req = self._reqs
            self._waiting[req] = (done, answer)
        self.write({"op": op, "req": req, **fields})
        if not done.wait(REQUEST_TIMEOUT_S):
            raise _Dropped("timed out waiting for message send response")
        if not answer:
            raise _Dropped(DROPPED)
        return answer[0]

    def answered(self, frame: dict[str, Any]) -> None:
        with self._lock:
            waiter = self._waiting.pop(int(frame.get("req") or 0), None)
        if waiter is not None:
            waiter[1].append(frame)
            waiter[0].set()

    def close(self) -> None:
        with self._lock:
            self.closed = True
            waiting, self._waiting = self._waiting, {}
        for done, _ in waiting.values():
            done.set()  # no answer: dropped
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class RemoteNewAClient(FakeNewAClient):
    """:class:`FakeNewAClient` whose connection is a socket to the fake WhatsApp."""

    _go: RemoteGo

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._socket: _Socket | None = None
        self._expected_disconnect = False
        self.reconnect_errors = 0

    # -- Go's Neonize(): the store, FetchMe, then the connection -------------------

    def _neonize(self) -> str:
        go = self._go
        go.neonize_calls += 1
        neonize_fake._open_store(self.name)
        go.clients[self._key] = self  # registered only after the store is open
        self._registered.set()
        devices = neonize_fake._read_devices(self.name)
        if not devices:
            for n in range(go.qr_codes):
                self._dispatch_qr(f"2@fake-qr-{n},key,adv".encode())
        while not devices:  # FetchMe: spins while the device has no id; Stop does not end it
            if go._released.wait(0.5):
                return ""
            devices = neonize_fake._read_devices(self.name)
        acc = go.account
        self.me = N.Device(JID=_jid(acc.phone, "s.whatsapp.net", acc.device),
                           LID=_jid(acc.lid, "lid", acc.device), Platform="android",
                           BussinessName=acc.business_name, PushName=acc.push_name,
                           Initialized=True)
        self._online(devices[0][0])
        return self._death or ""

    def _online(self, device: str) -> None:
        """Connect, and stay connected (whatsmeow's auto-reconnect) until Stop."""
        self._expected_disconnect = False
        while not self._cancel.is_set():
            dropped = self._session(device)
            self.connected = False
            if self._expected_disconnect or self._cancel.is_set():
                break
            if dropped:
                self._dispatch(DisconnectedEv, DisconnectedEv())
            delay = self.reconnect_errors * 2.0
            self.reconnect_errors += 1
            if self._cancel.wait(delay):
                break
        self._cancel.wait()  # Neonize() returns only at Stop

    def _session(self, device: str) -> bool:
        """One connection; whether it was up (and then dropped)."""
        host, _, port = self._go.server.rpartition(":")
        try:
            sock = socket.create_connection((host, int(port)), timeout=5)
        except OSError:
            return False
        sock.settimeout(_POLL_S)
        conn = self._socket = _Socket(sock)
        try:
            conn.write({"op": "hello", "device": device, "pid": os.getpid(),
                        "client": self._key})
            return self._read(conn)
        except _Dropped:
            return True
        finally:
            self._socket = None
            conn.close()

    def _read(self, conn: _Socket) -> bool:
        buffer = b""
        while not self._cancel.is_set():
            try:
                chunk = conn.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return True
            if not chunk:
                return True
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                self._frame(conn, json.loads(line))
                if self._expected_disconnect:
                    return False
        return False

    def _frame(self, conn: _Socket, frame: dict[str, Any]) -> None:
        op = frame.get("op")
        if op == "success":
            self.reconnect_errors = 0
            self.connected = True
            threading.Thread(target=self._after_success, args=(conn,),
                             name="fake-go-connected", daemon=True).start()
        elif op == "message":
            event = decode(neonize_fake.neonize_events.MessageEv, frame["event"])
            self._dispatch(type(event), event)
            try:
                conn.write({"op": "ack", "id": event.Info.ID})
            except _Dropped:
                pass  # whatsmeow's sendAck only logs; the frames already read still count
        elif op == "result":
            conn.answered(frame)
        elif op == "stream_error" and frame.get("conflict") == "replaced":
            self._expected_disconnect = True
            self._dispatch(StreamReplacedEv, StreamReplacedEv())
        elif op == "failure":
            self._expected_disconnect = True
            neonize_fake.session_store(self.name).delete()
            self._dispatch(LoggedOutEv, LoggedOutEv(OnConnect=True, Reason=0))

    def _after_success(self, conn: _Socket) -> None:
        """whatsmeow's handleConnectSuccess goroutine: the post-connect IQs (prekey count,
        ``SetPassive(false)``), then ``Connected``; the server's offline messages are
        read meanwhile, so they usually reach Python BEFORE ``Connected``."""
        try:
            conn.request("passive", active=True)
        except _Dropped:
            pass  # "Failed to send post-connect passive IQ": logged, Connected follows
        if not self._cancel.is_set() and not self._expected_disconnect:
            self._dispatch(ConnectedEv, ConnectedEv(status=True))

    def _request(self, op: str, error: type[Exception], *, wrap: str = "",
                 **fields: Any) -> dict[str, Any]:
        """``op`` to the server; ``wrap`` prefixes the error as whatsmeow's caller does."""
        conn = self._socket
        if conn is None or not self.connected:
            raise error(wrap + NOT_CONNECTED)
        try:
            answer = conn.request(op, **fields)
        except _Dropped as exc:
            raise error(wrap + str(exc)) from None
        if answer.get("error"):
            raise error(str(answer["error"]))
        return answer

    # -- the calls that go to WhatsApp ------------------------------------------------

    async def send_message(self, to: N.JID, message: Any) -> Any:
        def send() -> Any:
            if self._go.send_errors:
                raise SendMessageError(self._go.send_errors.pop(0))
            # sendDM: the node is written (or not) by sendNodeAndGetData, whose errors
            # SendMessage wraps; the device list of a known chat is cached.
            answer = self._request("send", SendMessageError, wrap=NODE_ERROR,
                                   to=Jid2String(to), message=encode(message))
            self._go.sent.append((Jid2String(to), message))
            self.sent_count += 1
            return neonize_fake._Result(str(answer["id"]))

        return await self._go_call("SendMessage", send)

    async def send_presence(self, presence: Any) -> None:
        def send() -> None:
            self._request("presence", SendPresenceError, state=presence.value.decode())
            self._go.presences.append(presence.value)

        await self._go_call("SendPresence", send)

    async def send_chat_presence(self, jid: N.JID, state: Any, media: Any) -> None:
        def send() -> None:
            self._request("chat_presence", SendPresenceError, to=Jid2String(jid),
                          state=str(getattr(state, "name", state)))

        await self._go_call("SendChatPresence", send)

    async def mark_read(self, *message_ids: str, chat: N.JID, sender: N.JID,
                        receipt: Any, timestamp: int | None = None) -> None:
        def mark() -> None:
            self._request("receipt", MarkReadError, ids=list(message_ids),
                          chat=Jid2String(chat), sender=Jid2String(sender))
            self._go.reads.append((message_ids, Jid2String(chat), Jid2String(sender)))

        await self._go_call("MarkRead", mark)


def install(monkeypatch: Any, server: str) -> RemoteGo:
    """Make this process's neonize hand out clients connecting to ``server``."""
    go = RemoteGo(server=server)
    neonize_fake.install(monkeypatch, go)
    return go

