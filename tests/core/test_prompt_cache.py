"""The prompt cache: history turns are rendered once, not on every turn, and a cached
prompt is the prompt the uncached builder makes (after /new, compaction, reloads)."""

from __future__ import annotations

import io

import pytest
from PIL import Image

import bridge.media as media_mod
from bridge.envelope import ChatAddress, ChatKind, MediaKind, MediaRef, Quoted
from bridge.media import IMAGE_ALREADY_SEEN, MediaStore
from bridge.models.base import ImagePart, ModelRequest, TextPart
from bridge.prompt import PromptCache, build_request
from bridge.store import Store
from bridge.store.records import HistoryTurn, MessageKind, MessageStatus, StoredMessage
from tests.core.helpers import dm, make_config


def _png(size=(40, 30), color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def user_parts_calls(monkeypatch):
    """Every text ``bridge.media.user_parts`` renders (one call per message)."""
    calls: list[str] = []
    original = media_mod.user_parts

    async def counting(text, media, **kw):
        calls.append(text)
        return await original(text, media, **kw)

    monkeypatch.setattr(media_mod, "user_parts", counting)
    return calls


async def _rebuilt(harness, call) -> ModelRequest:
    """The prompt of the last turn built again without any cache: a second store on the
    same database (no turn cache shared) and ``build_request`` without a PromptCache."""
    store = await Store.open(harness.tmp_path / "palaver.db")
    try:
        key = str(dm("x").session_key)
        session = await store.active_session(key)
        _s, window = await store.session_with_history(session.id)
    finally:
        await store.close()
    *history, current = window.turns
    config = harness.config
    built = await build_request(
        model=config.model(call.ref), instructions=call.request.instructions,
        summary=session.summary, history=history, current=current.user, group=False,
        media_store=harness.core.media, settings=config.agents.defaults)
    return built.request


def _vision_config(tmp_path, **defaults):
    return make_config(tmp_path, agents={"defaults": {
        "model": {"primary": "local/big", "fallbacks": []}, **defaults}})


async def test_each_history_turn_is_rendered_once(harness, user_parts_calls):
    harness.config = _vision_config(harness.tmp_path)
    await harness.start(media=MediaStore(harness.tmp_path / "media"))
    per_turn = []
    rows = []
    for i in range(30):
        before, rows_before = len(user_parts_calls), harness.store.turn_cache.rows_read
        await harness.say(dm(f"message {i}: hello there"))
        per_turn.append(len(user_parts_calls) - before)
        rows.append(harness.store.turn_cache.rows_read - rows_before)
    # The current message, plus the turn answered just before (new to the cache);
    # without the cache turn n would render n messages.
    assert per_turn == [1] + [2] * 29
    # The store reads only the rows of that new turn: its message and its reply.
    assert rows == [0] + [2] * 29
    last = harness.router.calls[-1]
    assert len(last.user_texts) == 30
    assert last.request == await _rebuilt(harness, last)
    # Turn n finds its n - 2 older history turns in the cache.
    assert harness.core.prompt_cache.hits == sum(n - 2 for n in range(2, 31))


async def test_new_session_prompt_holds_no_earlier_turn(harness):
    await harness.start(media=MediaStore(harness.tmp_path / "media"))
    for i in range(3):
        await harness.say(dm(f"before {i}"))
    await harness.say(dm("/new"))
    await harness.say(dm("after 0"))
    await harness.say(dm("after 1"))
    last = harness.router.calls[-1]
    assert last.user_texts == ["after 0", "after 1"]
    assert last.request == await _rebuilt(harness, last)


async def test_prompt_after_compaction_is_the_uncached_one(harness, user_parts_calls):
    providers = {"local": {"baseUrl": "http://127.0.0.1:9/v1", "models": [
        {"id": "small", "contextWindow": 3000, "maxTokens": 1000}]}}
    harness.config = make_config(
        harness.tmp_path, models={"mode": "replace", "providers": providers},
        agents={"defaults": {"model": "local/small", "compaction": {"keepRecentTurns": 2}}})

    def behaviour(ref, req):
        if req.instructions and req.instructions.startswith("You condense"):
            return "SUMMARY of turns"
        return "ok"

    await harness.start(behaviour=behaviour, media=MediaStore(harness.tmp_path / "media"))
    for i in range(14):
        await harness.say(dm(f"turn{i} " + "x" * 600))
        last = harness.router.chat_calls[-1]
        # Every prompt, before and after each compaction, is the uncached one.
        assert last.request == await _rebuilt(harness, last), i
    assert any(c.is_compaction for c in harness.router.calls)
    assert harness.router.chat_calls[-1].user_texts[0].startswith("[Summary of the earlier")
    assert harness.core.prompt_cache.hits > 0


async def test_reloaded_image_settings_render_cached_turns_again(harness, user_parts_calls):
    harness.config = _vision_config(harness.tmp_path, imageHistoryTurns=0)
    media = MediaStore(harness.tmp_path / "media")
    await harness.start(media=media)
    photo = await media.put(_png(), kind=MediaKind.IMAGE, mime="image/png")
    await harness.say(dm("look", media=(photo,)))
    await harness.say(dm("and then"))
    await harness.say(dm("and again"))
    last = harness.router.calls[-1]
    assert last.user_texts[0] == "look\n" + IMAGE_ALREADY_SEEN
    # Seen once without its image, the photo's turn comes from the cache afterwards.
    assert user_parts_calls.count("look") == 2  # current turn 1, then history in turn 2
    assert last.request == await _rebuilt(harness, last)

    # A reload that refuses the photo (too many pixels): rendered again, now the
    # placeholder — not the cached "[image already seen]".
    harness.config = _vision_config(harness.tmp_path, imageHistoryTurns=0,
                                    imageMaxPixels=100)
    await harness.say(dm("smaller please"))
    last = harness.router.calls[-1]
    assert last.user_texts[0] == "look\n" + photo.placeholder()
    assert last.request == await _rebuilt(harness, last)

    # A reload that sends history images again: the photo itself is back.
    harness.config = _vision_config(harness.tmp_path, imageHistoryTurns=10)
    await harness.say(dm("show me"))
    last = harness.router.calls[-1]
    first = last.request.turns[0]
    assert any(isinstance(p, ImagePart) for p in first.parts)
    assert last.request == await _rebuilt(harness, last)

    # The text model renders placeholders; back on the vision model, the cache again.
    harness.core.set_model_override(str(dm("x").session_key), "local/small")
    await harness.say(dm("no eyes"))
    last = harness.router.calls[-1]
    assert last.ref == "local/small"
    assert last.user_texts[0] == "look\n" + photo.placeholder()
    assert last.request == await _rebuilt(harness, last)


# ----------------------------------------------------------- build_request with a cache


def _stored(i: int, text: str, *, media=(), quoted=None, sender="Ann") -> StoredMessage:
    return StoredMessage(
        id=i, direction="in", role="user", kind=MessageKind.CHAT, session_key="k",
        session_id=1, turn_id=i, address=ChatAddress("telegram", "default", "-100",
                                                     ChatKind.GROUP),
        platform_message_id=str(i), sender_id=str(i), sender_name=sender, mentioned=True,
        text=text, media=tuple(media), quoted=quoted, status=MessageStatus.ANSWERED,
        reason=None, model_ref=None, reply_to_message_id=None, delivered=True,
        created_at=float(i))


async def test_cached_builds_equal_uncached_ones_as_history_and_files_change(tmp_path):
    pics = tmp_path / "pics"
    pics.mkdir()
    later = pics / "later.png"  # referenced before it exists
    store = MediaStore(tmp_path / "media")
    photo = await store.put(_png(), kind=MediaKind.IMAGE, mime="image/png")
    voice = MediaRef(MediaKind.VOICE, media_id="ab" * 32, duration_s=3.0)
    history = [
        HistoryTurn(1, (_stored(1, "hi <|im_start|>there", quoted=Quoted(
            "q", sender_name="Eve", text="earlier [INST]")),), "hello <|eot_id|>"),
        HistoryTurn(2, (_stored(2, "a photo", media=(photo,)),), "nice"),
        HistoryTurn(3, (_stored(3, f"see {later}"),), "cannot see it"),
        HistoryTurn(4, (_stored(4, "two", sender="Bob"),
                        _stored(5, "messages", media=(voice, photo))), "both"),
        HistoryTurn(6, (_stored(6, "plain text"),), "ok"),
    ]
    current = [_stored(99, "now?")]
    cache = PromptCache()
    base = make_config(tmp_path, agents={"defaults": {"imageRoots": [str(pics)],
                                                      "imageHistoryTurns": 1}})
    refused = make_config(tmp_path, agents={"defaults": {"imageRoots": [str(pics)],
                                                         "imageHistoryTurns": 1,
                                                         "imageMaxPixels": 100}})

    async def both(config, n, ref):
        kw = dict(model=config.model(ref), instructions="sys", summary="so far",
                  history=history[:n], current=current, group=True, media_store=store,
                  settings=config.agents.defaults)
        cached = await build_request(cache=cache, **kw)
        fresh = await build_request(**kw)
        assert cached == fresh, (n, ref)
        return cached.request

    for n in range(1, len(history) + 1):
        for ref in ("local/big", "local/small"):
            for config in (base, refused, base):
                await both(config, n, ref)
    assert cache.hits > 0 and len(cache) > 0
    before = await both(base, len(history), "local/big")
    later.write_bytes(_png((20, 20), (0, 90, 0)))  # the referenced file appears
    after = await both(base, len(history), "local/big")
    texts = ["".join(p.text for p in t.parts if isinstance(p, TextPart))
             for t in after.turns if t.role == "user"]
    assert any(f"see {later} {IMAGE_ALREADY_SEEN}" in t for t in texts)
    assert after != before


def test_cache_is_bounded_by_turns_and_characters():
    from bridge.models.base import Turn

    cache = PromptCache(max_turns=3, max_chars=10_000)
    for i in range(5):
        cache.put((i,), (Turn.text("user", f"u{i}"), Turn.text("assistant", "a"), 3))
    assert len(cache) == 3 and cache.get((0,)) is None and cache.get((4,)) is not None
    cache.get((2,))  # used: the least recently used one goes first
    cache.put((5,), (Turn.text("user", "u5"), Turn.text("assistant", "a"), 3))
    assert cache.get((2,)) is not None and cache.get((3,)) is None
    big = PromptCache(max_turns=100, max_chars=8_000)
    for i in range(10):
        big.put((i,), (Turn.text("user", "x" * 1500), Turn.text("assistant", "a"), 400))
    assert len(big) == 4 and big.get((9,)) is not None  # 1701 characters each
    big.put(("huge",), (Turn.text("user", "x" * 5000), Turn.text("assistant", ""), 1))
    assert big.get(("huge",)) is None  # more than a quarter of the cache: not kept
