"""``palaver store migrate``: a SQLite store copied into an empty PostgreSQL database,
verified, ids kept and sequences moved past them; refused or rolled back otherwise."""

from __future__ import annotations

import pytest

from bridge.envelope import ChatAddress, ChatKind, Inbound, MediaKind, MediaRef
from bridge.models.base import Usage
from bridge.ports import PreviewKey, PreviewMode
from bridge.store import Store, load_migrations
from bridge.store import copy as copy_mod
from bridge.store.copy import NOT_COPIED, CopyError, copy_to_postgres
from bridge.store.transcripts import TranscriptQueries
from bridge.store.usage import UsageQueries, UsageRow, record_admission_tx, record_notice_tx

DM = ChatAddress("telegram", "default", "42", ChatKind.DIRECT)


async def _populated(path) -> Store:
    """A store with a row in every table, written through the real Store API."""
    store = await Store.open(path)
    photo = MediaRef(MediaKind.IMAGE, media_id="m" * 64, mime="image/jpeg", size=10)
    for i in range(3):
        await store.record_inbound(Inbound(DM, "42", f"p{i}", 1.0, text=f"hello {i}",
                                           media=(photo,) if i == 0 else ()))
        claim = await store.claim_next(str(Inbound(DM, "42", "x", 1.0).session_key))
        reply = await store.finish_turn(claim.turn_id, reply=f"answer {i}",
                                        usage=Usage(input_tokens=3, output_tokens=4))
        await store.record_chunk_sent(reply.id, 0, f"42:{100 + i}")
        await store.mark_delivered(reply.id, [f"42:{100 + i}"])
        await store.save_preview(claim.turn_id, DM, PreviewKey(PreviewMode.EDIT, f"42:{i}"))
    key = str(Inbound(DM, "42", "x", 1.0).session_key)
    session = await store.active_session(key)
    await store.save_summary(session.id, "a summary", claim.turn_id)
    request, _ = await store.pairing_code_for("telegram", "default", "7", "Ann",
                                              new_code=lambda: "ABCDEFGH", ttl_s=600,
                                              max_pending=3)
    await store.pairing_code_for("telegram", "default", "8", "Bob",
                                 new_code=lambda: "ZYXWVUTS", ttl_s=600, max_pending=3)
    await store.approve_pairing("telegram", request.code)
    await store.set_chat_setting(key, "model", "p/m")
    await store.kv_set("whatsapp.lid", "1@lid", "2@s.whatsapp.net")
    await UsageQueries(store).record_usage([UsageRow(
        at=1.0, session_key=key, channel="telegram", account="default", chat_id="42",
        chat_kind="direct", thread_id=None, sender_id="42", turn_id=claim.turn_id,
        purpose="reply", model_ref="p/m", provider="p", input_tokens=3, output_tokens=4,
        reasoning_tokens=0, cached_tokens=0, cache_write_tokens=0, cost_usd=0.25,
        estimated=False)])
    await store.atomically(record_admission_tx(channel="telegram", account="default",
                                               message_id="p0", session_key=key,
                                               sender_id="42", at=1.5))

    def notice():
        yield from record_notice_tx(key, "chat", "messagesPerMinute", 99.0, 2.0)

    await store.atomically(notice())
    await TranscriptQueries(store).put(photo.media_id, "ok", text="said", message_id=1)
    return store


async def _pg_rows(url: str, sql: str):
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        return await conn.fetch(sql)
    finally:
        await conn.close()


async def test_store_migrate_copies_and_verifies(tmp_path, pg_url):
    source = await _populated(tmp_path / "p.db")
    try:
        results = await copy_to_postgres(source, pg_url)
        counts = {r.name: r.target for r in results}
        assert all(r.ok and r.source == r.target for r in results)
        # Every table was non-empty, so the test really copied each one.
        assert all(n > 0 for n in counts.values()), counts
        messages = await source.messages_for(str(Inbound(DM, "42", "x", 1.0).session_key))
    finally:
        await source.close()
    target = await Store.open_url(pg_url)
    try:
        key = str(Inbound(DM, "42", "x", 1.0).session_key)
        assert await target.messages_for(key) == messages
        assert await target.chat_setting(key, "model") == "p/m"
        assert await target.is_approved("telegram", ["7"])
        # New rows get fresh ids: the sequences were moved past the copied ones.
        new_id = await target.record_inbound(Inbound(DM, "42", "after", 1.0, text="new"))
        assert new_id == max(m.id for m in messages) + 1
        claim = await target.claim_next(key)
        assert claim.turn_id > max(m.turn_id or 0 for m in messages)
        await target.finish_turn(claim.turn_id, reply="fine")
        assert await target.schema_version() == len(load_migrations("postgresql"))
    finally:
        await target.close()


async def test_a_target_that_is_not_empty_is_refused(tmp_path, pg_url):
    source = await _populated(tmp_path / "p.db")
    try:
        await copy_to_postgres(source, pg_url)
        with pytest.raises(CopyError, match="already holds data"):
            await copy_to_postgres(source, pg_url)
    finally:
        await source.close()


async def test_a_foreign_database_is_refused(tmp_path, pg_url):
    await _pg_rows(pg_url, "CREATE TABLE accounts (id INTEGER)")
    source = await Store.open(tmp_path / "p.db")
    try:
        with pytest.raises(CopyError, match="not empty"):
            await copy_to_postgres(source, pg_url)
    finally:
        await source.close()


async def test_a_mismatch_rolls_the_whole_copy_back(tmp_path, pg_url, monkeypatch):
    real = copy_mod.write_rows

    async def drop_one(conn, plan, rows):
        # A row nothing refers to (an inbound without a transcript), so only the
        # verification can notice.
        await real(conn, plan, rows[:2] + rows[3:] if plan.name == "messages" else rows)

    monkeypatch.setattr(copy_mod, "write_rows", drop_one)
    source = await _populated(tmp_path / "p.db")
    try:
        with pytest.raises(CopyError, match="did not verify.*messages"):
            await copy_to_postgres(source, pg_url)
    finally:
        await source.close()
    for table in ("sessions", "turns", "messages", "kv"):
        assert (await _pg_rows(pg_url, f"SELECT COUNT(*) FROM {table}"))[0][0] == 0
    # Nothing committed but the empty schema: the copy may simply be run again.
    monkeypatch.setattr(copy_mod, "write_rows", real)
    source = await Store.open(tmp_path / "p.db")
    try:
        assert all(r.ok for r in await copy_to_postgres(source, pg_url))
    finally:
        await source.close()


async def test_copy_rules_cover_every_table(tmp_path, pg_url):
    """A table added to the schema without being copyable fails here, not for the
    operator: the plan covers every PostgreSQL table but the ones never copied."""
    import asyncpg

    source = await Store.open(tmp_path / "p.db")
    target = await Store.open_url(pg_url)
    await target.close()
    conn = await asyncpg.connect(pg_url)
    try:
        plans = await copy_mod.copy_plan(source, conn)
        tables = {r[0] for r in await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    finally:
        await conn.close()
        await source.close()
    assert {p.name for p in plans} == tables - NOT_COPIED
    names = [p.name for p in plans]
    # Parents before children.
    assert names.index("sessions") < names.index("turns") < names.index("messages")
    assert names.index("messages") < names.index("reply_chunks")


def test_migrate_command_refuses_a_url_that_is_not_postgresql(tmp_path, capsys):
    from types import SimpleNamespace

    lines: list[str] = []
    code = copy_mod.migrate_command(SimpleNamespace(data_dir=tmp_path), "mysql://x/y",
                                    out=lines.append)
    assert code == 1 and "postgresql://" in lines[0]


async def test_a_failing_copy_is_a_copy_error_and_commits_nothing(tmp_path, pg_url,
                                                                  monkeypatch):
    async def broken(conn, plan, rows):
        await conn.execute("SELECT 1/0")

    monkeypatch.setattr(copy_mod, "write_rows", broken)
    source = await _populated(tmp_path / "p.db")
    try:
        with pytest.raises(CopyError, match="nothing was committed"):
            await copy_to_postgres(source, pg_url)
    finally:
        await source.close()
    assert (await _pg_rows(pg_url, "SELECT COUNT(*) FROM sessions"))[0][0] == 0


async def test_migrate_command_copies_a_data_dir_and_prints_the_table(tmp_path, pg_url):
    import asyncio
    from types import SimpleNamespace

    source = await _populated(tmp_path / "palaver.db")
    await source.close()
    lines: list[str] = []
    code = await asyncio.to_thread(copy_mod.migrate_command,
                                   SimpleNamespace(data_dir=tmp_path), pg_url,
                                   out=lines.append)
    assert code == 0, lines
    table = lines[0].splitlines()
    assert table[0].split() == ["table", "source", "target", "ok"]
    assert any(line.split()[:1] == ["messages"] and line.split()[-1] == "yes"
               for line in table)
    assert "***" not in lines[-1] and "store.url" in lines[-1]
    # Again: the target holds data now, so it is refused (exit 1, told why).
    lines.clear()
    code = await asyncio.to_thread(copy_mod.migrate_command,
                                   SimpleNamespace(data_dir=tmp_path), pg_url,
                                   out=lines.append)
    assert code == 1 and "already holds data" in lines[0]


def test_migrate_command_refuses_while_palaver_runs(tmp_path):
    from types import SimpleNamespace

    from bridge.lock import run_lock

    (tmp_path / "palaver.db").write_bytes(b"")
    lock = run_lock(tmp_path)
    lock.acquire()
    try:
        lines: list[str] = []
        code = copy_mod.migrate_command(SimpleNamespace(data_dir=tmp_path),
                                        "postgresql://u@127.0.0.1:9/x", out=lines.append)
    finally:
        lock.release()
    assert code == 1 and "already in use" in lines[0]


def test_palaver_store_migrate_is_a_command(tmp_path, capsys):
    from bridge.cli import main

    config = tmp_path / "palaver.json5"
    config.write_text('{ dataDir: "%s" }' % (tmp_path / "data"))
    code = main(["store", "migrate", "--config", str(config), "--to", "mysql://x/y"])
    out = capsys.readouterr()
    assert code == 1 and "postgresql://" in out.out + out.err
