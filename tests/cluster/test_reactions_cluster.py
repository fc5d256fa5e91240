"""Ack reactions with several processes on one store (issue 20): a message stored by a
process that does not own its chat gets its 👀 from the owner — the process that answers
it and takes the 👀 back — so every reaction of a chat comes from one process, in order,
and what to acknowledge comes from the stored rows, not another process's memory."""

from __future__ import annotations

import asyncio

from bridge.envelope import AcceptStatus
from tests.cluster.cores import HANG_GUARD_S, slow_model, two_cores
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
            for mid in ("m1", "m2"):  # each set, then taken back, by A alone
                assert [e for m, e in channels[0].reactions if m == mid] == [EYES, ""]
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
    """The owner, busy, read the chat's waiting messages for their ack; its next turn
    answered (and cleared) one of them before the read came back: no 👀 lands after the
    removal."""
    board = Board()
    channels = [SharedReactingChannel(board), SharedReactingChannel(board)]
    config = make_config(tmp_path)
    release, called, slow = slow_model()
    async with two_cores(config, pg_url, (slow, None), channels) as (a, b):
        held = _HeldReads(a.store, asyncio.Event())
        a.core.reactions._store = held  # type: ignore[assignment]
        first = dm("first", msg_id="m1")
        assert await a.core.accept(first) is AcceptStatus.ACCEPTED
        await asyncio.wait_for(called.wait(), HANG_GUARD_S)  # A's worker is busy
        assert await b.core.accept(dm("second", msg_id="m2")) is AcceptStatus.ACCEPTED
        await asyncio.wait_for(held.read.wait(), HANG_GUARD_S)  # m2 read as waiting
        release.set()  # m1 answered, then m2 (acknowledged at its claim) answered
        await _until_reacted(channels[0], ("m2", ""))  # m2's answer's clear landed
        await asyncio.wait_for(a.core.wait_idle(), HANG_GUARD_S)
        held.gate.set()  # the read for m2's ack comes back, late
        await a.core.reactions.idle()
        assert board.shown == {"m1": "", "m2": ""}
        # m2's 👀 came with its claim (the lookup was still out), and only then.
        for mid in ("m1", "m2"):
            assert [e for m, e in channels[0].reactions if m == mid] == [EYES, ""]
        assert channels[1].reactions == []
