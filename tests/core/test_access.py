"""Access control: every DM and group policy, pairing (store and CLI), mention gating."""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

from bridge.access import (
    PAIRING_ALPHABET,
    PAIRING_REMIND_AFTER_S,
    cmd_pairing_approve,
    cmd_pairing_list,
    new_pairing_code,
)
from bridge.envelope import AcceptStatus
from bridge.store import MessageStatus, Store
from tests.core.helpers import dm, group, make_config


def _telegram(**kw):
    return {"telegram": kw}


async def _config(harness, **telegram):
    harness.config = make_config(harness.tmp_path, channels=_telegram(**telegram))
    await harness.start()


def test_pairing_code_alphabet_has_no_look_alikes():
    for ch in "0O1IL":
        assert ch not in PAIRING_ALPHABET
    codes = {new_pairing_code() for _ in range(50)}
    assert all(len(c) == 8 and set(c) <= set(PAIRING_ALPHABET) for c in codes)
    assert len(codes) > 45


async def test_pairing_unknown_sender_gets_code_and_nothing_else(harness):
    now = [time.time()]
    await _config(harness)  # dmPolicy defaults to pairing
    harness.core.access._clock = lambda: now[0]
    first = dm("hello bot", sender="555")
    assert await harness.say(first) is AcceptStatus.REFUSED
    assert harness.router.calls == []  # never reaches a model
    assert len(harness.channel.sent) == 1
    reply = harness.channel.sent[0]
    assert reply.plain and "pairing code" in reply.text
    pending = await harness.store.pending_pairings("telegram")
    assert len(pending) == 1 and pending[0].code in reply.text
    rows = await harness.store.messages_for(str(first.session_key))
    assert rows[0].status is MessageStatus.REFUSED and "pairing" in rows[0].reason
    # A repeat message soon after gets nothing (no code spam); a redelivery neither.
    now[0] += 60
    assert await harness.say(dm("again?", sender="555")) is AcceptStatus.REFUSED
    assert await harness.say(first) is AcceptStatus.DUPLICATE
    assert len(harness.channel.sent) == 1
    # Ten minutes after the code was made: the same code once more, then nothing again.
    now[0] += PAIRING_REMIND_AFTER_S
    assert await harness.say(dm("hello??", sender="555")) is AcceptStatus.REFUSED
    assert [o.text for o in harness.channel.sent] == [reply.text, reply.text]
    now[0] += PAIRING_REMIND_AFTER_S
    assert await harness.say(dm("anyone?", sender="555")) is AcceptStatus.REFUSED
    assert len(harness.channel.sent) == 2
    assert len(await harness.store.pending_pairings("telegram", now=now[0])) == 1
    # Approved: the next message is answered.
    approved = await harness.store.approve_pairing("telegram", pending[0].code.lower(),
                                                   now=now[0])
    assert approved is not None and approved.sender_id == "555"
    assert await harness.say(dm("now?", sender="555")) is AcceptStatus.ACCEPTED
    assert harness.channel.texts()[-1] == "echo: now?"


async def test_pairing_at_most_three_pending_and_expiry(harness):
    now = [1000.0]
    await _config(harness)
    harness.core.access._clock = lambda: now[0]
    for sender in ("a", "b", "c", "d"):
        await harness.say(dm("hi", sender=sender))
    assert len(harness.channel.sent) == 3  # the fourth unknown sender gets nothing
    pending = await harness.store.pending_pairings("telegram", now=now[0])
    assert sorted(p.sender_id for p in pending) == ["a", "b", "c"]
    # An hour later the codes expire and cannot be approved.
    now[0] += 3601
    assert await harness.store.approve_pairing("telegram", pending[0].code, now=now[0]) is None
    await harness.say(dm("hi again", sender="d"))
    assert len(harness.channel.sent) == 4


async def test_allowlist_matches_id_or_alias(harness):
    await _config(harness, dmPolicy="allowlist", allowFrom=["42", "@carol"])
    assert await harness.say(dm("by id", sender="42")) is AcceptStatus.ACCEPTED
    assert await harness.say(dm("alias", sender="77", aliases=("@Carol",))) is \
        AcceptStatus.ACCEPTED
    assert await harness.say(dm("stranger", sender="99")) is AcceptStatus.REFUSED
    assert harness.channel.texts() == ["echo: by id", "echo: alias"]  # no pairing code
    assert await harness.store.pending_pairings() == []


async def test_open_and_disabled_dm_policies(harness):
    await _config(harness, dmPolicy="open", allowFrom=["*"])
    assert await harness.say(dm("anyone", sender="1")) is AcceptStatus.ACCEPTED
    harness.config = make_config(harness.tmp_path, channels=_telegram(dmPolicy="disabled"))
    assert await harness.say(dm("nope", sender="1")) is AcceptStatus.REFUSED
    assert len(harness.router.calls) == 1


async def test_unconfigured_channel_is_refused_console_always_allowed(harness):
    await _config(harness)
    assert await harness.say(dm("hi", channel="whatsapp")) is AcceptStatus.REFUSED
    assert await harness.say(dm("hi", channel="console", sender="operator")) is \
        AcceptStatus.ACCEPTED


async def test_group_policies_and_mentions(harness):
    groups = {"-100": {"requireMention": True},
              "-200": {"requireMention": False, "topics": {"5": {"requireMention": True}}},
              "-300": {"allowFrom": ["7"]}}
    await _config(harness, groupPolicy="allowlist", groups=groups)
    assert await harness.say(group("listed, mentioned", chat="-100")) is AcceptStatus.ACCEPTED
    assert await harness.say(group("no mention", chat="-100", mentioned=False)) is \
        AcceptStatus.IGNORED
    assert await harness.say(group("free talk", chat="-200", mentioned=False)) is \
        AcceptStatus.ACCEPTED
    assert await harness.say(group("topic needs mention", chat="-200", thread="5",
                                   mentioned=False)) is AcceptStatus.IGNORED
    assert await harness.say(group("unlisted", chat="-999")) is AcceptStatus.REFUSED
    assert await harness.say(group("wrong sender", chat="-300", sender="8")) is \
        AcceptStatus.REFUSED
    assert await harness.say(group("right sender", chat="-300", sender="7")) is \
        AcceptStatus.ACCEPTED
    assert len(harness.router.calls) == 3
    refused_groups = [c for c in harness.channel.sent if c.address.chat_id in ("-999",)]
    assert refused_groups == []  # groups never get pairing codes


async def test_group_wildcard_open_and_disabled(harness):
    await _config(harness, groupPolicy="allowlist", groups={"*": {"requireMention": False}})
    assert await harness.say(group("any group", chat="-5", mentioned=False)) is \
        AcceptStatus.ACCEPTED
    harness.config = make_config(harness.tmp_path, channels=_telegram(groupPolicy="open"))
    assert await harness.say(group("open, mentioned", chat="-6")) is AcceptStatus.ACCEPTED
    assert await harness.say(group("open, quiet", chat="-6", mentioned=False)) is \
        AcceptStatus.IGNORED  # requireMention defaults to true
    harness.config = make_config(harness.tmp_path, channels=_telegram(groupPolicy="disabled"))
    assert await harness.say(group("disabled", chat="-6")) is AcceptStatus.REFUSED
    assert len(harness.router.calls) == 2


def _write_config(tmp_path) -> str:
    path = tmp_path / "palaver.json5"
    path.write_text(json.dumps({"dataDir": str(tmp_path / "data"),
                                "channels": {"telegram": {"dmPolicy": "pairing"}}}))
    return str(path)


async def test_cli_pairing_list_and_approve(harness, capsys):
    harness.config = make_config(harness.tmp_path, channels=_telegram())
    await harness.start()
    await harness.say(dm("let me in", sender="314", name="Pi"))
    code = (await harness.store.pending_pairings())[0].code
    await harness.stop()
    harness.core = None
    harness.store = None

    # The CLI opens the store in the config's dataDir (tests/core uses tmp/palaver.db).
    data_dir = harness.tmp_path / "data"
    data_dir.mkdir()
    (harness.tmp_path / "palaver.db").rename(data_dir / "palaver.db")
    config_path = _write_config(harness.tmp_path)

    import asyncio

    def run(fn, **kw):
        args = argparse.Namespace(config=config_path, **kw)
        return asyncio.get_running_loop().run_in_executor(None, fn, args)

    assert await run(cmd_pairing_list) == 0
    out = capsys.readouterr().out
    assert code in out and "314" in out
    assert await run(cmd_pairing_approve, channel="telegram", code="WRONG123") == 1
    assert await run(cmd_pairing_approve, channel="telegram", code=code) == 0
    assert "Approved 314" in capsys.readouterr().out

    store = await Store.open(data_dir / "palaver.db")
    try:
        assert await store.is_approved("telegram", ["314"])
        assert await store.pending_pairings() == []
    finally:
        await store.close()


async def _admits_matches_accept(harness, inbound) -> bool:
    """admits() must predict accept() == ACCEPTED, and leave nothing behind."""
    before_rows = await harness.store.count_by_status()
    before_pairing = await harness.store.pending_pairings()
    sent = len(harness.channel.sent)
    verdict = await harness.core.admits(inbound)
    assert await harness.store.count_by_status() == before_rows  # nothing stored
    assert await harness.store.pending_pairings() == before_pairing  # no code made
    assert len(harness.channel.sent) == sent
    status = await harness.say(inbound)
    assert verdict == (status is AcceptStatus.ACCEPTED), (inbound.text, status)
    return verdict


async def test_admits_pairing_policy(harness):
    from bridge.envelope import MediaKind, MediaRef

    await _config(harness)  # pairing
    stranger = dm("photo for you", sender="666",
                  media=(MediaRef(MediaKind.IMAGE, mime="image/jpeg"),))
    assert not await _admits_matches_accept(harness, stranger)
    code = (await harness.store.pending_pairings())[0].code  # made by accept(), not admits
    await harness.store.approve_pairing("telegram", code)
    assert await _admits_matches_accept(harness, dm("hello", sender="666"))
    # A redelivered message would not be answered again.
    assert not await harness.core.admits(stranger)


async def test_admits_allowlist_open_disabled(harness):
    await _config(harness, dmPolicy="allowlist", allowFrom=["42"])
    assert await _admits_matches_accept(harness, dm("in", sender="42"))
    assert not await _admits_matches_accept(harness, dm("out", sender="43"))
    assert not await _admits_matches_accept(harness, dm("   ", sender="42"))  # empty
    harness.config = make_config(harness.tmp_path,
                                 channels=_telegram(dmPolicy="open", allowFrom=["*"]))
    assert await _admits_matches_accept(harness, dm("anyone", sender="99"))
    harness.config = make_config(harness.tmp_path, channels=_telegram(dmPolicy="disabled"))
    assert not await _admits_matches_accept(harness, dm("no", sender="42"))
    assert await _admits_matches_accept(harness, dm("console", channel="console"))


async def test_admits_groups_and_mentions(harness):
    groups = {"-100": {"requireMention": True}, "-200": {"requireMention": False}}
    await _config(harness, groupPolicy="allowlist", groups=groups)
    assert await _admits_matches_accept(harness, group("hey @bot", chat="-100"))
    assert not await _admits_matches_accept(harness, group("chatter", chat="-100",
                                                           mentioned=False))
    assert await _admits_matches_accept(harness, group("chatter", chat="-200",
                                                       mentioned=False))
    assert not await _admits_matches_accept(harness, group("unlisted", chat="-300"))
    harness.config = make_config(harness.tmp_path, channels=_telegram(groupPolicy="disabled"))
    assert not await _admits_matches_accept(harness, group("off", chat="-100"))


async def test_allow_from_username_is_pinned_to_the_first_id_seen(harness):
    await _config(harness, dmPolicy="allowlist", allowFrom=["@Alice"])
    # admits() is a dry run: it answers yes but pins nothing.
    assert await harness.core.admits(dm("hi", sender="100", aliases=("@alice",)))
    assert await harness.store.kv_get("access.username", "telegram:@alice") is None
    assert await harness.say(dm("hi", sender="100", aliases=("@alice",))) \
        is AcceptStatus.ACCEPTED
    assert await harness.store.kv_get("access.username", "telegram:@alice") == "100"
    # Alice renames; someone else takes the released username: not let in.
    assert await harness.say(dm("me too", sender="200", aliases=("@alice",))) \
        is AcceptStatus.REFUSED
    # Alice under a new username is still Alice (pinned by id), across a restart too.
    harness.core.access._pins.clear()
    assert await harness.say(dm("still me", sender="100", aliases=("@alice2",))) \
        is AcceptStatus.ACCEPTED
    assert await harness.say(dm("again", sender="200", aliases=("@alice",))) \
        is AcceptStatus.REFUSED


async def test_allow_from_username_in_group_allow_list(harness):
    await _config(harness, groups={"-100": {"requireMention": False, "allowFrom": ["@bob"]}})
    def bob(sender):
        return dataclasses.replace(group("yo", sender=sender), sender_aliases=("@bob",))

    assert await harness.say(bob("7")) is AcceptStatus.ACCEPTED
    assert await harness.say(bob("8")) is AcceptStatus.REFUSED
