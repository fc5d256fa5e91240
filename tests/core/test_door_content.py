"""The door: invisible-only messages are empty, strangers' traffic is kept without its
text, its log lines are rate limited, and a store that cannot write makes accept() raise
StoreUnavailable (after its own retries) instead of losing the message."""

from __future__ import annotations

import logging
import sqlite3

import pytest

from bridge.envelope import AcceptStatus, MediaKind, MediaRef
from bridge.ports import StoreUnavailable
from bridge.store import MessageStatus, Store
from bridge.store.db import StoreUnavailableError
from tests.core.helpers import dm, group, make_config

INVISIBLE = ["\u200b", "\u200b\u200c\u200d\ufeff", "\x00", "\x00\x00\u2060", " \u200b\t\n "]


@pytest.mark.parametrize("text", INVISIBLE)
async def test_invisible_only_message_is_empty(harness, text):
    await harness.start()
    msg = dm(text)
    assert await harness.core.admits(msg) is False
    assert await harness.say(msg) is AcceptStatus.IGNORED
    assert harness.router.calls == []  # never sent to a model
    (row,) = await harness.store.messages_for(str(msg.session_key))
    assert row.status is MessageStatus.IGNORED and row.reason == "empty message"


async def test_visible_text_with_invisible_characters_is_answered(harness):
    await harness.start()
    msg = dm("\u200bhi\x00")
    assert await harness.core.admits(msg) is True
    assert await harness.say(msg) is AcceptStatus.ACCEPTED
    assert len(harness.router.calls) == 1


async def test_refused_and_ignored_rows_keep_no_text_nor_media(harness):
    harness.config = make_config(harness.tmp_path, channels={"telegram": {
        "dmPolicy": "allowlist", "allowFrom": ["42"], "groupPolicy": "open",
        # With context off (the context rule is tests/core/test_group_context.py).
        "groups": {"*": {"groupContextMessages": 0}}}})
    await harness.start()
    photo = MediaRef(kind=MediaKind.IMAGE, media_id="sha256-abc", mime="image/jpeg", size=10)
    stranger = dm("my secret address is 1 Main St", sender="999", media=(photo,))
    assert await harness.say(stranger) is AcceptStatus.REFUSED
    chatter = group("talk not for the bot", mentioned=False)
    assert await harness.say(chatter) is AcceptStatus.IGNORED
    (refused,) = await harness.store.messages_for(str(stranger.session_key))
    assert refused.status is MessageStatus.REFUSED
    assert refused.text == "" and refused.media == () and refused.quoted is None
    assert refused.sender_id == "999" and refused.reason  # who, and why, are kept
    (ignored,) = await harness.store.messages_for(str(chatter.session_key))
    assert ignored.status is MessageStatus.IGNORED and ignored.text == ""
    # What is answered keeps its text.
    friend = dm("hello", sender="42")
    assert await harness.say(friend) is AcceptStatus.ACCEPTED
    rows = await harness.store.messages_for(str(friend.session_key))
    assert rows[0].text == "hello"


async def test_refused_log_lines_are_rate_limited(harness, caplog):
    harness.config = make_config(harness.tmp_path, channels={"telegram": {
        "dmPolicy": "allowlist", "allowFrom": ["42"]}})
    await harness.start()
    harness.core._door_log.window_s = 0.2
    caplog.set_level(logging.INFO, logger="bridge.conversation")
    for i in range(30):
        assert await harness.say(dm(f"spam {i}", sender=str(1000 + i))) is AcceptStatus.REFUSED
    lines = [r.getMessage() for r in caplog.records
             if r.name == "bridge.conversation" and "refused" in r.getMessage()]
    assert len(lines) == 1 and "spam" not in lines[0]
    await harness.core.stop(grace=0)  # flushes the open window: one summary line
    lines = [r.getMessage() for r in caplog.records
             if r.name == "bridge.conversation" and "refused" in r.getMessage()]
    assert len(lines) == 2 and "29 more" in lines[1]


def _full_disk(monkeypatch, state):
    real = Store.record_inbound

    async def record_inbound(self, *args, **kwargs):
        state["calls"] += 1
        if state["full"]:
            raise StoreUnavailableError("disk full")
        return await real(self, *args, **kwargs)

    monkeypatch.setattr(Store, "record_inbound", record_inbound)


async def test_disk_full_raises_store_unavailable_then_recovers(harness, monkeypatch, caplog):
    state = {"full": True, "calls": 0}
    _full_disk(monkeypatch, state)
    await harness.start(store_retry_delays=(0, 0))
    caplog.set_level(logging.INFO, logger="bridge.conversation")
    first, second = dm("one"), dm("two")
    for msg in (first, second):
        with pytest.raises(StoreUnavailable) as info:
            await harness.core.accept(msg)
        assert info.value.reason == "disk full"
    assert state["calls"] == 6  # three tries each (the core's own retries)
    assert harness.core.store_problem == "disk full"
    assert harness.router.calls == []
    state["full"] = False
    assert await harness.say(first) is AcceptStatus.ACCEPTED
    assert await harness.say(second) is AcceptStatus.ACCEPTED
    assert harness.core.store_problem is None
    outage = [r for r in caplog.records
              if r.name == "bridge.conversation" and "store" in r.getMessage()]
    assert [r.levelno for r in outage] == [logging.WARNING, logging.INFO]  # not one per message


async def test_a_bug_is_not_a_store_outage(harness, monkeypatch):
    async def record_inbound(self, *args, **kwargs):
        raise sqlite3.IntegrityError("CHECK constraint failed")

    monkeypatch.setattr(Store, "record_inbound", record_inbound)
    await harness.start(store_retry_delays=(0, 0))
    with pytest.raises(sqlite3.IntegrityError):
        await harness.core.accept(dm("x"))
    assert harness.core.store_problem is None
