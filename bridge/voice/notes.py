"""Voice notes of a message, for the core: transcribed once, stored, shown ever after.

:meth:`VoiceNotes.transcribe` is called when a message is admitted (and again, harmlessly,
when its turn is built): each voice note, audio file or round video note whose bytes were
downloaded is transcribed by the first candidate that can, and the outcome is stored by
media id (:mod:`bridge.store.transcripts`).  A stored transcript is never asked for
again; the same note arriving twice at once is transcribed by one call.

:meth:`VoiceNotes.annotate` turns a message's MediaRefs into what the model should see,
from the store alone (it never calls a model): history turns show their transcripts
(``[voice note, 12 s, transcript: "…"]``) without transcribing twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from bridge.config.resolve import ResolvedModel
from bridge.envelope import MediaRef
from bridge.media import MediaStore
from bridge.store.transcripts import StoredTranscript, TranscriptQueries
from bridge.voice.client import AudioInput
from bridge.voice.service import (
    Transcriber,
    Transcription,
    TranscriptStatus,
    annotated,
    is_transcribable,
    names_the_bot,
)

log = logging.getLogger("bridge.voice")


@dataclass(frozen=True, slots=True)
class TranscriptionSettings:
    """What one transcription uses (from ``agents.defaults.transcription``)."""

    candidates: tuple[ResolvedModel | str, ...]
    language: str | None = None
    max_seconds: float | None = None
    prompt: str | None = None  # words to expect (the bot's name helps Whisper spell it)


def _from_stored(row: StoredTranscript) -> Transcription:
    return Transcription(TranscriptStatus(row.status), row.text, row.model_ref,
                         row.duration_s, row.reason)


class VoiceNotes:
    """Transcribes and annotates the voice notes of messages (one per process)."""

    def __init__(self, transcriber: Transcriber, transcripts: TranscriptQueries,
                 media: MediaStore) -> None:
        self.transcriber = transcriber
        self.transcripts = transcripts
        self.media = media
        self._inflight: dict[str, asyncio.Task[Transcription]] = {}

    async def transcribe(self, refs: Iterable[MediaRef], settings: TranscriptionSettings, *,
                         message_id: int | None = None) -> dict[str, Transcription]:
        """The outcome for each transcribable ref with bytes, by media id: the stored one,
        else transcribed now and stored.  Never raises for a failed transcription."""
        wanted = [r for r in refs if is_transcribable(r) and r.media_id]
        if not wanted:
            return {}
        stored = await self.transcripts.many(r.media_id for r in wanted)
        out = {mid: _from_stored(row) for mid, row in stored.items()}
        for ref in wanted:
            mid = ref.media_id
            assert mid is not None
            if mid in out:
                continue
            task = self._inflight.get(mid)
            if task is None:
                task = asyncio.ensure_future(self._transcribe_one(ref, mid, settings,
                                                                  message_id))
                self._inflight[mid] = task
                task.add_done_callback(self._forget)
            out[mid] = await asyncio.shield(task)
        return out

    def _forget(self, task: asyncio.Task[Transcription]) -> None:
        for mid, running in list(self._inflight.items()):
            if running is task:
                del self._inflight[mid]

    async def _transcribe_one(self, ref: MediaRef, mid: str, settings: TranscriptionSettings,
                              message_id: int | None) -> Transcription:
        try:
            data = await asyncio.to_thread(lambda: self.media.path_for(mid).read_bytes())
        except (FileNotFoundError, ValueError, OSError) as exc:
            log.warning("voice: the audio of %s cannot be read (%s)", mid[:12],
                        type(exc).__name__)
            result = Transcription(TranscriptStatus.NO_AUDIO, duration_s=ref.duration_s,
                                   reason="the audio file is gone")
        else:
            result = await self.transcriber.transcribe(
                AudioInput(data, ref.mime, ref.duration_s), settings.candidates,
                language=settings.language, prompt=settings.prompt,
                max_seconds=settings.max_seconds)
        await self.transcripts.put(mid, result.status.value, text=result.text,
                                   model_ref=result.model_ref, language=settings.language,
                                   duration_s=result.duration_s, reason=result.reason,
                                   message_id=message_id)
        if result.ok:
            log.info("voice: transcribed %s (%s s) with %s", mid[:12],
                     f"{result.duration_s:.0f}" if result.duration_s is not None else "?",
                     result.model_ref)
        return result

    async def annotate(self, refs: Sequence[MediaRef]) -> tuple[MediaRef, ...]:
        """``refs`` as the model should see them, from stored transcripts only."""
        return (await self.annotate_all([refs]))[0]

    async def annotate_all(self, messages: Sequence[Sequence[MediaRef]]
                           ) -> list[tuple[MediaRef, ...]]:
        """:meth:`annotate` for each message of a history window, in one store query."""
        ids = [r.media_id for refs in messages for r in refs if is_transcribable(r)]
        stored = await self.transcripts.many(ids) if ids else {}

        def shown(r: MediaRef) -> MediaRef:
            if not is_transcribable(r):
                return r
            row = stored.get(r.media_id) if r.media_id else None
            return annotated(r, _from_stored(row) if row is not None else None)

        return [tuple(shown(r) for r in refs) for refs in messages]

    async def says_name(self, refs: Iterable[MediaRef], settings: TranscriptionSettings,
                        names: Iterable[str]) -> bool:
        """``transcribeForMentions``: True when a voice note of ``refs`` says one of
        ``names`` (transcribing, and storing, what is not transcribed yet)."""
        found = await self.transcribe(refs, settings)
        names = list(names)
        return any(t.ok and names_the_bot(t.text, names) for t in found.values())

    async def aclose(self) -> None:
        """Cancel and await transcriptions still running (shutdown)."""
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
