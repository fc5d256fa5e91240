"""channels.telegram against FakeBotAPI: a real PTB Application on 127.0.0.1."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
import socket
import time

import pytest
from pydantic import ValidationError
from telegram.error import RetryAfter
from telegram.warnings import PTBDeprecationWarning

from bridge.commands import COMMAND_MENU
from bridge.config.schema import TelegramConfig
from bridge.envelope import (
    AcceptStatus,
    ChatAddress,
    ChatKind,
    Inbound,
    MediaKind,
    Outbound,
)
from bridge.formatting import utf16_len
from bridge.media import MediaStore
from bridge.ports import InboundSink, Markup, SendError
from channels.telegram import TelegramChannel
from channels.telegram.http import RateLimited, retry_after_seconds
from channels.telegram.translate import period_seconds
from tests.fakes.telegram_api import parse_telegram_html

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64 + b"fake-image-bytes"
BOT = "palaver_test_bot"

# Any PTB deprecation our code triggers fails the test -- without opting into
# $PTB_TIMEDELTA: the channel reads durations and rate limits without PTB's warnings.
pytestmark = pytest.mark.filterwarnings("error::telegram.warnings.PTBDeprecationWarning")


@pytest.fixture(autouse=True)
def _no_ptb_timedelta(monkeypatch):
    """Run as a default install does (PTB 22 then warns on int time periods)."""
    monkeypatch.delenv("PTB_TIMEDELTA", raising=False)


class RecordingSink(InboundSink):
    """An InboundSink that records what it is given."""

    def __init__(self, status: AcceptStatus = AcceptStatus.ACCEPTED) -> None:
        self.inbounds: list[Inbound] = []
        self.status = status
        self._changed = asyncio.Event()

    async def accept(self, inbound: Inbound) -> AcceptStatus:
        self.inbounds.append(inbound)
        self._changed.set()
        self._changed = asyncio.Event()
        return self.status

    async def wait_for(self, n: int, timeout: float = 5.0) -> list[Inbound]:  # noqa: ASYNC109
        async with asyncio.timeout(timeout):
            while len(self.inbounds) < n:
                await self._changed.wait()
        return list(self.inbounds)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
async def make_channel(fake, tmp_path):
    """Build (and at the end stop) channels pointed at the fake."""
    made: list[TelegramChannel] = []

    def build(**overrides) -> TelegramChannel:
        fields = {"botToken": fake.token, "apiRoot": fake.url, **overrides}
        channel = TelegramChannel(TelegramConfig(**fields), media=MediaStore(tmp_path / "media"),
                                  data_dir=tmp_path)
        channel.poll_timeout = 1
        channel.typing_delay = 0
        channel.typing_interval = 0.1
        channel.sink_retry_delays = (0.01, 0.02)
        channel.poll_backoff_base = 0.1
        channel.poll_backoff_max = 0.4
        made.append(channel)
        return channel

    yield build
    for channel in made:
        await channel.stop()


@pytest.fixture
async def started(make_channel):
    """A started polling channel and its sink."""
    channel = make_channel()
    sink = RecordingSink()
    await channel.start(sink)
    assert channel.health().connected, channel.health()
    yield channel, sink
    await channel.stop()


def _address(chat_id: int, kind: ChatKind = ChatKind.DIRECT, thread: str | None = None):
    return ChatAddress("telegram", "default", str(chat_id), kind, thread)


# --------------------------------------------------------------------------- lifecycle


async def test_start_registers_commands_and_polls(started, fake):
    channel, _ = started
    assert channel.health().detail == f"polling as @{BOT}"
    assert [c["command"] for c in fake.commands] == [c for c, _ in COMMAND_MENU]
    assert {"new", "reset", "model", "models", "status", "usage", "stop", "help"} == {c for c, _ in COMMAND_MENU}
    methods = [c.method for c in fake.calls]
    assert methods[0] == "getMe" and "deleteWebhook" in methods
    await fake.wait_for_calls("getUpdates")
    assert channel.capabilities.text_chunk_limit == 4000
    assert channel.capabilities.markup is Markup.TELEGRAM_HTML
    assert (channel.name, channel.account) == ("telegram", "default")


async def test_stop_is_idempotent_and_confirms_offset(make_channel, fake):
    channel = make_channel()
    sink = RecordingSink()
    await channel.start(sink)
    fake.push_text(1001, 1001, "one")
    fake.push_text(1001, 1001, "two")
    await sink.wait_for(2)
    await channel.stop()
    await channel.stop()
    assert fake.pending_updates == []
    assert not channel.health().connected and channel.health().detail == "stopped"


async def test_restart_does_not_redeliver(make_channel, fake):
    first = make_channel()
    sink = RecordingSink()
    await first.start(sink)
    fake.push_text(1001, 1001, "only once")
    await sink.wait_for(1)
    await first.stop()
    second = make_channel()
    await second.start(sink)
    fake.push_text(1001, 1001, "next")
    await sink.wait_for(2)
    await asyncio.sleep(0.1)
    await second.stop()
    assert [i.text for i in sink.inbounds] == ["only once", "next"]


async def test_network_failure_at_start_is_retried_in_background(make_channel, fake):
    fake.fail("getMe", 502, "Bad Gateway", times=2)
    channel = make_channel()
    channel.connect_retry_delays = (0.05,)
    await channel.start(RecordingSink())
    assert not channel.health().connected
    assert channel.health().detail.startswith("connecting")
    await fake.wait_until(lambda: len(fake.calls_to("getMe")) >= 3)
    for _ in range(100):
        if channel.health().connected:
            break
        await asyncio.sleep(0.02)
    assert channel.health().connected
    await channel.stop()


async def test_stop_while_connecting_cancels_the_retry(make_channel, fake):
    fake.fail("getMe", 502, "Bad Gateway", times=1000)
    channel = make_channel()
    channel.connect_retry_delays = (0.05,)
    await channel.start(RecordingSink())
    await fake.wait_until(lambda: len(fake.calls_to("getMe")) >= 2)
    await channel.stop()
    count = len(fake.calls_to("getMe"))
    await asyncio.sleep(0.2)
    assert len(fake.calls_to("getMe")) == count


# --------------------------------------------------------------------------- tokens


async def test_rejected_token_stops_channel_without_leaking(make_channel, fake, caplog):
    caplog.set_level(logging.DEBUG)
    fake.revoke_token()
    channel = make_channel()
    channel.connect_retry_delays = (0.01,)
    await channel.start(RecordingSink())
    health = channel.health()
    assert not health.connected
    assert "rejected the bot token" in health.detail and "401" in health.detail
    await asyncio.sleep(0.3)
    assert len(fake.calls_to("getMe")) == 0  # 401 answered before the method is recorded
    assert any("rejected the bot token" in r.getMessage() for r in caplog.records)
    with pytest.raises(SendError):
        await channel.send(Outbound(_address(1001), "hi"))
    await channel.stop()
    assert "rejected" in channel.health().detail
    assert fake.token not in caplog.text
    assert fake.token.split(":")[1] not in caplog.text


async def test_rejected_token_is_tried_once(make_channel, fake):
    seen = []
    fake.fail("getMe", 401, "Unauthorized", times=100, when=lambda p: seen.append(1) or True)
    channel = make_channel()
    channel.connect_retry_delays = (0.01,)
    await channel.start(RecordingSink())
    await asyncio.sleep(0.3)
    assert len(seen) == 1
    assert not channel.health().connected
    await channel.stop()


async def test_token_never_logged_during_a_round_trip(make_channel, fake, caplog):
    caplog.set_level(logging.DEBUG)
    channel = make_channel()
    sink = RecordingSink()
    await channel.start(sink)
    fake.push_photo(1001, 1001, PNG, caption="look")
    await sink.wait_for(1)
    await channel.send(Outbound(_address(1001), "**hi**"))
    await channel.stop()
    assert caplog.records, "expected some log records"
    assert fake.token not in caplog.text
    assert fake.token.split(":")[1] not in caplog.text


def test_malformed_token_is_a_validation_error():
    with pytest.raises(ValidationError) as err:
        TelegramConfig(botToken="12345:short")
    assert "does not look like a bot token" in str(err.value)
    TelegramConfig(botToken="123456:" + "A" * 35)  # fine
    with pytest.raises(ValidationError):
        TelegramConfig(botToken="abc:" + "A" * 35)


def test_webhook_mode_requires_url_and_secret():
    with pytest.raises(ValidationError, match="webhookUrl and webhookSecret"):
        TelegramConfig(mode="webhook", webhookUrl="https://x.example/hook")
    TelegramConfig(mode="webhook", webhookUrl="https://x.example/hook", webhookSecret="s3cret")


async def test_malformed_token_from_env_reports_health(make_channel, fake, monkeypatch, tmp_path):
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", "not-a-token")
    channel = TelegramChannel(TelegramConfig(apiRoot=fake.url), media=MediaStore(tmp_path / "m"),
                              data_dir=tmp_path)
    await channel.start(RecordingSink())
    assert not channel.health().connected
    assert "$TELEGRAM_BOT_TOKEN does not look like a bot token" in channel.health().detail
    assert "not-a-token" not in channel.health().detail
    assert fake.calls == []
    await channel.stop()


async def test_token_from_file_and_env(fake, tmp_path, monkeypatch):
    path = tmp_path / "token"
    path.write_text(fake.token + "\n")
    for config in (TelegramConfig(tokenFile=str(path), apiRoot=fake.url), None):
        if config is None:
            monkeypatch.setenv("TELEGRAM_BOT_TOKEN", fake.token)
            config = TelegramConfig(apiRoot=fake.url)
        channel = TelegramChannel(config, media=MediaStore(tmp_path / "m"), data_dir=tmp_path)
        channel.poll_timeout = 1
        await channel.start(RecordingSink())
        assert channel.health().connected
        await channel.stop()


async def test_missing_token_file(fake, tmp_path):
    config = TelegramConfig(tokenFile=str(tmp_path / "nope"), apiRoot=fake.url)
    channel = TelegramChannel(config, media=MediaStore(tmp_path / "m"), data_dir=tmp_path)
    await channel.start(RecordingSink())
    assert "cannot read tokenFile" in channel.health().detail
    await channel.stop()


# --------------------------------------------------------------------------- inbound


async def test_private_text(started, fake):
    channel, sink = started
    user = fake.user(1001, "Ann", username="ann_x")
    sent = fake.push_text(1001, user, "hello <there> & co")
    (inbound,) = await sink.wait_for(1)
    assert inbound.address == ChatAddress("telegram", "default", "1001", ChatKind.DIRECT, None)
    assert inbound.sender_id == "1001"
    assert inbound.sender_name == "Ann"
    assert inbound.sender_aliases == ("@ann_x",)
    assert inbound.message_id == f"1001:{sent['message_id']}"
    assert inbound.text == "hello <there> & co"
    assert inbound.media == () and inbound.quoted is None and not inbound.mentioned
    assert abs(inbound.timestamp - time.time()) < 5
    assert str(inbound.session_key) == "telegram:default:direct:1001"


async def test_updates_in_order(started, fake):
    _, sink = started
    for i in range(8):
        fake.push_text(1001 + i % 2, 1001 + i % 2, f"m{i}")
    inbounds = await sink.wait_for(8)
    assert [i.text for i in inbounds] == [f"m{i}" for i in range(8)]


async def test_photo_largest_size_downloaded(started, fake, tmp_path):
    channel, sink = started
    fake.push_photo(1001, 1001, PNG, caption="what is this?", width=1280, height=960)
    (inbound,) = await sink.wait_for(1)
    assert inbound.text == "what is this?"
    (ref,) = inbound.media
    assert ref.kind is MediaKind.IMAGE and ref.mime == "image/jpeg"
    assert (ref.width, ref.height, ref.size) == (1280, 960, len(PNG))
    assert channel.media.path_for(ref.media_id).read_bytes() == PNG
    assert len(fake.downloads) == 1  # only the largest size


async def test_image_sent_as_document_and_other_document(started, fake):
    channel, sink = started
    fake.push_document(1001, 1001, PNG, filename="shot.png", mime_type="image/png")
    fake.push_document(1001, 1001, b"%PDF-1.4 fake", filename="cv.pdf",
                       mime_type="application/pdf", caption="my cv")
    image, pdf = await sink.wait_for(2)
    assert image.media[0].kind is MediaKind.IMAGE and image.media[0].filename == "shot.png"
    assert channel.media.path_for(image.media[0].media_id).read_bytes() == PNG
    assert pdf.media[0].kind is MediaKind.DOCUMENT and pdf.text == "my cv"
    assert pdf.media[0].mime == "application/pdf" and pdf.media[0].media_id


async def test_voice_audio_video_sticker_location_contact(started, fake):
    channel, sink = started
    fake.push_voice(1001, 1001, b"OggS voice", duration=12)
    fake.push_audio(1001, 1001, b"ID3 song", duration=200, title="Song")
    fake.push_video(1001, 1001, b"mp4 video", duration=7, caption="clip")
    fake.push_sticker(1001, 1001, b"RIFF webp", emoji="🔥")
    fake.push_location(1001, 1001, 52.520008, 13.404954)
    fake.push_contact(1001, 1001, "+4915100000", "Bob", "Smith")
    voice, audio, video, sticker, location, contact = await sink.wait_for(6)
    ref = voice.media[0]
    assert ref.kind is MediaKind.VOICE and ref.duration_s == 12 and ref.media_id
    assert ref.placeholder() == "[voice note, 12 s]"
    assert channel.media.path_for(ref.media_id).read_bytes() == b"OggS voice"
    assert audio.media[0].kind is MediaKind.AUDIO and audio.media[0].filename == "Song"
    assert video.media[0].kind is MediaKind.VIDEO and video.media[0].duration_s == 7
    assert video.text == "clip"
    assert sticker.media[0].kind is MediaKind.STICKER and sticker.media[0].note == "🔥"
    assert sticker.media[0].media_id
    assert location.media[0].kind is MediaKind.LOCATION
    assert location.media[0].note == "52.52001, 13.40495" and location.media[0].media_id is None
    assert contact.media[0].kind is MediaKind.CONTACT
    assert contact.media[0].note == "Bob Smith, +4915100000"


async def test_media_over_the_cap_is_not_downloaded(make_channel, fake):
    channel = make_channel(mediaMaxMb=0.01)  # 10 KiB
    sink = RecordingSink()
    await channel.start(sink)
    fake.push_document(1001, 1001, b"x" * 100, filename="big.zip", mime_type="application/zip",
                       file_size=5 * 1024 * 1024)
    fake.push_photo(1001, 1001, b"y" * 20_000)
    # No file_size in the message: the size is only learnt from the download.
    file_id, unique = fake.add_file(b"w" * 30_000)
    fake.push_message(1001, 1001, document={"file_id": file_id, "file_unique_id": unique,
                                            "file_name": "w.bin"})
    fake.push_document(1001, 1001, b"z" * 50, filename="ok.txt", mime_type="text/plain")
    big, photo, unknown, small = await sink.wait_for(4)
    assert big.media[0].media_id is None and "over the 0.01 MB limit" in big.media[0].note
    assert big.media[0].size == 5 * 1024 * 1024
    assert photo.media[0].media_id is None and "limit" in photo.media[0].note
    assert unknown.media[0].media_id is None and "limit" in unknown.media[0].note
    assert unknown.media[0].placeholder().startswith("[document, 'w.bin', not downloaded")
    assert small.media[0].media_id is not None
    # Declared sizes over the cap are never even asked for.
    assert len(fake.calls_to("getFile")) == 2
    await channel.stop()


async def test_file_too_big_for_the_bot_api(started, fake):
    _, sink = started
    # 25 MB declared by getFile only: the public Bot API refuses files over 20 MB.
    file_id, unique = fake.add_file(b"v" * 10, file_size=25 * 1024 * 1024)
    fake.push_message(1001, 1001, video={"file_id": file_id, "file_unique_id": unique,
                                         "duration": 60, "width": 1, "height": 1})
    (inbound,) = await sink.wait_for(1)
    assert inbound.media[0].media_id is None and "limit" in inbound.media[0].note


async def test_edits_and_channel_posts_ignored(started, fake):
    _, sink = started
    original = fake.push_text(1001, 1001, "first")
    await sink.wait_for(1)
    fake.push_edit(original, "first (edited)")
    fake.push_channel_post(-100777, "announcement")
    fake.push_text(1001, 1001, "second")
    inbounds = await sink.wait_for(2)
    await asyncio.sleep(0.1)
    assert [i.text for i in sink.inbounds] == ["first", "second"]
    assert inbounds[1].text == "second"
    polls = fake.calls_to("getUpdates")
    assert polls[0].params["allowed_updates"] == ["message"]


async def test_messages_from_bots_ignored(started, fake):
    _, sink = started
    fake.push_text(-100555, {"id": 42, "is_bot": True, "first_name": "Other"}, "beep")
    fake.push_text(-100555, 1001, "human")
    await sink.wait_for(1)
    await asyncio.sleep(0.1)
    assert [i.text for i in sink.inbounds] == ["human"]


# --------------------------------------------------------------------------- groups


async def test_group_mentions(started, fake, caplog):
    caplog.set_level(logging.INFO, logger="channels.telegram")
    _, sink = started
    group = -100123
    fake.push_text(group, 1001, "hello everyone")
    fake.push_text(group, 1001, f"hey @{BOT} what's up")
    fake.push_text(group, 1001, f"hey @{BOT.upper()} caps")
    fake.push_text(group, 1001, "/status@" + BOT)
    fake.push_text(group, 1001, "/status@some_other_bot")
    fake.push_text(group, 1001, "/status")
    fake.push_photo(group, 1001, PNG, caption=f"@{BOT} look")
    fake.push_text(group, 1001, "hi you", entities=[{
        "type": "text_mention", "offset": 3, "length": 3, "user": fake.bot_user}])
    fake.push_text(group, 1001, "@someone_else hi")
    inbounds = await sink.wait_for(8)
    await asyncio.sleep(0.1)
    assert len(sink.inbounds) == 8  # the other bot's command was dropped
    got = [(i.text, i.mentioned) for i in inbounds]
    assert got == [
        ("hello everyone", False),
        (f"hey @{BOT} what's up", True),
        (f"hey @{BOT.upper()} caps", True),
        ("/status", True),
        ("/status", False),
        (f"@{BOT} look", True),
        ("hi you", True),
        ("@someone_else hi", False),
    ]
    assert all(i.address.chat_kind is ChatKind.GROUP for i in inbounds)
    assert inbounds[0].session_key.scope == "group:-100123"
    # Operators find a group's id in the log (once per group).
    seen = [r for r in caplog.records if "message in group" in r.getMessage()]
    assert len(seen) == 1 and "-100123" in seen[0].getMessage()


async def test_reply_to_bot_is_a_mention_and_quoted(started, fake):
    channel, sink = started
    group = -100123
    ids = await channel.send(Outbound(_address(group, ChatKind.GROUP), "The answer is **42**."))
    bot_message = fake.sent[0].message
    assert ids == [f"{group}:{bot_message['message_id']}"]
    fake.push_text(group, 1001, "why?", reply_to=bot_message)
    (inbound,) = await sink.wait_for(1)
    assert inbound.mentioned
    quoted = inbound.quoted
    assert quoted.from_bot and quoted.text == "The answer is 42."
    assert quoted.sender_id == str(fake.bot_id)
    assert quoted.message_id == ids[0]


async def test_reply_to_a_photo_quotes_the_image(started, fake):
    channel, sink = started
    photo = fake.push_photo(1001, 2002, PNG, caption="my cat")
    fake.push_text(1001, 1001, "what breed?", reply_to=photo)
    first, second = await sink.wait_for(2)
    quoted = second.quoted
    assert not quoted.from_bot and quoted.text == "my cat" and quoted.sender_id == "2002"
    (image,) = quoted.media
    assert image.kind is MediaKind.IMAGE
    assert channel.media.path_for(image.media_id).read_bytes() == PNG


async def test_forum_topic_inbound_and_answer_in_topic(started, fake):
    channel, sink = started
    group = -100999
    msg = fake.push_text(group, 1001, f"@{BOT} in topic", thread_id=42)
    fake.push_text(group, 1001, "no topic")
    topic, general = await sink.wait_for(2)
    assert topic.address.thread_id == "42" and topic.quoted is None  # topic-created ignored
    assert topic.session_key.scope == "group:-100999:topic:42"
    assert general.address.thread_id is None
    await channel.send(Outbound(topic.address, "answer", reply_to_message_id=topic.message_id))
    (sent,) = await fake.wait_for_sent(1)
    assert sent.thread_id == 42 and sent.reply_to_message_id == msg["message_id"]
    assert sent.message["reply_to_message"]["message_id"] == msg["message_id"]


async def test_sink_errors_retried_then_skipped(make_channel, fake, caplog):
    """A transient sink error is retried; one that never clears is skipped, loudly."""
    attempts: dict[str, int] = {}

    class Flaky(RecordingSink):
        async def accept(self, inbound):
            attempts[inbound.text] = attempts.get(inbound.text, 0) + 1
            if inbound.text == "boom" or (inbound.text == "blip" and attempts["blip"] == 1):
                raise RuntimeError("db down")
            return await super().accept(inbound)

    caplog.set_level(logging.WARNING, logger="channels.telegram")
    channel = make_channel()
    sink = Flaky()
    await channel.start(sink)
    fake.push_text(1001, 1001, "blip")
    boom = fake.push_text(1001, 1001, "boom")
    fake.push_text(1001, 1001, "after")
    await sink.wait_for(2)
    assert [i.text for i in sink.inbounds] == ["blip", "after"]
    assert attempts == {"blip": 2, "boom": 3, "after": 1}  # 1 + len(sink_retry_delays)
    skipped = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(skipped) == 1 and "skipped" in skipped[0].getMessage()
    assert channel.health().connected
    await channel.stop()
    assert fake.pending_updates == []  # the skipped update is not fetched for ever
    assert boom["message_id"] not in [int(i.message_id.split(":")[1]) for i in sink.inbounds]


# --------------------------------------------------------------------------- outbound


async def test_send_renders_html(started, fake):
    channel, _ = started
    ids = await channel.send(Outbound(_address(1001), "**Bold** and `x < y`"))
    (sent,) = await fake.wait_for_sent(1)
    assert sent.parse_mode == "HTML"
    assert sent.text == "<b>Bold</b> and <code>x &lt; y</code>"
    assert sent.message["text"] == "Bold and x < y"
    assert ids == [f"1001:{sent.message_id}"]
    assert sent.reply_to_message_id is None


async def test_send_long_reply_in_chunks_group_quotes_first(started, fake):
    channel, _ = started
    group = -100123
    trigger = fake.push_text(group, 1001, "@" + BOT + " write a lot")
    prose = " ".join(f"Sentence {i} of a long answer." for i in range(200))
    code = "\n".join(f"line_{i} = {i} * 2  # <calc>" for i in range(150))
    text = f"{prose}\n\n```python\n{code}\n```\n\nDone."
    assert len(text) > 9000
    ids = await channel.send(Outbound(_address(group, ChatKind.GROUP), text,
                                      reply_to_message_id=f"{group}:{trigger['message_id']}"))
    sent = fake.sent
    assert len(ids) == len(sent) >= 3
    assert sent[0].reply_to_message_id == trigger["message_id"]
    assert all(s.reply_to_message_id is None for s in sent[1:])
    for s in sent:
        assert utf16_len(s.text) <= 4000 and s.parse_mode == "HTML"
        parse_telegram_html(s.text)  # each chunk balanced
    visible = "".join(s.message["text"] for s in sent)
    assert re.sub(r"\s", "", visible) == re.sub(r"\s|```(python)?", "", text)


async def test_private_chat_reply_does_not_quote(started, fake):
    channel, _ = started
    await channel.send(Outbound(_address(1001), "hi", reply_to_message_id="1001:1"))
    (sent,) = await fake.wait_for_sent(1)
    assert sent.reply_to_message_id is None


async def test_plain_outbound_is_not_converted(started, fake):
    channel, _ = started
    await channel.send(Outbound(_address(1001), "Code: **AB12** <x> & y", plain=True))
    (sent,) = await fake.wait_for_sent(1)
    assert sent.parse_mode is None and sent.text == "Code: **AB12** <x> & y"


async def test_entity_rejection_falls_back_to_plain(started, fake):
    channel, _ = started
    fake.fail_parse_entities(times=1)
    ids = await channel.send(Outbound(_address(1001), "**Bold** <tag> & [link](https://e.com)"))
    (sent,) = await fake.wait_for_sent(1)
    assert len(ids) == 1
    assert sent.parse_mode is None
    assert sent.text == "Bold <tag> & link (https://e.com)"  # the link target is kept
    assert len(fake.calls_to("sendMessage")) == 2


async def test_rate_limit_is_honoured(started, fake):
    channel, _ = started
    fake.rate_limit("sendMessage", 1, times=1)
    start = time.monotonic()
    ids = await channel.send(Outbound(_address(1001), "after the wait"))
    elapsed = time.monotonic() - start
    assert len(ids) == 1 and elapsed >= 0.9
    calls = fake.calls_to("sendMessage")
    assert len(calls) == 2 and calls[1].time - calls[0].time >= 0.9
    assert fake.sent[0].text == "after the wait"


async def test_rate_limit_bounded(started, fake):
    channel, _ = started
    channel.max_send_attempts = 2
    fake.rate_limit("sendMessage", 0.05, times=5)
    with pytest.raises(SendError, match="rate limit"):
        await channel.send(Outbound(_address(1001), "never"))
    assert len(fake.calls_to("sendMessage")) == 2


async def test_failed_send_reports_ids_sent_so_far(started, fake):
    channel, _ = started
    fake.fail("sendMessage", 403, "Forbidden: bot was blocked by the user",
              when=lambda p: "PART-TWO" in p["text"])
    text = "PART-ONE " + "word " * 100 + "\n\nPART-TWO " + "word " * 100
    channel.capabilities = type(channel.capabilities)(600, Markup.TELEGRAM_HTML)
    with pytest.raises(SendError) as err:
        await channel.send(Outbound(_address(1001), text))
    assert "blocked" in str(err.value)
    assert err.value.sent_ids == [f"1001:{fake.sent[0].message_id}"]
    assert len(fake.sent) == 1


async def test_other_bad_request_raises(started, fake):
    channel, _ = started
    fake.fail("sendMessage", 400, "Bad Request: chat not found")
    with pytest.raises(SendError, match="(?i)chat not found"):
        await channel.send(Outbound(_address(5555), "x"))


async def test_typing_refreshes_until_exit(started, fake):
    channel, _ = started
    address = _address(-100999, ChatKind.GROUP, "42")
    async with channel.typing(address):
        await fake.wait_until(lambda: len(fake.actions) >= 3, timeout=2)
    count = len(fake.actions)
    await asyncio.sleep(0.3)
    assert len(fake.actions) == count
    action = fake.actions[0].params
    assert action["action"] == "typing" and action["chat_id"] == -100999
    assert action["message_thread_id"] == 42
    gaps = [b.time - a.time for a, b in zip(fake.actions, fake.actions[1:], strict=False)]
    assert all(g >= 0.08 for g in gaps)


async def test_typing_survives_errors(started, fake):
    channel, _ = started
    fake.fail("sendChatAction", 400, "Bad Request: chat not found", times=2)
    async with channel.typing(_address(1001)):
        await fake.wait_until(lambda: len(fake.actions) >= 1, timeout=2)
    assert len(fake.calls_to("sendChatAction")) >= 3


async def test_default_typing_interval_is_about_four_seconds():
    assert 3 <= TelegramChannel.typing_interval <= 4.5


# --------------------------------------------------------------------------- webhook


@pytest.fixture
async def webhook_channel(make_channel, fake):
    port = free_port()
    channel = make_channel(mode="webhook", webhookUrl=f"http://127.0.0.1:{port}/tg/hook",
                           webhookSecret="s3cret-TOKEN_1", webhookHost="127.0.0.1",
                           webhookPort=port, webhookPath="/tg/hook")
    sink = RecordingSink()
    await channel.start(sink)
    assert channel.health().connected, channel.health()
    yield channel, sink
    await channel.stop()


async def test_webhook_registers_and_accepts_right_secret(webhook_channel, fake):
    channel, sink = webhook_channel
    assert channel.health().detail == f"webhook as @{BOT}"
    assert fake.webhook["url"].endswith("/tg/hook")
    assert fake.webhook["secret_token"] == "s3cret-TOKEN_1"
    assert fake.webhook["allowed_updates"] == ["message"]
    assert fake.calls_to("getUpdates") == []
    fake.push_text(1001, 1001, "via webhook")
    assert await fake.deliver_webhook() == 200
    (inbound,) = await sink.wait_for(1)
    assert inbound.text == "via webhook"
    assert fake.pending_updates == []


async def test_webhook_refuses_wrong_or_missing_secret(webhook_channel, fake):
    channel, sink = webhook_channel
    fake.push_text(1001, 1001, "forged")
    assert await fake.deliver_webhook(secret="wrong") == 403
    assert await fake.deliver_webhook(secret=None) == 403
    assert fake.pending_updates  # not confirmed
    await asyncio.sleep(0.1)
    assert sink.inbounds == []
    assert await fake.deliver_webhook() == 200
    await sink.wait_for(1)


async def test_webhook_ignores_edits_and_bad_bodies(webhook_channel, fake):
    import aiohttp

    channel, sink = webhook_channel
    message = {"message_id": 5, "date": int(time.time()), "text": "edited",
               "chat": {"id": 1001, "type": "private"},
               "from": {"id": 1001, "is_bot": False, "first_name": "A"}}
    assert await fake.deliver_webhook({"edited_message": message}) == 200
    assert await fake.deliver_webhook({"channel_post": dict(
        message, chat={"id": -100, "type": "channel", "title": "c"})}) == 200
    async with aiohttp.ClientSession() as session:
        async with session.post(fake.webhook["url"], data=b"{not json",
                                headers={"X-Telegram-Bot-Api-Secret-Token": "s3cret-TOKEN_1"}
                                ) as resp:
            assert resp.status == 400
    assert await fake.deliver_webhook({"message": dict(message, text="real")}) == 200
    (inbound,) = await sink.wait_for(1)
    await asyncio.sleep(0.1)
    assert [i.text for i in sink.inbounds] == ["real"]
    assert channel.health().connected


# --------------------------------------------------------------------------- polling: offsets


class GatedSink(RecordingSink):
    """Records what it is given; ``accept`` returns only once ``gate`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.entered: list[str] = []

    async def accept(self, inbound: Inbound) -> AcceptStatus:
        self.entered.append(inbound.text)
        await self.gate.wait()
        return await super().accept(inbound)


@pytest.fixture
async def gated_sink(make_channel):
    """GatedSink factory; every gate is opened at teardown, before the channels stop, so a
    regression fails the test instead of hanging its teardown."""
    made: list[GatedSink] = []

    def build() -> GatedSink:
        made.append(GatedSink())
        return made[-1]

    yield build
    for sink in made:
        sink.gate.set()


async def _eventually(predicate, timeout: float = 5.0) -> None:  # noqa: ASYNC109
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - channel state has no event to wait on
            await asyncio.sleep(0.01)


async def test_offset_confirmed_only_after_the_sink_stored_it(make_channel, fake, gated_sink):
    channel = make_channel()
    sink = gated_sink()
    await channel.start(sink)
    fake.push_text(1001, 1001, "precious")
    (update_id,) = fake.pending_updates
    await _eventually(lambda: sink.entered == ["precious"])
    await asyncio.sleep(0.2)  # PTB's Updater would have confirmed it by now
    assert fake.pending_updates == [update_id]
    polls = len(fake.calls_to("getUpdates"))
    sink.gate.set()
    await sink.wait_for(1)
    # The next getUpdates confirms it (offset = update_id + 1).
    (confirm, *_) = (await fake.wait_for_calls("getUpdates", polls + 1))[polls:]
    assert confirm.params["offset"] == update_id + 1
    assert fake.pending_updates == []


async def test_crash_before_storage_redelivers(make_channel, fake, gated_sink):
    """The process dies while the core is storing an update: the next run gets it again."""
    first = make_channel()
    hung = gated_sink()  # never opened: accept never completes
    await first.start(hung)
    sent = fake.push_text(1001, 1001, "do not lose me")
    await _eventually(lambda: hung.entered == ["do not lose me"])
    await asyncio.sleep(0.1)
    assert len(fake.pending_updates) == 1  # not confirmed while the core has not stored it
    # A crash, not a graceful stop: the polling task just dies where it is.
    first._intake.poll_task.cancel()
    await asyncio.wait({first._intake.poll_task})
    assert len(fake.pending_updates) == 1
    second = make_channel()
    sink = RecordingSink()
    await second.start(sink)
    (inbound,) = await sink.wait_for(1)
    assert inbound.message_id == f"1001:{sent['message_id']}"
    await second.stop()
    assert fake.pending_updates == []
    assert hung.inbounds == []


async def test_graceful_stop_finishes_the_update_in_hand(make_channel, fake, gated_sink):
    fake.push_text(1001, 1001, "first")
    fake.push_text(1001, 1001, "second")  # same getUpdates batch
    channel = make_channel()
    sink = gated_sink()
    await channel.start(sink)
    await _eventually(lambda: sink.entered == ["first"])
    stopping = asyncio.create_task(channel.stop())
    await asyncio.sleep(0.1)
    assert not stopping.done()  # waits for the core to take "first"
    sink.gate.set()
    await stopping
    assert [i.text for i in sink.inbounds] == ["first"]
    # "first" is confirmed; "second" was never handed over and stays with Telegram.
    assert len(fake.pending_updates) == 1
    again = make_channel()
    later = RecordingSink()
    await again.start(later)
    assert [i.text for i in await later.wait_for(1)] == ["second"]


async def test_order_preserved_across_batches_and_slow_sink(make_channel, fake):
    class Slow(RecordingSink):
        async def accept(self, inbound):
            await asyncio.sleep(0.03 if inbound.text.endswith(("0", "3")) else 0)
            return await super().accept(inbound)

    channel = make_channel()
    channel.poll_limit = 3
    sink = Slow()
    await channel.start(sink)
    for i in range(10):
        fake.push_text(1001 + i % 2, 1001 + i % 2, f"m{i}")
        if i == 4:
            await asyncio.sleep(0.05)
    inbounds = await sink.wait_for(10)
    assert [i.text for i in inbounds] == [f"m{i}" for i in range(10)]
    for chat in ("1001", "1002"):
        ids = [int(i.message_id.split(":")[1]) for i in inbounds if i.address.chat_id == chat]
        assert ids == sorted(ids)
    assert {c.params["limit"] for c in fake.calls_to("getUpdates")} == {3}


async def test_token_revoked_while_polling(started, fake, caplog):
    caplog.set_level(logging.DEBUG)
    channel, sink = started
    await fake.wait_for_calls("getUpdates")
    fake.revoke_token()
    await _eventually(lambda: not channel.health().connected)
    health = channel.health()
    assert "rejected the bot token while polling" in health.detail and "401" in health.detail
    assert channel._intake.poll_task is not None and channel._intake.poll_task.done()
    # No crash loop: exactly one getUpdates got the 401, nothing is retried.
    await asyncio.sleep(0.5)
    assert fake.unauthorized == ["getUpdates"]
    with pytest.raises(SendError, match="not running"):
        await channel.send(Outbound(_address(1001), "hi"))
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "rejected the bot token" in errors[0].getMessage()
    await channel.stop()
    assert "rejected the bot token" in channel.health().detail
    assert fake.token not in caplog.text
    assert fake.token.split(":")[1] not in caplog.text


async def test_conflict_backs_off_and_recovers(make_channel, fake, caplog):
    caplog.set_level(logging.WARNING, logger="channels.telegram")
    fake.fail("getUpdates", 409, "Conflict: terminated by other getUpdates request; make sure "
              "that only one bot instance is running", times=3)
    channel = make_channel()
    sink = RecordingSink()
    await channel.start(sink)
    await _eventually(lambda: not channel.health().connected)
    assert "another process is polling with this bot token" in channel.health().detail
    fake.push_text(1001, 1001, "after the conflict")
    await sink.wait_for(1)
    assert channel.health().connected
    assert channel.health().detail == f"polling as @{BOT}"
    calls = fake.calls_to("getUpdates")
    gaps = [b.time - a.time for a, b in zip(calls, calls[1:4], strict=False)]
    # Jittered exponential backoff: between half and all of 0.1, 0.2, 0.4 s.
    for gap, base in zip(gaps, (0.1, 0.2, 0.4), strict=True):
        assert base / 2 - 0.01 <= gap <= base + 0.3, gaps
    warnings_ = [r.getMessage() for r in caplog.records if "409 Conflict" in r.getMessage()]
    assert len(warnings_) == 3


async def test_network_errors_back_off_then_health_degrades(make_channel, fake):
    fake.fail("getUpdates", 502, "Bad Gateway", times=4)
    channel = make_channel()
    channel.poll_backoff_max = 0.1
    sink = RecordingSink()
    await channel.start(sink)
    await fake.wait_until(lambda: len(fake.calls_to("getUpdates")) >= 2)
    assert channel.health().connected  # one or two failures: still reported as connected
    await _eventually(lambda: not channel.health().connected)
    assert "cannot reach Telegram" in channel.health().detail
    fake.push_text(1001, 1001, "through")
    await sink.wait_for(1)
    assert channel.health().connected


async def test_health_recovers_without_waiting_for_a_long_poll(make_channel, fake):
    fake.fail("getUpdates", 502, "Bad Gateway", times=3)
    channel = make_channel()
    channel.poll_backoff_max = 0.05
    channel.poll_timeout = 30  # a long poll would hold the recovery back for 30 s
    await channel.start(RecordingSink())
    await _eventually(lambda: not channel.health().connected)
    # No update arrives: the first poll after the failures must not be a long one.
    await _eventually(lambda: channel.health().connected)
    assert "last error" not in channel.health().detail

    def timeouts() -> list[str]:
        return [str(c.params.get("timeout")) for c in fake.calls_to("getUpdates")]

    # Health turns good when the short poll returns; the long poll that follows reaches
    # the fake a moment later (under load, after the health check above).
    await _eventually(lambda: timeouts()[-1] == "30")
    assert "0" in timeouts()


async def test_rate_limited_get_updates_waits(make_channel, fake):
    fake.rate_limit("getUpdates", 0.3)
    channel = make_channel()
    sink = RecordingSink()
    await channel.start(sink)
    first, second = await fake.wait_for_calls("getUpdates", 2)
    assert second.time - first.time >= 0.28


def test_retry_after_read_as_int_or_timedelta(monkeypatch):
    assert period_seconds(dt.timedelta(seconds=1.5)) == 1.5
    assert period_seconds(7) == 7.0 and period_seconds(None) is None
    # Ours (built by the transport for a 429): no PTB warning, with or without the opt-in.
    assert retry_after_seconds(RateLimited(3)) == 3.0
    assert retry_after_seconds(RateLimited(0.5)) == 0.5
    monkeypatch.setenv("PTB_TIMEDELTA", "1")  # PTB's own, with the opt-in: a timedelta
    assert retry_after_seconds(RetryAfter(4)) == 4.0
    monkeypatch.delenv("PTB_TIMEDELTA")
    with pytest.warns(PTBDeprecationWarning):  # PTB's own warning, while building it
        exc = RetryAfter(5)
    with pytest.warns(PTBDeprecationWarning):
        assert retry_after_seconds(exc) == 5.0  # today's default: an int


def test_webhook_secret_must_be_what_telegram_accepts():
    TelegramConfig(webhookSecret="Ab-_9" * 51 + "x")  # 256 characters
    for bad in ("has space", "semi;colon", "ümlaut", "x" * 257, ""):
        with pytest.raises(ValidationError, match="1-256 characters of A-Z"):
            TelegramConfig(webhookSecret=bad)


def test_bad_webhook_secret_error_does_not_echo_it():
    from bridge.config.load import ConfigError, load_config_text

    with pytest.raises(ConfigError) as err:
        load_config_text('{channels: {telegram: {mode: "webhook", webhookUrl: '
                         '"https://x.example/hook", webhookSecret: "s3cr3t!value"}}}', env={})
    message = str(err.value)
    assert "channels.telegram.webhookSecret" in message and "1-256 characters" in message
    assert "s3cr3t" not in message


async def test_webhook_answers_only_once_stored(make_channel, fake, gated_sink):
    port = free_port()
    channel = make_channel(mode="webhook", webhookUrl=f"http://127.0.0.1:{port}/hook",
                           webhookSecret="s3cret", webhookHost="127.0.0.1", webhookPort=port,
                           webhookPath="/hook")
    sink = gated_sink()
    await channel.start(sink)
    assert fake.webhook["max_connections"] == 1
    fake.push_text(1001, 1001, "hooked")
    delivery = asyncio.create_task(fake.deliver_webhook())
    await _eventually(lambda: sink.entered == ["hooked"])
    await asyncio.sleep(0.1)
    assert not delivery.done() and len(fake.pending_updates) == 1
    sink.gate.set()
    assert await delivery == 200
    assert fake.pending_updates == [] and [i.text for i in sink.inbounds] == ["hooked"]
