"""The conversation core end to end over a real store: order, batching, recovery, failure."""

from __future__ import annotations

import asyncio
import logging

from bridge.conversation import APOLOGY
from bridge.envelope import AcceptStatus
from bridge.models.base import ErrorClass, ModelError
from bridge.store import MessageStatus
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
    assert "anyone there?" not in caplog.text  # logMessageText is off
    assert any("turn failed" in r.getMessage() for r in caplog.records)
    counts = await harness.store.count_by_status()
    assert counts.get("in:processing", 0) == 0


async def test_send_failure_is_recorded_not_lost(harness):
    await harness.start()
    harness.channel.fail_sends = 1
    msg = dm("hi")
    await harness.say(msg)
    rows = await harness.store.messages_for(str(msg.session_key))
    out = rows[-1]
    assert out.direction == "out" and out.status is MessageStatus.FAILED
    assert out.reason == "chat not found" and out.text == "echo: hi"
    assert rows[0].status is MessageStatus.ANSWERED


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
    import bridge.conversation as conv

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
