"""The budget cut: one message, or one turn's batch, never goes to a model beyond its
prompt budget; what was cut is said in a note the model reads."""

from __future__ import annotations

import io
import re

from PIL import Image

from bridge.conversation import ConversationCore
from bridge.envelope import ChatAddress, ChatKind, MediaKind
from bridge.media import MediaStore
from bridge.models.base import ImagePart, TextPart
from bridge.models.router import ModelRouter
from bridge.prompt import (
    IMAGE_TOO_LONG,
    build_request,
    current_limit,
    estimate_parts,
    estimate_request,
    estimate_tokens,
    image_tokens,
    prompt_budget,
    summary_token_cap,
)
from bridge.store import Store
from bridge.store.records import HistoryTurn, MessageKind, MessageStatus, StoredMessage
from tests.core.helpers import RecordingChannel, dm, make_config
from tests.fakes.model_server import FakeModelServer

NOTE = re.compile(r"\[message truncated: ([\d,]+) characters, only the first ([\d,]+) shown\]")
LEFT_OUT = re.compile(r"\[(\d+) earlier messages? in this batch left out: too long\]")


def _msg(i: int, text: str, media=(), *, name: str = "Ann") -> StoredMessage:
    return StoredMessage(
        id=i, direction="in", role="user", kind=MessageKind.CHAT, session_key="k",
        session_id=1, turn_id=None, address=ChatAddress("telegram", "default", "1",
                                                        ChatKind.DIRECT),
        platform_message_id=str(i), sender_id="1", sender_name=name, mentioned=False,
        text=text, media=tuple(media), quoted=None, status=MessageStatus.PROCESSING,
        reason=None, model_ref=None, reply_to_message_id=None, delivered=False,
        created_at=float(i))


def _text(parts) -> str:
    return "".join(p.text for p in parts if isinstance(p, TextPart))


def _jpeg(size) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (90, 120, 200)).save(buf, "JPEG")
    return buf.getvalue()


async def test_a_long_message_is_cut_to_the_budget_with_a_note():
    model = make_config().model("local/small")  # 32000 window, 1000 max tokens
    text = "start " + "word " * 80_000 + "the end"  # ~400k characters
    built = await build_request(model=model, instructions="You are Palaver.", summary=None,
                                history=[], current=[_msg(1, text)], group=False)
    assert estimate_request(built.request) <= built.budget == prompt_budget(model)
    assert built.prompt_tokens <= current_limit(model, "You are Palaver.")
    shown = _text(built.request.turns[-1].parts)
    assert shown.startswith("start word word")
    assert "the end" not in shown
    total, first = NOTE.search(shown).groups()
    assert total == f"{len(text):,}"
    kept = int(first.replace(",", ""))
    assert shown.startswith(text[:kept]) and kept > len(text) // 5  # most of the room used
    assert shown.endswith(NOTE.search(shown).group(0))


async def test_a_cut_message_leaves_room_for_the_summary_and_some_history():
    model = make_config().model("local/small")
    history = [HistoryTurn(1, (_msg(1, "my name is Ann"),), "hello Ann")]
    built = await build_request(model=model, instructions=None, summary="Ann likes tea.",
                                history=history, current=[_msg(2, "x" * 400_000)],
                                group=False)
    texts = [_text(t.parts) for t in built.request.turns]
    assert "Ann likes tea." in texts[0]
    assert built.included_turn_ids == (1,)  # the short history still fits
    assert estimate_request(built.request) <= built.budget
    # The cut is what proactive compaction plans with (turn.py): it stays in budget too.
    assert built.fixed_tokens + summary_token_cap(model) <= built.budget


async def test_a_batch_keeps_the_newest_messages_whole_and_says_what_was_left_out():
    model = make_config().model("local/small")
    batch = [_msg(i, f"message {i}: " + "abcd " * 800) for i in range(50)]  # 50 x 4 KB
    built = await build_request(model=model, instructions=None, summary=None, history=[],
                                current=batch, group=False)
    assert estimate_request(built.request) <= built.budget
    shown = _text(built.request.turns[-1].parts)
    left_out = int(LEFT_OUT.match(shown).group(1))
    assert 0 < left_out < 49
    # The newest messages are there whole, in order; the oldest kept may be shortened.
    whole = [m for m in batch if m.text in shown]
    assert [m.id for m in whole] == list(range(50 - len(whole), 50))
    partial = NOTE.search(shown)
    assert len(whole) == 50 - left_out - (1 if partial else 0)
    if partial:
        assert f"message {left_out}: abcd" in shown
    assert f"message {left_out - 1}:" not in shown


async def test_the_newest_message_of_a_batch_is_kept_before_older_ones():
    model = make_config().model("local/small")
    batch = [_msg(1, "an older question"), _msg(2, "y" * 300_000)]
    built = await build_request(model=model, instructions=None, summary=None, history=[],
                                current=batch, group=False)
    shown = _text(built.request.turns[-1].parts)
    assert estimate_request(built.request) <= built.budget
    assert shown.startswith("[1 earlier message in this batch left out: too long]\n\nyyy")
    assert "an older question" not in shown and NOTE.search(shown)


async def test_images_count_in_the_cut(tmp_path):
    config = make_config(tmp_path)
    model = config.model("local/big")  # vision, 64000 window
    store = MediaStore(tmp_path / "media")
    photo = await store.put(_jpeg((1568, 1176)), kind=MediaKind.IMAGE, mime="image/jpeg")
    built = await build_request(model=model, instructions=None, summary=None, history=[],
                                current=[_msg(1, "z" * 400_000, [photo])], group=False,
                                media_store=store, settings=config.agents.defaults)
    parts = built.request.turns[-1].parts
    images = [p for p in parts if isinstance(p, ImagePart)]
    assert len(images) == 1 and image_tokens(images[0]) > 2000  # the photo is kept
    assert estimate_parts(parts) <= current_limit(model, None)
    assert estimate_request(built.request) <= built.budget
    assert NOTE.search(_text(parts))


async def test_images_that_cannot_fit_a_small_window_become_a_note(tmp_path):
    providers = {"local": {"baseUrl": "http://127.0.0.1:9/v1", "models": [
        {"id": "eye", "contextWindow": 3000, "maxTokens": 1000,
         "input": ["text", "image"]}]}}
    config = make_config(tmp_path, models={"mode": "replace", "providers": providers},
                         agents={"defaults": {"model": "local/eye"}})
    model = config.model("local/eye")
    store = MediaStore(tmp_path / "media")
    photos = [await store.put(_jpeg((1568, 1176 - i)), kind=MediaKind.IMAGE,
                              mime="image/jpeg") for i in range(2)]  # ~2459 tokens each
    built = await build_request(model=model, instructions=None, summary=None, history=[],
                                current=[_msg(1, "what are these?", photos)], group=False,
                                media_store=store, settings=config.agents.defaults)
    parts = built.request.turns[-1].parts
    assert not any(isinstance(p, ImagePart) for p in parts)
    text = _text(parts)
    assert text.count(IMAGE_TOO_LONG) == 2 and "what are these?" in text
    assert not NOTE.search(text)  # the text itself was not cut
    assert estimate_request(built.request) <= built.budget


def _wire_text(body: dict) -> str:
    out = []
    for m in body["messages"]:
        content = m["content"]
        out.append(content if isinstance(content, str)
                   else "".join(p.get("text", "") for p in content))
    return "\n".join(out)


async def _through_the_model_server(tmp_path, inbound: list, *, window: int = 32000):
    """Store ``inbound`` (as a burst that arrived while Palaver was down), start a core
    with the real router against the fake model server, and return what it received."""
    async with FakeModelServer() as server:
        providers = {"fake": {"baseUrl": server.base_url, "api": "openai-completions",
                              "apiKey": "k", "models": [
                                  {"id": "m", "contextWindow": window, "maxTokens": 1000}]}}
        config = make_config(tmp_path, models={"mode": "replace", "providers": providers},
                             agents={"defaults": {"model": "fake/m"}})
        store = await Store.open(tmp_path / "palaver.db")
        router = ModelRouter(lambda: config)
        channel = RecordingChannel()
        core = ConversationCore(store, lambda: config, router, channels=[channel])
        try:
            for msg in inbound:
                await store.record_inbound(msg)
            await channel.start(core)
            await core.start()
            await core.wait_idle()
        finally:
            await core.stop(grace=1)
            await router.aclose()
            await store.close()
    return config.model("fake/m"), server.requests, channel.texts()


async def test_a_400k_message_reaches_the_model_within_its_budget(tmp_path):
    text = "Please read this. " + "lorem ipsum dolor " * 22_300  # ~400k characters
    model, requests, sent = await _through_the_model_server(tmp_path, [dm(text)])
    assert len(requests) == 1 and len(sent) == 1
    assert sent[0].startswith("echo: Please read this.")  # answered, not an apology
    received = _wire_text(requests[0].json)
    assert estimate_tokens(received) <= prompt_budget(model)
    total, _shown = NOTE.search(received).groups()
    assert total == f"{len(text):,}"


async def test_a_batch_of_fifty_4k_messages_reaches_the_model_within_its_budget(tmp_path):
    burst = [dm(f"part {i}: " + "data " * 820) for i in range(50)]
    model, requests, sent = await _through_the_model_server(tmp_path, burst)
    assert len(requests) == 1 and len(sent) == 1  # one turn, answered
    received = _wire_text(requests[0].json)
    assert estimate_tokens(received) <= prompt_budget(model)
    left_out = int(LEFT_OUT.search(received).group(1))
    assert burst[-1].text in received  # the newest message whole
    assert f"part {left_out - 1}:" not in received


async def test_the_turns_around_a_long_message_stay_within_budget(harness):
    """With turn.py's flow: history, the long message, then the next turn — whose history
    holds the long message whole (it is stored whole) and is compacted."""
    def behaviour(ref, req):
        if req.instructions and req.instructions.startswith("You condense"):
            return "SUMMARY: Ann sent a very long text"
        return "ok"

    await harness.start(behaviour=behaviour)
    for i in range(3):
        await harness.say(dm(f"hello {i}"))
    await harness.say(dm("long " * 80_000))
    await harness.say(dm("did you read it?"))
    assert harness.channel.texts() == ["ok"] * 5  # no apology
    budget = prompt_budget(harness.config.model("local/small"))
    chats = harness.router.chat_calls
    assert all(estimate_request(c.request) <= budget for c in chats)
    assert NOTE.search(chats[3].last_user)
    assert chats[3].user_texts[:3] == ["hello 0", "hello 1", "hello 2"]  # history kept
    assert chats[4].user_texts[0].startswith("[Summary of the earlier conversation]")
    assert chats[4].last_user.endswith("did you read it?")
