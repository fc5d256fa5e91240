"""Media store: files named by content hash under ``<dataDir>/media``.

(Image preparation and prompt image references arrive with the images issue.)
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
from pathlib import Path

from bridge.envelope import MediaKind, MediaRef

_EXT = {
    "image/jpeg": ".jpg", "image/png": ".png", "image/gif": ".gif", "image/webp": ".webp",
    "audio/ogg": ".ogg", "audio/mpeg": ".mp3", "video/mp4": ".mp4", "application/pdf": ".pdf",
}


class MediaStore:
    """Content-addressed media files; never named by a user-chosen name."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path_for(self, media_id: str) -> Path:
        if not media_id or not all(c in "0123456789abcdef." for c in media_id[:64]):
            raise ValueError("invalid media id")
        matches = sorted(self.root.glob(f"{media_id[:2]}/{media_id}*"))
        if not matches:
            raise FileNotFoundError(media_id)
        return matches[0]

    async def put(
        self,
        data: bytes,
        *,
        kind: MediaKind,
        mime: str | None = None,
        filename: str | None = None,
        duration_s: float | None = None,
        width: int | None = None,
        height: int | None = None,
    ) -> MediaRef:
        """Store ``data`` (in a worker thread) and return its reference."""
        media_id = await asyncio.to_thread(self._write, data, mime)
        return MediaRef(
            kind=kind, media_id=media_id, mime=mime, filename=filename, size=len(data),
            duration_s=duration_s, width=width, height=height,
        )

    def _write(self, data: bytes, mime: str | None) -> str:
        digest = hashlib.sha256(data).hexdigest()
        folder = self.root / digest[:2]
        target = folder / (digest + _EXT.get(mime or "", ".bin"))
        if target.exists():
            return digest
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".part-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return digest


async def user_parts(
    text: str,
    media: tuple[MediaRef, ...] | list[MediaRef],
    *,
    store: MediaStore,
    vision: bool,
    include_images: bool = True,
    settings=None,  # bridge.config.schema.AgentDefaults
):
    """The parts of one user message for a model: text with images (or placeholders).

    Placeholder version; the images issue replaces it (same signature): image references
    in ``text`` and images in ``media`` become ImageParts when ``vision`` and
    ``include_images``, else placeholder text.
    """
    from bridge.models.base import TextPart

    bits = [text] if text else []
    bits.extend(ref.placeholder() for ref in media)
    return (TextPart("\n".join(bits)),)
