"""Pillow preparation on real generated images: orientation, size, format, refusals."""

from __future__ import annotations

import pytest
from PIL import Image

from bridge.images import ImageLimits, ImageRefused, Refusal, prepare_image
from tests.media.imaging import (
    decode,
    encode,
    halves_jpeg_with_orientation,
    noise_image,
    png_declaring,
)


def refusal_of(data: bytes, limits: ImageLimits = ImageLimits()) -> Refusal:
    with pytest.raises(ImageRefused) as caught:
        prepare_image(data, limits)
    return caught.value.reason


def test_exif_orientation_6_is_applied_and_exif_stripped():
    prepared = prepare_image(halves_jpeg_with_orientation(6), ImageLimits())
    image = decode(prepared.data)
    # Stored 40x20 with "rotate 90 CW to display": shown 20x40, the red left half on top.
    assert (prepared.width, prepared.height) == (20, 40) == image.size
    top, bottom = image.getpixel((10, 5)), image.getpixel((10, 35))
    assert top[0] > 200 and top[2] < 60, top
    assert bottom[2] > 200 and bottom[0] < 60, bottom
    assert prepared.mime == "image/jpeg"
    assert dict(image.getexif()) == {}  # camera data (and any GPS) does not reach the model


def test_without_orientation_the_image_stays_landscape():
    prepared = prepare_image(halves_jpeg_with_orientation(1), ImageLimits())
    assert (prepared.width, prepared.height) == (40, 20)


@pytest.mark.parametrize("size, cap, expected", [
    ((3000, 1000), 1568, (1568, 523)),
    ((1000, 3000), 1568, (523, 1568)),
    ((800, 600), 1568, (800, 600)),  # never enlarged
    ((2400, 1800), 500, (500, 375)),
])
def test_longest_side_is_capped(size, cap, expected):
    source = encode(noise_image(*size), "JPEG", quality=90)
    prepared = prepare_image(source, ImageLimits(max_dimension=cap))
    assert (prepared.width, prepared.height) == expected
    assert decode(prepared.data).size == expected


def test_output_fits_the_byte_cap_by_lowering_quality_then_size():
    source = encode(noise_image(1200, 1200), "JPEG", quality=50)  # ~600 kB
    limits = ImageLimits(max_bytes=300_000)
    assert limits.max_bytes < len(source) <= limits.max_source_bytes
    prepared = prepare_image(source, limits)
    assert len(prepared.data) <= 300_000
    assert prepared.mime == "image/jpeg"
    assert max(prepared.width, prepared.height) < 1200  # had to shrink: noise at q45 is big


def test_real_transparency_keeps_png_and_opaque_alpha_becomes_jpeg():
    clear = Image.new("RGBA", (50, 50), (255, 0, 0, 255))
    clear.paste((0, 0, 0, 0), (0, 0, 25, 50))
    prepared = prepare_image(encode(clear, "PNG"), ImageLimits())
    assert prepared.mime == "image/png"
    assert decode(prepared.data).getpixel((5, 5))[3] == 0

    opaque = Image.new("RGBA", (50, 50), (0, 255, 0, 255))
    assert prepare_image(encode(opaque, "PNG"), ImageLimits()).mime == "image/jpeg"


def test_animated_gif_gives_its_first_frame():
    frames = [Image.new("RGB", (30, 30), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    source = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100,
                    loop=0)
    assert Image.open(__import__("io").BytesIO(source)).n_frames == 2
    pixel = decode(prepare_image(source, ImageLimits()).data).getpixel((15, 15))
    assert pixel[0] > 200 and pixel[2] < 60


def test_webp_and_cmyk_and_greyscale_sources_are_normalised():
    for source in (
        encode(noise_image(64, 48), "WEBP"),
        encode(Image.new("CMYK", (64, 48), (0, 255, 255, 0)), "JPEG"),
        encode(Image.new("L", (64, 48), 128), "PNG"),
    ):
        prepared = prepare_image(source, ImageLimits())
        assert prepared.mime == "image/jpeg" and decode(prepared.data).mode == "RGB"


def test_not_an_image_is_refused_whatever_its_name():
    assert refusal_of(b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\n") is Refusal.NOT_IMAGE
    assert refusal_of(b"root:x:0:0:root:/root:/bin/bash\n") is Refusal.NOT_IMAGE
    # An EPS would be handed to Ghostscript by pillow; only known raster formats are opened.
    assert refusal_of(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n") is Refusal.NOT_IMAGE


def test_decompression_bombs_are_refused_before_decoding():
    # Over our own limit (50 Mpx) but under pillow's own warning threshold (~89 Mpx).
    assert refusal_of(png_declaring(10_000, 6_000)) is Refusal.BOMB
    # Far over pillow's error threshold: its DecompressionBombError becomes the same reason.
    assert refusal_of(png_declaring(40_000, 40_000)) is Refusal.BOMB
    # A real image over an operator's lower limit.
    assert refusal_of(encode(noise_image(200, 200), "PNG"),
                      ImageLimits(max_pixels=10_000)) is Refusal.BOMB


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_images_are_refused(fmt):
    source = encode(noise_image(300, 300), fmt)
    assert refusal_of(source[: len(source) // 2]) is Refusal.CORRUPT


def test_corrupt_header_is_refused():
    source = bytearray(encode(noise_image(64, 64), "PNG"))
    source[20:40] = b"\xff" * 20  # IHDR fields and CRC smashed
    assert refusal_of(bytes(source)) in (Refusal.CORRUPT, Refusal.NOT_IMAGE)


def test_oversize_source_is_refused_before_decoding():
    source = encode(noise_image(400, 400), "PNG")
    limits = ImageLimits(max_bytes=len(source) // 4 - 1)
    assert len(source) > limits.max_source_bytes
    assert refusal_of(source, limits) is Refusal.TOO_LARGE


def test_an_image_that_cannot_fit_the_byte_cap_is_refused():
    # Transparent noise stays PNG and never gets under 5 kB, even at the smallest size.
    source = encode(noise_image(64, 64, "RGBA"), "PNG")
    limits = ImageLimits(max_bytes=5_000)
    assert len(source) <= limits.max_source_bytes
    assert refusal_of(source, limits) is Refusal.CANNOT_SHRINK


def test_limits_come_from_settings():
    from bridge.config.schema import AgentDefaults

    limits = ImageLimits.from_settings(
        AgentDefaults(imageMaxDimensionPx=800, imageMaxBytes=1000, imageMaxPixels=7)
    )
    assert limits == ImageLimits(max_dimension=800, max_bytes=1000, max_pixels=7)
    assert limits.max_source_bytes == 4000
    assert ImageLimits.from_settings(None) == ImageLimits()
