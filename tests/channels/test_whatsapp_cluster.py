"""Issue 20: one WhatsApp connection per account in a cluster.

WhatsApp takes one connection per device: a second one gets the first replaced
(whatsmeow's ``StreamReplaced``, reproduced by tests/fakes/neonize_fake.py).  So with
several Palavers on one PostgreSQL store only the leader of ``whatsapp/default``
connects, with the device keys in that database; the others stand by and take over when
it dies.  First the channel's side of the leadership (no database: the leadership is
decided by hand), then whole Apps on one PostgreSQL database, each with its own
coordinator, the real NeonizeClient over the neonize fake.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import urllib.parse
from pathlib import Path

import pytest
from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as E

from bridge.app import App
from bridge.config.schema import Config
from bridge.envelope import AcceptStatus
from bridge.store.coord import Lost
from channels.whatsapp import WhatsAppChannel
from channels.whatsapp.client import NeonizeClient
from channels.whatsapp.login import run_login, run_logout, whatsapp_status
from channels.whatsapp.session import SCHEMA, SessionStore, lib_pq_url
from tests.channels.test_whatsapp import RecordingSink
from tests.channels.test_whatsapp_fake import message_event, until
from tests.channels.test_whatsapp_neonize import ANN, ANN_JID, channel_for, db_of
from tests.fakes.neonize_fake import FakeGo, FakeNewAClient, install_bounded, session_store

NAME = "whatsapp/default"
HANG_GUARD_S = 30.0  # only against a hang (a loaded 2-core machine)
PASSWORD = "pw-Zq8uXk2LrT"  # the test server trusts any password: it must never show


@pytest.fixture
async def go(monkeypatch):
    fake = install_bounded(monkeypatch)
    yield fake
    fake.release()


def _connected(go: FakeGo) -> list[FakeNewAClient]:
    """The clients WhatsApp has a live connection with now."""
    return [c for c in list(go.clients.values()) if c.connected]


class _Leadership:
    """A leadership decided by the test: ``who`` holds it."""

    def __init__(self) -> None:
        self.who: str | None = None

    def check_for(self, me: str):
        def check() -> None:
            if self.who != me:
                raise Lost(f"leadership {NAME} is not this process's")
        return check

    def leader(self) -> str | None:
        return self.who


async def _follower(tmp_path: Path, lead: _Leadership, me: str, sink: RecordingSink):
    channel = channel_for(tmp_path)  # both on the same session database: one device
    channel.follow_leader(lead.check_for(me), lead.leader)
    await channel.start(sink)
    return channel


@contextlib.asynccontextmanager
async def _two_followers(tmp_path: Path, sinks: dict[str, RecordingSink] | None = None):
    """``(lead, a, b)``: two followers of one leadership, started (nobody leads yet);
    stopped afterwards."""
    lead = _Leadership()
    sinks = sinks or {"a": RecordingSink(), "b": RecordingSink()}
    a = await _follower(tmp_path, lead, "a", sinks["a"])
    b = await _follower(tmp_path, lead, "b", sinks["b"])
    try:
        yield lead, a, b
    finally:
        await a.stop()
        await b.stop()


# ------------------------------------------------------------------ the channel's side


async def test_a_follower_connects_only_while_leading_and_hands_over_cleanly(tmp_path, go):
    go.link(db_of(tmp_path))
    sinks = {"a": RecordingSink(), "b": RecordingSink()}
    async with _two_followers(tmp_path, sinks) as (lead, a, b):
        assert go.neonize_calls == 0  # started, validated, not connected
        assert a.health() == b.health()
        assert a.health().detail == "standby (leader: none yet)"
        assert not a.owns(None) and not b.owns(None)

        lead.who = "a"
        await a.start_leading()
        await until(lambda: a.health().connected, HANG_GUARD_S)
        assert a.owns(None) and not b.owns(None)
        assert b.health().detail == "standby (leader: a)" and not b.health().connected
        go.deliver(message_event(E.Message(conversation="hi"), chat=ANN_JID,
                                 sender=ANN_JID, msg_id="M1"), _connected(go)[0])
        await until(lambda: sinks["a"].received, HANG_GUARD_S)

        # Handed over: the old leader disconnects before the new one connects.
        lead.who = "b"
        await a.stop_leading()
        assert _connected(go) == [] and a.health().detail == "standby (leader: b)"
        await b.start_leading()
        await until(lambda: b.health().connected, HANG_GUARD_S)
        assert len(_connected(go)) == 1 and go.replaced == []
        assert len(go.connects) == 2
    assert not go.crashes


async def test_a_stream_replaced_by_losing_the_leadership_does_not_stick(tmp_path, go):
    """The old leader was too slow to let go: the new one's connection replaced its
    stream (it halts, as whatsmeow does not reconnect).  Once it has lost the leadership
    and gets it back, it connects afresh."""
    go.link(db_of(tmp_path))
    async with _two_followers(tmp_path) as (lead, a, b):
        lead.who = "a"
        await a.start_leading()
        await until(lambda: a.health().connected, HANG_GUARD_S)
        lead.who = "b"
        await b.start_leading()  # before a noticed
        await until(lambda: "session replaced" in a.health().detail, HANG_GUARD_S)
        assert len(go.replaced) == 1 and not a.health().connected
        await a.stop_leading()
        assert a.health().detail == "standby (leader: b)"
        lead.who = "a"
        await b.stop_leading()
        await a.start_leading()
        await until(lambda: a.health().connected, HANG_GUARD_S)
        assert a.health().detail.startswith("connected")
        assert len(go.replaced) == 1  # the clean hand-over replaced nothing


async def test_the_leader_reconnects_when_an_ex_leader_replaces_its_stream(tmp_path, go):
    """An ex-leader that stalled comes back and its whatsmeow reconnects by itself
    before it notices it lost the leadership: that connection replaces the leader's.
    The leader (the check still says so) rebuilds its session instead of halting; only
    ``replaced_limit`` replacements in one term halt it (something outside the cluster
    keeps using the device)."""
    go.link(db_of(tmp_path))
    lead = _Leadership()
    channel = await _follower(tmp_path, lead, "a", RecordingSink())
    channel.replaced_limit = 2
    rogues: list[NeonizeClient] = []
    try:
        lead.who = "a"
        await channel.start_leading()
        await until(lambda: channel.health().connected, HANG_GUARD_S)
        first = _connected(go)[0]

        async def rogue_connects() -> None:
            rogue = NeonizeClient(db_of(tmp_path))  # the ex-leader's Go client
            rogues.append(rogue)
            await rogue.connect()

        await rogue_connects()
        await until(lambda: len(go.replaced) == 2, HANG_GUARD_S)  # it, then the rogue
        await until(lambda: channel.health().connected, HANG_GUARD_S)
        assert go.replaced[0] == first._key
        # Its own client again (the same Go client, a new session); the rogue is off.
        assert _connected(go) == [first] and len(go.connects) == 3
        assert channel.health().detail.startswith("connected")
        await rogue_connects()  # the second replacement in this term: halt
        await until(lambda: "session replaced" in channel.health().detail, HANG_GUARD_S)
        connects = len(go.connects)
        await channel.stop_leading()
        await channel.start_leading()  # a new term counts anew
        await until(lambda: len(go.connects) > connects, HANG_GUARD_S)
        await until(lambda: channel.health().connected, HANG_GUARD_S)
    finally:
        for rogue in rogues:
            await rogue.close()
        await channel.stop()
    assert not go.crashes


async def test_a_connection_without_the_leadership_is_ended_at_once(tmp_path, go):
    """whatsmeow reconnects a dropped socket by itself, nothing asks Python: a process
    that can no longer vouch for the leadership ends its session when it drops."""
    from neonize.aioze.events import DisconnectedEv

    go.link(db_of(tmp_path))
    lead = _Leadership()
    channel = await _follower(tmp_path, lead, "a", RecordingSink())
    try:
        lead.who = "a"
        await channel.start_leading()
        await until(lambda: channel.health().connected, HANG_GUARD_S)
        client = _connected(go)[0]
        lead.who = "b"  # its heartbeat is late: the check says no, on_lose not yet
        go.deliver(DisconnectedEv(), client)
        await until(lambda: client._key in go.stops, HANG_GUARD_S)
        assert not channel.health().connected and len(go.connects) == 1
    finally:
        await channel.stop()


async def test_losing_the_leadership_disconnects_first_then_hands_the_inbox_to_the_core(
        tmp_path, go):
    """WhatsApp acknowledged what it delivered: a message still on its way to the core
    when the leadership goes is handed over (after the disconnect, which must not wait
    for it)."""
    go.link(db_of(tmp_path))
    lead = _Leadership()
    release = asyncio.Event()

    class SlowSink(RecordingSink):
        async def accept(self, inbound) -> AcceptStatus:
            await release.wait()
            return await super().accept(inbound)

    sink = SlowSink()
    channel = await _follower(tmp_path, lead, "a", sink)
    try:
        lead.who = "a"
        await channel.start_leading()
        await until(lambda: channel.health().connected, HANG_GUARD_S)
        client = _connected(go)[0]
        go.deliver(message_event(E.Message(conversation="just in time"), chat=ANN_JID,
                                 sender=ANN_JID, msg_id="LATE"), client)
        await until(lambda: channel._handling == "LATE", HANG_GUARD_S)
        lead.who = None
        losing = asyncio.create_task(channel.stop_leading())
        await until(lambda: client._key in go.stops, HANG_GUARD_S)  # disconnected first
        assert not losing.done() and _connected(go) == []
        release.set()
        await losing
        assert [m.message_id for m in sink.received] == ["LATE"]
    finally:
        release.set()
        await channel.stop()


async def test_the_leader_asks_before_every_connect(tmp_path, go):
    """start_leading() with a check that says no (the heartbeat is late): no connect
    until it says yes."""
    go.link(db_of(tmp_path))
    lead = _Leadership()
    channel = await _follower(tmp_path, lead, "a", RecordingSink())
    try:
        await channel.start_leading()  # lead.who is nobody: the check refuses
        await until(lambda: channel._detail.startswith("not connecting"), HANG_GUARD_S)
        assert go.neonize_calls == 0
        lead.who = "a"
        await until(lambda: channel.health().connected, HANG_GUARD_S)
    finally:
        await channel.stop()


async def test_alone_on_sqlite_nothing_changes(tmp_path, go):
    """Not following a leader (the single-process coordinator leads at once anyway):
    start() connects, owns every chat."""
    go.link(db_of(tmp_path))
    channel = channel_for(tmp_path)
    await channel.start(RecordingSink())
    try:
        await until(lambda: channel.health().connected, HANG_GUARD_S)
        assert channel.owns(None)
        assert channel.leadership == NAME
    finally:
        await channel.stop()


async def test_a_device_linked_while_palaver_runs_is_connected_without_a_restart(
        tmp_path, go, monkeypatch):
    """Started with no device: not linked, nothing asked of Go.  `palaver whatsapp
    login` finishes meanwhile (the device appears in the session database): the channel
    connects it by itself within link_check_s."""
    monkeypatch.setattr(WhatsAppChannel, "link_check_s", 0.05)
    sink = RecordingSink()
    channel = channel_for(tmp_path)
    await channel.start(sink)
    try:
        assert channel.health().detail.startswith("not linked")
        made = go.made
        await asyncio.sleep(0.2)  # several looks at the session: still nothing to do
        assert go.neonize_calls == 0 and not channel.health().connected
        assert go.made == made  # looked at without making Go clients
        go.link(db_of(tmp_path))
        await until(lambda: channel.health().connected, HANG_GUARD_S)
        assert len(go.connects) == 1
        go.deliver(message_event(E.Message(conversation="hi"), chat=ANN_JID,
                                 sender=ANN_JID, msg_id="M1"), _connected(go)[0])
        await until(lambda: sink.received, HANG_GUARD_S)
    finally:
        await channel.stop()
    assert channel._link_watch is None and not go.crashes


async def test_a_follower_that_finds_a_device_connects_only_while_it_leads(
        tmp_path, go, monkeypatch):
    """Two followers started unlinked, one leading: the device linked meanwhile is
    connected by the leader alone; the other stands by with it and connects when it
    takes the leadership over."""
    monkeypatch.setattr(WhatsAppChannel, "link_check_s", 0.05)
    async with _two_followers(tmp_path) as (lead, a, b):
        lead.who = "a"
        await a.start_leading()
        assert "not linked" in a.health().detail and "not linked" in b.health().detail
        go.link(db_of(tmp_path))
        await until(lambda: a.health().connected, HANG_GUARD_S)
        await until(lambda: b.health().detail == "standby (leader: a)", HANG_GUARD_S)
        assert len(go.connects) == 1 and not b.health().connected
        lead.who = "b"
        await a.stop_leading()
        await b.start_leading()
        await until(lambda: b.health().connected, HANG_GUARD_S)
        assert len(go.connects) == 2 and len(_connected(go)) == 1 and go.replaced == []


# ------------------------------------------------------------------ PostgreSQL


def _with_password(pg_url: str) -> str:
    parts = urllib.parse.urlsplit(pg_url)
    netloc = f"{parts.username}:{PASSWORD}@{parts.hostname}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def test_the_store_url_becomes_lib_pq_s():
    url = "postgresql://u:p%40ss@db.example:5433/pal"
    assert lib_pq_url(url) == ("postgresql://u:p%40ss@db.example:5433/pal"
                               "?sslmode=prefer&search_path=whatsmeow")
    # asyncpg's own sslmode is kept; options lib/pq would send on as run-time
    # parameters the server refuses are dropped; a search_path is always ours.
    assert lib_pq_url("postgres://u@h/d?sslmode=verify-full&sslcrl=/x&search_path=a"
                      "&application_name=pal") == (
        "postgresql://u@h/d?application_name=pal&sslmode=verify-full&search_path=whatsmeow")
    with pytest.raises(Exception, match="sslmode"):
        lib_pq_url("postgresql://u@h/d?sslmode=on")


def test_the_label_never_holds_the_password(tmp_path):
    store = SessionStore.postgres(f"postgresql://palaver:{PASSWORD}@127.0.0.1:5/db",
                                  tmp_path)
    assert PASSWORD not in store.label and PASSWORD not in repr(store)
    assert store.label == "PostgreSQL 127.0.0.1:5/db (schema whatsmeow)"
    assert PASSWORD in store.neonize_name  # what Go gets (and only Go)


def _config(data: Path, models, url: str, **whatsapp) -> Config:
    return Config.model_validate({
        "dataDir": str(data),
        "store": {"url": url, "leaseSeconds": 2},
        "models": {"mode": "replace", "providers": {"fake": {
            "baseUrl": models.url_for("openai-completions"),
            "api": "openai-completions", "apiKey": "k",
            "models": [{"id": "m"}]}}},
        "agents": {"defaults": {"model": "fake/m"}},
        "channels": {"whatsapp": {"dmPolicy": "allowlist", "allowFrom": ["+" + ANN],
                                  **whatsapp}},
    })


def _texts(go: FakeGo) -> list[str]:
    return [m.conversation or m.extendedTextMessage.text for _chat, m in go.sent
            if isinstance(m, E.Message) and not m.HasField("reactionMessage")]


def _ask(go: FakeGo, text: str, msg_id: str) -> None:
    """WhatsApp delivers a message to the one connection it has."""
    (client,) = _connected(go)
    go.deliver(message_event(E.Message(conversation=text), chat=ANN_JID, sender=ANN_JID,
                             msg_id=msg_id, timestamp_ms=int(time.time() * 1000)), client)


def _whatsapp(app: App) -> WhatsAppChannel:
    (channel,) = [c for c in app.channels if isinstance(c, WhatsAppChannel)]
    return channel


def _kill(app: App, go: FakeGo) -> None:
    """What kill -9 does to a process: its coordinator dies without a word (peers reap
    it once its connection is gone) and its WhatsApp connection with it."""
    ours = getattr(_whatsapp(app)._client, "_client", None)  # NeonizeClient's NewAClient
    for client in list(go.clients.values()):
        if client is ours:
            go.clients.pop(client._key, None)
            client.connected = False
            client._cancel.set()


@pytest.fixture
async def cluster(tmp_path, pg_url, go, models):
    """Two Apps on one PostgreSQL database, each with its own coordinator (lease 2 s),
    the device linked in PostgreSQL; ``await start(name)`` starts one."""
    models.default(lambda req: f"ack {req.last_user_text()}")
    url = _with_password(pg_url)
    go.link(lib_pq_url(url))  # `palaver whatsapp login` done on any one of them
    apps: dict[str, App] = {}

    async def start(name: str) -> App:
        app = App(_config(tmp_path / name, models, url))
        apps[name] = app
        await app.start()
        return app

    yield start
    for app in apps.values():
        with contextlib.suppress(Exception):
            await app.stop(0)


async def test_one_app_connects_the_other_stands_by_and_takes_over_when_it_dies(
        cluster, go, caplog):
    caplog.set_level(logging.DEBUG)
    a = await cluster("a")
    await until(lambda: _whatsapp(a).health().connected, HANG_GUARD_S)
    b = await cluster("b")
    a_id = a._coord.process_id
    # b's view of the leader comes with its heartbeats.
    await until(lambda: _whatsapp(b).health().detail == f"standby (leader: {a_id})",
                HANG_GUARD_S)
    assert len(go.connects) == 1 and len(_connected(go)) == 1 and go.replaced == []
    report = await b.health()
    assert report["channels"]["whatsapp"]["standby"] is True
    assert report["channels"]["whatsapp"]["connected"] is False
    assert "standby" not in (await a.health())["channels"]["whatsapp"]

    _ask(go, "hello", "Q1")
    await until(lambda: "ack hello" in _texts(go), HANG_GUARD_S)
    assert a._coord.owns(f"whatsapp:default:direct:+{ANN}")
    assert _connected(go)[0] is getattr(_whatsapp(a)._client, "_client", None)  # a's

    _kill(a, go)
    await a._coord.abandon()
    await until(lambda: _whatsapp(b).health().connected, HANG_GUARD_S)
    assert b._coord.holds(NAME) and len(go.connects) == 2 and go.replaced == []
    assert not _whatsapp(a).health().connected  # and it does not reconnect
    _ask(go, "still there?", "Q2")
    await until(lambda: "ack still there?" in _texts(go), HANG_GUARD_S)
    assert _texts(go) == ["ack hello", "ack still there?"]
    assert b._coord.owns(f"whatsapp:default:direct:+{ANN}")
    assert len(go.connects) == 2 and go.replaced == [] and not go.crashes
    assert PASSWORD not in caplog.text


async def test_a_leader_that_loses_the_leadership_disconnects_and_gives_up_its_chats(
        cluster, go, pg_url, models):
    """Another process took the leadership over (the database says so) while a turn
    runs: the old leader disconnects and disowns its WhatsApp chats, work waiting and
    all, so the new leader answers that chat at once instead of the old one keeping a
    reply it can no longer send.  When the new one stops, the first takes over again
    with a fresh session."""
    import asyncpg

    a = await cluster("a")
    await until(lambda: _whatsapp(a).health().connected, HANG_GUARD_S)
    b = await cluster("b")
    models.reply("the slow answer", chunks=3, delay=1.0)
    _ask(go, "hello", "Q1")
    await until(lambda: models.requests and models.requests[0].chunks_written >= 1,
                HANG_GUARD_S)
    key = f"whatsapp:default:direct:+{ANN}"
    assert a._coord.owns(key)  # its turn is running

    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute("UPDATE leaders SET owner = $1, epoch = epoch + 1 "
                           "WHERE name = $2", b._coord.process_id, NAME)
    finally:
        await conn.close()
    await until(lambda: not a._coord.holds(NAME) and not a._coord.owns(key), HANG_GUARD_S)
    assert "standby" in _whatsapp(a).health().detail
    await until(lambda: _whatsapp(b).health().connected, HANG_GUARD_S)
    await until(lambda: len(_texts(go)) == 1, HANG_GUARD_S)  # Q1 answered, once
    assert len(_connected(go)) == 1
    _ask(go, "who now?", "Q2")
    await until(lambda: "ack who now?" in _texts(go), HANG_GUARD_S)

    # Its answer recorded as delivered first (stop(0) cancels a turn between its send
    # and that record, and the next owner would send it again: at least once).
    await b.core.wait_idle()
    await b.stop(0)  # gives the leadership up: a connects again, with a fresh session
    await until(lambda: _whatsapp(a).health().connected, HANG_GUARD_S)
    _ask(go, "and now?", "Q3")
    await until(lambda: "ack and now?" in _texts(go), HANG_GUARD_S)
    texts = _texts(go)
    assert len(texts) == 3 and texts[1:] == ["ack who now?", "ack and now?"], texts
    assert not go.crashes


async def test_a_login_made_while_the_cluster_runs_is_connected_by_the_leader_alone(
        tmp_path, pg_url, go, models, monkeypatch):
    """Two Palavers on one PostgreSQL store, started before any device was linked; then
    `palaver whatsapp login` (from a third place, the keys into PostgreSQL): the leader
    connects the device without a restart, the other stands by, a message is answered."""
    import io

    monkeypatch.setattr(WhatsAppChannel, "link_check_s", 0.05)
    models.default(lambda req: f"ack {req.last_user_text()}")
    url = _with_password(pg_url)
    apps = [App(_config(tmp_path / name, models, url)) for name in "ab"]
    try:
        for app in apps:
            await app.start()
        await until(lambda: any(app._coord.holds(NAME) for app in apps), HANG_GUARD_S)
        leader, other = sorted(apps, key=lambda app: not app._coord.holds(NAME))
        assert "not linked" in _whatsapp(leader).health().detail
        assert go.clients == {}

        store = SessionStore.postgres(url, tmp_path / "login")
        login = asyncio.create_task(run_login(data_dir=tmp_path / "login", out=io.StringIO(),
                                              session_store=store))
        await until(lambda: go.clients, HANG_GUARD_S)
        go.scan()
        assert await login == 0
        await until(lambda: _whatsapp(leader).health().connected, HANG_GUARD_S)
        leader_id = leader._coord.process_id
        await until(lambda: _whatsapp(other).health().detail == f"standby (leader: {leader_id})",
                    HANG_GUARD_S)
        assert _connected(go) == [getattr(_whatsapp(leader)._client, "_client", None)]
        _ask(go, "hello", "Q1")
        await until(lambda: "ack hello" in _texts(go), HANG_GUARD_S)
        assert go.replaced == [] and not go.crashes
    finally:
        for app in apps:
            with contextlib.suppress(Exception):
                await app.stop(0)


async def test_login_status_and_logout_use_the_postgresql_store(tmp_path, pg_url, go,
                                                               caplog):
    import io

    caplog.set_level(logging.DEBUG)
    url = _with_password(pg_url)
    store = SessionStore.postgres(url, tmp_path / "data")
    out = io.StringIO()
    login = asyncio.create_task(run_login(data_dir=tmp_path / "data", out=out,
                                          session_store=store))
    await until(lambda: go.clients, HANG_GUARD_S)
    go.scan()
    assert await login == 0
    # In PostgreSQL, in whatsmeow's own schema; no SQLite session under dataDir.
    assert [d[1] for d in session_store(lib_pq_url(url)).read()] == [go.account.push_name]
    assert [d.phone for d in await store.linked_devices()] == [go.account.phone]
    assert not (tmp_path / "data" / "whatsapp" / "session.db").exists()
    code, lines = await asyncio.to_thread(whatsapp_status, store, None)
    assert code == 0 and "session:  linked (PostgreSQL " in lines[0]
    assert SCHEMA in lines[0]
    assert await run_logout(data_dir=tmp_path / "data", out=out, session_store=store) == 0
    assert await store.linked_devices() == []
    code, lines = await asyncio.to_thread(whatsapp_status, store, None)
    assert code == 1 and "not linked" in lines[0]
    assert PASSWORD not in out.getvalue() + caplog.text + "\n".join(lines)


async def test_a_broken_store_url_says_where_without_the_password(tmp_path, pg_url, go,
                                                                 caplog):
    """A database that does not exist: the error names the server and database only."""
    caplog.set_level(logging.DEBUG)
    parts = urllib.parse.urlsplit(_with_password(pg_url))
    url = urllib.parse.urlunsplit(parts._replace(path="/no_such_database"))
    from bridge.media import MediaStore

    channel = WhatsAppChannel(
        _config(tmp_path / "data", _NoModels(), url).channels.whatsapp,
        media=MediaStore(tmp_path / "media"), data_dir=tmp_path / "data",
        session=SessionStore.postgres(url, tmp_path / "data"))
    await channel.start(RecordingSink())
    try:
        detail = channel.health().detail
        assert "cannot open the WhatsApp session" in detail and "no_such_database" in detail
        assert PASSWORD not in detail and PASSWORD not in caplog.text
    finally:
        await channel.stop()


class _NoModels:
    def url_for(self, _api: str) -> str:
        return "http://127.0.0.1:9/v1"


# ------------------------------------------------------------------ shared memory


async def test_the_lid_map_and_quote_journal_are_shared_through_the_store(store, tmp_path):
    """What one leader learnt (a LID's phone number, how to quote a group message) the
    next one reads from the store's key-value table; no file in dataDir."""
    from channels.whatsapp.identity import LidMap
    from channels.whatsapp.quotes import QuoteJournal

    first = LidMap(tmp_path / "lid-map.json", shared=store)
    await first.load()
    await first.remember("99000111", "15550001111")
    journal = QuoteJournal(tmp_path / "quotes.jsonl", 2, shared=store)
    await journal.load()
    for n in range(3):
        await journal.add(f"G{n}", "120363@g.us", f"4915{n}@s.whatsapp.net", f"text {n}")

    later, next_journal = LidMap(tmp_path / "x.json", shared=store), QuoteJournal(
        tmp_path / "y.jsonl", 2, shared=store)
    await later.load()
    await next_journal.load()
    assert later.phone_for("99000111") == "15550001111"
    assert next_journal.get("G0", "120363@g.us") is None  # pushed out (capacity 2)
    quote = next_journal.get("G2", "120363@g.us")
    assert quote is not None and quote.participant == "49152@s.whatsapp.net"
    assert sorted(await store.kv_items("whatsapp.quotes:default")) == ["G1", "G2"]
    assert not [p for p in tmp_path.iterdir() if p.suffix in (".json", ".jsonl")]


async def test_a_session_left_in_sqlite_after_a_store_migrate_is_pointed_out(
        tmp_path, pg_url, go, caplog):
    """`palaver store migrate` does not move whatsmeow's keys: the channel says it is not
    linked in PostgreSQL and that the old SQLite session needs a new login."""
    from bridge.media import MediaStore

    caplog.set_level(logging.WARNING)
    go.link(db_of(tmp_path))  # <dataDir>/whatsapp/session.db, from the SQLite days
    session = SessionStore.postgres(pg_url, tmp_path / "data")
    channel = WhatsAppChannel(
        _config(tmp_path / "data", _NoModels(), pg_url).channels.whatsapp,
        media=MediaStore(tmp_path / "media"), data_dir=tmp_path / "data", session=session)
    await channel.start(RecordingSink())
    try:
        assert channel.health().detail.startswith("not linked")
        assert go.neonize_calls == 0
        assert "from before the store was on PostgreSQL" in caplog.text
        assert "palaver whatsapp login" in caplog.text
    finally:
        await channel.stop()


def test_the_status_command_reads_the_device_from_the_configs_postgresql_store(
        tmp_path, pg_url, monkeypatch, capsys):
    """`palaver whatsapp status` with the store on PostgreSQL: the device in the store,
    the password nowhere in what it prints."""
    import json

    from bridge.cli import build_parser
    from bridge.config.load import CONFIG_ENV
    from channels.whatsapp.login import cmd_status

    url = _with_password(pg_url)
    FakeGo().link(lib_pq_url(url))
    config = tmp_path / "palaver.json"
    config.write_text(json.dumps({
        "dataDir": str(tmp_path / "data"), "store": {"url": url},
        "health": {"enabled": False},
        "channels": {"whatsapp": {"enabled": True}}}))
    monkeypatch.setenv(CONFIG_ENV, str(config))
    args = build_parser().parse_args(["whatsapp", "status"])
    assert cmd_status(args) == 0
    printed = capsys.readouterr()
    assert "session:  linked (PostgreSQL " in printed.out and "+15550001111" in printed.out
    assert PASSWORD not in printed.out + printed.err


async def test_a_store_hiccup_costs_the_shared_memory_an_entry_not_the_message(tmp_path,
                                                                              caplog):
    """The LID map is written while a message is being handled (before the core gets
    it): a store that cannot take the entry is logged, the message goes on."""
    from bridge.store import StoreUnavailableError
    from channels.whatsapp.identity import LidMap
    from channels.whatsapp.quotes import QuoteJournal

    class Down:
        async def kv_set(self, namespace: str, key: str, value: str | None) -> None:
            raise StoreUnavailableError("the database is unavailable")

        async def kv_items(self, namespace: str) -> dict[str, str]:
            return {}

    lids = LidMap(tmp_path / "l.json", shared=Down())
    await lids.remember("99000111", "15550001111")
    assert lids.phone_for("99000111") == "15550001111"  # for this process, in memory
    journal = QuoteJournal(tmp_path / "q.jsonl", 4, shared=Down())
    await journal.add("G1", "120363@g.us", "49151@s.whatsapp.net", "hi")
    assert journal.get("G1", "120363@g.us") is not None
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 2


async def test_a_session_that_cannot_be_read_gives_the_leadership_back(tmp_path, go,
                                                                      monkeypatch):
    """start_leading() raises when the device store cannot be read (the coordinator
    gives the leadership up and tries again later) and serves nothing meanwhile."""
    go.link(db_of(tmp_path))
    lead = _Leadership()
    channel = await _follower(tmp_path, lead, "a", RecordingSink())
    real = NeonizeClient.has_session
    failures = [OSError("database is unavailable")]

    async def flaky(self) -> bool:
        if failures:
            raise failures.pop()
        return await real(self)

    monkeypatch.setattr(NeonizeClient, "has_session", flaky)
    try:
        lead.who = "a"
        with pytest.raises(RuntimeError, match="database is unavailable"):
            await channel.start_leading()
        assert not channel.owns(None) and go.neonize_calls == 0
        await channel.start_leading()  # the coordinator's next try
        await until(lambda: channel.health().connected, HANG_GUARD_S)
        assert channel.owns(None)
    finally:
        await channel.stop()
