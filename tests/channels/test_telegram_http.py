"""channels.telegram.http.AiohttpRequest: PTB's Bot on aiohttp, against FakeBotAPI."""

from __future__ import annotations

import asyncio
import io

import pytest
from telegram import Bot, InputFile, ReplyParameters
from telegram.error import BadRequest, Forbidden, NetworkError, RetryAfter, TimedOut

from channels.telegram.http import (
    AiohttpRequest,
    ConnectFailed,
    ConnectTimedOut,
    NotSent,
    RateLimited,
    ServerError,
)

# A RetryAfter built by PTB itself warns (PTB 22) unless $PTB_TIMEDELTA: ours must not.
pytestmark = pytest.mark.filterwarnings("error::telegram.warnings.PTBDeprecationWarning")


@pytest.fixture(autouse=True)
def _no_ptb_timedelta(monkeypatch):
    monkeypatch.delenv("PTB_TIMEDELTA", raising=False)


@pytest.fixture
async def make_bot(fake):
    """Bots on AiohttpRequest pointed at the fake (shut down at the end)."""
    bots: list[Bot] = []

    async def build(url: str | None = None, **request_kwargs) -> Bot:
        root = url or fake.url
        request = AiohttpRequest(**{"read_timeout": 2.0, "connect_timeout": 2.0,
                                    **request_kwargs})
        bot = Bot(fake.token, base_url=f"{root}/bot", base_file_url=f"{root}/file/bot",
                  request=request, get_updates_request=AiohttpRequest())
        await bot.initialize()
        bots.append(bot)
        return bot

    yield build
    for bot in bots:
        await bot.shutdown()


def _assert_no_token(exc: BaseException, token: str) -> None:
    secret = token.split(":", 1)[1]
    for text in (str(exc), repr(exc), str(exc.args)):
        assert secret not in text, text
    # aiohttp's own exception (whose message may hold the URL) is never chained.
    assert exc.__cause__ is None and exc.__suppress_context__


async def test_form_encoded_parameters(make_bot, fake):
    bot = await make_bot()
    message = await bot.send_message(1001, "héllo & <you>", parse_mode=None,
                                     reply_parameters=ReplyParameters(
                                         message_id=99, allow_sending_without_reply=True))
    (call,) = fake.calls_to("sendMessage")
    assert call.params["text"] == "héllo & <you>" and call.params["chat_id"] == 1001
    assert call.params["reply_parameters"] == {"message_id": 99,
                                               "allow_sending_without_reply": True}
    raw = [r for r in fake.requests if r.method == "sendMessage"][0]
    assert raw.http_method == "POST" and raw.content_type == "application/x-www-form-urlencoded"
    assert raw.headers["User-Agent"].startswith("python-telegram-bot")
    assert message.text == "héllo & <you>" and message.chat.id == 1001


async def test_call_without_parameters(make_bot, fake):
    bot = await make_bot()
    assert (await bot.get_me()).username == "palaver_test_bot"
    assert await bot.delete_my_commands() is True


@pytest.mark.parametrize("source", ["bytes", "file handle", "InputFile"])
async def test_multipart_upload(make_bot, fake, tmp_path, source):
    data = b"%PDF-1.4 \x00\xff binary \r\n--boundary-like--\r\n"
    if source == "bytes":
        document = data
    elif source == "file handle":
        path = tmp_path / "report.pdf"
        path.write_bytes(data)
        document = path.open("rb")
    else:
        document = InputFile(io.BytesIO(data), filename='résumé "v2".pdf')
    bot = await make_bot()
    try:
        message = await bot.send_document(1001, document, caption="the report",
                                          filename=None if source == "InputFile" else "r.pdf")
    finally:
        if source == "file handle":
            document.close()
    (upload,) = fake.uploads
    assert upload.method == "sendDocument" and upload.field == "document"
    assert upload.data == data
    assert upload.filename == ('résumé "v2".pdf' if source == "InputFile" else "r.pdf")
    (call,) = fake.calls_to("sendDocument")
    assert call.params["caption"] == "the report" and call.params["chat_id"] == 1001
    raw = [r for r in fake.requests if r.method == "sendDocument"][0]
    assert raw.content_type == "multipart/form-data"
    assert message.document.file_size == len(data)


async def test_photo_upload_and_file_download(make_bot, fake):
    bot = await make_bot()
    message = await bot.send_photo(-100123, b"\x89PNG fake photo", caption="pic")
    assert fake.uploads[0].field == "photo" and fake.uploads[0].data == b"\x89PNG fake photo"
    file = await bot.get_file(message.photo[-1].file_id)
    assert bytes(await file.download_as_bytearray()) == b"\x89PNG fake photo"
    assert len(fake.downloads) == 1


async def test_api_errors_keep_ptb_classes(make_bot, fake):
    bot = await make_bot()
    fake.fail("sendMessage", 400, "Bad Request: chat not found")
    with pytest.raises(BadRequest, match="(?i)chat not found"):
        await bot.send_message(5, "x")
    fake.fail("sendMessage", 403, "Forbidden: bot was blocked by the user")
    with pytest.raises(Forbidden):
        await bot.send_message(5, "x")


async def test_rate_limit_without_deprecation_warning(make_bot, fake):
    bot = await make_bot()
    fake.rate_limit("sendMessage", 7)
    with pytest.raises(RetryAfter) as err:
        await bot.send_message(5, "x")
    assert isinstance(err.value, RateLimited) and err.value.seconds == 7.0
    assert "Retry in 7 seconds" in str(err.value)


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_server_errors_carry_the_status(make_bot, fake, status):
    bot = await make_bot()
    fake.fail("sendMessage", status, "Internal Server Error: restart")
    with pytest.raises(ServerError) as err:
        await bot.send_message(5, "x")
    assert err.value.status == status and isinstance(err.value, NetworkError)
    assert not isinstance(err.value, NotSent)
    assert "restart" in str(err.value)


async def test_refused_connection_is_not_sent(make_bot, fake):
    bot = await make_bot()
    await fake.go_down()
    with pytest.raises(ConnectFailed) as err:
        await bot.send_message(5, "x")
    assert isinstance(err.value, NotSent) and isinstance(err.value, NetworkError)
    assert "127.0.0.1" in str(err.value)
    _assert_no_token(err.value, fake.token)
    await fake.come_back()
    assert (await bot.send_message(5, "back")).text == "back"


async def test_read_timeout_is_ambiguous(make_bot, fake):
    bot = await make_bot(read_timeout=0.2)
    fake.slow("sendMessage", 1.0, times=1)
    with pytest.raises(TimedOut) as err:
        await bot.send_message(5, "x")
    assert not isinstance(err.value, NotSent)
    _assert_no_token(err.value, fake.token)
    assert len(fake.calls_to("sendMessage")) == 1


async def test_pool_timeout_is_not_sent(make_bot, fake):
    bot = await make_bot(connection_pool_size=1, connect_timeout=0.1, pool_timeout=0.1)
    fake.slow("sendMessage", 1.0, times=1)
    busy = asyncio.create_task(bot.send_message(5, "holds the only connection"))
    await fake.wait_for_calls("sendMessage")
    with pytest.raises(ConnectTimedOut) as err:
        await bot.send_chat_action(5, "typing")
    assert isinstance(err.value, TimedOut) and isinstance(err.value, NotSent)
    _assert_no_token(err.value, fake.token)
    assert fake.calls_to("sendChatAction") == []
    await busy


async def test_connection_dropped_after_sending_is_ambiguous(make_bot, fake):
    bot = await make_bot()
    fake.drop("sendMessage")
    with pytest.raises(NetworkError) as err:
        await bot.send_message(5, "x")
    assert not isinstance(err.value, NotSent | ServerError)
    _assert_no_token(err.value, fake.token)
    assert len(fake.calls_to("sendMessage")) == 1


async def test_long_poll_read_timeout_covers_the_poll(make_bot, fake):
    bot = await make_bot()
    started = asyncio.get_running_loop().time()
    # read_timeout 5 (default of the getUpdates request) + timeout 1: the poll may last.
    assert await bot.get_updates(timeout=1) == ()
    assert asyncio.get_running_loop().time() - started >= 0.9


async def test_cancelled_requests_do_not_leak_connections(make_bot, fake):
    """Cancelling calls in flight (httpcore#1093 with httpx) leaves the pool usable."""
    bot = await make_bot(connection_pool_size=2, pool_timeout=0.5)
    fake.slow("sendChatAction", 0.2)
    for _ in range(10):
        task = asyncio.create_task(bot.send_chat_action(5, "typing"))
        await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert (await bot.send_message(5, "still fine")).text == "still fine"


async def test_lifecycle(fake):
    request = AiohttpRequest()
    with pytest.raises(RuntimeError, match="not initialized"):
        await request.do_request(f"{fake.url}/bot{fake.token}/getMe", "POST")
    await request.initialize()
    await request.initialize()  # idempotent
    status, payload = await request.do_request(f"{fake.url}/bot{fake.token}/getMe", "POST")
    assert status == 200 and b'"ok": true' in payload
    await request.shutdown()
    await request.shutdown()  # idempotent
    async with request:  # initialize again after shutdown
        status, _ = await request.do_request(f"{fake.url}/bot{fake.token}/getMe", "POST")
        assert status == 200
    assert request.read_timeout == 5.0
    with pytest.raises(ValueError):
        AiohttpRequest(connection_pool_size=0)
