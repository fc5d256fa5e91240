"""Audio helpers: what a file is, how long it lasts, and ffmpeg when it is on PATH.

- :func:`sniff` names a container from its first bytes (never from a file name or a
  platform's mime type, which may be wrong).
- :func:`duration_s` reads the length from the container header alone: Ogg (Opus or
  Vorbis, from the last page's granule position, RFC 7845 / the Vorbis I spec) and WAV
  (stdlib ``wave``).  Nothing is decoded.
- :class:`Ffmpeg` is found once at start (:func:`find_ffmpeg`) and converts to OGG/Opus
  (what Telegram voice messages and WhatsApp voice notes want) or to 16 kHz WAV (what
  whisper.cpp's server reads without ``--convert``), in a subprocess, with a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import shutil
import struct
import wave
from dataclasses import dataclass

log = logging.getLogger("bridge.voice.audio")

# Container -> (file extension OpenAI's transcription endpoint accepts, mime type).
_FORMATS = {
    "ogg": ("ogg", "audio/ogg"),
    "wav": ("wav", "audio/wav"),
    "mp3": ("mp3", "audio/mpeg"),
    "flac": ("flac", "audio/flac"),
    "mp4": ("m4a", "audio/mp4"),
    "webm": ("webm", "audio/webm"),
}
# Platform mime types -> container, for bytes sniff() cannot place (e.g. raw AAC).
_MIME_FORMATS = {
    "audio/ogg": "ogg", "audio/opus": "ogg", "audio/oga": "ogg", "audio/wav": "wav",
    "audio/x-wav": "wav", "audio/wave": "wav", "audio/mpeg": "mp3", "audio/mp3": "mp3",
    "audio/flac": "flac", "audio/x-flac": "flac", "audio/mp4": "mp4", "audio/m4a": "mp4",
    "audio/x-m4a": "mp4", "audio/aac": "mp4", "video/mp4": "mp4", "audio/webm": "webm",
    "video/webm": "webm",
}
_MAX_OGG_SCAN = 64 * 1024 * 1024


def sniff(data: bytes) -> str | None:
    """The container of ``data``: ogg, wav, mp3, flac, mp4, webm, or None."""
    head = data[:16]
    if head.startswith(b"OggS"):
        return "ogg"
    if head.startswith(b"RIFF") and head[8:12] == b"WAVE":
        return "wav"
    if head.startswith(b"fLaC"):
        return "flac"
    if head.startswith(b"ID3") or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE6 == 0xE2):
        return "mp3"
    if head[4:8] == b"ftyp":
        return "mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "webm"
    return None


def is_ogg_opus(data: bytes) -> bool:
    """True for an Ogg stream whose first packet is an Opus identification header."""
    return data.startswith(b"OggS") and data.find(b"OpusHead", 0, 512) != -1


def upload_name(data: bytes, mime: str | None, stem: str = "voice") -> tuple[str, str]:
    """(filename, content type) to upload ``data`` under: the extension names what the
    bytes are (OpenAI refuses a name whose extension it does not accept)."""
    kind = sniff(data) or _MIME_FORMATS.get((mime or "").split(";")[0].strip().lower())
    ext, ctype = _FORMATS.get(kind or "", ("ogg", "audio/ogg"))
    if kind == "mp4" and (mime or "").startswith("video/"):
        ext, ctype = "mp4", "video/mp4"
    return f"{stem}.{ext}", ctype


def duration_s(data: bytes) -> float | None:
    """Seconds of audio, from the container header (Ogg Opus/Vorbis, WAV); None when the
    format is another or the header is broken."""
    kind = sniff(data)
    try:
        if kind == "ogg":
            return _ogg_duration(data)
        if kind == "wav":
            with wave.open(io.BytesIO(data), "rb") as w:
                rate = w.getframerate()
                frame = w.getsampwidth() * w.getnchannels()
                # A WAV written to a pipe (ffmpeg's pipe:1) cannot go back to fill in its
                # sizes: the header claims 0xFFFFFFFF bytes.  Count what is there.
                frames = min(w.getnframes(), len(w.readframes(w.getnframes())) // frame)
                return frames / rate if rate and frame else None
    except (wave.Error, EOFError, struct.error, ValueError):
        return None
    return None


def _ogg_duration(data: bytes) -> float | None:
    """Walk the Ogg pages of the first logical stream: its codec header gives the rate
    (Opus: always 48 kHz, minus ``pre_skip``), its last granule position the samples."""
    pos, serial, rate, pre_skip, granule = 0, None, 0, 0, -1
    end = min(len(data), _MAX_OGG_SCAN)
    while pos + 27 <= end:
        if data[pos:pos + 4] != b"OggS":
            nxt = data.find(b"OggS", pos + 1, end)
            if nxt == -1:
                break
            pos = nxt
            continue
        (_, _, _, page_granule, page_serial, _, _,
         nsegs) = struct.unpack_from("<4sBBqIIIB", data, pos)
        body = pos + 27 + nsegs
        size = sum(data[pos + 27:body])
        if body + size > len(data):
            break  # a truncated last page: what came before still counts
        if serial is None:
            serial = page_serial
            packet = data[body:body + size]
            if packet.startswith(b"OpusHead") and len(packet) >= 19:
                rate = 48000
                pre_skip = struct.unpack_from("<H", packet, 10)[0]
            elif packet.startswith(b"\x01vorbis") and len(packet) >= 16:
                rate = struct.unpack_from("<I", packet, 12)[0]
            else:
                return None
        elif page_serial == serial and page_granule != -1:
            granule = page_granule
        pos = body + size
    if not rate or granule <= 0:  # no audio page (header pages carry granule 0)
        return None
    return max(0.0, (granule - pre_skip) / rate)


# --------------------------------------------------------------------------- ffmpeg


class ConversionError(Exception):
    """ffmpeg failed or took too long (the message says which; it never holds audio)."""


@dataclass(frozen=True, slots=True)
class Ffmpeg:
    """An ``ffmpeg`` executable found on PATH."""

    path: str
    timeout_s: float = 60.0

    async def to_ogg_opus(self, data: bytes, *, bitrate: str = "32k") -> bytes:
        """``data`` (any format ffmpeg reads) as mono OGG/Opus, 48 kHz."""
        return await self._run(data, ["-vn", "-ac", "1", "-ar", "48000", "-c:a", "libopus",
                                      "-b:a", bitrate, "-f", "ogg"])

    async def to_wav(self, data: bytes, *, rate: int = 16000) -> bytes:
        """``data`` as mono 16-bit PCM WAV (whisper.cpp's server reads only WAV)."""
        return await self._run(data, ["-vn", "-ac", "1", "-ar", str(rate), "-c:a", "pcm_s16le",
                                      "-f", "wav"])

    async def _run(self, data: bytes, args: list[str]) -> bytes:
        proc = await asyncio.create_subprocess_exec(
            self.path, "-hide_banner", "-loglevel", "error", "-nostdin", "-i", "pipe:0",
            *args, "pipe:1",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        try:
            async with asyncio.timeout(self.timeout_s):
                out, err = await proc.communicate(data)
        except TimeoutError:
            raise ConversionError(f"ffmpeg took longer than {self.timeout_s:g} s") from None
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if proc.returncode != 0 or not out:
            detail = err.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
            raise ConversionError(f"ffmpeg failed (exit {proc.returncode}): {detail[0][:200]}")
        return out


def find_ffmpeg(path_env: str | None = None) -> Ffmpeg | None:
    """ffmpeg on PATH (``path_env`` instead of $PATH when given), or None."""
    found = shutil.which("ffmpeg", path=path_env)
    return Ffmpeg(found) if found else None


def ffmpeg_notice(ffmpeg: Ffmpeg | None, *, speech_enabled: bool) -> str | None:
    """The start-up line about ffmpeg (None when nothing needs saying): spoken replies
    need OGG/Opus, and without ffmpeg only servers that produce it themselves work."""
    if ffmpeg is not None or not speech_enabled:
        return None
    return ("voice: ffmpeg is not on PATH; spoken replies need a speech server that "
            "returns OGG/Opus itself (response_format \"opus\"), others are sent as text")
