"""Media of a :class:`~channels.telegram.translate.Draft`: getFile, within mediaMaxMb
and, for voice notes, audio and round video notes, within ``audioMaxSeconds``.

The intake calls :func:`materialise` only for a message the core will answer
(``sink.admits``), so a stranger's file or an unmentioned group photo is never fetched.
A voice note longer than the limit is not fetched either (Telegram declares the duration
in the message): the core tells the model it could not be transcribed.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from telegram import Bot
from telegram.error import BadRequest, TelegramError

from bridge.envelope import Inbound, MediaKind, MediaRef
from bridge.media import MediaStore
from channels.telegram.translate import Download, Draft, Fetch

__all__ = ["materialise"]

log = logging.getLogger(__name__)

# MediaRef fields the media store records with the bytes.
_STORED_FIELDS = ("mime", "filename", "duration_s", "width", "height")


# Kinds limited by audioMaxSeconds (a round video note is a VIDEO noted "round video").
_SPOKEN = (MediaKind.VOICE, MediaKind.AUDIO)


def _spoken(kind: MediaKind, meta: dict[str, Any]) -> bool:
    return kind in _SPOKEN or (kind is MediaKind.VIDEO and meta.get("note") == "round video")


async def materialise(draft: Draft, bot: Bot, media: MediaStore, max_mb: float,
                      audio_max_s: float | None = None) -> Inbound:
    """Download the draft's media (each within ``max_mb``, spoken media within
    ``audio_max_s`` seconds when given); the Inbound with media ids."""
    inbound = draft.inbound
    if not draft.has_downloads:
        return inbound

    async def fetched(refs: tuple[MediaRef, ...], jobs: list[Fetch | None]
                      ) -> tuple[MediaRef, ...]:
        return tuple([ref if job is None else await _fetch(bot, media, max_mb, job.kind,
                                                           job.item, audio_max_s, **job.meta)
                      for ref, job in zip(refs, jobs, strict=True)])

    refs = await fetched(inbound.media, draft.media)
    quoted = inbound.quoted
    if quoted is not None and any(draft.quoted_media):
        quoted = dataclasses.replace(quoted, media=await fetched(quoted.media,
                                                                 draft.quoted_media))
    return dataclasses.replace(inbound, media=refs, quoted=quoted)


async def _fetch(bot: Bot, media: MediaStore, max_mb: float, kind: MediaKind,
                 item: Download, audio_max_s: float | None = None, **meta: Any) -> MediaRef:
    """Download one file through getFile; a note instead of bytes when too large, too
    long or lost."""
    limit = int(max_mb * 1024 * 1024)
    limit_mb = f"{max_mb:g} MB"
    described = {k: v for k, v in meta.items() if k != "note"}

    def too_large(size: int) -> MediaRef:
        return MediaRef(kind=kind, size=size, note=(
            f"not downloaded: {size / 1024 / 1024:.1f} MB is over the {limit_mb} limit"),
            **described)

    if item.size is not None and item.size > limit:
        return too_large(item.size)
    seconds = meta.get("duration_s")
    if (audio_max_s is not None and seconds is not None and _spoken(kind, meta)
            and seconds > audio_max_s):
        return MediaRef(kind=kind, size=item.size, note=(
            f"not downloaded: {round(seconds)} s is over the {audio_max_s:g} s limit"),
            **described)
    try:
        file = await bot.get_file(item.file_id)
        if file.file_size is not None and file.file_size > limit:
            return too_large(file.file_size)
        data = bytes(await file.download_as_bytearray())
    except BadRequest as exc:
        if "too big" in str(exc).lower():
            return too_large(item.size or limit + 1)
        log.warning("telegram: could not download a %s: %s", kind, exc)
        return MediaRef(kind=kind, size=item.size, note="could not be downloaded", **described)
    except (TelegramError, OSError) as exc:
        log.warning("telegram: could not download a %s: %s", kind, exc)
        return MediaRef(kind=kind, size=item.size, note="could not be downloaded", **described)
    if len(data) > limit:
        return too_large(len(data))
    note = meta.get("note")
    ref = await media.put(data, kind=kind, **{k: v for k, v in meta.items()
                                               if k in _STORED_FIELDS})
    return dataclasses.replace(ref, note=note) if note else ref
