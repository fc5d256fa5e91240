"""Voice notes for the core: transcribe through the candidates, speak a reply, and the
words the model and the sender see.

Routing is the model router's: a transcription or a speech call is one *attempt* per
candidate (:func:`bridge.voice.client.transcribe_once`), and a :class:`CandidateRunner`
tries the candidates in order with the router's cooldowns and error classes.
:meth:`bridge.models.router.ModelRouter.run` is that runner; :class:`InOrder` is a plain
in-order runner without cooldowns, for tests.  Unlike a chat call, a ``bad_request`` does not stop the
fallbacks: one server refusing a container (whisper.cpp without ``--convert`` reads only
WAV) says nothing about the next one.
"""

from __future__ import annotations

import logging
import re
import time
import unicodedata
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Protocol, TypeVar

import aiohttp

from bridge.config.resolve import ResolvedModel, UnknownModelError
from bridge.envelope import MediaKind, MediaRef
from bridge.models.base import AllModelsFailed, Attempt, ErrorClass, ModelError
from bridge.voice.audio import ConversionError, Ffmpeg, duration_s
from bridge.voice.client import AudioInput, SpeechAudio, speak_once, transcribe_once

log = logging.getLogger("bridge.voice")

T = TypeVar("T")

# Error classes after which no further candidate is tried (chat stops on bad_request too).
AUDIO_STOP: frozenset[ErrorClass] = frozenset()


class CandidateRunner(Protocol):
    """Runs ``call`` on each candidate in order until one returns (the router's loop)."""

    async def run(self, candidates: Sequence[ResolvedModel | str],
                  call: Callable[[ResolvedModel], Awaitable[T]], *,
                  stop: frozenset[ErrorClass] = ...) -> tuple[T, str, tuple[Attempt, ...]]:
        """(value, model ref, attempts) of the first success; raises AllModelsFailed
        listing every attempt."""
        ...


class InOrder:
    """A :class:`CandidateRunner` without cooldowns: each candidate once, in order.

    String refs are resolved with ``resolve`` (``Config.model``); one that names no model
    is a ``not_found`` attempt.
    """

    def __init__(self, resolve: Callable[[str], ResolvedModel] | None = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._resolve = resolve
        self._clock = clock

    async def run(self, candidates: Sequence[ResolvedModel | str],
                  call: Callable[[ResolvedModel], Awaitable[T]], *,
                  stop: frozenset[ErrorClass] = AUDIO_STOP
                  ) -> tuple[T, str, tuple[Attempt, ...]]:
        if not candidates:
            raise ValueError("no candidate models")
        attempts: list[Attempt] = []
        for candidate in candidates:
            start = self._clock()
            if isinstance(candidate, str):
                try:
                    if self._resolve is None:
                        raise UnknownModelError(candidate)
                    model = self._resolve(candidate)
                except UnknownModelError as exc:
                    attempts.append(Attempt(candidate, ErrorClass.NOT_FOUND, 0.0,
                                            f"not configured: {exc}"))
                    continue
            else:
                model = candidate
            try:
                value = await call(model)
            except ModelError as exc:
                attempts.append(Attempt(model.ref, exc.error_class, self._clock() - start,
                                        exc.message))
                if exc.error_class in stop:
                    break
                continue
            attempts.append(Attempt(model.ref, None, self._clock() - start))
            return value, model.ref, tuple(attempts)
        raise AllModelsFailed(tuple(attempts))


# --------------------------------------------------------------------------- transcription


class TranscriptStatus(StrEnum):
    OK = "ok"  # transcribed (text may be "" for a note without speech)
    TOO_LONG = "too_long"  # over audioMaxSeconds: never sent to a model
    FAILED = "failed"  # every transcription model failed
    NO_AUDIO = "no_audio"  # the bytes were not downloaded (too large, lost)


@dataclass(frozen=True, slots=True)
class Transcription:
    """The outcome for one voice note; what the store keeps and the prompt shows."""

    status: TranscriptStatus
    text: str = ""
    model_ref: str | None = None
    duration_s: float | None = None
    reason: str = ""  # for the model and the log; never a server's message
    attempts: tuple[Attempt, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status is TranscriptStatus.OK


def is_transcribable(ref: MediaRef) -> bool:
    """Voice notes, audio files and Telegram's round video notes."""
    if ref.kind in (MediaKind.VOICE, MediaKind.AUDIO):
        return True
    return ref.kind is MediaKind.VIDEO and ref.note == "round video"


def _reason_for(failed: AllModelsFailed) -> str:
    classes = {a.error_class for a in failed.attempts if a.error_class is not None}
    if classes and classes <= {ErrorClass.TIMEOUT}:
        return "the transcription service timed out"
    if classes and classes <= {ErrorClass.UNREACHABLE}:
        return "the transcription service is unreachable"
    return "the transcription service failed"


SessionSource = aiohttp.ClientSession | Callable[[], aiohttp.ClientSession]


class _OnSession:
    """Holds a session the caller owns, or a callable giving one (made on first use)."""

    def __init__(self, runner: CandidateRunner, session: SessionSource, *,
                 ffmpeg: Ffmpeg | None = None) -> None:
        self.runner = runner
        self._session = session
        self.ffmpeg = ffmpeg

    @property
    def session(self) -> aiohttp.ClientSession:
        source = self._session
        return source if isinstance(source, aiohttp.ClientSession) else source()


class Transcriber(_OnSession):
    """Transcribes audio through a runner over a session the caller owns."""

    async def transcribe(self, audio: AudioInput, candidates: Sequence[ResolvedModel | str], *,
                         language: str | None = None, prompt: str | None = None,
                         max_seconds: float | None = None) -> Transcription:
        """Transcribe ``audio`` with the first candidate that can; never raises for a
        failed call (the outcome says why), so the turn always goes on."""
        seconds = audio.duration_s
        if seconds is None:
            seconds = duration_s(audio.data)
        if max_seconds is not None and seconds is not None and seconds > max_seconds:
            return Transcription(TranscriptStatus.TOO_LONG, duration_s=seconds, reason=(
                f"{round(seconds)} s is over the {max_seconds:g} s limit"))
        if not audio.data:
            return Transcription(TranscriptStatus.NO_AUDIO, duration_s=seconds,
                                 reason="the audio was not downloaded")

        async def attempt(model: ResolvedModel) -> str:
            return await transcribe_once(self.session, model, audio, language=language,
                                         prompt=prompt)

        try:
            text, model_ref, attempts = await self.runner.run(candidates, attempt,
                                                              stop=AUDIO_STOP)
        except AllModelsFailed as failed:
            log.warning("voice: transcription failed: %s", failed)
            return Transcription(TranscriptStatus.FAILED, duration_s=seconds,
                                 reason=_reason_for(failed), attempts=failed.attempts)
        return Transcription(TranscriptStatus.OK, text, model_ref, seconds, attempts=attempts)


# --------------------------------------------------------------------------- words


# Notes a channel puts on a MediaRef that describe it (kept before the transcript); any
# other note says why the bytes are missing.
_DESCRIPTIVE_NOTES = frozenset({"round video"})
_MAX_QUOTE = 4000


def transcript_note(t: Transcription) -> str:
    """The MediaRef note carrying an outcome: ``transcript: "…"``, ``no speech``, or
    ``could not be transcribed: <reason>``."""
    if t.ok:
        if not t.text:
            return "no speech"
        text = " ".join(t.text.split())
        if len(text) > _MAX_QUOTE:
            text = text[:_MAX_QUOTE - 1] + "…"
        return f'transcript: "{text}"'
    return f"could not be transcribed: {t.reason or 'unknown reason'}"


def annotated(ref: MediaRef, t: Transcription | None) -> MediaRef:
    """``ref`` whose ``placeholder()`` tells the model the outcome, so every place that
    shows media (the turn, history, compaction summaries) shows the transcript.

    ``t`` None: nothing was tried; a ref whose bytes are missing (too long, too large,
    lost) then says it could not be transcribed, and why.
    """
    kept = ref.note if ref.note in _DESCRIPTIVE_NOTES else None
    if t is None:
        if ref.media_id is not None:
            return ref
        why = f"could not be transcribed: {ref.note}" if ref.note else "could not be transcribed"
        return replace(ref, note=why)
    if ref.duration_s is None and t.duration_s is not None:
        ref = replace(ref, duration_s=t.duration_s)
    note = transcript_note(t)
    return replace(ref, note=f"{kept}, {note}" if kept else note)


def model_text(ref: MediaRef, t: Transcription | None) -> str:
    """What the model reads for a voice note: its transcript as the sender's words, marked
    as a voice note with its duration; or why there is none.

    ``[voice note, 12 s, transcript: "hello there"]`` / ``[voice note, 12 s, no speech]`` /
    ``[voice note, 400 s, could not be transcribed: 400 s is over the 300 s limit]``.
    """
    return annotated(ref, t).placeholder()


def echo_prefix(transcript: str) -> str:
    """The quoted transcript a reply starts with when ``echoTranscript`` is on (Markdown)."""
    lines = transcript.strip().splitlines() or [""]
    return "\n".join(("> 🎙 " if i == 0 else "> ") + line for i, line in enumerate(lines)) + "\n\n"


def _fold(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def names_the_bot(transcript: str, names: Iterable[str]) -> bool:
    """True when ``transcript`` says one of ``names`` as a word (case and accents
    ignored; ``@`` and ``_`` in a username may be said as spaces or not at all)."""
    text = _fold(transcript)
    for name in names:
        cleaned = _fold(name).lstrip("@").strip()
        if not cleaned:
            continue
        words = [w for w in re.split(r"[\s_]+", cleaned) if w]
        pattern = r"[\s_\-]*".join(re.escape(w) for w in words)
        if re.search(rf"(?<!\w){pattern}(?!\w)", text):
            return True
    return False


# --------------------------------------------------------------------------- speech


class ReplyWithVoice(StrEnum):
    NEVER = "never"
    WHEN_VOICE = "whenVoice"
    ALWAYS = "always"


def wants_voice(mode: ReplyWithVoice | str, *, asked_by_voice: bool) -> bool:
    """Whether a reply is spoken under ``replyWithVoice``."""
    mode = ReplyWithVoice(mode)
    return mode is ReplyWithVoice.ALWAYS or (mode is ReplyWithVoice.WHEN_VOICE
                                             and asked_by_voice)


def split_for_speech(text: str, max_chars: int) -> tuple[str, str]:
    """(what is spoken, what follows as text): whole sentences up to ``max_chars``, else
    whole words; the rest is "" when everything fits."""
    text = text.strip()
    if len(text) <= max_chars:
        return text, ""
    head = text[:max_chars]
    cut = max(head.rfind(m) for m in (". ", "! ", "? ", "\n"))
    if cut < max_chars // 3:
        cut = head.rfind(" ")
    if cut <= 0:
        cut = max_chars - 1
    return text[:cut + 1].strip(), text[cut + 1:].strip()


@dataclass(frozen=True, slots=True)
class SpokenReply:
    """A reply ready to send as a voice message (OGG/Opus) and the text that follows."""

    audio: bytes
    spoken: str
    rest: str
    model_ref: str
    duration_s: float | None


class SpeechFailed(Exception):
    """Nothing to send as voice; the caller sends the text (message says why)."""


class Speaker(_OnSession):
    """Speaks replies through a runner; converts to OGG/Opus with ffmpeg when needed."""

    async def speak(self, text: str, candidates: Sequence[ResolvedModel | str], *, voice: str,
                    max_chars: int = 1000, speed: float | None = None) -> SpokenReply:
        """``text`` (up to ``max_chars``) as OGG/Opus; raises :class:`SpeechFailed`."""
        spoken, rest = split_for_speech(text, max_chars)
        if not spoken:
            raise SpeechFailed("nothing to speak")

        async def attempt(model: ResolvedModel) -> SpeechAudio:
            audio = await speak_once(self.session, model, spoken, voice=voice,
                                     response_format="opus", speed=speed)
            if audio.ogg_opus:
                return audio
            if self.ffmpeg is None:
                # The next candidate may produce OGG/Opus itself.
                raise ModelError(ErrorClass.BAD_RESPONSE,
                                 f"speech came as {audio.container or audio.content_type}, "
                                 "not OGG/Opus, and ffmpeg is not on PATH")
            try:
                data = await self.ffmpeg.to_ogg_opus(audio.data)
            except ConversionError as exc:
                raise ModelError(ErrorClass.BAD_RESPONSE, str(exc)) from None
            return SpeechAudio(data, "ogg", "audio/ogg")

        try:
            audio, model_ref, _ = await self.runner.run(candidates, attempt, stop=AUDIO_STOP)
        except AllModelsFailed as failed:
            log.warning("voice: speech failed, the reply goes as text: %s", failed)
            raise SpeechFailed(str(failed)) from None
        return SpokenReply(audio.data, spoken, rest, model_ref, duration_s(audio.data))
