"""config/voice-localai.json5 validates whole, its voice refs resolve to audio-capable
providers served by the compose file's LocalAI; the voice keys' rules."""

from __future__ import annotations

from pathlib import Path

import json5
import pytest
import yaml

from bridge.config.load import ConfigError, load_config, load_config_text
from bridge.config.resolve import transcribe_for_mentions, voice_candidates
from bridge.voice.client import AUDIO_APIS

ROOT = Path(__file__).parents[2]
EXAMPLE = ROOT / "config" / "voice-localai.json5"
ENV = {"TELEGRAM_BOT_TOKEN": "123456789:AAH-tg-secret-2-abcdefghijklmnopqrstuv"}


def test_example_validates_whole():
    config = load_config(EXAMPLE, env=ENV)
    d = config.agents.defaults
    assert d.transcription.model is not None
    assert d.transcription.model.primary == "localai/whisper-base"
    assert d.transcription.echoTranscript and d.transcription.language == "en"
    assert d.speech.replyWithVoice == "whenVoice" and d.speech.maxChars == 600
    assert config.channels.telegram is not None
    assert config.channels.telegram.audioMaxSeconds == 300
    assert config.channels.telegram.groups["*"].transcribeForMentions is True
    refs = [c.ref for c in voice_candidates(config, "transcription")
            if not isinstance(c, str)]
    assert refs == ["localai/whisper-base", "openai/whisper-1"]
    for ref in refs + ["localai/voice-en-us-amy-low"]:
        assert config.model(ref).api in AUDIO_APIS, ref
    assert config.model("localai/whisper-base").base_url == "http://127.0.0.1:8080/v1"
    assert transcribe_for_mentions(config, "telegram", "-100123")


def test_compose_serves_the_example_audio_models():
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    localai = compose["services"]["localai"]
    served = set(localai["command"]) | set(localai["environment"]["LOCALAI_MODELS"].split(","))
    raw = json5.loads(EXAMPLE.read_text())
    for ref in (raw["agents"]["defaults"]["transcription"]["model"]["primary"],
                raw["agents"]["defaults"]["speech"]["model"],
                raw["agents"]["defaults"]["model"]["primary"]):
        provider, _, model_id = ref.partition("/")
        assert provider == "localai" and model_id in served, ref


def _load(text: str):
    return load_config_text(text, env={})


def test_defaults_are_off():
    d = _load("{}").agents.defaults
    assert d.transcription.model is None and not d.transcription.echoTranscript
    assert d.speech.model is None and d.speech.replyWithVoice == "never"
    assert d.speech.maxChars == 1000 and d.speech.voice == "alloy"
    config = _load('{channels: {whatsapp: {groups: {"g": {}}}}}')
    assert config.channels.whatsapp is not None
    assert config.channels.whatsapp.audioMaxSeconds == 300
    assert not transcribe_for_mentions(config, "whatsapp", "g")


@pytest.mark.parametrize("section", ["transcription", "speech"])
def test_an_anthropic_model_cannot_serve_voice(section):
    with pytest.raises(ConfigError) as err:
        _load(f'{{agents: {{defaults: {{{section}: {{model: "anthropic/claude-haiku-4-5"}}}}}}}}')
    text = err.value.render()
    assert f"agents.defaults.{section}.model.primary" in text
    assert "anthropic-messages" in text


def test_an_unknown_voice_ref_names_its_path():
    with pytest.raises(ConfigError) as err:
        _load('{models: {providers: {localai: {baseUrl: "http://127.0.0.1:8080/v1", '
              'models: [{id: "whisper-base"}]}}}, agents: {defaults: {transcription: '
              '{model: {primary: "localai/whisper-base", fallbacks: ["localai/whisper-big"]}}}}}')
    text = err.value.render()
    assert "agents.defaults.transcription.model.fallbacks[0]" in text
    assert "whisper-big" in text


@pytest.mark.parametrize("bad", [
    '{agents: {defaults: {speech: {replyWithVoice: "sometimes"}}}}',
    '{agents: {defaults: {speech: {maxChars: 10}}}}',
    '{channels: {telegram: {audioMaxSeconds: 0}}}',
])
def test_bad_voice_values_are_refused(bad):
    with pytest.raises(ConfigError):
        _load(bad)


def test_topic_overrides_transcribe_for_mentions():
    config = _load('{channels: {telegram: {groups: {"*": {transcribeForMentions: true}, '
                   '"-1001": {requireMention: true, topics: {"7": {transcribeForMentions: '
                   'false}}}, "-1002": {transcribeForMentions: false}}}}}')
    assert transcribe_for_mentions(config, "telegram", "-1001")  # the "*" entry's
    assert not transcribe_for_mentions(config, "telegram", "-1001", "7")
    assert not transcribe_for_mentions(config, "telegram", "-1002")
    assert transcribe_for_mentions(config, "telegram", "-1009")
