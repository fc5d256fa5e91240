"""A recording fake of channels.whatsapp.client.WhatsAppClient and builders of REAL neonize events.

Events are neonize protobufs serialised and parsed again, so a missing proto2 required
field fails here exactly as it would on the bytes Go hands to Python.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from neonize.aioze.events import ConnectedEv, MessageEv
from neonize.proto import Neonize_pb2 as N
from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as E
from neonize.utils.jid import Jid2String, build_jid

from channels.whatsapp.client import NotConnected, NotSent
from channels.whatsapp.content import QuoteRef

BOT_PHONE = "15550001111"
BOT_LID = "99000111"
NOW = 1_750_000_000.0

EMPTY_JID = N.JID(User="", Server="", RawAgent=0, Device=0, Integrator=0, IsEmpty=True)


def jid(text: str) -> N.JID:
    user, _, server = text.partition("@")
    return build_jid(user, server)


def message_event(
    msg: E.Message,
    *,
    chat: str,
    sender: str,
    sender_alt: str | None = None,
    from_me: bool = False,
    msg_id: str = "3EB0A1B2C3D4",
    timestamp_ms: int | None = None,
    pushname: str = "Ann",
    is_edit: bool = False,
) -> MessageEv:
    """A neonize MessageEv as the Go core encodes it (Timestamp in Unix milliseconds)."""
    is_group = chat.endswith("@g.us")
    source = N.MessageSource(
        Chat=jid(chat),
        Sender=jid(sender),
        IsFromMe=from_me,
        IsGroup=is_group,
        AddressingMode=N.LID if sender.endswith("@lid") else N.PN,
        SenderAlt=jid(sender_alt) if sender_alt else EMPTY_JID,
        RecipientAlt=EMPTY_JID,
        BroadcastListOwner=EMPTY_JID,
    )
    info = N.MessageInfo(
        MessageSource=source,
        ID=msg_id,
        ServerID=0,
        Type="text" if msg.HasField("conversation") or msg.HasField("extendedTextMessage")
        else "media",
        Pushname=pushname,
        Timestamp=int(NOW * 1000) if timestamp_ms is None else timestamp_ms,
        Category="",
        Multicast=False,
        MediaType="",
        Edit="",
    )
    event = MessageEv(
        Info=info, Message=msg, IsEphemeral=False, IsViewOnce=False, IsViewOnceV2=False,
        IsViewOnceV2Extension=False, IsDocumentWithCaption=False, IsLottieSticker=False,
        IsEdit=is_edit, UnavailableRequestID="", RetryCount=0,
    )
    return MessageEv.FromString(event.SerializeToString())


def device(phone: str = BOT_PHONE, lid: str = BOT_LID) -> N.Device:
    me = N.Device(
        JID=N.JID(User=phone, Server="s.whatsapp.net", RawAgent=0, Device=7, Integrator=0,
                  IsEmpty=False),
        LID=N.JID(User=lid, Server="lid", RawAgent=0, Device=7, Integrator=0, IsEmpty=False),
        Platform="", BussinessName="", PushName="Palaver", Initialized=True,
    )
    return N.Device.FromString(me.SerializeToString())


class FakeWhatsAppClient:
    """Records every call; tests drive it by emitting neonize events."""

    def __init__(self, *, linked: bool = True, connect_errors: int = 0,
                 auto_connect: bool = True) -> None:
        self.linked = linked
        self.connect_errors = connect_errors
        self.auto_connect = auto_connect
        self.handlers: dict[type, Any] = {}
        self.qr_handler = None
        self.connects = 0
        self.disconnects = 0
        self.closes = 0
        self.session: asyncio.Future | None = None
        self.sent: list[tuple[str, str, str | None]] = []
        self.send_calls = 0  # every send_text call, failed or not
        self.quotes: list[QuoteRef | None] = []  # the QuoteRef of each sent message
        self.presence: list[tuple[str, bool]] = []
        self.reads: list[tuple[list[str], str, str]] = []
        self.downloads: list[E.Message] = []
        self.download_data = b""
        self.download_gate: asyncio.Event | None = None  # downloads wait for it when set
        self.send_failures = 0  # fail before sending (NotSent): safe to retry
        self.ambiguous_failures = 0  # the message goes out, then the ack times out
        self.available = 0  # set_presence(True) calls
        self.presences: list[bool] = []  # every set_presence call's ``available``
        self.presence_failures = 0  # set_presence fails this many times (no push name)
        self.forced_receipts = 0
        self.stuck = False
        self.lid_to_pn: dict[str, str] = {}
        self.pn_lookups: list[str] = []
        self.paired_with: list[str] = []
        self.pairing_code = "ABCD-EFGH"
        self.logged_out = False
        self.db_paths: list[Path] = []
        self.on_connect = None  # async callable run (as a task) after each good connect

    # registration
    def on(self, event_type: type, handler: Any) -> None:
        self.handlers[event_type] = handler

    def on_qr(self, handler: Any) -> None:
        self.qr_handler = handler

    async def emit(self, event: Any) -> None:
        await self.handlers[type(event)](event)

    async def emit_qr(self, code: str) -> None:
        await self.qr_handler(code)

    # lifecycle
    async def has_session(self) -> bool:
        return self.linked

    async def connect(self) -> asyncio.Future:
        self.connects += 1
        if self.connect_errors:
            self.connect_errors -= 1
            raise ConnectionError("dial tcp: connection refused")
        loop = asyncio.get_running_loop()
        self.session = loop.create_future()
        if self.auto_connect:
            loop.create_task(self.emit(ConnectedEv(status=True)))
        if self.on_connect is not None:
            loop.create_task(self.on_connect())
        return self.session

    async def disconnect(self) -> None:
        self.disconnects += 1
        if self.session is not None and not self.session.done():
            self.session.set_result(None)

    async def close(self) -> None:
        self.closes += 1
        await self.disconnect()

    def drop(self, error: Exception | None = None) -> None:
        """The Go session ends on its own."""
        assert self.session is not None
        if error:
            self.session.set_exception(error)
        else:
            self.session.set_result(None)

    # calls
    async def send_text(self, chat: N.JID, text: str, *, quoted: QuoteRef | None = None) -> str:
        self.send_calls += 1
        if self.send_failures:
            self.send_failures -= 1
            raise NotSent("failed to send message node: websocket not connected")
        self.sent.append((Jid2String(chat), text, quoted.message_id if quoted else None))
        self.quotes.append(quoted)
        if self.ambiguous_failures:
            self.ambiguous_failures -= 1
            raise RuntimeError("timed out waiting for message send response")
        return f"OUT{len(self.sent)}"

    async def set_presence(self, available: bool) -> None:
        if self.presence_failures:
            self.presence_failures -= 1
            raise RuntimeError("can't send presence without PushName set")
        self.presences.append(available)
        self.available += int(available)

    async def force_delivery_receipts(self) -> None:
        self.forced_receipts += 1

    async def chat_presence(self, chat: N.JID, *, composing: bool) -> None:
        self.presence.append((Jid2String(chat), composing))

    async def mark_read(self, message_ids: Any, *, chat: N.JID, sender: N.JID) -> None:
        self.reads.append((list(message_ids), Jid2String(chat), Jid2String(sender)))

    async def download(self, message: E.Message) -> bytes:
        if self.session is None or self.session.done():  # as NeonizeClient refuses
            raise NotConnected("no WhatsApp session is running")
        self.downloads.append(message)
        if self.download_gate is not None:
            await self.download_gate.wait()
        return self.download_data

    async def get_me(self) -> N.Device:
        return device()

    async def pn_for_lid(self, lid: N.JID) -> N.JID | None:
        self.pn_lookups.append(Jid2String(lid))
        phone = self.lid_to_pn.get(lid.User)
        return build_jid(phone) if phone else None

    async def pair_phone(self, phone_digits: str) -> str:
        self.paired_with.append(phone_digits)
        return self.pairing_code

    async def logout(self) -> None:
        self.logged_out = True


async def until(predicate, limit_s: float = 2.0) -> None:
    """Wait (polling the loop) until ``predicate()`` is true."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


# -- the neonize fake's own quirks (tests/fakes/neonize_fake.py) ------------------------


def _pg(url: str, query: str = "") -> str:
    return f"{url}?{query}" if query else url


def _pg_fetch(url: str, sql: str) -> list:
    """Rows of ``sql`` on ``url`` (a thread of its own, like tests/conftest's admin)."""
    import threading

    import asyncpg

    rows: list = []

    async def go() -> None:
        conn = await asyncpg.connect(url)
        try:
            rows.extend(tuple(r) for r in await conn.fetch(sql))
        finally:
            await conn.close()

    thread = threading.Thread(target=lambda: asyncio.run(go()))
    thread.start()
    thread.join()
    return rows


def _server_without_ssl(url: str) -> None:
    import pytest

    if _pg_fetch(url, "SHOW ssl") != [("off",)]:
        pytest.skip("the test server has SSL on: lib/pq's default sslmode works there")


def test_fake_pg_store_without_sslmode_fails_like_lib_pq(monkeypatch, pg_url):
    """lib/pq's sslmode defaults to require: Go's GetAllDevices answers the error string,
    which neonize splits on commas (ValueError), as the real 0.5.2 library does."""
    import pytest
    from neonize.aioze.client import ClientFactory

    from tests.fakes.neonize_fake import install, session_store

    _server_without_ssl(pg_url)
    install(monkeypatch)
    with pytest.raises(ValueError):
        ClientFactory.get_all_devices_from_db(pg_url)
    with pytest.raises(RuntimeError, match="pq: SSL is not enabled on the server"):
        session_store(pg_url).open()
    for mode in ("disable", "allow", "prefer"):  # lib/pq 1.12 connects in plain text
        assert session_store(_pg(pg_url, f"sslmode={mode}")).read() == []
    with pytest.raises(RuntimeError, match='wrong value for "sslmode"'):
        session_store(_pg(pg_url, "sslmode=on")).read()


def test_fake_pg_store_keeps_the_device_in_the_search_path_schema(monkeypatch, pg_url):
    import pytest
    from neonize.aioze.client import ClientFactory

    from tests.fakes.neonize_fake import install

    go = install(monkeypatch)
    name = _pg(pg_url, "sslmode=disable&search_path=whatsmeow")
    with pytest.raises(ValueError):  # no such schema yet: Go's error string, split
        ClientFactory.get_all_devices_from_db(name)
    go.link(name)  # creates the schema first, as Palaver's login does
    devices = ClientFactory.get_all_devices_from_db(name)
    assert [(d.PushName, d.Initialized) for d in devices] == [(go.account.push_name, True)]
    tables = _pg_fetch(pg_url, "SELECT table_schema FROM information_schema.tables "
                               "WHERE table_name = 'whatsmeow_device'")
    assert tables == [("whatsmeow",)]


def test_fake_pg_store_with_a_missing_schema_fails_the_upgrade(monkeypatch, pg_url):
    import pytest

    from tests.fakes.neonize_fake import session_store

    store = session_store(_pg(pg_url, "sslmode=disable&search_path=nowhere"))
    with pytest.raises(RuntimeError, match=r"failed to upgrade database: .*no schema has "
                                           r"been selected to create in \(3F000\)"):
        store.open()


async def test_fake_second_connection_of_a_device_replaces_the_first(monkeypatch, tmp_path):
    """whatsmeow: <conflict type="replaced"> -> StreamReplaced to the FIRST connection,
    which does not reconnect; the second stays connected."""
    from neonize.aioze.events import StreamReplacedEv

    from channels.whatsapp.client import NeonizeClient
    from tests.fakes.neonize_fake import install

    go = install(monkeypatch)
    db = tmp_path / "session.db"
    go.link(db)
    replaced: list[str] = []
    first, second = NeonizeClient(db), NeonizeClient(db)
    for label, client in (("first", first), ("second", second)):
        async def on_replaced(_event, label=label) -> None:
            replaced.append(label)

        client.on(StreamReplacedEv, on_replaced)
        client.on(ConnectedEv, _ignore)
    try:
        await first.connect()
        await until(lambda: len(go.connects) == 1)
        assert replaced == [] and go.replaced == []
        await second.connect()
        await until(lambda: replaced == ["first"])
        assert len(go.connects) == 2 and go.replaced == [go.connects[0]]
        connected = [c for c in go.clients.values() if c.connected]
        assert [c._key for c in connected] == [go.connects[1]]
    finally:
        await first.close()
        await second.close()
        go.release()


async def test_fake_a_device_in_another_store_is_not_replaced(monkeypatch, tmp_path):
    from channels.whatsapp.client import NeonizeClient
    from tests.fakes.neonize_fake import install

    go = install(monkeypatch)
    clients = []
    for n in (1, 2):
        go.link(tmp_path / f"s{n}.db")
        client = NeonizeClient(tmp_path / f"s{n}.db")
        client.on(ConnectedEv, _ignore)
        clients.append(client)
    try:
        for client in clients:
            await client.connect()
        await until(lambda: len(go.connects) == 2)
        assert go.replaced == []
    finally:
        for client in clients:
            await client.close()
        go.release()


async def _ignore(_event) -> None:
    return None
