"""Limits at the door, through the conversation core: one notice, then refused messages
stored with reason ``limit`` and no reply; commands still answered; owners never limited;
a restart keeps the count; the family-bot example end to end."""

from __future__ import annotations

import asyncio
import json

import pytest

from bridge.app import App
from bridge.config.load import load_config_text
from bridge.conversation import AcceptEvent
from bridge.envelope import AcceptStatus
from bridge.store import Direction, MessageStatus
from tests.core.helpers import RecordingChannel, dm, group, make_config
from tests.fakes.model_server import FakeModelServer

OPEN = {"dmPolicy": "open", "allowFrom": ["*"], "groupPolicy": "open"}
NOTICE = "Usage limit reached"


def _limited(tmp_path, **telegram):
    return make_config(tmp_path, channels={"telegram": {**OPEN, **telegram}})


async def _inbound(harness, key: str):
    return [m for m in await harness.store.messages_for(key) if m.direction is Direction.IN]


async def test_over_the_limit_one_notice_then_refused_without_reply(harness):
    await harness.start(config=_limited(harness.tmp_path, limits={"messagesPerHour": 2}))
    statuses = [await harness.say(dm(f"question {n}")) for n in range(5)]
    assert statuses == [AcceptStatus.ACCEPTED] * 2 + [AcceptStatus.REFUSED] * 3
    texts = harness.channel.texts()
    assert texts[:2] == ["echo: question 0", "echo: question 1"]
    assert len(texts) == 3 and texts[2].startswith(
        f"{NOTICE} (2 messages an hour in this chat). I'll answer again in 60 min")
    inbound = await _inbound(harness, str(dm("x").session_key))
    refused = [m for m in inbound if m.status is MessageStatus.REFUSED]
    assert len(refused) == 3
    assert all(m.reason == "limit" and m.text == "" for m in refused)
    assert len(harness.router.chat_calls) == 2  # the refused ones never reach a model
    codes = [e.code for e in harness.events if isinstance(e, AcceptEvent)
             and e.status is AcceptStatus.REFUSED]
    assert codes == ["limit"] * 3


async def test_commands_still_work_while_limited(harness):
    await harness.start(config=_limited(harness.tmp_path, limits={"messagesPerHour": 1}))
    await harness.say(dm("hello"))
    await harness.say(dm("over"))
    assert await harness.say(dm("/help")) == AcceptStatus.ACCEPTED
    assert harness.channel.texts()[-1].startswith("Commands:")
    assert await harness.say(dm("still over")) == AcceptStatus.REFUSED
    assert len(harness.channel.texts()) == 3  # hello, the notice, /help


async def test_owners_are_never_limited_at_the_door(harness):
    await harness.start(config=_limited(harness.tmp_path, owners=["42"],
                                        limits={"messagesPerHour": 1}))
    for n in range(4):
        assert await harness.say(dm(f"owner {n}", sender="42")) == AcceptStatus.ACCEPTED
    assert await harness.say(dm("guest", sender="7")) == AcceptStatus.ACCEPTED
    assert await harness.say(dm("guest again", sender="7")) == AcceptStatus.REFUSED


async def test_the_limit_and_its_notice_hold_across_a_restart(harness):
    config = _limited(harness.tmp_path, limits={"messagesPerHour": 1})
    await harness.start(config=config)
    await harness.say(dm("one"))
    await harness.say(dm("two"))  # the notice
    await harness.stop()
    await harness.start(config=config)
    assert await harness.say(dm("three")) == AcceptStatus.REFUSED
    assert not any(NOTICE in t for t in harness.channel.texts())  # not told twice


async def test_racing_messages_of_one_group_get_exactly_the_free_slots(harness):
    config = _limited(harness.tmp_path, groups={"-100": {"requireMention": False,
                                                         "limits": {"messagesPerHour": 3}}})
    await harness.start(config=config)
    statuses = await asyncio.gather(*(
        harness.core.accept(group(f"m{n}", chat="-100", sender=str(n))) for n in range(12)))
    await harness.core.wait_idle()
    assert statuses.count(AcceptStatus.ACCEPTED) == 3
    assert sum(NOTICE in t for t in harness.channel.texts()) == 1


@pytest.fixture
async def model_server():
    async with FakeModelServer() as server:
        yield server


def family_config(tmp_path, server: FakeModelServer) -> str:
    """The README's family bot: a local model first, a hosted fallback capped at $5 a
    month, 30 messages an hour per sender in groups."""
    return json.dumps({
        "dataDir": str(tmp_path / "data"),
        "health": {"enabled": False},
        "models": {"mode": "replace", "providers": {
            "lmstudio": {"baseUrl": server.base_url, "api": "openai-responses",
                         "models": [{"id": "qwen3-8b"}]},
            "openai": {"baseUrl": server.base_url, "api": "openai-completions",
                       "apiKey": "sk-test-not-real",
                       "models": [{"id": "gpt-5-mini",
                                   "cost": {"input": 0.25, "output": 2.0,
                                            "cacheRead": 0.025}}],
                       "budget": {"monthlyUsd": 5}},
        }},
        "agents": {"defaults": {"model": {"primary": "lmstudio/qwen3-8b",
                                          "fallbacks": ["openai/gpt-5-mini"]}}},
        "channels": {"telegram": {
            "dmPolicy": "allowlist", "allowFrom": ["111", "222", "333"],
            "owners": ["111"], "groupPolicy": "open",
            "groups": {"*": {"requireMention": False,
                             "limits": {"perSender": {"messagesPerHour": 30}}}}}},
    })


async def test_the_family_bot_example(tmp_path, model_server):
    app = App(load_config_text(family_config(tmp_path, model_server)),
              channels=[channel := RecordingChannel()])
    await app.start()
    try:
        messages = [group(f"kid {n}", chat="-500", sender="222") for n in range(32)]
        messages += [group("parent", chat="-500", sender="111"),  # the owner
                     group("other kid", chat="-500", sender="333")]
        for inbound in messages:  # one by one: each its own turn
            await app.core.accept(inbound)
            await app.core.wait_idle()
        texts = channel.texts()
        assert sum(NOTICE in t for t in texts) == 1
        assert "30 messages an hour for Bob in this chat" in next(t for t in texts
                                                                  if NOTICE in t)
        assert len(texts) == 33  # 30 answers, one notice, the parent, the other kid
        metrics = app.metrics
        assert metrics is not None
        assert metrics.registry.get_sample_value(
            "palaver_limit_refusals_total", {"limit": "messagesPerHour"}) == 2
        assert metrics.registry.get_sample_value(
            "palaver_messages_refused_total", {"channel": "telegram", "reason": "limit"}) == 2
    finally:
        await app.stop()
