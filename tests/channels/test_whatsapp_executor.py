"""Issue 14 item 11: neonize's Go calls run on threads of Palaver's own (GoCalls).

neonize 0.5 runs every Go function with ``asyncio.to_thread`` (the loop's default
executor, shared with the rest of Palaver) and no Go call has a timeout; the fake
(tests/fakes/neonize_fake.py) goes the same way and its Go functions block the calling
thread, so a stalled call here holds a real thread just as it would for real.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from channels.whatsapp.client import (
    CallTimedOut,
    NeonizeBusy,
    NeonizeClient,
    NotConnected,
    _Dispatcher,
)
from tests.channels.test_whatsapp_fake import until
from tests.channels.test_whatsapp_neonize import build_chat, db_of
from tests.fakes.neonize_fake import install_bounded


@pytest.fixture
async def go(monkeypatch):
    """The fake Go library (as in test_whatsapp_neonize), bounded waits at test scale."""
    fake = install_bounded(monkeypatch)
    yield fake
    fake.release()  # what the process exit does to threads neonize could not stop


async def live_client(tmp_path, go, **attrs) -> NeonizeClient:
    go.link(db_of(tmp_path))
    client = NeonizeClient(db_of(tmp_path))
    for name, value in attrs.items():
        setattr(client, name, value)
    await client.connect()
    await until(client._live)
    return client


def threads_of(go, function: str) -> set[str]:
    return {thread for name, thread in go.threads if name == function}


# --------------------------------------------------------------------------- the seam


def test_installed_neonize_dispatches_every_go_call_with_to_thread():
    """The premise, checked on the installed neonize: NewAClient reaches Go only through
    ``self.__client`` (async_gocode), which runs it on the loop's default executor."""
    from neonize.aioze import client as neonize_client

    dispatch = inspect.getsource(neonize_client.GoCode.__getattr__)
    assert "asyncio.to_thread" in dispatch
    for method, go_name in [("send_message", "SendMessage"), ("download_any", "DownloadAny"),
                            ("send_presence", "SendPresence"), ("mark_read", "MarkRead"),
                            ("send_chat_presence", "SendChatPresence"), ("stop", "Stop"),
                            ("get_me", "GetMe"), ("get_pn_from_lid", "GetPNFromLID"),
                            ("PairPhone", "PairPhone"), ("logout", "Logout"),
                            ("set_force_activate_delivery_receipts",
                             "SetForceActiveDeliveryReceipts"),
                            ("connect_with_proxy", "Neonize")]:
        source = inspect.getsource(getattr(neonize_client.NewAClient, method))
        assert f"self.__client.{go_name}(" in source, method


async def test_a_real_neonize_client_reaches_the_real_go_library_through_palavers_threads(
        tmp_path):
    from neonize.aioze import client as neonize_client

    client = NeonizeClient(tmp_path / "session.db")  # the real NewAClient, no fake
    try:
        dispatcher = client._client._NewAClient__client
        assert isinstance(dispatcher, _Dispatcher)
        assert client._go._library is neonize_client.gocode
        client._go.open_gate()
        # A harmless Go function of the shipped library, through the dispatcher.
        assert (await dispatcher.GetVersion()).decode().startswith("0.5.")
    finally:
        await client.close()


# --------------------------------------------------------------------------- item 11


async def test_stalled_neonize_calls_leave_the_default_executor_free(tmp_path, go):
    # A small VPS: the loop's default executor has two threads.
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(2))
    go.gates["SendMessage"] = stalled = threading.Event()
    client = await live_client(tmp_path, go)
    sends = [asyncio.create_task(client.send_text(build_chat(), f"n{i}")) for i in range(10)]
    try:
        await until(lambda: go.in_flight >= 1)
        # Sends stuck in Go (a network stall): to_thread work and DNS still get threads
        # (on neonize's own path, Neonize() and one send hold both default threads).
        assert await asyncio.wait_for(asyncio.to_thread(lambda: "free"), 5) == "free"
        loop = asyncio.get_running_loop()
        assert await asyncio.wait_for(loop.getaddrinfo("127.0.0.1", 80), 5)
        await until(lambda: go.in_flight == NeonizeClient.workers)
        # At most `workers` neonize calls at once; the rest wait for a thread.
        assert go.in_flight == go.peak_in_flight == NeonizeClient.workers
        assert threads_of(go, "SendMessage") == {f"neonize-{n}" for n in range(1, 5)}
        assert all(t.startswith("neonize-session") for t in threads_of(go, "Neonize"))
        stalled.set()
        ids = await asyncio.wait_for(asyncio.gather(*sends), 5)
        assert len(set(ids)) == 10 and len(go.sent) == 10
        assert go.peak_in_flight == NeonizeClient.workers
    finally:
        stalled.set()
        await client.close()
    assert go.crashes == []


async def test_a_call_that_never_got_a_thread_is_not_sent_and_one_stuck_in_go_may_be(
        tmp_path, go):
    go.gates["SendMessage"] = stalled = threading.Event()
    client = await live_client(tmp_path, go, call_timeout_s=0.3)
    try:
        in_go = [asyncio.create_task(client.send_text(build_chat(), f"stuck {i}"))
                 for i in range(NeonizeClient.workers)]
        await until(lambda: go.in_flight == NeonizeClient.workers)
        with pytest.raises(NeonizeBusy) as busy:  # a NotSent: the channel retries it
            await client.send_text(build_chat(), "queued")
        assert "not sent" in str(busy.value)
        for task in in_go:  # these reached Go: they may have gone out
            with pytest.raises(CallTimedOut):
                await task
        stalled.set()
        await until(lambda: go.in_flight == 0)
        texts = [m.extendedTextMessage.text or m.conversation for _, m in go.sent]
        assert "queued" not in texts and len(texts) == NeonizeClient.workers
    finally:
        stalled.set()
        await client.close()


async def test_every_call_has_a_timeout(tmp_path, go):
    client = await live_client(tmp_path, go, call_timeout_s=0.2)
    calls = {
        "SendPresence": lambda: client.set_presence(False),
        "SetForceActiveDeliveryReceipts": client.force_delivery_receipts,
        "SendChatPresence": lambda: client.chat_presence(build_chat(), composing=True),
        "MarkRead": lambda: client.mark_read(["X"], chat=build_chat(), sender=build_chat()),
        "GetMe": client.get_me,
        "GetPNFromLID": lambda: client.pn_for_lid(build_chat()),
        "PairPhone": lambda: client.pair_phone("15550001111"),
        "Logout": client.logout,
    }
    try:
        for name, call in calls.items():
            go.gates[name] = threading.Event()
            with pytest.raises(CallTimedOut, match=name):
                await call()
            go.gates.pop(name).set()
            await until(lambda: go.in_flight == 0)
    finally:
        await client.close()


async def test_a_stalled_download_times_out_and_keeps_its_slot(tmp_path, go):
    from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as E

    go.download_gate = threading.Event()
    client = await live_client(tmp_path, go, download_timeout_s=0.2)
    image = E.Message(imageMessage=E.ImageMessage(mimetype="image/jpeg"))
    try:
        for _ in range(NeonizeClient.max_downloads):
            with pytest.raises(CallTimedOut):
                await client.download(image)
        # Both slots are still held by the Go calls: the next one never reaches Go.
        with pytest.raises(NeonizeBusy):
            await client.download(image)
        assert go.peak_in_flight == NeonizeClient.max_downloads
        assert await client.send_text(build_chat(), "sends still get a thread")
    finally:
        go.download_gate.set()
        await client.close()
    assert sum(1 for name, _ in go.threads if name == "DownloadAny") == 2


# --------------------------------------------------------------------------- disconnect


async def test_disconnect_lets_calls_in_go_finish_before_stopping_go(tmp_path, go):
    go.gates["SendMessage"] = stalled = threading.Event()
    client = await live_client(tmp_path, go)
    try:
        sending = asyncio.create_task(client.send_text(build_chat(), "in flight"))
        await until(lambda: go.in_flight == 1)
        closing = asyncio.create_task(client.disconnect())
        await asyncio.sleep(0.05)
        assert go.stops == [] and not closing.done()  # Stop(uuid) waits for the send
        with pytest.raises(NotConnected):  # no new call gets through meanwhile
            await client.send_text(build_chat(), "too late")
        stalled.set()
        assert (await sending).startswith("3EB0FAKE")
        await asyncio.wait_for(closing, 2)
        assert [n for n in go.returned if n in ("SendMessage", "Stop")] == ["SendMessage",
                                                                            "Stop"]
    finally:
        stalled.set()
        await client.close()
    assert go.crashes == []


async def test_disconnect_does_not_wait_forever_for_a_stuck_call(tmp_path, go, caplog):
    go.gates["SendMessage"] = stalled = threading.Event()
    client = await live_client(tmp_path, go, call_drain_s=0.05)
    sending = asyncio.create_task(client.send_text(build_chat(), "stuck"))
    try:
        await until(lambda: go.in_flight == 1)
        with caplog.at_level(logging.WARNING, logger="channels.whatsapp"):
            await asyncio.wait_for(client.disconnect(), 2)
        assert "still running at disconnect" in caplog.text
        assert len(go.stops) == 1
    finally:
        stalled.set()
        await asyncio.gather(sending, return_exceptions=True)
        await client.close()
    assert go.crashes == []  # the call was inside Go before Stop: no nil client


async def test_a_call_queued_for_a_thread_when_the_session_stops_never_reaches_go(
        tmp_path, go):
    go.gates["SendMessage"] = stalled = threading.Event()
    client = await live_client(tmp_path, go, call_drain_s=0.05)
    sends = [asyncio.create_task(client.send_text(build_chat(), f"n{i}"))
             for i in range(NeonizeClient.workers + 2)]
    try:
        await until(lambda: go.in_flight == NeonizeClient.workers)
        await client.disconnect()  # Stop while two sends still wait for a thread
        stalled.set()
        results = await asyncio.gather(*sends, return_exceptions=True)
        refused = [r for r in results if isinstance(r, NotConnected)]
        assert len(refused) == 2  # NotSent: retried on the next session
        assert go.crashes == [] and len(go.sent) == NeonizeClient.workers
    finally:
        stalled.set()
        await client.close()


# --------------------------------------------------------------------------- close


async def test_close_ends_the_threads_and_a_call_stuck_in_go_marks_the_client_stuck(
        tmp_path, go):
    go.gates["SendMessage"] = stalled = threading.Event()
    client = await live_client(tmp_path, go, call_drain_s=0.05)
    sending = asyncio.create_task(client.send_text(build_chat(), "stuck"))
    await until(lambda: go.in_flight == 1)
    await client.close()
    # Interpreter exit would join that thread: the process must end deliberately.
    assert client.stuck
    with pytest.raises(NotConnected):
        await client.send_text(build_chat(), "after close")
    stalled.set()
    await asyncio.gather(sending, return_exceptions=True)
    await until(lambda: not client.stuck)
    pool = client._go._pool
    await until(lambda: not any(t.is_alive() for t in pool._threads))


async def test_channel_stop_closes_the_client_and_arms_the_exit_guard_on_a_stuck_call(
        tmp_path, go):
    from tests.channels.test_whatsapp_neonize import channel_for

    go.link(db_of(tmp_path))
    go.gates["SendMessage"] = stalled = threading.Event()
    exits: list[int] = []
    channel = channel_for(tmp_path, exits=exits)
    from tests.channels.test_whatsapp import RecordingSink

    await channel.start(RecordingSink())
    await until(lambda: channel.health().detail.startswith("connected as"))
    client = channel._client
    client.call_drain_s = 0.05
    sending = asyncio.create_task(client.send_text(build_chat(), "stuck"))
    try:
        await until(lambda: go.in_flight == 1)
        await channel.stop()
        assert client._go.closed
        assert channel.exit_guard is not None  # the process ends after exit_grace_s
    finally:
        if channel.exit_guard is not None:
            channel.exit_guard.cancel()
        stalled.set()
        await asyncio.gather(sending, return_exceptions=True)
    assert exits == []



async def test_a_cancel_that_arrives_as_a_call_completes_is_not_swallowed(tmp_path, go):
    """Python 3.11's ``asyncio.wait_for`` returns the result when the cancel and the
    call's end meet (gh-86296): a typing refresher cancelled that way never stopped and
    held its turn forever.  The call's own cancel must reach the caller."""
    client = await live_client(tmp_path, go)
    try:
        async def finishes_as_it_is_cancelled() -> str:
            await asyncio.sleep(0)
            caller.cancel()  # the caller is cancelled while the call is finishing
            return "done"

        async def one_call() -> str:
            return await client._call("SendChatPresence", finishes_as_it_is_cancelled)

        caller = asyncio.create_task(one_call())
        with pytest.raises(asyncio.CancelledError):
            await caller
    finally:
        await client.close()
