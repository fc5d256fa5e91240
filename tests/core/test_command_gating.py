"""Commands that change a group chat (/new, /reset, /model NAME) are for the senders the
bot may talk to (the group's allowFrom, else the channel's allowFrom and paired senders)
and owners; a stranger in the group gets nothing, changes nothing, and is recorded and
logged like other refused traffic.  Read-only commands stay open."""

from __future__ import annotations

import dataclasses
import logging

from bridge.commands import changes_chat
from bridge.envelope import AcceptStatus
from bridge.store import MessageStatus
from tests.core.helpers import group, make_config

STRANGER = "99"
FRIEND = "7"  # in the channel's allowFrom
OWNER = "8"


def _config(tmp_path, **telegram):
    block = {"dmPolicy": "pairing", "allowFrom": [FRIEND], "owners": [OWNER],
             "groupPolicy": "open", **telegram}
    return make_config(tmp_path, channels={"telegram": block})


def test_which_commands_change_the_chat():
    for text in ("/new", "/reset@palaver_bot", "/model Big", "/model default"):
        assert changes_chat(text), text
    for text in ("/model", "/models", "/status", "/help", "/start", "/nosuch", "hi /new"):
        assert not changes_chat(text), text


async def _rows(harness, chat="-100"):
    return await harness.store.messages_for(str(group("x", chat=chat).session_key))


async def test_a_strangers_changing_commands_in_a_group_get_nothing(harness, caplog):
    harness.config = _config(harness.tmp_path)
    await harness.start()
    caplog.set_level(logging.INFO, logger="bridge.conversation")
    assert await harness.say(group("remember 7", sender=FRIEND)) is AcceptStatus.ACCEPTED
    sent_before = list(harness.channel.texts())
    for text in ("/new", "/reset@palaver_bot", "/model Big"):
        assert await harness.say(group(text, sender=STRANGER)) is AcceptStatus.REFUSED
    # No reply, no model call, nothing changed: the session and its model are the same.
    assert harness.channel.texts() == sent_before
    assert await harness.say(group("what number?", sender=FRIEND)) is AcceptStatus.ACCEPTED
    call = harness.router.calls[-1]
    assert call.user_texts[0].endswith("remember 7")  # history not forgotten
    assert call.candidates[0] == "local/small"  # /model Big did not take
    # Stored like strangers' traffic: refused, without the text, with who and why.
    refused = [r for r in await _rows(harness) if r.status is MessageStatus.REFUSED]
    assert len(refused) == 3
    assert all(r.text == "" and r.sender_id == STRANGER and r.reason for r in refused)
    # One log line for the reason, the rest summed up (not one line per message).
    lines = [r.getMessage() for r in caplog.records
             if r.name == "bridge.conversation" and "refused" in r.getMessage()]
    assert len(lines) == 1 and "/model" not in lines[0]
    refusals = [e for e in harness.events
                if getattr(e, "status", None) is AcceptStatus.REFUSED]
    assert {e.code for e in refusals} == {"command_not_allowed"}
    # Read-only commands stay open, and the group is open: a stranger may talk there.
    for text in ("/help", "/status", "/models", "/model"):
        assert await harness.say(group(text, sender=STRANGER)) is AcceptStatus.ACCEPTED, text
    texts = harness.channel.texts()[-4:]
    assert texts[0].startswith("Commands:") and "Current model" in texts[3]
    assert await harness.say(group("hello", sender=STRANGER)) is AcceptStatus.ACCEPTED
    assert harness.router.calls[-1].last_user.endswith("hello")


async def test_friends_owners_and_paired_senders_may_change_the_chat(harness):
    harness.config = _config(harness.tmp_path)
    await harness.start()
    assert await harness.say(group("/model Big", sender=STRANGER)) is AcceptStatus.REFUSED
    assert await harness.say(group("/model Big", sender=FRIEND)) is AcceptStatus.ACCEPTED
    assert "now uses Big" in harness.channel.texts()[-1]
    assert await harness.say(group("/model Backup", sender=OWNER)) is AcceptStatus.ACCEPTED
    assert "now uses Backup" in harness.channel.texts()[-1]
    # A sender approved through pairing may talk to the bot, so may change the chat.
    request, _ = await harness.store.pairing_code_for(
        "telegram", "default", "55", "Carol", new_code=lambda: "ABCDEFGH", ttl_s=3600,
        max_pending=3)
    assert request is not None
    assert await harness.store.approve_pairing("telegram", "ABCDEFGH") is not None
    assert await harness.say(group("/new", sender="55")) is AcceptStatus.ACCEPTED
    assert "new conversation" in harness.channel.texts()[-1]


async def test_owner_by_username_alias_is_not_an_owner(harness):
    harness.config = _config(harness.tmp_path, owners=["@boss"])
    await harness.start()
    msg = dataclasses.replace(group("/new", sender=STRANGER), sender_aliases=("@boss",))
    assert await harness.say(msg) is AcceptStatus.REFUSED


async def test_a_groups_allow_from_decides_who_may_change_it(harness):
    harness.config = _config(harness.tmp_path, groupPolicy="allowlist", groups={
        "-100": {"requireMention": False, "allowFrom": [FRIEND, STRANGER]},
        "-200": {"requireMention": False}})
    await harness.start()
    # Listed in -100's allowFrom (though not in the channel's): may change -100.
    assert await harness.say(group("/new", chat="-100", sender=STRANGER)) is \
        AcceptStatus.ACCEPTED
    # -200 has no allowFrom of its own: the channel's decides.
    assert await harness.say(group("/new", chat="-200", sender=STRANGER)) is \
        AcceptStatus.REFUSED
    assert await harness.say(group("/new", chat="-200", sender=FRIEND)) is \
        AcceptStatus.ACCEPTED


async def test_admits_agrees_for_a_strangers_command(harness):
    harness.config = _config(harness.tmp_path, groups={"-100": {"requireMention": True}})
    await harness.start()
    # Unmentioned, it is group talk not for the bot: ignored, as before.
    assert await harness.say(group("/new", sender=STRANGER, mentioned=False)) is \
        AcceptStatus.IGNORED
    assert not await harness.core.admits(group("/new", sender=STRANGER))
    assert await harness.core.admits(group("/status", sender=STRANGER))
    assert await harness.core.admits(group("/new", sender=FRIEND))
