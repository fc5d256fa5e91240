"""Several processes on one PostgreSQL store (bridge/store/coord.py): who is alive, one
owner per chat, fenced claims and finishes, takeover by reaping, wake-ups, leaders.

Real PostgreSQL only (the ``pg_url`` fixture of tests/conftest.py: a fresh database per
test): without a server these tests skip, loudly, and fail under CI.
A "process" here is a :class:`PgCoordinator` with a store of its own; the tests that kill
or stop one run it as a subprocess (tests/cluster/coord_process.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import pytest

from bridge.envelope import ChatAddress, ChatKind, Inbound
from bridge.store import Store
from bridge.store.coord import (
    PROCESS_LOCK_CLASS,
    LocalCoordinator,
    Lost,
    PgCoordinator,
    TurnTakenOver,
    Wake,
    application_name,
    notify_work,
)

REPO = Path(__file__).parents[2]
HANG_GUARD_S = 20.0  # generous: only so a broken takeover fails instead of hanging




# ----------------------------------------------------------------------- fixtures


class Node:
    """One process: a store of its own and its coordinator."""

    def __init__(self, store, coord: PgCoordinator) -> None:
        self.store = store
        self.coord = coord
        self.wakes: list[Wake] = []
        self.woken = asyncio.Event()
        coord.on_wake(self._woken)

    def _woken(self, wake: Wake) -> None:
        self.wakes.append(wake)
        self.woken.set()

    @property
    def id(self) -> str:
        assert self.coord.process_id is not None
        return self.coord.process_id


@pytest.fixture
async def nodes(pg_url):
    """``await nodes(lease=..., ...)``: a started Node; all stopped at the end."""
    made: list[Node] = []

    async def make(*, lease: float = 30.0, **kwargs) -> Node:
        app = application_name()
        store = await Store.open_url(pg_url, application_name=app)
        coord = PgCoordinator(store, lease_seconds=lease, app_name=app, **kwargs)
        await coord.start()
        node = Node(store, coord)
        made.append(node)
        return node

    yield make
    for node in made:
        await node.coord.stop()
        await node.store.close()


def _in(mid: str, chat: str = "1", text: str = "hi") -> Inbound:
    return Inbound(ChatAddress("telegram", "default", chat, ChatKind.DIRECT), chat, mid, 1.0,
                   text=text)


def _key(chat: str = "1") -> str:
    return str(_in("x", chat).session_key)


async def _until(predicate, what: str, limit_s: float = HANG_GUARD_S) -> float:
    """Seconds until ``predicate()`` (awaited if it is a coroutine) is true."""
    start = time.monotonic()
    while True:
        got = predicate()
        if asyncio.iscoroutine(got):
            got = await got
        if got:
            return time.monotonic() - start
        if time.monotonic() - start > limit_s:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def _fetch(store, sql: str, *args):
    from bridge.store.sql import all_

    def body():
        return (yield all_(sql, *args))

    return await store.read_with(body())


async def _turn_status(store, turn_id: int) -> str:
    return (await _fetch(store, "SELECT status FROM turns WHERE id = ?", turn_id))[0][0]


async def _statuses(store, key: str) -> list[tuple[str, str, int | None]]:
    return [(r["direction"], r["status"], r["turn_id"]) for r in await _fetch(
        store, "SELECT direction, status, turn_id FROM messages WHERE session_key = ?"
        " ORDER BY id", key)]


async def _owner_of(store, key: str) -> str | None:
    rows = await _fetch(store, "SELECT owner FROM session_owners WHERE session_key = ?", key)
    return rows[0][0] if rows else None


# ------------------------------------------------------------------ chats and fences


async def test_claim_is_fenced_by_ownership(nodes):
    a, b = await nodes(), await nodes()
    key = _key()
    assert await a.coord.acquire(key)
    assert not await b.coord.acquire(key)  # a live process owns it
    await b.store.record_inbound(_in("m1"))  # any process may store the message

    with pytest.raises(Lost):
        await b.store.claim_next(key)
    assert await _fetch(b.store, "SELECT id FROM turns") == []  # no turn was created
    assert await _statuses(b.store, key) == [("in", "received", None)]

    claim = await a.store.claim_next(key)
    assert claim is not None
    assert (await _fetch(a.store, "SELECT owner FROM turns WHERE id = ?", claim.turn_id)
            )[0][0] == a.id


async def test_finish_after_takeover_stores_nothing(nodes):
    a, b = await nodes(), await nodes()
    key = _key()
    assert await a.coord.acquire(key)
    await a.store.record_inbound(_in("m1"))
    claim = await a.store.claim_next(key)
    await a.coord.abandon()  # dies mid-turn; b reaps it
    await _until(lambda: _is(b.store, claim.turn_id, "interrupted"), "the reap")

    with pytest.raises(TurnTakenOver):
        await a.store.finish_turn(claim.turn_id, reply="a late answer")
    assert await _statuses(b.store, key) == [("in", "received", None)]  # no reply row
    assert await _turn_status(b.store, claim.turn_id) == "interrupted"

    assert await b.coord.acquire(key)  # the new owner answers it, once
    again = await b.store.claim_next(key)
    out = await b.store.finish_turn(again.turn_id, reply="the answer")
    assert [(m.text, m.turn_id) for m in await b.store.undelivered(key)] == [
        ("the answer", again.turn_id)]
    assert out.turn_id == again.turn_id


async def _is(store, turn_id: int, status: str) -> bool:
    return await _turn_status(store, turn_id) == status


async def test_requeue_after_takeover_is_a_no_op(nodes):
    a, b = await nodes(), await nodes()
    key = _key()
    assert await a.coord.acquire(key)
    await a.store.record_inbound(_in("m1"))
    old = await a.store.claim_next(key)
    await a.coord.abandon()
    await _until(lambda: _is(b.store, old.turn_id, "interrupted"), "the reap")
    assert await b.coord.acquire(key)
    new = await b.store.claim_next(key)  # b answers the message now

    assert await a.store.requeue_turn(old.turn_id) == 0  # the late requeue touches nothing
    assert await a.store.stop_turn(old.turn_id) == 0
    assert await _statuses(b.store, key) == [("in", "processing", new.turn_id)]
    assert await _turn_status(b.store, new.turn_id) == "running"
    assert await _turn_status(b.store, old.turn_id) == "interrupted"


async def test_release_if_idle_keeps_a_chat_with_work(nodes):
    a, b = await nodes(), await nodes()
    key = _key()
    assert await a.coord.acquire(key)
    await a.store.record_inbound(_in("m1"))
    assert not await a.coord.release_if_idle(key)  # a message waits
    claim = await a.store.claim_next(key)
    assert not await a.coord.release_if_idle(key)  # being answered
    out = await a.store.finish_turn(claim.turn_id, reply="answer")
    assert not await a.coord.release_if_idle(key)  # a reply to deliver
    assert await _owner_of(a.store, key) == a.id
    assert not await b.coord.acquire(key)

    await a.store.mark_delivered(out.id, ["7"])
    assert await a.coord.release_if_idle(key)
    assert await _owner_of(a.store, key) is None and not a.coord.owns(key)
    assert await b.coord.acquire(key)


class _Counting:
    """Counts the store's transactions (a claim's round trips)."""

    def __init__(self, store) -> None:
        self.transactions = 0
        self._atomically = store.atomically
        store.atomically = self.atomically

    async def atomically(self, work, **kwargs):
        self.transactions += 1
        return await self._atomically(work, **kwargs)


async def test_a_lingering_chat_is_claimed_again_without_a_round_trip(nodes):
    a, b = await nodes(linger_s=5.0, reap_every_s=3600), await nodes()
    key = _key()
    counting = _Counting(a.store)
    assert await a.coord.acquire(key)
    assert counting.transactions == 1
    assert await a.coord.idle(key)  # the worker is done: kept for a while
    assert await _owner_of(a.store, key) == a.id
    assert not await b.coord.acquire(key)  # still a's: b's message wakes a
    assert await a.coord.acquire(key)  # the next message: a look in memory
    assert counting.transactions == 1
    # The claim is fenced by the row as before.
    await a.store.record_inbound(_in("m1"))
    assert await a.store.claim_next(key) is not None


async def test_idle_chats_are_released_after_the_linger_in_one_statement(nodes):
    a, b = await nodes(linger_s=5.0, reap_every_s=3600), await nodes()
    keys = [_key(str(chat)) for chat in range(3)]
    for key in keys:
        assert await a.coord.acquire(key)
        assert await a.coord.idle(key)
    counting = _Counting(a.store)
    assert await a.coord.release_idle() == set()  # not yet due
    later = time.monotonic() + 5.0
    assert await a.coord.release_idle(now=later) == set(keys)
    assert counting.transactions == 1
    assert a.coord.owned == frozenset()
    for key in keys:
        assert await _owner_of(a.store, key) is None
        assert await b.coord.acquire(key)


async def test_a_lingering_chat_where_work_waits_is_kept_and_woken(nodes):
    """Another process stored a message while the chat lingered here (its notification
    lost, say): the release keeps the chat and wakes its worker."""
    a, b = await nodes(linger_s=5.0, reap_every_s=3600), await nodes()
    key = _key()
    assert await a.coord.acquire(key)
    assert await a.coord.idle(key)
    await b.store.record_inbound(_in("m1"))
    a.wakes.clear()
    assert await a.coord.release_idle(now=time.monotonic() + 5.0) == set()
    assert a.coord.owns(key) and await _owner_of(a.store, key) == a.id
    assert Wake(key) in a.wakes


async def test_an_acquire_during_the_release_asks_the_database(nodes):
    """A message of the chat arrives while its release runs: the acquire is not a look in
    memory (the row may be gone a moment later) but the statement, which either waits
    for the delete and takes the chat again, or runs first and the delete then sees the
    stored message and keeps the chat."""
    a = await nodes(linger_s=5.0, reap_every_s=3600)
    key = _key()
    assert await a.coord.acquire(key)
    assert await a.coord.idle(key)
    release = asyncio.ensure_future(a.coord.release_idle(now=time.monotonic() + 5.0))
    await asyncio.sleep(0)  # one step of the release: the key is out, its DELETE sent
    assert not a.coord.owns(key)
    await a.store.record_inbound(_in("m1"))  # stored first, then acquired (the door)
    counting = _Counting(a.store)
    assert await a.coord.acquire(key)
    assert counting.transactions == 1
    await release
    assert a.coord.owns(key) and await _owner_of(a.store, key) == a.id


async def test_the_linger_is_at_most_a_third_of_the_lease(nodes):
    a = await nodes(lease=6.0, linger_s=5.0)
    assert a.coord.linger_s == 2.0


async def test_disown_hands_chats_with_work_to_the_new_leader(nodes):
    """An account's leadership moved (WhatsApp): its old holder gives up the account's
    chats even with messages waiting, so the new leader can take them."""
    a, b = await nodes(), await nodes()
    wa = str(Inbound(ChatAddress("whatsapp", "default", "5", ChatKind.DIRECT), "5", "w1",
                     1.0, text="hi").session_key)
    tg = _key()
    assert await a.coord.acquire(wa) and await a.coord.acquire(tg)
    await b.store.record_inbound(Inbound(ChatAddress("whatsapp", "default", "5",
                                                     ChatKind.DIRECT), "5", "w1", 1.0))
    assert not await b.coord.acquire(wa)
    assert await a.coord.disown("whatsapp:default:") == [wa]
    assert not a.coord.owns(wa) and a.coord.owns(tg)
    assert await b.coord.acquire(wa)
    assert await _owner_of(a.store, tg) == a.id


async def test_release_racing_a_receive_never_strands_a_message(nodes):
    """The receiver commits the message, then tries to take the chat; the owner gives it
    up only in a statement that sees nothing waiting.  Whatever the interleaving, the
    message ends up with an owner: the old one kept it, or the receiver took it."""
    a, b = await nodes(), await nodes()
    rnd = random.Random(20)
    kept = taken = 0
    for i in range(200):
        chat = f"r{i}"
        key = _key(chat)
        assert await a.coord.acquire(key)

        async def receive(chat: str = chat, key: str = key) -> bool:
            await asyncio.sleep(rnd.choice((0, 0, 0.0005, 0.001, 0.002)))
            await b.store.record_inbound(_in(f"m{chat}", chat))
            return await b.coord.acquire(key)

        async def release(key: str = key) -> bool:
            await asyncio.sleep(rnd.choice((0, 0, 0.0005, 0.001, 0.002)))
            return await a.coord.release_if_idle(key)

        acquired, released = await asyncio.gather(receive(), release())
        owner = await _owner_of(a.store, key)
        assert owner is not None, f"iteration {i}: a received message has no owner"
        assert released == acquired, f"iteration {i}: released={released} acquired={acquired}"
        assert owner == (b.id if acquired else a.id)
        kept += not released
        taken += acquired
    print(f"\nrelease race: {kept} kept by the owner, {taken} taken by the receiver")


# ------------------------------------------------------------------------- reaping


async def test_reaper_requeues_only_the_dead_process_turns(nodes):
    a, b = await nodes(), await nodes()
    ka, kb = _key("a"), _key("b")
    assert await a.coord.acquire(ka) and await b.coord.acquire(kb)
    await a.store.record_inbound(_in("ma", "a"))
    await b.store.record_inbound(_in("mb", "b"))
    ta = await a.store.claim_next(ka)
    tb = await b.store.claim_next(kb)
    kc = _key("c")  # a's answer here is stored, not yet delivered
    assert await a.coord.acquire(kc)
    await a.store.record_inbound(_in("mc", "c"))
    await a.store.finish_turn((await a.store.claim_next(kc)).turn_id, reply="stored")
    dead = a.id

    await a.coord.abandon()
    await _until(lambda: _is(b.store, ta.turn_id, "interrupted"), "the reap")
    assert await _statuses(b.store, ka) == [("in", "received", None)]
    assert await _statuses(b.store, kb) == [("in", "processing", tb.turn_id)]
    assert await _turn_status(b.store, tb.turn_id) == "running"
    assert [r[0] for r in await _fetch(b.store, "SELECT id FROM processes")] == [b.id]
    assert await _owner_of(b.store, ka) is None and await _owner_of(b.store, kb) == b.id
    assert [r.process for r in b.coord.reaped] == [dead]
    # The reaper wakes the freed chat at once, with its address (any server may take it).
    await _until(lambda: any(w.session_key == ka for w in b.wakes), "the wake")
    wake = next(w for w in b.wakes if w.session_key == ka)
    assert wake.address == _in("x", "a").address and not wake.outbound
    await _until(lambda: any(w.session_key == kc for w in b.wakes), "the reply's wake")
    wake = next(w for w in b.wakes if w.session_key == kc)
    assert wake.outbound  # its stored reply is delivered by the new owner
    assert [m.text for m in await b.store.undelivered(kc)] == ["stored"]


async def test_reaper_terminates_a_stalled_transaction(nodes, pg_url):
    """A process stalled inside its claim transaction holds row locks; the reaper ends its
    backends (by application_name) instead of waiting for it."""
    a, b = await nodes(), await nodes()
    key = _key()
    assert await a.coord.acquire(key)
    await a.store.record_inbound(_in("m1"))
    claim = await a.store.claim_next(key)
    stalled = await asyncpg.connect(pg_url, server_settings={"application_name":
                                                             a.coord.app_name})
    tx = stalled.transaction()
    await tx.start()
    await stalled.execute("SELECT 1 FROM turns WHERE id = $1 FOR UPDATE", claim.turn_id)
    await stalled.execute("SELECT 1 FROM messages WHERE turn_id = $1 FOR UPDATE",
                          claim.turn_id)

    await a.coord.abandon()
    took = await _until(lambda: _is(b.store, claim.turn_id, "interrupted"), "the reap")
    assert b.coord.reaped[-1].terminated >= 1
    assert await _statuses(b.store, key) == [("in", "received", None)]
    with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, OSError)):
        await stalled.fetchval("SELECT 1")  # its backend was ended
    stalled.terminate()
    print(f"\nreap through a stalled transaction: {took:.2f} s after the death")


async def test_orphaned_running_turns_go_back_to_the_queue(nodes):
    """A running turn stamped with a process that is not registered (a safety net behind
    the reaper) is interrupted by the next sweep."""
    a = await nodes(sweep_every_s=0.2)
    key = _key()
    assert await a.coord.acquire(key)
    await a.store.record_inbound(_in("m1"))
    claim = await a.store.claim_next(key)
    from bridge.store.sql import run

    def body():
        yield run("UPDATE turns SET owner = 'gone:1:x' WHERE id = ?", claim.turn_id)

    await a.store.atomically(body())
    await _until(lambda: _is(a.store, claim.turn_id, "interrupted"), "the sweep")
    assert await _statuses(a.store, key) == [("in", "received", None)]


# ------------------------------------------------------------------------- wake-ups


async def test_notify_wakes_the_owner(nodes):
    a, b = await nodes(), await nodes()
    mine, other = _key("1"), _key("2")
    assert await a.coord.acquire(mine)
    await a.store.atomically(notify_work(mine))  # its own: it woke the chat itself
    await b.store.atomically(notify_work(other))  # nobody's chat: its receiver takes it
    await b.store.atomically(notify_work(mine, outbound=True))
    await asyncio.wait_for(a.woken.wait(), HANG_GUARD_S)
    assert a.wakes == [Wake(mine, outbound=True)]
    assert b.wakes == []  # b owns neither


async def test_a_message_stored_by_another_process_wakes_the_owner(nodes):
    a, b = await nodes(), await nodes()
    key = _key()
    assert await a.coord.acquire(key)
    await a.store.record_inbound(_in("m0"))  # stored here: no wake from itself
    await b.store.record_inbound(_in("m1"))  # a webhook that reached the other replica
    await asyncio.wait_for(a.woken.wait(), HANG_GUARD_S)
    assert a.wakes == [Wake(key)]


async def test_sweep_finds_a_lost_notify(nodes):
    a = await nodes(sweep_every_s=0.2)
    key = _key()
    # Stored while nobody owned the chat (no one acts on that notification), then owned
    # here: only the sweep can tell this process that work waits.
    await a.store.record_inbound(_in("m1"))
    assert await a.coord.acquire(key)
    await asyncio.wait_for(a.woken.wait(), HANG_GUARD_S)
    assert a.wakes[0].session_key == key and not a.wakes[0].outbound


async def test_a_late_heartbeat_fences_the_process(nodes):
    """A blocked event loop (GC pause, SIGSTOP) makes the lease uncertain: act on nothing
    until a heartbeat succeeds again."""
    a = await nodes(lease=1.5)
    key = _key()
    assert await a.coord.acquire(key)
    a.coord.check_owned(key)
    time.sleep(1.5 * 0.7)  # noqa: ASYNC251 - the point: the loop stalls past 2/3 of the lease
    with pytest.raises(Lost):
        a.coord.check_alive()
    with pytest.raises(Lost):
        a.coord.check_owned(key)
    assert not await a.coord.acquire(_key("2"))
    await _until(lambda: a.coord.alive, "the next heartbeat")
    a.coord.check_owned(key)  # nobody reaped it: still its chat, same process
    assert await _owner_of(a.store, key) == a.id


async def test_a_dropped_control_connection_comes_back_as_the_same_process(nodes, pg_url):
    """The server ends the process's connections (a restart, a network cut): it connects
    again, takes its advisory lock back, and with no peer to reap it meanwhile keeps its
    id, its chats and its wake-ups."""
    a = await nodes(lease=1.5)
    key = _key()
    assert await a.coord.acquire(key)
    me, old = a.id, a.coord._conn
    probe = await asyncpg.connect(pg_url)
    try:
        ended = await probe.fetchval(
            "SELECT COUNT(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name = $1", a.coord.app_name)
    finally:
        await probe.close()
    assert ended >= 1
    await _until(lambda: a.coord._conn not in (None, old) and a.coord.alive,
                 "the reconnection")
    assert a.id == me and a.coord.owns(key)
    other = await Store.open_url(pg_url)  # another process stores work in the chat
    try:
        await other.atomically(notify_work(key))
    finally:
        await other.close()
    await asyncio.wait_for(a.woken.wait(), HANG_GUARD_S)  # LISTEN again on the new one


# --------------------------------------------------------------- killed processes


def _spawn(url: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "tests.cluster.coord_process", url, *args],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)


async def _event(proc: subprocess.Popen, name: str) -> dict:
    """The next event ``name`` the subprocess prints (other events are skipped)."""
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + HANG_GUARD_S
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = await asyncio.wait_for(loop.run_in_executor(None, proc.stdout.readline),
                                      HANG_GUARD_S)
        if not line:
            raise AssertionError(f"the process ended before {name!r}")
        event = json.loads(line)
        if event["event"] == name:
            return event
    raise AssertionError(f"no {name!r} from the process")


@pytest.fixture
def procs():
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            with_cont = getattr(signal, "SIGCONT", None)
            if with_cont is not None:
                os.kill(proc.pid, with_cont)
            proc.kill()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


async def test_advisory_lock_frees_on_kill(pg_url, nodes, procs):
    await nodes()  # migrates the database
    proc = _spawn(pg_url, "--lease", "60")
    procs.append(proc)
    ready = await _event(proc, "ready")
    probe = await asyncpg.connect(pg_url)
    try:
        assert not await probe.fetchval("SELECT pg_try_advisory_lock($1, $2)",
                                        PROCESS_LOCK_CLASS, ready["lock_key"])
        killed = time.monotonic()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        free = await _until(lambda: probe.fetchval("SELECT pg_try_advisory_lock($1, $2)",
                                                   PROCESS_LOCK_CLASS, ready["lock_key"]),
                            "the lock to be free")
        # Long before its lease (60 s) could have run out: the lock says "dead" at once.
        assert time.monotonic() - killed < 60
        print(f"\nadvisory lock free {free * 1000:.0f} ms after kill -9")
    finally:
        await probe.close()


async def test_a_killed_process_turn_is_answered_once_by_another(pg_url, nodes, procs):
    """kill -9 mid-turn: the reaper puts the turn's messages back, a live process takes the
    chat and answers them; the dead turn has no reply.  Prints the takeover time."""
    b = await nodes(lease=30)
    key = _key()
    await b.store.record_inbound(_in("m1"))
    await b.store.record_inbound(_in("m2"))
    proc = _spawn(pg_url, "--lease", "30", "--chat", key, "--hold-claim", key)
    procs.append(proc)
    ready = await _event(proc, "ready")
    dead_turn = ready["turn"]
    assert dead_turn is not None
    assert not await b.coord.acquire(key)
    assert [s for _d, s, _t in await _statuses(b.store, key)] == ["processing", "processing"]

    killed = time.monotonic()
    os.kill(proc.pid, signal.SIGKILL)
    await _until(lambda: b.coord.acquire(key), "the chat to be free")
    claim = await b.store.claim_next(key)
    took = time.monotonic() - killed
    assert [m.platform_message_id for m in claim.messages] == ["m1", "m2"]
    await b.store.finish_turn(claim.turn_id, reply="answer")
    assert await _turn_status(b.store, dead_turn) == "interrupted"
    replies = await _fetch(b.store, "SELECT turn_id FROM messages WHERE direction = 'out'")
    assert [r[0] for r in replies] == [claim.turn_id]  # one reply, from the live process
    print(f"\nchat taken over and claimed {took:.2f} s after kill -9 (lease 30 s)")


async def test_leader_taken_over_after_its_owner_is_killed(pg_url, nodes, procs):
    name = "telegram/default:poll"
    b = await nodes(lease=30)
    key = _key()
    proc = _spawn(pg_url, "--lease", "30", "--lead", name, "--chat", key)
    procs.append(proc)
    gained = await _event(proc, "gain")
    assert gained["epoch"] == 1
    await _event(proc, "ready")

    events: list[tuple[str, int | None]] = []
    got = asyncio.Event()

    async def gain(epoch: int) -> None:
        events.append(("gain", epoch))
        got.set()

    async def lose() -> None:
        events.append(("lose", None))

    assert not await b.coord.lead(name, gain, lose)  # held by the other process
    assert not b.coord.holds(name)
    with pytest.raises(Lost):
        b.coord.check_leader(name)

    killed = time.monotonic()
    os.kill(proc.pid, signal.SIGKILL)
    await asyncio.wait_for(got.wait(), HANG_GUARD_S)
    took = time.monotonic() - killed
    assert events == [("gain", 2)] and b.coord.holds(name)
    rows = await _fetch(b.store, "SELECT owner, epoch FROM leaders WHERE name = ?", name)
    assert [(r[0], r[1]) for r in rows] == [(b.id, 2)]
    assert await b.coord.acquire(key)  # its chats are free too
    status = b.coord.status()
    assert status["leaderships"] == [{"name": name, "epoch": 2}] and status["alive"]
    assert status["process"] == b.id and status["peers"] == []
    print(f"\nleader {name} taken over {took:.2f} s after kill -9 (lease 30 s)")


async def test_stalled_process_is_reaped_and_registers_again(pg_url, nodes, procs):
    """SIGSTOP past the lease: the others reap it (ending its connections) and take its
    leadership; on SIGCONT it finds itself reaped, drops what it led and registers anew."""
    name = "whatsapp/default"
    b = await nodes(lease=3)
    proc = _spawn(pg_url, "--lease", "3", "--lead", name)
    procs.append(proc)
    await _event(proc, "gain")
    old = (await _event(proc, "ready"))["process"]
    got = asyncio.Event()

    async def gain(epoch: int) -> None:
        got.set()

    async def lose() -> None:
        pass

    await b.coord.lead(name, gain, lose)
    stopped = time.monotonic()
    os.kill(proc.pid, signal.SIGSTOP)
    await asyncio.wait_for(got.wait(), HANG_GUARD_S)
    took = time.monotonic() - stopped
    reaped = next(r for r in b.coord.reaped if r.process == old)
    assert reaped.leaderships == (name,)
    assert reaped.terminated >= 1  # its control connection, at least
    os.kill(proc.pid, signal.SIGCONT)
    await _event(proc, "lose")
    again = await _event(proc, "registered")
    assert again["process"] != old
    assert b.coord.holds(name)
    print(f"\nstalled leader taken over {took:.2f} s after SIGSTOP (lease 3 s)")


# ------------------------------------------------------------------- one process


async def test_connect_names_the_pool_like_the_process(tmp_path, pg_url):
    """On PostgreSQL every backend of the process carries its application_name (what the
    reaper ends); on SQLite the coordinator is the single-process one."""
    from bridge.store import coord as coord_mod
    from tests.core.helpers import make_config

    store, coord = await coord_mod.connect(make_config(tmp_path, store={"url": pg_url,
                                                                       "leaseSeconds": 7}))
    try:
        assert isinstance(coord, PgCoordinator) and coord.lease == 7
        await coord.start()
        await store.record_inbound(_in("m1"))  # uses the pool
        rows = await _fetch(store, "SELECT COUNT(*) FROM pg_stat_activity WHERE"
                            " application_name = ?", coord.app_name)
        assert rows[0][0] >= 2  # the control connection and the pool's
        assert coord.process_id and coord.app_name.split(" ")[1] in coord.process_id
    finally:
        await coord.stop()
        await store.close()
    lite, local = await coord_mod.connect(make_config(tmp_path))
    await lite.close()
    assert isinstance(local, LocalCoordinator)


async def test_local_coordinator_owns_and_leads_everything():
    coord = LocalCoordinator()
    calls: list[object] = []

    async def gain(epoch: int) -> None:
        calls.append(epoch)

    async def lose() -> None:
        calls.append("lose")

    assert not await coord.lead("telegram/default:poll", gain, lose)  # not started yet
    await coord.start()
    assert calls == [1] and coord.holds("telegram/default:poll")
    assert await coord.acquire("k") and await coord.release_if_idle("k")
    coord.check_owned("k")
    coord.check_leader("telegram/default:poll")
    await coord.stop()
    assert calls == [1, "lose"] and not coord.holds("telegram/default:poll")
