"""The conversation core end to end over a real store: order, batching, recovery, failure."""

from __future__ import annotations

import asyncio
import logging

from bridge.conversation import APOLOGY
from bridge.envelope import AcceptStatus
from bridge.models.base import ErrorClass, ModelError
from bridge.ports import SendError
from bridge.store import MessageStatus, Store
from tests.core.helpers import dm, group


async def _statuses(store, key: str) -> list[tuple[str, str]]:
    return [(m.direction, m.status.value) for m in await store.messages_for(key)]


async def test_dm_answered_stored_and_delivered(harness):
    await harness.start()
    msg = dm("hello there")
    assert await harness.say(msg) is AcceptStatus.ACCEPTED
    assert harness.channel.texts() == ["echo: hello there"]
    key = str(msg.session_key)
    rows = await harness.store.messages_for(key)
    assert [(m.direction, m.status) for m in rows] == [
        ("in", MessageStatus.ANSWERED), ("out", MessageStatus.SENT)]
    assert rows[1].delivered and rows[1].model_ref == "local/small"
    assert rows[0].model_ref == "local/small"
    assert harness.channel.typing_count == 1
    # A direct chat's reply does not quote; one session per sender.
    assert harness.channel.sent[0].reply_to_message_id is None


async def test_redelivered_message_is_answered_once(harness):
    await harness.start()
    msg = dm("once", msg_id="same-id")
    assert await harness.say(msg) is AcceptStatus.ACCEPTED
    assert await harness.say(msg) is AcceptStatus.DUPLICATE
    assert len(harness.router.calls) == 1
    assert harness.channel.texts() == ["echo: once"]


async def test_in_order_per_chat_and_parallel_across_chats(harness):
    gate = asyncio.Event()
    order: list[str] = []

    async def behaviour(ref, req):
        text = req.turns[-1].parts[0].text
        order.append(text)
        if text == "a1":
            await gate.wait()  # chat A's first turn blocks
        return "re " + text

    await harness.start(behaviour=behaviour)
    core = harness.core
    await core.accept(dm("a1", sender="A"))
    await asyncio.sleep(0.05)
    await core.accept(dm("a2", sender="A"))
    await core.accept(dm("b1", sender="B"))
    for _ in range(100):  # chat B is answered while chat A is still blocked
        if "re b1" in harness.channel.texts():
            break
        await asyncio.sleep(0.01)
    assert harness.channel.texts() == ["re b1"]
    assert "a2" not in order  # A's next message waits for A's running turn
    gate.set()
    await core.wait_idle()
    a_replies = [t for t in harness.channel.texts() if t.startswith("re a")]
    assert a_replies == ["re a1", "re a2"]


async def test_messages_arriving_mid_turn_are_answered_together(harness):
    gate = asyncio.Event()

    async def behaviour(ref, req):
        if not gate.is_set():
            await gate.wait()
        return f"answered {len(harness.router.calls)}"

    await harness.start(behaviour=behaviour)
    core = harness.core
    await core.accept(dm("first"))
    await asyncio.sleep(0.05)
    await core.accept(dm("second"))
    await core.accept(dm("third"))
    gate.set()
    await core.wait_idle()
    calls = harness.router.chat_calls
    assert len(calls) == 2  # not three: the two mid-turn messages make one turn
    assert "second" in calls[1].last_user and "third" in calls[1].last_user
    assert calls[1].user_texts[0] == "first"  # history: the first turn
    assert harness.channel.texts() == ["answered 1", "answered 2"]
    batch = [e for e in harness.turns() if len(e.message_ids) == 2]
    assert len(batch) == 1


async def test_crash_mid_turn_is_answered_exactly_once_after_restart(harness):
    started = asyncio.Event()

    async def hang(ref, req):
        started.set()
        await asyncio.sleep(3600)

    await harness.start(behaviour=hang)
    msg = dm("survive a crash")
    await harness.core.accept(msg)
    await started.wait()
    key = str(msg.session_key)
    assert await _statuses(harness.store, key) == [("in", "processing")]
    await harness.crash()

    await harness.start()  # default behaviour answers
    await harness.core.wait_idle()
    assert harness.channel.texts() == ["echo: survive a crash"]
    assert await _statuses(harness.store, key) == [("in", "answered"), ("out", "sent")]
    await harness.stop()
    await harness.start()  # another restart: nothing is answered again
    await harness.core.wait_idle()
    assert harness.channel.texts() == [] and harness.router.calls == []


async def test_reply_stored_but_not_delivered_is_sent_once_after_restart(harness):
    await harness.start()
    msg = dm("deliver me")
    key = str(msg.session_key)
    # Simulate a crash between storing the reply and sending it.
    await harness.core.stop(grace=0)
    await harness.store.record_inbound(msg)
    claim = await harness.store.claim_next(key)
    await harness.store.finish_turn(claim.turn_id, reply="stored answer", model_ref="local/small")
    await harness.store.close()

    await harness.start()
    await harness.core.wait_idle()
    assert harness.channel.texts() == ["stored answer"]
    assert harness.router.calls == []  # not generated again
    assert await _statuses(harness.store, key) == [("in", "answered"), ("out", "sent")]
    await harness.stop()
    await harness.start()
    await harness.core.wait_idle()
    assert harness.channel.texts() == []


async def test_every_model_failing_gives_one_apology_and_stores_attempts(harness, caplog):
    def fail(ref, req):
        raise ModelError(ErrorClass.UNREACHABLE, f"{ref} refused")

    await harness.start(behaviour=fail)
    msg = dm("anyone there?")
    with caplog.at_level(logging.INFO):
        await harness.say(msg)
    assert harness.channel.texts() == [APOLOGY]
    assert harness.channel.sent[0].plain
    key = str(msg.session_key)
    rows = await harness.store.messages_for(key)
    assert rows[0].status is MessageStatus.FAILED and "local/small" in rows[0].reason
    assert "backup/m" in rows[0].reason
    turn = await harness.store.turn(rows[0].turn_id)
    assert turn.status == "failed"
    assert [a.model_ref for a in turn.attempts] == ["local/small", "backup/m"]
    assert all(a.error_class is ErrorClass.UNREACHABLE for a in turn.attempts)
    record = next(r for r in caplog.records if r.getMessage().startswith("turn failed"))
    # logMessageText is off: the structured record carries no message text at all.
    assert not hasattr(record, "text_in") and not hasattr(record, "text_out")
    assert record.outcome == "failed" and record.attempts == 2
    assert all("anyone there?" not in str(v) for v in vars(record).values())
    counts = await harness.store.count_by_status()
    assert counts.get("in:processing", 0) == 0


async def _until(predicate, seconds: float = 3.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not predicate():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def test_send_failure_is_recorded_not_lost(harness):
    await harness.start(send_retry_delays=(0.05, 0.05))
    # Permanent (the default kind): failed with the reason, never retried.
    harness.channel.failures = [SendError("chat not found")]
    msg = dm("hi")
    await harness.say(msg)
    rows = await harness.store.messages_for(str(msg.session_key))
    out = rows[-1]
    assert out.direction == "out" and out.status is MessageStatus.FAILED
    assert out.reason == "chat not found" and out.text == "echo: hi"
    assert rows[0].status is MessageStatus.ANSWERED
    await asyncio.sleep(0.15)
    assert harness.channel.attempts == 1 and harness.channel.sent == []
    # Retryable: stays pending with the attempt counted, then goes out on the retry.
    harness.channel.failures = [SendError("not running (connecting)", retryable=True)]
    msg2 = dm("again", sender="43")
    await harness.say(msg2)
    out2 = (await harness.store.messages_for(str(msg2.session_key)))[-1]
    assert out2.status is MessageStatus.PENDING and out2.send_attempts == 1
    assert out2.next_attempt_at is not None and "connecting" in out2.reason
    await _until(lambda: harness.channel.texts() == ["echo: again"])
    await _until(lambda: not harness.core.outbox.held)
    out2 = (await harness.store.messages_for(str(msg2.session_key)))[-1]
    assert out2.status is MessageStatus.SENT and out2.delivered


async def test_retryable_send_backs_off_then_gives_up(harness, caplog):
    delays = (0.05, 0.1, 0.2)
    await harness.start(send_retry_delays=delays)
    harness.channel.failures = [SendError("timed out", retryable=True) for _ in range(10)]
    msg = dm("doomed")
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with caplog.at_level(logging.WARNING, logger="bridge.conversation"):
        await harness.say(msg)
        await _until(lambda: harness.channel.attempts == len(delays) + 1)
        elapsed = loop.time() - t0
        await asyncio.sleep(0.3)
    assert harness.channel.attempts == len(delays) + 1  # then no more
    assert elapsed >= sum(delays) * 0.9  # the backoff was waited
    out = (await harness.store.messages_for(str(msg.session_key)))[-1]
    assert out.status is MessageStatus.FAILED and out.send_attempts == len(delays) + 1
    assert out.reason.startswith("gave up after 4 attempts")
    assert any("giving up on reply" in r.getMessage() for r in caplog.records)


async def test_unknown_send_exception_is_not_retried(harness):
    await harness.start(send_retry_delays=(0.01,))
    harness.channel.failures = [ConnectionResetError("peer reset")]
    msg = dm("maybe sent")
    await harness.say(msg)
    await asyncio.sleep(0.1)
    out = (await harness.store.messages_for(str(msg.session_key)))[-1]
    # It may have gone out: sending again could deliver it twice.
    assert out.status is MessageStatus.FAILED and "ConnectionResetError" in out.reason
    assert harness.channel.attempts == 1


async def test_channel_ready_sends_queued_replies_at_once(harness):
    await harness.start(send_retry_delays=(3600,))
    harness.channel.failures = [SendError("not running", retryable=True)]
    msg = dm("wait for me")
    await harness.say(msg)
    assert harness.channel.sent == []
    harness.core.channel_ready(harness.channel)  # e.g. Telegram connected
    await _until(lambda: harness.channel.texts() == ["echo: wait for me"])
    assert all(s.timer is None for s in harness.core._sessions.values())  # retry timer gone


async def test_channel_ready_from_another_thread(harness):
    import threading

    await harness.start(send_retry_delays=(3600,))
    harness.channel.failures = [SendError("not running", retryable=True)]
    await harness.say(dm("threads"))
    t = threading.Thread(target=harness.core.channel_ready, args=(harness.channel,))
    t.start()
    t.join()
    await _until(lambda: harness.channel.texts() == ["echo: threads"])


async def test_later_replies_wait_behind_a_reply_being_retried(harness):
    await harness.start(send_retry_delays=(0.2,))
    harness.channel.failures = [SendError("flaky", retryable=True)]
    await harness.say(dm("one"))
    await harness.say(dm("two"))  # the channel works again, but "one" goes first
    await _until(lambda: len(harness.channel.sent) == 2)
    assert harness.channel.texts() == ["echo: one", "echo: two"]


async def test_reply_lost_in_a_crash_survives_a_channel_still_connecting(harness):
    """The audit's lost_reply: reply stored, process died; after the restart the channel
    is not connected yet.  The reply must still go out once it is."""
    await harness.start()
    msg = dm("the answer please")
    key = str(msg.session_key)
    await harness.core.stop(grace=0)
    await harness.store.record_inbound(msg)
    claim = await harness.store.claim_next(key)
    await harness.store.finish_turn(claim.turn_id, reply="the answer", model_ref="local/small")
    await harness.store.close()

    from tests.core.helpers import RecordingChannel

    connecting = RecordingChannel()
    connecting.failures = [SendError("telegram channel is not running (connecting)",
                                     retryable=True)]
    await harness.start(channel=connecting, send_retry_delays=(3600,))
    await harness.core.wait_idle()
    assert connecting.sent == [] and connecting.attempts == 1
    rows = await harness.store.messages_for(key)
    assert rows[-1].status is MessageStatus.PENDING
    await harness.stop()
    # Next start (connected now): delivered, once.
    await harness.start()
    await harness.core.wait_idle()
    assert harness.channel.texts() == ["the answer"]
    assert harness.router.calls == []


async def test_group_reply_quotes_the_triggering_message(harness):
    await harness.start()
    msg = group("@bot what time is it", msg_id="g-77", name="Bob")
    await harness.say(msg)
    out = harness.channel.sent[0]
    assert out.reply_to_message_id == "g-77"
    assert out.address.chat_id == "-100"
    # Group messages name their sender for the model.
    assert harness.router.calls[0].last_user == "Bob: @bot what time is it"


async def test_log_line_includes_text_only_when_enabled(harness, caplog):
    from tests.core.helpers import make_config

    harness.config = make_config(harness.tmp_path, logging={"logMessageText": True})
    await harness.start()
    with caplog.at_level(logging.INFO, logger="bridge.conversation"):
        await harness.say(dm("secret words"))
    record = next(r for r in caplog.records if r.getMessage().startswith("turn answered"))
    assert record.model == "local/small" and record.session.startswith("telegram:")
    assert record.text_in == "secret words"
    assert record.text_out == "echo: secret words"


async def test_graceful_stop_lets_running_turn_finish(harness):
    started = asyncio.Event()

    async def slow(ref, req):
        started.set()
        await asyncio.sleep(0.2)
        return "finished"

    await harness.start(behaviour=slow)
    msg = dm("take your time")
    await harness.core.accept(msg)
    await started.wait()
    await harness.core.stop(grace=5)
    assert harness.channel.texts() == ["finished"]
    # Accepted after stop: stored, answered after the next start.
    late = dm("too late")
    assert await harness.core.accept(late) is AcceptStatus.ACCEPTED
    assert harness.channel.texts() == ["finished"]
    await harness.store.close()
    await harness.start()
    await harness.core.wait_idle()
    assert harness.channel.texts() == ["echo: too late"]


async def test_stop_grace_bounds_the_wait(harness):
    async def hang(ref, req):
        await asyncio.sleep(3600)

    await harness.start(behaviour=hang)
    await harness.core.accept(dm("never answered now"))
    await asyncio.sleep(0.05)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await harness.core.stop(grace=0.1)
    assert loop.time() - t0 < 2
    assert harness.core.busy_sessions == 0
    counts = await harness.store.count_by_status()
    assert counts["in:processing"] == 1  # picked up again by the next start


async def test_unexpected_error_in_turn_is_contained(harness, monkeypatch):
    await harness.start()
    import bridge.turn as conv

    async def broken(**kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(conv, "build_request", broken)
    msg = dm("trigger")
    await harness.say(msg)
    assert harness.channel.texts() == [conv.INTERNAL_ERROR]
    rows = await harness.store.messages_for(str(msg.session_key))
    assert rows[0].status is MessageStatus.FAILED
    monkeypatch.undo()
    await harness.say(dm("again"))  # the worker still serves the chat
    assert harness.channel.texts()[-1] == "echo: again"


async def test_message_arriving_during_stop_waits_for_the_next_start(harness):
    gate = asyncio.Event()
    started = asyncio.Event()

    async def slow(ref, req):
        started.set()
        await gate.wait()
        return "finished " + req.turns[-1].parts[0].text

    await harness.start(behaviour=slow)
    first = dm("running")
    await harness.core.accept(first)
    await started.wait()
    stopping = asyncio.create_task(harness.core.stop(grace=5))
    await asyncio.sleep(0.02)
    # Same chat, while the running turn is still finishing: stored, not started now.
    late = dm("arrived during stop")
    assert await harness.core.accept(late) is AcceptStatus.ACCEPTED
    gate.set()
    await stopping
    assert harness.channel.texts() == ["finished running"]
    assert len(harness.router.calls) == 1
    row = await harness.store.inbound_by_platform_id("telegram", "default", late.message_id)
    assert row.status is MessageStatus.RECEIVED
    await harness.store.close()
    await harness.start()
    await harness.core.wait_idle()
    assert harness.channel.texts() == ["echo: arrived during stop"]


async def test_turn_that_cannot_be_recorded_is_requeued_and_answered(harness, monkeypatch):
    from bridge.store.db import StoreUnavailableError

    await harness.start(worker_restart_s=0.05)
    real = harness.store.finish_turn
    fails = [2]  # the reply, then the apology: both writes fail once

    async def flaky(*args, **kwargs):
        if fails[0]:
            fails[0] -= 1
            raise StoreUnavailableError("I/O error")
        return await real(*args, **kwargs)

    monkeypatch.setattr(harness.store, "finish_turn", flaky)
    msg = dm("keep me")
    await harness.core.accept(msg)
    await _until(lambda: harness.channel.texts() == ["echo: keep me"])
    await harness.core.wait_idle()
    assert harness.core.pending_count() == 0
    counts = await harness.store.count_by_status()
    assert counts.get("in:processing", 0) == 0 and counts.get("in:received", 0) == 0
    assert counts["in:answered"] == 1
    assert len(harness.router.calls) == 2  # asked again after the requeue


async def test_store_error_after_the_reply_is_stored_does_not_answer_twice(harness,
                                                                          monkeypatch):
    from bridge.store.db import StoreUnavailableError

    await harness.start()
    real = harness.store.mark_delivered
    fails = [1]

    async def flaky(*args, **kwargs):
        if fails[0]:
            fails[0] -= 1
            raise StoreUnavailableError("database locked")
        return await real(*args, **kwargs)

    monkeypatch.setattr(harness.store, "mark_delivered", flaky)
    msg = dm("once only")
    await harness.say(msg)
    assert harness.channel.texts() == ["echo: once only"]  # no apology after it
    rows = await harness.store.messages_for(str(msg.session_key))
    assert rows[0].status is MessageStatus.ANSWERED
    assert harness.core.pending_count() == 0
    await harness.say(dm("next"))
    assert harness.channel.texts()[-1] == "echo: next"
    assert harness.core.pending_count() == 0


async def test_worker_stopped_by_a_store_error_restarts(harness, monkeypatch):
    from bridge.store.db import StoreUnavailableError

    await harness.start(worker_restart_s=0.05)
    real = harness.store.claim_next
    fails = [1]

    async def flaky(*args, **kwargs):
        if fails[0]:
            fails[0] -= 1
            raise StoreUnavailableError("database locked")
        return await real(*args, **kwargs)

    monkeypatch.setattr(harness.store, "claim_next", flaky)
    await harness.core.accept(dm("still answered"))
    await _until(lambda: harness.channel.texts() == ["echo: still answered"])
    await harness.core.wait_idle()
    assert harness.core.pending_count() == 0


async def test_concurrent_model_turns_are_limited(harness):
    from tests.core.helpers import make_config

    harness.config = make_config(harness.tmp_path, agents__defaults__maxConcurrentTurns=2)
    in_flight = [0]
    peak = [0]

    async def slow(ref, req):
        in_flight[0] += 1
        peak[0] = max(peak[0], in_flight[0])
        await asyncio.sleep(0.03)
        in_flight[0] -= 1
        return "ok"

    await harness.start(behaviour=slow)
    for i in range(8):
        await harness.core.accept(dm(f"chat {i}", sender=f"s{i}"))
    # Commands are not limited: answered while the model turns wait.
    await harness.core.accept(dm("/help", sender="cmd"))
    await harness.core.wait_idle()
    assert peak[0] == 2
    texts = harness.channel.texts()
    assert len(texts) == 9
    assert [i for i, t in enumerate(texts) if t != "ok"][0] <= 2  # /help did not queue

    harness.config = make_config(harness.tmp_path, agents__defaults__maxConcurrentTurns=0)
    peak[0] = 0
    for i in range(6):
        await harness.core.accept(dm(f"more {i}", sender=f"t{i}"))
    await harness.core.wait_idle()
    assert peak[0] == 6  # 0: unlimited


def _count_claims(monkeypatch, store) -> list[str]:
    calls: list[str] = []
    claim_next = store.claim_next

    async def counting(key, **kwargs):
        calls.append(key)
        return await claim_next(key, **kwargs)

    monkeypatch.setattr(store, "claim_next", counting)
    return calls


async def test_no_empty_claim_after_a_turn_when_nothing_arrived(harness, monkeypatch):
    """One claim per turn: the worker stops without asking the store again when no
    message of its session was accepted during the turn."""
    await harness.start()
    calls = _count_claims(monkeypatch, harness.store)
    for text in ("one", "two", "three"):
        await harness.say(dm(text))
    assert harness.channel.texts() == ["echo: one", "echo: two", "echo: three"]
    assert len(calls) == 3


async def test_work_left_behind_a_claim_is_still_answered(harness, monkeypatch):
    """Messages waiting at start (chat, command, chat: three claims) are all answered
    though nothing is accepted meanwhile: a claim that left messages behind is followed
    by another."""
    await harness.start()
    await harness.stop()
    store = await Store.open(harness.tmp_path / "palaver.db")
    for text in ("first", "/help", "second"):
        await store.record_inbound(dm(text), status=MessageStatus.RECEIVED)
    await store.close()
    harness.core = harness.store = None
    await harness.start()
    await harness.core.wait_idle()
    texts = harness.channel.texts()
    assert texts[0] == "echo: first" and texts[-1] == "echo: second" and len(texts) == 3
