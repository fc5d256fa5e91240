"""Media shared through PostgreSQL: a file one process stored is readable by another
process on the same database with an empty data dir — as the model's image, as a voice
note's audio — fetched once into that process's own directory, in bounded slices;
a missing or damaged row is a clear refusal; SQLite is unchanged."""

from __future__ import annotations

import asyncio
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
from PIL import Image

from bridge import media as media_mod
from bridge.envelope import MediaKind, MediaRef
from bridge.images import ImageLimits, ImageRefused, Refusal
from bridge.media import MediaStore, SharedMediaError, user_parts
from bridge.models.base import ImagePart, TextPart
from bridge.store import Store, StoreUnavailableError
from bridge.store import media_blobs as blobs_mod
from bridge.store.transcripts import TranscriptQueries
from bridge.voice.notes import TranscriptionSettings, VoiceNotes
from bridge.voice.service import InOrder, Transcriber
from tests.fakes.audio_bytes import ogg_opus_bytes
from tests.media.imaging import decode, encode, noise_image
from tests.voice.conftest import audio_model, audio_server, session  # noqa: F401 - fixtures


@dataclass
class Process:
    """One Palaver's view: its own data dir, its own pool on the shared database."""

    store: Store
    media: MediaStore
    root: Path


@pytest.fixture
async def cluster(pg_url, tmp_path):
    opened: list[Store] = []

    async def process(name: str) -> Process:
        store = await Store.open_url(pg_url, pool_size=4)
        opened.append(store)
        root = tmp_path / name / "media"
        return Process(store, MediaStore.for_store(root, store), root)

    yield process
    for store in opened:
        await store.close()


async def _rows(url: str, sql: str, *args):
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def _photo(size=(640, 480), colour=(200, 30, 30)) -> bytes:
    return encode(Image.new("RGB", size, colour), "JPEG")


# ------------------------------------------------------------------ another process reads


async def test_a_photo_put_by_one_process_reaches_the_model_through_another(cluster,
                                                                             pg_url):
    a, b = await cluster("a"), await cluster("b")
    assert a.media.shared and b.media.shared
    data = _photo(size=(2000, 1000))
    ref = await a.media.put(data, kind=MediaKind.IMAGE, mime="image/jpeg")
    # In the database when put() returns: the message may now be accepted.
    [row] = await _rows(pg_url, "SELECT mime, size, data FROM media_blobs WHERE id = $1",
                        ref.media_id)
    assert (row["mime"], row["size"], bytes(row["data"])) == ("image/jpeg", len(data), data)
    assert _files(b.root) == []

    parts = await user_parts("what is this?", [ref], store=b.media, vision=True)

    assert [type(p) for p in parts] == [TextPart, ImagePart]
    assert decode(parts[1].data).size == (1568, 784)
    # Fetched once into b's own directory, named as a: a local file from now on.
    fetched = b.root / ref.media_id[:2] / f"{ref.media_id}.jpg"
    assert fetched.read_bytes() == data
    assert not [p for p in _files(b.root) if p.name.startswith(".fetch-")]


async def test_a_voice_note_put_by_one_process_is_transcribed_by_another(
        cluster, session, audio_server):  # noqa: F811 - fixtures
    a, b = await cluster("a"), await cluster("b")
    audio = ogg_opus_bytes(3.0)
    ref = await a.media.put(audio, kind=MediaKind.VOICE, mime="audio/ogg", duration_s=3.0)
    audio_server.transcript("see you at nine")
    notes = VoiceNotes(Transcriber(InOrder(), session), TranscriptQueries(b.store), b.media)
    try:
        found = await notes.transcribe(
            [ref], TranscriptionSettings((audio_model(audio_server.base_url),)))
    finally:
        await notes.aclose()
    assert found[ref.media_id].text == "see you at nine"
    assert audio_server.requests[0].file.data == audio  # the very bytes a received


async def test_local_path_and_read_bytes_fetch_from_the_event_loop(cluster):
    a, b = await cluster("a"), await cluster("b")
    data = os.urandom(5000)
    ref = await a.media.put(data, kind=MediaKind.DOCUMENT, mime="application/pdf")
    assert await b.media.read_bytes(ref.media_id) == data
    path = await b.media.local_path(ref.media_id)
    assert path.suffix == ".pdf" and path.is_relative_to(b.root)


async def test_a_large_file_is_fetched_in_bounded_slices(cluster, monkeypatch):
    monkeypatch.setattr(blobs_mod, "CHUNK_BYTES", 64 * 1024)
    a, b = await cluster("a"), await cluster("b")
    data = os.urandom(64 * 1024 * 5 + 123)  # five whole slices and a bit
    ref = await a.media.put(data, kind=MediaKind.AUDIO, mime="audio/mpeg")
    statements: list[str] = []
    b.store.on_statement = statements.append

    assert (await b.media.local_path(ref.media_id)).read_bytes() == data

    slices = [s for s in statements if "substr(data" in s]
    assert len(slices) == 6
    # No statement read the whole column.
    assert not [s for s in statements if "data" in s and "substr" not in s
                and "length(data)" not in s]


async def test_concurrent_readers_fetch_a_file_once(cluster):
    a, b = await cluster("a"), await cluster("b")
    data = os.urandom(300_000)
    ref = await a.media.put(data, kind=MediaKind.DOCUMENT, mime="application/pdf")
    statements: list[str] = []
    b.store.on_statement = statements.append

    got = await asyncio.gather(*(b.media.read_bytes(ref.media_id) for _ in range(5)))

    assert got == [data] * 5
    assert len([s for s in statements if "length(data)" in s]) == 1  # one download


async def test_the_same_bytes_twice_are_one_row_and_one_upload(cluster, pg_url):
    a, c = await cluster("a"), await cluster("c")
    data = os.urandom(400_000)  # over the size where put() asks before sending
    first = await a.media.put(data, kind=MediaKind.DOCUMENT, mime="application/pdf")
    statements: list[str] = []
    a.store.on_statement = statements.append
    await a.media.put(data, kind=MediaKind.DOCUMENT, mime="application/pdf")
    assert statements == []  # known to be shared already: nothing asked
    c.store.on_statement = statements.append
    again = await c.media.put(data, kind=MediaKind.DOCUMENT, mime="application/pdf")
    assert again.media_id == first.media_id
    assert not [s for s in statements if s.lstrip().startswith("INSERT")]  # not resent
    assert (await _rows(pg_url, "SELECT COUNT(*) FROM media_blobs"))[0][0] == 1


# ---------------------------------------------------------------- missing, damaged, down


async def test_an_unknown_id_is_a_placeholder_not_a_crash(cluster):
    b = await cluster("b")
    ghost = MediaRef(MediaKind.IMAGE, media_id="ab" * 32, mime="image/jpeg")
    parts = await user_parts("look", [ghost], store=b.media, vision=True)
    assert parts == (TextPart("look\n" + ghost.placeholder()),)
    with pytest.raises(FileNotFoundError):
        await b.media.local_path(ghost.media_id)
    assert _files(b.root) == []


@pytest.mark.parametrize("damage", [
    "UPDATE media_blobs SET data = substr(data, 1, 100)",  # truncated: size disagrees
    "UPDATE media_blobs SET data = overlay(data placing '\\x00'::bytea from 200)",  # flipped
])
async def test_a_damaged_row_is_refused_clearly_and_leaves_nothing_behind(
        cluster, pg_url, damage, caplog):
    a, b = await cluster("a"), await cluster("b")
    ref = await a.media.put(encode(noise_image(64, 64), "JPEG", quality=95),
                            kind=MediaKind.IMAGE, mime="image/jpeg")
    await _rows(pg_url, damage)

    with pytest.raises(SharedMediaError, match="damaged") as raised:
        await b.media.local_path(ref.media_id)
    assert raised.value.corrupt
    with pytest.raises(ImageRefused) as refused:
        await b.media.prepared_media(ref.media_id, ImageLimits())
    assert refused.value.reason is Refusal.CORRUPT
    parts = await user_parts("x", [ref], store=b.media, vision=True)
    assert parts == (TextPart("x\n" + ref.placeholder()),)
    assert _files(b.root) == []  # no partial file, no damaged copy cached
    assert "damaged" in caplog.text


async def test_bytes_the_store_cannot_take_are_kept_and_shared_before_the_message(
        cluster, pg_url, monkeypatch, caplog):
    """put() does not raise (a WhatsApp message would be lost: its channel holds only
    what accept() refused); the message's accept meets the same store, and
    ensure_shared() — run before it is stored — shares the file then."""
    monkeypatch.setattr(media_mod, "SHARE_RETRY_DELAYS", (0.0,))
    a = await cluster("a")
    await a.store.close()  # the store is down
    data = _photo()
    ref = await a.media.put(data, kind=MediaKind.IMAGE, mime="image/jpeg")
    assert a.media.path_for(ref.media_id).read_bytes() == data  # kept here
    assert "kept here only" in caplog.text
    with pytest.raises(StoreUnavailableError):
        await a.media.ensure_shared([ref.media_id])  # the accept waits, as for any write
    # The store is back (a new pool of the same process, the same media directory).
    again = await cluster("a")
    statements: list[str] = []
    again.store.on_statement = statements.append
    await again.media.ensure_shared([ref.media_id])
    [row] = await _rows(pg_url, "SELECT data FROM media_blobs")
    assert bytes(row["data"]) == data
    statements.clear()
    await again.media.ensure_shared([ref.media_id])
    assert statements == []  # known to be shared now: nothing asked


async def test_a_store_down_while_fetching_is_a_refusal(cluster):
    a, b = await cluster("a"), await cluster("b")
    ref = await a.media.put(_photo(), kind=MediaKind.IMAGE, mime="image/jpeg")
    await b.store.close()
    with pytest.raises(ImageRefused) as refused:
        await b.media.prepared_media(ref.media_id, ImageLimits())
    assert refused.value.reason is Refusal.NOT_FOUND
    assert "unavailable" in refused.value.detail


async def test_path_for_on_the_event_loop_does_not_wait_for_itself(cluster):
    a, b = await cluster("a"), await cluster("b")
    ref = await a.media.put(b"%PDF-1.7 tiny", kind=MediaKind.DOCUMENT,
                            mime="application/pdf")
    with pytest.raises(FileNotFoundError, match="local_path"):
        b.media.path_for(ref.media_id)  # on the loop's thread: never blocks it
    assert (await b.media.local_path(ref.media_id)).read_bytes() == b"%PDF-1.7 tiny"
    assert b.media.path_for(ref.media_id).is_file()  # local now


async def test_ensure_shared_uploads_what_only_this_directory_holds(cluster, pg_url):
    a = await cluster("a")
    local_only = MediaStore(a.root)  # put while not shared (e.g. before an upgrade)
    data = _photo(colour=(1, 2, 3))
    ref = await local_only.put(data, kind=MediaKind.IMAGE, mime="image/jpeg")
    assert (await _rows(pg_url, "SELECT COUNT(*) FROM media_blobs"))[0][0] == 0

    await a.media.ensure_shared([ref.media_id, None, "cd" * 32])  # the last: nowhere

    [row] = await _rows(pg_url, "SELECT id, mime, data FROM media_blobs")
    assert (row["id"], row["mime"], bytes(row["data"])) == (ref.media_id, "image/jpeg", data)
    assert hashlib.sha256(bytes(row["data"])).hexdigest() == ref.media_id


# ------------------------------------------------------------------------------- SQLite


async def test_sqlite_media_stay_local_and_the_table_stays_empty(tmp_path):
    store = await Store.open(tmp_path / "p.db")
    try:
        media = MediaStore.for_store(tmp_path / "media", store)
        assert not media.shared
        ref = await media.put(_photo(), kind=MediaKind.IMAGE, mime="image/jpeg")
        assert media.path_for(ref.media_id).is_file()
        other = MediaStore.for_store(tmp_path / "other", store)
        with pytest.raises(FileNotFoundError):
            await other.local_path(ref.media_id)
        rows = await store.read_with(_count_blobs())
        assert rows == 0
    finally:
        await store.close()


def _count_blobs():
    from bridge.store.sql import val

    return (yield val("SELECT COUNT(*) FROM media_blobs"))
