"""Chat commands and the precedence of per-channel, per-chat and /model choices."""

from __future__ import annotations

from bridge.commands import parse_command
from bridge.models.base import ErrorClass, ModelError
from tests.core.helpers import dm, group, make_config


def test_parse_command():
    assert parse_command("/model Big") == ("model", "Big")
    assert parse_command("/status@palaver_bot") == ("status", "")
    assert parse_command("/Model@bot  local/big ") == ("model", "local/big")
    assert parse_command("/etc/passwd is a file") is None
    assert parse_command("hello /new") is None
    assert parse_command("/") is None


async def _last(harness, text, **kw):
    await harness.say(dm(text, **kw))
    return harness.channel.texts()[-1]


async def test_commands_never_reach_the_model(harness):
    await harness.start()
    for text in ("/help", "/status", "/models", "/model", "/new", "/unknown"):
        await harness.say(dm(text))
    assert harness.router.calls == []
    help_text, *_rest, unknown = harness.channel.texts()
    for name in ("/new", "/model", "/models", "/status", "/help"):
        assert name in help_text
    assert "Unknown command /unknown" in unknown


async def test_new_and_reset_start_a_fresh_session(harness):
    await harness.start()
    await harness.say(dm("remember 7"))
    assert "new conversation" in await _last(harness, "/new")
    await harness.say(dm("what number?"))
    assert harness.router.calls[-1].user_texts == ["what number?"]  # history forgotten
    await harness.say(dm("second"))
    assert harness.router.calls[-1].user_texts == ["what number?", "second"]
    await harness.say(dm("/reset@palaver_bot"))
    await harness.say(dm("third"))
    assert harness.router.calls[-1].user_texts == ["third"]


async def test_model_choice_is_validated_persisted_and_cleared(harness):
    await harness.start()
    shown = await _last(harness, "/model")
    assert "local/small" in shown and "config" in shown and "Big (local/big)" in shown
    assert "Unknown model" in await _last(harness, "/model nosuch/thing")
    assert "now uses Big (local/big)" in await _last(harness, "/model big")
    await harness.say(dm("hi"))
    call = harness.router.calls[-1]
    assert call.candidates == ["local/big", "local/small", "backup/m"]
    # Persisted: a restarted core still uses it; other chats do not.
    await harness.stop()
    await harness.start()
    await harness.say(dm("after restart"))
    assert harness.router.calls[-1].candidates[0] == "local/big"
    await harness.say(dm("other chat", sender="43"))
    assert harness.router.calls[-1].candidates[0] == "local/small"
    assert "configured model again" in await _last(harness, "/model default")
    await harness.say(dm("back"))
    assert harness.router.calls[-1].candidates[0] == "local/small"


async def test_models_lists_every_model_marking_current(harness):
    await harness.start()
    text = await _last(harness, "/models")
    assert "→ local/small" in text
    assert "• local/big (alias Big, images)" in text and "backup/m" in text


async def test_status_reports_model_fallback_and_context(harness):
    def behaviour(ref, req):
        if ref == "local/small":
            raise ModelError(ErrorClass.TIMEOUT, "first token timeout")
        return "from backup"

    await harness.start(behaviour=behaviour)
    assert "none yet" in await _last(harness, "/status")
    await harness.say(dm("hello"))
    status = await _last(harness, "/status")
    assert "Model: local/small (config)" in status
    assert "Last answer: backup/m" in status
    assert "fallback: local/small: timeout" in status
    assert "Context used: ~" in status and "of 32,000 tokens" in status


async def test_model_precedence_channel_group_chat_choice_override(harness):
    harness.config = make_config(
        harness.tmp_path,
        channels={"telegram": {
            "dmPolicy": "open", "allowFrom": ["*"], "groupPolicy": "allowlist",
            "model": "backup/m",
            "groups": {"-100": {"model": {"primary": "local/big"}}, "*": {}},
            "direct": {"42": {"model": "local/small"}}}})
    await harness.start()

    async def primary(inbound) -> str:
        await harness.say(inbound)
        return harness.router.calls[-1].candidates[0]

    assert await primary(dm("channel level", sender="9")) == "backup/m"
    assert await primary(dm("direct override", sender="42")) == "local/small"
    assert await primary(group("group override", chat="-100")) == "local/big"
    assert await primary(group("wildcard group -> channel", chat="-5")) == "backup/m"
    # A selection given as a bare string has no fallbacks of its own.
    assert harness.router.calls[-1].candidates == ["backup/m"]
    # /model in the group outranks the group's config; only for that group.
    await harness.say(group("/model Backup", chat="-100"))
    assert await primary(group("chosen", chat="-100")) == "backup/m"
    # ... and the configured candidates follow the chat's choice as fallbacks.
    assert harness.router.calls[-1].candidates == ["backup/m", "local/big"]
    assert await primary(group("other group", chat="-5")) == "backup/m"
    # A session override (palaver chat --model) outranks the /model choice.
    key = str(group("x", chat="-100").session_key)
    harness.core.set_model_override(key, "local/small")
    assert await primary(group("override", chat="-100")) == "local/small"
    status = await _last(harness, "/status", sender="9")
    assert "Model: Backup (backup/m) (config)" in status


async def test_command_in_a_batch_keeps_order(harness):
    import asyncio

    gate = asyncio.Event()

    async def behaviour(ref, req):
        await gate.wait()
        return "answer to " + req.turns[-1].parts[0].text

    await harness.start(behaviour=behaviour)
    core = harness.core
    await core.accept(dm("q1"))
    await asyncio.sleep(0.05)
    await core.accept(dm("q2"))
    await core.accept(dm("/model big"))
    await core.accept(dm("q3"))
    gate.set()
    await core.wait_idle()
    texts = harness.channel.texts()
    assert texts[0] == "answer to q1" and texts[1].startswith("answer to")
    assert "q2" in texts[1] and "now uses" in texts[2] and "q3" in texts[3]
    assert harness.router.calls[-1].candidates[0] == "local/big"


def test_one_command_table_serves_the_menu_help_and_handlers():
    from bridge.commands import COMMAND_MENU, COMMANDS, help_text

    names = [c.name for c in COMMANDS]
    assert len(names) == len(set(names))
    menu = [name for name, _text in COMMAND_MENU]
    assert menu == ["new", "reset", "model", "models", "status", "usage", "stop", "help"]
    assert all(text and len(text) <= 256 for _name, text in COMMAND_MENU)  # Bot API limit
    listed = [line.split(" — ")[0][1:] for line in help_text().splitlines()[1:]]
    # /help and the menu agree: every listed command is in the menu, and every menu
    # entry is listed or named in another's line (/reset under /new).
    assert set(listed) <= set(menu)
    assert all(name in listed or f"/{name}" in help_text() for name in menu)


async def test_start_answers_like_help(harness):
    await harness.start()
    assert await _last(harness, "/start") == await _last(harness, "/help")
