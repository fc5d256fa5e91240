"""Ack reactions with several processes on one store (issue 20): a message stored by a
process that does not own its chat gets its 👀 from the owner — the process that answers
it and takes the 👀 back — so every reaction of a chat comes from one process, in order,
and what to acknowledge comes from the stored rows, not another process's memory."""

from __future__ import annotations

import asyncio

from bridge.envelope import AcceptStatus
from tests.cluster.test_stop_cluster import HANG_GUARD_S, slow_model, two_cores
from tests.core.helpers import dm, make_config
from tests.core.test_reactions import EYES, ReactingChannel


class Board:
    """The platform's side: the reaction each message shows now (the last call landed)."""

    def __init__(self) -> None:
        self.shown: dict[str, str] = {}


class SharedReactingChannel(ReactingChannel):
    """One process's Telegram channel: its calls land on the shared board."""

    def __init__(self, board: Board) -> None:
        super().__init__()
        self.board = board

    async def react(self, address, message_id: str, emoji: str) -> None:
        await super().react(address, message_id, emoji)
        self.board.shown[message_id] = emoji


async def _until_reacted(channel: ReactingChannel, wanted: tuple[str, str]) -> None:
    async def wait() -> None:
        while wanted not in channel.reactions:
            channel.reacted.clear()
            await channel.reacted.wait()

    await asyncio.wait_for(wait(), HANG_GUARD_S)


async def test_the_owner_acknowledges_and_clears_a_message_another_process_stored(
        tmp_path, pg_url):
    board = Board()
    channels = [SharedReactingChannel(board), SharedReactingChannel(board)]
    release, called, slow = slow_model()
    config = make_config(tmp_path)
    async with two_cores(config, pg_url, (slow, None), channels) as (a, b):
        try:
            first = dm("first", msg_id="m1")
            key = str(first.session_key)
            assert await a.core.accept(first) is AcceptStatus.ACCEPTED
            await asyncio.wait_for(called.wait(), HANG_GUARD_S)  # A owns the chat, busy
            assert await b.core.accept(dm("second", msg_id="m2")) is AcceptStatus.ACCEPTED
            await _until_reacted(channels[0], ("m2", EYES))  # set by A, woken by B's store
            await b.core.reactions.idle()
            assert channels[1].reactions == []  # B set nothing: not its chat
            assert board.shown == {"m1": EYES, "m2": EYES}
            release.set()
            await asyncio.wait_for(a.core.wait_idle(), HANG_GUARD_S)
            await a.core.reactions.idle()
            assert board.shown == {"m1": "", "m2": ""}
            assert channels[0].reactions == [("m1", EYES), ("m2", EYES), ("m1", ""),
                                              ("m2", "")]
            # Woken again later (a sweep, a late notification): nothing waits, nothing
            # done with is acknowledged again.
            assert await a.core.reactions.acknowledge_waiting(key) == 0
            await a.core.reactions.idle()
            assert board.shown == {"m1": "", "m2": ""}
            assert channels[1].reactions == []
            assert len(channels[0].texts()) == 2  # m1's answer, then m2's
        finally:
            release.set()


class _HeldReads:
    """The reactions' view of the store: a read returns only once ``gate`` is set (its
    rows as they were when it ran)."""

    def __init__(self, store, read: asyncio.Event) -> None:
        self._store = store
        self.gate = asyncio.Event()
        self.read = read

    async def read_with(self, body):
        rows = await self._store.read_with(body)
        self.read.set()
        await self.gate.wait()
        return rows

    def __getattr__(self, name):
        return getattr(self._store, name)


async def test_an_ack_looked_up_before_the_answer_is_not_set_after_its_removal(
        tmp_path, pg_url):
    """The owner read the chat's waiting messages for their ack, and answered (and
    cleared) one of them before the read came back: no 👀 lands after the removal."""
    board = Board()
    channels = [SharedReactingChannel(board), SharedReactingChannel(board)]
    config = make_config(tmp_path)
    read = asyncio.Event()

    async def after_the_read(_ref, _req) -> str:
        await read.wait()  # the turn is running (m1 processing) when the lookup reads
        return "an answer"

    async with two_cores(config, pg_url, (after_the_read, None), channels) as (a, b):
        held = _HeldReads(a.store, read)
        a.core.reactions._store = held  # type: ignore[assignment]
        message = dm("hello", msg_id="m1")
        key = str(message.session_key)
        assert await a.coord.acquire(key)  # A owns the chat (idle)
        assert await b.core.accept(message) is AcceptStatus.ACCEPTED
        await asyncio.wait_for(held.read.wait(), HANG_GUARD_S)  # m1 read as waiting
        await asyncio.wait_for(a.core.wait_idle(), HANG_GUARD_S)  # ... and answered
        assert channels[0].texts() == ["an answer"]
        await _until_reacted(channels[0], ("m1", ""))  # the answer's clear landed
        held.gate.set()
        await a.core.reactions.idle()
        assert board.shown == {"m1": ""}
        assert channels[0].reactions == [("m1", "")]
        assert channels[1].reactions == []
