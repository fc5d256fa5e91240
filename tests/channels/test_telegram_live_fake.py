"""The fake Bot API's live-reply surface, each quirk on its own: sendMessageDraft,
editMessageText, deleteMessage, setMessageReaction, the flood model and the user's screen.

Raw HTTP against the fake (the form encoding PTB uses); the channel's side is in
test_telegram_preview.py.
"""

from __future__ import annotations

import json

import aiohttp
import pytest

from tests.fakes.telegram_api import FakeBotAPI

GROUP = -100123


async def api(fake: FakeBotAPI, method: str, **params: object) -> tuple[int, dict]:
    """One Bot API call, form-encoded like PTB (complex values as JSON strings)."""
    form = {k: v if isinstance(v, str) else json.dumps(v) for k, v in params.items()}
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{fake.url}/bot{fake.token}/{method}", data=form) as resp:
            return resp.status, await resp.json()


def error(answer: tuple[int, dict]) -> str:
    status, body = answer
    assert status == body["error_code"] and not body["ok"], body
    return body["description"]


async def send(fake: FakeBotAPI, chat_id: int, text: str, **params: object) -> dict:
    status, body = await api(fake, "sendMessage", chat_id=chat_id, text=text, **params)
    assert status == 200, body
    return body["result"]


# --------------------------------------------------------------------------- drafts


async def test_drafts_only_in_private_chats(fake):
    assert error(await api(fake, "sendMessageDraft", chat_id=GROUP, draft_id=1,
                           text="hi")) == "Bad Request: TEXTDRAFT_PEER_INVALID"
    # A positive id that Telegram knows as a group (the fake learns chats from pushes).
    fake.push_text(555, 1001, "hello", chat_type="group")
    assert error(await api(fake, "sendMessageDraft", chat_id=555, draft_id=1,
                           text="hi")) == "Bad Request: TEXTDRAFT_PEER_INVALID"
    status, body = await api(fake, "sendMessageDraft", chat_id=1001, draft_id=1, text="hi")
    assert status == 200 and body["result"] is True
    assert fake.drafts[-1].params["draft_id"] == 1
    assert fake.draft_shown(1001).text == "hi"


async def test_draft_id_zero_or_missing_is_refused(fake):
    assert "draft_id" in error(await api(fake, "sendMessageDraft", chat_id=1001,
                                         draft_id=0, text="x"))
    assert "draft_id" in error(await api(fake, "sendMessageDraft", chat_id=1001, text="x"))
    assert fake.drafts == [] and fake.draft_shown(1001) is None


async def test_draft_text_rules(fake):
    assert error(await api(fake, "sendMessageDraft", chat_id=1001, draft_id=3,
                           text="x" * 4097)) == "Bad Request: message is too long"
    assert "can't parse entities" in error(await api(
        fake, "sendMessageDraft", chat_id=1001, draft_id=3, text="<b>x", parse_mode="HTML"))
    # Empty text: the "Thinking..." placeholder.
    status, _ = await api(fake, "sendMessageDraft", chat_id=1001, draft_id=3, text="")
    assert status == 200 and fake.draft_shown(1001).text == ""


async def test_a_message_clears_the_draft_of_its_chat_and_topic_only(fake):
    await api(fake, "sendMessageDraft", chat_id=1001, draft_id=7, text="Hel")
    await api(fake, "sendMessageDraft", chat_id=1001, draft_id=7, text="Hello",
              message_thread_id=4)
    await api(fake, "sendMessageDraft", chat_id=1002, draft_id=7, text="Other")
    sent = await send(fake, 1001, "Hello world")
    assert fake.draft_shown(1001) is None
    assert fake.draft_shown(1001, 4).text == "Hello"  # another topic of that chat
    assert fake.draft_shown(1002).text == "Other"
    kinds = [(e.kind, e.id, e.text) for e in fake.screen(1001)]
    assert kinds == [("draft", 7, "Hel"), ("draft_cleared", 7, ""),
                     ("message", sent["message_id"], "Hello world")]
    # A document clears it too.
    await api(fake, "sendMessageDraft", chat_id=1002, draft_id=8, text="x")
    fake.add_file(b"x")
    async with aiohttp.ClientSession() as session:
        form = aiohttp.FormData()
        form.add_field("chat_id", "1002")
        form.add_field("document", b"data", filename="reply.txt")
        async with session.post(f"{fake.url}/bot{fake.token}/sendDocument", data=form) as r:
            assert r.status == 200
    assert fake.draft_shown(1002) is None


async def test_a_draft_expires_after_its_ttl(fake):
    fake.draft_ttl = 0  # every draft is gone by the next look
    await api(fake, "sendMessageDraft", chat_id=1001, draft_id=9, text="soon gone")
    assert fake.draft_shown(1001) is None
    assert [e.kind for e in fake.screen(1001)] == ["draft", "draft_expired"]
    # An expired draft is not "cleared" by the next message.
    await send(fake, 1001, "final")
    assert [e.kind for e in fake.screen(1001)] == ["draft", "draft_expired", "message"]


async def test_drafts_after_the_last_message_and_what_was_visible(fake):
    await api(fake, "sendMessageDraft", chat_id=1001, draft_id=1, text="Hel")
    await send(fake, 1001, "Hello")
    assert fake.drafts_after_last_message(1001) == []
    await api(fake, "sendMessageDraft", chat_id=1001, draft_id=1, text="Hello again")
    late = fake.drafts_after_last_message(1001)
    assert [(e.id, e.text) for e in late] == [(1, "Hello again")]
    assert fake.visible_texts(1001) == ["Hel", "Hello", "Hello again"]
    # Snapshots: the draft under the messages, gone once the message arrived.
    assert fake.snapshots(1001) == [["Hel"], [], ["Hello"], ["Hello", "Hello again"]]


# --------------------------------------------------------------------------- edits, deletes


async def test_edit_message_text_answers(fake):
    mine = await send(fake, 1001, "Hello")
    theirs = fake.push_text(1001, 1001, "from the user")
    mid = mine["message_id"]
    assert error(await api(fake, "editMessageText", chat_id=1001, message_id=999,
                           text="x")) == "Bad Request: message to edit not found"
    assert error(await api(fake, "editMessageText", chat_id=1001,
                           message_id=theirs["message_id"], text="x")
                 ) == "Bad Request: message can't be edited"
    assert error(await api(fake, "editMessageText", chat_id=1001, message_id=mid,
                           text="Hello")) == (
        "Bad Request: message is not modified: specified new message content and reply "
        "markup are exactly the same as a current content and reply markup of the message")
    assert error(await api(fake, "editMessageText", chat_id=1001, message_id=mid,
                           text="y" * 4097)) == "Bad Request: MESSAGE_TOO_LONG"
    assert "can't parse entities" in error(await api(
        fake, "editMessageText", chat_id=1001, message_id=mid, text="<x>", parse_mode="HTML"))
    assert fake.edits == []
    status, body = await api(fake, "editMessageText", chat_id=1001, message_id=mid,
                             text="Hello world")
    assert status == 200 and body["result"]["text"] == "Hello world"
    assert body["result"]["message_id"] == mid and "edit_date" in body["result"]
    assert [e.kind for e in fake.screen(1001)] == ["message", "edit"]


async def test_not_modified_compares_visible_text_and_entities(fake):
    mid = (await send(fake, 1001, "<b>bold</b> text", parse_mode="HTML"))["message_id"]
    # The same entity spelled another way: not modified.
    assert "not modified" in error(await api(fake, "editMessageText", chat_id=1001,
                                             message_id=mid, text="<strong>bold</strong> text",
                                             parse_mode="HTML"))
    # The same visible text without the bold: modified.
    status, _ = await api(fake, "editMessageText", chat_id=1001, message_id=mid,
                          text="bold text")
    assert status == 200


async def test_delete_message(fake):
    mid = (await send(fake, 1001, "bye"))["message_id"]
    status, body = await api(fake, "deleteMessage", chat_id=1001, message_id=mid)
    assert status == 200 and body["result"] is True and fake.deleted == [(1001, mid)]
    assert error(await api(fake, "deleteMessage", chat_id=1001, message_id=mid)
                 ) == "Bad Request: message to delete not found"
    assert error(await api(fake, "editMessageText", chat_id=1001, message_id=mid,
                           text="x")) == "Bad Request: message to edit not found"
    assert fake.snapshots(1001) == [["bye"], []]


# --------------------------------------------------------------------------- reactions


async def test_reactions_set_clear_and_refuse(fake):
    msg = fake.push_text(GROUP, 1001, "hi")
    mid = msg["message_id"]
    status, _ = await api(fake, "setMessageReaction", chat_id=GROUP, message_id=mid,
                          reaction=[{"type": "emoji", "emoji": "👀"}])
    assert status == 200 and fake.reactions[(GROUP, mid)] == [{"type": "emoji", "emoji": "👀"}]
    await api(fake, "setMessageReaction", chat_id=GROUP, message_id=mid, reaction=[])
    assert (GROUP, mid) not in fake.reactions
    assert [(e.kind, e.text) for e in fake.screen(GROUP)] == [("reaction", "👀"),
                                                               ("reaction", "")]
    # Not in the Bot API's list, or not in the chat's own list.
    assert error(await api(fake, "setMessageReaction", chat_id=GROUP, message_id=mid,
                           reaction=[{"type": "emoji", "emoji": "🛸"}])
                 ) == "Bad Request: REACTION_INVALID"
    fake.restrict_reactions(GROUP, {"👍"})
    assert error(await api(fake, "setMessageReaction", chat_id=GROUP, message_id=mid,
                           reaction=[{"type": "emoji", "emoji": "👀"}])
                 ) == "Bad Request: REACTION_INVALID"
    status, _ = await api(fake, "setMessageReaction", chat_id=GROUP, message_id=mid,
                          reaction=[{"type": "emoji", "emoji": "👍"}])
    assert status == 200
    assert error(await api(fake, "setMessageReaction", chat_id=GROUP, message_id=mid,
                           reaction=[{"type": "emoji", "emoji": "👍"},
                                     {"type": "emoji", "emoji": "👍"}])
                 ) == "Bad Request: REACTIONS_TOO_MANY"
    assert "not found" in error(await api(fake, "setMessageReaction", chat_id=GROUP,
                                          message_id=999, reaction=[]))


# --------------------------------------------------------------------------- flood model


async def test_flood_model_off_by_default(fake):
    for i in range(6):
        await send(fake, 1001, f"m{i}")
    assert fake.flooded == []


async def test_flood_model_private_chat_burst_then_429():
    async with FakeBotAPI(flood=True) as fake:
        for i in range(3):
            await send(fake, 1001, f"m{i}")
        status, body = await api(fake, "sendMessage", chat_id=1001, text="one too many")
        assert status == 429
        assert body["description"] == "Too Many Requests: retry after 1"
        assert body["parameters"] == {"retry_after": 1}
        assert fake.flooded == [("sendMessage", 1001, 1)]
        # Per chat: another chat is not affected; edits count like sends.
        mid = (await send(fake, 1002, "a"))["message_id"]
        for i in range(2):
            await api(fake, "editMessageText", chat_id=1002, message_id=mid, text=f"e{i}")
        status, _ = await api(fake, "editMessageText", chat_id=1002, message_id=mid, text="x")
        assert status == 429
        # Drafts are not counted unless asked.
        for i in range(5):
            status, _ = await api(fake, "sendMessageDraft", chat_id=1003, draft_id=1,
                                  text=str(i))
            assert status == 200


async def test_flood_model_groups_and_drafts_when_asked(fake):
    fake.flood(group=(3.0, 3), drafts=True)
    for i in range(3):
        await send(fake, GROUP, f"g{i}")
    status, body = await api(fake, "sendMessage", chat_id=GROUP, text="g3")
    # 20 a minute: the next slot is about 3 s away.
    assert status == 429 and body["parameters"]["retry_after"] == 3
    for i in range(3):
        await api(fake, "sendMessageDraft", chat_id=1001, draft_id=1, text=str(i))
    status, _ = await api(fake, "sendMessageDraft", chat_id=1001, draft_id=1, text="x")
    assert status == 429
    fake.flood(False)
    assert (await api(fake, "sendMessage", chat_id=GROUP, text="free"))[0] == 200


@pytest.mark.parametrize("method", ["sendMessageDraft", "editMessageText",
                                    "setMessageReaction", "deleteMessage"])
async def test_scripted_rate_limits_apply_to_the_new_methods(fake, method):
    fake.rate_limit(method, 7)
    status, body = await api(fake, method, chat_id=1001, message_id=1, draft_id=1, text="x",
                             reaction=[])
    assert status == 429 and body["parameters"] == {"retry_after": 7}
