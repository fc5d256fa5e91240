"""Lines of a terminal, pipe or file for the event loop (``palaver chat`` reads with it)."""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import os
from collections import deque
from typing import Any


class StdinLines:
    """Lines of a stream for the event loop, without a thread blocked in ``readline``.

    A terminal or pipe is watched with ``loop.add_reader``, so cancelling ``readline()``
    (Ctrl-C) returns at once and nothing keeps the process alive.  Streams the loop
    cannot watch (regular files, ``StringIO``) are read in a worker thread; they never
    block for long.  ``readline()`` returns ``""`` at end of input.
    """

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._loop = asyncio.get_running_loop()
        self._lines: deque[str] = deque()
        self._buffer = ""
        self._eof = False
        self._ready = asyncio.Event()
        encoding = getattr(stream, "encoding", None) or "utf-8"
        self._decoder = codecs.getincrementaldecoder(encoding)(errors="replace")
        self._fd: int | None = None
        try:
            fd = stream.fileno()
        except (AttributeError, OSError, ValueError):
            return
        try:
            self._loop.add_reader(fd, self._on_readable)
        except (OSError, ValueError, NotImplementedError):
            return  # e.g. a regular file (epoll refuses it)
        self._fd = fd

    def _on_readable(self) -> None:
        assert self._fd is not None
        try:
            data = os.read(self._fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self._buffer += self._decoder.decode(data)
            while "\n" in self._buffer:
                line, self._buffer = self._buffer.split("\n", 1)
                self._lines.append(line + "\n")
        else:
            self._buffer += self._decoder.decode(b"", final=True)
            if self._buffer:
                self._lines.append(self._buffer)
                self._buffer = ""
            self._eof = True
            self.close()
        self._ready.set()

    async def readline(self) -> str:
        """The next line (with its newline), ``""`` at end of input."""
        if self._fd is None and not self._eof and not self._lines:
            line: str = await asyncio.to_thread(self._stream.readline)
            return line
        while not self._lines:
            if self._eof:
                return ""
            self._ready.clear()
            await self._ready.wait()
        return self._lines.popleft()

    def close(self) -> None:
        """Stop watching the stream (idempotent)."""
        if self._fd is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._fd)
            self._fd = None
