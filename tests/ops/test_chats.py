"""``palaver chats``: naming chats, the next model and its source, pins through the edit
engine (into the chat's own entry, else modelByChannel), resets of the /model choice."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import json5
import pytest

from bridge.chats import (
    ChatError,
    ChatRef,
    list_chats,
    next_model,
    pin_changes,
    pin_model,
    reset_choice,
)
from bridge.cli import main
from bridge.config.edit import InvalidEditError
from bridge.config.load import load_config, load_config_text
from bridge.config.schema import ModelSelection
from bridge.envelope import ChatAddress, ChatKind, Inbound
from bridge.store import MessageStatus, Store

TOKEN = "123456789:AAH-chats-test-token-abcdefghijklmnop"
CONFIG = """\
// chats test config
{
  dataDir: "DATA",
  models: {
    mode: "replace",
    providers: {
      local: {
        baseUrl: "http://127.0.0.1:9/v1",
        models: [{ id: "a" }, { id: "b" }, { id: "c" }],
      },
    },
  },
  agents: {
    defaults: {
      model: { primary: "local/a", fallbacks: ["local/c"] },
      models: { "local/b": { alias: "Bee" } },
    },
  },
  channels: {
    telegram: {
      botToken: "${TG_TOKEN}",
      groupPolicy: "allowlist",
      groups: {
        "*": { allowFrom: ["42"] },  // strangers' groups: only 42 may talk
        "-100777": { requireMention: false },  // the family group
      },
      direct: { "555": { systemPrompt: "be kind" } },
    },
  },
}
"""


@pytest.fixture
def config_path(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TG_TOKEN", TOKEN)
    path = tmp_path / "palaver.json5"
    path.write_text(CONFIG.replace("DATA", str(tmp_path / "data")))
    return path


def _inbound(chat_id: str, kind: ChatKind, sender: str, mid: str, *, name: str = "Ann",
             thread: str | None = None, title: str | None = None) -> Inbound:
    return Inbound(ChatAddress("telegram", "default", chat_id, kind, thread), sender, mid,
                   1.0, text="hi", sender_name=name, chat_title=title)


@pytest.mark.parametrize("text, ref", [
    ("telegram:-1001234567890", ChatRef("telegram", "-1001234567890", "group")),
    ("telegram:-100123:topic:7", ChatRef("telegram", "-100123", "group", "7")),
    ("whatsapp:+15551234567", ChatRef("whatsapp", "+15551234567", "direct")),
    ("whatsapp:1203630@g.us", ChatRef("whatsapp", "1203630@g.us", "group")),
    ("telegram:123456", ChatRef("telegram", "123456", "direct")),
    ("telegram:group:777", ChatRef("telegram", "777", "group")),
])
def test_chat_names_parse_and_print_back(text, ref):
    assert ChatRef.parse(text) == ref
    if ":group:" not in text:
        assert str(ref) == text


@pytest.mark.parametrize("bad", ["telegram", "telegram:", ":123", "telegram:-1:topic:"])
def test_bad_chat_names(bad):
    with pytest.raises(ChatError):
        ChatRef.parse(bad)


def test_the_source_of_each_level(config_path):
    config = load_config(config_path)
    fam = ChatRef("telegram", "-100777", "group")
    assert next_model(config, fam).source == "the default (agents.defaults.model)"
    assert next_model(config, fam, stored_choice="Bee").source == "this chat's /model choice"
    assert next_model(config, fam, stored_choice="Bee").ref == "local/b"
    # a stored choice that no longer resolves falls back to the config
    assert next_model(config, fam, stored_choice="gone/x").ref == "local/a"
    pinned = load_config_text(CONFIG.replace(
        '"-100777": { requireMention: false }',
        '"-100777": { requireMention: false, model: "Bee",'
        ' topics: { "9": { model: "local/c" } } }'), env={"TG_TOKEN": TOKEN})
    assert next_model(pinned, fam).source == \
        "its group entry (channels.telegram.groups.-100777.model)"
    topic = ChatRef("telegram", "-100777", "group", "9")
    assert next_model(pinned, topic).ref == "local/c"
    assert "its topic entry" in next_model(pinned, topic).source


def test_a_pin_goes_into_the_chats_own_entry_else_model_by_channel(config_path):
    config = load_config(config_path)
    family = ChatRef("telegram", "-100777", "group")
    stranger = ChatRef("telegram", "-100888", "group")
    (c,) = pin_changes(config, family, "Bee")
    assert c.path == ("channels", "telegram", "groups", "-100777", "model")
    (c,) = pin_changes(config, stranger, "Bee")
    assert c.path == ("channels", "modelByChannel", "telegram", "-100888")
    (c,) = pin_changes(config, ChatRef("telegram", "-100777", "group", "5"), "Bee")
    assert c.path == ("channels", "telegram", "groups", "-100777", "topics", "5", "model")
    (c,) = pin_changes(config, ChatRef("telegram", "-100888", "group", "5"), "Bee")
    assert c.path == ("channels", "modelByChannel", "telegram", "-100888:topic:5")
    (c,) = pin_changes(config, ChatRef("telegram", "555", "direct"), "Bee")
    assert c.path == ("channels", "telegram", "direct", "555", "model")
    (c,) = pin_changes(config, ChatRef("telegram", "556", "direct"), "Bee")
    assert c.path == ("channels", "modelByChannel", "telegram", "556")
    # wider scopes
    (c,) = pin_changes(config, stranger, "Bee", "channel")
    assert c.path == ("channels", "telegram", "model")
    (c,) = pin_changes(config, stranger, "local/b", "default")
    assert c.value == {"primary": "local/b", "fallbacks": ["local/c"]}  # fallbacks kept
    # a fallback that becomes the primary is not kept as its own fallback too
    (c,) = pin_changes(config, stranger, "local/c", "default")
    assert c.value == "local/c"
    config_ab = config.model_copy(update={"agents": config.agents.model_copy(update={
        "defaults": config.agents.defaults.model_copy(update={"model": ModelSelection(
            primary="local/a", fallbacks=("Bee", "local/c"))})})})
    (c,) = pin_changes(config_ab, stranger, "local/b", "default")
    assert c.value == {"primary": "local/b", "fallbacks": ["local/c"]}  # alias Bee = local/b
    with pytest.raises(ChatError, match="turn the channel on"):
        pin_changes(config, ChatRef("whatsapp", "+1555", "direct"), "Bee", "channel")
    with pytest.raises(ChatError, match="channels.whatsapp is not in the config"):
        pin_changes(config, ChatRef("whatsapp", "+1555", "direct"), "Bee")


def test_pinning_a_strangers_group_does_not_let_anyone_talk_there(config_path):
    result = pin_model(config_path, ChatRef("telegram", "-100888", "group"), "Bee")
    config = result.edit.config
    # The group still falls under "*" (allowFrom 42) for access ...
    assert "-100888" not in config.channels.telegram.groups
    # ... and answers with Bee.
    assert result.next.ref == "local/b" and "modelByChannel" in result.next.source
    text = config_path.read_text()
    assert "// strangers' groups: only 42 may talk" in text
    # and unpinning removes it again
    pin_model(config_path, ChatRef("telegram", "-100888", "group"), None, clear=True)
    assert load_config(config_path).channels.modelByChannel["telegram"] == {}


def test_an_unknown_model_pins_nothing(config_path):
    before = config_path.read_bytes()
    with pytest.raises(InvalidEditError) as info:
        pin_model(config_path, ChatRef("telegram", "-100777", "group"), "nope")
    assert "unknown alias 'nope'" in str(info.value)
    assert config_path.read_bytes() == before


async def test_listing_filters_and_reset(config_path, tmp_path):
    store = await Store.open_in(tmp_path / "data")
    try:
        await store.record_inbound(_inbound("555", ChatKind.DIRECT, "555", "1", name="Eve"))
        await store.record_inbound(_inbound("-100777", ChatKind.GROUP, "42", "2",
                                            title="Family"))
        await store.record_inbound(_inbound("-100777", ChatKind.GROUP, "42", "4",
                                            title="The Family"))  # renamed: the latest
        await store.record_inbound(_inbound("-100777", ChatKind.GROUP, "42", "3", thread="9"))
        await store.record_inbound(  # a stranger's group's title is not kept
            _inbound("-100999", ChatKind.GROUP, "66", "5", title="Spam"),
            status=MessageStatus.REFUSED, reason="group not allowed")
        fam = ChatRef("telegram", "-100777", "group")
        await store.set_chat_setting(fam.session_key, "model", "local/b")
        config = load_config(config_path)
        rows = await list_chats(config, store)
        by_chat = {r.chat: r for r in rows}
        assert set(by_chat) == {"telegram:555", "telegram:-100777", "telegram:-100777:topic:9",
                                "telegram:-100999"}
        assert by_chat["telegram:555"].name == "Eve" and by_chat["telegram:555"].kind == "direct"
        assert by_chat["telegram:-100777"].name == "The Family"
        assert by_chat["telegram:-100999"].name == ""
        assert by_chat["telegram:-100777"].model == "local/b"
        assert by_chat["telegram:-100777"].model_source == "this chat's /model choice"
        assert by_chat["telegram:-100777"].pending == 2
        assert by_chat["telegram:-100777:topic:9"].kind == "topic"
        assert [r.chat for r in await list_chats(config, store, kind="topic")] == \
            ["telegram:-100777:topic:9"]
        assert await list_chats(config, store, channel="whatsapp") == []
        assert await reset_choice(store, fam) is True
        assert await store.chat_setting(fam.session_key, "model") is None
        assert await reset_choice(store, fam) is False
    finally:
        await store.close()


def test_cli_chats_model_reset_and_list(config_path, tmp_path, capsys):
    fam = ChatRef("telegram", "-100777", "group")

    async def seed() -> None:
        store = await Store.open_in(tmp_path / "data")
        try:
            await store.record_inbound(_inbound("-100777", ChatKind.GROUP, "42", "2"))
            await store.set_chat_setting(fam.session_key, "model", "local/c")
        finally:
            await store.close()

    asyncio.run(seed())
    c = str(config_path)
    assert main(["chats", "model", "telegram:-100777", "Bee", "--dry-run", "-c", c]) == 0
    out = capsys.readouterr().out
    assert '+        "-100777": { requireMention: false, model: "Bee" },' in out
    assert "model: \"Bee\"" not in config_path.read_text()
    assert main(["chats", "model", "telegram:-100777", "Bee", "-c", c]) == 0
    assert "telegram:-100777 now: local/b" in capsys.readouterr().out
    assert json5.loads(config_path.read_text())["channels"]["telegram"]["groups"][
        "-100777"] == {"requireMention": False, "model": "Bee"}
    assert main(["chats", "--json", "-c", c]) == 0
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert row["model"] == "local/c" and row["model_choice"] == "local/c"
    assert main(["chats", "reset", "telegram:-100777", "-c", c]) == 0
    assert "it now uses local/b" in capsys.readouterr().out
    assert main(["chats", "-c", c]) == 0
    table = capsys.readouterr().out
    assert "telegram:-100777" in table and "its group entry" in table
    assert main(["chats", "model", "telegram:-100777", "--clear", "-c", c]) == 0
    assert "model" not in json5.loads(config_path.read_text())["channels"]["telegram"][
        "groups"]["-100777"]
    assert main(["chats", "model", "telegram:-100777", "-c", c]) == 1  # neither REF nor --clear
    assert main(["chats", "model", "telegram:-100777", "Bee", "--default", "-c", c]) == 0
    assert load_config(config_path).agents.defaults.model.primary == "Bee"
    assert TOKEN not in capsys.readouterr().out
