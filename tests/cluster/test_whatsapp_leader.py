"""Issue 20: WhatsApp is one process's at a time (the leader of ``whatsapp/default`` in
the database), and another takes over, with the device keys in the same PostgreSQL, when
it dies.

Real ``palaver run`` processes share one PostgreSQL store, their neonize faked
(tests/cluster/whatsapp_member.py) to reach one fake WhatsApp account
(tests/fakes/whatsapp_server.py), which keeps whatsmeow's quirk: a device connecting
again replaces its other connection (``StreamReplaced``).  So two processes connected at
once show in the server's history; none may, except where nothing can prevent it (a
frozen leader's socket).  The tests:

- three processes, one connects; messages from several chats answered exactly once, in
  order; the connected one killed with SIGKILL, what arrives meanwhile waits on
  WhatsApp (unacked), another takes the leadership over, connects with the device from
  PostgreSQL and answers those messages once;
- a frozen (SIGSTOP) leader, replaced by WhatsApp once another leads, stands by when
  thawed and can lead again;
- an ex-leader whose whatsmeow reconnects by itself (its replaced stream's error lost)
  replaces the leader's connection once: the leader connects again;
- a leader killed in the middle of a turn: the new leader answers it from the store.

Each prints its takeover time (no timing asserts).
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.cluster.palaver_cluster import Cluster, Member
from tests.cluster.test_polling_leader import _settled_store, _until
from tests.fakes.neonize_fake import FakeGo
from tests.fakes.whatsapp_server import FakeWhatsApp

NAME = "whatsapp/default"
CHATS = [f"1555000{n:04d}@s.whatsapp.net" for n in (11, 22, 33)]
MEMBERS = 3


@pytest.fixture
async def wa():
    async with FakeWhatsApp() as server:
        yield server


@pytest.fixture
async def wa_cluster(tmp_path, pg_url, models, wa):
    models.default(lambda req: f"ack {req.last_user_text()}")
    cluster = Cluster(tmp_path, pg_url, "1:unused", "http://127.0.0.1:9",
                      models.url_for("openai-completions"), lease_s=3.0, telegram=False,
                      whatsapp_server=wa.address)
    yield cluster
    await cluster.stop_all()


def _link(cluster: Cluster, members: list[Member]) -> None:
    """The device linked in PostgreSQL (``palaver whatsapp login`` on any one process),
    where Palaver has neonize open it (the lib/pq URL of the store, schema ``whatsmeow``).
    Each dataDir gets a copy of it in SQLite too, so a Palaver that did not keep WhatsApp
    in the shared store would connect from every process (and the server would show the
    replaced streams)."""
    from channels.whatsapp.client import session_db_path
    from channels.whatsapp.session import lib_pq_url

    go = FakeGo()
    go.link(lib_pq_url(cluster.pg_url))
    for member in members:
        db = session_db_path(cluster.tmp_path / f"p{member.index}" / "data")
        db.parent.mkdir(parents=True, exist_ok=True)
        go.link(db)


async def _ask_round(wa: FakeWhatsApp, label: str) -> None:
    """One message in every chat, then each chat's answer."""
    before = {chat: len(wa.texts_to(chat)) for chat in CHATS}
    for chat in CHATS:
        wa.inject(chat, f"{label} {chat[5:9]}")
    await wa.wait_until(lambda: all(len(wa.texts_to(c)) > before[c] for c in CHATS),
                        f"every chat answered ({label})")


def _expected(labels: list[str]) -> dict[str, list[str]]:
    return {chat: [f"ack {label} {chat[5:9]}" for label in labels] for chat in CHATS}


async def _two_with_a_leader(cluster: Cluster, wa: FakeWhatsApp,
                             pg_url: str) -> tuple[Member, Member, Any]:
    """Two linked processes started, one connected: (its member, the other, its
    connection), after a first round ("before") answered and settled in the store."""
    members = [cluster.add() for _ in range(2)]
    _link(cluster, members)
    for member in members:
        await cluster.start(member)
    first = await wa.wait_until(lambda: wa.live, "one process connects")
    leader = next(m for m in members if m.pid == first.pid)
    other = next(m for m in members if m is not leader)
    await _ask_round(wa, "before")
    await _settled_store(pg_url)
    return leader, other, first


async def test_one_process_holds_whatsapp_and_another_takes_over_after_kill_9(
        wa_cluster, wa, pg_url):
    cluster: Cluster = wa_cluster
    members = [cluster.add() for _ in range(MEMBERS)]
    _link(cluster, members)
    for member in members:  # one after the other: the first creates the schema
        await cluster.start(member)
    pids = {m.pid: m for m in members}

    async def settled() -> tuple[Member, list[Member], list[dict[str, Any]]] | None:
        """The connected leader and the standbys, once WhatsApp and /healthz agree."""
        assert wa.max_concurrent <= 1, f"two processes connected at once: {wa.history}"
        live = wa.live
        if live is None or live.pid not in pids:
            return None
        healths = [await cluster.health(m) for m in members]
        leading = [i for i, h in enumerate(healths)
                   if NAME in [x["name"] for x in h["cluster"]["leaderships"]]]
        if [members[i].pid for i in leading] != [live.pid]:
            return None
        others = [i for i in range(MEMBERS) if i != leading[0]]
        for i in others:  # their view of the peers is refreshed every 0.5 s
            if [NAME] not in [p["leaderships"] for p in healths[i]["cluster"]["peers"]]:
                return None
        return members[leading[0]], [members[i] for i in others], [healths[i] for i in others]

    leader, standbys, standby_healths = await _until(settled, "one connected leader")
    leader_id = (await cluster.health(leader))["cluster"]["process"]
    for health in standby_healths:
        assert health["cluster"]["leaderships"] == []
        assert [p["id"] for p in health["cluster"]["peers"]
                if p["leaderships"] == [NAME]] == [leader_id]
        channel = health["channels"]["whatsapp"]
        assert channel["connected"] is False and channel.get("standby") is True, channel
        assert channel["detail"].startswith("standby") and leader_id in channel["detail"]

    labels = [f"before{i}" for i in range(3)]
    for label in labels:
        await _ask_round(wa, label)
    assert {chat: wa.texts_to(chat) for chat in CHATS} == _expected(labels)
    assert {s.pid for s in wa.sent} == {leader.pid}
    await _settled_store(pg_url)
    assert wa.kinds() == [("connect", leader.pid)], wa.history
    assert wa.max_concurrent == 1

    cluster.kill(leader)
    killed_at = time.monotonic()
    gap = "gap"
    # While nobody is connected (or the dead socket not yet seen: pushed to it, unacked).
    gap_ids = [wa.inject(chat, f"{gap} {chat[5:9]}") for chat in CHATS]
    assert leader.proc is not None
    await leader.proc.wait()

    def taken_over() -> Any:
        return next((e for e in wa.history if e.kind == "connect" and e.pid != leader.pid),
                    None)

    takeover = await wa.wait_until(taken_over, "another process connects")
    survivor = pids[takeover.pid]
    assert takeover.time > killed_at
    labels.append(gap)
    await wa.wait_until(lambda: all(len(wa.texts_to(c)) == len(labels) for c in CHATS),
                        "the gap's messages answered")
    answered_at = time.monotonic()
    labels.append("after")
    await _ask_round(wa, "after")
    await _settled_store(pg_url)
    assert {chat: wa.texts_to(chat) for chat in CHATS} == _expected(labels)
    assert wa.pending == []
    new = wa.connections[-1]
    assert new.pid == survivor.pid and new.acked[:len(gap_ids)] == gap_ids
    assert {s.pid for s in wa.sent if s.time > killed_at} == {survivor.pid}

    # Never two connections at once: the dead one went, then exactly one other came.
    assert wa.kinds() == [("connect", leader.pid), ("disconnect", leader.pid),
                          ("connect", survivor.pid)], wa.history
    assert wa.max_concurrent == 1 and not any(c.replaced for c in wa.connections)
    health = await cluster.health(survivor)
    assert NAME in [x["name"] for x in health["cluster"]["leaderships"]]
    channel = health["channels"]["whatsapp"]
    assert channel["connected"] is True and "standby" not in channel["detail"], channel
    for other in standbys:
        if other is not survivor:
            still = await cluster.health(other)
            assert "standby" in still["channels"]["whatsapp"]["detail"]
    print(f"\nWhatsApp leader killed (-9): another process connected after "
          f"{takeover.time - killed_at:.2f} s, the gap's {len(CHATS)} messages answered "
          f"after {answered_at - killed_at:.2f} s (leaseSeconds {cluster.lease_s:g}, "
          f"{MEMBERS} processes)")


async def test_a_frozen_leader_is_replaced_stands_by_when_it_thaws_and_can_lead_again(
        wa_cluster, wa, pg_url):
    """SIGSTOP, not SIGKILL: the frozen leader's socket stays up, so when another
    process takes the leadership over (the lease ran out) WhatsApp sees two connections
    of the device and replaces the frozen one (the one overlap nobody can prevent; the
    frozen process cannot disconnect).  The messages WhatsApp had pushed to the frozen
    socket were never acked: they come again to the new leader.  Thawed, the old leader
    reads what waited in its socket (those messages, then the replaced stream) and
    must neither answer them again nor stay halted: it stands by, and takes over again
    (a fresh session) when the new leader is killed."""
    cluster: Cluster = wa_cluster
    frozen, other, _first = await _two_with_a_leader(cluster, wa, pg_url)

    await cluster.frozen(frozen)  # stopped before anything is pushed to its socket
    frozen_at = time.monotonic()
    gap_ids = [wa.inject(chat, f"frozen {chat[5:9]}") for chat in CHATS]
    takeover = await wa.wait_until(
        lambda: next((e for e in wa.history if e.kind == "connect" and e.pid == other.pid),
                     None), "the other process connects")
    await wa.wait_until(lambda: all(len(wa.texts_to(c)) == 2 for c in CHATS),
                        "the frozen socket's messages answered by the new leader")
    assert wa.kinds() == [("connect", frozen.pid), ("replaced", frozen.pid),
                          ("connect", other.pid)], wa.history
    assert wa.connections[0].delivered[-len(gap_ids):] == gap_ids  # pushed, never acked
    assert wa.connections[1].acked[:len(gap_ids)] == gap_ids

    cluster.thaw(frozen)

    async def standing_by() -> dict[str, Any] | None:
        health = await cluster.health(frozen)
        channel = health["channels"]["whatsapp"]
        return health if (health["cluster"]["alive"] and channel.get("standby")
                          and channel["detail"].startswith("standby")) else None

    await _until(standing_by, "the thawed process stands by")
    await _ask_round(wa, "thawed")
    await _settled_store(pg_url)
    assert {s.pid for s in wa.sent if s.time > frozen_at} == {other.pid}
    assert {chat: wa.texts_to(chat) for chat in CHATS} == _expected(
        ["before", "frozen", "thawed"])

    cluster.kill(other)
    killed_at = time.monotonic()
    again = await wa.wait_until(
        lambda: next((e for e in wa.history[3:] if e.kind == "connect"), None),
        "the thawed process connects again")
    assert again.pid == frozen.pid
    await _ask_round(wa, "again")
    await _settled_store(pg_url)
    assert {chat: wa.texts_to(chat) for chat in CHATS} == _expected(
        ["before", "frozen", "thawed", "again"])
    assert wa.kinds() == [("connect", frozen.pid), ("replaced", frozen.pid),
                          ("connect", other.pid), ("disconnect", other.pid),
                          ("connect", frozen.pid)], wa.history
    print(f"\nWhatsApp leader frozen (SIGSTOP): the other connected after "
          f"{takeover.time - frozen_at:.2f} s (leaseSeconds {cluster.lease_s:g}); "
          f"the thawed one took over again {again.time - killed_at:.2f} s after a kill -9")


async def test_an_ex_leader_that_reconnects_by_itself_does_not_take_whatsapp_from_the_leader(
        wa_cluster, wa, pg_url):
    """A leader cut off (frozen here) whose replaced stream's error never reaches it (a
    partition): when it runs again it sees only its socket gone, an unexpected
    disconnect, and whatsmeow reconnects by itself at once (``autoReconnect``, no delay
    the first time, nothing asked of Python) — before its heartbeat tells it that it
    lost the leadership.  That connection replaces the new leader's.  The cluster must
    still end with its leader connected: the messages of the next round answered once."""
    cluster: Cluster = wa_cluster
    old, new, first = await _two_with_a_leader(cluster, wa, pg_url)

    wa.lost_stream_errors.add(first.index)
    await cluster.frozen(old)
    await wa.wait_until(lambda: any(e.kind == "connect" and e.pid == new.pid
                                    for e in wa.history), "the new leader connects")
    await _ask_round(wa, "taken over")
    cluster.thaw(old)
    await wa.wait_until(lambda: len([e for e in wa.history if e.kind == "connect"]) >= 3,
                        "the old leader's whatsmeow reconnects")
    intruder = wa.connections[2]
    assert intruder.pid == old.pid, wa.history
    # The leader connects again (after its backoff) once the old one stood down.
    back = await wa.wait_until(lambda: wa.live if wa.live is not None and wa.live.pid ==
                               new.pid and wa.live.index > 2 else None,
                               "the leader connected again", limit_s=30)
    await _ask_round(wa, "after")
    await _settled_store(pg_url)
    assert {chat: wa.texts_to(chat) for chat in CHATS} == _expected(
        ["before", "taken over", "after"])
    assert wa.live is not None and wa.live.pid == new.pid, wa.history
    print(f"\nex-leader's whatsmeow reconnected by itself and replaced the leader; the "
          f"leader was connected again {back.opened - intruder.opened:.2f} s later")


async def test_a_turn_cut_by_kill_9_is_answered_once_by_the_new_leader(
        wa_cluster, wa, models, pg_url):
    """Killed in the middle of a turn (its model call hanging): WhatsApp has the message
    acked by the dead process and never delivers it again, so the answer must come from
    the store, where the dead process put it before asking the model: the new leader
    takes the interrupted turn over and answers it once, through its own connection."""
    cluster: Cluster = wa_cluster
    leader, survivor, first = await _two_with_a_leader(cluster, wa, pg_url)

    asked = len(models.requests)
    models.hang()  # the leader's next model call is accepted and never answered
    chat = CHATS[0]
    mid = wa.inject(chat, f"mid {chat[5:9]}")
    await models.wait_requests(asked + 1)
    await wa.wait_until(lambda: wa.pending == [], "the message acked")
    assert first.acked[-1] == mid  # WhatsApp is done with it

    cluster.kill(leader)
    killed_at = time.monotonic()
    await wa.wait_until(lambda: len(wa.texts_to(chat)) == 2, "the cut turn answered")
    answered_at = time.monotonic()
    await _settled_store(pg_url)
    assert wa.texts_to(chat) == [f"ack before {chat[5:9]}", f"ack mid {chat[5:9]}"]
    assert [c.pid for c in wa.connections] == [leader.pid, survivor.pid]
    assert mid not in wa.connections[1].delivered  # answered from the store
    assert [s.pid for s in wa.sent if s.to == chat][-1] == survivor.pid
    print(f"\nWhatsApp leader killed (-9) mid-turn: the turn was answered by the new "
          f"leader {answered_at - killed_at:.2f} s later")
