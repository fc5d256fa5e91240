"""End to end: FakeBotAPI <- real PTB Application <- App (store, core, router) -> FakeModelServer."""

from __future__ import annotations

import asyncio
import re

import pytest

from bridge.config.schema import Config
from bridge.formatting import utf16_len
from channels.telegram import TelegramChannel
from tests.fakes.telegram_api import parse_telegram_html

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32
BOT = "palaver_test_bot"

# Any PTB deprecation our code triggers fails the test (without $PTB_TIMEDELTA).
pytestmark = pytest.mark.filterwarnings("error::telegram.warnings.PTBDeprecationWarning")


@pytest.fixture(autouse=True)
def _no_ptb_timedelta(monkeypatch):
    """Run as a default install does (PTB 22 then warns on int time periods)."""
    monkeypatch.delenv("PTB_TIMEDELTA", raising=False)


@pytest.fixture(autouse=True)
def _fast_polls(monkeypatch):
    monkeypatch.setattr(TelegramChannel, "poll_timeout", 1)
    monkeypatch.setattr(TelegramChannel, "typing_delay", 0)  # the fake model answers at once


def make_config(tmp_path, fake, models, *, primary="local/text", telegram=None) -> Config:
    telegram_section = {"botToken": fake.token, "apiRoot": fake.url,
                        "dmPolicy": "open", "allowFrom": ["*"], "groupPolicy": "open",
                        **(telegram or {})}
    return Config.model_validate({
        "dataDir": str(tmp_path / "data"),
        "models": {"mode": "replace", "providers": {"local": {
            "baseUrl": models.url_for("openai-completions"), "api": "openai-completions",
            "models": [{"id": "text", "contextWindow": 32000, "maxTokens": 1000},
                       {"id": "vision", "contextWindow": 32000, "maxTokens": 1000,
                        "input": ["text", "image"]}],
        }}},
        "agents": {"defaults": {"model": {"primary": primary}}},
        "channels": {"telegram": telegram_section},
        "health": {"enabled": False},
    })


def _user_content(request) -> list:
    messages = request.json["messages"]
    content = [m for m in messages if m["role"] == "user"][-1]["content"]
    return content if isinstance(content, list) else [{"type": "text", "text": content}]


@pytest.mark.parametrize("streaming", [None, "off"])
async def test_private_round_trip(fake, models, tmp_path, run_app, streaming):
    models.reply("Hello **Ann**, nice to meet you.")
    telegram = {"streaming": streaming} if streaming else None
    app = await run_app(make_config(tmp_path, fake, models, telegram=telegram))
    assert (await app.health())["channels"]
    fake.push_text(1001, fake.user(1001, "Ann"), "hi there")
    (sent,) = await fake.wait_for_sent(1, timeout=10)
    assert sent.chat_id == 1001 and sent.parse_mode == "HTML"
    assert sent.text == "Hello <b>Ann</b>, nice to meet you."
    assert models.requests[-1].last_user_text().endswith("hi there")
    if streaming == "off":
        assert fake.actions and fake.actions[0].params["action"] == "typing"
    else:
        # The default in a direct chat: a draft ("Thinking…", then the answer so far)
        # replaces "typing…"; whatever it showed is the start of the answer.
        assert fake.actions == []
        final = "Hello **Ann**, nice to meet you."
        assert all(final.startswith(d.params.get("text", "")) for d in fake.drafts)


@pytest.mark.parametrize("style", ["field", "inline"])
async def test_reasoning_never_sent(fake, models, tmp_path, run_app, style):
    if style == "field":
        models.reply("The answer is 4.", reasoning="SECRET chain of thought")
    else:
        models.reply("The answer is 4.", reasoning="SECRET chain of thought", inline_think=True)
    await run_app(make_config(tmp_path, fake, models))
    fake.push_text(1001, 1001, "2+2?")
    (sent,) = await fake.wait_for_sent(1, timeout=10)
    assert sent.text == "The answer is 4."
    await asyncio.sleep(0.2)
    assert all("SECRET" not in s.text and "think" not in s.text for s in fake.sent)


@pytest.mark.parametrize("model", ["vision", "text"])
async def test_photo_reaches_vision_model_as_image(fake, models, tmp_path, run_app, model):
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(buf, format="JPEG")
    models.reply("A red square.")
    await run_app(make_config(tmp_path, fake, models, primary=f"local/{model}"))
    fake.push_photo(1001, 1001, buf.getvalue(), caption="what is this?")
    await fake.wait_for_sent(1, timeout=10)
    parts = _user_content(models.requests[-1])
    images = [p for p in parts if p.get("type") == "image_url"]
    text = " ".join(p.get("text", "") for p in parts if p.get("type") == "text")
    assert "what is this?" in text
    if model == "vision":
        assert len(images) == 1 and images[0]["image_url"]["url"].startswith("data:image/")
    else:
        assert images == [] and "[image" in text


async def test_long_reply_split(fake, models, tmp_path, run_app):
    prose = " ".join(f"Sentence {i} of the explanation." for i in range(150))
    code = "\n".join(f"    total += item_{i}  # <{i}>" for i in range(200))
    reply = f"## Answer\n\n{prose}\n\n```python\ndef f():\n{code}\n```\n\nThat is all."
    assert len(reply) >= 9000
    models.reply(reply, chunks=20)
    await run_app(make_config(tmp_path, fake, models))
    fake.push_text(1001, 1001, "explain")
    await fake.wait_for_sent(3, timeout=10)
    await asyncio.sleep(0.3)
    sent = fake.sent
    assert 3 <= len(sent) <= 5
    code_lines: list[str] = []
    for s in sent:
        assert utf16_len(s.text) <= 4000
        parse_telegram_html(s.text)
        for body in re.findall(r'<pre><code class="language-python">(.*?)</code></pre>',
                               s.text, re.S):
            code_lines.extend(body.split("\n"))
    assert len([s for s in sent if "<pre>" in s.text]) >= 2
    assert code_lines == ["def f():"] + [
        line.replace("<", "&lt;").replace(">", "&gt;") for line in code.split("\n")]


async def test_entity_rejection_and_rate_limit_in_a_turn(fake, models, tmp_path, run_app):
    models.reply("**Bold** answer")
    fake.rate_limit("sendMessage", 1, times=1)
    fake.fail_parse_entities(times=1)
    await run_app(make_config(tmp_path, fake, models))
    fake.push_text(1001, 1001, "hi")
    (sent,) = await fake.wait_for_sent(1, timeout=10)
    assert sent.parse_mode is None and sent.text == "Bold answer"
    assert len(fake.calls_to("sendMessage")) == 3


async def test_unknown_sender_gets_pairing_code_only(fake, models, tmp_path, run_app):
    config = make_config(tmp_path, fake, models,
                         telegram={"dmPolicy": "pairing", "allowFrom": []})
    app = await run_app(config)
    fake.push_text(1001, 1001, "let me in")
    (sent,) = await fake.wait_for_sent(1, timeout=10)
    code = re.search(r"pairing code is (\S+)", sent.text)
    assert code, sent.text
    assert sent.parse_mode is None
    await asyncio.sleep(0.3)
    assert len(fake.sent) == 1 and models.requests == []
    # After approval the same sender is answered.
    assert await app.store.approve_pairing("telegram", code.group(1))
    models.reply("Welcome!")
    fake.push_text(1001, 1001, "hello again")
    sent = await fake.wait_for_sent(2, timeout=10)
    assert sent[1].text == "Welcome!"


async def test_group_mention_gating_and_topic(fake, models, tmp_path, run_app):
    config = make_config(tmp_path, fake, models,
                         telegram={"groups": {"*": {"requireMention": True}}})
    await run_app(config)
    group = -100500
    fake.push_text(group, 1001, "chatting among humans", thread_id=42)
    await asyncio.sleep(0.5)
    assert fake.sent == [] and models.requests == []
    models.reply("Topic answer")
    trigger = fake.push_text(group, 1001, f"@{BOT} help here", thread_id=42)
    (sent,) = await fake.wait_for_sent(1, timeout=10)
    assert sent.chat_id == group and sent.thread_id == 42
    assert sent.reply_to_message_id == trigger["message_id"]
    assert sent.text == "Topic answer"
    assert fake.actions[-1].params.get("message_thread_id") == 42


async def test_restart_mid_turn_answered_once(fake, models, tmp_path, run_app):
    config = make_config(tmp_path, fake, models)
    models.hang()
    first = await run_app(config)
    fake.push_text(1001, 1001, "slow question")
    await asyncio.wait_for(_until(lambda: len(models.requests) >= 1), 10)
    await first.stop(grace=0)
    assert fake.sent == []
    assert fake.pending_updates == []  # the update was confirmed: not fetched again
    models.reply("Answer after restart")
    await run_app(config)
    (sent,) = await fake.wait_for_sent(1, timeout=10)
    assert sent.text == "Answer after restart"
    await asyncio.sleep(0.5)
    assert len(fake.sent) == 1
    assert [r.last_user_text() for r in models.requests].count("slow question") >= 1


@pytest.mark.parametrize("crash", ["before storage", "after storage"])
async def test_crash_while_handing_over_answered_once(fake, models, tmp_path, run_app, crash):
    """The process dies while the core takes an update: it is fetched again, answered once.

    "before storage": accept never completes, nothing is stored.  "after storage": the
    inbound is stored (and its turn started) but accept never returns, so the offset was
    never confirmed; the redelivered copy is a duplicate the store drops.
    """
    config = make_config(tmp_path, fake, models)
    if crash == "after storage":
        models.hang()  # the stored turn must not finish before the "crash"
    first = await run_app(config)
    (channel,) = first.channels
    core, reached, dead = first.core, asyncio.Event(), asyncio.Event()
    real_accept = core.accept

    async def accept_then_die(inbound):
        if crash == "after storage":
            await real_accept(inbound)
        reached.set()
        await dead.wait()  # the process dies here (set only if the test fails early)

    core.accept = accept_then_die  # the channel calls sink.accept on this instance
    try:
        fake.push_text(1001, 1001, "important question")
        await asyncio.wait_for(reached.wait(), 10)
        await asyncio.sleep(0.2)
        assert len(fake.pending_updates) == 1  # not confirmed: the core did not return
        # A crash, not a graceful stop: the polling task dies where it is; what remains of
        # the process is then closed (its turn, if any, is cancelled like a killed one's).
        channel._intake.poll_task.cancel()
        await asyncio.wait({channel._intake.poll_task})
    finally:
        dead.set()
    await first.stop(grace=0)
    assert len(fake.pending_updates) == 1  # Telegram still holds it
    assert fake.sent == []
    models.reply("Answer after the crash")
    second = await run_app(config)
    (sent,) = await fake.wait_for_sent(1, timeout=10)
    assert sent.text == "Answer after the crash"
    await asyncio.sleep(0.5)
    assert len(fake.sent) == 1
    assert fake.pending_updates == []
    assert second.core.pending_count() == 0


async def _until(predicate) -> None:
    while not predicate():  # noqa: ASYNC110 - the fake model server has no event
        await asyncio.sleep(0.02)
