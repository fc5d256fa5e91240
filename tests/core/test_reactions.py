"""Acknowledgement reactions (issue 17): 👀 on an admitted message as soon as it is
stored, removed when its answer is delivered, 😢 when every model failed — and never in
the way of a reply."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

import pytest

from bridge.models.base import ErrorClass, ModelError
from bridge.ports import Capabilities, Markup, SendError
from tests.core.helpers import RecordingChannel, dm, group, make_config

EYES = "\U0001F440"
CRY = "\U0001F622"


class ReactingChannel(RecordingChannel):
    """A RecordingChannel that can react; records ``(message_id, emoji)`` in order."""

    def __init__(self) -> None:
        super().__init__()
        self.capabilities = replace(
            Capabilities(text_chunk_limit=4000, markup=Markup.PLAIN), reactions=True)
        self.reactions: list[tuple[str, str]] = []
        self.react_errors: list[Exception] = []
        self.gate: asyncio.Event | None = None  # set: react() waits for it
        self.reacted = asyncio.Event()

    async def react(self, address, message_id: str, emoji: str) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.react_errors:
            raise self.react_errors.pop(0)
        self.reactions.append((message_id, emoji))
        self.reacted.set()


def _config(tmp_path, **telegram):
    return make_config(tmp_path, channels={"telegram": {
        "dmPolicy": "open", "allowFrom": ["*"], "groupPolicy": "open", **telegram}})


async def _settle(harness) -> None:
    await asyncio.wait_for(harness.core.wait_idle(), 10)
    await asyncio.wait_for(harness.core.reactions.idle(), 10)


async def test_the_ack_comes_before_the_answer_and_goes_when_it_is_delivered(harness):
    channel = ReactingChannel()

    async def answer_once_acknowledged(ref, req):
        # The model does not answer until the 👀 is there: it must not wait for the turn.
        await asyncio.wait_for(channel.reacted.wait(), 5)
        return "here you go"

    await harness.start(behaviour=answer_once_acknowledged, channel=channel)
    await harness.core.accept(dm("hello", msg_id="m1"))
    await _settle(harness)
    assert channel.texts() == ["here you go"]
    assert channel.reactions == [("m1", EYES), ("m1", "")]


async def test_every_message_of_a_batch_is_acknowledged_and_cleared(harness):
    channel = ReactingChannel()
    release = asyncio.Event()

    async def slow(ref, req):
        await release.wait()
        return "both at once"

    await harness.start(behaviour=slow, channel=channel)
    await harness.core.accept(dm("first", msg_id="m1"))
    await harness.core.accept(dm("second", msg_id="m2"))
    await harness.core.accept(dm("third", msg_id="m3"))
    await asyncio.wait_for(harness.core.reactions.idle(), 10)
    assert sorted(channel.reactions) == [("m1", EYES), ("m2", EYES), ("m3", EYES)]
    release.set()
    await _settle(harness)
    cleared = [m for m, e in channel.reactions if e == ""]
    assert sorted(cleared) == ["m1", "m2", "m3"]


async def test_the_failure_mark_replaces_the_ack_when_every_model_failed(harness):
    channel = ReactingChannel()

    def down(ref, req):
        raise ModelError(ErrorClass.UNREACHABLE, "connection refused")

    await harness.start(behaviour=down, channel=channel)
    await harness.core.accept(dm("hello?", msg_id="m1"))
    await _settle(harness)
    assert "unavailable" in channel.texts()[0]  # the apology went out ...
    assert channel.reactions == [("m1", EYES), ("m1", CRY)]  # ... and left the mark


async def test_a_failing_reaction_never_touches_the_reply(harness, caplog):
    channel = ReactingChannel()
    channel.react_errors = [SendError("Bad Request: REACTION_INVALID"),
                            RuntimeError("boom")]
    await harness.start(channel=channel)
    with caplog.at_level(logging.DEBUG, logger="bridge.reactions"):
        await harness.core.accept(dm("hello", msg_id="m1"))
        await _settle(harness)
    assert channel.texts() == ["echo: hello"]
    assert channel.reactions == []
    failures = [r for r in caplog.records if r.name == "bridge.reactions"]
    assert len(failures) == 2 and all(r.levelno == logging.DEBUG for r in failures)


async def test_a_slow_ack_is_never_applied_after_its_removal(harness):
    channel = ReactingChannel()
    channel.gate = asyncio.Event()
    await harness.start(channel=channel)
    await harness.core.accept(dm("hello", msg_id="m1"))
    await asyncio.wait_for(harness.core.wait_idle(), 10)  # answered and delivered
    assert channel.texts() == ["echo: hello"] and channel.reactions == []
    channel.gate.set()
    await _settle(harness)
    assert channel.reactions == [("m1", EYES), ("m1", "")]  # in the order asked


async def test_no_ack_when_turned_off_or_out_of_scope(harness):
    channel = ReactingChannel()
    await harness.start(channel=channel, config=_config(harness.tmp_path, ackReaction=""))
    await harness.say(dm("hello", msg_id="m1"))
    await _settle(harness)
    assert channel.texts() == ["echo: hello"] and channel.reactions == []

    harness.config = _config(harness.tmp_path, ackReactionScope="direct")
    await harness.say(group("hi all", msg_id="-100:1"))
    await harness.say(dm("hi", msg_id="m2"))
    await _settle(harness)
    assert channel.reactions == [("m2", EYES), ("m2", "")]

    harness.config = _config(harness.tmp_path, ackReactionScope="group-mentions",
                             groups={"-100": {"requireMention": False}})
    await harness.say(group("just chatting", mentioned=False, msg_id="-100:2"))
    await harness.say(group("@bot you there?", msg_id="-100:3"))
    await harness.say(dm("direct", msg_id="m3"))
    await _settle(harness)
    assert [m for m, _ in channel.reactions[2:]] == ["-100:3", "-100:3"]


async def test_a_groups_own_emoji_and_commands_get_none(harness):
    channel = ReactingChannel()
    await harness.start(channel=channel, config=_config(
        harness.tmp_path, groups={"-100": {"ackReaction": "\U0001F914"}}))
    await harness.say(group("@bot hmm?", msg_id="-100:1"))
    await harness.say(dm("/help", msg_id="c1"))
    await _settle(harness)
    assert channel.reactions == [("-100:1", "\U0001F914"), ("-100:1", "")]


async def test_a_channel_without_reactions_is_never_asked(harness):
    channel = RecordingChannel()
    calls: list[str] = []

    async def react(address, message_id, emoji):
        calls.append(emoji)

    channel.react = react  # type: ignore[method-assign]
    await harness.start(channel=channel)
    await harness.say(dm("hello"))
    await _settle(harness)
    assert channel.texts() == ["echo: hello"] and calls == []


async def test_a_reply_delivered_by_a_later_retry_still_clears_the_ack(harness):
    channel = ReactingChannel()
    channel.failures = [SendError("network down", retryable=True)]
    await harness.start(channel=channel, send_retry_delays=(1.0,))
    await harness.core.accept(dm("hello", msg_id="m1"))
    await asyncio.wait_for(harness.core.reactions.idle(), 10)
    await asyncio.wait_for(harness.core.wait_idle(), 10)
    # Not delivered yet: the ack stays.
    assert channel.reactions == [("m1", EYES)]
    await asyncio.wait_for(channel.sent_event.wait(), 10)
    await _settle(harness)
    assert channel.texts() == ["echo: hello"]
    assert channel.reactions == [("m1", EYES), ("m1", "")]


# ------------------------------------------------------------------ over Telegram


def _telegram_config(tmp_path, fake, models, **telegram):
    from bridge.config.schema import Config

    return Config.model_validate({
        "dataDir": str(tmp_path / "data"),
        "models": {"mode": "replace", "providers": {"local": {
            "baseUrl": models.url_for("openai-completions"), "api": "openai-completions",
            "models": [{"id": "text"}]}}},
        "agents": {"defaults": {"model": {"primary": "local/text"}}},
        "channels": {"telegram": {"botToken": fake.token, "apiRoot": fake.url,
                                  "dmPolicy": "open", "allowFrom": ["*"],
                                  "groupPolicy": "open", "streaming": "off", **telegram}},
        "health": {"enabled": False},
    })


@pytest.fixture
def _fast_telegram(monkeypatch):
    from channels.telegram import TelegramChannel

    monkeypatch.setattr(TelegramChannel, "poll_timeout", 1)
    monkeypatch.setattr(TelegramChannel, "typing_delay", 0)


@pytest.mark.usefixtures("_fast_telegram")
async def test_telegram_eyes_before_the_answer_then_cleared(fake, models, tmp_path, run_app):
    models.reply("Here it is.", think=0.5)
    app = await run_app(_telegram_config(tmp_path, fake, models))
    msg = fake.push_text(1001, fake.user(1001, "Ann"), "hi")
    await fake.wait_for_sent(1, timeout=10)
    await asyncio.wait_for(app.core.wait_idle(), 10)
    await asyncio.wait_for(app.core.reactions.idle(), 10)
    screen = [(e.kind, e.text) for e in fake.screen(1001)]
    assert screen == [("reaction", EYES), ("message", "Here it is."), ("reaction", "")]
    assert not fake.reactions.get((1001, msg["message_id"]))


@pytest.mark.usefixtures("_fast_telegram")
async def test_telegram_failure_mark_and_a_group_refusing_reactions(fake, models, tmp_path,
                                                                     run_app):
    models.error(500, "down")
    app = await run_app(_telegram_config(tmp_path, fake, models))
    fake.push_text(1001, fake.user(1001, "Ann"), "anyone?")
    await fake.wait_for_sent(1, timeout=10)
    await asyncio.wait_for(app.core.wait_idle(), 10)
    await asyncio.wait_for(app.core.reactions.idle(), 10)
    assert [(e.kind, e.text) for e in fake.screen(1001) if e.kind == "reaction"] == [
        ("reaction", EYES), ("reaction", CRY)]

    # A group that allows no 👀: the answer still comes.
    fake.restrict_reactions(-1005, {"\U0001F44D"})
    models.reply("Still here.")
    fake.push_text(-1005, fake.user(1001, "Ann"), "@palaver_test_bot hello",
                   chat_type="supergroup")
    sent = await fake.wait_for_sent(2, timeout=10)
    assert sent[-1].text == "Still here."
    await asyncio.wait_for(app.core.wait_idle(), 10)
    await asyncio.wait_for(app.core.reactions.idle(), 10)
    assert not [e for e in fake.screen(-1005) if e.kind == "reaction"]
