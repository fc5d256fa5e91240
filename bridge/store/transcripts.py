"""Transcripts in the store: one per piece of audio, so history never transcribes twice.

``TranscriptQueries(store)`` wraps an open :class:`~bridge.store.db.Database` (the
``Store``).  A transcript is keyed by the media store's content id (``MediaRef.media_id``);
:meth:`TranscriptQueries.many` reads those of a history window in one query.  An ``ok``
transcript is final: a later failure never replaces it, while a failure is replaced by a
later success (a model that was down is tried again when the note is next needed, if the
caller chooses to).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from bridge.store.db import Database
from bridge.store.sql import Body, In, all_, all_body, run

TranscriptState = Literal["ok", "too_long", "failed", "no_audio"]
_STATES = ("ok", "too_long", "failed", "no_audio")
# SQLite's default limit on host parameters is 999 in old builds; stay well below.
_CHUNK = 500


@dataclass(frozen=True, slots=True)
class StoredTranscript:
    """One stored transcript (``text`` is "" unless ``status`` is ok)."""

    media_id: str
    status: TranscriptState
    text: str
    model_ref: str | None
    language: str | None
    duration_s: float | None
    reason: str
    message_id: int | None
    created_at: float
    updated_at: float

    @property
    def ok(self) -> bool:
        return self.status == "ok"


_COLUMNS = ("media_id, status, text, model_ref, language, duration_s, reason, message_id,"
            " created_at, updated_at")


def _row(r: Sequence[Any]) -> StoredTranscript:
    return StoredTranscript(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9])


def put_transcript_tx(media_id: str, status: TranscriptState, *,
                      text: str = "", model_ref: str | None = None,
                      language: str | None = None, duration_s: float | None = None,
                      reason: str = "", message_id: int | None = None,
                      now: float | None = None) -> Body[bool]:
    """Store an outcome inside the caller's transaction; False when an ``ok`` transcript
    was already there (it is kept)."""
    if status not in _STATES:
        raise ValueError(f"unknown transcript status {status!r}")
    if not media_id:
        raise ValueError("a transcript needs a media id")
    at = time.time() if now is None else now
    changed = yield run(
        "INSERT INTO transcripts (media_id, message_id, status, text, model_ref, language,"
        " duration_s, reason, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (media_id) DO UPDATE SET status = excluded.status,"
        " text = excluded.text, model_ref = excluded.model_ref,"
        " language = excluded.language,"
        " duration_s = COALESCE(excluded.duration_s, transcripts.duration_s),"
        " reason = excluded.reason,"
        " message_id = COALESCE(transcripts.message_id, excluded.message_id),"
        " updated_at = excluded.updated_at"
        " WHERE transcripts.status != 'ok'",
        media_id, message_id, status, text if status == "ok" else "", model_ref, language,
        duration_s, reason, at, at)
    return changed > 0


class TranscriptQueries:
    """Transcripts over an open store (``TranscriptQueries(store)``)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def put(self, media_id: str, status: TranscriptState, *, text: str = "",
                  model_ref: str | None = None, language: str | None = None,
                  duration_s: float | None = None, reason: str = "",
                  message_id: int | None = None, now: float | None = None) -> bool:
        """Store the outcome for ``media_id``; False when an ``ok`` one is kept instead."""
        if status not in _STATES:  # before any transaction: a bad call, not a bad store
            raise ValueError(f"unknown transcript status {status!r}")
        if not media_id:
            raise ValueError("a transcript needs a media id")
        return await self.db.atomically(put_transcript_tx(
            media_id, status, text=text, model_ref=model_ref, language=language,
            duration_s=duration_s, reason=reason, message_id=message_id, now=now))

    async def get(self, media_id: str) -> StoredTranscript | None:
        """The transcript of ``media_id``, or None when it was never transcribed."""
        return (await self.many([media_id])).get(media_id)

    async def many(self, media_ids: Iterable[str | None]) -> dict[str, StoredTranscript]:
        """The stored transcripts among ``media_ids`` (None entries skipped), by media id."""
        wanted = sorted({m for m in media_ids if m})
        if not wanted:
            return {}

        def read() -> Body[dict[str, StoredTranscript]]:
            out: dict[str, StoredTranscript] = {}
            for i in range(0, len(wanted), _CHUNK):
                part = wanted[i:i + _CHUNK]
                for r in (yield all_(f"SELECT {_COLUMNS} FROM transcripts"
                                     " WHERE media_id IN ?", In(part))):
                    out[r[0]] = _row(r)
            return out

        return await self.db.read_with(read())

    async def for_message(self, message_id: int) -> list[StoredTranscript]:
        """The transcripts a message brought first (oldest first)."""
        return [_row(r) for r in await self.db.read_with(all_body(
            f"SELECT {_COLUMNS} FROM transcripts WHERE message_id = ?"
            " ORDER BY created_at, media_id", message_id))]

    async def forget_unlinked(self, media_ids: Iterable[str | None]) -> int:
        """Delete the transcripts among ``media_ids`` that no stored message brought
        (a group voice note heard for a mention and not addressed to the bot: its words
        are nobody's business here).  Returns how many went."""
        wanted = sorted({m for m in media_ids if m})
        if not wanted:
            return 0

        def delete() -> Body[int]:
            gone = 0
            for i in range(0, len(wanted), _CHUNK):
                part = wanted[i:i + _CHUNK]
                gone += yield run("DELETE FROM transcripts WHERE message_id IS NULL"
                                  " AND media_id IN ?", In(part))
            return gone

        return await self.db.atomically(delete())
