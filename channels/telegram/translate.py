"""Telegram ``Message`` -> :class:`~bridge.envelope.Inbound` draft: pure functions.

A message and the bot's identity go in, a :class:`Draft` comes out: the Inbound with
its media described (kind, size, mime, dimensions) but not downloaded, and beside it
what to download for each attachment.  No bot connection, no I/O, no logging: the
intake decides whether to download (only for a message the core will answer) and does
it.  That keeps the whole translation table-testable from ``Message.de_json`` objects.

Replies become :class:`~bridge.envelope.Quoted`; ``mentioned`` is computed from
@mentions, text mentions, ``/command@bot`` and replies to the bot.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from telegram import Message, MessageEntity, TelegramObject
from telegram.constants import ChatType

from bridge.envelope import ChatAddress, ChatKind, Inbound, MediaKind, MediaRef, Quoted

__all__ = ["TELEGRAM_SERVICE_ID", "BotIdentity", "Download", "Draft", "Fetch", "Speaker",
           "draft", "is_mentioned", "media_of", "normalise_command", "period_seconds",
           "quoted", "real_reply", "seconds", "speaker"]

TELEGRAM_SERVICE_ID = 777000  # "Telegram": posts forwarded from linked channels, notices


@dataclass(frozen=True, slots=True)
class BotIdentity:
    """Who we are: the bot's user id and username (without "@"; "" when unknown)."""

    id: int | None
    username: str


@dataclass(frozen=True, slots=True)
class Download:
    """What to fetch for one attachment."""

    file_id: str
    size: int | None


@dataclass(frozen=True, slots=True)
class Fetch:
    """A download still to do for one MediaRef (``meta``: the MediaRef's fields)."""

    kind: MediaKind
    item: Download
    meta: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Draft:
    """An Inbound whose media are not downloaded yet, and the downloads (None: nothing),
    in the order of ``inbound.media`` and ``inbound.quoted.media``."""

    inbound: Inbound
    media: list[Fetch | None]
    quoted_media: list[Fetch | None]

    @property
    def has_downloads(self) -> bool:
        """True when at least one attachment is still to be downloaded."""
        return any(self.media) or any(self.quoted_media)


@dataclass(frozen=True, slots=True)
class Speaker:
    """Who wrote a message we may answer, and in which kind of chat."""

    kind: ChatKind
    id: str
    name: str | None
    aliases: tuple[str, ...]


def speaker(msg: Message) -> Speaker | None:
    """The sender of ``msg``, or None when it is not a person we may answer.

    Ignored: channel chats, automatic forwards of a linked channel's posts into its
    discussion group, messages sent on behalf of a channel, other bots and Telegram's
    service account.  An anonymous group admin (``sender_chat`` is the group itself) is
    a sender whose id is the group's id, named by its signature or the group's title.
    """
    chat = msg.chat
    if chat.type == ChatType.CHANNEL or msg.is_automatic_forward:
        return None
    kind = ChatKind.DIRECT if chat.type == ChatType.PRIVATE else ChatKind.GROUP
    sender = msg.sender_chat
    if sender is not None:
        if kind is ChatKind.DIRECT or sender.id != chat.id:
            return None  # a channel speaking (its own post forwarded, or "send as")
        return Speaker(kind, str(chat.id), msg.author_signature or chat.title or None, ())
    user = msg.from_user
    if user is None or user.is_bot or user.id == TELEGRAM_SERVICE_ID:
        return None
    aliases = (f"@{user.username}",) if user.username else ()
    return Speaker(kind, str(user.id), user.full_name or None, aliases)


def draft(msg: Message, me: BotIdentity, *, channel: str = "telegram",
          account: str = "default") -> Draft | None:
    """A Telegram message -> an Inbound whose media are not downloaded yet, or None.

    None for the senders :func:`speaker` ignores, for commands addressed to another bot
    and for messages with nothing we understand.  ``message_id`` is
    ``"<chat_id>:<message_id>"`` (Telegram numbers messages per chat).
    """
    who = speaker(msg)
    if who is None:
        return None
    chat = msg.chat
    text, for_other_bot = normalise_command(msg, msg.text or msg.caption or "", me)
    if for_other_bot:
        return None
    media = media_of(msg)
    if not text and not media:
        return None
    thread = (str(msg.message_thread_id)
              if msg.is_topic_message and msg.message_thread_id else None)
    quote, quoted_media = quoted(msg, me)
    inbound = Inbound(
        address=ChatAddress(channel, account, str(chat.id), who.kind, thread),
        sender_id=who.id,
        message_id=f"{chat.id}:{msg.message_id}",
        timestamp=msg.date.timestamp(),
        text=text,
        sender_name=who.name,
        sender_aliases=who.aliases,
        media=tuple(ref for ref, _ in media),
        quoted=quote,
        mentioned=is_mentioned(msg, me),
        chat_title=(chat.title or None) if who.kind is not ChatKind.DIRECT else None,
    )
    return Draft(inbound, [job for _, job in media], quoted_media)


def _command_entity(msg: Message) -> str | None:
    """The text of a bot_command entity at the very start of the text or caption."""
    types: list[str | None] = [MessageEntity.BOT_COMMAND]
    parsed = msg.parse_entities(types) if msg.text else msg.parse_caption_entities(types)
    for entity, value in parsed.items():
        if entity.offset == 0:
            return value
    return None


def normalise_command(msg: Message, text: str, me: BotIdentity) -> tuple[str, bool]:
    """Strip our ``@botname`` from a leading command; flag commands for other bots."""
    value = _command_entity(msg)
    if not value or "@" not in value:
        return text, False
    command, _, target = value.partition("@")
    if target.lower() != me.username.lower():
        return text, True
    return command + text[len(value):], False


def is_mentioned(msg: Message, me: BotIdentity) -> bool:
    """True when ``msg`` names the bot (@mention, text mention, /cmd@bot) or replies to it."""
    username = me.username.lower()
    types: list[str | None] = [MessageEntity.MENTION, MessageEntity.TEXT_MENTION,
                               MessageEntity.BOT_COMMAND]
    parsed = {**msg.parse_entities(types), **msg.parse_caption_entities(types)}
    for entity, value in parsed.items():
        if entity.type == MessageEntity.MENTION and value[1:].lower() == username:
            return True
        if (entity.type == MessageEntity.TEXT_MENTION and entity.user is not None
                and entity.user.id == me.id):
            return True
        if (entity.type == MessageEntity.BOT_COMMAND and "@" in value
                and value.split("@", 1)[1].lower() == username):
            return True
    reply = real_reply(msg)
    return bool(reply and reply.from_user and reply.from_user.id == me.id)


def real_reply(msg: Message) -> Message | None:
    """The replied-to message, unless it is a forum topic's creation (Telegram adds it)."""
    reply = msg.reply_to_message
    if reply is None or reply.forum_topic_created is not None:
        return None
    return reply


def quoted(msg: Message, me: BotIdentity) -> tuple[Quoted | None, list[Fetch | None]]:
    """The message ``msg`` replies to, and the downloads of its images (only those)."""
    reply = real_reply(msg)
    if reply is None:
        return None, []
    sender = reply.from_user
    media = media_of(reply, images_only=True)
    return Quoted(
        message_id=f"{reply.chat.id}:{reply.message_id}",
        sender_id=str(sender.id) if sender else None,
        sender_name=(sender.full_name or None) if sender else None,
        text=reply.text or reply.caption or "",
        media=tuple(ref for ref, _ in media),
        from_bot=bool(sender and sender.id == me.id),
    ), [job for _, job in media]


def media_of(msg: Message, *, images_only: bool = False
             ) -> list[tuple[MediaRef, Fetch | None]]:
    """Attachments of ``msg``: a MediaRef without bytes and what to download for it.

    ``images_only``: describe every attachment but download only images (a quoted
    message's media).
    """
    refs: list[tuple[MediaRef, Fetch | None]] = []

    def add(kind: MediaKind, item: Download | None, **meta: Any) -> None:
        ref = MediaRef(kind=kind, size=item.size if item else None, **meta)
        fetch = item is not None and (not images_only or kind is MediaKind.IMAGE)
        refs.append((ref, Fetch(kind, item, meta) if fetch and item else None))

    if msg.photo:
        best = max(msg.photo, key=lambda p: (p.width * p.height, p.file_size or 0))
        add(MediaKind.IMAGE, Download(best.file_id, best.file_size),
            mime="image/jpeg", width=best.width, height=best.height)
    elif msg.animation:
        anim = msg.animation
        add(MediaKind.VIDEO, Download(anim.file_id, anim.file_size),
            mime=anim.mime_type or "video/mp4", filename=anim.file_name,
            duration_s=seconds(anim), width=anim.width, height=anim.height, note="animation")
    elif msg.document:
        doc = msg.document
        is_image = (doc.mime_type or "").startswith("image/")
        add(MediaKind.IMAGE if is_image else MediaKind.DOCUMENT,
            Download(doc.file_id, doc.file_size), mime=doc.mime_type, filename=doc.file_name)
    elif msg.voice:
        voice = msg.voice
        add(MediaKind.VOICE, Download(voice.file_id, voice.file_size),
            mime=voice.mime_type or "audio/ogg", duration_s=seconds(voice))
    elif msg.audio:
        audio = msg.audio
        add(MediaKind.AUDIO, Download(audio.file_id, audio.file_size),
            mime=audio.mime_type or "audio/mpeg", filename=audio.file_name or audio.title,
            duration_s=seconds(audio))
    elif msg.video:
        video = msg.video
        add(MediaKind.VIDEO, Download(video.file_id, video.file_size),
            mime=video.mime_type or "video/mp4", duration_s=seconds(video),
            width=video.width or None, height=video.height or None, note=None)
    elif msg.video_note:
        round_video = msg.video_note
        side = round_video.length or None
        add(MediaKind.VIDEO, Download(round_video.file_id, round_video.file_size),
            mime="video/mp4", duration_s=seconds(round_video), width=side, height=side,
            note="round video")
    elif msg.sticker:
        sticker = msg.sticker
        static = not (sticker.is_animated or sticker.is_video)
        mime = "image/webp" if static else ("video/webm" if sticker.is_video
                                            else "application/x-tgsticker")
        add(MediaKind.STICKER, Download(sticker.file_id, sticker.file_size) if static else None,
            mime=mime, width=sticker.width, height=sticker.height, note=sticker.emoji or None)
    if msg.venue:
        venue = msg.venue
        refs.append((MediaRef(kind=MediaKind.LOCATION, note=(
            f"{venue.title}, {venue.address} ({venue.location.latitude:.5f}, "
            f"{venue.location.longitude:.5f})")), None))
    elif msg.location:
        loc = msg.location
        refs.append((MediaRef(kind=MediaKind.LOCATION,
                              note=f"{loc.latitude:.5f}, {loc.longitude:.5f}"), None))
    if msg.contact:
        contact = msg.contact
        name = " ".join(p for p in (contact.first_name, contact.last_name) if p)
        refs.append((MediaRef(kind=MediaKind.CONTACT,
                              note=f"{name}, {contact.phone_number}"), None))
    return refs


def period_seconds(value: int | float | dt.timedelta | None) -> float | None:
    """A PTB time period in seconds: an int/float today, a timedelta with PTB_TIMEDELTA=1."""
    if value is None:
        return None
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    return float(value)


def seconds(media: TelegramObject) -> float | None:
    """A media object's ``duration`` in seconds.

    Read from its wire form: PTB 22's ``duration`` property warns (PTBDeprecationWarning)
    unless $PTB_TIMEDELTA is set.
    """
    value = media.to_dict().get("duration")
    return None if value is None else period_seconds(value)
