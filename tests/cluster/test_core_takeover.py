"""The core on a PostgreSQL store shared with another process (bridge.store.coord), in one
test process: two stores, two coordinators, one ConversationCore for the survivor."""

from __future__ import annotations

import contextlib

from bridge.conversation import ConversationCore
from bridge.store import Store
from bridge.store.coord import PgCoordinator, application_name
from tests.core.helpers import FakeRouter, RecordingChannel, dm, make_config

NEVER = 3600.0  # the test reaps by hand: no background reap or sweep


async def _node(pg_url: str, **kwargs) -> tuple[Store, PgCoordinator]:
    app = application_name()
    store = await Store.open_url(pg_url, application_name=app)
    coord = PgCoordinator(store, lease_seconds=30.0, app_name=app, **kwargs)
    await coord.start()
    return store, coord


async def test_a_new_owner_sends_the_dead_owners_stored_reply_before_its_own(
        tmp_path, pg_url):
    """A process stored a reply and died before sending it.  The next message of that
    chat reaches another process first (before any sweep): the stored reply goes out
    before the new one — in the chat's order — and neither is lost."""
    dead_store, dead = await _node(pg_url)
    store, coord = await _node(pg_url, reap_every_s=NEVER, sweep_every_s=NEVER)
    config = make_config(tmp_path)
    channel = RecordingChannel()
    core = ConversationCore(store, config, FakeRouter(config), channels=[channel],
                            coordinator=coord)
    try:
        await core.start()  # running before the other dies: its start flushes nothing
        first = dm("first")
        key = str(first.session_key)
        assert await dead.acquire(key)
        await dead_store.record_inbound(first)
        claim = await dead_store.claim_next(key)
        assert claim is not None
        await dead_store.finish_turn(claim.turn_id, reply="the first answer")
        await dead.abandon()  # killed before the send
        assert await coord.reap_dead() == {key}
        await core.accept(dm("second"))
        await core.wait_idle()
        texts = channel.texts()
        assert texts[0] == "the first answer"
        assert len(texts) == 2 and "second" in texts[1]
        assert await store.undelivered(key) == []
    finally:
        await core.stop(grace=0)
        await coord.stop()
        await store.close()
        with contextlib.suppress(Exception):
            await dead_store.close()


async def test_a_turn_taken_over_mid_call_is_answered_once_by_the_new_owner(
        tmp_path, pg_url, caplog):
    """A process stalls while its model call runs (its control connection gone, as if
    it were stopped past its lease); another reaps it and answers the message.  When the
    stalled one's model call returns, its finish is fenced: it stores and sends nothing,
    logs no traceback, and the chat has exactly one reply — the new owner's."""
    import asyncio

    config = make_config(tmp_path)
    release = asyncio.Event()
    called = asyncio.Event()

    async def slow(_ref, _request) -> str:
        called.set()
        await release.wait()
        return "the stalled answer"

    nodes = [await _node(pg_url, reap_every_s=NEVER, sweep_every_s=NEVER)
             for _ in range(2)]
    (stalled_store, stalled), (store, coord) = nodes
    channels = [RecordingChannel(), RecordingChannel()]
    cores = [ConversationCore(stalled_store, config, FakeRouter(config, slow),
                              channels=[channels[0]], coordinator=stalled),
             ConversationCore(store, config, FakeRouter(config), channels=[channels[1]],
                              coordinator=coord)]
    try:
        for core in cores:
            await core.start()
        message = dm("hello there")
        key = str(message.session_key)
        await cores[0].accept(message)
        await asyncio.wait_for(called.wait(), 10)
        await stalled.abandon()
        assert await coord.reap_dead() == {key}
        await coord.sweep({key})  # what the reaper's loop does after a reap
        await cores[1].wait_idle()
        assert len(channels[1].texts()) == 1 and "hello there" in channels[1].texts()[0]
        release.set()
        await cores[0].wait_idle()
        assert channels[0].texts() == []
        assert await store.undelivered(key) == []
        rows = await store.read_with(_replies_of(key))
        assert [r[0] for r in rows] == [channels[1].texts()[0]]
        assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    finally:
        release.set()
        for core in cores:
            await core.stop(grace=0)
        for store_, coord_ in nodes:
            with contextlib.suppress(Exception):
                await coord_.stop()
            with contextlib.suppress(Exception):
                await store_.close()


def _replies_of(key: str):
    from bridge.store.sql import all_

    return (yield all_("SELECT text FROM messages WHERE session_key = ? AND direction = 'out'"
                       " ORDER BY id", key))
