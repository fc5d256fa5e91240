"""Real generated images for the media tests (pillow, in memory)."""

from __future__ import annotations

import io
import os
import struct
import zlib

from PIL import Image


def noise_image(width: int, height: int, mode: str = "RGB") -> Image.Image:
    """Random pixels: they do not compress, so sizes are realistic."""
    channels = len(mode)
    return Image.frombytes(mode, (width, height), os.urandom(width * height * channels))


def encode(image: Image.Image, fmt: str = "JPEG", **params) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **params)
    return out.getvalue()


def halves_jpeg_with_orientation(orientation: int = 6) -> bytes:
    """40x20 JPEG, left half red, right half blue, EXIF Orientation and a camera Make."""
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    image.paste((0, 0, 255), (20, 0, 40, 20))
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "PalaverCam"
    return encode(image, "JPEG", quality=95, exif=exif)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(
        ">I", zlib.crc32(kind + body) & 0xFFFFFFFF
    )


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares ``width`` x ``height`` pixels (a bomb's shape)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    idat = zlib.compress(b"\x00" * 64)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat)
            + _chunk(b"IEND", b""))


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image
