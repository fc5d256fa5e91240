"""One process per data directory: an exclusive ``flock`` held while Palaver runs."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path


class DataDirBusy(Exception):
    """Another Palaver process holds the lock (message says which and what to do)."""


class ProcessLock:
    """An exclusive ``flock`` on a file in the data directory, held while running.

    ``palaver run`` takes ``<dataDir>/palaver.lock``: two bridges on one store would
    answer every message twice.  ``palaver chat --session S`` takes
    ``<dataDir>/console-<S>.lock``: it may run beside ``palaver run`` (it only touches
    its own console session) but not twice for one session.  The kernel drops the lock
    when the process dies, so a crash never leaves a stale lock.
    """

    def __init__(self, path: Path, what: str) -> None:
        self.path = path
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise :class:`DataDirBusy` (never waits)."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no lock
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise DataDirBusy(
                f"{self.what} is already in use by process {holder} (lock {self.path}); "
                "stop that one first, or use another dataDir") from None
        except OSError:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode("ascii"))
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (idempotent)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def run_lock(data_dir: Path) -> ProcessLock:
    """The lock of ``palaver run`` on ``data_dir``."""
    return ProcessLock(Path(data_dir) / "palaver.lock",
                       f"the data directory {data_dir} (a `palaver run`)")


def console_lock(data_dir: Path, session: str) -> ProcessLock:
    """The lock of ``palaver chat --session <session>`` on ``data_dir``."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", session)[:40]
    digest = hashlib.sha256(session.encode("utf-8")).hexdigest()[:8]
    return ProcessLock(Path(data_dir) / f"console-{safe}-{digest}.lock",
                       f"console session {session!r} (a `palaver chat`)")
