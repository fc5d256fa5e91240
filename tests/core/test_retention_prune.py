"""Refused and ignored traffic older than store.retentionDays is pruned, at start and
periodically; what was answered stays."""

from __future__ import annotations

import asyncio
import sqlite3
import time

from bridge.config.schema import Config
from bridge.envelope import AcceptStatus
from tests.core.helpers import dm, group, make_config

DAY = 86400.0


def _age(path, session_key: str, days: float) -> None:
    """Make every row of ``session_key`` look ``days`` old (another connection)."""
    db = sqlite3.connect(path)
    try:
        db.execute("UPDATE messages SET created_at = ? WHERE session_key = ?",
                   (time.time() - days * DAY, session_key))
        db.commit()
    finally:
        db.close()


def _strangers_config(tmp_path, **store) -> Config:
    return make_config(tmp_path, channels={"telegram": {
        "dmPolicy": "pairing", "allowFrom": ["42"], "groupPolicy": "open"}},
        **({"store": store} if store else {}))


def test_retention_defaults_to_thirty_days():
    assert Config().store.retentionDays == 30


async def test_old_refused_and_ignored_rows_are_pruned_at_start(harness):
    harness.config = _strangers_config(harness.tmp_path)
    await harness.start()
    old_stranger = dm("hi", sender="900")  # gets a pairing code: an outbound row too
    new_stranger = dm("hi", sender="901")
    chatter = group("not for the bot", mentioned=False)
    friend = dm("hello", sender="42")
    assert await harness.say(old_stranger) is AcceptStatus.REFUSED
    assert await harness.say(new_stranger) is AcceptStatus.REFUSED
    assert await harness.say(chatter) is AcceptStatus.IGNORED
    assert await harness.say(friend) is AcceptStatus.ACCEPTED
    await harness.stop()
    db = harness.tmp_path / "palaver.db"
    for msg in (old_stranger, chatter, friend):
        _age(db, str(msg.session_key), 31)
    _age(db, str(new_stranger.session_key), 29)

    await harness.start()  # prunes at start
    assert await harness.store.messages_for(str(old_stranger.session_key)) == []
    assert await harness.store.messages_for(str(chatter.session_key)) == []
    assert len(await harness.store.messages_for(str(new_stranger.session_key))) == 2
    kept = await harness.store.messages_for(str(friend.session_key))
    assert [m.text for m in kept if m.direction.value == "in"] == ["hello"]


async def test_pruning_runs_periodically_with_the_configured_retention(harness):
    harness.config = _strangers_config(harness.tmp_path, retentionDays=2)
    await harness.start(prune_every_s=0.05)
    stranger = dm("hi", sender="900")
    assert await harness.say(stranger) is AcceptStatus.REFUSED
    _age(harness.tmp_path / "palaver.db", str(stranger.session_key), 3)
    for _ in range(200):
        if not await harness.store.messages_for(str(stranger.session_key)):
            break
        await asyncio.sleep(0.02)
    assert await harness.store.messages_for(str(stranger.session_key)) == []
