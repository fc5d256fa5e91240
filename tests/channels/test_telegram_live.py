"""Live replies end to end: FakeBotAPI <- real PTB <- App -> a slow streaming FakeModelServer.

What the user's screen shows while an answer streams (``FakeBotAPI.screen``): drafts in
private chats, an edited message in edit mode, never reasoning, never two half-answers,
exactly one final answer; and what a 429, a broken stream, a crash and ``/stop`` do to it.
"""

from __future__ import annotations

import asyncio

import pytest

from bridge.config.schema import Config
from bridge.store.records import STOPPED_REASON, MessageStatus
from channels.telegram import TelegramChannel

CHAT = 1001
ANSWER = ("Paris is the capital of France and its largest city, on the Seine, "
          "with about two million people in the city itself.")


@pytest.fixture(autouse=True)
def _quick_channel(monkeypatch):
    monkeypatch.setattr(TelegramChannel, "poll_timeout", 1)
    monkeypatch.setattr(TelegramChannel, "typing_delay", 0.2)  # and the "Thinking…" draft


def make_config(tmp_path, fake, models, *, telegram=None, think_tags="paired",
                fallback=False, interval_ms=500) -> Config:
    telegram_section = {"botToken": fake.token, "apiRoot": fake.url, "dmPolicy": "open",
                        "allowFrom": ["*"], "groupPolicy": "open",
                        "streamingIntervalMs": interval_ms, "ackReaction": "",
                        **(telegram or {})}
    model = {"primary": "local/text"}
    if fallback:
        model["fallbacks"] = ["local/backup"]
    return Config.model_validate({
        "dataDir": str(tmp_path / "data"),
        "models": {"mode": "replace", "providers": {"local": {
            "baseUrl": models.url_for("openai-completions"), "api": "openai-completions",
            "thinkTags": think_tags,
            "models": [{"id": "text", "contextWindow": 32000, "maxTokens": 1000},
                       {"id": "backup", "contextWindow": 32000, "maxTokens": 1000}],
        }}},
        "agents": {"defaults": {"model": model}},
        "channels": {"telegram": telegram_section},
        "health": {"enabled": False},
    })


def _drafts(fake, chat: int = CHAT):
    return [e for e in fake.screen(chat) if e.kind == "draft"]


def _messages(fake, chat: int = CHAT):
    return [e for e in fake.screen(chat) if e.kind == "message"]


async def _final(fake, text: str, timeout: float = 20):  # noqa: ASYNC109
    """Wait until ``text`` is on screen as a message or the edit of one."""
    await fake.wait_until(
        lambda: any(e.text == text for e in fake.screen(CHAT) if e.kind in ("message", "edit")),
        timeout)


async def test_a_draft_streams_the_answer_then_one_final_message(fake, models, tmp_path,
                                                                 run_app):
    models.reply(ANSWER, tokens_per_second=12)  # about two seconds of streaming
    await run_app(make_config(tmp_path, fake, models))
    fake.push_text(CHAT, CHAT, "capital of France?")
    (sent,) = await fake.wait_for_sent(1, timeout=20)
    assert sent.text == ANSWER
    drafts = _drafts(fake)
    texts = [d.text for d in drafts if d.text]
    assert len(texts) >= 2, "the answer was not previewed while it streamed"
    assert len({d.id for d in drafts}) == 1  # one draft_id: the updates animate
    assert all(ANSWER.startswith(t) for t in texts)  # every frame is a prefix of the final
    assert texts == sorted(texts, key=len) and len(set(texts)) == len(texts)  # grows, no dupes
    # The throttle: never two text frames within one streamingIntervalMs (some slack for
    # the requests' own transit).
    moments = [d.t for d in drafts if d.text]
    assert all(b - a >= 0.5 * 0.8 for a, b in zip(moments, moments[1:], strict=False))
    await asyncio.sleep(1.0)
    assert len(fake.sent) == 1 and fake.drafts_after_last_message(CHAT) == []
    assert fake.actions == []  # no "typing…" while the draft shows


async def test_a_cold_model_shows_thinking_kept_alive(fake, models, tmp_path, run_app,
                                                      monkeypatch):
    from bridge.live import LiveReply

    monkeypatch.setattr(LiveReply, "DRAFT_REFRESH_S", 0.6)  # drafts live ~30 s; 20 s refresh
    models.reply("Ready now.", think=2.0)  # a cold load before the first token
    await run_app(make_config(tmp_path, fake, models))
    fake.push_text(CHAT, CHAT, "are you there?")
    (sent,) = await fake.wait_for_sent(1, timeout=20)
    assert sent.text == "Ready now."
    empties = [d for d in _drafts(fake) if d.text == ""]
    assert len(empties) >= 2  # "Thinking…", then refreshed while the model loads
    assert fake.drafts_after_last_message(CHAT) == []


@pytest.mark.parametrize("style", ["inline", "lone-late", "field"])
async def test_no_reasoning_is_ever_shown(fake, models, tmp_path, run_app, style):
    if style == "inline":
        models.reply("The answer is four, as two and two make four.",
                     reasoning="SECRET chain of thought", inline_think=True,
                     tokens_per_second=12)
        tags, final = "auto", "The answer is four, as two and two make four."
    elif style == "lone-late":
        # The template opened <think>; its close arrives seconds into the stream.
        models.reply(["SECRET let me ", "think it ", "over.</think>", "Four ", "it ", "is."],
                     delay=0.6)
        tags, final = "auto", "Four it is."
    else:
        models.reply("The answer is four, as two and two make four.",
                     reasoning="SECRET chain of thought", tokens_per_second=12)
        tags, final = "auto", "The answer is four, as two and two make four."
    await run_app(make_config(tmp_path, fake, models, think_tags=tags))
    fake.push_text(CHAT, CHAT, "2+2?")
    (sent,) = await fake.wait_for_sent(1, timeout=20)
    assert sent.text == final
    seen = fake.visible_texts(CHAT)
    assert not any("SECRET" in t or "think" in t or "over." in t for t in seen), seen
    assert all(final.startswith(t) for t in seen)
    if style != "lone-late":  # the separate reasoning channel or a paired tag: early text
        assert any(t and t != final for t in seen)


async def test_a_429_on_drafts_ends_previews_and_the_final_goes_once(fake, models, tmp_path,
                                                                     run_app):
    models.reply(ANSWER, tokens_per_second=12)
    fake.rate_limit("sendMessageDraft", 1, times=1)
    await run_app(make_config(tmp_path, fake, models))
    fake.push_text(CHAT, CHAT, "capital of France?")
    (sent,) = await fake.wait_for_sent(1, timeout=20)
    assert sent.text == ANSWER
    await asyncio.sleep(0.5)
    assert len(fake.calls_to("sendMessageDraft")) == 1  # the refused one; no more
    assert len(fake.sent) == 1
    assert [c.params.get("action") for c in fake.actions] == ["typing"] * len(fake.actions)


async def test_a_429_on_edits_ends_previews_and_the_final_edit_lands(fake, models, tmp_path,
                                                                     run_app):
    models.reply(ANSWER, tokens_per_second=10)
    fake.rate_limit("editMessageText", 1, times=1)
    await run_app(make_config(tmp_path, fake, models, telegram={"streaming": "edit"}))
    fake.push_text(CHAT, CHAT, "capital of France?")
    await _final(fake, ANSWER)
    await asyncio.sleep(0.5)
    (preview,) = _messages(fake)  # the preview became the answer
    assert preview.text.endswith(" …")
    edits = fake.edits
    assert len(edits) == 1 and edits[0].params["message_id"] == preview.id  # only the final
    assert len(fake.sent) == 1


@pytest.mark.parametrize("mode", ["draft", "edit"])
async def test_a_fallback_after_a_broken_stream_starts_the_preview_again(
        fake, models, tmp_path, run_app, mode):
    # A slow stream that closes its connection after six chunks (models.drop, slowed).
    models.reply("First model words that will never finish at all", chunks=7,
                 drop_after=6, delay=0.3)
    models.reply("Backup model answer that is long enough to be shown here.",
                 tokens_per_second=8)
    telegram = {"streaming": "edit"} if mode == "edit" else None
    await run_app(make_config(tmp_path, fake, models, telegram=telegram, fallback=True))
    fake.push_text(CHAT, CHAT, "question")
    final = "Backup model answer that is long enough to be shown here."
    await _final(fake, final)
    await asyncio.sleep(0.5)
    seen = fake.visible_texts(CHAT)
    assert any("First model" in t for t in seen), "the broken stream was never previewed"
    # At no moment were both half-answers on screen.
    for state in fake.snapshots(CHAT):
        assert not (any("First model" in t for t in state)
                    and any("Backup model" in t for t in state)), state
    if mode == "draft":
        drafts = _drafts(fake)
        first_ids = {d.id for d in drafts if "First model" in d.text}
        backup_ids = {d.id for d in drafts if "Backup model" in d.text}
        assert first_ids and backup_ids and not first_ids & backup_ids  # a new draft_id
        assert len(fake.sent) == 1
    else:
        (message,) = _messages(fake)
        texts = [e.text for e in fake.screen(CHAT) if e.id == message.id]
        # The same message: the first model's text, then "…" or straight away the
        # fallback's text (whatever was there when the edit could go), never back.
        restart = next(i for i, t in enumerate(texts) if "First model" not in t)
        assert restart > 0 and all("First model" not in t for t in texts[restart:])
        assert all(t == "…" or final.startswith(t.removesuffix(" …"))
                   for t in texts[restart:])
        assert texts[-1] == final and len(fake.sent) == 1


async def test_crash_mid_stream_in_edit_mode_removes_the_stale_preview(fake, models, tmp_path,
                                                                       run_app):
    config = make_config(tmp_path, fake, models, telegram={"streaming": "edit"})
    models.reply("A slow answer that the crash interrupts before it ends, sadly.",
                 chunks=8, stall_after=5)
    first = await run_app(config)
    fake.push_text(CHAT, CHAT, "slow question")
    await fake.wait_until(lambda: _messages(fake), 20)
    (stale,) = _messages(fake)
    await first.stop(grace=0)
    models.reply("Answer after restart.")
    second = await run_app(config)
    await _final(fake, "Answer after restart.")
    await fake.wait_until(lambda: (CHAT, stale.id) in fake.deleted, 10)
    await asyncio.sleep(0.5)
    answers = [e for e in fake.screen(CHAT) if e.kind in ("message", "edit")
               and e.text == "Answer after restart."]
    assert len(answers) == 1
    assert await second.store.stale_previews([("telegram", "default")]) == []


async def test_crash_mid_stream_in_draft_mode_answers_once_after_the_restart(
        fake, models, tmp_path, run_app):
    config = make_config(tmp_path, fake, models)
    models.reply("A slow answer that the crash interrupts before it ends, sadly.",
                 chunks=8, stall_after=5)
    first = await run_app(config)
    fake.push_text(CHAT, CHAT, "slow question")
    await fake.wait_until(lambda: any(d.text for d in _drafts(fake)), 20)
    await first.stop(grace=0)
    assert fake.sent == []
    models.reply("Answer after restart.")
    await run_app(config)
    (sent,) = await fake.wait_for_sent(1, timeout=20)
    assert sent.text == "Answer after restart."
    await asyncio.sleep(0.5)
    assert len(fake.sent) == 1 and fake.drafts_after_last_message(CHAT) == []


async def test_a_final_edit_that_did_not_land_is_edited_again_not_resent(fake, models, tmp_path,
                                                                        run_app):
    config = make_config(tmp_path, fake, models, telegram={"streaming": "edit"})
    models.reply(ANSWER, tokens_per_second=10)
    # The final chunk 0 (HTML) fails for a passing reason; the previews (plain) do not.
    healthy = False
    fake.fail("editMessageText", 502, "Bad Gateway", times=100,
              when=lambda p: bool(p.get("parse_mode")) and not healthy)
    first = await run_app(config)
    fake.push_text(CHAT, CHAT, "capital of France?")
    await fake.wait_until(
        lambda: any(c.params.get("parse_mode") for c in fake.calls_to("editMessageText")), 20)
    await first.stop(grace=0)  # the reply is stored, its chunk 0 not delivered
    healthy = True  # Telegram is healthy again
    await run_app(config)
    await _final(fake, ANSWER)
    await asyncio.sleep(0.5)
    assert len(fake.sent) == 1  # the preview; the answer is its edit, never a new message
    (message,) = _messages(fake)
    assert [e.text for e in fake.screen(CHAT) if e.id == message.id][-1] == ANSWER


async def test_stop_mid_stream_ends_the_answer_and_says_stopped(fake, models, tmp_path,
                                                                run_app):
    models.reply(ANSWER, tokens_per_second=4)  # about six seconds
    app = await run_app(make_config(tmp_path, fake, models))
    fake.push_text(CHAT, CHAT, "tell me about Paris")
    await fake.wait_until(lambda: any(d.text for d in _drafts(fake)), 20)
    (request,) = models.requests
    fake.push_text(CHAT, CHAT, "/stop")
    (sent,) = await fake.wait_for_sent(1, timeout=20)
    assert sent.text == "Stopped."
    await asyncio.wait_for(request.closed.wait(), 10)  # the model server saw the hang-up
    written = request.chunks_written
    await asyncio.sleep(0.5)
    assert request.chunks_written == written  # and stopped writing
    screen = fake.screen(CHAT)
    kinds = [e.kind for e in screen if e.kind != "reaction"]
    assert kinds[-2:] == ["draft_cleared", "message"]  # the draft went with "Stopped."
    assert all(ANSWER.startswith(e.text) for e in screen if e.kind == "draft")
    msgs = await app.store.messages_for(f"telegram:default:direct:{CHAT}")
    (question,) = [m for m in msgs if m.text == "tell me about Paris"]
    assert question.status is MessageStatus.FAILED and question.reason == STOPPED_REASON
    turn = await app.store.turn(question.turn_id)
    assert turn is not None and turn.reason == STOPPED_REASON
    # The next message is answered normally.
    models.reply("Fine, something else.")
    fake.push_text(CHAT, CHAT, "something else then")
    await fake.wait_for_sent(2, timeout=20)
    assert [s.text for s in fake.sent] == ["Stopped.", "Fine, something else."]


async def test_an_edit_preview_in_a_group_never_floods_and_quotes_the_trigger(
        fake, models, tmp_path, run_app):
    group = -100500
    text = " ".join(f"word{i}" for i in range(60)) + "."
    models.reply(text, tokens_per_second=7)  # about nine seconds of streaming
    fake.flood(True)  # Telegram's per-group limit: 429 beyond it
    config = make_config(tmp_path, fake, models, interval_ms=250,
                         telegram={"groups": {"*": {"requireMention": False,
                                                    "streaming": "edit"}}})
    await run_app(config)
    trigger = fake.push_text(group, 1001, "count for us")
    await fake.wait_until(
        lambda: any(e.text == text for e in fake.screen(group) if e.kind == "edit"), 30)
    assert fake.flooded == []  # 3.5 s between group edits (the 250 ms asked for is raised)
    (preview,) = [e for e in fake.screen(group) if e.kind == "message"]
    (sent,) = fake.sent
    assert sent.reply_to_message_id == trigger["message_id"]  # the preview is chunk 0
    edits = [e for e in fake.screen(group) if e.kind == "edit"]
    assert len(edits) >= 2 and all(e.id == preview.id for e in edits)
    assert all(text.startswith(e.text.removesuffix(" …")) for e in edits)
    # The preview's own updates (the final edit excepted) keep the group interval, with
    # some slack for the requests' transit.
    moments = [preview.t, *(e.t for e in edits[:-1])]
    assert all(b - a >= 3.5 * 0.8 for a, b in zip(moments, moments[1:], strict=False))


async def test_stop_in_edit_mode_deletes_the_partial_message(fake, models, tmp_path, run_app):
    models.reply(ANSWER, tokens_per_second=4)
    app = await run_app(make_config(tmp_path, fake, models, telegram={"streaming": "edit"}))
    fake.push_text(CHAT, CHAT, "tell me about Paris")
    await fake.wait_until(lambda: _messages(fake), 20)
    (preview,) = _messages(fake)
    fake.push_text(CHAT, CHAT, "/stop")
    await fake.wait_until(lambda: [m for m in fake.sent if m.text == "Stopped."], 20)
    assert (CHAT, preview.id) in fake.deleted
    await asyncio.sleep(0.5)
    assert [m.text for m in fake.sent][-1] == "Stopped." and len(fake.sent) == 2
    assert await app.store.stale_previews([("telegram", "default")]) == []
    kinds = [e.kind for e in fake.screen(CHAT) if e.kind != "reaction"]
    assert kinds.index("delete") < len(kinds) - 1 and kinds[-1] == "message"  # then "Stopped."
