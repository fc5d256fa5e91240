"""Media store, image references in prompt text, and the image parts of a user message.

- :class:`MediaStore` keeps files named by content hash under ``<dataDir>/media`` (never
  by a name a user chose) and caches prepared (model-ready) images next to them.  With
  the store on PostgreSQL it shares them with the other processes on that database
  (:mod:`bridge.store.media_blobs`): a file stored here is in the database before the
  message naming it is accepted, and a file missing here is fetched from there.
- :func:`find_references` detects image references written in a message.
- :func:`user_parts` turns one stored user message into model parts: text, images or
  placeholders.  Pillow work itself is in :mod:`bridge.images`.

Safety: prompt text comes from strangers.  A reference is loaded only when its real path
(symlinks followed) lies inside an allowed root — the media store plus
``agents.defaults.imageRoots`` — and pillow decodes it within the limits.  Anything else
stays plain text.  Remote ``http(s)`` URLs are never fetched.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import stat
import tempfile
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from bridge import images
from bridge.envelope import MediaKind, MediaRef
from bridge.images import ImageLimits, ImageRefused, PreparedImage, Refusal
from bridge.lru import ThreadSafeLRU
from bridge.models.base import ImagePart, Part, TextPart

if TYPE_CHECKING:
    from bridge.store.db import Database
    from bridge.store.media_blobs import MediaBlobs

log = logging.getLogger(__name__)

_EXT = {
    "image/jpeg": ".jpg", "image/png": ".png", "image/gif": ".gif", "image/webp": ".webp",
    "audio/ogg": ".ogg", "audio/mpeg": ".mp3", "video/mp4": ".mp4", "application/pdf": ".pdf",
}
_MEDIA_ID = re.compile(r"[0-9a-f]{64}")

IMAGE_ALREADY_SEEN = "[image already seen]"
MEDIA_REF_PREFIX = "media:"
# A message may not make the bridge resolve or attach without bound.
MAX_REFERENCES_PER_MESSAGE = 32  # candidates looked up on disk; the rest stay text
MAX_IMAGES_PER_MESSAGE = 10  # images attached from one message (photos + references)

_PREPARED_DIR = "prepared"
_LRU_ENTRIES = 256
_LRU_BYTES = 32 * 1024 * 1024
# Sharing a stored file with the other processes (PostgreSQL): short retries, then it
# waits for ensure_shared() (see put()).
SHARE_RETRY_DELAYS = (0.25, 1.0)
# One slice of a fetch from the store may take this long before the fetch gives up.
FETCH_SLICE_TIMEOUT_S = 30.0
_SHARED_IDS = 4096  # ids known to be in the store (put or fetched here): not asked again


class SharedMediaError(OSError):
    """A file this process does not hold could not be had from the store: the store is
    unavailable, or its copy is damaged (``corrupt``).  A missing row is a plain
    ``FileNotFoundError``."""

    def __init__(self, message: str, *, corrupt: bool = False) -> None:
        super().__init__(message)
        self.corrupt = corrupt


def media_reference(media_id: str) -> str:
    """The text form of a stored file that :func:`find_references` recognises."""
    return MEDIA_REF_PREFIX + media_id


class MediaStore:
    """Content-addressed media files; never named by a user-chosen name.

    With ``blobs`` (the store on PostgreSQL, see :meth:`for_store`) the files are shared
    with every process on that database: :meth:`put` writes them there too, and a file
    missing here is fetched from there into this directory (a cache) when it is read.

    Prepared images are cached on disk under ``<root>/prepared/`` (keyed by the source's
    sha256 and the preparation limits) and in a small in-memory LRU, so a session's images
    are decoded once, not on every turn.
    """

    def __init__(self, root: Path, *, blobs: MediaBlobs | None = None) -> None:
        self.root = Path(root)
        # PostgreSQL: the files shared with the other processes on the database.
        self._blobs = blobs
        self._loop: asyncio.AbstractEventLoop | None = None
        self._bind_loop()
        self._shared: ThreadSafeLRU[str, bool] = ThreadSafeLRU(_SHARED_IDS)
        # media id -> lock held while this process fetches it (one fetch per file)
        self._fetch_locks: dict[str, threading.Lock] = {}
        self._fetch_locks_guard = threading.Lock()
        # key -> PreparedImage, or (Refusal, detail) for an image that was refused
        # key -> the prepared image, or a refusal's (reason, detail)
        self._prepared: ThreadSafeLRU[str, PreparedImage | tuple[Refusal, str]] = \
            ThreadSafeLRU(_LRU_ENTRIES, _LRU_BYTES)
        # (dev, ino, size, mtime_ns) -> sha256 of a referenced file
        self._hashes: ThreadSafeLRU[tuple[int, int, int, int], str] = ThreadSafeLRU(1024)
        # Decoding a 12-megapixel photo holds ~50 MB: at most two at once (worker threads
        # wait here, never the event loop).
        self._decode_slots = threading.BoundedSemaphore(2)

    @classmethod
    def for_store(cls, root: Path, store: Database) -> MediaStore:
        """The media store of a process on ``store``: on PostgreSQL shared with the other
        processes through ``media_blobs``; on SQLite local only (one process)."""
        if store.dialect != "postgresql":
            return cls(root)
        from bridge.store.media_blobs import MediaBlobs

        return cls(root, blobs=MediaBlobs(store))

    @property
    def shared(self) -> bool:
        """Whether files are shared through the store (PostgreSQL)."""
        return self._blobs is not None

    def _bind_loop(self) -> None:
        """Remember the event loop the store's connections belong to (a worker thread
        fetching a file hands its statements to it)."""
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            pass

    def path_for(self, media_id: str) -> Path:
        """The stored file of ``media_id``; ValueError if malformed, FileNotFoundError.

        On a shared store a file missing here is fetched from the database into this
        directory first; that blocks the calling thread, so call it from a worker thread
        (``asyncio.to_thread``), or use :meth:`local_path`.  On the event loop's own
        thread a missing file is FileNotFoundError.  SharedMediaError (an OSError): the
        store could not give it (unavailable, damaged copy).
        """
        digest = _digest_of(media_id)
        found = self._local(digest)
        if found is not None:
            return found
        if self._blobs is None:
            raise FileNotFoundError(media_id)
        return self._fetch(digest)

    async def local_path(self, media_id: str) -> Path:
        """:meth:`path_for` from the event loop: the file, fetched into this directory
        when it is only in the store (in a worker thread)."""
        self._bind_loop()
        return await asyncio.to_thread(self.path_for, media_id)

    async def read_bytes(self, media_id: str) -> bytes:
        """The bytes of stored ``media_id`` (see :meth:`path_for` for the errors)."""
        self._bind_loop()
        return await asyncio.to_thread(lambda: self.path_for(media_id).read_bytes())

    def _local(self, digest: str) -> Path | None:
        matches = sorted(self.root.glob(f"{digest[:2]}/{digest}*"))
        return matches[0] if matches else None

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
        """Store ``data`` (in a worker thread) and return its reference.

        On a shared store (PostgreSQL) the bytes are in the database too when this
        returns, so the message that names them may be accepted: any process can run
        its turn.  When the database cannot take them (after short retries) the file is
        kept here and the failure logged, not raised: ``accept`` of the message then
        meets the same unavailable store and the channel offers the message again (a
        WhatsApp message is held in memory, which an exception here would lose);
        :meth:`ensure_shared`, called before the message is stored, shares it then.
        """
        self._bind_loop()
        media_id = await asyncio.to_thread(self._write, data, mime)
        if self._blobs is not None:
            await self._share(media_id, mime, data)
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
        _atomic_write(folder, target, data)
        return digest

    async def _share(self, media_id: str, mime: str | None, data: bytes) -> None:
        """Put ``data`` into the store's ``media_blobs`` (once per id and process); when
        the store is unavailable, log it (ensure_shared() tries again)."""
        from bridge.store.db import StoreError, unavailable_reason

        assert self._blobs is not None
        if self._shared.get(media_id):
            return
        for attempt in range(len(SHARE_RETRY_DELAYS) + 1):
            try:
                await self._blobs.put(media_id, mime, data)
            except StoreError as exc:
                reason = unavailable_reason(exc)
                if reason is None:
                    raise
                if attempt < len(SHARE_RETRY_DELAYS):
                    await asyncio.sleep(SHARE_RETRY_DELAYS[attempt])
                    continue
                log.warning("media %s kept here only for now: the store is unavailable"
                            " (%s)", media_id[:12], reason)
                return
            self._shared.put(media_id, True)
            return

    async def ensure_shared(self, media_ids: list[str | None] | tuple[str | None, ...]
                            ) -> None:
        """Make sure every one of ``media_ids`` is in the store (from the files here),
        before the message naming them is stored: for media put while the store was
        unavailable (the message offered again later), or put before this process
        shared its media.  Nothing to do on SQLite, or for ids put or fetched here
        already (no statement).  Raises StoreError (unavailable: the caller's message
        waits, as for any write); ids with no file here are logged and skipped (there
        is nothing to share)."""
        if self._blobs is None:
            return
        self._bind_loop()
        wanted = sorted({m[:64] for m in media_ids if m and not self._shared.get(m[:64])})
        if not wanted:
            return
        present = await self._blobs.existing(wanted)
        for media_id in wanted:
            if media_id not in present:
                path = await asyncio.to_thread(self._local, media_id)
                if path is None:
                    log.warning("media %s is neither here nor in the store", media_id[:12])
                    continue
                data = await asyncio.to_thread(path.read_bytes)
                await self._blobs.put(media_id, stored_mime(path), data)
            self._shared.put(media_id, True)

    # -- fetching from the store ---------------------------------------------------------

    def _fetch(self, digest: str) -> Path:
        """Fetch ``digest`` from the store into this directory (blocking this worker
        thread, never the event loop); one fetch per file at a time."""
        loop = self._loop
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            on_loop = False
        else:
            on_loop = True
        if loop is None or on_loop or loop.is_closed():
            # The event loop's own thread must not wait for itself.
            raise FileNotFoundError(f"{digest}: not here (fetch it with local_path())")
        with self._fetch_locks_guard:
            lock = self._fetch_locks.setdefault(digest, threading.Lock())
        try:
            with lock:
                found = self._local(digest)  # fetched meanwhile by another thread
                return found if found is not None else self._download(loop, digest)
        finally:
            with self._fetch_locks_guard:
                if not lock.locked():
                    self._fetch_locks.pop(digest, None)

    def _download(self, loop: asyncio.AbstractEventLoop, digest: str) -> Path:
        from bridge.store.media_blobs import CHUNK_BYTES

        assert self._blobs is not None
        blobs = self._blobs
        info = self._on_loop(loop, blobs.info(digest), digest)
        if info is None:
            raise FileNotFoundError(f"{digest}: not in this process's media nor in the store")
        if info.length != info.size:
            raise _damaged(digest, f"{info.length} bytes stored, {info.size} recorded")
        folder = self.root / digest[:2]
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".fetch-")
        try:
            hasher = hashlib.sha256()
            with os.fdopen(fd, "wb") as fh:
                offset = 0
                while offset < info.size:
                    chunk = self._on_loop(
                        loop, blobs.read_slice(digest, offset, CHUNK_BYTES), digest)
                    if not chunk:
                        raise _damaged(digest, f"ends at {offset} of {info.size} bytes")
                    hasher.update(chunk)
                    fh.write(chunk)
                    offset += len(chunk)
            if offset != info.size or hasher.hexdigest() != digest:
                raise _damaged(digest, "its content does not match its id")
            target = folder / (digest + _EXT.get(info.mime or "", ".bin"))
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._shared.put(digest, True)
        log.debug("media %s fetched from the store (%d bytes)", digest[:12], info.size)
        return target

    @staticmethod
    def _on_loop(loop: asyncio.AbstractEventLoop, coro, digest: str):
        """Run a store coroutine on ``loop`` and wait for it here (a worker thread)."""
        from bridge.store.db import StoreError, unavailable_reason

        try:
            future: Future = asyncio.run_coroutine_threadsafe(coro, loop)
        except RuntimeError:  # the loop closed meanwhile
            coro.close()
            raise SharedMediaError(f"{digest[:12]}: the store is closed") from None
        try:
            return future.result(timeout=FETCH_SLICE_TIMEOUT_S)
        except TimeoutError:
            future.cancel()
            raise SharedMediaError(f"{digest[:12]}: the store did not answer within"
                                   f" {FETCH_SLICE_TIMEOUT_S:g} s") from None
        except StoreError as exc:
            reason = unavailable_reason(exc) or type(exc).__name__
            raise SharedMediaError(f"{digest[:12]}: store unavailable ({reason})") from exc

    # -- prepared images ---------------------------------------------------------------

    async def prepared_media(
        self, media_id: str, limits: ImageLimits, *, need_data: bool = True
    ) -> PreparedImage | None:
        """The model-ready version of stored ``media_id``; raises ImageRefused.

        With ``need_data=False`` only checks that it prepares (``None`` on a disk-cache hit,
        so nothing is read).  On a shared store a file missing here is fetched first.
        """
        self._bind_loop()
        return await asyncio.to_thread(self._prepared_media_sync, media_id, limits, need_data)

    async def prepared_reference(
        self,
        ref: ImageReference,
        roots: tuple[str, ...],
        limits: ImageLimits,
        *,
        base_dir: str | None = None,
        need_data: bool = True,
    ) -> PreparedImage | None:
        """The model-ready image a text reference names (see :func:`user_parts`)."""
        if ref.kind is RefKind.MEDIA:
            return await self.prepared_media(ref.target, limits, need_data=need_data)

        def resolve_and_prepare() -> PreparedImage | None:
            path = reference_path(ref, base_dir)
            return self._prepared_file_sync(path, roots, limits, need_data)

        return await asyncio.to_thread(resolve_and_prepare)

    def _prepared_media_sync(
        self, media_id: str, limits: ImageLimits, need_data: bool
    ) -> PreparedImage | None:
        try:
            path = self.path_for(media_id)
        except SharedMediaError as exc:  # said once per try: a later turn may succeed
            log.warning("media %s not available: %s", media_id[:12], exc)
            reason = Refusal.CORRUPT if exc.corrupt else Refusal.NOT_FOUND
            raise _logged(ImageRefused(reason, str(exc))) from None
        except (ValueError, OSError):
            raise ImageRefused(Refusal.NOT_FOUND, "unknown media id") from None
        # The store's file names are the sha256 of their content: no need to hash again.
        key = self._key(media_id[:64], limits)
        return self._from_cache_or(key, limits, need_data, lambda: _read_regular(str(path), limits))

    def _prepared_file_sync(
        self, path: str, roots: tuple[str, ...], limits: ImageLimits, need_data: bool
    ) -> PreparedImage | None:
        real_roots = _real_roots(roots)
        real = os.path.realpath(path)
        if not _inside(real, real_roots):
            raise ImageRefused(Refusal.OUTSIDE_ROOTS)
        fd = _open_checked(real, real_roots)
        try:
            st = os.fstat(fd)
            if st.st_size > limits.max_source_bytes:
                raise ImageRefused(
                    Refusal.TOO_LARGE, f"{st.st_size} bytes > {limits.max_source_bytes}"
                )
            signature = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            digest = self._hashes.get(signature)
            data = None
            if digest is None:
                data = _read_fd(fd, limits)
                digest = hashlib.sha256(data).hexdigest()
                self._hashes.put(signature, digest)
            key = self._key(digest, limits)
            return self._from_cache_or(
                key, limits, need_data, lambda: data if data is not None else _read_fd(fd, limits)
            )
        finally:
            os.close(fd)

    @staticmethod
    def _key(digest: str, limits: ImageLimits) -> str:
        return hashlib.sha256(f"{digest}|{limits.cache_tag()}".encode()).hexdigest()

    def _from_cache_or(
        self, key: str, limits: ImageLimits, need_data: bool, read_source
    ) -> PreparedImage | None:
        cached = self._prepared.get(key)
        if isinstance(cached, tuple):  # a refusal; a fresh exception, not a growing traceback
            raise _logged(ImageRefused(*cached))
        if cached is not None:
            return cached
        folder = self.root / _PREPARED_DIR / key[:2]
        on_disk = sorted(folder.glob(f"{key}.*")) if folder.is_dir() else []
        if on_disk:
            if not need_data:
                return None
            hit = _load_prepared(on_disk[0])
            if hit is not None:
                self._prepared.put(key, hit, len(hit.data))
                return hit
        try:
            with self._decode_slots:
                prepared = images.prepare_image(read_source(), limits)
        except ImageRefused as refused:
            self._prepared.put(key, (refused.reason, refused.detail))
            log.warning("image refused (%s)%s", refused.reason.value,
                        f": {refused.detail}" if refused.detail else "")
            raise _logged(refused) from None
        ext = "jpg" if prepared.mime == "image/jpeg" else "png"
        try:
            _atomic_write(folder, folder / f"{key}.{prepared.width}x{prepared.height}.{ext}",
                          prepared.data)
        except OSError as exc:  # a full disk costs a re-encode next turn, not the turn
            log.warning("prepared image not cached: %s", type(exc).__name__)
        self._prepared.put(key, prepared, len(prepared.data))
        return prepared


def _digest_of(media_id: str) -> str:
    """The content hash of a well-formed media id (``<sha256>`` or ``<sha256>.ext``)."""
    if not media_id or not _MEDIA_ID.fullmatch(media_id[:64]) or (
        len(media_id) > 64 and not re.fullmatch(r"\.[a-z0-9]{1,8}", media_id[64:])
    ):
        raise ValueError("invalid media id")
    return media_id[:64]


def stored_mime(path: Path) -> str | None:
    """The mime a stored file's extension stands for (None for ``.bin``)."""
    for mime, ext in _EXT.items():
        if path.name.endswith(ext):
            return mime
    return None


def _damaged(digest: str, why: str) -> SharedMediaError:
    return SharedMediaError(f"{digest[:12]}: the store's copy is damaged ({why})",
                            corrupt=True)


def _logged(refused: ImageRefused) -> ImageRefused:
    refused.logged = True  # reported once, when computed
    return refused


def _atomic_write(folder: Path, target: Path, data: bytes) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".part-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load_prepared(path: Path) -> PreparedImage | None:
    try:
        _key, dims, ext = path.name.split(".")
        width, height = (int(v) for v in dims.split("x"))
        data = path.read_bytes()
    except (ValueError, OSError):
        return None
    return PreparedImage(data, "image/jpeg" if ext == "jpg" else "image/png", width, height)


def _real_roots(roots: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(os.path.realpath(os.path.expanduser(r)) for r in roots if r)


def _inside(real: str, real_roots: tuple[str, ...]) -> bool:
    for root in real_roots:
        if real == root or real.startswith(root.rstrip(os.sep) + os.sep):
            return True
    return False


def _open_checked(real: str, real_roots: tuple[str, ...]) -> int:
    """Open a regular file without following a last-moment symlink; re-check the root."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(real, flags | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        raise ImageRefused(Refusal.NOT_FOUND) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # directories, FIFOs, devices
            raise ImageRefused(Refusal.NOT_FOUND, "not a regular file")
        # A directory swapped for a symlink between realpath() and open(): the descriptor
        # knows where it really points (Linux).
        try:
            opened = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            opened = None
        if opened is not None and not _inside(opened, real_roots):
            raise ImageRefused(Refusal.OUTSIDE_ROOTS, "moved out of its root")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _read_fd(fd: int, limits: ImageLimits) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks, total = [], 0
    while chunk := os.read(fd, 1 << 20):
        total += len(chunk)
        if total > limits.max_source_bytes:  # grew while we read it
            raise ImageRefused(Refusal.TOO_LARGE, f"over {limits.max_source_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _read_regular(path: str, limits: ImageLimits) -> bytes:
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        raise ImageRefused(Refusal.NOT_FOUND) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ImageRefused(Refusal.NOT_FOUND, "not a regular file")
        if st.st_size > limits.max_source_bytes:
            raise ImageRefused(
                Refusal.TOO_LARGE, f"{st.st_size} bytes > {limits.max_source_bytes}"
            )
        return _read_fd(fd, limits)
    finally:
        os.close(fd)


# ------------------------------------------------------------------- references in text


class RefKind(StrEnum):
    """How an image reference was written."""

    ABSOLUTE = "absolute"  # /srv/photos/a.jpg
    HOME = "home"  # ~/photos/a.jpg
    RELATIVE = "relative"  # ./a.jpg, ../photos/a.jpg (against the first imageRoot)
    FILE_URL = "file_url"  # file:///srv/photos/a%20b.jpg
    MEDIA = "media"  # media:<sha256 of a stored file>


@dataclass(frozen=True, slots=True)
class ImageReference:
    """A reference found in message text; ``text[start:end]`` is how it was written."""

    kind: RefKind
    start: int
    end: int
    target: str  # the path, URL or media id, without surrounding quotes


_PATH_START = r"(?:file://|~/|\.\.?/|/(?![/\s]))"
_REFERENCE = re.compile(
    # Only at the start of a word (or after an opening bracket/quote/comma), so the path
    # part of an http(s) URL or of "and/or" is never taken for a file.
    r"(?<![^\s(\[{\"'`,])(?:"
    rf"(?P<q>[\"'`])(?P<quoted>{_PATH_START}[^\n]*?)(?P=q)"  # quoted: may hold spaces
    r"|media:(?P<media>[0-9a-fA-F]{64})(?![0-9A-Za-z_])"
    rf"|(?P<bare>{_PATH_START}[^\s\"'`<>]*)"
    r")"
)
_TRAILING = ".,;:!?"
_CLOSERS = {")": "(", "]": "[", "}": "{"}


def find_references(text: str) -> list[ImageReference]:
    """Image references in ``text``, in order: absolute, ``~/``, ``./``/``../`` paths,
    ``file://`` URLs (quoted forms may contain spaces) and ``media:<sha256>``.

    Only detection: whether a reference is loadable is decided later.  ``http(s)`` URLs
    are never references.
    """
    found: list[ImageReference] = []
    for match in _REFERENCE.finditer(text):
        if match.group("media"):
            found.append(ImageReference(
                RefKind.MEDIA, match.start(), match.end(), match.group("media").lower()
            ))
            continue
        if match.group("quoted") is not None:
            target, start, end = match.group("quoted"), match.start(), match.end()
        else:
            target, start = _strip_trailing(match.group("bare")), match.start()
            end = start + len(target)
        kind = _kind_of(target)
        if kind is None:
            continue
        found.append(ImageReference(kind, start, end, target))
    return found


def _strip_trailing(token: str) -> str:
    while token:
        last = token[-1]
        if last in _TRAILING:
            token = token[:-1]
        elif last in _CLOSERS and token.count(_CLOSERS[last]) < token.count(last):
            token = token[:-1]
        else:
            break
    return token


def _kind_of(target: str) -> RefKind | None:
    for prefix, kind in (("file://", RefKind.FILE_URL), ("~/", RefKind.HOME),
                         ("./", RefKind.RELATIVE), ("../", RefKind.RELATIVE),
                         ("/", RefKind.ABSOLUTE)):
        if target.startswith(prefix):
            return kind if target[len(prefix):].strip("/") else None
    return None


def reference_path(ref: ImageReference, base_dir: str | None) -> str:
    """The file system path a (non-media) reference names; raises ImageRefused.

    ``~/`` expands to the bridge's own home; ``./`` and ``../`` join ``base_dir``; the
    result is not yet checked against the roots (the loader does that on the real path).
    """
    target = ref.target
    if ref.kind is RefKind.FILE_URL:
        parts = urlsplit(target)
        if parts.netloc not in ("", "localhost"):
            raise ImageRefused(Refusal.UNSUPPORTED, "file URL on another host")
        return unquote(parts.path)
    if ref.kind is RefKind.HOME:
        expanded = os.path.expanduser(target)
        if expanded == target:  # no home directory known
            raise ImageRefused(Refusal.NOT_FOUND, "no home directory")
        return expanded
    if ref.kind is RefKind.RELATIVE:
        if base_dir is None:
            raise ImageRefused(Refusal.OUTSIDE_ROOTS, "relative path without imageRoots")
        return os.path.join(os.path.expanduser(base_dir), target)
    return target


# ------------------------------------------------------------------ parts of a message


def images_included(turns_back: int, settings=None) -> bool:
    """The ``include_images`` value for a user message ``turns_back`` completed turns old.

    ``turns_back`` is 0 for the message(s) of the turn being answered now, 1 for the most
    recent completed turn, and so on.  True for the current turn and the last
    ``agents.defaults.imageHistoryTurns`` completed turns (default 3).
    """
    limit = settings.imageHistoryTurns if settings is not None else 3
    return turns_back <= limit


class _Parts:
    """Collects parts, merging adjacent text."""

    def __init__(self) -> None:
        self.parts: list[Part] = []

    def text(self, text: str, sep: str = "") -> None:
        if not text:
            return
        if self.parts and isinstance(self.parts[-1], TextPart):
            prev = self.parts[-1].text
            self.parts[-1] = TextPart(prev + (sep if prev else "") + text)
        else:
            self.parts.append(TextPart(text))

    def image(self, prepared: PreparedImage) -> None:
        self.parts.append(ImagePart(prepared.data, prepared.mime))


def _is_image_media(ref: MediaRef) -> bool:
    if not ref.media_id:
        return False
    if ref.kind in (MediaKind.IMAGE, MediaKind.STICKER):
        return True
    # A photo sent "as a file": pillow decides, as for any other candidate.
    return ref.kind is MediaKind.DOCUMENT and (ref.mime or "").startswith("image/")


class FileUse(IntEnum):
    """What :func:`user_parts` with ``vision=True`` looks at for a message, beyond its
    text and media (see :func:`file_use`)."""

    NONE = 0  # nothing: the parts depend on the text and media alone
    STORE = 1  # image attachments only: media-store files, named by their content
    FILES = 2  # image references in the text: paths or ids whose files may change


def file_use(text: str, media: tuple[MediaRef, ...] | list[MediaRef]) -> FileUse:
    """What :func:`user_parts` with ``vision=True`` would look at for this message.

    ``NONE``: its parts depend on ``text`` and ``media`` alone (not on files, settings or
    ``include_images``).  ``STORE``: on the attached images too, which are content-
    addressed, so for a given ``include_images`` and image limits they do not change.
    ``FILES``: the text names files; only a fresh call can tell.
    """
    if find_references(text):
        return FileUse.FILES
    if any(_is_image_media(ref) for ref in media):
        return FileUse.STORE
    return FileUse.NONE


async def user_parts(
    text: str,
    media: tuple[MediaRef, ...] | list[MediaRef],
    *,
    store: MediaStore,
    vision: bool,
    include_images: bool = True,
    settings=None,  # bridge.config.schema.AgentDefaults; None: the defaults
) -> tuple[Part, ...]:
    """The parts of one user message for a model: text with images or placeholders.

    Contract with the conversation core (bridge/prompt.py), called once per user message
    when a prompt is built — the current one and every one of the history window (but
    history turns that :func:`file_use` shows cannot change come from the core's
    ``PromptCache`` after their first rendering):

    - ``text``: the message text (or caption) as stored; ``media``: its MediaRefs.
    - ``vision``: the model's ``input`` contains ``"image"`` (``ResolvedModel.vision``).
      When False the result is exactly one TextPart: ``text`` (references untouched) then
      each MediaRef's ``placeholder()``, joined with newlines; no file is touched.
    - ``include_images``: pass ``images_included(turns_back, settings)`` — True for the
      message(s) of the turn being answered and of the last ``imageHistoryTurns``
      completed turns, False for older ones.
    - ``settings``: ``config.agents.defaults`` (limits, ``imageRoots``).

    With ``vision``: the text is split after each loadable reference (see
    :func:`find_references`) and an ImagePart is inserted there, the reference text itself
    kept; then attached images (IMAGE, STICKER, image/* DOCUMENT with a media_id) follow
    as ImageParts and other media as placeholder text.  With ``include_images=False`` each
    image that would be sent becomes ``[image already seen]`` instead (no bytes read when
    the prepared copy is cached).  A refused reference stays plain text; a refused
    attachment becomes its placeholder; refusals are logged with their reason and never
    raise.  At most ``MAX_IMAGES_PER_MESSAGE`` images per message.  Never empty: a message
    with nothing gives ``(TextPart(""),)``.
    """
    if not vision:
        bits = [text] if text else []
        bits.extend(ref.placeholder() for ref in media)
        return (TextPart("\n".join(bits)),)

    limits = ImageLimits.from_settings(settings)
    image_roots = tuple(r for r in (settings.imageRoots if settings is not None else ()) if r)
    roots = (str(store.root), *image_roots)
    base_dir = image_roots[0] if image_roots else None

    out = _Parts()
    budget = MAX_IMAGES_PER_MESSAGE
    pos = 0
    for ref in find_references(text)[:MAX_REFERENCES_PER_MESSAGE]:
        out.text(text[pos:ref.end])
        pos = ref.end
        if budget <= 0:
            continue
        try:
            prepared = await store.prepared_reference(
                ref, roots, limits, base_dir=base_dir, need_data=include_images
            )
        except ImageRefused as refused:
            _log_refusal(f"image reference ({ref.kind.value})", refused, include_images)
            log.debug("image reference %r ignored: %s", ref.target[:200], refused)
            continue
        except (OSError, ValueError) as exc:  # e.g. a NUL byte in the path
            log.debug("image reference (%s) not loaded: %s", ref.kind.value,
                      type(exc).__name__)
            continue
        budget -= 1
        if include_images and prepared is not None:
            out.image(prepared)
        else:
            out.text(" " + IMAGE_ALREADY_SEEN)
    out.text(text[pos:])

    for attached in media:
        if attached.media_id is not None and _is_image_media(attached) and budget > 0:
            try:
                prepared = await store.prepared_media(
                    attached.media_id, limits, need_data=include_images
                )
            except ImageRefused as refused:
                _log_refusal(f"attached {attached.kind.value}", refused, include_images)
            else:
                budget -= 1
                if include_images and prepared is not None:
                    out.image(prepared)
                else:
                    out.text(IMAGE_ALREADY_SEEN, sep="\n")
                continue
        out.text(attached.placeholder(), sep="\n")

    return tuple(out.parts) or (TextPart(""),)


def _log_refusal(what: str, refused: ImageRefused, live: bool) -> None:
    """Log a refusal once where it matters, with its reason, never the user's path.

    Content refusals (bomb, corrupt, ...) were logged when computed; path refusals recur
    every time a prompt holds the message, so only those of live messages are at INFO.
    """
    level = logging.DEBUG if refused.logged or not live else logging.INFO
    log.log(level, "%s not given to the model: %s", what, refused.reason.value)
