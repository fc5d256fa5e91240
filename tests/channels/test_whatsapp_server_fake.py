"""The loopback fake of WhatsApp's side (tests/fakes/whatsapp_server.py) and the fake Go
library that connects to it (tests/fakes/neonize_remote.py), driven through Palaver's
real NeonizeClient in this process: what the cluster test relies on."""

from __future__ import annotations

import asyncio
import json
import os

import pytest
from neonize.aioze.events import ConnectedEv, MessageEv, StreamReplacedEv

from channels.whatsapp.client import NeonizeClient, NotSent
from tests.channels.test_whatsapp_fake import jid
from tests.fakes import neonize_remote
from tests.fakes.whatsapp_server import FakeWhatsApp, decode

ANN = "15551234567@s.whatsapp.net"
BOB = "15557654321@s.whatsapp.net"


@pytest.fixture
async def server():
    async with FakeWhatsApp() as wa:
        yield wa


@pytest.fixture
def go(monkeypatch, server):
    fake = neonize_remote.install(monkeypatch, server.address)
    monkeypatch.setattr(NeonizeClient, "ready_wait_s", 2.0)
    monkeypatch.setattr(NeonizeClient, "stop_timeout_s", 2.0)
    monkeypatch.setattr(NeonizeClient, "ready_poll_s", 0.01)
    yield fake
    fake.release()


class Recorder:
    """A NeonizeClient with handlers that record what Go handed to Python."""

    def __init__(self, db) -> None:
        self.client = NeonizeClient(db)
        self.texts: list[str] = []
        self.events: list[str] = []
        self.changed = asyncio.Event()
        self.client.on(MessageEv, self._message)
        self.client.on(ConnectedEv, self._event("connected"))
        self.client.on(StreamReplacedEv, self._event("replaced"))

    async def _message(self, event) -> None:
        self.texts.append(event.Message.conversation)
        self.events.append(f"message {event.Message.conversation}")
        self._wake()

    def _event(self, name: str):
        async def record(_event) -> None:
            self.events.append(name)
            self._wake()
        return record

    def _wake(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    async def until(self, check, what: str) -> None:
        async with asyncio.timeout(30):
            while not check():
                await self.changed.wait()


@pytest.fixture
def db(tmp_path, go):
    path = tmp_path / "session.db"
    go.link(path)
    return path


async def test_messages_sent_while_offline_arrive_in_order_on_connect_and_are_acked(
        server, db):
    ids = [server.inject(ANN, "one"), server.inject(BOB, "two"), server.inject(ANN, "three")]
    assert server.pending == ids and len(set(ids)) == 3
    rec = Recorder(db)
    await rec.client.connect()
    try:
        await rec.until(lambda: "connected" in rec.events, "Connected")
        # As whatsmeow: Connected only after the post-connect IQ, the offline messages
        # (pushed right after the server's success) already handed over.
        assert rec.events == ["message one", "message two", "message three", "connected"]
        await server.wait_until(lambda: server.pending == [], "every message acked")
        server.inject(BOB, "live")  # a live message goes straight to the connection
        await rec.until(lambda: rec.texts[-1:] == ["live"], "the live message")
        await server.wait_until(lambda: server.pending == [], "acked")
    finally:
        await rec.client.close()
    await server.wait_until(lambda: server.live is None, "the connection closed")
    assert server.kinds() == [("connect", os.getpid()), ("disconnect", os.getpid())]
    assert server.max_concurrent == 1


async def test_sends_presence_and_receipts_are_recorded_on_the_connection(server, db):
    rec = Recorder(db)
    await rec.client.connect()
    try:
        await server.wait_until(lambda: server.live, "connected")
        await rec.until(lambda: "connected" in rec.events, "Connected")
        message_id = await rec.client.send_text(jid(ANN), "hello Ann")
        await rec.client.send_reaction(jid(ANN), jid(ANN), "3EB0ANN1", "\N{THUMBS UP SIGN}")
        await rec.client.set_presence(False)
        await rec.client.chat_presence(jid(ANN), composing=True)
        await rec.client.mark_read(["3EB0ANN1"], chat=jid(ANN), sender=jid(ANN))
        conn = server.live
        assert conn is not None and conn.pid == os.getpid()
        assert [s.id for s in conn.sent][0] == message_id
        assert server.texts_to(ANN) == ["hello Ann"]
        reaction = conn.sent[1].reaction
        assert reaction is not None and reaction.key.ID == "3EB0ANN1"
        assert reaction.text == "\N{THUMBS UP SIGN}"
        assert conn.presences == ["unavailable"]
        assert conn.chat_presences == [(ANN, "CHAT_PRESENCE_COMPOSING")]
        assert conn.receipts == [(("3EB0ANN1",), ANN, ANN)]
    finally:
        await rec.client.close()


async def test_a_second_connection_of_the_device_replaces_the_first(server, db):
    first, second = Recorder(db), Recorder(db)
    await first.client.connect()
    try:
        await first.until(lambda: "connected" in first.events, "the first connects")
        await second.client.connect()
        await first.until(lambda: "replaced" in first.events, "the first is replaced")
        await second.until(lambda: "connected" in second.events, "the second connects")
        assert "replaced" not in second.events
        assert [k for k, _ in server.kinds()] == ["connect", "replaced", "connect"]
        assert server.max_concurrent == 2
        # whatsmeow expects that disconnect: the first does not reconnect, its sends fail
        # before anything is written (safe to retry elsewhere).
        with pytest.raises(NotSent, match="websocket not connected"):
            await first.client.send_text(jid(ANN), "from the replaced one")
        server.inject(ANN, "to the second")
        await second.until(lambda: second.texts == ["to the second"], "delivered")
        assert first.texts == []
        assert [c.replaced for c in server.connections] == [True, False]
    finally:
        await first.client.close()
        await second.client.close()
    assert [k for k, _ in server.kinds()] == ["connect", "replaced", "connect", "disconnect"]


async def test_a_message_pushed_to_a_connection_that_dies_unacked_comes_again(server, db):
    """A process killed after WhatsApp pushed a message but before Go acked it: the
    message stays on the server and the next connection gets it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(json.dumps({"op": "hello", "device": server.device_jid, "pid": 1,
                             "client": "doomed"}).encode() + b"\n")
    assert json.loads(await reader.readline()) == {"op": "success"}
    msg_id = server.inject(ANN, "in flight")
    frame = json.loads(await reader.readline())
    assert decode(MessageEv, frame["event"]).Info.ID == msg_id
    writer.transport.abort()  # kill -9: no ack, the socket just goes
    await server.wait_until(lambda: server.live is None, "the dead connection seen")
    assert server.pending == [msg_id]
    rec = Recorder(db)
    await rec.client.connect()
    try:
        await rec.until(lambda: rec.texts == ["in flight"], "delivered again")
        await server.wait_until(lambda: server.pending == [], "acked this time")
    finally:
        await rec.client.close()
    assert server.kinds() == [("connect", 1), ("disconnect", 1),
                              ("connect", os.getpid()), ("disconnect", os.getpid())]


async def test_another_device_is_refused(server):
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(json.dumps({"op": "hello", "device": "1999:3@s.whatsapp.net",
                             "pid": 2}).encode() + b"\n")
    assert json.loads(await reader.readline()) == {"op": "failure", "reason": "LOGGED_OUT"}
    assert await reader.read() == b""
    writer.close()
    assert server.kinds() == [("refused", 2)]
    assert server.live is None
