"""Transcripts in the store: kept per media id, read back for a history window in one
query, an ok transcript never replaced, migrated installs equal fresh ones."""

from __future__ import annotations

import sqlite3

import pytest

from bridge.envelope import ChatAddress, ChatKind, Inbound, MediaKind, MediaRef
from bridge.store import Store, load_migrations
from bridge.store.sql import run_body
from bridge.store.transcripts import TranscriptQueries

# ``store`` (tests/conftest.py): each test on SQLite, then on PostgreSQL.


def _inbound(mid: str = "m1", media_id: str = "abc") -> Inbound:
    return Inbound(ChatAddress("telegram", "default", "1", ChatKind.DIRECT), "1", mid, 0.0,
                   media=(MediaRef(MediaKind.VOICE, media_id, "audio/ogg", duration_s=3.0),))


async def test_put_and_read_back(store):
    row_id = await store.record_inbound(_inbound())
    q = TranscriptQueries(store)
    assert await q.get("abc") is None
    assert await q.put("abc", "ok", text="hello there", model_ref="local/whisper-1",
                       language="en", duration_s=3.0, message_id=row_id, now=10.0)
    got = await q.get("abc")
    assert got is not None and got.ok
    assert (got.text, got.model_ref, got.language, got.duration_s, got.message_id) == (
        "hello there", "local/whisper-1", "en", 3.0, row_id)
    assert [t.media_id for t in await q.for_message(row_id)] == ["abc"]


async def test_ok_is_final_and_failures_are_replaced(store):
    q = TranscriptQueries(store)
    assert await q.put("v1", "failed", reason="the transcription service failed", now=1.0)
    assert (await q.get("v1")).status == "failed"
    assert await q.put("v1", "ok", text="second try", model_ref="b/w", now=2.0)
    assert not await q.put("v1", "failed", reason="down again", now=3.0)
    got = await q.get("v1")
    assert (got.status, got.text, got.reason, got.created_at, got.updated_at) == (
        "ok", "second try", "", 1.0, 2.0)


async def test_failed_outcomes_keep_no_text(store):
    q = TranscriptQueries(store)
    await q.put("v2", "too_long", text="ignored", reason="400 s is over the 300 s limit")
    got = await q.get("v2")
    assert (got.status, got.text) == ("too_long", "")
    with pytest.raises(ValueError):
        await q.put("v3", "maybe")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        await q.put("", "ok")


async def test_many_reads_a_history_window_at_once(store):
    q = TranscriptQueries(store)
    for i in range(0, 1200, 100):
        await q.put(f"id{i}", "ok", text=f"t{i}")
    # 1202 ids asked: more than one chunk of host parameters.
    found = await q.many([f"id{i}" for i in range(1200)] + [None, "missing"])
    assert sorted(found) == sorted(f"id{i}" for i in range(0, 1200, 100))
    assert found["id300"].text == "t300"
    assert await q.many([]) == {} and await q.many([None]) == {}


async def test_message_deleted_keeps_the_transcript(store, open_store):
    row_id = await store.record_inbound(_inbound())
    q = TranscriptQueries(store)
    await q.put("abc", "ok", text="x", message_id=row_id)
    await store.atomically(run_body("DELETE FROM messages WHERE id = ?", row_id))
    reopened = await open_store()
    got = await TranscriptQueries(reopened).get("abc")
    assert got is not None and got.message_id is None and got.text == "x"


async def test_upgrade_from_0005_adds_the_table(tmp_path):
    path = tmp_path / "old.db"
    before = [m for m in load_migrations() if m.version <= 5]
    old = await Store.open(path, migrations=before)
    await old.close()
    # Written as that Palaver wrote it: today's queries may use columns added since.
    conn = sqlite3.connect(path)
    conn.execute(
        "INSERT INTO messages (direction, role, session_key, channel, account, chat_id,"
        " chat_kind, platform_message_id, sender_id, text, status, created_at, updated_at)"
        " VALUES ('in', 'user', 'k', 'telegram', 'default', '1', 'direct', 'm1', '1', 'x',"
        " 'received', 0, 0)")
    conn.commit()
    conn.close()
    upgraded = await Store.open(path)
    try:
        assert await upgraded.schema_version() >= 6
        await TranscriptQueries(upgraded).put("abc", "ok", text="after the upgrade")
        assert (await TranscriptQueries(upgraded).get("abc")).text == "after the upgrade"
    finally:
        await upgraded.close()
