"""Issue 20, stage D: Telegram polling is one process's at a time (the leader of
``telegram/default:poll`` in the database), and another takes over when it dies.

Two real ``palaver run`` processes on one PostgreSQL store poll the fake Bot API.  The
fake answers 409 ``Conflict: terminated by other getUpdates request`` to a long poll that
a second getUpdates overtakes, as Telegram does (tests/fakes/telegram_api.py), so two
pollers at once would show as 409s: none may appear while both live.  Then the leader is
killed with SIGKILL; the other one takes the leadership over (its reaper sees the dead
process's connection gone, not waiting for the lease), polls, and answers a new message.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tests.cluster.palaver_cluster import Cluster, Member

NAME = "telegram/default:poll"
CHAT = 4242
CONFLICT = "Conflict: terminated by other getUpdates request"
HANG_GUARD_S = 60.0  # only against a hang: a loaded 2-core machine


class _Sink:
    """Takes every message (what the core does once it stored one)."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    async def admits(self, inbound) -> bool:
        return True

    async def accept(self, inbound):
        from bridge.envelope import AcceptStatus

        self.texts.append(inbound.text)
        return AcceptStatus.ACCEPTED

    def channel_ready(self, channel) -> None:
        pass


async def test_the_channel_polls_only_while_leading_and_asks_before_each_getupdates(
        fake, tmp_path):
    """One process, no database: what the app does with the coordinator's callbacks."""
    from bridge.config.schema import TelegramConfig
    from bridge.media import MediaStore
    from bridge.store.coord import Lost
    from channels.telegram import TelegramChannel

    channel = TelegramChannel(TelegramConfig(botToken=fake.token, apiRoot=fake.url),
                              media=MediaStore(tmp_path / "media"), data_dir=tmp_path)
    channel.poll_timeout = 1
    channel.poll_backoff_base = 0.05
    asked: list[bool] = []
    leading = {"ok": False}

    def check() -> None:
        asked.append(leading["ok"])
        if not leading["ok"]:
            raise Lost(f"leadership {NAME} is not this process's")

    assert channel.poll_leadership == NAME
    channel.follow_leader(check)
    sink = _Sink()
    await channel.start(sink)
    try:
        assert channel.health().connected and "standby" in channel.health().detail
        assert fake.calls_to("getUpdates") == []  # connected, sending works: not polling
        # Started as leader, but the check refuses (a late heartbeat): no getUpdates.
        await channel.start_leading()
        async def asked_thrice() -> bool:
            return len(asked) >= 3
        await _until(asked_thrice, "the check asked before polling")
        assert fake.calls_to("getUpdates") == [] and not any(asked)
        leading["ok"] = True
        fake.push_text(CHAT, CHAT, "hello leader")
        await fake.wait_until(lambda: sink.texts == ["hello leader"], timeout=HANG_GUARD_S)
        assert "standby" not in channel.health().detail
        # Lost: the loop stops at once, and confirms nothing (the new leader would get
        # a 409 for it).
        polls = len(fake.calls_to("getUpdates"))
        await channel.stop_leading()
        assert len(fake.calls_to("getUpdates")) == polls
        assert "standby" in channel.health().detail
    finally:
        await channel.stop()


@pytest.fixture
async def polling_cluster(tmp_path, pg_url, fake, models):
    models.default(lambda req: f"ack {req.last_user_text()}")
    cluster = Cluster(tmp_path, pg_url, fake.token, fake.url,
                      models.url_for("openai-completions"), lease_s=3.0, mode="polling")
    yield cluster
    await cluster.stop_all()


@pytest.fixture
def conflicts(fake, monkeypatch) -> list[tuple[float, str]]:
    """Every 409 the fake answers a getUpdates overtaken by another (time, text)."""
    seen: list[tuple[float, str]] = []
    answer = fake._error

    def counting(err):
        if err.code == 409 and CONFLICT in err.description:
            seen.append((time.monotonic(), err.description))
        return answer(err)

    monkeypatch.setattr(fake, "_error", counting)
    return seen


async def _until(check, what: str) -> Any:
    """Poll ``check()`` (async) until it returns something truthy (a hang guard only)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + HANG_GUARD_S
    while True:
        got = await check()
        if got:
            return got
        assert loop.time() < deadline, f"not in {HANG_GUARD_S:.0f} s: {what}"
        await asyncio.sleep(0.1)


def _replies(fake) -> list[str]:
    return [str(c.params["text"]) for c in fake.calls_to("sendMessage")
            if int(c.params["chat_id"]) == CHAT]


async def _ask(fake, text: str) -> None:
    """A message in the chat, and its answer from whichever process polls."""
    n = len(_replies(fake))
    fake.push_text(CHAT, CHAT, text)
    await fake.wait_until(lambda: len(_replies(fake)) > n, timeout=HANG_GUARD_S)
    assert _replies(fake)[n:] == [f"ack {text}"]


async def _settled_store(pg_url: str) -> None:
    """Until every message is answered and every reply recorded as sent: a reply sent but
    not yet recorded when its process dies is sent again by the next one (the one
    ambiguity docs/design/postgres.md §5.3 names), which is not what this test is about."""
    import asyncpg

    conn = await asyncpg.connect(pg_url)
    try:
        async def settled() -> bool:
            return bool(await conn.fetchval(
                "SELECT count(*) = 0 FROM messages WHERE (direction = 'in' AND status"
                " <> 'answered') OR (direction = 'out' AND status <> 'sent')"))
        await _until(settled, "every reply recorded as sent")
    finally:
        await conn.close()


async def test_one_process_polls_and_another_takes_over_after_kill_9(
        polling_cluster, fake, pg_url, conflicts):
    cluster: Cluster = polling_cluster
    members = [cluster.add() for _ in range(2)]
    for member in members:  # one after the other: the first creates the schema
        await cluster.start(member)

    async def settled() -> tuple[Member, Member, dict[str, Any]] | None:
        """The leader and the standby, once each one's /healthz says so."""
        healths = [await cluster.health(m) for m in members]
        leading = [i for i, h in enumerate(healths)
                   if [x["name"] for x in h["cluster"]["leaderships"]] == [NAME]]
        if len(leading) != 1:
            return None
        standby = healths[1 - leading[0]]
        if [p["leaderships"] for p in standby["cluster"]["peers"]] != [[NAME]]:
            return None  # its view of the peers is refreshed every 0.5 s
        return members[leading[0]], members[1 - leading[0]], standby

    leader, survivor, standby_health = await _until(settled, "one leader, one standby")
    assert standby_health["cluster"]["leaderships"] == []
    channel = standby_health["channels"]["telegram"]
    assert channel["connected"] is True and "standby" in channel["detail"], channel

    # Several exchanges, each making the leader poll again: a second poller would
    # overtake the leader's long poll (or be overtaken) and the fake would answer 409.
    for i in range(3):
        await _ask(fake, f"before {i}")
    assert conflicts == []
    await _settled_store(pg_url)
    polls_before = len(fake.calls_to("getUpdates"))

    cluster.kill(leader)
    killed_at = time.monotonic()
    assert leader.proc is not None
    await leader.proc.wait()

    async def polled_again() -> float | None:
        after = [c.time for c in fake.calls_to("getUpdates")[polls_before:]
                 if c.time > killed_at]
        return after[0] if after else None

    first_poll = await _until(polled_again, "the survivor polls")
    await _ask(fake, "after the kill")

    health = await cluster.health(survivor)
    assert health["cluster"]["leaderships"] == [{"name": NAME, "epoch": 2}]
    assert health["cluster"]["peers"] == []
    assert "standby" not in health["channels"]["telegram"]["detail"]
    # Taken over at once, from the dead process's connection going, not its lease.
    log = survivor.log_path.read_text(errors="replace")
    assert "connection gone" in log and NAME in log
    # The survivor never got a 409.  The fake may have answered one: to the killed
    # process's long poll still open there, overtaken by the survivor's first call.
    assert "409 Conflict" not in log
    assert all(t >= first_poll for t, _ in conflicts) and len(conflicts) <= 1, conflicts
    assert _replies(fake) == [f"ack before {i}" for i in range(3)] + ["ack after the kill"]
    print(f"\npolling leader killed (-9): the other process polled after "
          f"{first_poll - killed_at:.2f} s (leaseSeconds {cluster.lease_s:g}); "
          f"{len(conflicts)} 409 to the dead process's open poll, none to a live one")
