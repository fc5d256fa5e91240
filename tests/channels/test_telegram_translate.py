"""channels.telegram.translate: Message -> Inbound draft, table-tested without a bot.

Every message is built with ``telegram.Message.de_json(data, None)`` from the Bot API's
wire form; nothing connects anywhere.
"""

from __future__ import annotations

from typing import Any

import pytest
from telegram import Message

from bridge.envelope import ChatAddress, ChatKind, MediaKind, MediaRef, Quoted
from channels.telegram.translate import (
    BotIdentity,
    Download,
    Draft,
    Fetch,
    Speaker,
    draft,
    period_seconds,
    speaker,
)

ME = BotIdentity(id=999, username="PalaverBot")
ANN = {"id": 42, "is_bot": False, "first_name": "Ann", "last_name": "Lee", "username": "ann"}
BOB = {"id": 43, "is_bot": False, "first_name": "Bob"}
BOT_USER = {"id": 999, "is_bot": True, "first_name": "Palaver", "username": "PalaverBot"}
PRIVATE = {"id": 42, "type": "private", "first_name": "Ann"}
GROUP = {"id": -100123, "type": "supergroup", "title": "Team", "is_forum": True}
CHANNEL = {"id": -100777, "type": "channel", "title": "News"}
DATE = 1_700_000_000


def wire(chat: dict[str, Any] = PRIVATE, sender: dict[str, Any] | None = ANN,
         message_id: int = 7, **fields: Any) -> dict[str, Any]:
    """A message in the Bot API's JSON form."""
    data: dict[str, Any] = {"message_id": message_id, "date": DATE, "chat": chat, **fields}
    if sender is not None:
        data["from"] = sender
    return data


def message(chat: dict[str, Any] = PRIVATE, sender: dict[str, Any] | None = ANN,
            **fields: Any) -> Message:
    msg = Message.de_json(wire(chat, sender, **fields), None)
    assert msg is not None
    return msg


def translated(msg: Message) -> Draft:
    result = draft(msg, ME)
    assert result is not None
    return result


def entity(kind: str, offset: int, length: int, **extra: Any) -> dict[str, Any]:
    return {"type": kind, "offset": offset, "length": length, **extra}


# ------------------------------------------------------------------ the envelope


def test_private_text_fills_every_field():
    result = translated(message(text="hello there"))
    inbound = result.inbound
    assert inbound.address == ChatAddress("telegram", "default", "42", ChatKind.DIRECT, None)
    assert inbound.sender_id == "42"
    assert inbound.sender_name == "Ann Lee"
    assert inbound.sender_aliases == ("@ann",)
    assert inbound.message_id == "42:7"
    assert inbound.timestamp == float(DATE)
    assert inbound.text == "hello there"
    assert inbound.media == () and inbound.quoted is None
    assert inbound.mentioned is False
    assert result.media == [] and result.quoted_media == [] and not result.has_downloads


def test_channel_and_account_are_the_callers():
    result = draft(message(text="hi"), ME, channel="tg2", account="work")
    assert result is not None
    assert result.inbound.address.channel == "tg2" and result.inbound.address.account == "work"


def test_sender_without_username_or_last_name():
    inbound = translated(message(sender=BOB, chat={"id": 43, "type": "private"},
                                 text="hi")).inbound
    assert (inbound.sender_id, inbound.sender_name, inbound.sender_aliases) == ("43", "Bob", ())


@pytest.mark.parametrize("chat_type", ["group", "supergroup"])
def test_group_chats_are_groups(chat_type):
    chat = {"id": -5, "type": chat_type, "title": "G"}
    inbound = translated(message(chat=chat, text="hi")).inbound
    assert inbound.address == ChatAddress("telegram", "default", "-5", ChatKind.GROUP, None)
    assert inbound.message_id == "-5:7"
    assert inbound.chat_title == "G"


def test_a_direct_chat_has_no_title():
    assert translated(message(text="hi")).inbound.chat_title is None


def test_caption_is_the_text():
    photo = [{"file_id": "p", "file_unique_id": "up", "width": 10, "height": 10}]
    assert translated(message(photo=photo, caption="look")).inbound.text == "look"


def test_text_wins_over_caption_when_both_exist():
    assert translated(message(text="t", caption="c")).inbound.text == "t"


@pytest.mark.parametrize("thread_fields, expected", [
    ({"message_thread_id": 5, "is_topic_message": True}, "5"),
    ({"message_thread_id": 5}, None),  # a reply thread outside a forum topic
    ({"is_topic_message": True}, None),
    ({}, None),
])
def test_forum_topic(thread_fields, expected):
    inbound = translated(message(chat=GROUP, text="hi", **thread_fields)).inbound
    assert inbound.address.thread_id == expected


# ------------------------------------------------------------------ who speaks


@pytest.mark.parametrize("case, chat, sender, fields", [
    ("channel post", CHANNEL, None, {"sender_chat": CHANNEL}),
    ("linked channel's automatic forward", GROUP, {"id": 777000, "is_bot": False,
                                                  "first_name": "Telegram"},
     {"sender_chat": CHANNEL, "is_automatic_forward": True}),
    ("automatic forward without sender_chat", GROUP, ANN, {"is_automatic_forward": True}),
    ("a channel speaking in a group", GROUP, None, {"sender_chat": CHANNEL}),
    ("sender_chat in a private chat", PRIVATE, None, {"sender_chat": PRIVATE}),
    ("another bot", GROUP, {"id": 5, "is_bot": True, "first_name": "Other"}, {}),
    ("ourselves", PRIVATE, BOT_USER, {}),
    ("Telegram's service account", PRIVATE,
     {"id": 777000, "is_bot": False, "first_name": "Telegram"}, {}),
    ("no sender at all", GROUP, None, {}),
])
def test_ignored_senders(case, chat, sender, fields):
    msg = message(chat=chat, sender=sender, text="hello", **fields)
    assert speaker(msg) is None, case
    assert draft(msg, ME) is None, case


def test_anonymous_group_admin_speaks_as_the_group():
    msg = message(chat=GROUP, sender={"id": 1087968824, "is_bot": True,
                                      "first_name": "Group", "username": "GroupAnonymousBot"},
                  sender_chat=GROUP, author_signature="The Boss", text="hi")
    inbound = translated(msg).inbound
    assert (inbound.sender_id, inbound.sender_name, inbound.sender_aliases) == (
        "-100123", "The Boss", ())
    untitled = message(chat=GROUP, sender=None, sender_chat=GROUP, text="hi")
    assert translated(untitled).inbound.sender_name == "Team"


def test_speaker_names_the_kind_of_chat():
    assert speaker(message(text="x")) == Speaker(ChatKind.DIRECT, "42", "Ann Lee", ("@ann",))
    assert speaker(message(chat=GROUP, text="x")) == Speaker(ChatKind.GROUP, "42", "Ann Lee",
                                                             ("@ann",))


def test_nothing_understood_is_dropped():
    joined = message(chat=GROUP, new_chat_members=[BOB])
    assert speaker(joined) is not None  # a person wrote it (the intake logs the group)
    assert draft(joined, ME) is None


# ------------------------------------------------------------------ commands and mentions


@pytest.mark.parametrize("text, entities, expected_text, mentioned", [
    ("/new", [entity("bot_command", 0, 4)], "/new", False),
    ("/new@PalaverBot hi", [entity("bot_command", 0, 15)], "/new hi", True),
    ("/model@palaverbot gpt", [entity("bot_command", 0, 17)], "/model gpt", True),
    ("hello @PalaverBot", [entity("mention", 6, 11)], "hello @PalaverBot", True),
    ("hello @palaverbot", [entity("mention", 6, 11)], "hello @palaverbot", True),
    ("hello @someone", [entity("mention", 6, 8)], "hello @someone", False),
    ("hey Palaver", [entity("text_mention", 4, 7, user=BOT_USER)], "hey Palaver", True),
    ("hey Bob", [entity("text_mention", 4, 3, user=BOB)], "hey Bob", False),
    ("@PalaverBot", [], "@PalaverBot", False),  # no entity: Telegram did not mark it
    ("see /help@PalaverBot", [entity("bot_command", 4, 16)], "see /help@PalaverBot", True),
])
def test_commands_and_mentions(text, entities, expected_text, mentioned):
    inbound = translated(message(chat=GROUP, text=text, entities=entities)).inbound
    assert inbound.text == expected_text
    assert inbound.mentioned is mentioned


@pytest.mark.parametrize("fields", [
    {"text": "/new@OtherBot", "entities": [entity("bot_command", 0, 13)]},
    {"text": "/new@OtherBot now", "entities": [entity("bot_command", 0, 13)]},
    {"caption": "/new@OtherBot", "caption_entities": [entity("bot_command", 0, 13)],
     "photo": [{"file_id": "p", "file_unique_id": "up", "width": 1, "height": 1}]},
])
def test_command_for_another_bot_is_dropped(fields):
    assert draft(message(chat=GROUP, **fields), ME) is None


def test_command_to_us_in_a_caption_is_stripped_and_mentions():
    photo = [{"file_id": "p", "file_unique_id": "up", "width": 1, "height": 1}]
    inbound = translated(message(chat=GROUP, photo=photo, caption="/new@PalaverBot pic",
                                 caption_entities=[entity("bot_command", 0, 15)])).inbound
    assert inbound.text == "/new pic" and inbound.mentioned is True


def test_unknown_identity_matches_no_mention():
    anonymous = BotIdentity(None, "")
    msg = message(chat=GROUP, text="/new@PalaverBot", entities=[entity("bot_command", 0, 15)])
    assert draft(msg, anonymous) is None  # a command for a bot that is not (known to be) us


# ------------------------------------------------------------------ replies


def test_reply_to_the_bot_mentions_and_quotes():
    reply = wire(chat=GROUP, sender=BOT_USER, message_id=3, text="earlier answer")
    inbound = translated(message(chat=GROUP, text="and?", reply_to_message=reply)).inbound
    assert inbound.mentioned is True
    assert inbound.quoted == Quoted(message_id="-100123:3", sender_id="999",
                                    sender_name="Palaver", text="earlier answer", media=(),
                                    from_bot=True)


def test_reply_to_someone_else_quotes_without_mention():
    reply = wire(chat=GROUP, sender=BOB, message_id=4, caption="cap")
    inbound = translated(message(chat=GROUP, text="agreed", reply_to_message=reply)).inbound
    assert inbound.mentioned is False
    assert inbound.quoted == Quoted(message_id="-100123:4", sender_id="43", sender_name="Bob",
                                    text="cap", media=(), from_bot=False)


def test_reply_without_a_sender():
    reply = wire(chat=GROUP, sender=None, message_id=4, text="from nowhere")
    quoted = translated(message(chat=GROUP, text="x", reply_to_message=reply)).inbound.quoted
    assert quoted == Quoted(message_id="-100123:4", sender_id=None, sender_name=None,
                            text="from nowhere")


def test_the_topics_creation_is_not_a_reply():
    created = wire(chat=GROUP, sender=BOT_USER, message_id=5,
                   forum_topic_created={"name": "Ideas", "icon_color": 7322096})
    inbound = translated(message(chat=GROUP, text="hi", message_thread_id=5,
                                 is_topic_message=True, reply_to_message=created)).inbound
    assert inbound.quoted is None
    assert inbound.mentioned is False  # the bot created the topic; nobody replied to it
    assert inbound.address.thread_id == "5"


def test_a_quoted_image_is_downloaded_other_quoted_media_only_described():
    photo = [{"file_id": "small", "file_unique_id": "s", "width": 90, "height": 90},
             {"file_id": "big", "file_unique_id": "b", "width": 800, "height": 600,
              "file_size": 5000}]
    with_photo = translated(message(text="what is this?", reply_to_message=wire(
        sender=BOB, message_id=2, photo=photo)))
    image = MediaRef(kind=MediaKind.IMAGE, mime="image/jpeg", size=5000, width=800, height=600)
    assert with_photo.inbound.quoted is not None
    assert with_photo.inbound.quoted.media == (image,)
    assert with_photo.quoted_media == [Fetch(MediaKind.IMAGE, Download("big", 5000),
                                             {"mime": "image/jpeg", "width": 800,
                                              "height": 600})]
    assert with_photo.media == [] and with_photo.has_downloads

    voice = {"file_id": "v", "file_unique_id": "uv", "duration": 2, "file_size": 10}
    with_voice = translated(message(text="?", reply_to_message=wire(
        sender=BOB, message_id=2, voice=voice)))
    assert with_voice.inbound.quoted is not None
    assert with_voice.inbound.quoted.media == (MediaRef(
        kind=MediaKind.VOICE, mime="audio/ogg", size=10, duration_s=2.0),)
    assert with_voice.quoted_media == [None] and not with_voice.has_downloads


# ------------------------------------------------------------------ media


def media_case(fields: dict[str, Any]) -> tuple[tuple[MediaRef, ...], list[Fetch | None]]:
    result = translated(message(**fields))
    return result.inbound.media, result.media


MEDIA_CASES = [
    ("largest photo by area, then by size",
     {"photo": [{"file_id": "a", "file_unique_id": "ua", "width": 90, "height": 60,
                 "file_size": 900000},  # the biggest file, the smallest picture
                {"file_id": "b", "file_unique_id": "ub", "width": 1280, "height": 960,
                 "file_size": 70000},
                {"file_id": "c", "file_unique_id": "uc", "width": 960, "height": 1280,
                 "file_size": 80000}]},
     MediaRef(kind=MediaKind.IMAGE, mime="image/jpeg", size=80000, width=960, height=1280),
     Fetch(MediaKind.IMAGE, Download("c", 80000),
           {"mime": "image/jpeg", "width": 960, "height": 1280})),
    ("image sent as a document",
     {"document": {"file_id": "d", "file_unique_id": "ud", "mime_type": "image/png",
                   "file_name": "shot.png", "file_size": 123}},
     MediaRef(kind=MediaKind.IMAGE, mime="image/png", filename="shot.png", size=123),
     Fetch(MediaKind.IMAGE, Download("d", 123), {"mime": "image/png", "filename": "shot.png"})),
    ("other document",
     {"document": {"file_id": "d", "file_unique_id": "ud", "mime_type": "application/pdf",
                   "file_name": "a.pdf"}},
     MediaRef(kind=MediaKind.DOCUMENT, mime="application/pdf", filename="a.pdf"),
     Fetch(MediaKind.DOCUMENT, Download("d", None),
           {"mime": "application/pdf", "filename": "a.pdf"})),
    ("document without a mime type",
     {"document": {"file_id": "d", "file_unique_id": "ud"}},
     MediaRef(kind=MediaKind.DOCUMENT),
     Fetch(MediaKind.DOCUMENT, Download("d", None), {"mime": None, "filename": None})),
    ("voice",
     {"voice": {"file_id": "v", "file_unique_id": "uv", "duration": 3, "file_size": 4000}},
     MediaRef(kind=MediaKind.VOICE, mime="audio/ogg", size=4000, duration_s=3.0),
     Fetch(MediaKind.VOICE, Download("v", 4000), {"mime": "audio/ogg", "duration_s": 3.0})),
    ("audio named by its title",
     {"audio": {"file_id": "a", "file_unique_id": "ua", "duration": 200, "title": "Song",
                "mime_type": "audio/flac"}},
     MediaRef(kind=MediaKind.AUDIO, mime="audio/flac", filename="Song", duration_s=200.0),
     Fetch(MediaKind.AUDIO, Download("a", None),
           {"mime": "audio/flac", "filename": "Song", "duration_s": 200.0})),
    ("audio with a file name",
     {"audio": {"file_id": "a", "file_unique_id": "ua", "duration": 1, "title": "Song",
                "file_name": "song.mp3"}},
     MediaRef(kind=MediaKind.AUDIO, mime="audio/mpeg", filename="song.mp3", duration_s=1.0),
     Fetch(MediaKind.AUDIO, Download("a", None),
           {"mime": "audio/mpeg", "filename": "song.mp3", "duration_s": 1.0})),
    ("video",
     {"video": {"file_id": "v", "file_unique_id": "uv", "width": 640, "height": 360,
                "duration": 12, "mime_type": "video/quicktime", "file_size": 99}},
     MediaRef(kind=MediaKind.VIDEO, mime="video/quicktime", size=99, duration_s=12.0,
              width=640, height=360),
     Fetch(MediaKind.VIDEO, Download("v", 99),
           {"mime": "video/quicktime", "duration_s": 12.0, "width": 640, "height": 360,
            "note": None})),
    ("round video (video_note)",
     {"video_note": {"file_id": "n", "file_unique_id": "un", "length": 240, "duration": 5}},
     MediaRef(kind=MediaKind.VIDEO, mime="video/mp4", duration_s=5.0, width=240, height=240,
              note="round video"),
     Fetch(MediaKind.VIDEO, Download("n", None),
           {"mime": "video/mp4", "duration_s": 5.0, "width": 240, "height": 240,
            "note": "round video"})),
    ("animation (also carries a document)",
     {"animation": {"file_id": "g", "file_unique_id": "ug", "width": 320, "height": 240,
                    "duration": 2, "file_name": "cat.mp4"},
      "document": {"file_id": "g", "file_unique_id": "ug", "file_name": "cat.mp4"}},
     MediaRef(kind=MediaKind.VIDEO, mime="video/mp4", filename="cat.mp4", duration_s=2.0,
              width=320, height=240, note="animation"),
     Fetch(MediaKind.VIDEO, Download("g", None),
           {"mime": "video/mp4", "filename": "cat.mp4", "duration_s": 2.0, "width": 320,
            "height": 240, "note": "animation"})),
    ("static sticker",
     {"sticker": {"file_id": "s", "file_unique_id": "us", "type": "regular", "width": 512,
                  "height": 512, "is_animated": False, "is_video": False, "emoji": "😀",
                  "file_size": 20000}},
     MediaRef(kind=MediaKind.STICKER, mime="image/webp", size=20000, width=512, height=512,
              note="😀"),
     Fetch(MediaKind.STICKER, Download("s", 20000),
           {"mime": "image/webp", "width": 512, "height": 512, "note": "😀"})),
    ("animated sticker: described, not downloaded",
     {"sticker": {"file_id": "s", "file_unique_id": "us", "type": "regular", "width": 512,
                  "height": 512, "is_animated": True, "is_video": False, "file_size": 9}},
     MediaRef(kind=MediaKind.STICKER, mime="application/x-tgsticker", width=512, height=512),
     None),
    ("video sticker: described, not downloaded",
     {"sticker": {"file_id": "s", "file_unique_id": "us", "type": "regular", "width": 512,
                  "height": 512, "is_animated": False, "is_video": True, "emoji": "🎉"}},
     MediaRef(kind=MediaKind.STICKER, mime="video/webm", width=512, height=512, note="🎉"),
     None),
    ("location",
     {"location": {"latitude": 52.52, "longitude": 13.405}},
     MediaRef(kind=MediaKind.LOCATION, note="52.52000, 13.40500"), None),
    ("venue (carries its location too)",
     {"venue": {"location": {"latitude": 48.8584, "longitude": 2.2945}, "title": "Tower",
                "address": "Champ de Mars"},
      "location": {"latitude": 48.8584, "longitude": 2.2945}},
     MediaRef(kind=MediaKind.LOCATION, note="Tower, Champ de Mars (48.85840, 2.29450)"), None),
    ("contact",
     {"contact": {"phone_number": "+4930123", "first_name": "Eve", "last_name": "Ng"}},
     MediaRef(kind=MediaKind.CONTACT, note="Eve Ng, +4930123"), None),
    ("contact with a first name only",
     {"contact": {"phone_number": "+1555", "first_name": "Eve"}},
     MediaRef(kind=MediaKind.CONTACT, note="Eve, +1555"), None),
]


@pytest.mark.parametrize("case, fields, ref, fetch", MEDIA_CASES, ids=[c[0] for c in MEDIA_CASES])
def test_media(case, fields, ref, fetch):
    refs, fetches = media_case(fields)
    assert refs == (ref,), case
    assert fetches == [fetch], case


def test_media_alone_is_enough_and_text_stays_empty():
    result = translated(message(location={"latitude": 1, "longitude": 2}))
    assert result.inbound.text == "" and not result.has_downloads


def test_an_attachment_with_a_location_and_a_contact_gives_one_ref_each():
    refs, fetches = media_case({
        "voice": {"file_id": "v", "file_unique_id": "uv", "duration": 1},
        "location": {"latitude": 1.5, "longitude": -2.25},
        "contact": {"phone_number": "1", "first_name": "Z"}})
    assert [r.kind for r in refs] == [MediaKind.VOICE, MediaKind.LOCATION, MediaKind.CONTACT]
    assert refs[1].note == "1.50000, -2.25000"
    assert fetches[0] is not None and fetches[1:] == [None, None]


def test_media_and_quoted_media_downloads_are_kept_apart():
    photo = [{"file_id": "mine", "file_unique_id": "m", "width": 2, "height": 2}]
    theirs = [{"file_id": "theirs", "file_unique_id": "t", "width": 3, "height": 3}]
    result = translated(message(photo=photo, reply_to_message=wire(
        sender=BOB, message_id=1, photo=theirs)))
    assert [f.item.file_id for f in result.media if f] == ["mine"]
    assert [f.item.file_id for f in result.quoted_media if f] == ["theirs"]


def test_period_seconds():
    import datetime as dt
    assert period_seconds(dt.timedelta(milliseconds=1500)) == 1.5
    assert period_seconds(3) == 3.0 and period_seconds(None) is None
