"""Store queries of issue 17: /stop (stop_turn, record_control), group context, previews."""

from __future__ import annotations

import pytest

from bridge.envelope import ChatAddress, ChatKind, Inbound
from bridge.ports import PreviewKey, PreviewMode
from bridge.store import MessageKind, MessageStatus, Store
from bridge.store.records import STOPPED_REASON


@pytest.fixture
async def store(tmp_path):
    s = await Store.open(tmp_path / "p.db")
    yield s
    await s.close()


GROUP = ChatAddress("telegram", "default", "-100", ChatKind.GROUP)


def _dm(mid: str, text: str = "hi") -> Inbound:
    return Inbound(ChatAddress("telegram", "default", "7", ChatKind.DIRECT), "7", mid, 1.0,
                   text=text)


def _group(mid: str, text: str, sender: str = "1", name: str = "Alice",
           mentioned: bool = False) -> Inbound:
    return Inbound(GROUP, sender, mid, 1.0, text=text, sender_name=name, mentioned=mentioned)


async def _by_id(store: Store, key: str) -> dict[int, object]:
    return {m.id: m for m in await store.messages_for(key)}


async def test_a_stopped_turn_is_closed_without_a_reply_and_never_recovered(store):
    await store.record_inbound(_dm("1", "write an essay"))
    key = str(_dm("x").session_key)
    claim = await store.claim_next(key)
    assert await store.stop_turn(claim.turn_id) == 1
    assert await store.stop_turn(claim.turn_id) == 0  # not running any more
    rows = await store.messages_for(key)
    assert [(m.direction.value, m.status, m.reason) for m in rows] == [
        ("in", MessageStatus.FAILED, STOPPED_REASON)]
    turn = await store.turn(claim.turn_id)
    assert turn.status == "failed"
    report = await store.recover(["telegram"])
    assert report.requeued == 0 and await store.claim_next(key) is None
    assert await store.undelivered(key) == []


async def test_control_command_is_answered_at_the_door_once(store):
    await store.record_inbound(_dm("1", "question"))
    key = str(_dm("x").session_key)
    stored = await store.record_control(_dm("2", "/stop"), "Stopped.")
    assert stored is not None
    inbound, reply = stored
    assert (inbound.kind, inbound.status, inbound.turn_id) == (
        MessageKind.COMMAND, MessageStatus.ANSWERED, None)
    assert (reply.kind, reply.status, reply.text) == (
        MessageKind.COMMAND, MessageStatus.PENDING, "Stopped.")
    assert await store.record_control(_dm("2", "/stop"), "Stopped.") is None  # redelivered
    assert [m.text for m in await store.undelivered(key)] == ["Stopped."]
    claim = await store.claim_next(key)  # the queue holds only the question
    assert [m.text for m in claim.messages] == ["question"]
    assert await store.has_inbound("telegram", "default", "2")


async def test_group_context_is_the_newest_unaddressed_texts_since_the_last_answer(store):
    key = str(_group("x", "").session_key)
    await store.record_inbound(_group("1", "before the last answer"),
                               status=MessageStatus.IGNORED, context=True)
    await store.record_inbound(_group("2", "@bot first question", mentioned=True))
    first = await store.claim_next(key)
    await store.finish_turn(first.turn_id, reply="first answer")
    for mid, text, name in (("3", "a", "Alice"), ("4", "b", "Bob"), ("5", "c", "Alice")):
        await store.record_inbound(_group(mid, text, name=name),
                                   status=MessageStatus.IGNORED, context=True)
    await store.record_inbound(_group("6", "no context kept"), status=MessageStatus.IGNORED)
    await store.record_inbound(_group("7", "@bot what do you think?", mentioned=True))
    claim = await store.claim_next(key)
    assert [m.text for m in claim.messages] == ["@bot what do you think?"]
    before = claim.messages[0].id
    context = await store.group_context(key, before_id=before, limit=20)
    assert [(m.sender_name, m.text, m.context) for m in context] == [
        ("Alice", "a", True), ("Bob", "b", True), ("Alice", "c", True)]
    newest_two = await store.group_context(key, before_id=before, limit=2)
    assert [m.text for m in newest_two] == ["b", "c"]
    assert await store.group_context(key, before_id=before, limit=0) == []

    await store.finish_turn(claim.turn_id, reply="second answer",
                            context_ids=[m.id for m in newest_two])
    rows = await _by_id(store, key)
    # Adopted rows belong to the turn (its history shows them); the unused one is blanked.
    assert [rows[m.id].turn_id for m in newest_two] == [claim.turn_id] * 2
    unused = rows[context[0].id]
    assert (unused.text, unused.context, unused.turn_id) == ("", False, None)
    history = await store.history(claim.session_id)
    assert [[(u.text, u.context) for u in h.user] for h in history][-1] == [
        ("b", True), ("c", True), ("@bot what do you think?", False)]
    # inbound_of_turn: what the turn answered, not the context it saw.
    assert [m.text for m in await store.inbound_of_turn(claim.turn_id)] == [
        "@bot what do you think?"]
    # The window starts again after this answer.
    await store.record_inbound(_group("8", "@bot again", mentioned=True))
    third = await store.claim_next(key)
    assert await store.group_context(key, before_id=third.messages[0].id, limit=20) == []


async def test_a_failed_turn_keeps_the_context_window_open(store):
    key = str(_group("x", "").session_key)
    await store.record_inbound(_group("1", "context"), status=MessageStatus.IGNORED,
                               context=True)
    await store.record_inbound(_group("2", "@bot hi", mentioned=True))
    claim = await store.claim_next(key)
    await store.finish_turn(claim.turn_id, reply="sorry", answered=False, reason="x",
                            reply_kind=MessageKind.APOLOGY)
    await store.record_inbound(_group("3", "@bot hi again", mentioned=True))
    retry = await store.claim_next(key)
    assert [m.text for m in await store.group_context(
        key, before_id=retry.messages[0].id, limit=5)] == ["context"]


async def test_previews_are_stored_found_and_stale_once_their_turn_ends(store):
    await store.record_inbound(_dm("1", "question"))
    key = str(_dm("x").session_key)
    claim = await store.claim_next(key)
    address = claim.messages[0].address
    preview = PreviewKey(PreviewMode.EDIT, "7:100")
    await store.save_preview(claim.turn_id, address, preview)
    assert await store.preview_for_turn(claim.turn_id) == preview
    assert await store.stale_previews([("telegram", "default")]) == []  # still running
    out = await store.finish_turn(claim.turn_id, reply="answer")
    assert await store.stale_previews([("telegram", "default")]) == []  # reply pending
    await store.mark_delivered(out.id, ["7:100"])
    stale = await store.stale_previews([("telegram", "default")])
    assert [(s.turn_id, s.address, s.key) for s in stale] == [(claim.turn_id, address, preview)]
    assert await store.stale_previews([("whatsapp", "default")]) == []
    assert await store.stale_previews([]) == []
    await store.drop_preview(claim.turn_id)
    assert await store.preview_for_turn(claim.turn_id) is None
    assert await store.stale_previews([("telegram", "default")]) == []


async def test_a_crash_mid_stream_leaves_a_stale_preview(store):
    await store.record_inbound(_dm("1", "question"))
    key = str(_dm("x").session_key)
    claim = await store.claim_next(key)
    await store.save_preview(claim.turn_id, claim.messages[0].address,
                             PreviewKey(PreviewMode.EDIT, "7:5"))
    await store.recover(["telegram"])  # what start-up does after a crash
    assert [s.turn_id for s in await store.stale_previews([("telegram", "default")])] == [
        claim.turn_id]
