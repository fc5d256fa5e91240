"""``palaver store migrate`` with media: the data dir's files go into ``media_blobs`` in
the same verified transaction, so every process on the new store can read them; damaged
files are left out; a row that does not verify rolls the whole copy back."""

from __future__ import annotations

import asyncio
import os
from types import SimpleNamespace

import asyncpg
import pytest
from PIL import Image

from bridge.envelope import MediaKind
from bridge.media import MediaStore
from bridge.store import Store
from bridge.store import copy as copy_mod
from bridge.store.copy import CopyError, copy_to_postgres, media_files
from tests.media.imaging import encode


async def _rows(url: str, sql: str):
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetch(sql)
    finally:
        await conn.close()


async def _data_dir(tmp_path):
    """A SQLite data dir with a photo, a voice note, a prepared image, a half-written
    file and a damaged file in its media directory."""
    store = await Store.open(tmp_path / "palaver.db")
    await store.close()
    media = MediaStore(tmp_path / "media")
    photo = encode(Image.new("RGB", (40, 30), (9, 99, 199)), "PNG")
    voice = os.urandom(20_000)
    refs = [await media.put(photo, kind=MediaKind.IMAGE, mime="image/png"),
            await media.put(voice, kind=MediaKind.VOICE, mime="audio/ogg")]
    # The same bytes under another extension (sent once as a photo, once as a file).
    same = media.path_for(refs[0].media_id)
    same.with_suffix(".bin").write_bytes(photo)
    # Not media files: prepared images, unfinished writes.
    (tmp_path / "media" / "prepared" / "ab").mkdir(parents=True)
    (tmp_path / "media" / "prepared" / "ab" / ("ab" * 32 + ".10x10.jpg")).write_bytes(b"x")
    (same.parent / ".part-xyz").write_bytes(b"half")
    # Damaged: its content is not what its name says.
    bad = "ee" * 32
    (tmp_path / "media" / "ee").mkdir()
    (tmp_path / "media" / "ee" / f"{bad}.jpg").write_bytes(b"not those bytes")
    return refs, {refs[0].media_id: photo, refs[1].media_id: voice}


def test_media_files_lists_stored_files_once(tmp_path):
    refs, _ = asyncio.run(_data_dir(tmp_path))
    ids = [media_id for media_id, _path in media_files(tmp_path / "media")]
    assert sorted(ids) == sorted({r.media_id for r in refs} | {"ee" * 32})


async def test_migrate_copies_media_and_another_process_reads_them(tmp_path, pg_url):
    refs, contents = await _data_dir(tmp_path)
    lines: list[str] = []
    code = await asyncio.to_thread(copy_mod.migrate_command,
                                   SimpleNamespace(data_dir=tmp_path), pg_url,
                                   out=lines.append)
    assert code == 0, lines
    [media_line] = [line for line in lines[0].splitlines() if line.startswith("media_blobs")]
    assert media_line.split() == ["media_blobs", "2", "2", "yes"]  # the damaged one left out
    rows = {r["id"]: (r["mime"], bytes(r["data"]))
            for r in await _rows(pg_url, "SELECT id, mime, data FROM media_blobs")}
    assert rows == {refs[0].media_id: ("image/png", contents[refs[0].media_id]),
                    refs[1].media_id: ("audio/ogg", contents[refs[1].media_id])}

    store = await Store.open_url(pg_url)
    try:
        elsewhere = MediaStore.for_store(tmp_path / "elsewhere", store)
        for ref in refs:
            assert await elsewhere.read_bytes(ref.media_id) == contents[ref.media_id]
    finally:
        await store.close()


async def test_a_media_row_that_does_not_verify_rolls_everything_back(tmp_path, pg_url,
                                                                      monkeypatch):
    await _data_dir(tmp_path)
    real = copy_mod._read_media

    def flipped(path, media_id):
        data, mtime = real(path, media_id)
        return (None if data is None else data[:-1] + bytes([data[-1] ^ 1])), mtime

    monkeypatch.setattr(copy_mod, "_read_media", flipped)
    source = await Store.open(tmp_path / "palaver.db")
    try:
        with pytest.raises(CopyError, match=r"did not verify.*media_blobs"):
            await copy_to_postgres(source, pg_url, media_dir=tmp_path / "media")
    finally:
        await source.close()
    assert (await _rows(pg_url, "SELECT COUNT(*) FROM media_blobs"))[0][0] == 0


async def test_without_a_media_dir_no_media_result(tmp_path, pg_url):
    await _data_dir(tmp_path)
    source = await Store.open(tmp_path / "palaver.db")
    try:
        results = await copy_to_postgres(source, pg_url)
    finally:
        await source.close()
    assert "media_blobs" not in {r.name for r in results}
    assert (await _rows(pg_url, "SELECT COUNT(*) FROM media_blobs"))[0][0] == 0
