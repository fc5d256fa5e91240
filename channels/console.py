"""The terminal as a channel (``palaver chat``): same store, commands and routing.

The operator at the console is always allowed (see ``bridge.access``).  Each line typed
becomes an :class:`~bridge.envelope.Inbound` of one direct session; replies are written
to ``out`` as plain text.
"""

from __future__ import annotations

import contextlib
import itertools
import sys
import time
import uuid
from collections.abc import AsyncIterator
from typing import TextIO

from bridge.envelope import AcceptStatus, ChatAddress, ChatKind, Inbound, Outbound
from bridge.ports import (
    Capabilities,
    Channel,
    ChannelHealth,
    InboundSink,
    Markup,
    SendError,
    SendProgress,
)


class ConsoleChannel(Channel):
    """A Channel whose chat is the terminal; ``submit(text)`` is the operator typing."""

    name = "console"

    def __init__(self, *, session: str = "operator", out: TextIO | None = None,
                 account: str = "default") -> None:
        self.account = account
        self.session = session
        self.capabilities = Capabilities(text_chunk_limit=1_000_000, markup=Markup.PLAIN)
        self._out = out
        self._sink: InboundSink | None = None
        # Message ids unique across runs, so the store's idempotency never hides a line.
        self._run = uuid.uuid4().hex[:12]
        self._counter = itertools.count(1)
        self._sent = itertools.count(1)
        self.sent: list[Outbound] = []

    @property
    def address(self) -> ChatAddress:
        return ChatAddress(self.name, self.account, self.session, ChatKind.DIRECT)

    def owns(self, address: ChatAddress) -> bool:
        """Only this console session: ``palaver chat --session bob`` never recovers,
        answers or prints alice's console messages."""
        return (address.channel == self.name and address.account == self.account
                and address.chat_id == self.session)

    async def start(self, sink: InboundSink) -> None:
        """Remember the sink; the console has nothing to connect."""
        self._sink = sink

    async def stop(self) -> None:
        self._sink = None

    def make_inbound(self, text: str) -> Inbound:
        """The envelope for one line typed by the operator."""
        return Inbound(
            address=self.address, sender_id=self.session,
            message_id=f"{self._run}-{next(self._counter)}", timestamp=time.time(),
            text=text, sender_name="operator", mentioned=True)

    async def submit(self, text: str) -> tuple[Inbound, AcceptStatus]:
        """Hand one typed line to the core; returns the envelope and what the core said."""
        if self._sink is None:
            raise RuntimeError("console channel is not started")
        inbound = self.make_inbound(text)
        return inbound, await self._sink.accept(inbound)

    async def send(self, out: Outbound, progress: SendProgress | None = None) -> list[str]:
        """Print the reply as plain text (one chunk, reported through ``progress``)."""
        if progress is not None and progress.start >= 1:
            return []  # printed before
        stream = self._out or sys.stdout
        try:
            stream.write(out.text.rstrip("\n") + "\n")
            stream.flush()
        except (OSError, ValueError) as exc:
            raise SendError(f"cannot write to the terminal: {exc}") from exc
        self.sent.append(out)
        platform_id = f"console-{self._run}-{next(self._sent)}"
        if progress is not None:
            await progress.report(0, platform_id)
        return [platform_id]

    @contextlib.asynccontextmanager
    async def typing(self, address: ChatAddress) -> AsyncIterator[None]:
        """Nothing to show; the prompt simply waits."""
        yield

    def health(self) -> ChannelHealth:
        return ChannelHealth(connected=self._sink is not None,
                             detail="" if self._sink is not None else "not started")
