"""channels.telegram's live-reply primitives through the real TelegramChannel against the
fake Bot API: draft and edit previews and their error mapping, Pacer.try_take, chunk 0 of
a final reply as an edit of the preview, discard_preview, reactions.

The policy that drives them (what to show, when) is the core's (bridge/live.py) and is
tested there; here each primitive is asked directly, as the core would.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from bridge.config.schema import TelegramConfig
from bridge.envelope import ChatAddress, ChatKind, Outbound
from bridge.formatting import render
from bridge.media import MediaStore
from bridge.ports import (
    InboundSink,
    Markup,
    PreviewGone,
    PreviewKey,
    PreviewMaybeSent,
    PreviewMode,
    PreviewRateLimited,
    SendError,
    SendProgress,
)
from channels.telegram import TelegramChannel
from channels.telegram.live import draft_id, valid_reaction
from channels.telegram.pacing import Pacer

GROUP = -100123

pytestmark = pytest.mark.filterwarnings("error::telegram.warnings.PTBDeprecationWarning")


class Sink(InboundSink):
    async def accept(self, inbound):  # pragma: no cover - nothing is pushed here
        raise AssertionError("no inbound expected")


class Clock:
    """Virtual time for the pacer: ``sleep`` advances it at once."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


@pytest.fixture
async def make_channel(fake, tmp_path):
    made: list[TelegramChannel] = []

    async def build(*, real_clock: bool = False, **overrides) -> TelegramChannel:
        fields = {"botToken": fake.token, "apiRoot": fake.url, **overrides}
        channel = TelegramChannel(TelegramConfig(**fields), media=MediaStore(tmp_path / "m"),
                                  data_dir=tmp_path)
        channel.poll_timeout = 1
        channel.send_retry_delays = (0.01, 0.02, 0.03)
        if not real_clock:
            clock = Clock()
            channel.pacer.clock, channel.pacer.sleep = clock, clock.sleep
        made.append(channel)
        await channel.start(Sink())
        return channel

    yield build
    for channel in made:
        await channel.stop()


def _address(chat_id: int, kind: ChatKind = ChatKind.DIRECT,
             thread_id: str | None = None) -> ChatAddress:
    return ChatAddress("telegram", "default", str(chat_id), kind, thread_id=thread_id)


DM = _address(1001)
GROUP_ADDRESS = _address(GROUP, ChatKind.GROUP)


# --------------------------------------------------------------------------- capabilities


async def test_capabilities_offer_both_preview_modes_and_reactions(make_channel):
    channel = await make_channel()
    assert channel.capabilities.preview_modes == frozenset({PreviewMode.DRAFT,
                                                            PreviewMode.EDIT})
    assert channel.capabilities.reactions


async def test_no_previews_for_off_or_groups_asking_for_drafts(make_channel, fake):
    channel = await make_channel()
    assert channel.preview(DM, PreviewMode.OFF, turn_id=1) is None
    assert channel.preview(GROUP_ADDRESS, PreviewMode.DRAFT, turn_id=1) is None
    assert channel.preview(GROUP_ADDRESS, PreviewMode.EDIT, turn_id=1) is not None
    await channel.stop()
    assert channel.preview(DM, PreviewMode.DRAFT, turn_id=1) is None  # not running


# --------------------------------------------------------------------------- drafts


def test_draft_ids_are_nonzero_below_2_31_and_differ_per_attempt():
    ids = {draft_id(t, a) for t in (0, 1, 2**26 - 1, 2**26, 10**12) for a in range(16)}
    assert all(0 < i < 2**31 for i in ids)
    assert len({draft_id(42, a) for a in range(16)}) == 16
    assert draft_id(1, 0) != draft_id(2, 0)


async def test_draft_updates_share_one_id_and_restart_takes_a_new_one(make_channel, fake):
    channel = await make_channel()
    preview = channel.preview(DM, PreviewMode.DRAFT, turn_id=42)
    assert preview is not None and preview.mode is PreviewMode.DRAFT
    await preview.update("")  # the "Thinking..." placeholder
    await preview.update("Hel")
    await preview.update("Hello")
    await preview.update("Other", restart=True)  # a fallback model's answer
    calls = [c.params for c in fake.drafts]
    assert [c["text"] for c in calls] == ["", "Hel", "Hello", "Other"]
    assert [c["draft_id"] for c in calls] == [draft_id(42, 0)] * 3 + [draft_id(42, 1)]
    assert all("parse_mode" not in c and c["chat_id"] == 1001 for c in calls)
    await preview.delete()  # nothing to do for a draft
    assert fake.calls_to("deleteMessage") == []


async def test_draft_in_a_private_topic_carries_the_thread(make_channel, fake):
    channel = await make_channel()
    preview = channel.preview(_address(1001, thread_id="5"), PreviewMode.DRAFT, turn_id=1)
    await preview.update("Hi")
    assert fake.drafts[-1].params["message_thread_id"] == 5
    assert fake.draft_shown(1001, 5).text == "Hi"


async def test_the_final_reply_clears_the_draft(make_channel, fake):
    channel = await make_channel()
    preview = channel.preview(DM, PreviewMode.DRAFT, turn_id=7)
    await preview.update("Hello")
    await channel.send(Outbound(DM, "Hello world"))
    assert [e.kind for e in fake.screen(1001)] == ["draft", "draft_cleared", "message"]
    assert fake.drafts_after_last_message(1001) == []
    assert fake.draft_shown(1001) is None


async def test_peer_invalid_ends_drafts_for_that_chat(make_channel, fake, caplog):
    channel = await make_channel()
    fake.fail("sendMessageDraft", 400, "Bad Request: TEXTDRAFT_PEER_INVALID")
    preview = channel.preview(DM, PreviewMode.DRAFT, turn_id=1)
    with caplog.at_level(logging.WARNING, logger="channels.telegram.live"):
        with pytest.raises(PreviewGone):
            await preview.update("")
    assert "TEXTDRAFT_PEER_INVALID".lower() in caplog.text.lower()
    # The next turn in that chat gets no draft (typing instead); other chats still do.
    assert channel.preview(DM, PreviewMode.DRAFT, turn_id=2) is None
    assert channel.preview(DM, PreviewMode.EDIT, turn_id=2) is not None
    other = channel.preview(_address(1002), PreviewMode.DRAFT, turn_id=2)
    await other.update("fine")
    assert [c.params["chat_id"] for c in fake.drafts] == [1002]
    # An hour later the chat is asked again.
    channel._live.no_drafts.clock = lambda: 10**9
    assert channel.preview(DM, PreviewMode.DRAFT, turn_id=3) is not None


async def test_a_server_without_send_message_draft_ends_drafts_everywhere(make_channel, fake):
    channel = await make_channel()
    fake.fail("sendMessageDraft", 404, "Not Found")
    with pytest.raises(PreviewGone):
        await channel.preview(DM, PreviewMode.DRAFT, turn_id=1).update("")
    assert channel.preview(_address(1002), PreviewMode.DRAFT, turn_id=1) is None
    assert channel.health().connected  # the channel itself is fine


async def test_too_long_draft_is_gone_without_blaming_the_chat(make_channel, fake):
    channel = await make_channel()
    preview = channel.preview(DM, PreviewMode.DRAFT, turn_id=1)
    with pytest.raises(PreviewGone):
        await preview.update("x" * 4097)
    assert fake.drafts == []
    assert channel.preview(DM, PreviewMode.DRAFT, turn_id=2) is not None


async def test_rate_limited_draft_holds_the_chat_for_the_final(make_channel, fake):
    channel = await make_channel()
    clock = channel.pacer.clock
    fake.rate_limit("sendMessageDraft", 7)
    preview = channel.preview(DM, PreviewMode.DRAFT, turn_id=1)
    with pytest.raises(PreviewRateLimited) as err:
        await preview.update("Hel")
    assert err.value.retry_after == 7
    assert len(fake.calls_to("sendMessageDraft")) == 1  # never retried by the channel
    assert not channel.may_preview_now(DM)
    # The final reply waits the hold out (virtual time) and goes once.
    await channel.send(Outbound(DM, "Hello"))
    assert sum(clock.sleeps) >= 7
    assert [s.text for s in fake.sent] == ["Hello"]


async def test_draft_lost_after_sending_is_maybe_sent(make_channel, fake):
    channel = await make_channel()
    fake.drop("sendMessageDraft")
    with pytest.raises(PreviewMaybeSent):
        await channel.preview(DM, PreviewMode.DRAFT, turn_id=1).update("Hel")
    assert channel.preview(DM, PreviewMode.DRAFT, turn_id=2) is not None  # not blamed


async def test_draft_not_sent_is_gone(make_channel, fake):
    channel = await make_channel()
    preview = channel.preview(DM, PreviewMode.DRAFT, turn_id=1)
    await fake.go_down()
    try:
        with pytest.raises(PreviewGone):
            await preview.update("Hel")
    finally:
        await fake.come_back()


# --------------------------------------------------------------------------- edit previews


async def test_edit_preview_stores_its_key_before_the_next_update(make_channel, fake):
    channel = await make_channel()
    created: list[PreviewKey] = []
    release = asyncio.Event()
    seen_edits: list[int] = []

    async def on_created(key: PreviewKey) -> None:
        created.append(key)
        seen_edits.append(len(fake.calls_to("editMessageText")))
        await release.wait()  # the core's store write, slow

    preview = channel.preview(DM, PreviewMode.EDIT, turn_id=3, on_created=on_created)
    first = asyncio.create_task(preview.update("Hello"))
    await fake.wait_for_sent(1)
    second = asyncio.create_task(preview.update("Hello world"))
    await asyncio.sleep(0.05)
    assert fake.calls_to("editMessageText") == []  # waits for on_created
    release.set()
    await asyncio.gather(first, second)
    message_id = fake.sent[0].message_id
    assert created == [PreviewKey(PreviewMode.EDIT, f"1001:{message_id}")]
    assert seen_edits == [0]
    assert [c.params["text"] for c in fake.edits] == ["Hello world"]
    assert "parse_mode" not in fake.sent[0].message and fake.sent[0].parse_mode is None


async def test_edit_preview_in_a_group_quotes_the_trigger(make_channel, fake):
    channel = await make_channel()
    trigger = fake.push_text(GROUP, 1001, "@palaver_test_bot hi")
    preview = channel.preview(GROUP_ADDRESS, PreviewMode.EDIT, turn_id=1,
                              reply_to=f"{GROUP}:{trigger['message_id']}")
    await preview.update("")  # no text yet: a placeholder, Telegram refuses empty text
    assert fake.sent[0].reply_to_message_id == trigger["message_id"]
    assert fake.sent[0].text == "…"


async def test_edit_preview_errors(make_channel, fake):
    channel = await make_channel()
    preview = channel.preview(DM, PreviewMode.EDIT, turn_id=1)
    await preview.update("Hello")
    await preview.update("Hello")  # the fake says "not modified": that is success
    assert fake.edits == []
    fake.rate_limit("editMessageText", 5)
    with pytest.raises(PreviewRateLimited):
        await preview.update("Hello there")
    assert not channel.may_preview_now(DM)
    message_id = fake.sent[0].message_id
    fake._messages.pop((1001, message_id))  # the user deleted it
    with pytest.raises(PreviewGone):
        await preview.update("Hello there, again")
    await preview.delete()  # already gone: done
    assert len(fake.calls_to("editMessageText")) == 3


async def test_edit_preview_delete(make_channel, fake):
    channel = await make_channel()
    preview = channel.preview(DM, PreviewMode.EDIT, turn_id=1)
    await preview.update("Half an answer")
    await preview.delete()
    assert fake.deleted == [(1001, fake.sent[0].message_id)]
    assert fake.snapshots(1001)[-1] == []


# --------------------------------------------------------------------------- may_preview_now


def test_try_take_leaves_room_for_the_final():
    clock = Clock()
    pacer = Pacer(chat_interval=1.0, chat_burst=5, group_interval=3.0, group_burst=3,
                  overall_interval=0.0, clock=clock, sleep=clock.sleep)
    assert [pacer.try_take(1, group=False) for _ in range(5)] == [True] * 4 + [False]
    assert [pacer.try_take(-5, group=True) for _ in range(3)] == [True, True, False]
    clock.now += 1.0
    assert pacer.try_take(1, group=False) and not pacer.try_take(1, group=False)
    # keep=0 takes the last slot too; a hold blocks it.
    assert pacer.try_take(2, group=False, keep=0)
    pacer.hold(3, 10)
    assert not pacer.try_take(3, group=False, keep=0)
    clock.now += 15
    assert pacer.try_take(3, group=False)


async def test_final_after_previews_still_has_its_burst_slot(make_channel, fake):
    channel = await make_channel()
    clock = channel.pacer.clock
    taken = 0
    while channel.may_preview_now(DM):  # previews as fast as the pacer lets them
        taken += 1
        clock.now += channel.pacer.overall_interval
    assert taken == channel._live.preview_burst
    await channel.send(Outbound(DM, "the final"))
    assert clock.sleeps == []  # the slot kept back: the final went at once


def test_try_take_checks_the_overall_rate():
    clock = Clock()
    pacer = Pacer(overall_interval=1 / 30, clock=clock, sleep=clock.sleep)
    assert pacer.try_take(1, group=False)
    assert not pacer.try_take(2, group=False)  # the overall slot is taken
    clock.now += 1 / 30
    assert pacer.try_take(2, group=False)


# --------------------------------------------------------------------------- final chunk 0


async def _edit_preview(channel, address=DM, text="Hello wor") -> str:
    keys: list[PreviewKey] = []

    async def on_created(key: PreviewKey) -> None:
        keys.append(key)

    preview = channel.preview(address, PreviewMode.EDIT, turn_id=1, on_created=on_created)
    await preview.update(text)
    return keys[0].platform_id


async def test_final_chunk_0_edits_the_preview_and_a_resume_sends_nothing_new(
        make_channel, fake):
    channel = await make_channel()
    preview_id = await _edit_preview(channel)
    out = Outbound(DM, "Hello **world**", edit_message_id=preview_id)
    assert await channel.send(out) == [preview_id]
    assert fake.edits[-1].params["parse_mode"] == "HTML"
    assert fake.edits[-1].params["text"] == render("Hello **world**", Markup.TELEGRAM_HTML,
                                                   4000)[0]
    # A crash before chunk 0 was recorded: the outbox sends it again.
    assert await channel.send(out) == [preview_id]
    assert len(fake.sent) == 1  # only the preview's own sendMessage
    assert len(fake.edits) == 1  # the second edit was "not modified"
    assert fake.snapshots(1001)[-1] == ["Hello world"]


async def test_three_chunk_reply_is_one_edit_and_two_messages(make_channel, fake):
    channel = await make_channel(textChunkLimit=200)
    preview_id = await _edit_preview(channel)
    text = "\n\n".join(f"Paragraph {i}: " + "word " * 30 for i in range(3))
    chunks = render(text, Markup.TELEGRAM_HTML, 200)
    assert len(chunks) == 3
    recorded: list[tuple[int, str]] = []

    async def sent(index: int, platform_id: str) -> None:
        recorded.append((index, platform_id))

    ids = await channel.send(Outbound(DM, text, edit_message_id=preview_id),
                             SendProgress(sent=sent))
    assert len(fake.edits) == 1 and len(fake.sent) == 3  # the preview + 2 new
    assert ids[0] == preview_id
    assert recorded == [(0, preview_id), (1, ids[1]), (2, ids[2])]
    assert [s.text for s in fake.sent[1:]] == chunks[1:]


async def test_a_deleted_preview_gives_a_new_message(make_channel, fake):
    channel = await make_channel()
    preview_id = await _edit_preview(channel)
    await channel.discard_preview(DM, PreviewKey(PreviewMode.EDIT, preview_id))  # "the user"
    ids = await channel.send(Outbound(DM, "Hello world", edit_message_id=preview_id))
    assert ids != [preview_id] and len(ids) == 1
    assert fake.sent[-1].text == "Hello world"
    assert fake.snapshots(1001)[-1] == ["Hello world"]


async def test_chunk_0_edit_falls_back_to_plain_text(make_channel, fake):
    channel = await make_channel()
    preview_id = await _edit_preview(channel)
    fake.fail("editMessageText", 400,
              "Bad Request: can't parse entities: Can't find end of the entity",
              when=lambda p: bool(p.get("parse_mode")))
    assert await channel.send(Outbound(DM, "Hello **world**",
                                       edit_message_id=preview_id)) == [preview_id]
    assert "parse_mode" not in fake.edits[-1].params
    assert fake.edits[-1].params["text"] == "Hello world"
    assert len(fake.sent) == 1


async def test_chunk_0_edit_of_a_stranger_message_sends_anew(make_channel, fake):
    channel = await make_channel()
    theirs = fake.push_text(1001, 1001, "the user's")
    ids = await channel.send(Outbound(DM, "answer",
                                      edit_message_id=f"1001:{theirs['message_id']}"))
    assert fake.sent[-1].text == "answer" and ids == [f"1001:{fake.sent[-1].message_id}"]


async def test_chunk_0_edit_waits_out_a_rate_limit(make_channel, fake):
    channel = await make_channel()
    preview_id = await _edit_preview(channel)
    fake.rate_limit("editMessageText", 3)
    assert await channel.send(Outbound(DM, "Hello world",
                                       edit_message_id=preview_id)) == [preview_id]
    assert len(fake.calls_to("editMessageText")) == 2 and len(fake.sent) == 1
    assert sum(channel.pacer.clock.sleeps) >= 3


# --------------------------------------------------------------------------- discard_preview


async def test_discard_preview(make_channel, fake):
    channel = await make_channel()
    preview_id = await _edit_preview(channel)
    key = PreviewKey(PreviewMode.EDIT, preview_id)
    await channel.discard_preview(DM, key)
    await channel.discard_preview(DM, key)  # already gone: done
    assert fake.deleted == [(1001, int(preview_id.split(":")[1]))]
    await channel.discard_preview(DM, PreviewKey(PreviewMode.DRAFT, "5"))  # nothing to do
    assert len(fake.calls_to("deleteMessage")) == 2


async def test_discard_preview_that_cannot_be_deleted_is_emptied(make_channel, fake):
    channel = await make_channel()
    preview_id = await _edit_preview(channel, text="Half an answer")
    fake.fail("deleteMessage", 400, "Bad Request: message can't be deleted")
    await channel.discard_preview(DM, PreviewKey(PreviewMode.EDIT, preview_id))
    assert fake.edits[-1].params["text"] == "…"
    assert fake.snapshots(1001)[-1] == ["…"]
    fake.fail("deleteMessage", 400, "Bad Request: message can't be deleted")
    fake.fail("editMessageText", 400, "Bad Request: message can't be edited")
    with pytest.raises(SendError):
        await channel.discard_preview(DM, PreviewKey(PreviewMode.EDIT, preview_id))


# --------------------------------------------------------------------------- reactions


async def test_reactions_set_and_cleared(make_channel, fake):
    channel = await make_channel()
    msg = fake.push_text(1001, 1001, "hello")
    message_id = f"1001:{msg['message_id']}"
    await channel.react(DM, message_id, "👀")
    assert fake.reactions[(1001, msg["message_id"])] == [{"type": "emoji", "emoji": "👀"}]
    await channel.react(DM, message_id, "❤️")  # spelled with VS16: Telegram's is bare
    assert fake.reactions[(1001, msg["message_id"])] == [{"type": "emoji", "emoji": "❤"}]
    await channel.react(DM, message_id, "")
    assert (1001, msg["message_id"]) not in fake.reactions


async def test_reaction_invalid_is_remembered_for_the_chat(make_channel, fake):
    channel = await make_channel()
    fake.restrict_reactions(GROUP, {"👍"})
    first = fake.push_text(GROUP, 1001, "a")
    second = fake.push_text(GROUP, 1001, "b")
    with pytest.raises(SendError):
        await channel.react(GROUP_ADDRESS, f"{GROUP}:{first['message_id']}", "👀")
    calls = len(fake.calls_to("setMessageReaction"))
    await channel.react(GROUP_ADDRESS, f"{GROUP}:{second['message_id']}", "👀")
    await channel.react(GROUP_ADDRESS, f"{GROUP}:{first['message_id']}", "")
    assert len(fake.calls_to("setMessageReaction")) == calls == 1
    # Other chats are still asked.
    dm = fake.push_text(1001, 1001, "c")
    await channel.react(DM, f"1001:{dm['message_id']}", "👀")
    assert len(fake.calls_to("setMessageReaction")) == 2


async def test_reaction_on_an_unknown_message_raises(make_channel, fake):
    channel = await make_channel()
    with pytest.raises(SendError, match="not found"):
        await channel.react(DM, "1001:999", "👀")


def test_valid_reaction():
    assert valid_reaction("👀") == "👀"
    assert valid_reaction("❤️") == "❤"
    assert valid_reaction("🛸") is None


async def test_reaction_emoji_checked_at_start(make_channel, fake, caplog):
    with caplog.at_level(logging.WARNING, logger="channels.telegram.live"):
        channel = await make_channel(ackReaction="🛸")
    assert not channel.capabilities.reactions
    warnings = [r for r in caplog.records if "reaction" in r.getMessage()]
    assert len(warnings) == 1 and "channels.telegram.ackReaction" in warnings[0].getMessage()
    msg = fake.push_text(1001, 1001, "hello")
    await channel.react(DM, f"1001:{msg['message_id']}", "👀")
    assert fake.calls_to("setMessageReaction") == []


async def test_reaction_emoji_of_a_group_checked_at_start(make_channel):
    channel = await make_channel(groups={"-100123": {"ackFailureReaction": "🥶"}})
    assert not channel.capabilities.reactions
    channel = await make_channel(ackReaction="", groups={"*": {"ackReaction": "🙈"}})
    assert channel.capabilities.reactions


# --------------------------------------------------------------------------- groups, topics


async def test_group_edit_preview_becomes_the_quoted_chunk_0(make_channel, fake):
    channel = await make_channel(textChunkLimit=200)
    trigger = fake.push_text(GROUP, 1001, "@palaver_test_bot tell me", thread_id=9)
    address = _address(GROUP, ChatKind.GROUP, thread_id="9")
    reply_to = f"{GROUP}:{trigger['message_id']}"
    keys: list[PreviewKey] = []

    async def on_created(key: PreviewKey) -> None:
        keys.append(key)

    preview = channel.preview(address, PreviewMode.EDIT, turn_id=4, reply_to=reply_to,
                              on_created=on_created)
    await preview.update("Paragraph 0")
    assert fake.sent[0].reply_to_message_id == trigger["message_id"]
    assert fake.sent[0].thread_id == 9
    text = "\n\n".join(f"Paragraph {i}: " + "word " * 30 for i in range(3))
    ids = await channel.send(Outbound(address, text, reply_to_message_id=reply_to,
                                      edit_message_id=keys[0].platform_id))
    assert ids[0] == keys[0].platform_id and len(ids) == 3
    assert len(fake.edits) == 1 and fake.edits[0].params["parse_mode"] == "HTML"
    later = fake.sent[1:]
    assert [s.reply_to_message_id for s in later] == [None, None]  # only chunk 0 quotes
    assert [s.thread_id for s in later] == [9, 9]
    screen = fake.snapshots(GROUP, 9)[-1]
    assert screen == [s.message["text"] for s in fake.sent]


async def test_a_chat_telegram_knows_as_a_group_refuses_drafts(make_channel, fake):
    """No scripted failure: the fake's own rule (a positive id whose chat is a group)."""
    channel = await make_channel()
    fake.push_text(555, 1001, "hello", chat_type="group")
    address = _address(555)  # however the core came to call it direct
    with pytest.raises(PreviewGone):
        await channel.preview(address, PreviewMode.DRAFT, turn_id=1).update("")
    assert channel.preview(address, PreviewMode.DRAFT, turn_id=2) is None
    assert fake.drafts == []


async def test_a_reply_that_is_only_a_document_removes_the_preview(make_channel, fake):
    """maxReplyChunks 1 and a long reply: no chunk 0 to edit, so the preview goes."""
    channel = await make_channel(textChunkLimit=200, maxReplyChunks=1)
    preview_id = await _edit_preview(channel)
    text = "\n\n".join(f"Paragraph {i}: " + "word " * 30 for i in range(3))
    ids = await channel.send(Outbound(DM, text, edit_message_id=preview_id))
    assert len(ids) == 1 and ids != [preview_id]
    assert fake.deleted == [(1001, int(preview_id.split(":")[1]))]
    assert fake.calls_to("sendDocument") and fake.edits == []


@pytest.mark.parametrize("address", [DM, GROUP_ADDRESS], ids=["private", "group"])
async def test_previews_gated_by_the_pacer_never_flood_and_leave_the_final_its_slot(
        make_channel, fake, address):
    """An over-eager core asking for an edit as often as it can: Telegram's flood model
    (the fake's) never answers 429, neither to the previews nor to the final."""
    fake.flood()
    channel = await make_channel(real_clock=True)
    preview = channel.preview(address, PreviewMode.EDIT, turn_id=1)
    asked = shown = 0
    loop = asyncio.get_running_loop()
    until = loop.time() + 0.3
    while loop.time() < until:
        asked += 1
        if channel.may_preview_now(address):
            shown += 1
            await preview.update(f"text {shown}")
        await asyncio.sleep(0.005)
    assert asked > 10 and shown >= 1  # most were refused by the pacer
    await channel.send(Outbound(address, "the final", edit_message_id=f"{address.chat_id}:"
                                f"{fake.sent[0].message_id}"))
    assert fake.flooded == []
    assert fake.snapshots(int(address.chat_id))[-1] == ["the final"]


async def test_a_preview_that_can_no_longer_be_edited_is_replaced(make_channel, fake):
    channel = await make_channel()
    preview_id = await _edit_preview(channel, text="Half an answer")
    fake.fail("editMessageText", 400, "Bad Request: message can't be edited")
    ids = await channel.send(Outbound(DM, "The whole answer", edit_message_id=preview_id))
    assert ids != [preview_id]
    assert fake.snapshots(1001)[-1] == ["The whole answer"]  # the half answer is gone


async def test_edit_preview_lost_answer_is_maybe_sent_and_not_stored(make_channel, fake):
    """The first sendMessage reached Telegram, its answer was lost: maybe a ghost message;
    the core hears PreviewMaybeSent and on_created is never called (no id to store)."""
    channel = await make_channel()
    created: list[PreviewKey] = []

    async def on_created(key: PreviewKey) -> None:
        created.append(key)

    fake.drop("sendMessage")
    preview = channel.preview(DM, PreviewMode.EDIT, turn_id=1, on_created=on_created)
    with pytest.raises(PreviewMaybeSent):
        await preview.update("Hello")
    assert created == [] and len(fake.calls_to("sendMessage")) == 1  # not retried


async def test_a_refused_token_ends_the_preview_but_not_drafts_everywhere(make_channel, fake):
    channel = await make_channel()
    fake.fail("sendMessageDraft", 401, "Unauthorized")
    with pytest.raises(PreviewGone):
        await channel.preview(DM, PreviewMode.DRAFT, turn_id=1).update("")
    assert channel.preview(DM, PreviewMode.DRAFT, turn_id=2) is not None


async def test_a_rate_limited_reaction_holds_the_chat(make_channel, fake):
    channel = await make_channel()
    msg = fake.push_text(1001, 1001, "hello")
    fake.rate_limit("setMessageReaction", 9)
    with pytest.raises(SendError) as err:
        await channel.react(DM, f"1001:{msg['message_id']}", "👀")
    assert err.value.retryable
    assert not channel.may_preview_now(DM)
    assert len(fake.calls_to("setMessageReaction")) == 1
