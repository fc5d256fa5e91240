"""neonize protobufs <-> content, pure: JIDs, what a message holds, how a reply quotes.

Nothing here talks to WhatsApp or keeps state: a ``waE2E.Message`` (after the wrappers
are peeled off: ephemeral, view-once, edited...) becomes text, media descriptions and
its ``contextInfo``; a reply's text (and the message it quotes) becomes the protobuf to
send.  Protobufs are proto2 with required fields; JIDs are built with ``build_jid``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from neonize.aioze.events import MessageEv
from neonize.proto.Neonize_pb2 import JID
from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as waE2E
from neonize.utils.jid import build_jid

from bridge.envelope import MediaKind, MediaRef

PHONE_SERVER = "s.whatsapp.net"
LID_SERVER = "lid"
GROUP_SERVER = "g.us"
BROADCAST_SERVER = "broadcast"
NEWSLETTER_SERVER = "newsletter"  # WhatsApp Channels: posts of followed channels


@dataclass(frozen=True)
class QuoteRef:
    """What a reply needs to quote a message.

    WhatsApp finds the quoted message by ``message_id`` (stanza id) and ``participant``
    (its sender's JID, needed in groups); ``message`` is the quoted content, which only
    the bot account's own devices display (other clients use their own copy).
    """

    message_id: str
    participant: str
    message: waE2E.Message | None = None

    @classmethod
    def from_event(cls, ev: MessageEv) -> QuoteRef:
        """Quote a received message (its content without nested quotes)."""
        src = ev.Info.MessageSource
        inner = waE2E.Message()
        inner.CopyFrom(ev.Message)
        for desc, value in inner.ListFields():
            if (desc.message_type is not None
                    and "contextInfo" in desc.message_type.fields_by_name):
                value.ClearField("contextInfo")  # quotes do not nest
        return cls(ev.Info.ID, quote_participant(src.Sender, src.SenderAlt), inner)


def quote_participant(sender: JID, alt: JID) -> str:
    """The participant a quote of this sender's message names (``user@server``)."""
    if sender.Server == LID_SERVER and alt.User:
        sender = alt  # as WhatsApp clients do: quote by phone JID when known
    return f"{sender.User}@{sender.Server}"


def build_text_message(text: str, quoted: QuoteRef | None = None) -> waE2E.Message:
    """The protobuf for a text message, quoting ``quoted`` when given.

    Built by hand rather than with neonize's ``build_reply_message``: that one clears the
    quoted message's ``contextInfo`` in place (our cached event) and turns any ``@digits``
    or ``@…@g.us`` in model output into mentions and group look-ups.
    """
    if quoted is None:
        return waE2E.Message(conversation=text)
    context = waE2E.ContextInfo(stanzaID=quoted.message_id, participant=quoted.participant)
    if quoted.message is not None:
        context.quotedMessage.CopyFrom(quoted.message)
    return waE2E.Message(
        extendedTextMessage=waE2E.ExtendedTextMessage(text=text, contextInfo=context)
    )


VOICE_MIMETYPE = "audio/ogg; codecs=opus"  # what WhatsApp's own apps send for a PTT


def build_voice_message(upload: Any, seconds: int,
                        quoted: QuoteRef | None = None) -> waE2E.Message:
    """A voice note (push-to-talk ``audioMessage``) of uploaded OGG/Opus.

    ``upload`` is neonize's ``UploadResponse``.  Built by hand rather than with neonize's
    ``build_audio_message``: that one runs ffprobe for the duration (failing without
    ffmpeg) and takes the mimetype from libmagic (``audio/ogg``, which phones show as a
    file rather than a voice note).
    """
    audio = waE2E.AudioMessage(
        URL=upload.url, directPath=upload.DirectPath, mediaKey=upload.MediaKey,
        fileEncSHA256=upload.FileEncSHA256, fileSHA256=upload.FileSHA256,
        fileLength=upload.FileLength, mimetype=VOICE_MIMETYPE, seconds=max(1, seconds),
        PTT=True)
    if quoted is not None:
        audio.contextInfo.stanzaID = quoted.message_id
        if quoted.participant:
            audio.contextInfo.participant = quoted.participant
        if quoted.message is not None:
            audio.contextInfo.quotedMessage.CopyFrom(quoted.message)
    return waE2E.Message(audioMessage=audio)


def jid_str(jid: JID) -> str:
    """``user@server`` without device or agent (what a chat id is)."""
    if not jid.User:
        return jid.Server
    return f"{jid.User}@{jid.Server}"


def parse_jid(text: str) -> JID:
    """A chat id (``user@server``, device or agent dropped) as a JID; ValueError if none."""
    user, sep, server = text.partition("@")
    if not sep or not server:
        raise ValueError(f"not a WhatsApp JID: {text!r}")
    user = user.split(":", 1)[0].split(".", 1)[0]
    return build_jid(user, server)


def user_of(jid_text: str) -> str:
    """The user part of a JID string, without agent or device (``123.0:4@lid`` -> 123)."""
    return jid_text.partition("@")[0].split(":", 1)[0].split(".", 1)[0]


def timestamp_s(raw: int) -> float:
    """``MessageInfo.Timestamp`` in Unix seconds."""
    # neonize's Go side encodes MessageInfo.Timestamp as Unix milliseconds (older builds
    # used seconds); anything past year 33658 in seconds is milliseconds.
    return raw / 1000.0 if raw > 10**12 else float(raw)


_WRAPPERS = ("ephemeralMessage", "viewOnceMessage", "viewOnceMessageV2",
             "viewOnceMessageV2Extension", "documentWithCaptionMessage", "editedMessage")
_SKIPPED = ("protocolMessage", "reactionMessage", "encReactionMessage", "pollUpdateMessage",
            "keepInChatMessage", "pinInChatMessage", "encEventResponseMessage")


def unwrap(msg: waE2E.Message) -> waE2E.Message:
    """The message inside ephemeral / view-once / edited / captioned-document wrappers."""
    for _ in range(5):
        for name in _WRAPPERS:
            if msg.HasField(name) and getattr(msg, name).HasField("message"):
                msg = getattr(msg, name).message
                break
        else:
            return msg
    return msg


def clip(text: str, limit: int = 200) -> str:
    """``text`` on one line (whitespace collapsed), cut to ``limit`` with an ellipsis."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


_TEL = re.compile(r"^(?:item\d+\.)?TEL[^:]*?(?:waid=(\d+))?[^:]*:(.+)$", re.I | re.M)


def _vcard_numbers(vcard: str) -> list[str]:
    numbers = []
    for waid, value in _TEL.findall(vcard or ""):
        digits = waid or re.sub(r"[^\d]", "", value)
        if digits:
            numbers.append("+" + digits)
    return numbers[:5]


@dataclass
class MediaSpec:
    """One media item as the message describes it (``sub`` is where its bytes are)."""

    kind: MediaKind
    sub: Any = None  # the waE2E sub-message holding the media
    mime: str | None = None
    filename: str | None = None
    duration_s: float | None = None
    width: int | None = None
    height: int | None = None
    size: int | None = None
    note: str | None = None
    downloadable: bool = True


@dataclass
class Content:
    """What one message holds: text, media, the ``contextInfo`` (quote, mentions)."""

    text: str = ""
    media: list[MediaSpec] = field(default_factory=list)
    context: waE2E.ContextInfo | None = None
    skipped: str | None = None  # why the message carries nothing to answer


def _dims(sub: Any) -> tuple[int | None, int | None]:
    width = sub.width if sub.HasField("width") and sub.width else None
    height = sub.height if sub.HasField("height") and sub.height else None
    return width, height


def _size(sub: Any) -> int | None:
    return int(sub.fileLength) if sub.HasField("fileLength") and sub.fileLength else None


def describe(msg: waE2E.Message) -> Content:
    """Text, media and contextInfo of one (unwrapped) waE2E message."""
    out = Content()
    for name in _SKIPPED:
        if msg.HasField(name):
            out.skipped = name
            return out
    contexts = []

    if msg.HasField("conversation") and msg.conversation:
        out.text = msg.conversation
    if msg.HasField("extendedTextMessage"):
        ext = msg.extendedTextMessage
        out.text = out.text or ext.text
        contexts.append(ext)
    if msg.HasField("imageMessage"):
        sub = msg.imageMessage
        width, height = _dims(sub)
        out.media.append(MediaSpec(MediaKind.IMAGE, sub, sub.mimetype or "image/jpeg",
                                    width=width, height=height, size=_size(sub)))
        out.text = out.text or sub.caption
        contexts.append(sub)
    for name in ("videoMessage", "ptvMessage"):
        if msg.HasField(name):
            sub = getattr(msg, name)
            width, height = _dims(sub)
            out.media.append(MediaSpec(
                MediaKind.VIDEO, sub, sub.mimetype or "video/mp4",
                duration_s=float(sub.seconds) if sub.seconds else None,
                width=width, height=height, size=_size(sub),
                note="GIF" if sub.gifPlayback else None,
            ))
            out.text = out.text or sub.caption
            contexts.append(sub)
    if msg.HasField("audioMessage"):
        sub = msg.audioMessage
        out.media.append(MediaSpec(
            MediaKind.VOICE if sub.PTT else MediaKind.AUDIO, sub,
            (sub.mimetype or "audio/ogg").split(";")[0].strip(),
            duration_s=float(sub.seconds) if sub.seconds else None, size=_size(sub),
        ))
        contexts.append(sub)
    if msg.HasField("documentMessage"):
        sub = msg.documentMessage
        out.media.append(MediaSpec(
            MediaKind.DOCUMENT, sub, sub.mimetype or "application/octet-stream",
            filename=clip(sub.fileName or sub.title, 120) or None, size=_size(sub),
        ))
        out.text = out.text or sub.caption
        contexts.append(sub)
    if msg.HasField("stickerMessage"):
        sub = msg.stickerMessage
        width, height = _dims(sub)
        out.media.append(MediaSpec(
            MediaKind.STICKER, sub, sub.mimetype or "image/webp", width=width, height=height,
            size=_size(sub), note=clip(sub.emojis, 20) or None,
        ))
        contexts.append(sub)
    for name in ("locationMessage", "liveLocationMessage"):
        if msg.HasField(name):
            sub = getattr(msg, name)
            bits = [f"{sub.degreesLatitude:.5f}, {sub.degreesLongitude:.5f}"]
            for attr in ("name", "address", "comment", "caption"):
                if attr in sub.DESCRIPTOR.fields_by_name and getattr(sub, attr):
                    bits.append(clip(getattr(sub, attr), 80))
            if name == "liveLocationMessage":
                bits.append("live")
            out.media.append(MediaSpec(MediaKind.LOCATION, note=" — ".join(bits),
                                        downloadable=False))
            contexts.append(sub)
    contacts = []
    if msg.HasField("contactMessage"):
        contacts.append(msg.contactMessage)
        contexts.append(msg.contactMessage)
    if msg.HasField("contactsArrayMessage"):
        contacts.extend(msg.contactsArrayMessage.contacts)
        contexts.append(msg.contactsArrayMessage)
    for contact in contacts[:10]:
        bits = [clip(contact.displayName, 60)] if contact.displayName else []
        bits.extend(_vcard_numbers(contact.vcard))
        out.media.append(MediaSpec(MediaKind.CONTACT, note=" ".join(bits) or None,
                                    downloadable=False))

    for sub in contexts:
        if sub.HasField("contextInfo"):
            out.context = sub.contextInfo
            break
    if not out.text and not out.media:
        out.skipped = "no supported content"
    return out

def bare_ref(spec: MediaSpec, *, note: str | None = None,
             size: int | None = None) -> MediaRef:
    """The description of a media item without its bytes (``media_id`` None)."""
    return MediaRef(kind=spec.kind, mime=spec.mime if spec.downloadable else None,
                    filename=spec.filename, size=spec.size if size is None else size,
                    duration_s=spec.duration_s, width=spec.width, height=spec.height,
                    note=spec.note if note is None else note)


def join_notes(*notes: str | None) -> str | None:
    """The non-empty notes joined with "; " (None when there are none)."""
    joined = "; ".join(n for n in notes if n)
    return joined or None


def enum_name(event: Any, field_name: str) -> str:
    """The name of an enum field of a neonize event (``LOGGED_OUT``), else its value."""
    value = getattr(event, field_name, None)
    if value is None:
        return "unknown"
    try:
        return event.DESCRIPTOR.fields_by_name[field_name].enum_type.values_by_number[
            int(value)].name
    except (KeyError, AttributeError, TypeError):
        return str(value)

