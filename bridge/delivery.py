"""The outbox: replies go out in order, a passing failure is retried with backoff.

A reply is stored before it is sent (``Store.finish_turn``) and marked delivered after.
:class:`Outbox` sends a session's stored replies oldest first; a send that fails for a
passing reason (``SendError(retryable=True)``) is marked for a retry after the next of
:data:`SEND_RETRY_DELAYS` and the session is *held*: later replies queue behind it until
it goes out (the scheduler wakes the session when the delay has passed, or at once when
the channel reports it is ready again).  Any other failure marks the reply failed — an
exception that is not a ``SendError`` may have left the message half sent, so it is never
sent twice.

A turn that streamed into an edit-mode preview (issue 17) has it stored: its reply's
chunk 0 is an edit of that message (``Outbound.edit_message_id``; the channel treats
"not modified" as sent, so a resumed chunk 0 is not shown twice).  Once the reply is
delivered or failed for good the stored preview is forgotten, and ``on_delivered`` is told
(the ack reactions come off).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import TYPE_CHECKING, TypeVar

from bridge.envelope import ChatAddress, Outbound, VoiceClip
from bridge.ports import PreviewMode, SendError, SendProgress
from bridge.secrets import redact_configured
from bridge.store.coord import Lost

if TYPE_CHECKING:
    from bridge.ports import Channel
    from bridge.store import Store, StoredMessage

# The delivery lines keep the logger name they always had (operators filter on it).
log = logging.getLogger("bridge.conversation")

T = TypeVar("T")

# Waits before the 2nd, 3rd ... attempt to send a reply after a retryable SendError; after
# the last one fails (about an hour in all) the reply is marked failed.
SEND_RETRY_DELAYS: tuple[float, ...] = (5, 15, 60, 300, 600, 900, 900, 900)


def cap_chunks(chunks: Sequence[T], max_chunks: int) -> tuple[list[T], list[T]]:
    """Split a reply's chunks at the cap: ``(to send as they are, overflow)``.

    Within the cap (or ``max_chunks`` 0: no cap) the overflow is empty.  Beyond it, the
    first ``max_chunks - 1`` chunks are kept and the rest overflow: the channel sends one
    more message with :func:`overflow_note` (and the overflow as a document where it can),
    so the reply takes ``max_chunks`` sends in all.
    """
    if max_chunks <= 0 or len(chunks) <= max_chunks:
        return list(chunks), []
    keep = max(max_chunks - 1, 0)
    return list(chunks[:keep]), list(chunks[keep:])


def overflow_note(total: int, kept: int, *, document: bool) -> str:
    """The words of the last send of a capped reply (``total`` chunks, ``kept`` sent)."""
    if document:
        return (f"The reply is too long for {kept + 1} messages: the rest "
                f"({total - kept} more parts) is in the attached file.")
    return (f"[The reply was cut: {total - kept} more parts were not sent "
            f"(the limit is {kept + 1} messages).]")


class SendResult(StrEnum):
    """What became of one attempt to send a stored reply."""

    SENT = "sent"
    RETRY = "retry"  # marked for a retry later; the session is held
    FAILED = "failed"  # marked failed for good
    NO_CHANNEL = "no channel"  # no attached channel serves the chat; stays queued


class Outbox:
    """Sends stored replies through the channel serving their chat, in order.

    ``route(address)`` is the attached channel serving a chat (or None);
    ``retry_later(session_key, delay)`` asks the scheduler to flush that session again
    after ``delay`` seconds.  ``on_delivered(msg)``, when set, is told of each reply
    delivered or failed for good (synchronous: it spawns its own work).
    """

    def __init__(
        self,
        store: Store,
        route: Callable[[ChatAddress], Channel | None],
        retry_later: Callable[[str, float], None],
        *,
        retry_delays: Sequence[float] = SEND_RETRY_DELAYS,
        check: Callable[[str], None] | None = None,
    ) -> None:
        self._store = store
        # Before each send: raises Lost when this process may no longer send in the chat
        # (bridge.store.coord: Coordinator.check_owned; None: always may).
        self._check = check
        self._route = route
        self._retry_later_cb = retry_later
        self._retry_delays = tuple(retry_delays)
        # Sessions with a reply waiting for a retry: later replies queue behind it.  The
        # outbox's own state, not the scheduler's.
        self.held: set[str] = set()
        self.on_delivered: Callable[[StoredMessage], None] | None = None

    def release_all(self) -> None:
        """Forget which sessions are held (on stop: the next start flushes from the store)."""
        self.held.clear()

    async def deliver(self, out: StoredMessage, *, voice: VoiceClip | None = None) -> bool:
        """Send a reply just stored (``voice``: spoken first, see :meth:`send`); behind
        earlier replies of its chat still waiting."""
        if out.session_key in self.held:
            results = await self.flush(out.session_key, voices={out.id: voice} if voice else None)
            return results.get(out.id) == SendResult.SENT
        return await self.send(out, voice=voice) == SendResult.SENT

    async def flush(self, key: str, *,
                    voices: dict[int, VoiceClip] | None = None) -> dict[int, SendResult]:
        """Send a session's undelivered replies in order; stop at one that must wait."""
        results: dict[int, SendResult] = {}
        for msg in await self._store.undelivered(key):
            result = results[msg.id] = await self.send(
                msg, voice=(voices or {}).get(msg.id))
            if result in (SendResult.RETRY, SendResult.NO_CHANNEL):
                break
        else:
            self.held.discard(key)
        return results

    async def queued_sessions(self, channel: Channel) -> list[str]:
        """Sessions served by ``channel`` with replies waiting to be sent (oldest work first)."""
        work = await self._store.open_work([channel.name])
        return [w.session_key for w in work
                if w.outbound and self._route(w.address) is channel]

    async def send(self, msg: StoredMessage, *, voice: VoiceClip | None = None) -> SendResult:
        """Send one stored reply; mark it delivered, retried later, or failed.

        ``voice``: the reply spoken, sent first as a voice message when the channel has
        them and nothing of the reply went out yet.  Sent once, never retried: when it
        fails the text goes instead; when it speaks only part of the reply
        (``complete`` False) the whole text follows.  The voice lives in memory only, so
        a reply resumed later (retry, restart) goes as text.
        """
        channel = self._route(msg.address)
        if channel is None:
            log.warning("no %s/%s channel serves %s; reply %d stays queued",
                        msg.address.channel, msg.address.account, msg.session_key, msg.id)
            return SendResult.NO_CHANNEL
        if self._check is not None:
            self._check(msg.session_key)  # Lost propagates to the worker: nothing marked
        voice_ids: list[str] = []
        if voice is not None and channel.capabilities.voice_notes:
            if not await self._store.chunks_sent(msg.id):
                voice_id = await self._send_voice(channel, msg, voice)
                if voice_id is not None:
                    if voice.complete:
                        await self._store.mark_delivered(msg.id, [voice_id])
                        # The spoken reply is the answer: the text preview goes.
                        await self._discard_preview(channel, msg)
                        await self._done(channel, msg)
                        return SendResult.SENT
                    voice_ids.append(voice_id)
        # A model that prints a configured secret (bot token, API key, webhook or console
        # secret: the log redactor's registry) does not send it.
        out = Outbound(msg.address, redact_configured(msg.text),
                       reply_to_message_id=msg.reply_to_message_id, plain=msg.plain,
                       edit_message_id=await self._preview_id(channel, msg))
        done = await self._store.chunks_sent(msg.id)
        chunked = _takes_progress(channel)

        async def sent(index: int, platform_id: str) -> None:
            await self._store.record_chunk_sent(msg.id, index, platform_id)
            if index == len(done):
                done.append(platform_id)
            if self._check is not None:
                self._check(msg.session_key)  # no next chunk once the chat is lost

        try:
            if chunked:
                if done:
                    log.info("reply %d to %s %s: resuming after %d chunks already sent",
                             msg.id, msg.address.channel, msg.address.chat_id, len(done))
                ids = await channel.send(out, progress=SendProgress(len(done), sent))
            else:
                ids = await channel.send(out)
        except asyncio.CancelledError:
            raise
        except Lost:
            raise  # fenced: not a failed send (marking it failed would lose the reply)
        except SendError as exc:
            sent_ids = done if chunked else exc.sent_ids
            if exc.retryable:
                return await self._retry_later(channel, msg, str(exc), sent_ids)
            log.warning("could not deliver reply %d to %s %s: %s", msg.id, msg.address.channel,
                        msg.address.chat_id, exc)
            await self._store.mark_send_failed(msg.id, str(exc), sent_ids)
            await self._failed(channel, msg, sent_ids)
            return SendResult.FAILED
        except Exception as exc:
            # Not a SendError: the message may or may not have gone out, and sending it
            # again could deliver it twice — so it is not retried.
            log.exception("channel %s failed sending reply %d", msg.address.channel, msg.id)
            await self._store.mark_send_failed(msg.id, f"{type(exc).__name__}: {exc}",
                                               done if chunked else ())
            await self._failed(channel, msg, done if chunked else [])
            return SendResult.FAILED
        await self._store.mark_delivered(
            msg.id, voice_ids + (done if chunked else [str(i) for i in ids]))
        await self._done(channel, msg)
        return SendResult.SENT

    async def _preview_id(self, channel: Channel, msg: StoredMessage) -> str | None:
        """The edit-mode preview chunk 0 replaces (the channel's chunk id form), if the
        reply's turn streamed into one."""
        if msg.turn_id is None or PreviewMode.EDIT not in channel.capabilities.preview_modes:
            return None
        key = await self._store.preview_for_turn(msg.turn_id)
        if key is None or key.mode is not PreviewMode.EDIT:
            return None
        return key.platform_id

    async def _done(self, channel: Channel, msg: StoredMessage) -> None:
        """A reply is delivered or failed for good: forget its turn's preview, tell
        ``on_delivered``.  Neither may undo the delivery (failures are logged)."""
        if msg.turn_id is not None and channel.capabilities.preview_modes:
            try:
                await self._store.drop_preview(msg.turn_id)
            except Exception as exc:
                log.warning("the preview record of turn %d stays: %s", msg.turn_id, exc)
        if self.on_delivered is not None:
            try:
                self.on_delivered(msg)
            except Exception:
                log.exception("on_delivered failed for reply %d", msg.id)

    async def _failed(self, channel: Channel, msg: StoredMessage,
                      sent_ids: Sequence[str]) -> None:
        """A reply failed for good.  When none of it went out, its preview (a partial
        answer) is removed too; once chunk 0 went out the preview *is* chunk 0."""
        if not sent_ids:
            await self._discard_preview(channel, msg)
        await self._done(channel, msg)

    async def _discard_preview(self, channel: Channel, msg: StoredMessage) -> None:
        """Remove the edit-mode preview of a reply that will not become its chunk 0."""
        if msg.turn_id is None or PreviewMode.EDIT not in channel.capabilities.preview_modes:
            return
        key = await self._store.preview_for_turn(msg.turn_id)
        if key is None:
            return
        try:
            await channel.discard_preview(msg.address, key)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("the preview of reply %d stays in %s %s: %s", msg.id,
                        msg.address.channel, msg.address.chat_id, exc)

    async def _send_voice(self, channel: Channel, msg: StoredMessage,
                          voice: VoiceClip) -> str | None:
        """The voice message's platform id, or None when it failed (logged; the caller
        sends the text)."""
        try:
            return await channel.send_voice(msg.address, voice.audio,
                                            duration_s=voice.duration_s,
                                            reply_to_message_id=msg.reply_to_message_id)
        except asyncio.CancelledError:
            raise
        except SendError as exc:
            log.warning("voice reply %d to %s %s not sent (%s); sending the text", msg.id,
                        msg.address.channel, msg.address.chat_id, exc)
        except Exception:
            log.exception("channel %s failed sending voice reply %d; sending the text",
                          msg.address.channel, msg.id)
        return None

    async def _retry_later(self, channel: Channel, msg: StoredMessage, reason: str,
                           sent_ids: list[str]) -> SendResult:
        attempts = msg.send_attempts + 1
        where = f"{msg.address.channel} {msg.address.chat_id}"
        if attempts > len(self._retry_delays):
            log.warning("giving up on reply %d to %s after %d attempts: %s", msg.id, where,
                        attempts, reason)
            await self._store.mark_send_failed(
                msg.id, f"gave up after {attempts} attempts: {reason}", sent_ids)
            await self._failed(channel, msg, sent_ids)
            return SendResult.FAILED
        delay = self._retry_delays[attempts - 1]
        log.info("reply %d to %s not sent (%s); attempt %d failed, next in %g s", msg.id,
                 where, reason, attempts, delay)
        await self._store.mark_send_retry(msg.id, reason, next_attempt_at=time.time() + delay,
                                          sent_ids=sent_ids)
        self.held.add(msg.session_key)
        self._retry_later_cb(msg.session_key, delay)
        return SendResult.RETRY


def _takes_progress(channel: Channel) -> bool:
    """Whether ``channel.send`` takes the chunk progress (the contract since chunk resume);
    an older channel is sent whole and its ids recorded at the end."""
    try:
        return "progress" in inspect.signature(channel.send).parameters
    except (TypeError, ValueError):
        return False
