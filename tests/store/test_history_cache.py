"""The history read: answered turns are cached, only new rows are read, and a long
history is read newest first only as far as the token budget goes."""

from __future__ import annotations

from bridge.envelope import ChatAddress, ChatKind, Inbound, Quoted
from bridge.store.messages import TurnCache
from bridge.store.records import HistoryTurn

# ``store`` (tests/conftest.py): each test on SQLite, then on PostgreSQL.


def _in(mid: str, text: str = "hi", sender: str = "1", quoted: Quoted | None = None
        ) -> Inbound:
    return Inbound(ChatAddress("telegram", "default", sender, ChatKind.DIRECT), sender, mid,
                   1.0, text=text, quoted=quoted)


KEY = str(_in("x").session_key)


async def _turns(store, n: int, start: int = 0, *, batch: int = 1) -> None:
    for i in range(start, start + n):
        for j in range(batch):
            await store.record_inbound(_in(f"m{i}-{j}", text=f"t{i:04d}/{j} " + "w" * 36))
        claim = await store.claim_next(KEY)
        await store.finish_turn(claim.turn_id, reply=f"r{i} " + "r" * 37)


async def test_only_the_rows_of_new_turns_are_read(store, open_store):
    await _turns(store, 20, batch=2)
    session = await store.active_session(KEY)
    cache = store.turn_cache
    _s, first = await store.session_with_history(session.id, token_budget=100_000)
    assert len(first.turns) == 20 and cache.rows_read == 20 * 3  # 2 in + 1 reply each
    _s, again = await store.session_with_history(session.id, token_budget=100_000)
    assert again == first and cache.rows_read == 60  # nothing read again
    await _turns(store, 1, start=20, batch=2)
    _s, grown = await store.session_with_history(session.id, token_budget=100_000)
    assert cache.rows_read == 63 and grown.turns[:-1] == first.turns
    # What a store with nothing cached reads is the same, budgets and all.
    other = await open_store()
    try:
        for budget in (None, 40, 300, 100_000):
            _s, cold = await other.session_with_history(session.id, token_budget=budget)
            _s, warm = await store.session_with_history(session.id, token_budget=budget)
            assert cold == warm, budget
        through = grown.turns[10].turn_id
        assert (await other.history(session.id, after_turn=grown.turns[2].turn_id,
                                    through_turn=through, token_budget=120)
                == await store.history(session.id, after_turn=grown.turns[2].turn_id,
                                       through_turn=through, token_budget=120))
    finally:
        await other.close()


async def test_a_long_history_is_read_only_as_far_as_the_budget(store, open_store):
    await _turns(store, 600)
    session = await store.active_session(KEY)

    async def cold_read(budget: int):
        store = await open_store()  # nothing cached
        statements: list[str] = []
        store.on_statement = statements.append
        try:
            _s, window = await store.session_with_history(session.id, token_budget=budget)
        finally:
            store.on_statement = None
            await store.close()
        pages = len([s for s in statements if s.startswith("SELECT id FROM turns")])
        return window, store.turn_cache.rows_read, pages

    # ~31 tokens a turn: 10 turns read (the 10th crosses the budget), 590 counted.
    window, rows, pages = await cold_read(300)
    assert len(window.turns) == 10 and window.left_out == 590
    # One page of ids (64), the rows of those turns only, then a count: not all 1200.
    assert (rows, pages) == (64 * 2, 1)
    # ~97 turns: a second, bigger page of ids, but rows only for its first 64 turns.
    window, rows, pages = await cold_read(3000)
    assert 64 < len(window.turns) < 128 and window.left_out == 600 - len(window.turns)
    assert (rows, pages) == (128 * 2, 2)
    window, rows, pages = await cold_read(10**6)  # everything: 64 + 256 + 1024 ids
    assert len(window.turns) == 600 and window.left_out == 0
    assert (rows, pages) == (1200, 3)


async def test_a_new_session_starts_with_no_history(store):
    await _turns(store, 5)
    old = await store.active_session(KEY)
    _s, window = await store.session_with_history(old.id)
    assert len(window.turns) == 5
    assert await store.end_session(KEY)
    await _turns(store, 2, start=5)
    new = await store.active_session(KEY)
    assert new.id != old.id
    _s, window = await store.session_with_history(new.id)
    assert [t.user[0].text[:5] for t in window.turns] == ["t0005", "t0006"]


async def test_a_summary_hides_the_turns_it_replaces(store):
    await _turns(store, 6)
    session = await store.active_session(KEY)
    _s, window = await store.session_with_history(session.id)
    await store.save_summary(session.id, "S", window.turns[3].turn_id)
    session, window = await store.session_with_history(session.id)
    assert session.summary == "S"
    assert [t.user[0].text[:5] for t in window.turns] == ["t0004", "t0005"]


def _turn(i: int, size: int = 10, quoted: str | None = None) -> HistoryTurn:
    from bridge.store.records import MessageKind, MessageStatus, StoredMessage

    msg = StoredMessage(
        id=i, direction="in", role="user", kind=MessageKind.CHAT, session_key="k",
        session_id=1, turn_id=i, address=ChatAddress("telegram", "default", "1",
                                                     ChatKind.DIRECT),
        platform_message_id=str(i), sender_id="1", sender_name=None, mentioned=False,
        text="u" * size, media=(), quoted=Quoted("q", text=quoted) if quoted else None,
        status=MessageStatus.ANSWERED, reason=None, model_ref=None,
        reply_to_message_id=None, delivered=True, created_at=0.0)
    return HistoryTurn(i, (msg,), "a" * size)


def test_turn_cache_is_an_lru_bounded_by_turns_and_characters():
    cache = TurnCache(max_turns=3, max_chars=100_000)
    for i in range(5):
        cache.put(_turn(i))
    assert len(cache) == 3 and cache.get(1) is None and cache.get(2) is not None
    cache.put(_turn(5))  # 2 was used last: 3 goes
    assert cache.get(3) is None and cache.get(2) is not None
    small = TurnCache(max_turns=100, max_chars=8_000)
    for i in range(10):
        small.put(_turn(i, size=600))  # ~1600 characters each
    assert len(small) == 5 and small.get(9) is not None and small.get(4) is None
    small.put(_turn(99, size=3000))  # more than a quarter of the cache: not kept
    assert small.get(99) is None


def test_turn_cache_costs_are_kept_per_estimator():
    cache = TurnCache()
    turn = _turn(1, size=40, quoted="q" * 40)
    cache.put(turn)
    calls: list[str] = []

    def count(text: str) -> int:
        calls.append(text)
        return len(text)

    assert cache.cost(turn, count) == 8 + 40 + 40 + 40
    assert cache.cost(turn, count) == 128 and len(calls) == 3  # computed once
    assert cache.cost(turn, lambda text: 1) == 8 + 3  # another estimator, its own value
    assert cache.cost(_turn(2), count) == 8 + 20  # not cached: computed, not kept
    assert cache.get(2) is None
