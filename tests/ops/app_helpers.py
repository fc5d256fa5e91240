"""Shared by the tests that run a real App: a minimal channel and bounded waits."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

from bridge.app import App
from bridge.envelope import ChatAddress, Outbound
from bridge.ports import Capabilities, Channel, ChannelHealth, Markup, SendProgress

__all__ = ["OpsChannel", "answered", "free_port"]


def free_port() -> int:
    """A port nothing listens on (bound once, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OpsChannel(Channel):
    """A minimal Channel: records replies, reports the health it is told to."""

    def __init__(self, name: str = "telegram", *, connected: bool = True, detail: str = "",
                 start_error: Exception | None = None) -> None:
        self.name = name
        self.account = "default"
        self.capabilities = Capabilities(text_chunk_limit=4000, markup=Markup.PLAIN)
        self.connected = connected
        self.detail = detail
        self.start_error = start_error
        self.sent: list[Outbound] = []
        self.replied = asyncio.Event()
        self.typing_started = asyncio.Event()  # a turn for one of its chats began
        self.running = False

    async def start(self, sink: Any) -> None:
        if self.start_error is not None:
            raise self.start_error
        self.running = True

    async def stop(self) -> None:
        self.running = False

    async def send(self, out: Outbound, progress: SendProgress | None = None) -> list[str]:
        if progress is not None and progress.start >= 1:
            return []  # one chunk per reply, already sent
        self.sent.append(out)
        self.replied.set()
        if progress is not None:
            await progress.report(0, f"sent-{len(self.sent)}")
        return [f"sent-{len(self.sent)}"]

    @contextlib.asynccontextmanager
    async def typing(self, address: ChatAddress) -> AsyncIterator[None]:
        self.typing_started.set()
        yield

    def health(self) -> ChannelHealth:
        return ChannelHealth(connected=self.running and self.connected, detail=self.detail)


async def answered(app: App, channel: OpsChannel, count: int) -> None:
    """Wait (bounded) until ``channel`` got ``count`` replies and the core is idle."""
    async with asyncio.timeout(10):
        while len(channel.sent) < count:
            channel.replied.clear()
            await channel.replied.wait()
        await app.core.wait_idle()
