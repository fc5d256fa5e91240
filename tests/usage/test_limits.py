"""The limit gate: each kind at each level, most specific wins, per chat and per sender,
the notice-once rule, owners, commands, restarts and races (one transaction)."""

from __future__ import annotations

import asyncio

import pytest

from bridge.store import Store
from bridge.store.usage import UsageQueries, UsageRow
from bridge.usage.limits import LimitGate, limits_for
from bridge.usage.periods import day_start
from tests.core.helpers import dm, group, make_config

# Midday UTC on some day in the middle of a month, so no period turns during a test.
NOON = day_start(1_794_700_000.0) + 12 * 3600  # 2026-11-14 12:00 UTC

OPEN = {"dmPolicy": "open", "allowFrom": ["*"], "groupPolicy": "open"}


class Clock:
    def __init__(self, now: float = NOON) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def store(tmp_path):
    s = await Store.open(tmp_path / "palaver.db")
    yield s
    await s.close()


def _config(tmp_path, level: str, limits: dict):
    """``limits`` set at one level; the message of :func:`_message` is in its scope."""
    telegram: dict = dict(OPEN)
    defaults = {}
    if level == "default":
        defaults["limits"] = limits
    elif level == "channel":
        telegram["limits"] = limits
    elif level == "group":
        telegram["groups"] = {"-100": {"limits": limits}}
    elif level == "topic":
        telegram["groups"] = {"-100": {"topics": {"9": {"limits": limits}}}}
    elif level == "direct":
        telegram["direct"] = {"42": {"limits": limits}}
    sections = {"channels": {"telegram": telegram}}
    if defaults:
        sections["agents__defaults__limits"] = defaults["limits"]
    return make_config(tmp_path, **sections)


def _message(level: str, n: int, *, sender: str = "42"):
    if level in ("group", "topic"):
        return group(f"hi {n}", chat="-100", sender=sender,
                     thread="9" if level == "topic" else None)
    return dm(f"hi {n}", sender=sender)


def _usage(inbound, *, tokens: int = 0, usd: float = 0.0, at: float = NOON) -> UsageRow:
    a = inbound.address
    return UsageRow(at=at, session_key=str(inbound.session_key), channel=a.channel,
                    account=a.account, chat_id=a.chat_id, chat_kind=a.chat_kind.value,
                    thread_id=a.thread_id, sender_id=inbound.sender_id, turn_id=None,
                    purpose="reply", model_ref="backup/m", provider="backup",
                    input_tokens=tokens, output_tokens=0, reasoning_tokens=0,
                    cached_tokens=0, cache_write_tokens=0, cost_usd=usd, estimated=False)


LEVELS = ["default", "channel", "group", "topic", "direct"]


# ------------------------------------------------------------------ each kind, each level


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("kind,window", [("messagesPerMinute", 60), ("messagesPerHour", 3600)])
async def test_message_limits_at_each_level(tmp_path, store, level, kind, window):
    config = _config(tmp_path, level, {kind: 3})
    clock = Clock()
    gate = LimitGate(store, lambda: config, clock=clock)
    verdicts = []
    for n in range(5):
        verdicts.append(await gate.admit(_message(level, n)))
        clock.now += 1
    assert [v.admitted for v in verdicts] == [True, True, True, False, False]
    refused = verdicts[3]
    assert refused.limit == kind
    # Free again when the first admitted message leaves the window.
    assert refused.resets_at == pytest.approx(NOON + window)
    clock.now = NOON + window + 0.5
    assert (await gate.admit(_message(level, 9))).admitted


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("kind,cap,row", [
    ("tokensPerDay", 1000, {"tokens": 1000}),
    ("costPerDayUsd", 0.5, {"usd": 0.5}),
    ("costPerMonthUsd", 2.0, {"usd": 2.0}),
])
async def test_token_and_cost_limits_at_each_level(tmp_path, store, level, kind, cap, row):
    config = _config(tmp_path, level, {kind: cap})
    gate = LimitGate(store, lambda: config, clock=Clock())
    first = _message(level, 0)
    assert (await gate.admit(first)).admitted
    await UsageQueries(store).record_usage([_usage(first, **{
        k: v / 2 if isinstance(v, float) else v // 2 for k, v in row.items()})])
    assert (await gate.admit(_message(level, 1))).admitted  # half used
    await UsageQueries(store).record_usage([_usage(first, **{
        k: v / 2 if isinstance(v, float) else v // 2 for k, v in row.items()})])
    verdict = await gate.admit(_message(level, 2))
    assert not verdict.admitted and verdict.limit == kind


async def test_daily_caps_reset_at_midnight_monthly_at_the_first(tmp_path, store):
    config = _config(tmp_path, "default", {"costPerDayUsd": 1.0, "costPerMonthUsd": 5.0})
    clock = Clock()
    gate = LimitGate(store, lambda: config, clock=clock)
    first = dm("a")
    await UsageQueries(store).record_usage([_usage(first, usd=1.0)])
    verdict = await gate.admit(dm("b"))
    assert verdict.limit == "costPerDayUsd"
    assert verdict.resets_at == day_start(NOON) + 86400
    assert "I'll answer again in 12 h (00:00 UTC)" in (verdict.notice or "")
    clock.now = day_start(NOON) + 86400 + 1  # tomorrow
    assert (await gate.admit(dm("c"))).admitted
    await UsageQueries(store).record_usage([_usage(first, usd=4.0, at=clock.now)])
    verdict = await gate.admit(dm("d"))
    assert verdict.limit == "costPerMonthUsd" and "on " in (verdict.notice or "")


async def test_the_most_specific_level_wins_whole(tmp_path, store):
    config = make_config(tmp_path, agents__defaults__limits={"messagesPerHour": 1},
                         channels={"telegram": {**OPEN, "limits": {"messagesPerHour": 2},
                                                "groups": {"-100": {"limits": {
                                                    "messagesPerHour": 4}}}}})
    gate = LimitGate(store, lambda: config, clock=Clock())
    in_group = [await gate.admit(group(f"g{n}", chat="-100", sender=str(n))) for n in range(5)]
    assert [v.admitted for v in in_group] == [True] * 4 + [False]
    direct = [await gate.admit(dm(f"d{n}", sender="42")) for n in range(3)]
    assert [v.admitted for v in direct] == [True, True, False]  # the channel's 2
    assert limits_for(config, group("x", chat="-200").address, "1").messagesPerHour == 2


async def test_per_sender_limits_leave_the_others_alone(tmp_path, store):
    config = _config(tmp_path, "group", {"perSender": {"messagesPerHour": 2}})
    gate = LimitGate(store, lambda: config, clock=Clock())
    alice = [await gate.admit(group(f"a{n}", chat="-100", sender="1")) for n in range(3)]
    bob = [await gate.admit(group(f"b{n}", chat="-100", sender="2")) for n in range(2)]
    assert [v.admitted for v in alice] == [True, True, False]
    assert [v.admitted for v in bob] == [True, True]
    # The group sees the notice: it names whom it stops.
    assert "2 messages an hour for Bob in this chat" in (alice[2].notice or "")
    direct = _config(tmp_path, "direct", {"perSender": {"messagesPerHour": 1}})
    gate = LimitGate(store, lambda: direct, clock=Clock())
    await gate.admit(dm("a", sender="42"))
    assert "for you in this chat" in ((await gate.admit(dm("b", sender="42"))).notice or "")


async def test_per_sender_token_limit_counts_only_that_senders_calls(tmp_path, store):
    config = _config(tmp_path, "group", {"perSender": {"tokensPerDay": 100}})
    gate = LimitGate(store, lambda: config, clock=Clock())
    alice = group("a", chat="-100", sender="1")
    await UsageQueries(store).record_usage([_usage(alice, tokens=150)])
    assert not (await gate.admit(group("a2", chat="-100", sender="1"))).admitted
    assert (await gate.admit(group("b", chat="-100", sender="2"))).admitted


# ------------------------------------------------------------------ notice once


async def test_one_notice_per_window_then_silence_then_a_new_window(tmp_path, store):
    config = _config(tmp_path, "direct", {"messagesPerMinute": 1})
    clock = Clock()
    gate = LimitGate(store, lambda: config, clock=clock)
    assert (await gate.admit(dm("one"))).admitted
    clock.now += 10
    first = await gate.admit(dm("two"))
    assert not first.admitted
    assert first.notice == ("Usage limit reached (1 messages a minute in this chat). "
                            "I'll answer again in 50 s.")
    for n in range(3):
        clock.now += 5
        later = await gate.admit(dm(f"more {n}"))
        assert not later.admitted and later.notice is None  # no notice spam
    clock.now = NOON + 61
    assert (await gate.admit(dm("after"))).admitted
    clock.now += 1
    again = await gate.admit(dm("over again"))
    assert not again.admitted and again.notice is not None  # a new window, a new notice


# ------------------------------------------------------------------ exemptions


async def test_owners_are_never_limited(tmp_path, store):
    config = make_config(tmp_path, agents__defaults__limits={"messagesPerHour": 1},
                         channels={"telegram": {**OPEN, "owners": ["42"]}})
    gate = LimitGate(store, lambda: config, clock=Clock())
    assert all([(await gate.admit(dm(f"m{n}", sender="42"))).admitted for n in range(5)])
    assert (await gate.admit(dm("x", sender="7"))).admitted
    assert not (await gate.admit(dm("y", sender="7"))).admitted


async def test_an_owner_username_does_not_exempt_whoever_holds_it(tmp_path, store):
    config = make_config(tmp_path, agents__defaults__limits={"messagesPerHour": 1},
                         channels={"telegram": {**OPEN, "owners": ["@boss"]}})
    gate = LimitGate(store, lambda: config, clock=Clock())
    assert (await gate.admit(dm("x", sender="7", aliases=("@boss",)))).admitted
    assert not (await gate.admit(dm("y", sender="7", aliases=("@boss",)))).admitted


async def test_commands_always_pass(tmp_path, store):
    config = _config(tmp_path, "direct", {"messagesPerHour": 1})
    gate = LimitGate(store, lambda: config, clock=Clock())
    assert (await gate.admit(dm("hello"))).admitted
    assert not (await gate.admit(dm("again"))).admitted
    assert (await gate.admit(dm("/usage"))).admitted
    assert (await gate.admit(dm("/new"))).admitted


async def test_no_limits_configured_touches_no_table(tmp_path, store):
    config = make_config(tmp_path)
    gate = LimitGate(store, lambda: config, clock=Clock())

    async def refuse(fn, **kw):
        raise AssertionError("no transaction expected")

    store.atomically = refuse  # type: ignore[method-assign]
    assert (await gate.admit(dm("free"))).admitted


# ------------------------------------------------------------------ durability and races


async def test_counts_hold_across_a_restart(tmp_path):
    config = _config(tmp_path, "direct", {"messagesPerHour": 2})
    clock = Clock()
    store = await Store.open(tmp_path / "palaver.db")
    gate = LimitGate(store, lambda: config, clock=clock)
    assert (await gate.admit(dm("a"))).admitted
    assert (await gate.admit(dm("b"))).admitted
    first = await gate.admit(dm("c"))
    assert first.notice is not None
    await store.close()
    store = await Store.open(tmp_path / "palaver.db")  # a new process, same file
    try:
        gate = LimitGate(store, lambda: config, clock=clock)
        again = await gate.admit(dm("d"))
        assert not again.admitted
        assert again.notice is None  # told before the restart: still silent
    finally:
        await store.close()


async def test_a_redelivered_message_is_counted_once(tmp_path, store):
    config = _config(tmp_path, "direct", {"messagesPerHour": 2})
    gate = LimitGate(store, lambda: config, clock=Clock())
    msg = dm("same", msg_id="dup-1")
    for _ in range(3):
        assert (await gate.admit(msg)).admitted
    assert (await gate.admit(dm("other"))).admitted
    assert not (await gate.admit(dm("third"))).admitted


async def test_racing_senders_never_overshoot_the_last_slots(tmp_path, store):
    config = _config(tmp_path, "group", {"messagesPerHour": 5})
    gate = LimitGate(store, lambda: config, clock=Clock())
    verdicts = await asyncio.gather(*(
        gate.admit(group(f"race {n}", chat="-100", sender=str(n))) for n in range(30)))
    assert sum(v.admitted for v in verdicts) == 5
    assert sum(v.notice is not None for v in verdicts) == 1


async def test_two_processes_racing_never_overshoot(tmp_path):
    """Two connections to one file (two Palavers): the check and the record are one
    BEGIN IMMEDIATE transaction, so the database itself serialises them."""
    config = _config(tmp_path, "group", {"messagesPerHour": 4})
    one = await Store.open(tmp_path / "palaver.db")
    two = await Store.open(tmp_path / "palaver.db")
    try:
        gates = [LimitGate(s, lambda: config, clock=Clock()) for s in (one, two)]
        verdicts = await asyncio.gather(*(
            gates[n % 2].admit(group(f"race {n}", chat="-100", sender=str(n)))
            for n in range(20)))
        assert sum(v.admitted for v in verdicts) == 4
    finally:
        await one.close()
        await two.close()


async def test_refusals_are_counted_by_limit(tmp_path, store):
    config = _config(tmp_path, "direct", {"messagesPerHour": 1})
    gate = LimitGate(store, lambda: config, clock=Clock())
    seen: list[str] = []
    gate.on_refused = seen.append
    for n in range(3):
        await gate.admit(dm(f"m{n}"))
    assert seen == ["messagesPerHour", "messagesPerHour"]


async def test_would_admit_reads_without_counting(tmp_path, store):
    config = _config(tmp_path, "direct", {"messagesPerHour": 1})
    gate = LimitGate(store, lambda: config, clock=Clock())
    for _ in range(3):
        assert await gate.would_admit(dm("photo"))  # asking does not use the slot
    assert (await gate.admit(dm("first"))).admitted
    assert not await gate.would_admit(dm("photo"))
    assert await gate.would_admit(dm("/help"))
