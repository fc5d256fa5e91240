"""What every fake HTTP server here shares: an aiohttp app on 127.0.0.1, an ephemeral
port, ``close()`` that first releases requests held open (``_closing``), and ``async
with``."""

from __future__ import annotations

import asyncio
from typing import Self

from aiohttp import web


class LoopbackServer:
    """Subclasses build their routes in ``start()`` and call :meth:`_serve`."""

    def __init__(self) -> None:
        self._closing = asyncio.Event()  # set at close: hanging handlers return
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> Self:
        raise NotImplementedError

    async def _serve(self, app: web.Application) -> Self:
        """Listen on 127.0.0.1, an ephemeral port."""
        self._runner = web.AppRunner(app, shutdown_timeout=0.5, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def close(self) -> None:
        """Release hanging requests and stop listening."""
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"
