"""``/stop`` is answered at the door (issue 17): it cancels the running model call of its
chat, says "Stopped." (or "Nothing is running."), never waits in the queue, and the
stopped messages are never answered again — also after a restart."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from bridge.config.schema import Config
from bridge.envelope import AcceptStatus
from bridge.store.records import STOPPED_REASON
from channels.telegram import TelegramChannel
from tests.channels.test_whatsapp_fake import until
from tests.core.helpers import RecordingChannel, dm, group, make_config

QUESTION = "tell me everything"


class Slow:
    """A FakeRouter behaviour whose answer to QUESTION never comes by itself."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()

    async def __call__(self, ref, req):
        text = "".join(p.text for p in req.turns[-1].parts if hasattr(p, "text"))
        if QUESTION not in text:
            return "answer: " + text.rsplit(":", 1)[-1].strip()
        self.started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        raise AssertionError("unreachable")


def _rows(harness) -> dict[str, tuple[str, str | None, str]]:
    with sqlite3.connect(harness.tmp_path / "palaver.db") as db:
        return {r[0]: (r[1], r[2], r[3]) for r in db.execute(
            "SELECT platform_message_id, status, reason, kind FROM messages"
            " WHERE direction = 'in'")}


async def _asked(harness, slow: Slow, inbound) -> None:
    assert await harness.core.accept(inbound) is AcceptStatus.ACCEPTED
    await asyncio.wait_for(slow.started.wait(), 10)


async def test_stop_cancels_the_running_answer_and_says_stopped(harness):
    slow = Slow()
    await harness.start(behaviour=slow)
    await _asked(harness, slow, dm(QUESTION, msg_id="q1"))
    assert await harness.core.accept(dm("/stop", msg_id="s1")) is AcceptStatus.ACCEPTED
    await asyncio.wait_for(harness.core.wait_idle(), 10)
    assert slow.cancelled.is_set()
    assert harness.channel.texts() == ["Stopped."]  # nothing else: no apology, no answer
    rows = _rows(harness)
    assert rows["q1"][:2] == ("failed", STOPPED_REASON)
    assert rows["s1"] == ("answered", None, "command")
    # The /stop never was a turn of its own; the stopped turn says why it ended.
    (turn,) = harness.turns()
    assert turn.message_ids and not turn.answered and turn.reason == STOPPED_REASON

    # Later messages are answered as usual, without the stopped question.
    await harness.say(dm("and the weather?", msg_id="n1"))
    assert harness.channel.texts() == ["Stopped.", "answer: and the weather?"]
    assert QUESTION not in harness.router.chat_calls[-1].last_user

    # A restart does not answer the stopped question again.
    await harness.crash()
    await harness.start(behaviour=slow)
    await asyncio.wait_for(harness.core.wait_idle(), 10)
    assert harness.channel.texts() == []
    assert len([c for c in harness.router.chat_calls if QUESTION in c.last_user]) == 0


async def test_stop_with_nothing_running_says_so(harness):
    await harness.start()
    await harness.say(dm("/stop"))
    assert harness.channel.texts() == ["Nothing is running."]
    assert harness.router.calls == [] and harness.turns() == []


async def test_stop_is_not_queued_behind_the_turn_it_stops(harness):
    """Messages that came in during the stopped turn are answered after it; the /stop is
    not among them and it is replied to before them."""
    slow = Slow()
    await harness.start(behaviour=slow)
    await _asked(harness, slow, dm(QUESTION, msg_id="q1"))
    await harness.core.accept(dm("one more thing", msg_id="m2"))
    await harness.core.accept(dm("/stop", msg_id="s1"))
    await asyncio.wait_for(harness.core.wait_idle(), 10)
    assert harness.channel.texts() == ["Stopped.", "answer: one more thing"]
    assert [t.kind for t in harness.turns()] == ["chat", "chat"]


async def test_a_redelivered_stop_is_answered_once(harness):
    await harness.start()
    assert await harness.say(dm("/stop", msg_id="s1")) is AcceptStatus.ACCEPTED
    assert await harness.say(dm("/stop", msg_id="s1")) is AcceptStatus.DUPLICATE
    assert harness.channel.texts() == ["Nothing is running."]


async def test_a_strangers_stop_does_nothing(harness):
    slow = Slow()
    await harness.start(behaviour=slow, config=make_config(
        harness.tmp_path, channels={"telegram": {"dmPolicy": "allowlist",
                                                 "allowFrom": ["42"], "groupPolicy": "open"}}))
    await _asked(harness, slow, group(QUESTION, sender="42", msg_id="-100:1"))
    # Another member of the open group, whom the bot does not know, says /stop@bot.
    status = await harness.core.accept(group("/stop", sender="666", msg_id="-100:2"))
    assert status is AcceptStatus.REFUSED
    await asyncio.sleep(0.05)
    assert not slow.cancelled.is_set() and harness.channel.texts() == []
    await harness.crash()  # (the question stays unanswered until then)


async def test_in_a_group_a_bare_stop_is_no_mention_and_stop_at_the_bot_is(harness):
    slow = Slow()
    await harness.start(behaviour=slow)
    await _asked(harness, slow, group(QUESTION, msg_id="-100:1"))
    bare = await harness.core.accept(group("/stop", mentioned=False, msg_id="-100:2"))
    assert bare is AcceptStatus.IGNORED
    await asyncio.sleep(0.05)
    assert not slow.cancelled.is_set()
    # "/stop@bot" reaches the core as "/stop", mentioned (channels/telegram/translate).
    assert await harness.core.accept(group("/stop", msg_id="-100:3")) is AcceptStatus.ACCEPTED
    await asyncio.wait_for(harness.core.wait_idle(), 10)
    assert harness.channel.texts() == ["Stopped."]
    assert harness.channel.sent[0].reply_to_message_id == "-100:3"  # quotes the /stop
    assert _rows(harness)["-100:2"][0] == "ignored"


async def test_stop_in_another_chat_stops_nothing_here(harness):
    slow = Slow()
    await harness.start(behaviour=slow)
    await _asked(harness, slow, dm(QUESTION, sender="42", msg_id="q1"))
    await harness.core.accept(dm("/stop", sender="43", msg_id="s1"))
    await asyncio.wait_for(harness.channel.sent_event.wait(), 10)
    assert not slow.cancelled.is_set()
    assert [o.address.chat_id for o in harness.channel.sent] == ["43"]
    assert harness.channel.texts() == ["Nothing is running."]
    await harness.crash()


class HeldChannel(RecordingChannel):
    """Its first send waits for ``release``: a delivery in progress."""

    def __init__(self) -> None:
        super().__init__()
        self.sending = asyncio.Event()
        self.release = asyncio.Event()

    async def send(self, out, progress=None):
        if not self.sent:
            self.sending.set()
            await self.release.wait()
        return await super().send(out, progress)


async def test_stop_after_the_answer_was_stored_does_not_cut_its_delivery(harness):
    channel = HeldChannel()
    await harness.start(channel=channel)
    await harness.core.accept(dm("quick one", msg_id="q1"))
    await asyncio.wait_for(channel.sending.wait(), 10)  # the answer is going out
    assert await harness.core.accept(dm("/stop", msg_id="s1")) is AcceptStatus.ACCEPTED
    channel.release.set()
    await asyncio.wait_for(harness.core.wait_idle(), 10)
    assert channel.texts() == ["echo: quick one", "Nothing is running."]
    assert _rows(harness)["q1"][0] == "answered"


# ------------------------------------------------------- Telegram and a streaming model


BOT = "palaver_test_bot"


@pytest.fixture
def _fast_telegram(monkeypatch):
    monkeypatch.setattr(TelegramChannel, "poll_timeout", 1)
    monkeypatch.setattr(TelegramChannel, "typing_delay", 0)


def _telegram_config(tmp_path, fake, models) -> Config:
    return Config.model_validate({
        "dataDir": str(tmp_path / "data"),
        "models": {"mode": "replace", "providers": {"local": {
            "baseUrl": models.url_for("openai-completions"), "api": "openai-completions",
            "models": [{"id": "text", "contextWindow": 32000, "maxTokens": 1000}]}}},
        "agents": {"defaults": {"model": {"primary": "local/text"}}},
        "channels": {"telegram": {"botToken": fake.token, "apiRoot": fake.url,
                                  "dmPolicy": "open", "allowFrom": ["*"],
                                  "groupPolicy": "open", "streaming": "off"}},
        "health": {"enabled": False},
    })


@pytest.mark.usefixtures("_fast_telegram")
async def test_stop_over_telegram_closes_the_model_stream(fake, models, tmp_path, run_app):
    models.reply(" ".join(f"word{n}" for n in range(20)), chunks=20, delay=1.0)
    models.reply("Sunny.")
    app = await run_app(_telegram_config(tmp_path, fake, models))
    fake.push_text(-1005, fake.user(1001, "Ann"), f"{QUESTION} @{BOT}", chat_type="supergroup")
    await until(lambda: models.requests and models.requests[0].chunks_written >= 1, 10)
    request = models.requests[0]
    # A bare /stop in a group that needs a mention is not for the bot ...
    fake.push_text(-1005, fake.user(1001, "Ann"), "/stop", chat_type="supergroup")
    # ... /stop@bot is.
    fake.push_text(-1005, fake.user(1001, "Ann"), f"/stop@{BOT}", chat_type="supergroup")
    await asyncio.wait_for(request.closed.wait(), 10)
    (stopped,) = await fake.wait_for_sent(1, timeout=10)
    assert stopped.text == "Stopped."
    await asyncio.wait_for(app.core.wait_idle(), 10)
    written = request.chunks_written
    fake.push_text(-1005, fake.user(1001, "Ann"), f"weather? @{BOT}", chat_type="supergroup")
    sent = await fake.wait_for_sent(2, timeout=10)
    assert [s.text for s in sent] == ["Stopped.", "Sunny."]
    assert request.chunks_written == written  # the stopped stream wrote nothing more
    assert len(models.requests) == 2
    with sqlite3.connect(tmp_path / "data" / "palaver.db") as db:
        statuses = [r[0] for r in db.execute(
            "SELECT status FROM messages WHERE direction = 'in' ORDER BY id")]
    assert statuses == ["failed", "ignored", "answered", "answered"]
