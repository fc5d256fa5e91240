"""The voice example config: everything but the voice keys validates with today's schema;
once the schema has the voice keys (see the voice report) the whole file validates and
the refs resolve to audio-capable providers.  (It moves to config/ with the schema.)"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import json5
import pytest
import yaml

from bridge.config.load import load_config, load_config_text
from bridge.config.schema import AgentDefaults, GroupConfig, TelegramConfig
from bridge.voice.client import AUDIO_APIS

EXAMPLE = Path(__file__).parent / "data" / "voice-localai.json5"
ENV = {"TELEGRAM_BOT_TOKEN": "123456789:AAH-tg-secret-2-abcdefghijklmnopqrstuv"}
VOICE_SCHEMA = ("transcription" in AgentDefaults.model_fields
                and "speech" in AgentDefaults.model_fields
                and "audioMaxSeconds" in TelegramConfig.model_fields
                and "transcribeForMentions" in GroupConfig.model_fields)


def _without_voice_keys(raw: dict) -> dict:
    data = copy.deepcopy(raw)
    defaults = data["agents"]["defaults"]
    defaults.pop("transcription")
    defaults.pop("speech")
    telegram = data["channels"]["telegram"]
    telegram.pop("audioMaxSeconds")
    for group in telegram["groups"].values():
        group.pop("transcribeForMentions")
    return data


def test_example_is_valid_apart_from_the_voice_keys():
    raw = json5.loads(EXAMPLE.read_text())
    config = load_config_text(json.dumps(_without_voice_keys(raw)), file=EXAMPLE, env=ENV)
    voice = raw["agents"]["defaults"]
    refs = [voice["transcription"]["model"]["primary"],
            *voice["transcription"]["model"]["fallbacks"], voice["speech"]["model"]]
    for ref in refs:
        model = config.model(ref)
        assert model.api in AUDIO_APIS, ref  # an OpenAI-style server, not Anthropic's
    assert config.model("localai/whisper-base").base_url == "http://127.0.0.1:8080/v1"
    assert voice["speech"]["replyWithVoice"] in ("never", "whenVoice", "always")


@pytest.mark.skipif(not VOICE_SCHEMA, reason="the schema has no voice keys yet")
def test_example_validates_whole():
    config = load_config(EXAMPLE, env=ENV)
    t = config.agents.defaults.transcription  # type: ignore[attr-defined]
    assert t.model.primary == "localai/whisper-base" and t.echoTranscript
    assert config.channels.telegram.audioMaxSeconds == 300  # type: ignore[union-attr]


def test_compose_serves_the_example_audio_models():
    compose = yaml.safe_load((Path(__file__).parents[2] / "deploy" / "compose.yaml").read_text())
    localai = compose["services"]["localai"]
    served = set(localai["command"]) | set(localai["environment"]["LOCALAI_MODELS"].split(","))
    raw = json5.loads(EXAMPLE.read_text())
    for ref in (raw["agents"]["defaults"]["transcription"]["model"]["primary"],
                raw["agents"]["defaults"]["speech"]["model"],
                raw["agents"]["defaults"]["model"]["primary"]):
        provider, _, model_id = ref.partition("/")
        assert provider == "localai" and model_id in served, ref
