"""The contract between the core and the channels: what each side offers the other.

The core owns it; channel adapters (``channels/``) implement :class:`Channel` and call
an :class:`InboundSink` (the conversation core).  Nothing here knows a platform SDK.

An adapter only translates (platform event -> :class:`~bridge.envelope.Inbound`,
:class:`~bridge.envelope.Outbound` -> platform call).  Access policy, ordering, retries
of model calls and of deliveries, and storage live in the core.

Delivery contract (the core's side, ``bridge.delivery``):

- ``send()`` raising ``SendError(..., retryable=True)`` (still connecting, timeout,
  network down, 5xx, rate limit outlasting the adapter's own wait): the reply stays
  queued and the core tries again with backoff (5 s, 15 s, 1 min, 5 min, 10 min, 15 min
  ... gives up after about an hour; then ``failed``, logged).  The whole reply is sent
  again from the first chunk not recorded through ``progress.sent`` (below), so only
  a chunk whose ``sent`` callback did not complete may repeat (at least once per chunk).
- Chunk-level progress: the core passes ``send(out, progress=SendProgress(...))``.  The
  channel chunks ``out`` *deterministically* (the same ``Outbound`` and capabilities give
  the same list of chunks, the reply cap included), skips the first ``progress.start``
  chunks (already delivered, maybe by an earlier process) and, after each chunk Telegram
  or WhatsApp accepted, awaits ``progress.sent(index, platform_id)`` *before* sending the
  next one (``index`` counts from 0 over all chunks, skipped ones included).  The core
  records each call durably, so a crash or a retryable failure resumes at the first chunk
  not recorded.  ``progress`` may be ``None`` (tests, old callers): send every chunk.
  A channel whose ``send`` has no ``progress`` parameter still works: the core then sends
  the whole reply and records its ids at the end (resume per reply, not per chunk).
- The reply cap: the channel's own ``channels.<name>.maxReplyChunks`` (default 10).  A
  reply that would need more chunks goes out as at most that many sends: the first
  ``maxReplyChunks - 1`` chunks, then one more send holding the note (and the rest as
  a document where the platform has one, else the note alone: truncated).
  :func:`bridge.delivery.cap_chunks` does the cut and words the note; the last send
  counts as a chunk for ``progress`` like any other.
- ``out.text`` is already filtered by the core for the secrets in the config in force
  (``bridge.secrets.redact``); channels need not filter again.
- ``SendError(...)`` (``retryable=False``, the default: chat not found, blocked,
  message refused): the reply is marked ``failed`` with the reason, never retried.
- Any other exception: treated as not retryable (the message may have gone out; a
  retry could send it twice), marked ``failed`` and logged with its traceback.
- When a channel (re)connects after ``start()`` returned, it calls
  ``sink.channel_ready(self)`` (from the event loop's thread or not, both work): the
  core then tries the channel's queued replies at once instead of waiting for their
  backoff.  (Right after ``start()`` there is no need: the core's own start sends every
  queued reply.)
- Voice replies: with ``capabilities.voice_notes`` the core may call
  ``send_voice(address, ogg, ...)`` before ``send()`` for a spoken reply.  A voice send
  that fails in any way is not retried: the core sends the reply's text instead (a
  reply is never lost because its voice failed), and a reply spoken only in part is
  followed by its whole text.  Chunk progress counts text chunks only.
- ``owns(address)`` (default: every address): whether this channel instance serves that
  chat.  The core recovers, resumes and delivers only the sessions a running channel
  owns (``palaver chat --session bob`` never answers alice's console session).

Adapters and sinks subclass these protocols explicitly, so they inherit the defaults.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from bridge.envelope import AcceptStatus, ChatAddress, Inbound, Outbound


class Markup(StrEnum):
    """The text markup a channel renders a reply's Markdown into."""

    PLAIN = "plain"
    TELEGRAM_HTML = "telegram-html"
    WHATSAPP = "whatsapp"


@dataclass(frozen=True, slots=True)
class Capabilities:
    text_chunk_limit: int
    markup: Markup
    # send_voice() delivers OGG/Opus as a voice message (Telegram, WhatsApp PTT).
    voice_notes: bool = False
    # Live previews this channel can show while an answer streams (issue 17).
    preview_modes: frozenset[PreviewMode] = frozenset()
    # react() sets and removes an emoji reaction on a received message.
    reactions: bool = False


class PreviewMode(StrEnum):
    """How a streaming answer is shown before it is final (``streaming`` in the config)."""

    OFF = "off"
    DRAFT = "draft"  # Telegram sendMessageDraft: ephemeral, private chats only
    EDIT = "edit"  # one real message, edited in place; becomes the reply's first chunk


@dataclass(frozen=True, slots=True)
class PreviewKey:
    """What the core stores to finish or remove a preview later (after a crash too).

    ``platform_id`` is the preview message's id as the channel writes chunk ids (edit
    mode); draft previews are never stored (they vanish on their own).
    """

    mode: PreviewMode
    platform_id: str


class PreviewError(Exception):
    """A preview update failed; previews end for this turn (the reply is unaffected)."""


class PreviewRateLimited(PreviewError):
    """The platform said slow down; the channel has already held the chat's pacer."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"rate limited, retry after {retry_after:g}s")
        self.retry_after = retry_after


class PreviewGone(PreviewError):  # noqa: N818 - a state of the preview
    """Permanent for this preview or chat (message deleted, chat takes no drafts)."""


class PreviewMaybeSent(PreviewError):  # noqa: N818 - a state of the request
    """The request went out and its answer was lost: it may have landed."""


class Preview(Protocol):
    """One live preview of one turn's answer, handed out by :meth:`Channel.preview`."""

    mode: PreviewMode

    async def update(self, text: str, *, restart: bool = False) -> None:
        """Show ``text`` (plain, already filtered and redacted by the core; ``""`` shows
        the platform's "thinking" placeholder).  ``restart``: the text is not a
        continuation of what was shown (a fallback model took over); draft mode starts a
        new draft.  Raises :class:`PreviewError` subclasses; never retries itself."""
        ...

    async def delete(self) -> None:
        """Remove what this preview shows (edit mode: delete the message; draft: no-op)."""
        ...


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


SentCallback = Callable[[int, str], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class SendProgress:
    """How far a reply already got, and where the channel reports each chunk it sends.

    ``start``: chunks ``0 .. start-1`` were delivered before; do not send them again.
    ``sent(index, platform_id)``: await it after chunk ``index`` was accepted by the
    platform, before the next chunk (the core stores it; if it raises, stop sending and
    let the exception propagate).
    """

    start: int = 0
    sent: SentCallback | None = None

    async def report(self, index: int, platform_id: str) -> None:
        """Call ``sent`` when there is one (channels may call this unconditionally)."""
        if self.sent is not None:
            await self.sent(index, platform_id)


class NotSent(Exception):  # noqa: N818 - a fact about a failure, mixed into SDK errors
    """An adapter-side failure known to have happened before anything reached the
    platform, so sending again cannot duplicate the message.  Adapters retry these
    themselves and report them to the core as ``SendError(retryable=True)``."""


class StoreUnavailable(Exception):  # noqa: N818 - a state of the store, not a bug
    """``InboundSink.accept()`` could not store the message (disk full, database locked
    past the core's own short retries, read-only file, I/O error).  Nothing was stored.

    The contract for the channel that gets it:

    - do **not** confirm the message to the platform (Telegram: do not advance the
      ``getUpdates`` offset past it; webhook: answer non-200, e.g. 503, so Telegram
      retries; WhatsApp: do not ack/mark it read) -- the platform or the channel must
      still hold it;
    - keep it and offer it again later, in order, with backoff (``bridge.backoff``);
      a channel that cannot leave it with the platform holds it in memory, bounded,
      and logs what it dropped when the bound is reached;
    - log one line when the outage starts and one when it ends, not one per message;
    - the core reports itself not ready (``/healthz`` 503) until a write succeeds
      again; the next successful ``accept()`` ends the outage.

    ``reason`` is a short human cause ("disk full", "database locked", "read-only",
    "I/O error") without paths or secrets.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(f"store unavailable: {reason}")
        self.reason = reason


class InboundSink(Protocol):
    """What a channel hands inbound messages to (the conversation core)."""

    async def accept(self, inbound: Inbound) -> AcceptStatus:
        """Persist ``inbound`` (idempotent on channel+account+message id), then return.

        Raises :class:`StoreUnavailable` when it could not be stored (see there): the
        channel must not confirm the message and must offer it again later.
        """
        ...

    async def admits(self, inbound: Inbound) -> bool:
        """Would ``accept`` answer this message?  No side effects.

        Channels ask this before downloading media, so a stranger's file or an
        unmentioned group photo is never fetched.  ``inbound`` carries the media
        references without bytes (``media_id`` None).  The default admits everything.
        """
        return True

    def channel_ready(self, channel: Channel) -> None:
        """``channel`` is connected (again): its queued replies may go out now.

        Callable from any thread.  The default does nothing.
        """
        return None


class Channel(Protocol):
    """A chat platform adapter, as the core sees it."""

    name: str  # "telegram", "whatsapp", "console"
    account: str  # "default" unless a channel runs several accounts
    capabilities: Capabilities

    async def start(self, sink: InboundSink) -> None:
        """Connect and begin handing inbound messages to ``sink``; return once running."""
        ...

    async def stop(self) -> None:
        """Stop receiving, close connections; idempotent."""
        ...

    async def send(self, out: Outbound, progress: SendProgress | None = None) -> list[str]:
        """Render, chunk (deterministically) and send ``out``; return the platform ids of
        the chunks sent by this call (those before ``progress.start`` are skipped).

        After each chunk is accepted, awaits ``progress.sent(index, platform_id)`` (see
        the module's delivery contract).  Raises :class:`SendError` when it could not be
        delivered (``sent_ids``: the chunks of this call that did go out).
        """
        ...

    async def send_voice(self, address: ChatAddress, audio: bytes, *,
                         duration_s: float | None = None, caption: str | None = None,
                         reply_to_message_id: str | None = None) -> str:
        """Send OGG/Opus ``audio`` as a voice message; return its platform id.  Only
        called when ``capabilities.voice_notes``; raises :class:`SendError` like
        :meth:`send` (the core then sends the reply's text instead)."""
        raise SendError(f"{self.name} does not send voice messages")

    def spoken_names(self) -> tuple[str, ...]:
        """What people call the bot out loud (``@username``, display name): a group
        voice note saying one counts as a mention under ``transcribeForMentions``."""
        return ()

    def typing(self, address: ChatAddress) -> AbstractAsyncContextManager[None]:
        """Show "typing..." in the chat (refreshed) while the context is open."""
        ...

    def health(self) -> ChannelHealth:
        ...

    def owns(self, address: ChatAddress) -> bool:
        """Whether this instance serves ``address`` (e.g. one console session)."""
        return True

    def preview(self, address: ChatAddress, mode: PreviewMode, *, turn_id: int,
                reply_to: str | None = None,
                on_created: Callable[[PreviewKey], Awaitable[None]] | None = None,
                ) -> Preview | None:
        """A live preview for one turn in ``address``, or None when this chat cannot
        show ``mode`` now (not in ``capabilities.preview_modes``, a group asked for a
        draft, the chat refused drafts lately).  Edit mode awaits ``on_created(key)``
        right after the preview message exists, before any further update, so the core
        stores it durably.  ``turn_id`` makes draft ids unique per turn."""
        return None

    def may_preview_now(self, address: ChatAddress) -> bool:
        """Whether a preview update may go out now without taking the send budget the
        final reply needs (Telegram: a free pacer slot with one to spare).  True *takes*
        that slot: ask only right before an update that will be sent."""
        return True

    async def discard_preview(self, address: ChatAddress, key: PreviewKey) -> None:
        """Remove a preview left by an earlier process or a stopped turn (edit mode:
        delete the message; "already gone" is success).  Raises SendError on failure."""
        return None

    async def react(self, address: ChatAddress, message_id: str, emoji: str) -> None:
        """Set ``emoji`` as the bot's reaction on received message ``message_id``;
        ``""`` removes it.  Only called with ``capabilities.reactions``.  Failures raise
        (the core logs them at debug and never lets them touch a reply)."""
        return None
