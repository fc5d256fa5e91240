"""``channels.modelByChannel.<channel>.<id>``: OpenClaw's per-chat pins, validated, at
the level of the chat's own groups/direct/topics entry; and where a selection comes from."""

from __future__ import annotations

import pytest

from bridge.config.load import ConfigError, load_config_text
from bridge.config.resolve import selection_source
from bridge.config.schema import Config

BASE = """
  models: { mode: "replace", providers: { lab: { baseUrl: "http://127.0.0.1:1234/v1",
    models: [{ id: "a" }, { id: "b" }, { id: "c" }, { id: "d" }, { id: "e" }] } } },
  agents: { defaults: { model: "lab/a", models: { "lab/e": { alias: "Eve" } } } },
"""


def cfg(channels: str) -> Config:
    return load_config_text("{" + BASE + "channels: {" + channels + "} }", file="t.json5",
                            env={})


def sel(config: Config, kind: str, chat: str, **kw: str) -> tuple[str | None, str, str]:
    selection, source = selection_source(config, "telegram", chat_kind=kind, chat_id=chat,
                                         **kw)
    return selection.primary, source.level, source.path


def test_an_openclaw_block_works_as_copied():
    config = cfg("""
      telegram: { groups: { "*": { model: "lab/d" } } },
      modelByChannel: { telegram: { "-1001234567890": "lab/b",
                                    "-1001234567890:topic:99": "Eve",
                                    "4242": { primary: "lab/c", fallbacks: ["lab/a"] } } },
    """)
    assert sel(config, "group", "-1001234567890") == (
        "lab/b", "group", "channels.modelByChannel.telegram.-1001234567890")
    assert sel(config, "group", "-1001234567890", thread_id="99") == (
        "Eve", "topic", "channels.modelByChannel.telegram.-1001234567890:topic:99")
    assert config.candidates(config.selection_for(
        "telegram", chat_kind="group", chat_id="-1001234567890", thread_id="99")) == ["lab/e"]
    # another topic of the same group: the group's pin
    assert sel(config, "group", "-1001234567890", thread_id="1")[0] == "lab/b"
    # a direct chat by the peer's id, with fallbacks
    assert config.candidates(config.selection_for(
        "telegram", chat_kind="direct", chat_id="4242", sender_id="4242")) == ["lab/c", "lab/a"]
    # pins beat "*" and the channel; others fall through to them
    assert sel(config, "group", "-100999") == ("lab/d", "group *",
                                               'channels.telegram.groups["*"].model')
    assert sel(config, "direct", "1") == ("lab/a", "default", "agents.defaults.model")


def test_the_chats_own_entry_comes_first_at_the_same_level():
    config = cfg("""
      telegram: { model: "lab/d",
        groups: { "-100": { model: "lab/c", topics: { "7": { model: "lab/e" } } },
                  "-200": { requireMention: false } },
        direct: { "555": { model: "lab/c" } } },
      modelByChannel: { telegram: { "-100": "lab/b", "-200": "lab/b", "555": "lab/b",
                                    "-100:topic:7": "lab/b", "-100:topic:8": "lab/b" } },
    """)
    assert sel(config, "group", "-100") == ("lab/c", "group",
                                            "channels.telegram.groups.-100.model")
    assert sel(config, "group", "-200")[:2] == ("lab/b", "group")  # entry without a model
    assert sel(config, "group", "-100", thread_id="7")[:2] == ("lab/e", "topic")
    assert sel(config, "group", "-100", thread_id="8")[:2] == ("lab/b", "topic")
    assert sel(config, "direct", "555", sender_id="555")[:2] == ("lab/c", "direct")
    assert sel(config, "direct", "9", sender_id="9") == ("lab/d", "channel",
                                                         "channels.telegram.model")


@pytest.mark.parametrize("block, where, words", [
    ('modelByChannel: { telegram: { "-1": "lab/zzz" } }',
     'channels.modelByChannel.telegram["-1"]', "lists no model 'zzz'"),
    ('modelByChannel: { discord: { "1": "lab/a" } }', "channels.modelByChannel",
     "unknown channel 'discord'"),
    ('modelByChannel: { telegram: { "-1": 3 } }', 'channels.modelByChannel.telegram["-1"]',
     "model ref"),
])
def test_pins_are_validated(block, where, words):
    with pytest.raises(ConfigError) as info:
        cfg(block)
    text = str(info.value)
    assert where in text and words in text, text
