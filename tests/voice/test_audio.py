"""Audio helpers: containers from bytes, durations from headers, ffmpeg found and run."""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
import textwrap

import pytest

from bridge.voice.audio import (
    ConversionError,
    Ffmpeg,
    duration_s,
    ffmpeg_notice,
    find_ffmpeg,
    is_ogg_opus,
    sniff,
    upload_name,
)
from tests.fakes.audio_bytes import ogg_opus_bytes, ogg_page, wav_bytes


@pytest.mark.parametrize("seconds", [0.5, 3.0, 12.34, 61.0])
def test_ogg_opus_duration_from_granule_and_pre_skip(seconds):
    assert duration_s(ogg_opus_bytes(seconds)) == pytest.approx(seconds, abs=0.021)


def test_ogg_duration_honours_pre_skip():
    plain = duration_s(ogg_opus_bytes(2.0, pre_skip=0))
    skipped = duration_s(ogg_opus_bytes(2.0, pre_skip=3840))  # 80 ms
    assert plain == pytest.approx(2.0, abs=0.021) and skipped == pytest.approx(2.0, abs=0.021)


def test_ogg_vorbis_duration_uses_its_sample_rate():
    ident = b"\x01vorbis" + (0).to_bytes(4, "little") + b"\x01" + (22050).to_bytes(4, "little")
    ident += b"\0" * 16
    data = (ogg_page([ident], granule=0, serial=7, sequence=0, bos=True)
            + ogg_page([b"x"], granule=22050 * 3, serial=7, sequence=1, eos=True))
    assert duration_s(data) == pytest.approx(3.0)


def test_truncated_and_broken_ogg():
    full = ogg_opus_bytes(4.0)
    cut = full[: len(full) - 10]  # the last page is incomplete: the pages before count
    assert 0 < duration_s(cut) < 4.0
    assert duration_s(b"OggS" + b"\0" * 40) is None
    assert duration_s(full[:200]) is None  # headers only, no audio page


def test_wav_duration_and_unknown_formats():
    assert duration_s(wav_bytes(1.5)) == pytest.approx(1.5)
    # ffmpeg writing WAV to a pipe cannot seek back: its sizes say 0xFFFFFFFF.
    piped = bytearray(wav_bytes(1.5))
    data_at = piped.find(b"data")
    piped[4:8] = piped[data_at + 4:data_at + 8] = (0xFFFFFFFF).to_bytes(4, "little")
    assert duration_s(bytes(piped)) == pytest.approx(1.5)
    assert duration_s(b"ID3\x04" + b"\0" * 100) is None
    assert duration_s(b"") is None


def test_sniff_and_upload_names():
    assert sniff(ogg_opus_bytes(1)) == "ogg" and is_ogg_opus(ogg_opus_bytes(1))
    assert sniff(wav_bytes(0.1)) == "wav" and not is_ogg_opus(wav_bytes(0.1))
    assert sniff(b"fLaC\0\0") == "flac" and sniff(b"\0\0\0\x20ftypM4A ") == "mp4"
    assert sniff(b"\x1a\x45\xdf\xa3xx") == "webm" and sniff(b"hello") is None
    assert upload_name(b"\xff\xf1\x50", "audio/aac") == ("voice.m4a", "audio/mp4")
    assert upload_name(b"unknown", None) == ("voice.ogg", "audio/ogg")


def _fake_ffmpeg(folder, *, fail: bool = False, sleep: float = 0.0) -> str:
    """An executable named ffmpeg that records its argv and stdin size and writes an
    Ogg/Opus stream (or fails like ffmpeg does)."""
    script = folder / "ffmpeg"
    out = ogg_opus_bytes(1.0)
    script.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import json, sys, time
        data = sys.stdin.buffer.read()
        with open({str(folder / "calls.jsonl")!r}, "a") as f:
            f.write(json.dumps({{"argv": sys.argv[1:], "stdin": len(data)}}) + "\\n")
        time.sleep({sleep})
        if {fail}:
            sys.stderr.write("pipe:0: Invalid data found when processing input\\n")
            sys.exit(1)
        sys.stdout.buffer.write({out!r})
        """))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def test_find_ffmpeg_on_path_or_not(tmp_path):
    assert find_ffmpeg(str(tmp_path)) is None
    path = _fake_ffmpeg(tmp_path)
    found = find_ffmpeg(str(tmp_path))
    assert found is not None and found.path == path
    assert ffmpeg_notice(None, speech_enabled=True) and "ffmpeg" in ffmpeg_notice(
        None, speech_enabled=True)
    assert ffmpeg_notice(None, speech_enabled=False) is None
    assert ffmpeg_notice(found, speech_enabled=True) is None


async def test_conversion_runs_ffmpeg_on_pipes(tmp_path):
    ffmpeg = Ffmpeg(_fake_ffmpeg(tmp_path))
    out = await ffmpeg.to_ogg_opus(wav_bytes(0.5))
    assert is_ogg_opus(out)
    call = json.loads((tmp_path / "calls.jsonl").read_text().splitlines()[0])
    assert call["stdin"] == len(wav_bytes(0.5))
    argv = call["argv"]
    assert argv[argv.index("-i") + 1] == "pipe:0" and argv[-1] == "pipe:1"
    assert argv[argv.index("-c:a") + 1] == "libopus" and argv[argv.index("-f") + 1] == "ogg"


async def test_conversion_failure_and_timeout(tmp_path):
    failing = tmp_path / "f"
    failing.mkdir()
    with pytest.raises(ConversionError, match="exit 1.*Invalid data"):
        await Ffmpeg(_fake_ffmpeg(failing, fail=True)).to_ogg_opus(b"junk")
    slow = tmp_path / "s"
    slow.mkdir()
    with pytest.raises(ConversionError, match="longer than 0.3 s"):
        await Ffmpeg(_fake_ffmpeg(slow, sleep=30), timeout_s=0.3).to_ogg_opus(b"junk")


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")
async def test_real_ffmpeg_makes_ogg_opus_of_the_right_length():
    found = find_ffmpeg(os.environ.get("PATH"))
    assert found is not None
    out = await found.to_ogg_opus(wav_bytes(2.0))
    assert is_ogg_opus(out) and duration_s(out) == pytest.approx(2.0, abs=0.05)
    wav = await found.to_wav(ogg_opus_bytes(1.0))
    assert sniff(wav) == "wav" and duration_s(wav) == pytest.approx(1.0, abs=0.05)
