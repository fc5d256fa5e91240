"""Media bytes in the store, for several processes on one PostgreSQL database.

Each Palaver keeps the files it receives under its own ``<dataDir>/media``; with several
processes on one store, the one that runs a turn may not be the one that received the
photo.  So on PostgreSQL :class:`~bridge.media.MediaStore` also writes every file it
stores into ``media_blobs`` (migration 0009) before the message that names it is
accepted, and a process that misses a file locally fetches it from there into its own
directory (a cache: rows never change, they are named by their content).

Reads are sliced (``substr`` over an uncompressed, out-of-line column): a 50 MB document
is never held whole in memory to be copied to disk.  On SQLite the table exists for
schema parity and stays empty (one process owns the data dir).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from bridge.store.db import Database
from bridge.store.sql import Body, In, all_, one, run, val

# One slice of a fetched file: bounds the memory a fetch holds (and one statement's size).
CHUNK_BYTES = 1 << 20
# Above this, ask whether the row exists before sending the bytes (a forwarded photo is
# stored once; ON CONFLICT DO NOTHING would still ship it to the server).
_CHECK_FIRST_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class BlobInfo:
    """A stored file's metadata: ``size`` as recorded, ``length`` the bytes really held."""

    mime: str | None
    size: int
    length: int


def _put(media_id: str, mime: str | None, data: bytes, now: float) -> Body[bool]:
    if len(data) > _CHECK_FIRST_BYTES and (
            yield val("SELECT 1 FROM media_blobs WHERE id = ?", media_id)):
        return False
    return bool((yield run(
        "INSERT INTO media_blobs (id, mime, size, data, created_at) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT (id) DO NOTHING", media_id, mime, len(data), data, now)))


def _info(media_id: str) -> Body[BlobInfo | None]:
    row = yield one("SELECT mime, size, length(data) AS length FROM media_blobs"
                    " WHERE id = ?", media_id)
    if row is None:
        return None
    return BlobInfo(row["mime"], int(row["size"]), int(row["length"]))


def _slice(media_id: str, offset: int, count: int) -> Body[bytes | None]:
    # substr() counts from 1, on bytea (PostgreSQL) and BLOB (SQLite) alike.
    data = yield val("SELECT substr(data, ?, ?) FROM media_blobs WHERE id = ?",
                     offset + 1, count, media_id)
    return None if data is None else bytes(data)


def _ids(media_ids: list[str]) -> Body[set[str]]:
    rows = yield all_("SELECT id FROM media_blobs WHERE id IN ?", In(media_ids))
    return {r[0] for r in rows}


class MediaBlobs:
    """``media_blobs`` over an open store (``MediaBlobs(store)``)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def put(self, media_id: str, mime: str | None, data: bytes, *,
                  now: float | None = None) -> bool:
        """Store ``data`` as ``media_id`` (its sha256); False when it was there already."""
        return await self.db.atomically(_put(media_id, mime, data,
                                             time.time() if now is None else now))

    async def info(self, media_id: str) -> BlobInfo | None:
        """The row's metadata, or None when there is no such row."""
        return await self.db.read_with(_info(media_id))

    async def read_slice(self, media_id: str, offset: int, count: int = CHUNK_BYTES
                         ) -> bytes | None:
        """``count`` bytes from ``offset`` (fewer at the end), or None without a row."""
        return await self.db.read_with(_slice(media_id, offset, count))

    async def existing(self, media_ids: list[str]) -> set[str]:
        """Those of ``media_ids`` that have a row."""
        return await self.db.read_with(_ids(media_ids)) if media_ids else set()
