"""The message queue: idempotent inbound, claiming batches, recovery, settings, pairing."""

from __future__ import annotations

import pytest

from bridge.envelope import ChatAddress, ChatKind, Inbound, MediaKind, MediaRef, Quoted
from bridge.models.base import Attempt, ErrorClass, Usage
from bridge.store import MessageKind, MessageStatus, Store

# ``store`` (tests/conftest.py): each test on SQLite, then on PostgreSQL.


@pytest.fixture
async def sqlite_store(tmp_path):
    s = await Store.open(tmp_path / "p.db")
    yield s
    await s.close()


def _in(mid: str, text: str = "hi", sender: str = "1", channel: str = "telegram") -> Inbound:
    return Inbound(ChatAddress(channel, "default", sender, ChatKind.DIRECT), sender, mid, 1.0,
                   text=text)


async def test_inbound_is_idempotent_per_channel_account_message(store):
    assert await store.record_inbound(_in("a")) is not None
    assert await store.record_inbound(_in("a", text="changed")) is None
    assert await store.record_inbound(_in("a", channel="whatsapp")) is not None  # other channel
    assert await store.has_inbound("telegram", "default", "a")
    rows = await store.messages_for(str(_in("a").session_key))
    assert [r.text for r in rows] == ["hi"]


async def test_media_and_quote_round_trip(store):
    ref = MediaRef(MediaKind.IMAGE, media_id="ab" * 32, mime="image/png", width=3, height=4)
    quoted = Quoted("q", sender_name="Z", text="earlier", media=(ref,), from_bot=True)
    inbound = Inbound(ChatAddress("telegram", "default", "1", ChatKind.DIRECT), "1", "m", 1.0,
                      text="look", media=(ref,), quoted=quoted)
    row_id = await store.record_inbound(inbound)
    msg = await store.message(row_id)
    assert msg.media == (ref,) and msg.quoted == quoted


async def test_claim_batches_until_a_command(store):
    for mid, text in (("1", "a"), ("2", "b"), ("3", "/status"), ("4", "c")):
        await store.record_inbound(_in(mid, text))
    key = str(_in("x").session_key)

    def is_cmd(t):
        return t.startswith("/")
    first = await store.claim_next(key, is_command=is_cmd)
    assert [m.text for m in first.messages] == ["a", "b"] and first.kind is MessageKind.CHAT
    assert await store.claim_next(key, is_command=is_cmd) is not None  # the command alone
    third = await store.claim_next(key, is_command=is_cmd)
    assert [m.text for m in third.messages] == ["c"]
    assert await store.claim_next(key, is_command=is_cmd) is None
    assert first.session_id == third.session_id


async def test_finish_turn_and_history(store):
    await store.record_inbound(_in("1", "question"))
    key = str(_in("x").session_key)
    claim = await store.claim_next(key)
    out = await store.finish_turn(
        claim.turn_id, reply="answer", model_ref="p/m", usage=Usage(5, 7),
        attempts=(Attempt("p/x", ErrorClass.TIMEOUT, 1.5, "slow"), Attempt("p/m", None, 0.2)))
    assert out.status is MessageStatus.PENDING and not out.delivered
    await store.mark_delivered(out.id, ["900", "901"])
    history = await store.history(claim.session_id)
    assert [(h.user[0].text, h.assistant) for h in history] == [("question", "answer")]
    turn = await store.last_turn(key)
    assert turn.model_ref == "p/m" and turn.attempts[0].error_class is ErrorClass.TIMEOUT
    assert (await store.message(out.id)).delivered


async def test_recover_only_touches_given_channels(store):
    await store.record_inbound(_in("t", channel="telegram"))
    await store.record_inbound(_in("w", channel="whatsapp"))
    for channel in ("telegram", "whatsapp"):
        await store.claim_next(str(_in("x", channel=channel).session_key))
    report = await store.recover(["telegram"])
    assert report.requeued == 1 and report.interrupted_turns == 1
    counts = await store.count_by_status()
    assert counts == {"in:received": 1, "in:processing": 1}
    assert await store.session_keys_with_work(["telegram"]) == [str(_in("x").session_key)]


async def test_end_session_and_summary(store):
    await store.record_inbound(_in("1"))
    key = str(_in("x").session_key)
    claim = await store.claim_next(key)
    await store.save_summary(claim.session_id, "sum", claim.turn_id)
    assert (await store.active_session(key)).summary == "sum"
    assert await store.end_session(key)
    assert await store.active_session(key) is None
    await store.record_inbound(_in("2"))
    claim2 = await store.claim_next(key)
    assert claim2.session_id != claim.session_id


async def test_another_process_clearing_a_chat_setting_applies_after_the_cache_age(
        store, open_store, monkeypatch):
    # `palaver chats reset` runs in another process while Palaver serves the chat.
    import bridge.store.settings as settings

    await store.set_chat_setting("k", "model", "p/m")
    assert await store.chat_setting("k", "model") == "p/m"  # cached now
    other = await open_store()
    try:
        await other.set_chat_setting("k", "model", None)
    finally:
        await other.close()
    monkeypatch.setattr(settings, "SETTINGS_CACHE_SECONDS", 3600.0)
    assert await store.chat_setting("k", "model") == "p/m"  # still within the cache age
    monkeypatch.setattr(settings, "SETTINGS_CACHE_SECONDS", 0.0)
    assert await store.chat_setting("k", "model") is None  # past it: read again


async def test_chat_settings_and_kv(store):
    await store.set_chat_setting("k", "model", "p/m")
    assert await store.chat_setting("k", "model") == "p/m"
    await store.set_chat_setting("k", "model", None)
    assert await store.chat_setting("k", "model") is None
    await store.kv_set("whatsapp.lid", "123@lid", "+4912345")
    assert await store.kv_get("whatsapp.lid", "123@lid") == "+4912345"
    assert await store.kv_items("whatsapp.lid") == {"123@lid": "+4912345"}
    await store.kv_set("whatsapp.lid", "123@lid", None)
    assert await store.kv_get("whatsapp.lid", "123@lid") is None


async def test_pairing_requests(store):
    codes = iter(["AAAAAAAA", "AAAAAAAA", "BBBBBBBB"])
    req, created = await store.pairing_code_for(
        "telegram", "default", "1", "One", new_code=lambda: next(codes), ttl_s=60,
        max_pending=3, now=0)
    assert created and req.code == "AAAAAAAA"
    again, created = await store.pairing_code_for(
        "telegram", "default", "1", "One", new_code=lambda: "ZZZZZZZZ", ttl_s=60,
        max_pending=3, now=10)
    assert not created and again.code == "AAAAAAAA"
    other, _ = await store.pairing_code_for(
        "telegram", "default", "2", None, new_code=lambda: next(codes), ttl_s=60,
        max_pending=3, now=10)
    assert other.code == "BBBBBBBB"  # a code in use is never handed out twice
    assert await store.approve_pairing("whatsapp", "AAAAAAAA", now=20) is None  # channel
    assert (await store.approve_pairing("telegram", "aaaaaaaa", now=20)).sender_id == "1"
    assert await store.is_approved("telegram", ["x", "1"])
    assert not await store.is_approved("whatsapp", ["1"])
    assert [p.sender_id for p in await store.pending_pairings(now=20)] == ["2"]


async def test_inbound_commit_is_durable_others_normal(sqlite_store):
    # SQLite only: PostgreSQL commits every transaction durably (synchronous_commit on).
    store = sqlite_store
    statements: list[str] = []
    raw = store._conn._conn
    await store._conn._execute(raw.set_trace_callback, statements.append)
    try:
        await store.record_inbound(_in("d1"))
        inbound = list(statements)
        statements.clear()
        await store.claim_next(str(_in("x").session_key))
    finally:
        await store._conn._execute(raw.set_trace_callback, None)
    pragmas = [s for s in inbound if s.startswith("PRAGMA synchronous")]
    assert pragmas == ["PRAGMA synchronous = FULL", "PRAGMA synchronous = NORMAL"]
    assert inbound.index("COMMIT") < inbound.index("PRAGMA synchronous = NORMAL")
    assert not any(s.startswith("PRAGMA") for s in statements)  # a claim: NORMAL


async def test_history_window_reads_newest_first_until_the_budget(store):
    key = str(_in("x").session_key)
    for i in range(150):
        await store.record_inbound(_in(f"h{i}", text=f"t{i:03d} " + "w" * 36))  # ~10 tokens
        claim = await store.claim_next(key)
        await store.finish_turn(claim.turn_id, reply="r" * 40)
    session = await store.active_session(key)
    _s, everything = await store.session_with_history(session.id)
    assert len(everything.turns) == 150 and everything.left_out == 0  # no 200-style cap
    _s, window = await store.session_with_history(session.id, token_budget=300)
    texts = [t.user[0].text[:4] for t in window.turns]
    # 8 + 11 + 11 tokens a turn: the 10 newest fill 300, the 11th crosses it (kept so
    # the prompt builder sees an omission); the 139 older ones are counted, not read.
    assert texts == [f"t{i:03d}" for i in range(139, 150)]
    assert window.left_out == 139
    # Compaction reads what it summarises, bounded the same way.
    older = await store.history(session.id, through_turn=window.turns[0].turn_id - 1,
                                token_budget=60)
    assert [t.user[0].text[:4] for t in older] == ["t136", "t137", "t138"]


async def test_send_retry_requeue_and_open_work(store):
    await store.record_inbound(_in("q1", text="one"))
    await store.record_inbound(_in("w1", channel="whatsapp"))
    key = str(_in("x").session_key)
    claim = await store.claim_next(key)
    out = await store.finish_turn(claim.turn_id, reply="answer")
    assert await store.mark_send_retry(out.id, "connecting", next_attempt_at=123.0) == 1
    assert await store.mark_send_retry(out.id, "still", next_attempt_at=456.0) == 2
    msg = await store.message(out.id)
    assert (msg.status, msg.send_attempts, msg.next_attempt_at, msg.reason) == (
        MessageStatus.PENDING, 2, 456.0, "still")
    assert [m.id for m in await store.undelivered(key)] == [out.id]
    work = {w.session_key: w for w in await store.open_work(["telegram"])}
    assert list(work) == [key] and (work[key].inbound, work[key].outbound) == (0, 1)
    assert work[key].address.channel == "telegram"
    await store.mark_send_failed(out.id, "gave up")
    assert (await store.message(out.id)).send_attempts == 3
    assert await store.undelivered(key) == []
    # A turn that cannot be finished goes back to the queue.
    await store.record_inbound(_in("q2", text="two"))
    claim2 = await store.claim_next(key)
    assert await store.requeue_turn(claim2.turn_id) == 1
    assert (await store.turn(claim2.turn_id)).status == "interrupted"
    again = await store.claim_next(key)
    assert [m.text for m in again.messages] == ["two"]
    # Recovery can be limited to some sessions of a channel.
    report = await store.recover(["telegram"], session_keys=["telegram:default:direct:9"])
    assert report.requeued == 0
    report = await store.recover(["telegram"], session_keys=[key])
    assert report.requeued == 1


async def test_a_nul_character_does_not_lose_the_message(store):
    """SQLite keeps a NUL in text; PostgreSQL cannot, so its driver writes U+FFFD there
    (the rest of the text is kept; the write never fails over it)."""
    row_id = await store.record_inbound(_in("nul", text="a\x00b"))
    stored = await store.message(row_id)
    assert stored.text == ("a\ufffdb" if store.dialect == "postgresql" else "a\x00b")
