"""Telegram pacing and the reply cap: a 1 MB reply with 429s from the fake Bot API.

The pacer runs on an injected clock (its sleeps advance it), so nothing here waits for
real and nothing asserts on wall time: the assertions are on the calls the fake saw,
their order and count, and the virtual times the pacer gave them.
"""

from __future__ import annotations

import asyncio

import pytest

from bridge.config.schema import TelegramConfig
from bridge.delivery import overflow_note
from bridge.envelope import ChatAddress, ChatKind, Outbound
from bridge.formatting import html_to_plain, render
from bridge.media import MediaStore
from bridge.ports import InboundSink, Markup, SendError, SendProgress
from channels.telegram import TelegramChannel
from channels.telegram.pacing import Pacer
from tests.fakes.telegram_api import FakeBotAPI

GROUP = -100123


class Sink(InboundSink):
    async def accept(self, inbound):  # pragma: no cover - nothing arrives here
        raise AssertionError("no inbound expected")


class Clock:
    """Virtual time: ``sleep`` advances it at once."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


@pytest.fixture
async def fake():
    async with FakeBotAPI() as server:
        yield server


@pytest.fixture
async def channel(fake, tmp_path):
    made: list[TelegramChannel] = []

    async def build(**overrides) -> tuple[TelegramChannel, Clock, list[tuple[str, float]]]:
        config = TelegramConfig(botToken=fake.token, apiRoot=fake.url, **overrides)
        ch = TelegramChannel(config, media=MediaStore(tmp_path / "m"), data_dir=tmp_path)
        ch.poll_timeout = 1
        made.append(ch)
        await ch.start(Sink())
        clock = Clock()
        ch.pacer.clock = clock
        ch.pacer.sleep = clock.sleep
        # The virtual time of every slot the pacer handed out, by chat, in order.
        slots: list[tuple[str, float]] = []
        wait = ch.pacer.wait

        async def recorded(chat_id: int, *, group: bool) -> float:
            waited = await wait(chat_id, group=group)
            slots.append((str(chat_id), clock.now))
            return waited

        ch.pacer.wait = recorded  # type: ignore[method-assign]
        return ch, clock, slots

    yield build
    for ch in made:
        await ch.stop()


def _megabyte() -> str:
    paragraph = ("Line %d of a very long answer that a model produced without stopping. " * 8)
    text = "\n\n".join(paragraph.replace("%d", str(i)) for i in range(1800))
    assert len(text) >= 1_000_000
    return text


def _address(chat_id: int, kind: ChatKind = ChatKind.DIRECT) -> ChatAddress:
    return ChatAddress("telegram", "default", str(chat_id), kind)


def _max_in_window(times: list[float], window: float) -> int:
    """The most sends in any half-open window of ``window`` seconds."""
    return max(sum(1 for u in times if t <= u < t + window) for t in times)


async def test_a_megabyte_reply_with_429s_is_paced_capped_and_loses_nothing(fake, channel):
    ch, clock, slots = await channel()  # maxReplyChunks: the default 10
    text = _megabyte()
    chunks = render(text, Markup.TELEGRAM_HTML, ch.capabilities.text_chunk_limit)
    assert len(chunks) > 200
    # Telegram's flood control: the 3rd and 4th chunk get 429 (retry after 3 s), and the
    # last send, the document, once too (retry after 5 s).
    fake.fail("sendMessage", 429, "Too Many Requests: retry after 3", retry_after=3,
              times=2, when=lambda p: str(p.get("text", "")) in (chunks[2], chunks[3]))
    fake.rate_limit("sendDocument", retry_after=5, times=1)
    reported: list[tuple[int, str]] = []

    async def sent(index: int, platform_id: str) -> None:
        reported.append((index, platform_id))

    ids = await ch.send(Outbound(_address(1001), text), SendProgress(0, sent))

    # The cap: 9 chunks as messages, in order, none twice, none lost ...
    assert [s.text for s in fake.sent] == chunks[:9]
    # ... and the 10th send is the document with the rest, the note as its caption.
    documents = fake.calls_to("sendDocument")
    assert len(documents) == 2  # one 429, then delivered
    assert documents[-1].params["caption"] == overflow_note(len(chunks), 9, document=True)
    upload = fake.uploads[-1]
    assert upload.filename == "reply.txt"
    assert upload.data.decode() == "\n".join(html_to_plain(c) for c in chunks[9:])
    assert len(ids) == 10 and [i for i, _ in reported] == list(range(10))
    assert [p for _, p in reported] == ids and len(set(ids)) == 10

    # Every call to the chat got a pacer slot; a 429's retry_after was honoured ...
    calls = [c for c in fake.calls if c.method in ("sendMessage", "sendDocument")]
    assert len(calls) == len(slots) == 13
    times = [t for _, t in slots]
    assert times == sorted(times)
    rejected = [i for i, c in enumerate(calls)
                if c.method == "sendMessage" and c.params["text"] in (chunks[2], chunks[3])]
    assert len(rejected) == 4  # two 429s, then each went through
    assert times[rejected[0] + 1] - times[rejected[0]] >= 3
    assert times[-1] - times[-2] >= 5  # the document after its 429
    # ... and outside the 429s the chat was paced: a burst of 5, then one a second.
    assert _max_in_window(times, 1.0) <= 6
    assert _max_in_window(times, 3.0) <= 8


async def test_group_sends_stay_within_twenty_a_minute(fake, channel):
    ch, clock, slots = await channel(maxReplyChunks=0, textChunkLimit=200)
    text = "\n\n".join(f"Part {i}: " + "words " * 25 for i in range(45))
    await ch.send(Outbound(_address(GROUP, ChatKind.GROUP), text))
    assert [s.text.split(":")[0] for s in fake.sent] == [f"Part {i}" for i in range(45)]
    times = [t for _, t in slots]
    assert len(times) == 45
    assert _max_in_window(times, 60.0) <= 20
    assert clock.now - 1000.0 >= 120  # 45 sends at 20 a minute take over two minutes


async def test_a_rate_limit_outlasting_the_wait_resumes_at_the_chunk_that_failed(
        fake, channel):
    ch, clock, slots = await channel(maxReplyChunks=0, textChunkLimit=200)
    text = "\n\n".join(f"Part {i}: " + "words " * 25 for i in range(6))
    # Chunk 2: Telegram asks for more than max_retry_after: the core retries later.
    fake.fail("sendMessage", 429, "Too Many Requests: retry after 600", retry_after=600,
              when=lambda p: str(p.get("text", "")).startswith("Part 2:"))
    done: list[str] = []

    async def sent(index: int, platform_id: str) -> None:
        assert index == len(done)
        done.append(platform_id)

    with pytest.raises(SendError) as info:
        await ch.send(Outbound(_address(1001), text), SendProgress(0, sent))
    assert info.value.retryable and len(done) == 2
    # The retry: only the chunks not sent go out.
    await ch.send(Outbound(_address(1001), text), SendProgress(len(done), sent))
    assert [s.text.split(":")[0] for s in fake.sent] == [f"Part {i}" for i in range(6)]
    assert len(done) == 6


async def test_pacer_bursts_then_paces_per_chat_and_overall():
    clock = Clock()
    pacer = Pacer(chat_interval=1.0, chat_burst=3, overall_interval=0.1, clock=clock,
                  sleep=clock.sleep)
    times = []
    for _ in range(6):
        await pacer.wait(1, group=False)
        times.append(round(clock.now - 1000.0, 3))
    assert times == [0, 0.1, 0.2, 1.0, 2.0, 3.0]
    await pacer.wait(2, group=False)  # another chat: only the overall pace applies
    assert round(clock.now - 1000.0, 3) == 3.1
    pacer.hold(1, 10)
    before = clock.now
    await pacer.wait(1, group=False)
    assert clock.now - before >= 10
