"""The Channel protocol every adapter implements.

An adapter only translates (platform event -> :class:`~bridge.envelope.Inbound`,
:class:`~bridge.envelope.Outbound` -> platform call).  Access policy, ordering, retries of
model calls and storage live in the core.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from bridge.envelope import ChatAddress, InboundSink, Outbound


class Markup(StrEnum):
    PLAIN = "plain"
    TELEGRAM_HTML = "telegram-html"
    WHATSAPP = "whatsapp"


@dataclass(frozen=True, slots=True)
class Capabilities:
    text_chunk_limit: int
    markup: Markup


@dataclass(frozen=True, slots=True)
class ChannelHealth:
    connected: bool
    detail: str = ""


class SendError(Exception):
    """A send that still failed after the adapter's own retries (429 and the like)."""

    def __init__(self, message: str, *, sent_ids: list[str] | None = None) -> None:
        super().__init__(message)
        # Ids of chunks that did go out before the failure.
        self.sent_ids = sent_ids or []


class Channel(Protocol):
    name: str  # "telegram", "whatsapp", "console"
    account: str  # "default" unless a channel runs several accounts
    capabilities: Capabilities

    async def start(self, sink: InboundSink) -> None:
        """Connect and begin handing inbound messages to ``sink``; return once running."""
        ...

    async def stop(self) -> None:
        """Stop receiving, close connections; idempotent."""
        ...

    async def send(self, out: Outbound) -> list[str]:
        """Render, chunk and send ``out``; return the platform ids of the sent messages.

        Raises :class:`SendError` when it could not be delivered.
        """
        ...

    def typing(self, address: ChatAddress) -> AbstractAsyncContextManager[None]:
        """Show "typing..." in the chat (refreshed) while the context is open."""
        ...

    def health(self) -> ChannelHealth:
        ...
