"""Every console page and action, against a real App (store, core, recording channel)."""

from __future__ import annotations

import asyncio
import html
import re

from bridge.models.base import ErrorClass, ModelError
from tests.console_web.conftest import BOT_TOKEN
from tests.core.helpers import dm, group


def text_of(body: str) -> str:
    """The page's visible text, roughly (tags dropped, entities decoded)."""
    return html.unescape(re.sub(r"<[^>]+>", " ", body))


async def talk(console, inbound) -> None:
    await console.app.core.accept(inbound)
    await console.app.core.wait_idle()


async def get(console, path: str, status: int = 200) -> str:
    async with console.http.get(console.url + path) as resp:
        body = await resp.text()
        assert resp.status == status, (path, resp.status, body[:500])
        return body


# ----------------------------------------------------------------------------- overview


async def test_overview_shows_channels_models_and_activity(console):
    await console.login()
    await talk(console, group("hello", chat="-1001"))
    page = text_of(await get(console, "/"))
    assert "telegram" in page and "connected" in page
    assert "local/small" in page and "backup/m" in page
    assert "Pending messages" in page
    assert re.search(r"Turns \(1 h\)\s+1\b", page)


async def test_overview_fallback_and_last_error_counted(console):
    await console.login()

    def behaviour(ref, req):
        if ref == "local/small":
            raise ModelError(ErrorClass.UNREACHABLE, "connection refused")
        return "from backup"

    console.router.behaviour = behaviour
    await talk(console, group("hello", chat="-1001"))
    page = text_of(await get(console, "/"))
    assert re.search(r"Fallbacks \(1 h\)\s+1\b", page)
    assert "local/small: unreachable connection refused" in " ".join(page.split())


async def test_overview_live_stream_sends_updates(console):
    await console.login()
    async with console.http.get(console.url + "/events") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        first = (await resp.content.readuntil(b"\n\n")).decode()
        assert first.startswith("event: overview\n")
        assert "Turns (1 h)" in first
        await talk(console, group("hello", chat="-1001"))
        async with asyncio.timeout(10):
            second = (await resp.content.readuntil(b"\n\n")).decode()
        assert second.startswith("event: overview\n") and second != first
        lines = [line[len("data: "):] for line in second.splitlines() if line.startswith("data: ")]
        assert re.search(r"Turns \(1 h\)\s+1\b", text_of("\n".join(lines)))


# ----------------------------------------------------------------------------- chats


async def test_chats_lists_and_searches(console):
    await console.login()
    await talk(console, group("hi", chat="-1001"))
    await talk(console, group("hi", chat="-2002"))
    page = text_of(await get(console, "/chats"))
    assert "telegram:-1001" in page and "telegram:-2002" in page
    assert "local/small" in page and "the default (agents.defaults.model)" in page
    page = text_of(await get(console, "/chats?q=-2002"))
    assert "telegram:-2002" in page and "telegram:-1001" not in page
    page = text_of(await get(console, "/chats?q=nothing-like-this"))
    assert "No chat matches" in page


async def test_chat_page_shows_model_source_and_prompt(console):
    await console.login()
    await talk(console, group("hi", chat="-1001"))
    page = text_of(await get(console, "/chat?c=telegram:-1001"))
    assert "local/small" in page and "backup/m" in page
    assert "the default (agents.defaults.model)" in page
    assert "System prompt" in page
    assert "Recent turns" in page


async def test_chat_preview_shows_diff_then_save_applies(console):
    await console.login()
    await talk(console, group("hi", chat="-1001"))
    before = console.config_path.read_text()
    resp = await console.post("/chat/preview", {"target": "telegram:-1001",
                                                "primary": "Big", "fallbacks": ""})
    assert resp.status == 200
    page = await resp.text()
    assert console.config_path.read_text() == before  # a preview writes nothing
    diff = html.unescape(re.search(r'<pre class="diff" id="diff">(.*?)</pre>', page, re.S)[1])
    assert '<span class="add">+    modelByChannel: { telegram: { "-1001": "Big" } },' in diff
    assert BOT_TOKEN not in diff and "[REDACTED]" in diff
    sha = re.search(r'name="sha" value="([0-9a-f]{64})"', page)[1]
    resp = await console.post("/chat/save", {"target": "telegram:-1001", "primary": "Big",
                                             "fallbacks": "", "sha": sha, "clear": ""})
    assert resp.status == 200 and resp.url.path == "/chat"
    assert resp.url.query["c"] == "telegram:-1001"
    page = text_of(await resp.text())
    assert "Saved." in page and "local/big" in page
    after = console.config_path.read_text()
    assert "// the operator's config" in after and "modelByChannel" in after
    # applied at once (reloaded): the next message is answered by the new model
    await talk(console, group("again", chat="-1001"))
    assert console.router.chat_calls[-1].candidates[0] == "local/big"
    # other chats keep the default
    await talk(console, group("other", chat="-2002"))
    assert console.router.chat_calls[-1].candidates[0] == "local/small"


async def test_chat_save_refused_on_concurrent_edit(console):
    await console.login()
    await talk(console, group("hi", chat="-1001"))
    resp = await console.post("/chat/preview", {"target": "telegram:-1001",
                                                "primary": "Big"})
    sha = re.search(r'name="sha" value="([0-9a-f]{64})"', await resp.text())[1]
    # someone else edits the file meanwhile
    other = console.config_path.read_text().replace("// the operator's config",
                                                    "// edited elsewhere")
    console.config_path.write_text(other)
    resp = await console.post("/chat/save", {"target": "telegram:-1001", "primary": "Big",
                                             "sha": sha})
    assert resp.status == 409
    assert "changed since the preview" in text_of(await resp.text())
    assert console.config_path.read_text() == other


async def test_chat_save_without_preview_refused(console):
    await console.login()
    before = console.config_path.read_text()
    resp = await console.post("/chat/save", {"target": "default", "primary": "Big"})
    assert resp.status == 400
    assert console.config_path.read_text() == before


async def test_chat_unknown_model_is_a_clear_error_and_writes_nothing(console):
    await console.login()
    before = console.config_path.read_text()
    resp = await console.post("/chat/preview", {"target": "telegram:-1001",
                                                "primary": "nope/nothing"})
    assert resp.status == 400
    page = text_of(await resp.text())
    assert "nope/nothing" in page
    assert console.config_path.read_text() == before


async def test_channel_and_default_targets(console):
    await console.login()
    page = text_of(await get(console, "/chat?c=channel:telegram"))
    assert "every telegram chat" in page and "not set (the default answers)" in page
    resp = await console.post("/chat/preview", {"target": "channel:telegram",
                                                "primary": "backup/m"})
    body = await resp.text()
    sha = re.search(r'name="sha" value="([0-9a-f]{64})"', body)[1]
    resp = await console.post("/chat/save", {"target": "channel:telegram",
                                             "primary": "backup/m", "sha": sha})
    assert resp.status == 200
    assert console.app.config.channels.telegram.model.primary == "backup/m"
    # the default keeps its fallbacks when only the primary changes
    resp = await console.post("/chat/preview", {"target": "default", "primary": "local/big"})
    sha = re.search(r'name="sha" value="([0-9a-f]{64})"', await resp.text())[1]
    resp = await console.post("/chat/save", {"target": "default", "primary": "local/big",
                                             "sha": sha})
    assert resp.status == 200
    d = console.app.config.agents.defaults.model
    assert (d.primary, d.fallbacks) == ("local/big", ("backup/m",))


async def test_chat_clear_removes_the_pin(console):
    await console.login()
    await talk(console, group("hi", chat="-1001"))
    for action in ("set", "clear"):
        data = {"target": "telegram:-1001", "primary": "Big", "action": action}
        resp = await console.post("/chat/preview", data)
        body = await resp.text()
        sha = re.search(r'name="sha" value="([0-9a-f]{64})"', body)[1]
        clear = re.search(r'name="clear" value="([^"]*)"', body)[1]
        resp = await console.post("/chat/save", {**data, "sha": sha, "clear": clear})
        assert resp.status == 200
    assert "-1001" not in console.config_path.read_text()
    assert console.app.config.channels.modelByChannel.get("telegram", {}) == {}


async def test_unknown_chat_target_404(console):
    await console.login()
    await get(console, "/chat?c=not-a-chat", status=404)


# ----------------------------------------------------------------------------- turns


async def test_turns_show_attempts_tokens_and_no_text_by_default(console):
    await console.login()

    def behaviour(ref, req):
        if ref == "local/small":
            raise ModelError(ErrorClass.RATE_LIMITED, "slow down")
        return "SECRET-REPLY-TEXT"

    console.router.behaviour = behaviour
    await talk(console, group("PRIVATE-USER-TEXT", chat="-1001"))
    page = text_of(await get(console, "/turns"))
    assert "telegram:-1001" in page and "answered" in page
    assert "local/small: rate_limited" in page and "backup/m: answered" in page
    assert "PRIVATE-USER-TEXT" not in page and "SECRET-REPLY-TEXT" not in page
    assert "logMessageText" in page


async def test_turns_show_text_with_log_message_text(console):
    await console.login()
    text = console.config_path.read_text().replace(
        "health: {enabled: false},", "health: {enabled: false}, logging: {logMessageText: true},")
    console.config_path.write_text(text)
    await console.live.reload()
    assert console.app.config.logging.logMessageText
    await talk(console, group("PRIVATE-USER-TEXT", chat="-1001"))
    page = text_of(await get(console, "/turns?chat=telegram:-1001"))
    assert "In:  PRIVATE-USER-TEXT" in page and "Out:  echo: Bob: PRIVATE-USER-TEXT" in page


# ----------------------------------------------------------------------------- models


async def test_models_page_and_probe_now(console):
    await console.login()
    page = text_of(await get(console, "/models"))
    assert "local/small" in page and "Big" in page and "openai-completions" in page
    assert "Probe now" in page
    resp = await console.post("/models/probe", {})
    assert resp.status == 200 and str(resp.url).endswith("/models")
    page = text_of(await resp.text())
    assert "Probed: see the problems below." in page
    assert re.search(r"local/small\s+local\s+\S", page)


# ----------------------------------------------------------------------------- pairing


async def test_pairing_approve_tells_the_requester(console):
    await console.login()
    await talk(console, dm("let me in", sender="555", name="Eve"))
    (request,) = await console.app.store.pending_pairings()
    page = text_of(await get(console, "/pairing"))
    assert request.code in page and "Eve (555)" in page
    sent_before = len(console.channel.sent)
    resp = await console.post("/pairing/approve", {"channel": "telegram", "code": request.code})
    assert resp.status == 200 and str(resp.url).endswith("/pairing")
    page = text_of(await resp.text())
    assert "Approved 555 (Eve) on telegram; they were told." in page
    await console.app.core.wait_idle()
    notice = console.channel.sent[sent_before:]
    assert [o.address.chat_id for o in notice] == ["555"]
    assert "approved" in notice[0].text
    assert await console.app.store.is_approved("telegram", ["555"])
    assert await console.app.store.pending_pairings() == []


async def test_pairing_deny_tells_the_requester_and_withdraws_the_code(console):
    await console.login()
    await talk(console, dm("let me in", sender="556", name="Mal"))
    (request,) = await console.app.store.pending_pairings()
    resp = await console.post("/pairing/deny", {"channel": "telegram", "code": request.code})
    page = text_of(await resp.text())
    assert "Declined 556 (Mal)" in page
    await console.app.core.wait_idle()
    assert console.channel.sent[-1].text.startswith("The operator declined")
    assert await console.app.store.pending_pairings() == []
    assert not await console.app.store.is_approved("telegram", ["556"])


async def test_pairing_unknown_code(console):
    await console.login()
    resp = await console.post("/pairing/approve", {"channel": "telegram", "code": "NOPE"})
    assert "No pending, unexpired code 'NOPE'" in text_of(await resp.text())


# ----------------------------------------------------------------------------- usage, config


async def test_usage_page(console):
    await console.login()
    await talk(console, group("hi", chat="-1001"))
    page = text_of(await get(console, "/usage"))
    assert "Per chat" in page and "Per model" in page and "Tokens per day" in page
    assert "local/small" in page
    assert "1 model calls" in page
    body = await get(console, "/usage?days=7")
    assert "<svg" in body and "<rect" in body


async def test_config_page_masks_secrets(console):
    await console.login()
    page = text_of(await get(console, "/config"))
    assert '"apiKey": "***"' in page and "local/small" in page
    assert str(console.config_path) in page


async def test_logout_ends_the_session(console):
    await console.login()
    resp = await console.post("/logout", {})
    assert resp.status == 200  # the login page
    await get(console, "/", status=401)


async def test_topic_target_pins_the_topic_only(console):
    await console.login()
    await talk(console, group("hi", chat="-1001", thread="7"))
    page = text_of(await get(console, "/chats"))
    assert "telegram:-1001:topic:7" in page
    page = text_of(await get(console, "/chat?c=telegram:-1001:topic:7"))
    assert "topic" in page and "local/small" in page
    data = {"target": "telegram:-1001:topic:7", "primary": "backup/m"}
    resp = await console.post("/chat/preview", data)
    body = await resp.text()
    assert "-1001:topic:7" in html.unescape(body)
    sha = re.search(r'name="sha" value="([0-9a-f]{64})"', body)[1]
    resp = await console.post("/chat/save", {**data, "sha": sha})
    assert resp.status == 200
    await talk(console, group("in the topic", chat="-1001", thread="7"))
    assert console.router.chat_calls[-1].candidates[0] == "backup/m"
    await talk(console, group("in the group", chat="-1001"))
    assert console.router.chat_calls[-1].candidates[0] == "local/small"
