"""A media store, an image root with good and hostile files, and a secret outside it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from bridge import images
from bridge.config.schema import AgentDefaults
from bridge.media import MediaStore
from tests.media.imaging import encode, noise_image, png_declaring


@dataclass
class Files:
    store: MediaStore
    pics: Path  # an imageRoot
    albums: Path  # the first imageRoot: base of ./ and ../ references
    outside: Path  # not a root
    home: Path
    settings: AgentDefaults

    def at(self, name: str) -> str:
        return str(self.pics / name)


@pytest.fixture
def files(tmp_path) -> Files:
    home = Path(os.environ["HOME"])
    pics, outside = tmp_path / "pics", tmp_path / "outside"
    albums = pics / "albums"
    for folder in (albums, outside, home / ".ssh", home / "shots"):
        folder.mkdir(parents=True)
    red = encode(Image.new("RGB", (300, 200), (220, 20, 20)), "JPEG")
    (pics / "ok.jpg").write_bytes(red)
    (albums / "in album.jpg").write_bytes(encode(Image.new("RGB", (30, 20), (0, 200, 0)), "PNG"))
    (home / "shots" / "s.png").write_bytes(encode(Image.new("RGB", (20, 20), (0, 0, 200)), "PNG"))
    (pics / "fake.png").write_bytes(b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\n")
    (pics / "bomb.png").write_bytes(png_declaring(10_000, 6_000))
    truncated = encode(noise_image(200, 200), "JPEG")
    (pics / "trunc.jpg").write_bytes(truncated[: len(truncated) // 2])
    (pics / "big.jpg").write_bytes(encode(noise_image(800, 800), "JPEG", quality=95))
    # Real images outside every root: only the root check keeps them out.
    (outside / "secret.jpg").write_bytes(red)
    (home / ".ssh" / "id_rsa").write_bytes(red)
    (pics / "escape.jpg").symlink_to(outside / "secret.jpg")
    (pics / "linkdir").symlink_to(outside, target_is_directory=True)
    (pics / "inner.jpg").symlink_to(pics / "ok.jpg")
    os.mkfifo(pics / "pipe.jpg")
    settings = AgentDefaults(
        imageRoots=(str(albums), str(pics), "~/shots"), imageMaxBytes=100_000,
    )
    assert (pics / "big.jpg").stat().st_size > 4 * settings.imageMaxBytes
    return Files(MediaStore(tmp_path / "data" / "media"), pics, albums, outside, home, settings)


@pytest.fixture
def prepare_calls(monkeypatch) -> list[int]:
    """Counts runs of the pillow preparation (each appends the source size)."""
    calls: list[int] = []
    real = images.prepare_image

    def counting(data, limits):
        calls.append(len(data))
        return real(data, limits)

    monkeypatch.setattr(images, "prepare_image", counting)
    return calls
