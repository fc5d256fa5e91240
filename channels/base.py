"""The Channel protocol every adapter implements.

An adapter only translates (platform event -> :class:`~bridge.envelope.Inbound`,
:class:`~bridge.envelope.Outbound` -> platform call).  Access policy, ordering, retries of
model calls and of deliveries, and storage live in the core.

Delivery contract (the core's side, ``bridge.conversation``):

- ``send()`` raising ``SendError(..., retryable=True)`` (still connecting, timeout,
  network down, 5xx, rate limit outlasting the adapter's own wait): the reply stays
  queued and the core tries again with backoff (5 s, 15 s, 1 min, 5 min, 10 min, 15 min
  ... gives up after about an hour; then ``failed``, logged).  The whole reply is sent
  again, so chunks listed in ``sent_ids`` may repeat.
- ``SendError(...)`` (``retryable=False``, the default: chat not found, blocked,
  message refused): the reply is marked ``failed`` with the reason, never retried.
- Any other exception: treated as not retryable (the message may have gone out; a
  retry could send it twice), marked ``failed`` and logged with its traceback.
- When a channel (re)connects after ``start()`` returned, it calls
  ``sink.channel_ready(self)`` if the sink has that method (``ConversationCore`` does;
  call it on the event loop's thread or not, both work): the core then tries the
  channel's queued replies at once instead of waiting for their backoff.  (Right after
  ``start()`` there is no need: the core's own start sends every queued reply.)
- ``owns(address)`` (optional, default: every address of the channel's name and
  account): whether this channel instance serves that chat.  The core recovers, resumes
  and delivers only the sessions a running channel owns (``palaver chat --session bob``
  never answers alice's console session).
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
    """A send that still failed after the adapter's own retries (429 and the like).

    ``retryable=True`` when the failure is passing (not connected yet, timeout, network,
    server error): the core keeps the reply and tries again later.  The default ``False``
    means permanent (chat gone, bot blocked, message refused): the reply is ``failed``.
    """

    def __init__(self, message: str, *, sent_ids: list[str] | None = None,
                 retryable: bool = False) -> None:
        super().__init__(message)
        # Ids of chunks that did go out before the failure.
        self.sent_ids = sent_ids or []
        self.retryable = retryable


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

    # Optional (looked up with getattr; absent means "every address of my name/account"):
    #
    #     def owns(self, address: ChatAddress) -> bool:
    #         """Whether this instance serves ``address`` (e.g. one console session)."""


def channel_owns(channel: object, address: ChatAddress) -> bool:
    """``channel.owns(address)`` when the channel defines it, else True."""
    owns = getattr(channel, "owns", None)
    return True if owns is None else bool(owns(address))
