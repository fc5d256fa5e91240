"""``/stop`` received by a process that does not own the chat (issue 20): two cores on one
PostgreSQL store in this test process (two stores, two coordinators, as two ``palaver
run`` would be), the turn running on A with a slow model, the ``/stop`` accepted by B.
A's turn stops and the chat gets exactly one "Stopped." — from A, the owner."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from bridge.commands import NOTHING_RUNNING, STOPPED
from bridge.envelope import AcceptStatus
from bridge.store import Store
from tests.cluster.cores import HANG_GUARD_S, Node, rows_of, slow_model, two_cores
from tests.core.helpers import dm, make_config


@dataclass
class Pair:
    a: Node
    b: Node
    release: asyncio.Event  # lets A's slow model answer
    called: asyncio.Event  # A's model call started


@pytest.fixture
async def pair(tmp_path, pg_url) -> AsyncIterator[Pair]:
    release, called, slow = slow_model()
    try:
        async with two_cores(make_config(tmp_path), pg_url, (slow, None)) as (a, b):
            yield Pair(a, b, release, called)
    finally:
        release.set()


async def _replies(store: Store, key: str) -> list[str]:
    rows = await store.read_with(rows_of(
        key, "SELECT text FROM messages WHERE session_key = ? AND direction = 'out'"
             " ORDER BY id"))
    return [r[0] for r in rows]


async def _turns(store: Store, key: str) -> list[tuple[str, str | None]]:
    rows = await store.read_with(rows_of(
        key, "SELECT status, reason FROM turns WHERE session_key = ? ORDER BY id"))
    return [(r[0], r[1]) for r in rows]


async def _running_on_a(pair: Pair) -> str:
    """A accepted a message and its model call is running: the chat is A's."""
    message = dm("write me a long story")
    key = str(message.session_key)
    assert await pair.a.core.accept(message) is AcceptStatus.ACCEPTED
    await asyncio.wait_for(pair.called.wait(), HANG_GUARD_S)
    assert pair.a.coord.owns(key)
    return key


async def _one_stopped(pair: Pair, key: str) -> None:
    """A sends one "Stopped.", its turn is stopped, nothing else is (or will be) sent."""
    await asyncio.wait_for(pair.a.channel.sent_event.wait(), HANG_GUARD_S)
    await pair.a.core.wait_idle()
    await pair.b.core.wait_idle()
    assert pair.a.channel.texts() == [STOPPED]
    assert pair.b.channel.texts() == []
    assert await _replies(pair.a.store, key) == [STOPPED]  # no second reply waits
    assert await _turns(pair.a.store, key) == [("failed", "stopped")]
    statuses = await pair.a.store.read_with(rows_of(
        key, "SELECT text, status, kind FROM messages WHERE session_key = ?"
             " AND direction = 'in' ORDER BY id"))
    assert [tuple(r) for r in statuses] == [("write me a long story", "failed", "chat"),
                                            ("/stop", "answered", "command")]
    assert await pair.a.store.undelivered(key) == []


async def test_a_stop_received_by_another_process_stops_the_owners_turn(pair):
    key = await _running_on_a(pair)
    stop = dm("/stop")
    assert await pair.b.core.accept(stop) is AcceptStatus.ACCEPTED
    await _one_stopped(pair, key)
    # The model call was cancelled, not answered: releasing it now changes nothing.
    pair.release.set()
    await pair.a.core.wait_idle()
    assert pair.a.channel.texts() == [STOPPED]


async def test_a_lost_stop_notification_is_caught_by_the_owners_sweep(pair, monkeypatch):
    key = await _running_on_a(pair)

    async def lost(_key: str) -> None:
        return None  # the NOTIFY never reaches A

    monkeypatch.setattr(pair.b.coord, "request_stop", lost)
    assert await pair.b.core.accept(dm("/stop")) is AcceptStatus.ACCEPTED
    # The message's own notification woke A's busy worker; the turn goes on.
    assert pair.a.channel.texts() == []
    assert pair.a.core._active.running(key) is not None
    wakes = await pair.a.coord.sweep()
    assert [w.stop for w in wakes if w.session_key == key] == [True]
    await _one_stopped(pair, key)


async def test_a_stop_after_the_answer_is_told_nothing_runs(pair):
    """The owner's turn ended on its own before the /stop reached it: the answer, then
    one "Nothing is running." (as with one process), not "Stopped."."""
    key = await _running_on_a(pair)
    pair.release.set()
    await asyncio.wait_for(pair.a.channel.sent_event.wait(), HANG_GUARD_S)
    pair.a.channel.sent_event.clear()
    await pair.a.core.wait_idle()  # A gave the chat up; it takes it again (e.g. a reply
    assert await pair.a.coord.acquire(key)  # to deliver), idle for the /stop
    assert await pair.b.core.accept(dm("/stop")) is AcceptStatus.ACCEPTED
    await asyncio.wait_for(pair.a.channel.sent_event.wait(), HANG_GUARD_S)
    await pair.a.core.wait_idle()
    assert pair.a.channel.texts() == ["the slow answer", NOTHING_RUNNING]
    assert pair.b.channel.texts() == []
    assert await _replies(pair.a.store, key) == ["the slow answer", NOTHING_RUNNING]


async def test_a_stop_for_a_chat_its_owner_just_gave_up_is_answered_by_its_receiver(pair):
    """B found the chat owned, and A gave it up before B stored the /stop: B takes the
    chat and answers the /stop from the queue (A, no longer the owner, ignores it)."""
    key = await _running_on_a(pair)
    pair.release.set()
    await asyncio.wait_for(pair.a.channel.sent_event.wait(), HANG_GUARD_S)
    await pair.a.core.wait_idle()  # A released the chat
    taken = pair.b.core._take

    async def owned_elsewhere_once(k: str) -> bool:
        pair.b.core._take = taken  # type: ignore[method-assign]
        return False  # what B's first look saw

    pair.b.core._take = owned_elsewhere_once  # type: ignore[method-assign]
    assert await pair.b.core.accept(dm("/stop")) is AcceptStatus.ACCEPTED
    await asyncio.wait_for(pair.b.channel.sent_event.wait(), HANG_GUARD_S)
    await pair.b.core.wait_idle()
    await pair.a.core.wait_idle()
    assert pair.b.channel.texts() == [NOTHING_RUNNING]
    assert await _replies(pair.a.store, key) == ["the slow answer", NOTHING_RUNNING]
