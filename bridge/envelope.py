"""The only types channels and the core share.

A channel adapter translates a platform event into an :class:`Inbound` and hands it to
an :class:`InboundSink` (the core); the core answers with :class:`Outbound` values that
the adapter turns back into platform calls.  Nothing here knows any platform SDK.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class ChatKind(StrEnum):
    DIRECT = "direct"
    GROUP = "group"


class MediaKind(StrEnum):
    IMAGE = "image"
    VIDEO = "video"
    AUDIO = "audio"
    VOICE = "voice"
    DOCUMENT = "document"
    STICKER = "sticker"
    LOCATION = "location"
    CONTACT = "contact"


@dataclass(frozen=True, slots=True)
class MediaRef:
    """A piece of media attached to a message.

    ``media_id`` is the media store's content-hash id when the bytes were downloaded,
    ``None`` when they were not (too large, failed, or nothing to download such as a
    location).  ``filename`` is untrusted display text, never a path.
    """

    kind: MediaKind
    media_id: str | None = None
    mime: str | None = None
    filename: str | None = None
    size: int | None = None
    duration_s: float | None = None
    width: int | None = None
    height: int | None = None
    # Why the bytes are missing, or extra description (a location's coordinates, a
    # contact's name and number, a sticker's emoji).
    note: str | None = None

    def placeholder(self) -> str:
        """Short text telling a model that something was sent, e.g. ``[voice note, 12 s]``."""
        label = {
            MediaKind.IMAGE: "image",
            MediaKind.VIDEO: "video",
            MediaKind.AUDIO: "audio",
            MediaKind.VOICE: "voice note",
            MediaKind.DOCUMENT: "document",
            MediaKind.STICKER: "sticker",
            MediaKind.LOCATION: "location",
            MediaKind.CONTACT: "contact",
        }[self.kind]
        bits = [label]
        if self.filename:
            bits.append(repr(self.filename))
        if self.duration_s is not None:
            bits.append(f"{round(self.duration_s)} s")
        if self.note:
            bits.append(self.note)
        return "[" + ", ".join(bits) + "]"


@dataclass(frozen=True, slots=True)
class ChatAddress:
    """Where a message came from and where its answer goes."""

    channel: str  # "telegram", "whatsapp", "console"
    account: str  # which bot/number of that channel ("default" when only one)
    chat_id: str
    chat_kind: ChatKind
    thread_id: str | None = None  # forum topic


@dataclass(frozen=True, slots=True)
class SessionKey:
    """One conversation: a direct chat per sender per channel, or a group (per topic)."""

    channel: str
    account: str
    scope: str  # "direct:<sender_id>" or "group:<chat_id>" or "group:<chat_id>:topic:<thread>"

    def __str__(self) -> str:
        return f"{self.channel}:{self.account}:{self.scope}"

    @classmethod
    def parse(cls, text: str) -> SessionKey:
        channel, account, scope = text.split(":", 2)
        return cls(channel, account, scope)


@dataclass(frozen=True, slots=True)
class Quoted:
    """The message an inbound message replies to (context for the turn)."""

    message_id: str | None
    sender_id: str | None = None
    sender_name: str | None = None
    text: str = ""
    media: tuple[MediaRef, ...] = ()
    from_bot: bool = False


@dataclass(frozen=True, slots=True)
class Inbound:
    """One incoming chat message, platform-neutral."""

    address: ChatAddress
    sender_id: str  # canonical id (Telegram numeric user id, WhatsApp "+E164" when known)
    message_id: str
    timestamp: float  # unix seconds
    text: str = ""  # text or caption
    sender_name: str | None = None
    # Other identities of the sender, matched against allowFrom ("@username", LID ...).
    sender_aliases: tuple[str, ...] = ()
    media: tuple[MediaRef, ...] = ()
    quoted: Quoted | None = None
    # Mentioned by name/JID, replied to one of the bot's messages, or a command addressed
    # to the bot.  The core applies requireMention from this one flag.
    mentioned: bool = False
    # A group's title as the platform gave it with this message (None: not known).
    chat_title: str | None = None

    @property
    def session_key(self) -> SessionKey:
        a = self.address
        if a.chat_kind is ChatKind.DIRECT:
            scope = f"direct:{self.sender_id}"
        elif a.thread_id:
            scope = f"group:{a.chat_id}:topic:{a.thread_id}"
        else:
            scope = f"group:{a.chat_id}"
        return SessionKey(a.channel, a.account, scope)


@dataclass(frozen=True, slots=True)
class Outbound:
    """A reply for a chat; ``text`` is Markdown, the channel renders its own markup."""

    address: ChatAddress
    text: str
    reply_to_message_id: str | None = None  # quote the triggering message (groups)
    plain: bool = False  # send as-is, no markup conversion (pairing codes, errors)
    # Edit-mode preview (issue 17): chunk 0 is an edit of this message (the channel's
    # chunk id form) instead of a new send; None: send every chunk.
    edit_message_id: str | None = None


@dataclass(frozen=True, slots=True)
class VoiceClip:
    """A reply spoken: OGG/Opus audio the channel sends as a voice message before (or
    instead of) the reply's text.  ``complete`` False: only the start of the reply is
    spoken and its whole text follows as text."""

    audio: bytes
    duration_s: float | None = None
    complete: bool = True


class AcceptStatus(StrEnum):
    ACCEPTED = "accepted"  # stored, will be answered
    DUPLICATE = "duplicate"  # already stored earlier; not answered again
    REFUSED = "refused"  # access policy said no; recorded, never sent to a model
    IGNORED = "ignored"  # e.g. group message without a mention
