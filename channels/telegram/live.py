"""Live replies on Telegram (issue 17): the preview primitives, reactions, chunk 0 as an edit.

The core (``bridge.live.LiveReply``) decides what a preview shows and when; this module
only turns that into Bot API calls and their answers into the
:class:`~bridge.ports.PreviewError` classes, and never retries a preview itself (a
preview is disposable; the final reply is what must arrive, through
:meth:`TelegramChannel.send`).

- :class:`_DraftPreview`: ``sendMessageDraft`` (Bot API 9.3+, private chats only).  The
  client shows the draft pinned under the chat and deletes it when the bot's next real
  message arrives in that chat or topic (or after about 30 s), so the final reply is an
  ordinary ``sendMessage``.  One ``draft_id`` per turn and attempt: updates under one id
  animate, a new id replaces the draft without animation (a fallback model's text).
- :class:`_EditPreview`: one real message (``sendMessage``, paced like any send), then
  ``editMessageText``; the core stores its id (``on_created``) before anything else, and
  the final reply's chunk 0 edits it (:func:`edit_chunk`).
- :meth:`Live.react`: ``setMessageReaction``; :meth:`Live.discard`: ``deleteMessage``.

A chat that refuses drafts (``TEXTDRAFT_PEER_INVALID``, any other 400) or reactions
(``REACTION_INVALID``: a group restricting them) is remembered for an hour, so it is
not asked again on every turn; a Bot API server that does not know ``sendMessageDraft``
(404: a self-hosted one too old) turns drafts off for the whole channel for that hour.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from telegram.constants import ReactionEmoji
from telegram.error import (
    BadRequest,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TelegramError,
)

from bridge.envelope import ChatAddress, ChatKind
from bridge.lru import LRU
from bridge.ports import (
    NotSent,
    Preview,
    PreviewError,
    PreviewGone,
    PreviewKey,
    PreviewMaybeSent,
    PreviewMode,
    PreviewRateLimited,
    SendError,
)
from channels.telegram.http import ServerError, post, retry_after_seconds

if TYPE_CHECKING:
    from bridge.config.schema import TelegramConfig
    from channels.telegram.channel import TelegramChannel

__all__ = ["Live", "draft_id", "valid_reaction"]

log = logging.getLogger(__name__)

OnCreated = Callable[[PreviewKey], Awaitable[None]]

# Lower-cased fragments of Bot API descriptions (see tests/fakes/telegram_api.py).
_NOT_MODIFIED = "message is not modified"
_GONE = ("message to edit not found", "message can't be edited")
_DELETE_GONE = "message to delete not found"
_TOO_LONG = ("message is too long", "message_too_long", "text is too long")
_REACTION_INVALID = "reaction_invalid"
# Seconds a preview call waits for Telegram's answer (a late answer ends previews).
PREVIEW_READ_TIMEOUT_S = 3.0
_PLACEHOLDER = "…"  # an edit-mode preview before any text (Telegram refuses empty text)
_MAX_UTF16 = 4096
_EMOJI = frozenset(e.value for e in ReactionEmoji)


def draft_id(turn_id: int, attempt: int) -> int:
    """A ``draft_id`` for one attempt of one turn: never 0 (the Bot API refuses it), below
    2**31 (clients with 32-bit ids), and a different one for each of 16 attempts."""
    return (((turn_id % 2**26) << 4) | (attempt % 16)) + 1


def valid_reaction(emoji: str) -> str | None:
    """``emoji`` as the Bot API spells it (``❤️`` -> ``❤``), or None when bots may not
    react with it (not in ``telegram.constants.ReactionEmoji``)."""
    if emoji in _EMOJI:
        return emoji
    bare = emoji.replace("\ufe0f", "")
    return bare if bare in _EMOJI else None


def _utf16(text: str) -> int:
    return len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)


class _Refusals:
    """Keys (chat ids) refused lately: forgotten after ``ttl`` seconds, at most 4096 held."""

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.clock = clock
        self._until: LRU[int, float] = LRU(4096)

    def remember(self, key: int) -> None:
        self._until.put(key, self.clock() + self.ttl)

    def __contains__(self, key: int) -> bool:
        until = self._until.peek(key)
        return until is not None and until > self.clock()


class _Refused(PreviewGone):
    """A 400 for a preview call: ``description`` is Telegram's words."""

    def __init__(self, description: str) -> None:
        super().__init__(f"telegram refused the preview: {description}")
        self.description = description.lower()


class _MethodMissing(PreviewGone):
    """404: the Bot API server does not know the method (a self-hosted one too old)."""


class Live:
    """The channel's live-reply side: previews, their clean-up, reactions.

    ``no_preview_ttl``: how long a chat that refused drafts (or reactions) is left alone.
    """

    no_preview_ttl = 3600.0
    preview_burst = 2  # burst slots a chat's previews may use (see may_preview_now)

    def __init__(self, channel: TelegramChannel) -> None:
        self.channel = channel
        self.no_drafts = _Refusals(self.no_preview_ttl)
        self.no_reactions = _Refusals(self.no_preview_ttl)
        self._drafts_missing_until = 0.0  # the server has no sendMessageDraft until then
        self.reactions_on = True

    # ------------------------------------------------------------------ previews

    def drafts_possible(self, address: ChatAddress) -> bool:
        """Drafts exist in private chats only (a positive chat id), and not in a chat or
        on a server that refused them in the last hour."""
        if address.chat_kind is not ChatKind.DIRECT:
            return False
        try:
            chat_id = int(address.chat_id)
        except ValueError:
            return False
        return (chat_id > 0 and chat_id not in self.no_drafts
                and time.monotonic() >= self._drafts_missing_until)

    def preview(self, address: ChatAddress, mode: PreviewMode, *, turn_id: int,
                reply_to: str | None, on_created: OnCreated | None) -> Preview | None:
        """See :meth:`bridge.ports.Channel.preview`."""
        if not self.channel.running:
            return None
        if mode is PreviewMode.DRAFT and self.drafts_possible(address):
            return _DraftPreview(self, address, turn_id)
        if mode is PreviewMode.EDIT:
            return _EditPreview(self, address, reply_to, on_created)
        return None

    def may_preview_now(self, address: ChatAddress) -> bool:
        """A pacer slot free now with room to spare for the final (True takes it).

        Previews spend at most ``preview_burst`` of a chat's burst: Telegram tolerates
        about three sends at once in a chat (the fake's flood model), while the pacer's
        private-chat burst of 5 is there for the chunks of one reply.  The rest, at
        least one slot, stays for the final.
        """
        pacer = self.channel.pacer
        group = address.chat_kind is ChatKind.GROUP
        burst = pacer.group_burst if group else pacer.chat_burst
        keep = max(1, burst - self.preview_burst)
        return pacer.try_take(int(address.chat_id), group=group, keep=keep)

    def drafts_refused(self, chat_id: int, exc: _Refused | _MethodMissing) -> None:
        """Remember a permanent refusal of drafts (one log line each time it starts)."""
        if isinstance(exc, _MethodMissing):
            self._drafts_missing_until = time.monotonic() + self.no_preview_ttl
            log.warning("telegram: the Bot API server does not know sendMessageDraft; "
                        "no draft previews for an hour (typing instead)")
        elif not any(t in exc.description for t in _TOO_LONG):
            self.no_drafts.remember(chat_id)
            log.warning("telegram: chat %s refused a draft preview (%s); none there for "
                        "an hour", chat_id, exc.description)

    async def call(self, method: str, params: Mapping[str, object], chat_id: int, *,
                   group: bool, paced: bool = False) -> Any:
        """One preview call, never retried; failures as :class:`PreviewError`.

        "message is not modified" is success (None): the screen already shows it.
        """
        bot = self.channel.bot
        if bot is None:
            raise PreviewGone("the telegram channel is not running")
        try:
            if paced:
                await self.channel.pacer.wait(chat_id, group=group)
            # Bounded below LiveReply.FINISH_WAIT_S, so the final reply normally finds
            # no preview request still on its way.
            return await post(bot, method, params, read_timeout=PREVIEW_READ_TIMEOUT_S)
        except RetryAfter as exc:
            wait = retry_after_seconds(exc)
            # The final reply (and anything else to this chat) waits it out too.
            self.channel.pacer.hold(chat_id, wait, group=group)
            raise PreviewRateLimited(wait) from None
        except BadRequest as exc:
            if _NOT_MODIFIED in str(exc).lower():
                return None
            raise _Refused(str(exc)) from None
        except InvalidToken as exc:  # PTB maps 404 (unknown method) and 401 here
            if "not found" in str(exc).lower():
                raise _MethodMissing(f"the Bot API server has no {method}") from None
            raise PreviewGone(f"telegram refused the bot token: {exc}") from None
        except NotSent as exc:
            raise PreviewGone(f"not sent: {exc}") from None
        except ServerError as exc:
            if exc.status in (502, 503):  # as for sends: the request did not get through
                raise PreviewGone(f"telegram server error: {exc}") from None
            raise PreviewMaybeSent(f"telegram server error: {exc}") from None
        except NetworkError as exc:  # TimedOut included: the request went out
            raise PreviewMaybeSent(f"{type(exc).__name__}: {exc}") from None
        except TelegramError as exc:  # Forbidden (blocked), ChatMigrated...
            raise PreviewGone(f"{type(exc).__name__}: {exc}") from None

    async def discard(self, address: ChatAddress, key: PreviewKey) -> None:
        """See :meth:`bridge.ports.Channel.discard_preview`: delete an edit-mode preview
        ("not found" is done); when it cannot be deleted, edit it to "…" so it no longer
        reads as an answer.  Raises SendError when neither worked."""
        if key.mode is not PreviewMode.EDIT:
            return  # drafts vanish on their own
        chat_text, _, mid_text = key.platform_id.rpartition(":")
        chat_id = int(chat_text or address.chat_id)
        message_id = int(mid_text)
        group = address.chat_kind is ChatKind.GROUP
        target = {"chat_id": chat_id, "message_id": message_id}
        try:
            await self.call("deleteMessage", target, chat_id, group=group)
            return
        except _Refused as exc:
            if _DELETE_GONE in exc.description:
                return
            failure: PreviewError = exc
        except PreviewError as exc:
            failure = exc
        log.warning("telegram: could not delete preview %s (%s); editing it to %r",
                    key.platform_id, failure, _PLACEHOLDER)
        try:
            await self.call("editMessageText", {**target, "text": _PLACEHOLDER}, chat_id,
                            group=group)
        except PreviewError as exc:
            if isinstance(exc, _Refused) and _GONE[0] in exc.description:
                return  # deleted meanwhile
            # Deleting and editing are idempotent: worth another try unless refused.
            raise SendError(f"telegram: preview {key.platform_id} left as it was: {exc}",
                            retryable=not isinstance(exc, _Refused)) from None

    # ------------------------------------------------------------------ final chunk 0

    async def edit_chunk(self, chat_id: int, message_id: int, text: str,
                         parse_mode: str | None, group: bool) -> int | None:
        """Chunk 0 of a final reply as an edit of the preview ``message_id`` (paced, 429s
        waited out like any chunk).  Returns the id, or None when the preview is gone
        (deleted, not editable): then chunk 0 is sent as a new message.

        "message is not modified" is success, which makes a resumed chunk 0 idempotent.
        """
        params: dict[str, object] = {"chat_id": chat_id, "message_id": message_id,
                                     "text": text}
        if parse_mode:
            params["parse_mode"] = parse_mode
        try:
            await self.channel.call_paced("editMessageText", chat_id, params, parse_mode,
                                          group, passthrough=(_NOT_MODIFIED, *_GONE))
        except BadRequest as exc:
            reason = str(exc).lower()
            if _NOT_MODIFIED in reason:
                return message_id
            log.info("telegram: the preview %s:%s is gone (%s); sending chunk 0 anew",
                     chat_id, message_id, exc)
            if _GONE[1] in reason:
                # Still on screen with half an answer: removed, best effort.
                with contextlib.suppress(PreviewError):
                    await self.call("deleteMessage", {"chat_id": chat_id,
                                                      "message_id": message_id},
                                    chat_id, group=group)
            return None
        return message_id

    # ------------------------------------------------------------------ reactions

    def check_reactions(self, config: TelegramConfig) -> bool:
        """Whether every configured ``ackReaction`` / ``ackFailureReaction`` is one bots
        may set; else one warning naming the first bad one, and reactions stay off."""
        places: list[tuple[str, object]] = [("channels.telegram", config)]
        places += [(f"channels.telegram.direct.{k}", v) for k, v in config.direct.items()]
        for gid, group in config.groups.items():
            places.append((f"channels.telegram.groups.{gid}", group))
            topics = getattr(group, "topics", None) or {}
            places += [(f"channels.telegram.groups.{gid}.topics.{t}", v)
                       for t, v in topics.items()]
        for path, entry in places:
            for name in ("ackReaction", "ackFailureReaction"):
                value = getattr(entry, name, None)
                if value and valid_reaction(value) is None:
                    log.warning("telegram: %s.%s %r is not a reaction Telegram allows bots "
                                "(see telegram.constants.ReactionEmoji); reactions are off",
                                path, name, value)
                    self.reactions_on = False
                    return False
        self.reactions_on = True
        return True

    async def react(self, address: ChatAddress, message_id: str, emoji: str) -> None:
        """See :meth:`bridge.ports.Channel.react`; raises SendError on failure."""
        if not self.reactions_on:
            return
        chat_id = int(address.chat_id)
        if chat_id in self.no_reactions:
            return
        bot = self.channel.bot
        if bot is None:
            raise SendError("telegram channel is not running", retryable=True)
        target = int(message_id.rsplit(":", 1)[-1])
        if emoji:
            spelled = valid_reaction(emoji)
            if spelled is None:
                raise SendError(f"telegram: {emoji!r} is not an allowed reaction")
            reaction = [{"type": "emoji", "emoji": spelled}]
        else:
            reaction = []
        params = {"chat_id": chat_id, "message_id": target, "reaction": json.dumps(reaction)}
        try:
            await post(bot, "setMessageReaction", params)
        except RetryAfter as exc:
            wait = retry_after_seconds(exc)
            self.channel.pacer.hold(chat_id, wait, group=address.chat_kind is ChatKind.GROUP)
            raise SendError(f"telegram rate limit: retry after {wait:g} s",
                            retryable=True) from None
        except BadRequest as exc:
            if _REACTION_INVALID in str(exc).lower():
                self.no_reactions.remember(chat_id)
                log.info("telegram: chat %s refuses reaction %r; no reactions there for "
                         "an hour", chat_id, emoji)
            raise SendError(f"telegram refused the reaction: {exc}") from None
        except TelegramError as exc:
            raise SendError(f"telegram reaction failed: {type(exc).__name__}: {exc}",
                            retryable=isinstance(exc, NotSent)) from None


class _DraftPreview(Preview):
    """A ``sendMessageDraft`` preview (plain text; ``""`` shows "Thinking…")."""

    mode = PreviewMode.DRAFT

    def __init__(self, live: Live, address: ChatAddress, turn_id: int) -> None:
        self._live = live
        self._chat_id = int(address.chat_id)
        self._thread_id = int(address.thread_id) if address.thread_id else None
        self._turn_id = turn_id
        self._attempt = 0
        self.draft_id = draft_id(turn_id, 0)
        self._lock = asyncio.Lock()

    @property
    def key(self) -> PreviewKey:
        return PreviewKey(PreviewMode.DRAFT, str(self.draft_id))

    async def update(self, text: str, *, restart: bool = False) -> None:
        """Show ``text`` in the draft (a new draft when ``restart``)."""
        async with self._lock:
            if restart:
                self._attempt += 1
                self.draft_id = draft_id(self._turn_id, self._attempt)
            if _utf16(text) > _MAX_UTF16:
                raise PreviewGone("draft text over 4096 characters")
            params: dict[str, object] = {"chat_id": self._chat_id, "draft_id": self.draft_id,
                                         "text": text}
            if self._thread_id is not None:
                params["message_thread_id"] = self._thread_id
            try:
                await self._live.call("sendMessageDraft", params, self._chat_id, group=False)
            except (_Refused, _MethodMissing) as exc:
                self._live.drafts_refused(self._chat_id, exc)
                raise

    async def delete(self) -> None:
        """Nothing to do: the client drops the draft at the next message (or ~30 s)."""
        return None


class _EditPreview(Preview):
    """One real message edited in place; it becomes the final reply's chunk 0."""

    mode = PreviewMode.EDIT

    def __init__(self, live: Live, address: ChatAddress, reply_to: str | None,
                 on_created: OnCreated | None) -> None:
        self._live = live
        self._chat_id = int(address.chat_id)
        self._thread_id = int(address.thread_id) if address.thread_id else None
        self._group = address.chat_kind is ChatKind.GROUP
        tail = reply_to.rsplit(":", 1)[-1] if reply_to else ""
        # Quoted in groups only, as send() quotes chunk 0 (which this message becomes).
        self._reply_to = int(tail) if self._group and tail.lstrip("-").isdigit() else None
        self._on_created = on_created
        self.message_id: int | None = None
        self._lock = asyncio.Lock()

    @property
    def key(self) -> PreviewKey | None:
        """What the core stores (None before the message exists)."""
        if self.message_id is None:
            return None
        return PreviewKey(PreviewMode.EDIT, f"{self._chat_id}:{self.message_id}")

    async def update(self, text: str, *, restart: bool = False) -> None:
        """The first call sends the message and awaits ``on_created``; later ones edit it.
        ``restart`` changes nothing here (the same message shows the new text)."""
        shown = text if text.strip() else _PLACEHOLDER
        if _utf16(shown) > _MAX_UTF16:
            raise PreviewGone("preview text over 4096 characters")
        async with self._lock:  # nothing overtakes the first send and on_created
            if self.message_id is None:
                await self._create(shown)
                return
            params = {"chat_id": self._chat_id, "message_id": self.message_id, "text": shown}
            await self._live.call("editMessageText", params, self._chat_id, group=self._group)

    async def _create(self, text: str) -> None:
        params: dict[str, object] = {"chat_id": self._chat_id, "text": text}
        if self._thread_id is not None:
            params["message_thread_id"] = self._thread_id
        if self._reply_to is not None:
            params["reply_parameters"] = json.dumps(
                {"message_id": self._reply_to, "allow_sending_without_reply": True})
        result = await self._live.call("sendMessage", params, self._chat_id,
                                       group=self._group, paced=True)
        message_id = result.get("message_id") if isinstance(result, dict) else None
        if not isinstance(message_id, int) or isinstance(message_id, bool):
            raise PreviewMaybeSent("telegram answered sendMessage without a message_id")
        self.message_id = message_id
        key = self.key
        assert key is not None
        if self._on_created is not None:
            await self._on_created(key)

    async def delete(self) -> None:
        """Delete the message ("not found" counts as done)."""
        async with self._lock:
            if self.message_id is None:
                return
            params = {"chat_id": self._chat_id, "message_id": self.message_id}
            try:
                await self._live.call("deleteMessage", params, self._chat_id,
                                      group=self._group)
            except _Refused as exc:
                if _DELETE_GONE not in exc.description:
                    raise
            self.message_id = None
