"""channels.telegram: typing, send retries (never twice), channel_ready, media admission,
linked-channel forwards, the plain-text fallback.  Against FakeBotAPI (and App for the
end-to-end cases)."""

from __future__ import annotations

import asyncio
import re
import time

import pytest

from bridge.app import App
from bridge.config.schema import Config, TelegramConfig
from bridge.envelope import AcceptStatus, ChatAddress, ChatKind, Inbound, MediaKind, Outbound
from bridge.media import MediaStore
from bridge.ports import InboundSink, Markup, SendError
from channels.telegram import TelegramChannel

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32 + b"photo"


def _jpeg() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (10, 200, 10)).save(buf, format="JPEG")
    return buf.getvalue()
BOT = "palaver_test_bot"
GROUP = -100123

pytestmark = pytest.mark.filterwarnings("error::telegram.warnings.PTBDeprecationWarning")


@pytest.fixture(autouse=True)
def _no_ptb_timedelta(monkeypatch):
    monkeypatch.delenv("PTB_TIMEDELTA", raising=False)


class Sink(InboundSink):
    """Records accepted inbounds; ``admit`` decides ``admits`` (None: no such method)."""

    def __init__(self) -> None:
        self.inbounds: list[Inbound] = []
        self.asked: list[Inbound] = []
        self.ready: list[object] = []

    async def accept(self, inbound: Inbound) -> AcceptStatus:
        self.inbounds.append(inbound)
        return AcceptStatus.ACCEPTED

    async def wait_for(self, n: int, timeout: float = 5.0) -> list[Inbound]:  # noqa: ASYNC109
        async with asyncio.timeout(timeout):
            while len(self.inbounds) < n:  # noqa: ASYNC110 - a test helper
                await asyncio.sleep(0.01)
        return list(self.inbounds)


class AdmittingSink(Sink):
    """``admits``: private chats of 1001 only, and group messages that mention the bot."""

    async def admits(self, inbound: Inbound) -> bool:
        self.asked.append(inbound)
        assert all(ref.media_id is None for ref in inbound.media)  # nothing fetched yet
        if inbound.address.chat_kind is ChatKind.GROUP:
            return inbound.mentioned
        return inbound.sender_id == "1001"

    def channel_ready(self, channel: object) -> None:
        self.ready.append(channel)


@pytest.fixture
async def make_channel(fake, tmp_path):
    made: list[TelegramChannel] = []

    async def build(sink: Sink | None = None, **overrides) -> TelegramChannel:
        fields = {"botToken": fake.token, "apiRoot": fake.url, **overrides}
        channel = TelegramChannel(TelegramConfig(**fields), media=MediaStore(tmp_path / "m"),
                                  data_dir=tmp_path)
        channel.poll_timeout = 1
        channel.poll_backoff_base = 0.05
        channel.poll_backoff_max = 0.1
        channel.send_retry_delays = (0.01, 0.02, 0.03)
        channel.connect_retry_delays = (0.05,)
        made.append(channel)
        await channel.start(sink or Sink())
        return channel

    yield build
    for channel in made:
        await channel.stop()


def _address(chat_id: int, kind: ChatKind = ChatKind.DIRECT) -> ChatAddress:
    return ChatAddress("telegram", "default", str(chat_id), kind)


# --------------------------------------------------------------------------- typing


async def test_leaving_typing_never_cancels_a_request_in_flight(make_channel, fake):
    """50 quick turns whose typing ends while sendChatAction is in flight: sends still work.

    (With a cancelled request httpcore 1.0.9 kept the connection busy: after 16, every
    send failed with "Pool timeout: All connections ... occupied".)
    """
    channel = await make_channel()
    channel.typing_delay = 0
    channel.pacer.chat_interval = 0  # 50 answers to one chat: pacing is not this test's
    fake.slow("sendChatAction", 0.03)
    for i in range(50):
        calls = len(fake.calls_to("sendChatAction"))
        async with channel.typing(_address(1001)):
            await fake.wait_until(lambda c=calls: len(fake.calls_to("sendChatAction")) > c)
        # Left while the call was in flight; it was allowed to finish.
        assert len(fake.actions) == len(fake.calls_to("sendChatAction")), i
        ids = await channel.send(Outbound(_address(1001), f"answer {i}"))
        assert len(ids) == 1
    assert [s.text for s in fake.sent] == [f"answer {i}" for i in range(50)]
    assert channel._tasks == set()  # every typing task ended


async def test_typing_left_at_any_moment_keeps_the_pool_usable(make_channel, fake):
    """Leave typing() at every point of a sendChatAction's life, 425 times: sends work.

    (httpx: one of these points -- a cancel while httpcore opens the connection -- left a
    connection stuck in its pool each time; after 16 the pool was full for good.)
    """
    channel = await make_channel()
    channel.typing_delay = 0
    for i in range(425):
        async with channel.typing(_address(1001)):
            for _ in range(i % 25):
                await asyncio.sleep(0)
    ids = await channel.send(Outbound(_address(1001), "the answer"))
    assert len(ids) == 1 and fake.sent[-1].text == "the answer"
    assert len(fake.actions) == len(fake.calls_to("sendChatAction")) > 0


async def test_fast_turns_send_no_typing(make_channel, fake):
    channel = await make_channel()
    channel.typing_delay = 0.3
    channel.typing_interval = 0.2
    async with channel.typing(_address(1001)):
        await asyncio.sleep(0.05)  # a fast answer
    await asyncio.sleep(0.4)
    assert fake.calls_to("sendChatAction") == []
    async with channel.typing(_address(1001)):  # a slow one: typing after the delay
        await fake.wait_for_calls("sendChatAction", 2, timeout=2)
    first, second = fake.calls_to("sendChatAction")
    assert second.time - first.time >= 0.18


def test_default_typing_delay_is_about_a_second():
    assert 0.5 <= TelegramChannel.typing_delay <= 1.5


async def test_stop_ends_typing_loops(make_channel, fake):
    channel = await make_channel()
    channel.typing_delay = 0
    fake.slow("sendChatAction", 0.1)
    entered = asyncio.Event()

    async def turn() -> None:
        async with channel.typing(_address(1001)):
            entered.set()
            await asyncio.sleep(10)

    task = asyncio.create_task(turn())
    await entered.wait()
    await fake.wait_for_calls("sendChatAction")
    await channel.stop()
    assert channel._tasks == set()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


# --------------------------------------------------------------------------- send retries


async def test_refused_connection_is_retried_then_retryable(make_channel, fake):
    channel = await make_channel()
    await fake.go_down()
    started = time.monotonic()
    with pytest.raises(SendError) as err:
        await channel.send(Outbound(_address(1001), "hello"))
    assert err.value.retryable and err.value.sent_ids == []
    assert "unreachable" in str(err.value)
    assert time.monotonic() - started >= 0.05  # the in-channel waits (0.01+0.02+0.03)
    assert fake.token.split(":")[1] not in str(err.value)
    await fake.come_back()
    assert len(await channel.send(Outbound(_address(1001), "hello"))) == 1
    assert [s.text for s in fake.sent] == ["hello"]


async def test_connection_lost_after_sending_is_not_sent_again(make_channel, fake):
    """The request reached Telegram and the connection died: it may have been delivered,
    so it is neither retried here nor marked retryable (no double message)."""
    channel = await make_channel()
    fake.drop("sendMessage")
    with pytest.raises(SendError) as err:
        await channel.send(Outbound(_address(1001), "only once"))
    assert not err.value.retryable
    assert "may have been delivered" in str(err.value)
    assert len(fake.calls_to("sendMessage")) == 1


async def test_read_timeout_is_not_sent_again(fake, make_channel, monkeypatch):
    monkeypatch.setattr(TelegramChannel, "http_read_timeout", 0.2)
    channel = await make_channel()
    fake.slow("sendMessage", 0.6, times=1)
    with pytest.raises(SendError) as err:
        await channel.send(Outbound(_address(1001), "slow"))
    assert not err.value.retryable and "TimedOut" in str(err.value)
    assert len(fake.calls_to("sendMessage")) == 1


@pytest.mark.parametrize("status", [502, 503])
async def test_gateway_errors_are_retried(make_channel, fake, status):
    channel = await make_channel()
    fake.fail("sendMessage", status, "Bad Gateway", times=2)
    assert len(await channel.send(Outbound(_address(1001), "through"))) == 1
    assert len(fake.calls_to("sendMessage")) == 3 and len(fake.sent) == 1
    fake.fail("sendMessage", status, "Bad Gateway", times=10)
    with pytest.raises(SendError) as err:
        await channel.send(Outbound(_address(1001), "never"))
    assert err.value.retryable
    assert len(fake.calls_to("sendMessage")) == 3 + channel.max_send_attempts


@pytest.mark.parametrize("status", [500, 504])
async def test_other_server_errors_are_ambiguous(make_channel, fake, status):
    channel = await make_channel()
    fake.fail("sendMessage", status, "Internal Server Error")
    with pytest.raises(SendError) as err:
        await channel.send(Outbound(_address(1001), "x"))
    assert not err.value.retryable
    assert len(fake.calls_to("sendMessage")) == 1


async def test_long_rate_limit_is_retryable(make_channel, fake):
    channel = await make_channel()
    channel.max_retry_after = 1.0
    fake.rate_limit("sendMessage", 30)
    with pytest.raises(SendError, match="rate limit") as err:
        await channel.send(Outbound(_address(1001), "later"))
    assert err.value.retryable


async def test_refusals_are_permanent(make_channel, fake):
    channel = await make_channel()
    fake.fail("sendMessage", 403, "Forbidden: bot was blocked by the user")
    with pytest.raises(SendError) as err:
        await channel.send(Outbound(_address(1001), "x"))
    assert not err.value.retryable


async def test_not_running_is_retryable(fake, tmp_path):
    channel = TelegramChannel(TelegramConfig(botToken=fake.token, apiRoot=fake.url),
                              media=MediaStore(tmp_path / "m"), data_dir=tmp_path)
    with pytest.raises(SendError, match="not running") as err:
        await channel.send(Outbound(_address(1001), "x"))
    assert err.value.retryable


async def test_later_chunk_unreachable_reports_sent_ids(make_channel, fake):
    channel = await make_channel()
    channel.capabilities = type(channel.capabilities)(300, Markup.TELEGRAM_HTML)
    text = "PART-ONE " + "word " * 40 + "\n\nPART-TWO " + "word " * 40
    fake.fail("sendMessage", 502, "Bad Gateway", times=10, when=lambda p: "PART-TWO" in p["text"])
    with pytest.raises(SendError) as err:
        await channel.send(Outbound(_address(1001), text))
    assert err.value.retryable
    assert err.value.sent_ids == [f"1001:{fake.sent[0].message_id}"]


# --------------------------------------------------------------------------- channel_ready


async def _until(predicate, timeout: float = 5.0) -> None:  # noqa: ASYNC109
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - channel state has no event
            await asyncio.sleep(0.01)


async def test_channel_ready_after_a_late_connect(make_channel, fake):
    fake.fail("getMe", 502, "Bad Gateway", times=2)
    sink = AdmittingSink()
    channel = await make_channel(sink)
    assert not channel.health().connected and sink.ready == []  # start() has returned
    await _until(lambda: sink.ready == [channel])
    assert channel.health().connected


async def test_channel_ready_when_polling_recovers(make_channel, fake):
    sink = AdmittingSink()
    channel = await make_channel(sink)
    await fake.wait_for_calls("getUpdates")
    assert sink.ready == []  # start() itself: the core sends its queue on its own start
    fake.fail("getUpdates", 502, "Bad Gateway", times=2)
    fake.push_text(1001, 1001, "wake the poll")  # ends the pending long poll
    await _until(lambda: len(fake.calls_to("getUpdates")) >= 4 and sink.ready)
    await asyncio.sleep(0.2)
    assert sink.ready == [channel]  # once per recovery


async def test_channel_ready_after_a_send_found_no_connection(make_channel, fake):
    sink = AdmittingSink()
    channel = await make_channel(sink)
    channel.max_send_attempts = 1
    fake.fail("sendMessage", 502, "Bad Gateway")  # 5xx: no early retry is asked for
    with pytest.raises(SendError):
        await channel.send(Outbound(_address(1001), "x"))
    fake.push_text(1001, 1001, "a poll answers")
    await sink.wait_for(1)
    assert sink.ready == []
    await fake.go_down()
    with pytest.raises(SendError) as err:  # connection refused: retryable, ready later
        await channel.send(Outbound(_address(1001), "y"))
    assert err.value.retryable
    await fake.come_back()
    await _until(lambda: sink.ready == [channel])


# --------------------------------------------------------------------------- plain fallback


async def test_plain_fallback_of_a_later_chunk_keeps_links(make_channel, fake):
    channel = await make_channel()
    channel.capabilities = type(channel.capabilities)(300, Markup.TELEGRAM_HTML)
    text = ("PART-ONE see [the docs](https://docs.example/a?b=1&c=2) " + "word " * 30
            + "\n\nPART-TWO **bold** and [a link](https://e.example/x_y) " + "word " * 30)
    fake.fail("sendMessage", 400, "Bad Request: can't parse entities: Unsupported start tag",
              when=lambda p: bool(p.get("parse_mode")) and "PART-TWO" in p["text"])
    ids = await channel.send(Outbound(_address(1001), text))
    first, second = fake.sent
    assert len(ids) == 2
    assert first.parse_mode == "HTML" and "PART-ONE" in first.text
    assert '<a href="https://docs.example/a?b=1&amp;c=2">the docs</a>' in first.text
    assert second.parse_mode is None
    assert second.text.startswith("PART-TWO bold and a link (https://e.example/x_y)")
    assert "<" not in second.text


async def test_plain_fallback_of_the_first_chunk_renders_the_markdown(make_channel, fake):
    channel = await make_channel()
    fake.fail_parse_entities(times=1)
    markdown = "# Title\n\n- see [docs](https://d.example/p) & *more*\n\n`x < y`"
    ids = await channel.send(Outbound(_address(GROUP, ChatKind.GROUP), markdown,
                                      reply_to_message_id=f"{GROUP}:7"))
    (sent,) = fake.sent
    assert len(ids) == 1 and sent.parse_mode is None
    assert sent.text == "Title\n\n• see docs (https://d.example/p) & more\n\nx < y"
    assert sent.reply_to_message_id == 7  # the plain version still quotes the trigger


# --------------------------------------------------------------------------- media admission


async def test_media_downloaded_only_when_admitted(make_channel, fake):
    sink = AdmittingSink()
    await make_channel(sink)
    fake.push_photo(GROUP, 1001, PNG, caption="nice view")  # group, no mention
    fake.push_document(2002, 2002, b"%PDF stranger", filename="x.pdf",
                       mime_type="application/pdf")  # a stranger's direct message
    fake.push_photo(GROUP, 1001, PNG, caption=f"@{BOT} what is this?")  # mentioned
    fake.push_document(1001, 1001, b"%PDF friend", filename="cv.pdf",
                       mime_type="application/pdf")  # allowed
    unmentioned, stranger, mentioned, friend = await sink.wait_for(4)
    assert len(sink.asked) == 4
    # Refused and ignored messages still reach accept (pairing codes, records) ...
    assert unmentioned.media[0].kind is MediaKind.IMAGE and unmentioned.media[0].media_id is None
    assert stranger.media[0].filename == "x.pdf" and stranger.media[0].media_id is None
    assert stranger.media[0].size == len(b"%PDF stranger")
    # ... but only the admitted ones were downloaded.
    assert mentioned.media[0].media_id and friend.media[0].media_id
    assert len(fake.downloads) == 2 and len(fake.calls_to("getFile")) == 2


async def test_quoted_image_downloaded_only_when_admitted(make_channel, fake):
    sink = AdmittingSink()
    await make_channel(sink)
    photo = fake.push_photo(GROUP, 2002, PNG, caption="a cat")  # not mentioned: ignored
    fake.push_text(GROUP, 1001, "what breed?", reply_to=photo)  # ignored too
    fake.push_text(GROUP, 1001, f"@{BOT} what breed?", reply_to=photo)
    _, plain_reply, asked = await sink.wait_for(3)
    assert plain_reply.quoted.media[0].media_id is None
    assert asked.quoted.media[0].media_id is not None
    assert len(fake.downloads) == 1


async def test_sink_without_admits_downloads(make_channel, fake):
    sink = Sink()
    await make_channel(sink)
    fake.push_photo(GROUP, 1001, PNG, caption="no mention")
    (inbound,) = await sink.wait_for(1)
    assert inbound.media[0].media_id is not None and len(fake.downloads) == 1


# --------------------------------------------------------------------------- senders


async def test_linked_channel_forwards_and_channel_senders_ignored(make_channel, fake):
    sink = Sink()
    await make_channel(sink)
    channel_chat = {"id": -100777, "type": "channel", "title": "News"}
    service = {"id": 777000, "is_bot": False, "first_name": "Telegram"}
    # A channel post copied into its discussion group.
    fake.push_message(GROUP, service, text=f"@{BOT} post", sender_chat=channel_chat,
                      is_automatic_forward=True, forward_origin={
                          "type": "channel", "date": int(time.time()), "chat": channel_chat,
                          "message_id": 5})
    # The same without the flag (older clients): the sender_chat is another chat.
    fake.push_message(GROUP, service, text=f"@{BOT} post 2", sender_chat=channel_chat)
    # A member writing "as" a channel.
    fake.push_message(GROUP, {"id": 136817688, "is_bot": True, "first_name": "Channel"},
                      text=f"@{BOT} as channel", sender_chat=channel_chat)
    fake.push_text(GROUP, 1001, f"@{BOT} a person")
    (inbound,) = await sink.wait_for(1)
    await asyncio.sleep(0.2)
    assert [i.text for i in sink.inbounds] == [f"@{BOT} a person"]


async def test_anonymous_group_admin_is_the_group(make_channel, fake):
    sink = Sink()
    await make_channel(sink)
    group_chat = {"id": GROUP, "type": "supergroup", "title": "Team"}
    anonymous = {"id": 1087968824, "is_bot": True, "first_name": "Group",
                 "username": "GroupAnonymousBot"}
    mention = [{"type": "mention", "offset": 0, "length": len(BOT) + 1}]
    fake.push_message(GROUP, anonymous, text=f"@{BOT} from the admins", entities=mention,
                      sender_chat=group_chat, author_signature="Boss")
    fake.push_message(GROUP, anonymous, text=f"@{BOT} unsigned", entities=mention,
                      sender_chat=group_chat)
    signed, unsigned = await sink.wait_for(2)
    assert signed.sender_id == str(GROUP) and signed.sender_name == "Boss"
    assert signed.sender_aliases == () and signed.mentioned
    assert unsigned.sender_name == f"Group {GROUP}"  # the group's title
    assert signed.session_key.scope == f"group:{GROUP}"


# --------------------------------------------------------------------------- with App


def _config(tmp_path, fake, models, telegram=None) -> Config:
    return Config.model_validate({
        "dataDir": str(tmp_path / "data"),
        "models": {"mode": "replace", "providers": {"local": {
            "baseUrl": models.url_for("openai-completions"), "api": "openai-completions",
            "models": [{"id": "vision", "contextWindow": 32000, "maxTokens": 500,
                        "input": ["text", "image"]}],
        }}},
        "agents": {"defaults": {"model": {"primary": "local/vision"}}},
        "channels": {"telegram": {"botToken": fake.token, "apiRoot": fake.url,
                                  **(telegram or {})}},
        "health": {"enabled": False},
    })


@pytest.fixture
async def run_app(monkeypatch):
    monkeypatch.setattr(TelegramChannel, "poll_timeout", 1)
    monkeypatch.setattr(TelegramChannel, "typing_delay", 0)
    monkeypatch.setattr(TelegramChannel, "poll_backoff_base", 0.05)
    monkeypatch.setattr(TelegramChannel, "poll_backoff_max", 0.2)
    monkeypatch.setattr(TelegramChannel, "send_retry_delays", (0.01, 0.02, 0.03))
    apps: list[App] = []

    async def start(config: Config) -> App:
        app = App(config)
        await app.start()
        apps.append(app)
        return app

    yield start
    for app in apps:
        await app.stop(grace=0)


async def test_reply_waits_while_the_api_is_down_then_goes_out_once(fake, models, tmp_path,
                                                                    run_app):
    app = await run_app(_config(tmp_path, fake, models,
                                {"dmPolicy": "open", "allowFrom": ["*"]}))
    # The core's own backoff would wait a minute: only channel_ready can send it sooner.
    app.core._retry_delays = (60.0,) * 8
    models.reply("Here you are.", think=1.0)
    fake.push_text(1001, 1001, "question")
    await fake.wait_until(lambda: fake.pending_updates == [])  # stored and confirmed
    async with asyncio.timeout(5):
        while not models.requests:  # noqa: ASYNC110 - the model server has no event
            await asyncio.sleep(0.01)
    await fake.go_down()  # the reply will be ready while Telegram is unreachable
    assert fake.sent == []
    key = "telegram:default:direct:1001"
    async with asyncio.timeout(5):  # the channel said "retryable": the reply waits
        while not [m for m in await app.store.undelivered(key) if m.send_attempts]:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    assert fake.sent == []
    await fake.come_back()
    (sent,) = await fake.wait_for_sent(1, timeout=5)
    assert sent.text == "Here you are."
    await asyncio.sleep(0.5)
    assert len(fake.sent) == 1 and len(fake.calls_to("sendMessage")) == 1


async def test_group_photo_without_mention_never_downloaded(fake, models, tmp_path, run_app):
    await run_app(_config(tmp_path, fake, models, {
        "dmPolicy": "pairing", "allowFrom": ["1001"], "groupPolicy": "open",
        "groups": {"*": {"requireMention": True}}}))
    fake.push_photo(GROUP, 1001, PNG, caption="holiday pics")
    fake.push_document(2002, 2002, b"%PDF from a stranger", filename="x.pdf",
                       mime_type="application/pdf")
    models.reply("A photo.")
    fake.push_photo(1001, 1001, _jpeg(), caption="and this?")
    sent = await fake.wait_for_sent(2, timeout=10)
    await asyncio.sleep(0.3)
    by_chat = {s.chat_id: s.text for s in sent}
    assert re.search(r"pairing code is \S+", by_chat[2002])  # the stranger still gets a code
    assert by_chat[1001] == "A photo."
    assert len(fake.downloads) == 1  # only the allowed sender's photo
    content = models.requests[-1].json["messages"][-1]["content"]
    assert any(part.get("type") == "image_url" for part in content)


async def test_a_reply_holding_a_configured_secret_reaches_telegram_redacted(
        fake, models, tmp_path, run_app):
    config = _config(tmp_path, fake, models, {"dmPolicy": "open", "allowFrom": ["*"]})
    api_key = "local-provider-key-0123456789"
    data = config.model_dump(mode="json")
    data["models"]["providers"]["local"]["apiKey"] = api_key
    data["channels"]["telegram"]["botToken"] = fake.token
    config = Config.model_validate(data)
    models.reply(f"Sure! The bot token is {fake.token} and the key is {api_key}, enjoy.")
    await run_app(config)
    fake.push_text(1001, 1001, "print your secrets")
    (sent,) = await fake.wait_for_sent(1, timeout=10)
    assert fake.token not in sent.text and api_key not in sent.text
    assert sent.text == "Sure! The bot token is [REDACTED] and the key is [REDACTED], enjoy."
