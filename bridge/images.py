"""Image preparation with pillow: decode, refuse what is unsafe, orient, shrink, re-encode.

Everything here is synchronous and CPU-bound; callers run it in a worker thread
(``bridge.media`` does, through ``asyncio.to_thread``).  A refusal is an
:class:`ImageRefused` carrying a :class:`Refusal` reason, never a crash.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from enum import StrEnum
from typing import cast

from PIL import Image, ImageOps, UnidentifiedImageError

log = logging.getLogger(__name__)

# Bump when the output of prepare_image changes, so cached prepared files are not reused.
PREPARE_VERSION = 1

# The source file may be this many times the prepared-output cap (imageMaxBytes): a phone's
# 12-megapixel JPEG is 3-8 MB and shrinks well under the 5 MB default; 4x (20 MB by default)
# matches Telegram's download cap, and anything larger is refused before it is read.
SOURCE_BYTES_FACTOR = 4

# Decoders pillow may use.  A short list keeps exotic parsers away from files strangers send
# (EPS, for one, would start Ghostscript).  The extension is never consulted.  (Multi-picture
# JPEGs from phones open through the JPEG decoder and report format "MPO".)
ALLOWED_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "AVIF")


def _open_formats() -> tuple[str, ...]:
    Image.init()
    return tuple(f for f in ALLOWED_FORMATS if f in Image.OPEN)  # AVIF needs pillow >= 11.3

_JPEG_QUALITIES = (85, 75, 60, 45)
_SHRINK_STEP = 0.75  # next try's longest side when no quality fits the byte cap
_MIN_SIDE = 64  # below this the image is useless; give up instead


class Refusal(StrEnum):
    """Why an image (or an image reference) is not given to the model."""

    OUTSIDE_ROOTS = "outside_roots"  # resolved real path is not inside an allowed root
    NOT_FOUND = "not_found"  # missing, not a regular file, unreadable, unknown media id
    UNSUPPORTED = "unsupported"  # a reference form that cannot be loaded (file://otherhost/)
    TOO_LARGE = "too_large"  # source file over the source byte cap
    NOT_IMAGE = "not_image"  # pillow does not recognise it (PDF, text, ...)
    BOMB = "decompression_bomb"  # declares more pixels than imageMaxPixels
    CORRUPT = "corrupt"  # recognised but truncated or undecodable
    CANNOT_SHRINK = "cannot_shrink"  # no re-encoding fits under imageMaxBytes


class ImageRefused(Exception):
    """An image was refused; ``reason`` is the typed cause, ``detail`` a short note."""

    def __init__(self, reason: Refusal, detail: str = "") -> None:
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
        self.reason = reason
        self.detail = detail
        self.logged = False  # set once the refusal has been logged with its reason


@dataclass(frozen=True, slots=True)
class ImageLimits:
    """Preparation settings; part of the prepared-image cache key."""

    max_dimension: int = 1568
    max_bytes: int = 5 * 1024 * 1024
    max_pixels: int = 50_000_000

    @property
    def max_source_bytes(self) -> int:
        return self.max_bytes * SOURCE_BYTES_FACTOR

    @classmethod
    def from_settings(cls, settings) -> ImageLimits:
        """Limits from ``agents.defaults`` (an AgentDefaults); defaults when ``None``."""
        if settings is None:
            return cls()
        return cls(
            max_dimension=settings.imageMaxDimensionPx,
            max_bytes=settings.imageMaxBytes,
            max_pixels=settings.imageMaxPixels,
        )

    def cache_tag(self) -> str:
        return f"v{PREPARE_VERSION}:{self.max_dimension}:{self.max_bytes}:{self.max_pixels}"


@dataclass(frozen=True, slots=True)
class PreparedImage:
    """Re-encoded image bytes ready for a model (metadata such as EXIF/GPS stripped)."""

    data: bytes
    mime: str  # image/jpeg or image/png
    width: int
    height: int


def prepare_image(data: bytes, limits: ImageLimits) -> PreparedImage:
    """Decode ``data`` with pillow and re-encode it within ``limits``; raise ImageRefused.

    Blocking (decode + resize + encode): call it from a worker thread.
    """
    if len(data) > limits.max_source_bytes:
        raise ImageRefused(
            Refusal.TOO_LARGE, f"{len(data)} bytes > {limits.max_source_bytes}"
        )
    image = _decode(data, limits)
    try:
        return _encode_within(image, limits)
    finally:
        image.close()


def _decode(data: bytes, limits: ImageLimits) -> Image.Image:
    """Open, check the declared size, load the first frame, apply EXIF orientation."""
    image: Image.Image  # the opened file, then (EXIF-rotated) possibly a plain copy
    try:
        image = Image.open(io.BytesIO(data), formats=_open_formats())
    except Image.DecompressionBombError as exc:
        raise ImageRefused(Refusal.BOMB, str(exc)[:120]) from None
    except UnidentifiedImageError:
        raise ImageRefused(Refusal.NOT_IMAGE, "not a recognised image") from None
    except Exception as exc:  # pillow raises many types on hostile headers
        raise ImageRefused(Refusal.CORRUPT, type(exc).__name__) from None

    try:
        width, height = image.size
        # Our own limit, checked on the header before any pixel is decoded; pillow's global
        # MAX_IMAGE_PIXELS (and its warning) is only a second net.
        if width <= 0 or height <= 0 or width * height > limits.max_pixels:
            raise ImageRefused(
                Refusal.BOMB, f"{width}x{height} > {limits.max_pixels} pixels"
            )
        if getattr(image, "n_frames", 1) > 1:
            image.seek(0)  # animated: the first frame only
        if image.format in ("JPEG", "MPO"):
            # Let libjpeg decode at 1/2, 1/4 or 1/8 scale when the result is shrunk anyway.
            image.draft("RGB", _fit((width, height), limits.max_dimension))
        image.load()
    except ImageRefused:
        image.close()
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        image.close()
        raise ImageRefused(Refusal.BOMB, str(exc)[:120]) from None
    except Exception as exc:  # truncated ("image file is truncated"), bad data streams
        image.close()
        raise ImageRefused(Refusal.CORRUPT, f"{type(exc).__name__}: {str(exc)[:80]}") from None

    try:
        oriented = ImageOps.exif_transpose(image)
    except Exception as exc:  # a broken EXIF block: keep the pixels, skip the rotation
        log.info("image EXIF orientation ignored: %s", type(exc).__name__)
        oriented = None
    if oriented is not None and oriented is not image:
        image.close()
        image = oriented
    return image


def _fit(size: tuple[int, int], longest: int) -> tuple[int, int]:
    width, height = size
    scale = min(1.0, longest / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _has_transparency(image: Image.Image) -> bool:
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        return True
    return "transparency" in image.info


def _encode_within(image: Image.Image, limits: ImageLimits) -> PreparedImage:
    """Re-encode as JPEG (PNG when there is real transparency) under limits.max_bytes."""
    if _has_transparency(image):
        rgba = image.convert("RGBA")
        # One band: (min, max) as numbers (the tuple-per-band form is for several bands).
        low = cast(float, rgba.getchannel("A").getextrema()[0])
        if low < 255:
            base, fmt = rgba, "PNG"
        else:  # an alpha channel that is fully opaque: no reason to pay for PNG
            base, fmt = rgba.convert("RGB"), "JPEG"
    else:
        base, fmt = image.convert("RGB"), "JPEG"

    longest = min(limits.max_dimension, max(base.size))
    while True:
        target = _fit(base.size, longest)
        frame = base if target == base.size else base.resize(target, Image.Resampling.LANCZOS)
        for quality in _JPEG_QUALITIES if fmt == "JPEG" else (None,):
            out = io.BytesIO()
            if fmt == "JPEG":
                frame.save(out, "JPEG", quality=quality, optimize=False, progressive=False)
            else:
                frame.save(out, "PNG", compress_level=6)
            if out.tell() <= limits.max_bytes:
                mime = "image/jpeg" if fmt == "JPEG" else "image/png"
                return PreparedImage(out.getvalue(), mime, frame.width, frame.height)
        if longest <= _MIN_SIDE:
            break
        longest = max(_MIN_SIDE, int(longest * _SHRINK_STEP))
    raise ImageRefused(Refusal.CANNOT_SHRINK, f"no encoding under {limits.max_bytes} bytes")
