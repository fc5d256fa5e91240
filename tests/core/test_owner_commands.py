"""Owner commands in the chat (channels.<name>.owners): /approve and /deny pairing codes
(the requester is told), /model NAME --channel|--default (the config file written through
the edit engine, picked up without a restart), /chats.  Everyone else is told only the
operator can do that, and nothing changes."""

from __future__ import annotations

import re

from bridge.config.load import load_config
from bridge.envelope import AcceptStatus
from tests.core.helpers import dm, group

OWNER = "8"
FRIEND = "7"  # may talk to the bot, is no owner
STRANGER = "55"
ONLY = "Only the operator can do that."
APPROVED = "The operator approved your request: you can talk to me now."
DECLINED = "The operator declined your request."

CONFIG = """// Palaver, as an operator writes it
{
  dataDir: "DATA",
  models: {
    mode: "replace",
    providers: {
      local: {
        baseUrl: "http://127.0.0.1:9/v1", api: "openai-completions",
        models: [
          {id: "small", contextWindow: 32000, maxTokens: 1000},
          {id: "big", contextWindow: 64000, maxTokens: 1000},
        ],
      },
      backup: {  // the hosted one
        baseUrl: "http://127.0.0.1:9/v1", api: "openai-completions",
        models: [{id: "m", contextWindow: 32000, maxTokens: 1000}],
      },
    },
  },
  agents: {
    defaults: {
      model: {primary: "local/small", fallbacks: ["backup/m"]},
      models: {"local/big": {alias: "Big"}, "backup/m": {alias: "Backup"}},
    },
  },
  channels: {
    telegram: {
      dmPolicy: "pairing",
      allowFrom: ["7"],
      owners: ["8"],   // the operator
      groupPolicy: "open",
    },
  },
}
"""


async def _start(harness, *, file=False):
    path = harness.tmp_path / "palaver.json5"
    path.write_text(CONFIG.replace("DATA", str(harness.tmp_path / "data")), "utf-8")
    harness.config = load_config(path)

    async def reload() -> bool:
        harness.config = load_config(path)
        return True

    options = {"config_path": path, "reload_config": reload} if file else {}
    await harness.start(**options)
    return path


async def _reply(harness, inbound) -> str:
    before = len(harness.channel.sent)
    await harness.say(inbound)
    replies = [o for o in harness.channel.sent[before:] if o.address == inbound.address]
    assert replies, f"no reply to {inbound.text!r}"
    return replies[-1].text


async def _pairing_code(harness, sender: str) -> str:
    assert await harness.say(dm("hello?", sender=sender)) is AcceptStatus.REFUSED
    text = harness.channel.texts()[-1]
    return re.search(r"pairing code is ([A-Z0-9]{8})", text).group(1)


def _told(harness, sender: str) -> list[str]:
    return [o.text for o in harness.channel.sent if o.address.chat_id == sender]


# -------------------------------------------------------------------- pairing


async def test_owner_approves_a_pairing_code_and_the_requester_is_told(harness):
    await _start(harness)
    code = await _pairing_code(harness, STRANGER)
    reply = await _reply(harness, dm(f"/approve {code.lower()}", sender=OWNER))
    assert reply == f"Approved {STRANGER} (Alice) on telegram; they were told."
    assert _told(harness, STRANGER)[-1] == APPROVED
    assert await harness.say(dm("now?", sender=STRANGER)) is AcceptStatus.ACCEPTED
    assert harness.router.calls[-1].last_user.endswith("now?")


async def test_a_non_owner_cannot_approve(harness):
    await _start(harness)
    code = await _pairing_code(harness, STRANGER)
    assert await _reply(harness, dm(f"/approve {code}", sender=FRIEND)) == ONLY
    assert [r.code for r in await harness.store.pending_pairings()] == [code]
    assert APPROVED not in _told(harness, STRANGER)
    assert await harness.say(dm("now?", sender=STRANGER)) is AcceptStatus.REFUSED
    # In a group, a friend is told too; a stranger's /approve gets nothing at all.
    assert await _reply(harness, group(f"/approve {code}", sender=FRIEND)) == ONLY
    sent = len(harness.channel.sent)
    assert await harness.say(group(f"/approve {code}", sender="66")) is AcceptStatus.REFUSED
    assert len(harness.channel.sent) == sent
    assert [r.code for r in await harness.store.pending_pairings()] == [code]


async def test_owner_denies_and_the_requester_is_told(harness):
    await _start(harness)
    code = await _pairing_code(harness, STRANGER)
    assert await _reply(harness, dm(f"/deny {code}", sender=FRIEND)) == ONLY
    assert [r.code for r in await harness.store.pending_pairings()] == [code]
    reply = await _reply(harness, dm(f"/deny {code}", sender=OWNER))
    assert reply.startswith(f"Declined {STRANGER}") and "they were told" in reply
    assert _told(harness, STRANGER)[-1] == DECLINED
    assert await harness.store.pending_pairings() == []
    assert not await harness.store.is_approved("telegram", [STRANGER])
    assert "No pending, unexpired pairing code" in await _reply(
        harness, dm(f"/approve {code}", sender=OWNER))


async def test_owner_lists_pending_codes(harness):
    await _start(harness)
    code = await _pairing_code(harness, STRANGER)
    listing = await _reply(harness, dm("/approve", sender=OWNER))
    assert code in listing and STRANGER in listing and "min left" in listing
    assert await _reply(harness, dm("/approve", sender=FRIEND)) == ONLY


# -------------------------------------------------------------------- /chats


async def test_chats_for_owners_only(harness):
    await _start(harness)
    await harness.say(group("hi all", chat="-100", sender=FRIEND))
    await harness.say(dm("hi", sender=FRIEND))
    listing = await _reply(harness, dm("/chats", sender=OWNER))
    assert listing.startswith("Chats, newest first:")
    assert "telegram:-100 (group)" in listing and "telegram:7 (direct" in listing
    assert "local/small" in listing  # the model answering next
    assert await _reply(harness, dm("/chats", sender=FRIEND)) == ONLY


# -------------------------------------------------------------------- /model levels


async def test_owner_pins_the_channel_model_in_the_config_file(harness):
    path = await _start(harness, file=True)
    reply = await _reply(harness, group("/model Backup --channel", sender=OWNER))
    assert "pinned" in reply and "channels.telegram.model" in reply
    text = path.read_text("utf-8")
    assert 'model: "Backup"' in text or "model: 'Backup'" in text or '"model": "Backup"' in text
    assert "// the operator" in text and "// the hosted one" in text  # comments kept
    # The next message anywhere on the channel is answered by it, without a restart.
    await harness.say(group("who answers?", chat="-200", sender=FRIEND))
    assert harness.router.calls[-1].candidates[0] == "backup/m"
    # ... and removed again.
    reply = await _reply(harness, group("/model default --channel", sender=OWNER))
    assert "Removed the pin" in reply
    await harness.say(group("and now?", chat="-200", sender=FRIEND))
    assert harness.router.calls[-1].candidates[0] == "local/small"


async def test_owner_sets_the_default_model_keeping_fallbacks(harness):
    path = await _start(harness, file=True)
    reply = await _reply(harness, dm("/model Big --default", sender=OWNER))
    assert "pinned" in reply and "agents.defaults.model" in reply
    assert harness.config.agents.defaults.model.primary == "Big"
    assert harness.config.agents.defaults.model.fallbacks == ("backup/m",)
    await harness.say(dm("hello", sender=FRIEND))
    assert harness.router.calls[-1].candidates == ["local/big", "backup/m"]
    assert "// the operator" in path.read_text("utf-8")  # the file edited, not rewritten


async def test_non_owners_cannot_write_the_config(harness):
    path = await _start(harness, file=True)
    before = path.read_bytes()
    assert await _reply(harness, dm("/model Backup --channel", sender=FRIEND)) == ONLY
    assert await _reply(harness, dm("/model Big --default", sender=FRIEND)) == ONLY
    assert await _reply(harness, group("/model Big --default", sender=FRIEND)) == ONLY
    sent = len(harness.channel.sent)
    assert await harness.say(group("/model Big --channel", sender="66")) is \
        AcceptStatus.REFUSED  # a stranger in the group: nothing at all
    assert len(harness.channel.sent) == sent
    assert path.read_bytes() == before


async def test_a_bad_pin_writes_nothing(harness):
    path = await _start(harness, file=True)
    before = path.read_bytes()
    assert "Unknown model" in await _reply(
        harness, dm("/model nosuch/thing --channel", sender=OWNER))
    assert "one of --chat" in await _reply(
        harness, dm("/model Big --channel --default", sender=OWNER))
    assert "Unknown option" in await _reply(harness, dm("/model Big --everywhere",
                                                        sender=OWNER))
    assert path.read_bytes() == before


async def test_without_a_config_file_an_owner_is_told_nothing_changed(harness):
    await _start(harness, file=False)
    reply = await _reply(harness, dm("/model Backup --channel", sender=OWNER))
    assert reply.startswith("Nothing changed")


async def test_model_chat_flag_is_the_chat_choice(harness):
    await _start(harness)
    assert "now uses Big" in await _reply(harness, group("/model Big --chat", sender=FRIEND))
    await harness.say(group("hi", sender=FRIEND))
    assert harness.router.calls[-1].candidates[0] == "local/big"


async def test_a_pin_under_a_chat_choice_says_the_choice_still_wins(harness):
    await _start(harness, file=True)
    await harness.say(dm("/model Backup", sender=OWNER))
    reply = await _reply(harness, dm("/model Big --default", sender=OWNER))
    assert "own /model choice (backup/m) still comes first" in reply


# -------------------------------------------------------------------- help, usage


async def test_help_lists_operator_commands_for_owners_only(harness):
    await _start(harness)
    owner_help = await _reply(harness, dm("/help", sender=OWNER))
    friend_help = await _reply(harness, dm("/help", sender=FRIEND))
    for name in ("/approve", "/deny", "/chats", "--channel"):
        assert name in owner_help and name not in friend_help


async def test_usage_is_a_command(harness):
    await _start(harness)
    await harness.say(dm("hello", sender=FRIEND))
    assert (await _reply(harness, dm("/usage", sender=FRIEND))).startswith(
        "Usage in this chat")
    assert harness.router.calls[-1].last_user.endswith("hello")  # never a model call


async def test_owners_are_admitted_where_the_bot_talks(harness):
    path = harness.tmp_path / "palaver.json5"
    path.write_text(CONFIG.replace("DATA", str(harness.tmp_path / "data")).replace(
        'groupPolicy: "open",',
        'groupPolicy: "allowlist", groups: {"-300": {allowFrom: ["7"]}},'), "utf-8")
    harness.config = load_config(path)
    await harness.start()
    # Not in allowFrom, not paired: an owner still reaches the bot in a direct chat ...
    assert await harness.say(dm("hello", sender=OWNER)) is AcceptStatus.ACCEPTED
    # ... and in a group whose allowFrom does not list them (others it leaves out are not).
    assert await harness.say(group("hi", chat="-300", sender=OWNER)) is AcceptStatus.ACCEPTED
    assert await harness.say(group("hi", chat="-300", sender="66")) is AcceptStatus.REFUSED


async def test_the_operators_terminal_names_the_channel(harness):
    await _start(harness)
    code = await _pairing_code(harness, STRANGER)
    console = dm(f"/approve {code}", sender="operator", channel="console")
    core = harness.core
    await core.accept(console)
    await core.wait_idle()
    assert await harness.store.pending_pairings()  # nothing approved without a channel
    await core.accept(dm(f"/approve telegram {code}", sender="operator", channel="console"))
    await core.wait_idle()
    assert await harness.store.is_approved("telegram", [STRANGER])
    assert _told(harness, STRANGER)[-1] == APPROVED
