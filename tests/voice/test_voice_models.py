"""Voice models in the catalog and in discovery: OpenAI's transcription and speech
built-ins, ``ModelDef.kind``, and a LocalAI listing Whisper and Piper beside a chat model."""

from __future__ import annotations

import pytest

from bridge.config.load import load_config_text
from bridge.config.resolve import voice_candidates
from bridge.discovery import ProbeTarget, discover, hosted_fallbacks, model_kind
from tests.fakes.model_server import FakeModelServer

AUDIO_BUILTINS = {"whisper-1": "transcription", "gpt-4o-transcribe": "transcription",
                  "gpt-4o-mini-transcribe": "transcription", "tts-1": "speech",
                  "tts-1-hd": "speech", "gpt-4o-mini-tts": "speech"}


def test_openai_builtins_include_the_audio_models_as_their_kind():
    config = load_config_text("{}", env={"OPENAI_API_KEY": "sk-test-1"})
    openai = config.models.providers["openai"]
    kinds = {m.id: m.kind for m in openai.models}
    for model_id, kind in AUDIO_BUILTINS.items():
        assert kinds[model_id] == kind
    assert kinds["gpt-5-mini"] == "chat"
    # A hosted fallback is a chat model, never Whisper.
    assert hosted_fallbacks(config) == ["openai/gpt-5-mini"]


def test_builtin_transcription_ref_validates_and_resolves():
    config = load_config_text(
        '{agents: {defaults: {transcription: {model: "openai/gpt-4o-mini-transcribe"}, '
        'speech: {model: {primary: "openai/tts-1", fallbacks: ["openai/gpt-4o-mini-tts"]}}}}}',
        env={"OPENAI_API_KEY": "sk-test-1"})
    [t] = voice_candidates(config, "transcription")
    assert not isinstance(t, str) and t.base_url == "https://api.openai.com/v1"
    assert [getattr(c, "ref", c) for c in voice_candidates(config, "speech")] == [
        "openai/tts-1", "openai/gpt-4o-mini-tts"]


def test_the_implicit_primary_is_a_chat_model():
    config = load_config_text(
        '{models: {providers: {localai: {baseUrl: "http://127.0.0.1:8080/v1", models: ['
        '{id: "whisper-base", kind: "transcription"}, {id: "llama"}]}}}}', env={})
    assert config.default_selection().primary == "localai/llama"


@pytest.mark.parametrize(("model_id", "kind"), [
    ("whisper-base", "transcription"), ("whisper-1", "transcription"),
    ("Systran/faster-whisper-small", "transcription"), ("voice-en-us-amy-low", "speech"),
    ("tts-1", "speech"), ("piper-en", "speech"), ("llama-3.2-1b-instruct:q4_k_m", "chat"),
    ("gpt-4o-mini", "chat"),
])
def test_model_kind_from_a_listed_id(model_id, kind):
    assert model_kind(model_id) == kind


async def test_discovered_localai_marks_whisper_and_piper_and_chats_with_the_llm():
    async with FakeModelServer(models=["whisper-base", "voice-en-us-amy-low",
                                       "llama-3.2-1b-instruct:q4_k_m"]) as server:
        found = await discover(load_config_text("{}", env={}), targets=(
            ProbeTarget("localai", "LocalAI / llama.cpp", server.port),))
    assert found.config is not None
    assert found.config.default_selection().primary == "localai/llama-3.2-1b-instruct:q4_k_m"
    kinds = {m.id: m.kind for m in found.config.models.providers["localai"].models}
    assert kinds == {"llama-3.2-1b-instruct:q4_k_m": "chat", "whisper-base": "transcription",
                     "voice-en-us-amy-low": "speech"}


async def test_a_server_with_only_whisper_is_not_a_chat_server():
    async with FakeModelServer(models=["whisper-base"]) as server:
        found = await discover(load_config_text("{}", env={}), targets=(
            ProbeTarget("localai", "LocalAI / llama.cpp", server.port),))
    assert found.config is None
    assert found.results[0].error == "answers but lists no chat model"
