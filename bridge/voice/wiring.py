"""Voice notes wired to the core: what the door, the turn and the app call.

:class:`VoiceService` is one per process (built by the app, handed to the conversation
core).  It reads the live config at each call, so a reload that sets or clears
``agents.defaults.transcription`` / ``speech`` applies to the next message:

- the door: :meth:`VoiceService.wants_to_hear` (a group voice note that may say the
  bot's name under ``transcribeForMentions``), :meth:`VoiceService.says_name`, and
  :meth:`VoiceService.admitted` (transcribe what was stored, in the background);
- the turn: :meth:`VoiceService.transcribe_messages` and :meth:`VoiceService.annotate`
  (the model sees ``[voice note, 12 s, transcript: "…"]``), :meth:`VoiceService.echo`
  (``echoTranscript``), :meth:`VoiceService.speak` (``replyWithVoice``: a
  :class:`~bridge.envelope.VoiceClip` for the outbox, or None and the text goes alone).

It owns one aiohttp session for the audio calls (made on first use, closed by
:meth:`VoiceService.aclose`); the router's loop (cooldowns, error classes, fallbacks)
tries the candidates.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

import aiohttp

from bridge.config.resolve import transcribe_for_mentions, voice_candidates
from bridge.envelope import ChatKind, Inbound, MediaRef, VoiceClip
from bridge.store.transcripts import TranscriptQueries
from bridge.voice.audio import Ffmpeg
from bridge.voice.notes import TranscriptionSettings, VoiceNotes
from bridge.voice.service import (
    CandidateRunner,
    Speaker,
    SpeechFailed,
    Transcriber,
    Transcription,
    echo_prefix,
    is_transcribable,
    wants_voice,
)

if TYPE_CHECKING:
    from bridge.config.schema import Config
    from bridge.media import MediaStore
    from bridge.store import HistoryTurn, Store, StoredMessage

log = logging.getLogger("bridge.voice")


class _LazySession:
    """An aiohttp session made in the running loop on first use."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    def get(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(trust_env=False)
        return self._session

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None


class VoiceService:
    """Transcription and speech for the core (see the module docstring)."""

    def __init__(self, runner: CandidateRunner, store: Store, media: MediaStore,
                 config: Callable[[], Config], *, ffmpeg: Ffmpeg | None = None) -> None:
        self._config = config
        self._session = _LazySession()
        self.ffmpeg = ffmpeg
        self.notes = VoiceNotes(Transcriber(runner, self._session.get, ffmpeg=ffmpeg),
                                TranscriptQueries(store), media)
        self.speaker = Speaker(runner, self._session.get, ffmpeg=ffmpeg)
        self._tasks: set[asyncio.Task[None]] = set()

    # -- settings --------------------------------------------------------------------

    def settings(self, channel: str, names: Iterable[str] = ()) -> TranscriptionSettings | None:
        """What a transcription on ``channel`` uses; None when no transcription model is
        configured (voice notes then reach the model as ``[voice note, 12 s]``)."""
        config = self._config()
        candidates = voice_candidates(config, "transcription")
        if not candidates:
            return None
        t = config.agents.defaults.transcription
        chan = config.channel(channel)
        max_seconds = getattr(chan, "audioMaxSeconds", None)
        spelled = [n.lstrip("@") for n in names if n]
        return TranscriptionSettings(
            tuple(candidates), language=t.language,
            max_seconds=float(max_seconds) if isinstance(max_seconds, int | float) else None,
            # Whisper spells a name it was told to expect.
            prompt=", ".join(spelled) if spelled else None)

    # -- the door --------------------------------------------------------------------

    def wants_to_hear(self, inbound: Inbound) -> bool:
        """A group message that is not a mention, holding a voice note the bot may be
        named in (``transcribeForMentions`` and a transcription model set): download it
        and ask :meth:`says_name`."""
        a = inbound.address
        if a.chat_kind is not ChatKind.GROUP or inbound.mentioned:
            return False
        if not any(is_transcribable(r) for r in inbound.media):
            return False
        config = self._config()
        if not voice_candidates(config, "transcription"):
            return False
        return transcribe_for_mentions(config, a.channel, a.chat_id, a.thread_id)

    async def says_name(self, inbound: Inbound, names: Sequence[str]) -> bool:
        """Whether a voice note of ``inbound`` says one of ``names`` (transcribed and
        stored now, so the turn does not transcribe it again)."""
        settings = self.settings(inbound.address.channel, names)
        if settings is None or not names:
            return False
        return await self.notes.says_name(inbound.media, settings, names)

    async def forget_unheard(self, inbound: Inbound) -> None:
        """A voice note heard for a mention that did not name the bot: its transcript
        is not kept (the message is stored without its content, as any ignored one)."""
        await self.notes.transcripts.forget_unlinked(r.media_id for r in inbound.media)

    def admitted(self, inbound: Inbound, message_id: int | None) -> None:
        """Start transcribing the voice notes of a stored message (in the background:
        the channel is not kept waiting; the turn awaits the same call)."""
        if not any(is_transcribable(r) and r.media_id for r in inbound.media):
            return
        settings = self.settings(inbound.address.channel)
        if settings is None:
            return
        task = asyncio.ensure_future(self._transcribe_quietly(inbound.media, settings,
                                                              message_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _transcribe_quietly(self, media: Sequence[MediaRef],
                                  settings: TranscriptionSettings,
                                  message_id: int | None) -> None:
        try:
            await self.notes.transcribe(media, settings, message_id=message_id)
        except asyncio.CancelledError:
            raise
        except Exception:  # the turn tries again; a store hiccup is logged here
            log.exception("voice: transcription at the door failed")

    # -- the turn --------------------------------------------------------------------

    async def transcribe_messages(self, messages: Sequence[StoredMessage]
                                  ) -> list[Transcription]:
        """Transcribe (or read back) the voice notes of a turn's messages, in order."""
        if not messages:
            return []
        settings = self.settings(messages[-1].address.channel)
        if settings is None:
            return []
        out: list[Transcription] = []
        for msg in messages:
            if not any(is_transcribable(r) for r in msg.media):
                continue
            found = await self.notes.transcribe(msg.media, settings, message_id=msg.id)
            out.extend(found[r.media_id] for r in msg.media
                       if r.media_id is not None and r.media_id in found)
        return out

    async def annotate(self, history: Sequence[HistoryTurn],
                       current: Sequence[StoredMessage]
                       ) -> tuple[list[HistoryTurn], list[StoredMessage]]:
        """History and current messages whose voice media show their stored outcome."""
        from bridge.prompt import with_transcripts

        return await with_transcripts(history, current, self.notes.annotate_all)

    def echo(self, transcripts: Iterable[Transcription]) -> str:
        """``echoTranscript``: the quoted transcripts a reply starts with ("" when off)."""
        if not self._config().agents.defaults.transcription.echoTranscript:
            return ""
        return "".join(echo_prefix(t.text) for t in transcripts if t.ok and t.text)

    async def speak(self, text: str, *, asked_by_voice: bool) -> VoiceClip | None:
        """The reply spoken under ``replyWithVoice`` (None: send the text alone — off,
        not asked, or speech failed)."""
        config = self._config()
        s = config.agents.defaults.speech
        if not wants_voice(s.replyWithVoice, asked_by_voice=asked_by_voice):
            return None
        candidates = voice_candidates(config, "speech")
        if not candidates or not text.strip():
            return None
        try:
            spoken = await self.speaker.speak(text, candidates, voice=s.voice,
                                              max_chars=s.maxChars, speed=s.speed)
        except SpeechFailed as exc:
            log.info("voice: the reply goes as text (%s)", exc)
            return None
        return VoiceClip(spoken.audio, spoken.duration_s, complete=not spoken.rest)

    @classmethod
    def for_app(cls, router: object, store: Store, media: MediaStore,
                config: Callable[[], Config]) -> tuple[VoiceService, str | None]:
        """The service the app runs (the router's loop as the runner, ffmpeg from PATH)
        and the start-up notice about ffmpeg, if one is due."""
        from bridge.voice.audio import ffmpeg_notice, find_ffmpeg
        from bridge.voice.service import InOrder

        run = getattr(router, "run", None)
        runner: CandidateRunner = (router if callable(run)  # type: ignore[assignment]
                                   else InOrder(lambda ref: config().model(ref)))
        ffmpeg = find_ffmpeg()
        notice = ffmpeg_notice(
            ffmpeg, speech_enabled=config().agents.defaults.speech.model is not None)
        return cls(runner, store, media, config, ffmpeg=ffmpeg), notice

    async def aclose(self) -> None:
        """Cancel the door's transcriptions and running calls; close the session."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.notes.aclose()
        await self._session.close()


def asked_by_voice(messages: Sequence[StoredMessage]) -> bool:
    """Whether the turn's messages hold a voice note, audio or round video note."""
    return any(is_transcribable(r) for m in messages for r in m.media)


__all__ = ["VoiceService", "asked_by_voice"]
