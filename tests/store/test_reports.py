"""The read-only reports whose SQL differs most between the backends (grouping, the day
of a timestamp, counts with a filter), on both."""

from __future__ import annotations

from bridge.envelope import ChatAddress, ChatKind, Inbound
from bridge.store.chats import chat_activity, chat_by_session_key
from bridge.store.usage import UsageQueries, UsageRow

DM = ChatAddress("telegram", "default", "42", ChatKind.DIRECT)
GROUP = ChatAddress("telegram", "default", "-100", ChatKind.GROUP)
DAY = 1_794_700_800.0  # 2026-11-15 00:00 UTC


def _row(at: float, key: str, cost: float, tokens: int) -> UsageRow:
    return UsageRow(at=at, session_key=key, channel="telegram", account="default",
                    chat_id="42", chat_kind="direct", thread_id=None, sender_id="42",
                    turn_id=None, purpose="reply", model_ref="p/m", provider="p",
                    input_tokens=tokens, output_tokens=1, reasoning_tokens=0,
                    cached_tokens=0, cache_write_tokens=0, cost_usd=cost, estimated=False)


async def test_usage_report_by_day_and_by_chat(store):
    q = UsageQueries(store)
    await q.record_usage([_row(DAY - 1, "a", 0.5, 10), _row(DAY + 5, "a", 0.25, 20),
                          _row(DAY + 7, "b", 1.0, 30)])
    by_day = await q.report(since=0, by="day")
    assert [(d, t.calls, t.cost_usd) for d, t in by_day] == [
        ("2026-11-14", 1, 0.5), ("2026-11-15", 2, 1.25)]
    by_chat = await q.report(since=0, by="chat")
    assert [(k, t.calls, t.input_tokens) for k, t in by_chat] == [("b", 1, 30), ("a", 2, 30)]
    totals = await q.totals(since=DAY, session_key="a")
    assert (totals.calls, totals.tokens, totals.cost_usd) == (1, 21, 0.25)
    assert await q.provider_spend(since=DAY) == {"p": 1.25}


async def test_chat_activity_lists_each_chat_with_its_newest_address(store):
    await store.record_inbound(Inbound(DM, "42", "d1", 1.0, text="hi", sender_name="Ann"))
    await store.record_inbound(Inbound(GROUP, "7", "g1", 1.0, text="yo", sender_name="Bo",
                                       chat_title="The group"))
    claim = await store.claim_next(str(Inbound(DM, "42", "x", 1.0).session_key))
    await store.finish_turn(claim.turn_id, reply="hello")
    chats = {c.session_key: c for c in await chat_activity(store)}
    dm = chats[str(Inbound(DM, "42", "x", 1.0).session_key)]
    group = chats[str(Inbound(GROUP, "7", "x", 1.0).session_key)]
    assert (dm.messages, dm.pending_in, dm.pending_out, dm.sender_name) == (2, 0, 1, "Ann")
    assert (group.messages, group.pending_in, group.title, group.chat_kind) == (
        1, 1, "The group", "group")
    assert await chat_by_session_key(store, group.session_key) == group
    open_work = await store.open_work(["telegram"])
    assert {w.session_key: (w.inbound, w.outbound) for w in open_work} == {
        dm.session_key: (0, 1), group.session_key: (1, 0)}
    assert await store.open_work([]) == []
    assert (await store.count_by_status())["out:pending"] == 1
