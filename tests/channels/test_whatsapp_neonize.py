"""The WhatsApp adapter and Palaver's real NeonizeClient against a fake of neonize's
own NewAClient (tests/fakes/neonize_fake.py): issue 14's twelve findings."""

from __future__ import annotations

import asyncio
import io
import json
import os
import random
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from aiohttp import web
from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as E

from bridge.config.schema import WhatsAppConfig
from bridge.envelope import ChatAddress, ChatKind, Outbound
from bridge.media import MediaStore
from bridge.ports import SendError, SendProgress
from channels.whatsapp import WhatsAppChannel
from channels.whatsapp.client import (
    NeonizeClient,
    NotConnected,
    exit_if_stuck,
    read_linked_devices,
    send_error_means_unsent,
    session_db_path,
)
from channels.whatsapp.login import LOGIN_TIMEOUT_S, run_login, run_logout, whatsapp_status
from tests.channels.test_whatsapp import RecordingSink
from tests.channels.test_whatsapp_fake import NOW, message_event, until
from tests.fakes.neonize_fake import NOTHING_DOWNLOADABLE, FakeGo, install_bounded

ANN = "15551234567"
ANN_JID = f"{ANN}@s.whatsapp.net"
DM = ChatAddress(channel="whatsapp", account="default", chat_id=ANN_JID,
                 chat_kind=ChatKind.DIRECT)


@pytest.fixture
async def go(monkeypatch):
    """The fake Go library; neonize.aioze.client.NewAClient hands out its clients."""
    fake = install_bounded(monkeypatch)
    yield fake
    fake.release()  # what the process exit does to threads neonize could not stop


def db_of(tmp_path: Path) -> Path:
    path = session_db_path(tmp_path / "data")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def channel_for(tmp_path, exits=None, **config):
    config.setdefault("allowFrom", ("+" + ANN,))
    config.setdefault("dmPolicy", "allowlist")

    async def sleep(_seconds: float) -> None:
        await asyncio.sleep(0.01)

    return WhatsAppChannel(
        WhatsAppConfig(**config), media=MediaStore(tmp_path / "media"),
        data_dir=tmp_path / "data", clock=lambda: NOW + 5, sleep=sleep,
        typing_interval=0.02, rng=random.Random(3),
        exit_fn=(exits.append if exits is not None else None),
    )


async def started(tmp_path, go, **config):
    go.link(db_of(tmp_path))
    channel = channel_for(tmp_path, **config)
    sink = RecordingSink()
    await channel.start(sink)
    await until(lambda: channel.health().detail.startswith("connected as"))
    return channel, sink


# --------------------------------------------------------------------------- 1: commas


async def test_a_name_with_a_comma_does_not_break_start_login_logout_or_status(tmp_path, go):
    db = db_of(tmp_path)
    go.link(db, push_name="Doe, Jane")
    with pytest.raises(ValueError):  # what neonize's own reader does with the record
        go.get_all_devices_from_db(str(db))
    assert [d.name for d in read_linked_devices(db)] == ["Doe, Jane"]

    channel = channel_for(tmp_path)
    await channel.start(RecordingSink())
    try:
        await until(lambda: channel.health().connected)
        # "connected", then "connected as …" once the identity (GetMe) is read
        await until(lambda: channel.health().detail.startswith("connected as"))
        assert channel.health().detail == f"connected as +{go.account.phone}"
    finally:
        await channel.stop()

    out = io.StringIO()
    assert await run_login(data_dir=tmp_path / "data", out=out) == 0
    assert "already linked" in out.getvalue()

    code, lines = whatsapp_status(db, None)
    assert code == 0
    assert f"number:   +{go.account.phone}" in lines and "name:     Doe, Jane" in lines

    out = io.StringIO()
    assert await run_logout(data_dir=tmp_path / "data", out=out) == 0
    assert "Unlinked from WhatsApp" in out.getvalue()
    assert ("Logout", None) in go.calls and not go.crashes


def test_business_name_wins_and_a_device_number_is_not_the_phone(tmp_path):
    db = db_of(tmp_path)
    fake = FakeGo()
    fake.account.business_name = "Acme, Inc."
    fake.link(db)
    (device,) = read_linked_devices(db)
    assert device.phone == fake.account.phone and device.name == "Acme, Inc."
    assert read_linked_devices(tmp_path / "missing.db") == []


# --------------------------------------------------------------------------- 2: ConnectFailure


async def test_connect_failure_ends_the_session_and_it_is_rebuilt(tmp_path, go):
    go.connect_failures = ["GENERIC"]  # whatsmeow has turned its reconnecting off
    go.link(db_of(tmp_path))
    channel = channel_for(tmp_path)
    await channel.start(RecordingSink())
    try:
        await until(lambda: channel.health().connected, limit_s=5)
        assert go.neonize_calls == 2 and not go.crashes
    finally:
        await channel.stop()


@pytest.mark.parametrize(("reason", "shown"), [("BAD_USER_AGENT", "bad user agent"),
                                               ("CLIENT_OUTDATED", "outdated")])
async def test_terminal_connect_failures_stop_the_channel(tmp_path, go, reason, shown):
    go.connect_failures = [reason]
    go.link(db_of(tmp_path))
    channel = channel_for(tmp_path)
    await channel.start(RecordingSink())
    try:
        await until(lambda: shown in channel.health().detail)
        await asyncio.sleep(0.05)
        assert go.neonize_calls == 1 and not channel.health().connected
    finally:
        await channel.stop()


# --------------------------------------------------------------------------- 3 + 8: start-up window


async def test_no_call_reaches_go_before_its_first_callback(tmp_path, go):
    go.store_gate = threading.Event()  # Go is still opening and migrating its store
    go.link(db_of(tmp_path))
    client = NeonizeClient(db_of(tmp_path))
    await client.connect()
    with pytest.raises(NotConnected):
        await client.get_me()
    with pytest.raises(NotConnected):
        await client.pn_for_lid(message_event(E.Message(conversation="x"), chat=ANN_JID,
                                              sender=ANN_JID).Info.MessageSource.Sender)
    go.store_gate.set()
    await until(lambda: client._live())
    assert (await client.get_me()).JID.User == go.account.phone
    await client.disconnect()
    assert not go.crashes and not client.stuck


async def test_stop_inside_the_start_up_window_does_not_crash_and_exits_deliberately(
        tmp_path, go):
    go.store_gate = threading.Event()  # never opens: no first callback
    client = NeonizeClient(db_of(tmp_path))
    await client.connect()
    await client.disconnect()
    assert not go.crashes and go.stops == []  # Stop would have crashed here
    assert client.stuck
    exits: list[int] = []
    assert exit_if_stuck(client, 0, exit_fn=exits.append) and exits == [0]


async def test_channel_stop_with_a_stuck_neonize_thread_ends_the_process(tmp_path, go):
    go.link(db_of(tmp_path))
    go.store_gate = threading.Event()
    exits: list[int] = []
    channel = channel_for(tmp_path, exits=exits)
    channel.exit_grace_s = 0.05
    await channel.start(RecordingSink())
    await until(lambda: go.neonize_calls == 1)
    await channel.stop()
    assert channel.exit_guard is not None
    await until(lambda: exits == [0])
    assert not go.crashes


# --------------------------------------------------------------------------- 4: login exits


async def test_login_nobody_scans_exits_with_1_after_the_message(tmp_path, go):
    exits: list[int] = []
    out = io.StringIO()
    code = await run_login(data_dir=tmp_path / "data", out=out, link_timeout=0.2,
                           exit_fn=exits.append)
    assert code == 1 and exits == [1]
    assert "no device was linked within" in out.getvalue()
    assert "Scan with the phone" in out.getvalue() and not go.crashes


async def test_login_with_a_pairing_code_never_typed_exits_1(tmp_path, go):
    exits: list[int] = []
    out = io.StringIO()
    code = await run_login(data_dir=tmp_path / "data", phone="+4915123456789", out=out,
                           link_timeout=0.3, exit_fn=exits.append)
    assert code == 1 and exits == [1]
    assert "Pairing code for +4915123456789:  ABCD-EFGH" in out.getvalue()
    # The phone shows the device props' browser, not "Opera" (12).
    assert go.pair_requests == [("4915123456789", "Safari (Linux)")]


async def test_login_scanned_links_and_exits_0(tmp_path, go):
    exits: list[int] = []
    out = io.StringIO()
    login = asyncio.create_task(run_login(data_dir=tmp_path / "data", out=out,
                                          link_timeout=5, exit_fn=exits.append))
    await until(lambda: "Scan with the phone" in out.getvalue())
    go.scan()
    assert await login == 0
    assert "WhatsApp is linked" in out.getvalue() and exits == []
    assert read_linked_devices(db_of(tmp_path))


async def test_login_interrupted_before_linking_exits_130_instead_of_hanging(tmp_path, go):
    exits: list[int] = []
    out = io.StringIO()
    login = asyncio.create_task(run_login(data_dir=tmp_path / "data", out=out,
                                          link_timeout=5, exit_fn=exits.append))
    await until(lambda: "Scan with the phone" in out.getvalue())
    login.cancel()  # what asyncio.run does on Ctrl-C
    with pytest.raises(asyncio.CancelledError):
        await login
    # neonize's thread spins in FetchMe (no device yet) and cannot be stopped: the
    # process ends itself instead of joining it forever.
    assert exits == [130] and not go.crashes and go.stops == []


def test_link_timeout_is_under_the_qr_codes_lifetime():
    assert LOGIN_TIMEOUT_S < 160


# --------------------------------------------------------------------------- 5, 6, 12: inbound


async def test_video_note_is_downloaded_as_a_video(tmp_path, go):
    channel, sink = await started(tmp_path, go)
    try:
        ptv = E.Message(ptvMessage=E.VideoMessage(mimetype="video/mp4", fileLength=100,
                                                  seconds=3))
        (go_client,) = go.clients.values()
        with pytest.raises(Exception, match=NOTHING_DOWNLOADABLE):
            await go_client.download_any(ptv)  # whatsmeow's DownloadAny as it is
        event = message_event(ptv, chat=ANN_JID, sender=ANN_JID, msg_id="PTV1")
        event.Info.MessageSource.Sender.Device = 12  # sent from the sender's linked device
        go.deliver(event)
        await until(lambda: sink.received)
        await channel.wait_idle()
        (media,) = sink.received[0].media
        assert media.media_id is not None, media
        assert sink.received[0].sender_id == "+" + ANN  # the device number dropped
    finally:
        await channel.stop()


async def test_whatsapp_channel_posts_are_skipped(tmp_path, go):
    channel, sink = await started(tmp_path, go, dmPolicy="pairing")
    try:
        for n in range(4):
            go.deliver(message_event(E.Message(conversation=f"post {n}"),
                                     chat="120363025246125486@newsletter",
                                     sender="120363025246125486@newsletter",
                                     msg_id=f"NL{n}"))
        go.deliver(message_event(E.Message(conversation="hi"), chat=ANN_JID,
                                 sender=ANN_JID, msg_id="AFTER"))
        await until(lambda: sink.received)
        await channel.wait_idle()
        assert [i.message_id for i in sink.received] == ["AFTER"] and go.sent == []
    finally:
        await channel.stop()


async def test_broadcast_list_read_receipt_goes_to_the_list(tmp_path, go):
    channel, sink = await started(tmp_path, go)
    try:
        go.deliver(message_event(E.Message(conversation="hi all"),
                                 chat="1700000000@broadcast", sender=ANN_JID, msg_id="BL1"))
        await until(lambda: go.reads)
        assert go.reads == [(("BL1",), "1700000000@broadcast", ANN_JID)]
        assert sink.received[0].address.chat_id == ANN_JID  # answered in the DM
    finally:
        await channel.stop()


# --------------------------------------------------------------------------- 7: presence


async def test_presence_stays_unavailable_and_is_retried_without_a_push_name(tmp_path, go):
    go.push_name_synced = False  # the first run after login
    channel, _ = await started(tmp_path, go)
    try:
        await until(lambda: ("SetForceActiveDeliveryReceipts", None) in go.calls)
        await asyncio.sleep(0.05)
        assert go.presences == []
        go.sync_push_name()
        await until(lambda: go.presences == [b"unavailable"])
        async with channel.typing(DM):
            await asyncio.sleep(0.03)
        assert b"available" not in go.presences  # typing presence is off by default
    finally:
        await channel.stop()


async def test_typing_presence_goes_available_around_a_reply_only(tmp_path, go):
    go.link(db_of(tmp_path))
    channel = WhatsAppChannel(  # the operator's switch: channels.whatsapp.typingPresence
        WhatsAppConfig(allowFrom=("+" + ANN,), typingPresence=True),
        media=MediaStore(tmp_path / "m"), data_dir=tmp_path / "data", typing_interval=0.02)
    await channel.start(RecordingSink())
    try:
        await until(lambda: go.presences == [b"unavailable"])
        async with channel.typing(DM):
            await asyncio.sleep(0.03)
        assert go.presences == [b"unavailable", b"available", b"unavailable"]
    finally:
        await channel.stop()


# --------------------------------------------------------------------------- 9: always Stop


async def test_a_session_that_died_on_its_own_is_still_stopped(tmp_path, go):
    channel, _ = await started(tmp_path, go)
    try:
        (uuid,) = go.clients
        go.die()  # Neonize() returns; Go's client is still registered and connected
        await until(lambda: uuid in go.stops)
        await until(lambda: channel.health().connected and go.neonize_calls == 2)
        assert not go.crashes
    finally:
        await channel.stop()


# --------------------------------------------------------------------------- 10: send errors


@pytest.mark.parametrize(("error", "unsent"), [
    ("failed to get LID for PN 15551234567@s.whatsapp.net: context deadline exceeded", True),
    ("failed to get user info for 15551234567@s.whatsapp.net to fill LID cache: "
     "info query timed out", True),
    ("failed to get LID for PN 15551234567@s.whatsapp.net: no LID found for "
     "15551234567@s.whatsapp.net from server", False),
])
def test_pre_send_lid_errors(error, unsent):
    assert send_error_means_unsent(error) is unsent


async def test_lid_lookup_failure_is_retried_and_no_lid_is_permanent(tmp_path, go):
    channel, _ = await started(tmp_path, go)
    try:
        go.send_errors = ["failed to get user info for 15551234567@s.whatsapp.net to fill "
                          "LID cache: info query timed out"]
        assert len(await channel.send(Outbound(DM, "hello"))) == 1
        go.send_errors = ["failed to get LID for PN 15551234567@s.whatsapp.net: no LID "
                          "found for 15551234567@s.whatsapp.net from server"] * 3
        with pytest.raises(SendError) as info:
            await channel.send(Outbound(DM, "again"))
        assert not info.value.retryable and "cannot deliver" in str(info.value)
        assert len(go.send_errors) == 2  # tried once
    finally:
        await channel.stop()


# --------------------------------------------------------------------------- 11: downloads


async def test_stalled_downloads_are_capped(tmp_path, go):
    go.link(db_of(tmp_path))
    go.download_gate = threading.Event()
    client = NeonizeClient(db_of(tmp_path))
    await client.connect()
    await until(lambda: client._live())
    image = E.Message(imageMessage=E.ImageMessage(mimetype="image/jpeg"))
    waits = [asyncio.create_task(asyncio.wait_for(client.download(image), 0.05))
             for _ in range(4)]
    await asyncio.gather(*waits, return_exceptions=True)  # all abandoned
    assert go.max_downloads_in_flight == NeonizeClient.max_downloads
    # sends still get a worker thread
    assert await client.send_text(build_chat(), "still here")
    go.download_gate.set()
    await client.disconnect()


def build_chat():
    from neonize.utils.jid import build_jid

    return build_jid(ANN, "s.whatsapp.net")


# --------------------------------------------------------------------------- 12: bot tag


def test_bot_tag_is_off_before_neonize_loads():
    code = (
        "import builtins, os\n"
        "seen = []\n"
        "real = builtins.__import__\n"
        "def hook(name, *a, **k):\n"
        "    if name.startswith('neonize') and not seen:\n"
        "        seen.append(os.environ.get('NEONIZE_BOT_TAG'))\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = hook\n"
        "import channels.whatsapp.client\n"
        "print(seen[0])\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "NEONIZE_BOT_TAG"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, cwd=Path(__file__).resolve().parents[2], check=True)
    assert result.stdout.strip() == "off"


# --------------------------------------------------------------------------- progress


async def test_send_skips_delivered_chunks_and_reports_each(tmp_path, go):
    channel, _ = await started(tmp_path, go, textChunkLimit=200)
    try:
        text = " ".join(f"word{n}" for n in range(120))
        first = await channel.send(Outbound(DM, text, plain=True))
        assert len(first) >= 3
        reported: list[tuple[int, str]] = []

        async def sent(index: int, platform_id: str) -> None:
            reported.append((index, platform_id))

        before = len(go.sent)
        again = await channel.send(Outbound(DM, text, plain=True),
                                   SendProgress(start=1, sent=sent))
        assert [i for i, _ in reported] == list(range(1, len(first)))
        assert [pid for _, pid in reported] == again
        texts = [m.conversation or m.extendedTextMessage.text for _, m in go.sent]
        assert texts[before:] == texts[1:len(first)]
    finally:
        await channel.stop()


# --------------------------------------------------------------------------- status


async def test_status_reads_the_running_channel_from_healthz(tmp_path, go):
    db = db_of(tmp_path)
    code, lines = await asyncio.to_thread(whatsapp_status, db, None)
    assert code == 1 and lines[0].startswith("session:  none")

    go.link(db, push_name="Doe, Jane")
    app = web.Application()

    async def healthz(_request):
        return web.json_response({"status": "ok", "channels": {
            "whatsapp": {"connected": True, "detail": "connected as +15550001111"}}})

    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        code, lines = await asyncio.to_thread(whatsapp_status, db,
                                              f"http://127.0.0.1:{port}/healthz")
    finally:
        await runner.cleanup()
    assert code == 0
    assert "name:     Doe, Jane" in lines
    assert lines[-1] == "channel:  connected (connected as +15550001111)"
    code, lines = await asyncio.to_thread(whatsapp_status, db,
                                          f"http://127.0.0.1:{port}/healthz")
    assert lines[-1].startswith("channel:  Palaver is not running")
    assert json.dumps(lines)  # plain strings
    assert go.neonize_calls == 0 and go.clients == {}  # never connected to WhatsApp


# --------------------------------------------------------------------------- store unavailable


class FlakyStoreSink(RecordingSink):
    """The core with a store that refuses ``failures`` accept() calls."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def accept(self, inbound):
        from bridge.ports import StoreUnavailable

        if self.failures:
            self.failures -= 1
            raise StoreUnavailable("database or disk is full")
        return await super().accept(inbound)


async def test_messages_are_held_in_memory_while_the_store_is_unavailable(tmp_path, go,
                                                                          caplog):
    go.link(db_of(tmp_path))
    channel = channel_for(tmp_path)
    channel.held_max = 2
    sink = FlakyStoreSink(failures=3)
    gate = asyncio.Event()
    real_sleep = channel._sleep

    async def sleep(seconds):  # the retry waits until the test lets it go
        if channel._held:
            await gate.wait()
        await real_sleep(seconds)

    channel._sleep = sleep
    await channel.start(sink)
    await until(lambda: channel.health().connected)
    with caplog.at_level("WARNING", logger="channels.whatsapp"):
        for n in range(3):
            go.deliver(message_event(E.Message(conversation=f"m{n}"), chat=ANN_JID,
                                     sender=ANN_JID, msg_id=f"H{n}"))
        await until(lambda: "dropped message H2" in caplog.text)
        assert "2 received message(s) held in memory" in channel.health().detail
        assert caplog.text.count("holding received messages") == 1
        assert go.reads == []  # not confirmed while not stored
        gate.set()
        await until(lambda: len(sink.received) == 2, limit_s=5)
        await until(lambda: "available again; 2 held message(s)" in caplog.text)
    try:
        assert [i.message_id for i in sink.received] == ["H0", "H1"]
        await until(lambda: len(go.reads) == 2)
        assert "held" not in channel.health().detail
    finally:
        await channel.stop()
