"""A faithful fake of the Telegram Bot API for python-telegram-bot, on 127.0.0.1.

The real ``telegram.ext.Application`` talks to it through ``apiRoot`` (``fake.url``)::

    async with FakeBotAPI() as fake:
        config = TelegramConfig(botToken=fake.token, apiRoot=fake.url)
        ...
        fake.push_text(1001, 1001, "hello")            # a private chat message
        sent = await fake.wait_for_sent(1)              # the bot's answers
        assert sent[0].text == "..."

Wire behaviour (what python-telegram-bot sees):

- ``POST|GET /bot<token>/<method>`` with form-encoded, multipart or JSON bodies (complex
  values as JSON strings); ``GET /file/bot<token>/<file_path>`` downloads a file.
- Every answer is ``{"ok": true, "result": ...}`` or ``{"ok": false, "error_code": N,
  "description": "...", "parameters"?: {"retry_after": S}}`` with the same HTTP status.
  A token other than ``fake.token`` (or after :meth:`revoke_token`) gets 401
  ``Unauthorized`` (such calls are not in ``calls`` but in ``unauthorized``); an unknown
  method 404 ``Not Found``.
- ``getUpdates`` long-polls for ``timeout`` seconds; an update stays pending until a later
  call passes ``offset`` > its ``update_id`` (negative offsets keep the last N);
  ``allowed_updates`` is remembered like Telegram does; a second concurrent call ends the
  first with 409 ``Conflict: terminated by other getUpdates request``; while a webhook is
  set, getUpdates answers 409.
- ``sendMessage`` validates like Telegram: empty text 400, more than 4096 UTF-16 units
  after entity parsing 400 ``message is too long``, HTML parse mode with an unknown or
  unbalanced tag or a bad ``&`` entity 400 ``can't parse entities``.
- ``sendMessageDraft`` (live previews): private chats only -- a chat id <= 0 or a chat
  pushed as non-private gets 400 ``TEXTDRAFT_PEER_INVALID``; ``draft_id`` missing or 0
  400 ``invalid draft_id`` (wording unverified); text optional (``""`` is the "Thinking..."
  placeholder), too long and bad HTML as for sendMessage; answers ``true``.  One draft
  per (chat, topic); it is **cleared** by any sendMessage / sendDocument / sendPhoto /
  sendVoice to that chat and topic (the client rule: a real message from the bot removes
  the draft) and **expires** ``draft_ttl`` seconds (30) after its last update.
- ``editMessageText``: unknown id 400 ``message to edit not found``; a message not sent by
  the bot 400 ``message can't be edited``; the same visible text, entities and markup as
  now 400 ``message is not modified: specified new message content and reply markup are
  exactly the same as a current content and reply markup of the message``; too long 400
  ``MESSAGE_TOO_LONG``; bad HTML ``can't parse entities``; answers the Message with
  ``edit_date``.  ``deleteMessage``: unknown 400 ``message to delete not found``.
- ``setMessageReaction``: ``reaction`` is a JSON list of ``{"type": "emoji", "emoji": e}``
  (``[]`` or none clears); an emoji not in the Bot API's list (``ReactionEmoji``) or not in
  a chat's :meth:`restrict_reactions` set 400 ``REACTION_INVALID``; more than one 400
  ``REACTIONS_TOO_MANY``; unknown message 400 ``message to react not found``.
- Flood model (opt-in: ``FakeBotAPI(flood=True)`` or :meth:`flood`): per chat a GCRA of
  one send a second with a burst of 3 in private chats and 20 a minute (every 3 s, burst
  3) in groups over sendMessage, sendDocument, sendPhoto, sendVoice and editMessageText
  (drafts only when asked); beyond it 429 ``Too Many Requests: retry after N`` with
  ``parameters.retry_after`` = N, the whole seconds until the next slot.

Methods: getMe, logOut, close, deleteWebhook, setWebhook, getWebhookInfo, getUpdates,
sendMessage, sendChatAction, sendDocument, sendPhoto, sendVoice (multipart uploads;
sendVoice answers a message with ``voice`` for OGG/Opus, a document otherwise), getFile,
setMyCommands, getMyCommands, deleteMyCommands, setMyDescription, setMyShortDescription,
setChatMenuButton, sendMessageDraft, editMessageText, deleteMessage, setMessageReaction.

Test API (all synchronous unless marked async):

- ``FakeBotAPI(token=DEFAULT_TOKEN, *, bot_id=7000001, username="palaver_test_bot",
  flood=False)``;
  ``await start()`` / ``await stop()`` or ``async with``; ``url`` (the apiRoot),
  ``token``, ``bot_user`` (the getMe dict).
- Users and chats: ``user(uid, first_name=None, username=None) -> dict``; any ``user``
  argument below may be an int (a user with that id) or such a dict.  A positive chat id
  is a private chat, a negative one a supergroup (a forum when ``thread_id`` is given).
- Injecting updates (each returns the Message dict it pushed; ``message["message_id"]``):
  ``push_text(chat_id, user, text, *, thread_id=None, reply_to=None, entities=None,
  chat_type=None)`` -- entities for ``@mentions`` and ``/commands`` are computed like
  Telegram does unless given; ``reply_to`` is a message dict (e.g. ``sent.message``) or a
  message id in that chat.
  ``push_photo(chat_id, user, data, *, caption=None, width=1280, height=960, file_size=None)``
  (three sizes; the largest holds ``data``), ``push_document(chat_id, user, data, *,
  filename, mime_type, caption=None, file_size=None)``, ``push_voice(chat_id, user, data, *,
  duration=3)``, ``push_audio(..., duration, title=None, filename=None)``,
  ``push_video(..., duration, width, height)``, ``push_video_note(chat_id, user, data, *,
  duration=9, length=240)`` (a round video), ``push_sticker(chat_id, user, data, *,
  emoji="👍")``, ``push_location(chat_id, user, latitude, longitude)``,
  ``push_contact(chat_id, user, phone_number, first_name, last_name=None)``,
  ``push_message(chat_id, user, **fields)`` (any Message fields),
  ``push_edit(message, text)`` (an ``edited_message`` update), ``push_channel_post(chat_id,
  text)``, ``push_update(update_dict) -> update_id`` (raw).  ``file_size`` declares a size
  larger than the bytes (to test download caps).
- Files: ``add_file(data, *, file_size=None) -> (file_id, file_unique_id)``.
- Observing: ``calls`` (list of ``Call(method, params, time)``), ``calls_to(method)``,
  ``sent`` (list of :class:`SentMessage`: chat_id, text, parse_mode, thread_id,
  reply_to_message_id, message_id, message), ``actions`` (sendChatAction calls),
  ``commands`` (last setMyCommands list), ``webhook`` (dict from setWebhook or None),
  ``pending_updates`` (unconfirmed update ids), ``downloads`` (file paths fetched),
  ``unauthorized`` (methods answered 401, in order), ``uploads`` (list of :class:`Upload`:
  method, field, filename, content_type, data -- every file part of a multipart body),
  ``requests`` (list of :class:`RawRequest`: method, http_method, content_type, headers
  -- every Bot API request as it came in);
  ``await wait_for_sent(n, timeout=5.0) -> list[SentMessage]``, ``await wait_for_calls(
  method, n=1, timeout=5.0) -> list[Call]``, ``await wait_until(predicate, timeout=5.0)``.
- Live replies: ``drafts`` and ``edits`` (accepted sendMessageDraft / editMessageText
  calls), ``deleted`` ((chat, message) pairs), ``reactions`` ({(chat, message): the
  current list}), ``flooded`` ((method, chat, retry_after) per 429 of the flood model),
  ``draft_ttl`` (settable); ``restrict_reactions(chat_id, {emoji} | None)``;
  ``flood(enabled=True, *, private=(1.0, 3), group=(3.0, 3), drafts=False)``.
  The user's screen: ``screen(chat_id, thread_id=None) -> [ScreenEntry(t, kind, id,
  text)]`` in time order, kinds ``draft`` (id: draft_id), ``draft_cleared``,
  ``draft_expired``, ``message``, ``edit``, ``delete``, ``reaction`` (text: the emoji,
  "" when cleared); ``draft_shown(chat_id, thread_id=None)``; ``snapshots(chat_id,
  thread_id=None)`` (the bot's texts on screen after each change); ``visible_texts(chat_id,
  thread_id=None)`` (every text ever shown, for "the user never saw X");
  ``drafts_after_last_message(chat_id, thread_id=None)``.
- Failures: ``fail(method, code, description, *, retry_after=None, times=1, when=None)``
  (``when(params) -> bool`` selects which calls fail); shortcuts
  ``fail_parse_entities(times=1)`` (400 ``Bad Request: can't parse entities: ...``, only for
  calls with a parse_mode), ``rate_limit(method, retry_after, times=1)`` (429 ``Too Many
  Requests: retry after N`` with ``parameters.retry_after``), ``revoke_token()`` (every
  call 401 ``Unauthorized``), ``voice_forbidden`` (chat ids whose sendVoice answers 400
  ``VOICE_MESSAGES_FORBIDDEN``).
- Transport: ``slow(method, seconds, *, times=None, when=None)`` answers the next ``times``
  calls (all when None) of ``method`` (those ``when(params)`` selects) only after
  ``seconds`` (the call is recorded at once);
  ``drop(method, *, times=1)`` records the call, then closes the connection without an
  answer (the request reached the server: did it work?); ``await go_down()`` stops
  listening and closes every connection (clients get "connection refused") and ``await
  come_back()`` listens again on the same port.
- Webhook delivery (what Telegram does once setWebhook was called): ``await
  deliver_webhook(update_or_message_dict=None, *, secret=<the registered one>) -> int``
  POSTs the next update (or the given one) to the registered URL with the
  ``X-Telegram-Bot-Api-Secret-Token`` header and returns the HTTP status.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import aiohttp
from aiohttp import web
from telegram.constants import ReactionEmoji

DEFAULT_TOKEN = "7000001:AAFakeTokenForTests_abcdefghijklmnopqrs"

# Parameters Telegram takes as JSON-serialised objects inside form bodies.
_JSON_PARAMS = {
    "allowed_updates", "commands", "reply_parameters", "reply_markup", "entities",
    "caption_entities", "link_preview_options", "scope", "menu_button", "reaction",
}
_INT_PARAMS = {
    "offset", "limit", "timeout", "chat_id", "message_thread_id", "reply_to_message_id",
    "max_connections", "user_id", "message_id", "draft_id",
}
# Tag names Telegram treats as one entity type (for "message is not modified").
_TAG_ALIASES = {"strong": "b", "em": "i", "ins": "u", "strike": "s", "del": "s"}
_NOT_MODIFIED = ("Bad Request: message is not modified: specified new message content and "
                 "reply markup are exactly the same as a current content and reply markup "
                 "of the message")
_TG_TAGS = {
    "b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "span", "tg-spoiler", "a",
    "code", "pre", "blockquote", "tg-emoji",
}
_ENTITY_RE = re.compile(r"&(lt|gt|amp|quot|#\d+|#x[0-9a-fA-F]+);")
_TAG_RE = re.compile(r"<(/?)([a-zA-Z][a-zA-Z0-9-]*)((?:\s+[a-zA-Z-]+(?:\s*=\s*(?:\"[^\"]*\"|'[^']*'|[^\s>]+))?)*)\s*>")
_MENTION_RE = re.compile(r"(?<![\w@])@([A-Za-z][A-Za-z0-9_]{3,31})\b")
_COMMAND_RE = re.compile(r"(?<![\w/])/([A-Za-z0-9_]{1,32})(@[A-Za-z][A-Za-z0-9_]{3,31})?")


def _utf16(text: str) -> int:
    return len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)


def _is_ogg_opus(data: bytes) -> bool:
    """An Ogg stream whose first page holds an OpusHead (what Telegram plays as voice)."""
    return data[:4] == b"OggS" and b"OpusHead" in data[:128]


class BotAPIError(Exception):
    """An ``{"ok": false}`` answer."""

    def __init__(self, code: int, description: str, parameters: dict | None = None) -> None:
        super().__init__(description)
        self.code = code
        self.description = description
        self.parameters = parameters


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    time: float


@dataclass
class SentMessage:
    """One message the bot sent (``message`` is the Message dict Telegram answered)."""

    chat_id: int
    text: str
    parse_mode: str | None
    thread_id: int | None
    reply_to_message_id: int | None
    message_id: int
    message: dict


@dataclass
class Upload:
    """One file part of a multipart request."""

    method: str
    field: str
    filename: str | None
    content_type: str | None
    data: bytes


@dataclass
class RawRequest:
    """How one Bot API request arrived (before its parameters were parsed)."""

    method: str
    http_method: str
    content_type: str
    headers: dict[str, str]


@dataclass
class _Slow:
    method: str
    seconds: float
    times: int | None
    when: Callable[[dict], bool] | None = None


@dataclass
class _Failure:
    method: str
    code: int
    description: str
    retry_after: float | None
    times: int
    when: Callable[[dict], bool] | None


class ScreenEntry(NamedTuple):
    """One change on the user's screen of a chat (see :meth:`FakeBotAPI.screen`)."""

    t: float  # time.monotonic()
    kind: str  # draft, draft_cleared, draft_expired, message, edit, delete, reaction
    id: int  # draft_id for draft kinds, else the message id
    text: str  # visible text (draft, message, edit), the emoji (reaction), else ""


@dataclass
class _Draft:
    draft_id: int
    text: str
    shown_at: float


@dataclass
class _Flood:
    """Per-chat GCRA: ``burst`` sends at once, then one every ``interval`` seconds."""

    private: tuple[float, int] = (1.0, 3)
    group: tuple[float, int] = (3.0, 3)  # 20 a minute
    drafts: bool = False  # whether sendMessageDraft counts


# The Bot API's list of reactions bots may set (PTB copies it from the docs).
_REACTIONS = frozenset(e.value for e in ReactionEmoji)
_FLOOD_METHODS = {"sendMessage", "sendDocument", "editMessageText", "sendPhoto", "sendVoice"}
_CLEARS_DRAFT = {"sendMessage", "sendDocument", "sendPhoto", "sendVoice"}


@dataclass
class _File:
    file_id: str
    file_unique_id: str
    file_path: str
    data: bytes
    file_size: int


def parse_telegram_html(text: str) -> str:
    """Validate Telegram HTML like the Bot API does; return the visible text.

    Raises :class:`BotAPIError` 400 "can't parse entities" on an unsupported or unbalanced
    tag or a bare ``&`` / ``<``.
    """
    return _parse_html(text)[0]


def _parse_html(text: str) -> tuple[str, tuple]:
    """:func:`parse_telegram_html` plus the entities: ``(type, attributes, start, end)``
    over the visible text (what "message is not modified" compares besides the text)."""
    out: list[str] = []
    stack: list[str] = []
    opened: list[tuple[str, str, int]] = []
    entities: list[tuple[str, str, int, int]] = []
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "<":
            m = _TAG_RE.match(text, i)
            if not m:
                raise BotAPIError(
                    400,
                    "Bad Request: can't parse entities: Unexpected end of name token at byte "
                    f"offset {len(text[:i].encode())}",
                )
            closing, tag = m.group(1), m.group(2).lower()
            if tag not in _TG_TAGS:
                raise BotAPIError(
                    400,
                    f'Bad Request: can\'t parse entities: Unsupported start tag "{tag}" at byte '
                    f"offset {len(text[:i].encode())}",
                )
            if closing:
                if not stack or stack[-1] != tag:
                    raise BotAPIError(
                        400,
                        "Bad Request: can't parse entities: Can't find end tag corresponding to "
                        f'start tag "{stack[-1] if stack else tag}"',
                    )
                stack.pop()
                name, attrs, start = opened.pop()
                entities.append((name, attrs, start, len("".join(out))))
            else:
                stack.append(tag)
                opened.append((_TAG_ALIASES.get(tag, tag), m.group(3).strip(),
                               len("".join(out))))
            i = m.end()
            continue
        if ch == "&":
            m = _ENTITY_RE.match(text, i)
            if not m:
                raise BotAPIError(
                    400,
                    "Bad Request: can't parse entities: Character '&' is reserved and must be "
                    f"escaped with the preceding '\\' at byte offset {len(text[:i].encode())}",
                )
            name = m.group(1)
            out.append({"lt": "<", "gt": ">", "amp": "&", "quot": '"'}.get(name) or chr(
                int(name[2:], 16) if name.startswith("#x") else int(name[1:])
            ))
            i = m.end()
            continue
        if ch == ">":
            pass  # Telegram tolerates a bare '>'
        out.append(ch)
        i += 1
    if stack:
        raise BotAPIError(
            400,
            "Bad Request: can't parse entities: Can't find end tag corresponding to start tag "
            f'"{stack[-1]}"',
        )
    return "".join(out), tuple(sorted(entities, key=lambda e: (e[2], e[3])))


def _auto_entities(text: str) -> list[dict]:
    """Entities Telegram computes for plain text: @mentions and /commands."""

    def offset(pos: int) -> int:
        return _utf16(text[:pos])

    entities = []
    for m in _MENTION_RE.finditer(text):
        entities.append({"type": "mention", "offset": offset(m.start()),
                         "length": _utf16(m.group(0))})
    for m in _COMMAND_RE.finditer(text):
        entities.append({"type": "bot_command", "offset": offset(m.start()),
                         "length": _utf16(m.group(0))})
    # A /command@bot also contains "@bot": Telegram reports only the command.
    commands = [(e["offset"], e["offset"] + e["length"]) for e in entities
                if e["type"] == "bot_command"]
    entities = [e for e in entities if e["type"] == "bot_command" or not any(
        a <= e["offset"] < b for a, b in commands)]
    return sorted(entities, key=lambda e: e["offset"])


class FakeBotAPI:
    """The fake server (see the module docstring for its API)."""

    def __init__(
        self,
        token: str = DEFAULT_TOKEN,
        *,
        bot_id: int | None = None,
        username: str = "palaver_test_bot",
        first_name: str = "Palaver",
        flood: bool = False,
    ) -> None:
        self.token = token
        self.bot_id = bot_id if bot_id is not None else int(token.split(":", 1)[0])
        self.bot_user = {
            "id": self.bot_id, "is_bot": True, "first_name": first_name, "username": username,
            "can_join_groups": True, "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }
        self.calls: list[Call] = []
        self.sent: list[SentMessage] = []
        self.actions: list[Call] = []
        self.commands: list[dict] | None = None
        self.webhook: dict | None = None
        self.downloads: list[str] = []
        self.unauthorized: list[str] = []
        self.uploads: list[Upload] = []
        self.voice_forbidden: set[int] = set()  # chats refusing voice messages (sendVoice)
        self.requests: list[RawRequest] = []
        # Live replies: every accepted sendMessageDraft / editMessageText, deletions,
        # current reactions, 429s of the flood model.
        self.drafts: list[Call] = []
        self.edits: list[Call] = []
        self.deleted: list[tuple[int, int]] = []
        self.reactions: dict[tuple[int, int], list[dict]] = {}
        self.flooded: list[tuple[str, int, int]] = []  # (method, chat_id, retry_after)
        self.draft_ttl = 30.0  # seconds a draft stays without an update
        self._flood: _Flood | None = _Flood() if flood else None
        self._flood_tat: dict[int, float] = {}
        self._drafts: dict[tuple[int, int | None], _Draft] = {}
        self._screen: dict[tuple[int, int | None], list[ScreenEntry]] = {}
        self._content: dict[tuple[int, int], tuple] = {}
        self._restricted: dict[int, set[str]] = {}
        self._chat_types: dict[int, str] = {}
        self._slow: list[_Slow] = []
        self._drops: dict[str, int] = {}
        self._site: web.TCPSite | None = None
        self._port = 0
        self._token_valid = True
        self._updates: list[dict] = []
        self._update_ids = itertools.count(100_001)
        self._allowed: list[str] | None = None
        self._message_ids: dict[int, itertools.count] = {}
        self._messages: dict[tuple[int, int], dict] = {}
        self._files: dict[str, _File] = {}
        self._failures: list[_Failure] = []
        self._poller: asyncio.Future | None = None
        # Replaced (after being set) on every change: waiters hold the old one.
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.url = ""

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> FakeBotAPI:
        """Listen on 127.0.0.1 (ephemeral port); ``url`` is then the apiRoot."""
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/bot{token}/{method}", self._handle_method)
        app.router.add_get("/file/bot{token}/{path:.+}", self._handle_file)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._site = site
        self._port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{self._port}"
        return self

    async def go_down(self) -> None:
        """Stop listening and close every open connection (long polls included)."""
        assert self._runner is not None and self._site is not None, "not running"
        await self._site.stop()
        self._site = None
        if self._poller is not None and not self._poller.done():
            self._poller.cancel()
        server = self._runner.server
        for handler in list(server.connections) if server is not None else []:
            handler.force_close()
        self._notify()

    async def come_back(self) -> None:
        """Listen again on the same port after :meth:`go_down`."""
        assert self._runner is not None and self._site is None, "not down"
        site = web.TCPSite(self._runner, "127.0.0.1", self._port)
        await site.start()
        self._site = site
        self._notify()

    async def stop(self) -> None:
        """Stop serving; pending long polls end."""
        if self._poller is not None and not self._poller.done():
            self._poller.cancel()
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeBotAPI:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ users, chats, files

    @staticmethod
    def user(uid: int, first_name: str | None = None, username: str | None = None) -> dict:
        """A User dict."""
        user = {"id": uid, "is_bot": False, "first_name": first_name or f"User{uid}"}
        if username:
            user["username"] = username
        return user

    def _as_user(self, user: int | dict) -> dict:
        return self.user(user) if isinstance(user, int) else user

    def _chat(self, chat_id: int, user: dict, chat_type: str | None, forum: bool) -> dict:
        if chat_id > 0 and chat_type in (None, "private"):
            chat = {"id": chat_id, "type": "private", "first_name": user.get("first_name", "")}
            if user.get("username"):
                chat["username"] = user["username"]
            return chat
        chat = {"id": chat_id, "type": chat_type or "supergroup", "title": f"Group {chat_id}"}
        if forum:
            chat["is_forum"] = True
        return chat

    def add_file(self, data: bytes, *, file_size: int | None = None) -> tuple[str, str]:
        """Register downloadable bytes; returns (file_id, file_unique_id)."""
        digest = hashlib.sha256(data + str(len(self._files)).encode()).hexdigest()
        file_id = "AgAC" + digest[:40]
        unique = "AQAD" + digest[40:56]
        self._files[file_id] = _File(
            file_id, unique, f"documents/file_{len(self._files)}.bin", data,
            file_size if file_size is not None else len(data),
        )
        return file_id, unique

    def _next_message_id(self, chat_id: int) -> int:
        counter = self._message_ids.setdefault(chat_id, itertools.count(1))
        return next(counter)

    # ------------------------------------------------------------------ injecting updates

    def push_update(self, update: dict) -> int:
        """Queue a raw update (``update_id`` assigned when missing); returns its id."""
        update = dict(update)
        update.setdefault("update_id", next(self._update_ids))
        self._updates.append(update)
        self._notify()
        return update["update_id"]

    def push_message(
        self,
        chat_id: int,
        user: int | dict,
        *,
        thread_id: int | None = None,
        reply_to: dict | int | None = None,
        chat_type: str | None = None,
        **fields: Any,
    ) -> dict:
        """Queue a ``message`` update with any Message ``fields``; returns the Message."""
        sender = self._as_user(user)
        message: dict[str, Any] = {
            "message_id": self._next_message_id(chat_id),
            "date": int(time.time()),
            "chat": self._chat(chat_id, sender, chat_type, thread_id is not None),
            "from": sender,
        }
        if thread_id is not None:
            message["message_thread_id"] = thread_id
            message["is_topic_message"] = True
        if reply_to is not None:
            if isinstance(reply_to, int):
                reply_to = self._messages[(chat_id, reply_to)]
            message["reply_to_message"] = reply_to
        elif thread_id is not None:
            # Telegram: a topic message without an explicit reply "replies" to the
            # topic's creation service message.
            message["reply_to_message"] = {
                "message_id": thread_id, "date": message["date"], "chat": message["chat"],
                "from": sender, "message_thread_id": thread_id,
                "forum_topic_created": {"name": f"Topic {thread_id}", "icon_color": 7322096},
                "is_topic_message": True,
            }
        message.update(fields)
        self._messages[(chat_id, message["message_id"])] = message
        self._chat_types[chat_id] = message["chat"]["type"]
        self.push_update({"message": message})
        return message

    def push_text(
        self,
        chat_id: int,
        user: int | dict,
        text: str,
        *,
        thread_id: int | None = None,
        reply_to: dict | int | None = None,
        entities: list[dict] | None = None,
        chat_type: str | None = None,
    ) -> dict:
        """Queue a text message (mention/command entities computed unless given)."""
        fields: dict[str, Any] = {"text": text}
        entities = _auto_entities(text) if entities is None else entities
        if entities:
            fields["entities"] = entities
        return self.push_message(chat_id, user, thread_id=thread_id, reply_to=reply_to,
                                 chat_type=chat_type, **fields)

    def _caption(self, caption: str | None) -> dict:
        if not caption:
            return {}
        fields: dict[str, Any] = {"caption": caption}
        entities = _auto_entities(caption)
        if entities:
            fields["caption_entities"] = entities
        return fields

    def push_photo(
        self,
        chat_id: int,
        user: int | dict,
        data: bytes,
        *,
        caption: str | None = None,
        width: int = 1280,
        height: int = 960,
        file_size: int | None = None,
        **kwargs: Any,
    ) -> dict:
        """Queue a photo: two thumbnails and the full size (which holds ``data``)."""
        sizes = []
        for scale, blob in ((16, b"thumb-s"), (4, b"thumb-m"), (1, data)):
            size = file_size if blob is data and file_size is not None else None
            file_id, unique = self.add_file(blob, file_size=size)
            sizes.append({"file_id": file_id, "file_unique_id": unique,
                          "width": max(1, width // scale), "height": max(1, height // scale),
                          "file_size": size if size is not None else len(blob)})
        return self.push_message(chat_id, user, photo=sizes, **self._caption(caption), **kwargs)

    def push_document(
        self,
        chat_id: int,
        user: int | dict,
        data: bytes,
        *,
        filename: str,
        mime_type: str,
        caption: str | None = None,
        file_size: int | None = None,
        **kwargs: Any,
    ) -> dict:
        """Queue a document (an image sent "as file" is a document with an image mime)."""
        file_id, unique = self.add_file(data, file_size=file_size)
        document = {"file_id": file_id, "file_unique_id": unique, "file_name": filename,
                    "mime_type": mime_type, "file_size": self._files[file_id].file_size}
        return self.push_message(chat_id, user, document=document, **self._caption(caption),
                                 **kwargs)

    def push_voice(self, chat_id: int, user: int | dict, data: bytes, *, duration: int = 3,
                   **kwargs: Any) -> dict:
        """Queue a voice note (OGG/Opus)."""
        file_id, unique = self.add_file(data)
        voice = {"file_id": file_id, "file_unique_id": unique, "duration": duration,
                 "mime_type": "audio/ogg", "file_size": len(data)}
        return self.push_message(chat_id, user, voice=voice, **kwargs)

    def push_video_note(self, chat_id: int, user: int | dict, data: bytes, *,
                        duration: int = 9, length: int = 240, **kwargs: Any) -> dict:
        """Queue a round video note (MP4, square: ``length`` px, no mime type)."""
        file_id, unique = self.add_file(data)
        video_note = {"file_id": file_id, "file_unique_id": unique, "length": length,
                      "duration": duration, "file_size": len(data)}
        return self.push_message(chat_id, user, video_note=video_note, **kwargs)

    def push_audio(self, chat_id: int, user: int | dict, data: bytes, *, duration: int = 180,
                   title: str | None = None, filename: str | None = None,
                   **kwargs: Any) -> dict:
        """Queue an audio file (music)."""
        file_id, unique = self.add_file(data)
        audio: dict[str, Any] = {"file_id": file_id, "file_unique_id": unique,
                                 "duration": duration, "mime_type": "audio/mpeg",
                                 "file_size": len(data)}
        if title:
            audio["title"] = title
        if filename:
            audio["file_name"] = filename
        return self.push_message(chat_id, user, audio=audio, **kwargs)

    def push_video(self, chat_id: int, user: int | dict, data: bytes, *, duration: int = 10,
                   width: int = 640, height: int = 360, caption: str | None = None,
                   file_size: int | None = None, **kwargs: Any) -> dict:
        """Queue a video."""
        file_id, unique = self.add_file(data, file_size=file_size)
        video = {"file_id": file_id, "file_unique_id": unique, "duration": duration,
                 "width": width, "height": height, "mime_type": "video/mp4",
                 "file_size": self._files[file_id].file_size}
        return self.push_message(chat_id, user, video=video, **self._caption(caption), **kwargs)

    def push_sticker(self, chat_id: int, user: int | dict, data: bytes, *, emoji: str = "👍",
                     **kwargs: Any) -> dict:
        """Queue a static (WebP) sticker."""
        file_id, unique = self.add_file(data)
        sticker = {"file_id": file_id, "file_unique_id": unique, "type": "regular",
                   "width": 512, "height": 512, "is_animated": False, "is_video": False,
                   "emoji": emoji, "file_size": len(data)}
        return self.push_message(chat_id, user, sticker=sticker, **kwargs)

    def push_location(self, chat_id: int, user: int | dict, latitude: float, longitude: float,
                      **kwargs: Any) -> dict:
        """Queue a location."""
        return self.push_message(chat_id, user,
                                 location={"latitude": latitude, "longitude": longitude},
                                 **kwargs)

    def push_contact(self, chat_id: int, user: int | dict, phone_number: str, first_name: str,
                     last_name: str | None = None, **kwargs: Any) -> dict:
        """Queue a shared contact."""
        contact = {"phone_number": phone_number, "first_name": first_name}
        if last_name:
            contact["last_name"] = last_name
        return self.push_message(chat_id, user, contact=contact, **kwargs)

    def push_edit(self, message: dict, text: str) -> int:
        """Queue an ``edited_message`` update for ``message``."""
        edited = dict(message, text=text, edit_date=int(time.time()))
        return self.push_update({"edited_message": edited})

    def push_channel_post(self, chat_id: int, text: str) -> int:
        """Queue a ``channel_post`` update."""
        post = {"message_id": self._next_message_id(chat_id), "date": int(time.time()),
                "chat": {"id": chat_id, "type": "channel", "title": "A channel"},
                "sender_chat": {"id": chat_id, "type": "channel", "title": "A channel"},
                "text": text}
        return self.push_update({"channel_post": post})

    # ------------------------------------------------------------------ failures

    def fail(self, method: str, code: int, description: str, *, retry_after: float | None = None,
             times: int = 1, when: Callable[[dict], bool] | None = None) -> None:
        """Make the next ``times`` calls of ``method`` (matching ``when``) fail."""
        self._failures.append(_Failure(method, code, description, retry_after, times, when))

    def fail_parse_entities(self, times: int = 1) -> None:
        """Reject the next sendMessage calls that use a parse_mode, like bad markup does."""
        self.fail("sendMessage", 400,
                  "Bad Request: can't parse entities: Can't find end of the entity starting "
                  "at byte offset 0", times=times, when=lambda p: bool(p.get("parse_mode")))

    def rate_limit(self, method: str, retry_after: float, times: int = 1) -> None:
        """Answer 429 with ``parameters.retry_after`` to the next ``times`` calls."""
        self.fail(method, 429, f"Too Many Requests: retry after {retry_after}",
                  retry_after=retry_after, times=times)

    def slow(self, method: str, seconds: float, *, times: int | None = None,
             when: Callable[[dict], bool] | None = None) -> None:
        """Answer ``method`` only after ``seconds`` (the next ``times`` calls, or all;
        ``when(params)`` selects which calls)."""
        self._slow.append(_Slow(method, seconds, times, when))

    def drop(self, method: str, *, times: int = 1) -> None:
        """Record the next ``times`` calls of ``method``, then close without answering."""
        self._drops[method] = self._drops.get(method, 0) + times

    def revoke_token(self) -> None:
        """From now on every call answers 401 Unauthorized."""
        self._token_valid = False

    # ------------------------------------------------------------------ observing

    def calls_to(self, method: str) -> list[Call]:
        """Recorded calls of one method."""
        return [c for c in self.calls if c.method == method]

    @property
    def pending_updates(self) -> list[int]:
        """Ids of updates not yet confirmed with an offset."""
        return [u["update_id"] for u in self._updates]

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def wait_until(self, predicate: Callable[[], Any], timeout: float = 5.0) -> Any:  # noqa: ASYNC109
        """Wait until ``predicate()`` is truthy; returns its value (TimeoutError otherwise)."""
        async with asyncio.timeout(timeout):
            while True:
                changed = self._changed
                value = predicate()
                if value:
                    return value
                await changed.wait()

    async def wait_for_sent(self, n: int, timeout: float = 5.0) -> list[SentMessage]:  # noqa: ASYNC109
        """Wait until at least ``n`` messages were sent; returns all sent so far."""
        try:
            await self.wait_until(lambda: len(self.sent) >= n, timeout)
        except TimeoutError:
            raise AssertionError(
                f"expected {n} sent messages within {timeout}s, got {len(self.sent)}: "
                f"{[s.text[:80] for s in self.sent]}"
            ) from None
        return list(self.sent)

    async def wait_for_calls(self, method: str, n: int = 1, timeout: float = 5.0) -> list[Call]:  # noqa: ASYNC109
        """Wait until ``method`` was called at least ``n`` times; returns those calls."""
        try:
            await self.wait_until(lambda: len(self.calls_to(method)) >= n, timeout)
        except TimeoutError:
            raise AssertionError(
                f"expected {n} calls to {method} within {timeout}s, got "
                f"{len(self.calls_to(method))}"
            ) from None
        return self.calls_to(method)

    # ------------------------------------------------------------------ webhook delivery

    async def deliver_webhook(self, update: dict | None = None, *,
                              secret: str | None | type = ...) -> int:
        """POST an update to the registered webhook like Telegram; returns the HTTP status.

        Without ``update`` the oldest pending update is delivered (and confirmed when the
        answer is 2xx).  ``secret`` defaults to the registered secret token; ``None`` sends
        no header.
        """
        assert self.webhook is not None, "no webhook registered (setWebhook)"
        from_queue = update is None
        if from_queue:
            assert self._updates, "no pending update to deliver"
            update = self._updates[0]
        elif "update_id" not in update:
            update = dict(update, update_id=next(self._update_ids))
        token = self.webhook.get("secret_token") if secret is ... else secret
        headers = {"X-Telegram-Bot-Api-Secret-Token": token} if token is not None else {}
        if self._session is None:
            self._session = aiohttp.ClientSession()
        async with self._session.post(self.webhook["url"], json=update, headers=headers) as resp:
            await resp.read()
            status = resp.status
        if from_queue and 200 <= status < 300:
            self._updates.pop(0)
        return status

    # ------------------------------------------------------------------ HTTP handlers

    @staticmethod
    def _answer(result: Any) -> web.Response:
        return web.json_response({"ok": True, "result": result})

    @staticmethod
    def _error(err: BotAPIError) -> web.Response:
        body: dict[str, Any] = {"ok": False, "error_code": err.code,
                                "description": err.description}
        if err.parameters:
            body["parameters"] = err.parameters
        return web.json_response(body, status=err.code)

    async def _params(self, request: web.Request) -> dict[str, Any]:
        params: dict[str, Any] = dict(request.query)
        if request.can_read_body:
            ctype = request.content_type
            if ctype == "application/json":
                body = await request.json()
                if isinstance(body, dict):
                    params.update(body)
            else:
                form = await request.post()
                for key, value in form.items():
                    if isinstance(value, str):
                        params[key] = value
                        continue
                    data = value.file.read()
                    params[key] = data
                    self.uploads.append(Upload(request.match_info.get("method", ""), key,
                                               value.filename, value.content_type, data))
        for key in list(params):
            value = params[key]
            if key in _JSON_PARAMS and isinstance(value, str):
                try:
                    params[key] = json.loads(value)
                except ValueError:
                    raise BotAPIError(400, f"Bad Request: can't parse {key} JSON object") from None
            elif key in _INT_PARAMS and isinstance(value, str):
                try:
                    params[key] = int(value)
                except ValueError:
                    if key != "chat_id":  # "@channelusername" is valid
                        raise BotAPIError(400, f"Bad Request: invalid {key}") from None
            elif key in ("parse_mode",) and value == "":
                params[key] = None
        return params

    async def _handle_method(self, request: web.Request) -> web.Response:
        token = request.match_info["token"]
        method = request.match_info["method"]
        try:
            if token != self.token or not self._token_valid:
                self.unauthorized.append(method)
                self._notify()
                raise BotAPIError(401, "Unauthorized")
            self.requests.append(RawRequest(method, request.method, request.content_type,
                                            dict(request.headers)))
            params = await self._params(request)
            self.calls.append(Call(method, params, time.monotonic()))
            self._notify()
            if self._drops.get(method):
                self._drops[method] -= 1
                assert request.transport is not None
                request.transport.abort()  # the request arrived; no answer ever will
                raise web.HTTPInternalServerError  # never seen by the client
            for slow in self._slow:
                if slow.method == method and slow.times != 0 and (
                    slow.when is None or slow.when(params)
                ):
                    if slow.times is not None:
                        slow.times -= 1
                    await asyncio.sleep(slow.seconds)
                    break
            self._maybe_fail(method, params)
            self._expire_drafts()
            self._check_flood(method, params)
            handler = getattr(self, "_m_" + method, None)
            if handler is None:
                raise BotAPIError(404, "Not Found")
            result = await handler(params)
        except BotAPIError as err:
            return self._error(err)
        self._notify()
        return self._answer(result)

    def _maybe_fail(self, method: str, params: dict) -> None:
        for failure in self._failures:
            if failure.method == method and failure.times > 0 and (
                failure.when is None or failure.when(params)
            ):
                failure.times -= 1
                parameters = None
                if failure.retry_after is not None:
                    parameters = {"retry_after": failure.retry_after}
                raise BotAPIError(failure.code, failure.description, parameters)

    async def _handle_file(self, request: web.Request) -> web.StreamResponse:
        token = request.match_info["token"]
        if token != self.token or not self._token_valid:
            return self._error(BotAPIError(401, "Unauthorized"))
        path = request.match_info["path"]
        for item in self._files.values():
            if item.file_path == path:
                self.downloads.append(path)
                self._notify()
                return web.Response(body=item.data, content_type="application/octet-stream")
        return self._error(BotAPIError(404, "Not Found"))

    # ------------------------------------------------------------------ methods

    async def _m_getMe(self, params: dict) -> dict:
        return self.bot_user

    async def _m_logOut(self, params: dict) -> bool:
        return True

    async def _m_close(self, params: dict) -> bool:
        return True

    async def _m_deleteWebhook(self, params: dict) -> bool:
        self.webhook = None
        if str(params.get("drop_pending_updates", "")).lower() == "true":
            self._updates.clear()
        return True

    async def _m_setWebhook(self, params: dict) -> bool:
        url = params.get("url", "")
        if not url:
            self.webhook = None
            return True
        if not url.startswith(("https://", "http://127.0.0.1", "http://localhost")):
            raise BotAPIError(400, "Bad Request: bad webhook: An HTTPS URL must be provided for webhook")
        secret = params.get("secret_token")
        if secret is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,256}", secret):
            raise BotAPIError(400, "Bad Request: secret token contains unallowed characters")
        if "allowed_updates" in params:
            self._allowed = params["allowed_updates"] or None
        self.webhook = {"url": url, "secret_token": secret, **{
            k: v for k, v in params.items() if k not in ("url", "secret_token")}}
        return True

    async def _m_getWebhookInfo(self, params: dict) -> dict:
        return {"url": self.webhook["url"] if self.webhook else "",
                "has_custom_certificate": False, "pending_update_count": len(self._updates)}

    def _deliverable(self, limit: int) -> list[dict]:
        allowed = self._allowed
        out = []
        for update in self._updates:
            kind = next(k for k in update if k != "update_id")
            if allowed is None and kind in ("chat_member", "message_reaction",
                                            "message_reaction_count"):
                continue  # Telegram's default leaves these out
            if allowed is not None and kind not in allowed:
                continue
            out.append(update)
            if len(out) >= limit:
                break
        return out

    async def _m_getUpdates(self, params: dict) -> list[dict]:
        if self.webhook is not None:
            raise BotAPIError(409, "Conflict: can't use getUpdates method while webhook is "
                              "active; use deleteWebhook to delete the webhook first")
        offset = params.get("offset")
        if offset:
            if offset < 0:
                self._updates = self._updates[offset:]
            else:
                self._updates = [u for u in self._updates if u["update_id"] >= offset]
        if "allowed_updates" in params:
            self._allowed = params["allowed_updates"] or None
        limit = max(1, min(100, params.get("limit") or 100))
        timeout = max(0, min(50, params.get("timeout") or 0))
        # A new call ends the one still waiting, like Telegram.
        if self._poller is not None and not self._poller.done():
            self._poller.set_exception(BotAPIError(
                409, "Conflict: terminated by other getUpdates request; make sure that only "
                "one bot instance is running"))
        self._poller = poller = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(timeout):
                while not self._deliverable(limit):
                    waiter = asyncio.ensure_future(self._changed.wait())
                    try:
                        await asyncio.wait({waiter, poller}, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        waiter.cancel()
                    if poller.done():
                        poller.result()  # raises the 409
        except TimeoutError:
            pass
        finally:
            if self._poller is poller:
                self._poller = None
            if not poller.done():
                poller.cancel()
        return self._deliverable(limit)

    async def _m_sendMessage(self, params: dict) -> dict:
        chat_id = params.get("chat_id")
        text = params.get("text")
        if chat_id in (None, ""):
            raise BotAPIError(400, "Bad Request: chat_id is empty")
        if not text or not str(text).strip():
            raise BotAPIError(400, "Bad Request: message text is empty")
        parse_mode = params.get("parse_mode")
        visible, entities = self._visible(str(text), parse_mode)
        if not visible.strip():
            raise BotAPIError(400, "Bad Request: message text is empty")
        if _utf16(visible) > 4096:
            raise BotAPIError(400, "Bad Request: message is too long")
        chat_id = int(chat_id)
        thread_id = params.get("message_thread_id")
        reply_to = params.get("reply_to_message_id")
        reply_parameters = params.get("reply_parameters")
        if isinstance(reply_parameters, dict):
            reply_to = reply_parameters.get("message_id")
        replied = self._messages.get((chat_id, reply_to)) if reply_to is not None else None
        if reply_to is not None and replied is None and not (
            isinstance(reply_parameters, dict)
            and reply_parameters.get("allow_sending_without_reply")
        ):
            raise BotAPIError(400, "Bad Request: message to be replied not found")
        sender = {"id": 0, "first_name": ""}
        message: dict[str, Any] = {
            "message_id": self._next_message_id(chat_id),
            "date": int(time.time()),
            "chat": self._chat(chat_id, sender, None, thread_id is not None),
            "from": {k: self.bot_user[k] for k in ("id", "is_bot", "first_name", "username")},
            "text": visible,
        }
        if thread_id is not None:
            message["message_thread_id"] = thread_id
            message["is_topic_message"] = True
        if replied is not None:
            message["reply_to_message"] = replied
        self._messages[(chat_id, message["message_id"])] = message
        self._content[(chat_id, message["message_id"])] = (visible, entities,
                                                           params.get("reply_markup"))
        self.sent.append(SentMessage(chat_id, str(text), parse_mode, thread_id, reply_to,
                                     message["message_id"], message))
        self._show(chat_id, thread_id, "message", message["message_id"], visible)
        return message

    async def _m_sendChatAction(self, params: dict) -> bool:
        if params.get("action") not in {
            "typing", "upload_photo", "record_video", "upload_video", "record_voice",
            "upload_voice", "upload_document", "choose_sticker", "find_location",
            "record_video_note", "upload_video_note",
        }:
            raise BotAPIError(400, "Bad Request: wrong parameter action in request")
        self.actions.append(self.calls[-1])
        return True

    def _file_message(self, params: dict, field: str) -> dict:
        chat_id = params.get("chat_id")
        if chat_id in (None, ""):
            raise BotAPIError(400, "Bad Request: chat_id is empty")
        data = params.get(field)
        if isinstance(data, str) and data.startswith("attach://"):
            data = params.get(data.removeprefix("attach://"))
        if not isinstance(data, bytes):
            raise BotAPIError(400, f"Bad Request: there is no {field} in the request")
        chat_id = int(chat_id)
        file_id, unique = self.add_file(data)
        sender = {"id": 0, "first_name": ""}
        message: dict[str, Any] = {
            "message_id": self._next_message_id(chat_id), "date": int(time.time()),
            "chat": self._chat(chat_id, sender, None, False),
            "from": {k: self.bot_user[k] for k in ("id", "is_bot", "first_name", "username")},
        }
        item = {"file_id": file_id, "file_unique_id": unique, "file_size": len(data)}
        message[field] = [dict(item, width=1, height=1)] if field == "photo" else item
        if params.get("caption"):
            message["caption"] = params["caption"]
        self._messages[(chat_id, message["message_id"])] = message
        thread_id = params.get("message_thread_id")
        self._show(chat_id, thread_id, "message", message["message_id"],
                   str(params.get("caption") or f"[{field}]"))
        return message

    async def _m_sendDocument(self, params: dict) -> dict:
        return self._file_message(params, "document")

    async def _m_sendPhoto(self, params: dict) -> dict:
        return self._file_message(params, "photo")

    async def _m_sendVoice(self, params: dict) -> dict:
        """OGG/Opus becomes a voice message (``voice``: duration as sent, else 0;
        ``mime_type`` audio/ogg); other bytes arrive as a document, as Telegram does.
        ``voice_forbidden`` holds chats whose user forbids voice messages (Premium
        privacy): 400 VOICE_MESSAGES_FORBIDDEN."""
        chat_id = params.get("chat_id")
        if chat_id not in (None, "") and int(chat_id) in self.voice_forbidden:
            raise BotAPIError(400, "Bad Request: VOICE_MESSAGES_FORBIDDEN")
        data = params.get("voice")
        if isinstance(data, bytes) and not _is_ogg_opus(data):
            message = self._file_message(dict(params, document=data), "document")
            message["document"].update(file_name="reply.ogg", mime_type="audio/ogg")
            return message
        message = self._file_message(params, "voice")
        message["voice"].update(duration=int(params.get("duration") or 0),
                                mime_type="audio/ogg")
        return message

    async def _m_getFile(self, params: dict) -> dict:
        item = self._files.get(params.get("file_id", ""))
        if item is None:
            raise BotAPIError(400, "Bad Request: invalid file_id")
        if item.file_size > 20 * 1024 * 1024:
            raise BotAPIError(400, "Bad Request: file is too big")
        return {"file_id": item.file_id, "file_unique_id": item.file_unique_id,
                "file_size": item.file_size, "file_path": item.file_path}

    async def _m_setMyCommands(self, params: dict) -> bool:
        commands = params.get("commands")
        if not isinstance(commands, list):
            raise BotAPIError(400, "Bad Request: commands must be an array")
        for cmd in commands:
            if not re.fullmatch(r"[a-z0-9_]{1,32}", str(cmd.get("command", ""))):
                raise BotAPIError(400, "Bad Request: BOT_COMMAND_INVALID")
            if not 1 <= len(str(cmd.get("description", ""))) <= 256:
                raise BotAPIError(400, "Bad Request: BOT_COMMAND_DESCRIPTION_INVALID")
        self.commands = commands
        return True

    async def _m_getMyCommands(self, params: dict) -> list:
        return self.commands or []

    async def _m_deleteMyCommands(self, params: dict) -> bool:
        self.commands = None
        return True

    async def _m_setMyDescription(self, params: dict) -> bool:
        return True

    async def _m_setMyShortDescription(self, params: dict) -> bool:
        return True

    async def _m_setChatMenuButton(self, params: dict) -> bool:
        return True

    # ------------------------------------------------------------------ live replies

    @staticmethod
    def _visible(text: str, parse_mode: str | None) -> tuple[str, tuple]:
        """The visible text and entities of ``text`` sent with ``parse_mode``."""
        if parse_mode and parse_mode.upper() == "HTML":
            return _parse_html(text)
        if parse_mode:
            raise BotAPIError(400, f"Bad Request: unsupported parse_mode {parse_mode}")
        return text, ()

    async def _m_sendMessageDraft(self, params: dict) -> bool:
        """A draft is a typing action under the hood: users only (TEXTDRAFT_PEER_INVALID
        for groups, channels and bots), ``draft_id`` non-zero, text optional ("" shows
        "Thinking..."), 4096 characters after entity parsing."""
        chat_id = params.get("chat_id")
        if chat_id in (None, ""):
            raise BotAPIError(400, "Bad Request: chat_id is empty")
        chat_id = int(chat_id)
        if chat_id <= 0 or self._chat_types.get(chat_id, "private") != "private":
            raise BotAPIError(400, "Bad Request: TEXTDRAFT_PEER_INVALID")
        draft_id = params.get("draft_id")
        if not draft_id:
            raise BotAPIError(400, "Bad Request: invalid draft_id")
        visible, _entities = self._visible(str(params.get("text") or ""),
                                           params.get("parse_mode"))
        if _utf16(visible) > 4096:
            raise BotAPIError(400, "Bad Request: message is too long")
        thread_id = params.get("message_thread_id")
        now = time.monotonic()
        self._drafts[(chat_id, thread_id)] = _Draft(int(draft_id), visible, now)
        self.drafts.append(self.calls[-1])
        self._entry(chat_id, thread_id, ScreenEntry(now, "draft", int(draft_id), visible))
        return True

    async def _m_editMessageText(self, params: dict) -> dict:
        chat_id, message_id = params.get("chat_id"), params.get("message_id")
        if chat_id in (None, "") or message_id is None:
            raise BotAPIError(400, "Bad Request: message identifier is not specified")
        key = (int(chat_id), int(message_id))
        message = self._messages.get(key)
        if message is None:
            raise BotAPIError(400, "Bad Request: message to edit not found")
        if message.get("from", {}).get("id") != self.bot_id:
            raise BotAPIError(400, "Bad Request: message can't be edited")
        if "text" not in message:
            raise BotAPIError(400, "Bad Request: there is no text in the message to edit")
        text = str(params.get("text") or "")
        if not text.strip():
            raise BotAPIError(400, "Bad Request: message text is empty")
        visible, entities = self._visible(text, params.get("parse_mode"))
        if not visible.strip():
            raise BotAPIError(400, "Bad Request: message text is empty")
        if _utf16(visible) > 4096:
            raise BotAPIError(400, "Bad Request: MESSAGE_TOO_LONG")
        content = (visible, entities, params.get("reply_markup"))
        if self._content.get(key) == content:
            raise BotAPIError(400, _NOT_MODIFIED)
        self._content[key] = content
        message.update(text=visible, edit_date=int(time.time()))
        self.edits.append(self.calls[-1])
        self._entry(key[0], message.get("message_thread_id"),
                    ScreenEntry(time.monotonic(), "edit", key[1], visible))
        return message

    async def _m_deleteMessage(self, params: dict) -> bool:
        chat_id, message_id = params.get("chat_id"), params.get("message_id")
        key = (int(chat_id or 0), int(message_id or 0))
        message = self._messages.pop(key, None)
        if message is None:
            raise BotAPIError(400, "Bad Request: message to delete not found")
        self._content.pop(key, None)
        self.reactions.pop(key, None)
        self.deleted.append(key)
        self._entry(key[0], message.get("message_thread_id"),
                    ScreenEntry(time.monotonic(), "delete", key[1], ""))
        return True

    async def _m_setMessageReaction(self, params: dict) -> bool:
        """One emoji reaction (bots are not Premium); ``[]`` or no ``reaction`` clears."""
        chat_id, message_id = params.get("chat_id"), params.get("message_id")
        key = (int(chat_id or 0), int(message_id or 0))
        message = self._messages.get(key)
        if message is None:
            raise BotAPIError(400, "Bad Request: message to react not found")
        reaction = params.get("reaction") or []
        if not isinstance(reaction, list):
            raise BotAPIError(400, "Bad Request: can't parse reaction JSON object")
        allowed = self._restricted.get(key[0])
        for item in reaction:
            emoji = item.get("emoji") if isinstance(item, dict) else None
            if (not isinstance(item, dict) or item.get("type") != "emoji"
                    or emoji not in _REACTIONS or (allowed is not None and emoji not in allowed)):
                raise BotAPIError(400, "Bad Request: REACTION_INVALID")
        if len(reaction) > 1:
            raise BotAPIError(400, "Bad Request: REACTIONS_TOO_MANY")
        if reaction:
            self.reactions[key] = reaction
        else:
            self.reactions.pop(key, None)
        self._entry(key[0], message.get("message_thread_id"), ScreenEntry(
            time.monotonic(), "reaction", key[1], "".join(r["emoji"] for r in reaction)))
        return True

    def _show(self, chat_id: int, thread_id: int | None, kind: str, message_id: int,
              text: str) -> None:
        """A new message on screen; the draft of that chat and topic goes (client rule)."""
        now = time.monotonic()
        draft = self._drafts.pop((chat_id, thread_id), None)
        if draft is not None:
            self._entry(chat_id, thread_id, ScreenEntry(now, "draft_cleared",
                                                        draft.draft_id, ""))
        self._entry(chat_id, thread_id, ScreenEntry(now, kind, message_id, text))

    def _entry(self, chat_id: int, thread_id: int | None, entry: ScreenEntry) -> None:
        self._screen.setdefault((chat_id, thread_id), []).append(entry)

    def _expire_drafts(self) -> None:
        """Drafts not updated for ``draft_ttl`` seconds are gone (recorded at that time)."""
        now = time.monotonic()
        for key, draft in list(self._drafts.items()):
            if draft.shown_at + self.draft_ttl <= now:
                del self._drafts[key]
                self._entry(*key, ScreenEntry(draft.shown_at + self.draft_ttl,
                                              "draft_expired", draft.draft_id, ""))

    def _check_flood(self, method: str, params: dict) -> None:
        flood = self._flood
        if flood is None or not (method in _FLOOD_METHODS
                                 or (flood.drafts and method == "sendMessageDraft")):
            return
        try:
            chat_id = int(params.get("chat_id") or 0)
        except ValueError:
            return
        interval, burst = flood.group if chat_id < 0 else flood.private
        tolerance = (max(burst, 1) - 1) * interval
        now = time.monotonic()
        tat = max(self._flood_tat.get(chat_id, now), now)
        if tat - tolerance > now:
            retry_after = max(1, math.ceil(tat - tolerance - now))
            self.flooded.append((method, chat_id, retry_after))
            raise BotAPIError(429, f"Too Many Requests: retry after {retry_after}",
                              {"retry_after": retry_after})
        self._flood_tat[chat_id] = tat + interval

    def flood(self, enabled: bool = True, *, private: tuple[float, int] = (1.0, 3),
              group: tuple[float, int] = (3.0, 3), drafts: bool = False) -> None:
        """Turn the flood model on (or off): per chat, ``(interval seconds, burst)`` for
        private chats and groups over sendMessage, sendDocument, sendPhoto, sendVoice and
        editMessageText (``drafts``: sendMessageDraft too); beyond, 429 with the
        computed ``retry_after``."""
        self._flood = _Flood(private, group, drafts) if enabled else None
        self._flood_tat.clear()

    def restrict_reactions(self, chat_id: int, emoji: set[str] | None) -> None:
        """The chat's ``available_reactions`` (None: all); others get REACTION_INVALID."""
        if emoji is None:
            self._restricted.pop(chat_id, None)
        else:
            self._restricted[chat_id] = set(emoji)

    def screen(self, chat_id: int, thread_id: int | None = None) -> list[ScreenEntry]:
        """What the user saw change in that chat (and topic), in order."""
        self._expire_drafts()
        return sorted(self._screen.get((chat_id, thread_id), []), key=lambda e: e.t)

    def draft_shown(self, chat_id: int, thread_id: int | None = None) -> _Draft | None:
        """The draft on screen now (None: none, or it expired)."""
        self._expire_drafts()
        return self._drafts.get((chat_id, thread_id))

    def snapshots(self, chat_id: int, thread_id: int | None = None) -> list[list[str]]:
        """The bot's texts on screen after each change: its messages in order (edited,
        deleted ones gone), then the draft if one is shown."""
        messages: dict[int, str] = {}
        draft: str | None = None
        states: list[list[str]] = []
        for entry in self.screen(chat_id, thread_id):
            if entry.kind == "draft":
                draft = entry.text
            elif entry.kind in ("draft_cleared", "draft_expired"):
                draft = None
            elif entry.kind in ("message", "edit"):
                messages[entry.id] = entry.text
            elif entry.kind == "delete":
                messages.pop(entry.id, None)
            else:
                continue
            states.append([*messages.values(), *([draft] if draft is not None else [])])
        return states

    def visible_texts(self, chat_id: int, thread_id: int | None = None) -> list[str]:
        """Every text the user could see at some moment (drafts, messages, edits), in
        order: for "at no moment did the user see X"."""
        return [e.text for e in self.screen(chat_id, thread_id)
                if e.kind in ("draft", "message", "edit")]

    def drafts_after_last_message(self, chat_id: int,
                                  thread_id: int | None = None) -> list[ScreenEntry]:
        """Draft frames that arrived after the bot's last message (a draft shown under the
        final answer: the "duplicate reply" users report)."""
        entries = self.screen(chat_id, thread_id)
        last = max((i for i, e in enumerate(entries) if e.kind == "message"), default=-1)
        return [e for e in entries[last + 1:] if e.kind == "draft"]
