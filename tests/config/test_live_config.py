"""Issue 17's config keys: where each may be set, the defaults, and the errors."""

from __future__ import annotations

import pytest

from bridge.config.load import ConfigError, load_config_text
from bridge.config.resolve import chat_setting, group_context_for, streaming_for


def _load(text: str):
    return load_config_text(text, file="live.json5")


def test_drafts_in_a_group_or_topic_are_an_error_naming_the_path():
    with pytest.raises(ConfigError) as err:
        _load('{ channels: { telegram: { groups: { "-100": { streaming: "draft",'
              ' topics: { "7": { streaming: "draft" } } } } } } }')
    text = str(err.value)
    assert 'channels.telegram.groups["-100"].streaming' in text
    assert 'channels.telegram.groups["-100"].topics["7"].streaming' in text
    assert "direct chats only" in text and "live.json5" in text


def test_whatsapp_takes_no_preview_anywhere():
    with pytest.raises(ConfigError) as err:
        _load('{ channels: { whatsapp: { streaming: "edit" } } }')
    assert "channels.whatsapp.streaming" in str(err.value)
    with pytest.raises(ConfigError) as err:
        _load('{ channels: { whatsapp: { groups: { "*": { streaming: "edit" } },'
              ' direct: { "+1": { streaming: "draft" } } } } }')
    text = str(err.value)
    assert 'channels.whatsapp.groups["*"].streaming' in text
    assert 'channels.whatsapp.direct["+1"].streaming' in text
    assert _load('{ channels: { whatsapp: { direct: { "+1": { streaming: "off" } } } } }')


def test_streaming_defaults_and_the_most_specific_setting():
    config = _load('{ channels: { telegram: { groups: { "-100": { streaming: "edit",'
                   ' topics: { "7": { streaming: "off" } } }, "*": {} },'
                   ' direct: { "42": { streaming: "edit" } } } } }')
    assert streaming_for(config, "telegram", chat_kind="direct", chat_id="1") == "draft"
    assert streaming_for(config, "telegram", chat_kind="direct", chat_id="42",
                         sender_id="42") == "edit"
    assert streaming_for(config, "telegram", chat_kind="group", chat_id="-5") == "off"
    assert streaming_for(config, "telegram", chat_kind="group", chat_id="-100") == "edit"
    assert streaming_for(config, "telegram", chat_kind="group", chat_id="-100",
                         thread_id="7") == "off"
    assert streaming_for(config, "whatsapp", chat_kind="direct", chat_id="1") == "off"


def test_reactions_interval_and_context_resolve_per_chat():
    config = _load('{ channels: { telegram: { ackReaction: "👍", streamingIntervalMs: 2000,'
                   ' groups: { "-100": { ackReaction: "", groupContextMessages: 5,'
                   ' topics: { "7": { groupContextMessages: 0 } } },'
                   ' "*": { groupContextMessages: 3 } } } } }')
    where = {"chat_kind": "group", "chat_id": "-100"}
    assert chat_setting(config, "telegram", "ackReaction", **where) == ""
    assert chat_setting(config, "telegram", "ackReaction", chat_kind="direct",
                        chat_id="1") == "👍"
    assert chat_setting(config, "telegram", "streamingIntervalMs", **where) == 2000
    assert group_context_for(config, "telegram", "-100") == 5
    assert group_context_for(config, "telegram", "-100", "7") == 0
    assert group_context_for(config, "telegram", "-9") == 3  # the "*" group
    assert group_context_for(_load("{}"), "telegram", "-9") == 20  # the default
    assert chat_setting(_load("{}"), "telegram", "ackReaction", chat_kind="direct",
                        chat_id="1") is None  # no telegram section configured


def test_think_tags_and_preview_resolve_model_over_provider():
    config = _load('{ models: { providers: { local: { baseUrl: "http://127.0.0.1:1/v1",'
                   ' thinkTags: "paired", preview: false,'
                   ' models: [ { id: "a", thinkTags: "auto" }, { id: "b", preview: true } ] } } } }')
    a, b = config.model("local/a"), config.model("local/b")
    assert (a.think_tags, a.preview) == ("auto", False)
    assert (b.think_tags, b.preview) == ("paired", True)
    assert config.model("anthropic/claude-sonnet-4-5").think_tags == "paired"  # built in
