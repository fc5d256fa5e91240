"""Real audio files generated in pure Python, for tests (no ffmpeg, no libopus needed).

- :func:`wav_bytes`: a 16-bit PCM WAV (stdlib ``wave``) holding a sine tone.
- :func:`ogg_opus_bytes`: a valid Ogg/Opus stream (RFC 7845): ``OpusHead`` and ``OpusTags``
  pages, then 20 ms Opus packets in pages whose granule positions give the duration
  (``(last granule - pre_skip) / 48000``), each page with its Ogg CRC.  The packets are
  1-byte Opus packets (TOC 0xF8: CELT fullband 20 ms, mono, one frame of length zero),
  which RFC 6716 allows and decoders render as silence — the shape of what Telegram and
  WhatsApp send for a voice note, minus the voice.
"""

from __future__ import annotations

import io
import math
import struct
import wave

OPUS_PRE_SKIP = 312
_FRAME_SAMPLES = 960  # 20 ms at 48 kHz
_SILENT_PACKET = b"\xf8"


def _crc_table() -> list[int]:
    table = []
    for i in range(256):
        r = i << 24
        for _ in range(8):
            r = ((r << 1) ^ 0x04C11DB7) if r & 0x80000000 else (r << 1)
        table.append(r & 0xFFFFFFFF)
    return table


_CRC = _crc_table()


def ogg_crc(data: bytes) -> int:
    """Ogg's CRC-32 (polynomial 0x04C11DB7, no reflection, initial 0, no final xor)."""
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ _CRC[((crc >> 24) & 0xFF) ^ byte]
    return crc


def ogg_page(packets: list[bytes], *, granule: int, serial: int, sequence: int,
             bos: bool = False, eos: bool = False) -> bytes:
    """One Ogg page holding whole ``packets`` (each shorter than 255 * 255 bytes)."""
    lacing = bytearray()
    for packet in packets:
        size = len(packet)
        while size >= 255:
            lacing.append(255)
            size -= 255
        lacing.append(size)
    if len(lacing) > 255:
        raise ValueError("too many segments for one page")
    flags = (0x02 if bos else 0) | (0x04 if eos else 0)
    header = struct.pack("<4sBBqIIIB", b"OggS", 0, flags, granule, serial, sequence, 0,
                         len(lacing)) + bytes(lacing)
    page = bytearray(header + b"".join(packets))
    struct.pack_into("<I", page, 22, ogg_crc(bytes(page)))
    return bytes(page)


def opus_head(*, channels: int = 1, pre_skip: int = OPUS_PRE_SKIP,
              input_rate: int = 48000) -> bytes:
    return struct.pack("<8sBBHIhB", b"OpusHead", 1, channels, pre_skip, input_rate, 0, 0)


def opus_tags(vendor: str = "palaver-tests") -> bytes:
    raw = vendor.encode()
    return b"OpusTags" + struct.pack("<I", len(raw)) + raw + struct.pack("<I", 0)


def ogg_opus_bytes(seconds: float, *, serial: int = 0x5A11, pre_skip: int = OPUS_PRE_SKIP,
                   packets_per_page: int = 50) -> bytes:
    """An Ogg/Opus file ``seconds`` long (to the 20 ms frame)."""
    frames = max(1, math.ceil((seconds * 48000 + pre_skip) / _FRAME_SAMPLES))
    out = [ogg_page([opus_head(pre_skip=pre_skip)], granule=0, serial=serial, sequence=0,
                    bos=True),
           ogg_page([opus_tags()], granule=0, serial=serial, sequence=1)]
    sequence = 2
    done = 0
    while done < frames:
        n = min(packets_per_page, frames - done)
        done += n
        out.append(ogg_page([_SILENT_PACKET] * n, granule=done * _FRAME_SAMPLES,
                            serial=serial, sequence=sequence, eos=done == frames))
        sequence += 1
    return b"".join(out)


def ogg_opus_duration(data: bytes) -> float:
    """What :func:`ogg_opus_bytes` encoded, read back the way RFC 7845 says (for the fake
    server's ``verbose_json``; the bridge has its own parser under test)."""
    last = data.rfind(b"OggS")
    granule = struct.unpack_from("<q", data, last + 6)[0]
    head = data.find(b"OpusHead")
    pre_skip = struct.unpack_from("<H", data, head + 10)[0]
    return max(0.0, (granule - pre_skip) / 48000)


def wav_bytes(seconds: float = 1.0, *, rate: int = 16000, freq: float = 440.0) -> bytes:
    """A mono 16-bit PCM WAV holding a sine tone."""
    n = int(seconds * rate)
    frames = b"".join(struct.pack("<h", int(12000 * math.sin(2 * math.pi * freq * i / rate)))
                      for i in range(n))
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(frames)
    return buf.getvalue()


def wav_duration(data: bytes) -> float:
    with wave.open(io.BytesIO(data), "rb") as w:
        return w.getnframes() / w.getframerate()
