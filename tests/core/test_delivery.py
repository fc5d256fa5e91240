"""The outbox alone: in order, stop at a reply that must wait, hold the session."""

from __future__ import annotations

import time

from bridge.delivery import Outbox, SendResult
from bridge.envelope import ChatAddress, ChatKind
from bridge.ports import SendError
from bridge.store import MessageKind, MessageStatus, StoredMessage
from tests.core.helpers import RecordingChannel

ADDRESS = ChatAddress("telegram", "default", "42", ChatKind.DIRECT)


def reply(msg_id: int, text: str) -> StoredMessage:
    return StoredMessage(
        id=msg_id, direction="out", role="assistant", kind=MessageKind.CHAT,
        session_key="s", session_id=1, turn_id=msg_id, address=ADDRESS,
        platform_message_id=None, sender_id=None, sender_name=None, mentioned=False,
        text=text, media=(), quoted=None, status=MessageStatus.PENDING, reason=None,
        model_ref=None, reply_to_message_id=None, delivered=False, created_at=time.time())


class FakeStore:
    def __init__(self, *queued: StoredMessage) -> None:
        self.queued = list(queued)
        self.marks: list[tuple[str, int]] = []
        self.chunks: dict[int, dict[int, str]] = {}

    async def chunks_sent(self, msg_id: int) -> list[str]:
        got = self.chunks.get(msg_id, {})
        return [got[i] for i in range(len(got)) if i in got]

    async def record_chunk_sent(self, msg_id: int, index: int, platform_id: str) -> None:
        self.chunks.setdefault(msg_id, {})[index] = platform_id

    async def undelivered(self, key: str) -> list[StoredMessage]:
        return [m for m in self.queued if m.session_key == key]

    async def mark_delivered(self, msg_id: int, ids: list[str]) -> None:
        self.marks.append(("delivered", msg_id))
        self.queued = [m for m in self.queued if m.id != msg_id]

    async def mark_send_retry(self, msg_id: int, reason: str, **kw) -> None:
        self.marks.append(("retry", msg_id))

    async def mark_send_failed(self, msg_id: int, reason: str, sent_ids=None) -> None:
        self.marks.append(("failed", msg_id))
        self.queued = [m for m in self.queued if m.id != msg_id]

    # Edit-mode previews (issue 17): none stored here.
    async def preview_for_turn(self, turn_id: int) -> None:
        return None

    async def drop_preview(self, turn_id: int) -> None:
        return None


async def test_flush_sends_in_order_and_stops_at_a_retry():
    store = FakeStore(reply(1, "one"), reply(2, "two"), reply(3, "three"))
    channel = RecordingChannel()
    later: list[tuple[str, float]] = []
    outbox = Outbox(store, lambda a: channel, lambda k, d: later.append((k, d)),
                    retry_delays=(7,))
    assert await outbox.send(reply(0, "zero")) == SendResult.SENT
    channel.failures = [SendError("connecting", retryable=True)]
    results = await outbox.flush("s")
    assert results == {1: SendResult.RETRY}  # two and three wait behind one
    assert later == [("s", 7)] and outbox.held == {"s"}
    # Delivering a reply of a held session flushes the queue in order, then releases it.
    assert await outbox.deliver(reply(2, "two")) is True
    assert channel.texts() == ["zero", "one", "two", "three"] and outbox.held == set()
    assert store.marks == [("delivered", 0), ("retry", 1), ("delivered", 1),
                           ("delivered", 2), ("delivered", 3)]


async def test_no_channel_keeps_the_reply_queued_and_a_last_failure_gives_up():
    store = FakeStore(reply(1, "one"))
    outbox = Outbox(store, lambda a: None, lambda k, d: None)
    assert await outbox.flush("s") == {1: SendResult.NO_CHANNEL}
    assert store.marks == []
    channel = RecordingChannel()
    channel.failures = [SendError("connecting", retryable=True)]
    outbox = Outbox(store, lambda a: channel, lambda k, d: None,
                    retry_delays=())
    assert await outbox.flush("s") == {1: SendResult.FAILED}
    assert store.marks == [("failed", 1)] and outbox.held == set()


class ChunkChannel(RecordingChannel):
    """Sends a reply as one chunk per line; ``fail_at`` chunk raises a retryable error."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []
        self.fail_at: int | None = None

    async def send(self, out, progress=None):
        ids = []
        start = progress.start if progress else 0
        for index, line in enumerate(out.text.split("\n")):
            if index < start:
                continue
            if index == self.fail_at:
                self.fail_at = None
                raise SendError("rate limited", sent_ids=ids, retryable=True)
            self.lines.append(line)
            ids.append(f"m{len(self.lines)}")
            if progress is not None:
                await progress.report(index, ids[-1])
        return ids


async def test_a_retry_resumes_at_the_first_chunk_not_sent():
    store = FakeStore(reply(1, "a\nb\nc\nd"))
    channel = ChunkChannel()
    channel.fail_at = 2
    outbox = Outbox(store, lambda a: channel, lambda k, d: None, retry_delays=(1,))
    assert await outbox.flush("s") == {1: SendResult.RETRY}
    assert await outbox.flush("s") == {1: SendResult.SENT}
    assert channel.lines == ["a", "b", "c", "d"]  # a and b once, not again
    assert await store.chunks_sent(1) == ["m1", "m2", "m3", "m4"]


async def test_a_channel_without_progress_is_sent_whole():
    class OldChannel(RecordingChannel):
        async def send(self, out):  # type: ignore[override]
            self.sent.append(out)
            return ["x1", "x2"]

    store = FakeStore(reply(1, "one"))
    channel = OldChannel()
    outbox = Outbox(store, lambda a: channel, lambda k, d: None)
    assert await outbox.flush("s") == {1: SendResult.SENT}
    assert channel.texts() == ["one"] and store.marks == [("delivered", 1)]


async def test_outbound_text_is_filtered_for_registered_secrets():
    from bridge.secrets import clear_secrets, register_secret

    secret = "webhook-secret-Zq81Xy"
    register_secret(secret)
    try:
        store = FakeStore(reply(1, f"the secret is {secret}!"))
        channel = RecordingChannel()
        outbox = Outbox(store, lambda a: channel, lambda k, d: None)
        await outbox.flush("s")
        assert channel.texts() == ["the secret is [REDACTED]!"]
    finally:
        clear_secrets()


async def test_outbound_filter_leaves_ordinary_code_answers_alone():
    """Only configured secrets and bot-token shapes: a code sample keeps its words."""
    text = 'Use `password = "hunter22"` or `api_key=demo1234`; pip install sk-video'
    store = FakeStore(reply(1, text + " and 123456789:" + "A" * 35))
    channel = RecordingChannel()
    outbox = Outbox(store, lambda a: channel, lambda k, d: None)
    await outbox.flush("s")
    assert channel.texts() == [text + " and [REDACTED]"]
