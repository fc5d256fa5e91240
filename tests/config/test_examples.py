"""The issue's example and every file in config/ load and validate as written."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.config.load import load_config
from bridge.config.schema import Config

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "config").glob("*.json5"))
ENV = {"TELEGRAM_BOT_TOKEN": "123456789:AAH-tg-secret-2-abcdefghijklmnopqrstuv", "LITELLM_API_KEY": "sk-litellm"}

ISSUE_EXAMPLE = """
{
  agents: {
    defaults: {
      model: { primary: "lmstudio/minimax-m2.1-gs32", fallbacks: ["anthropic/claude-sonnet-4-5"] },
      models: {
        "lmstudio/minimax-m2.1-gs32": { alias: "Minimax" },
        "anthropic/claude-sonnet-4-5": { alias: "Sonnet" },
      },
    },
  },
  models: {
    mode: "merge",
    providers: {
      lmstudio: {
        baseUrl: "http://127.0.0.1:1234/v1",
        apiKey: "lmstudio",
        api: "openai-responses",
        models: [{ id: "minimax-m2.1-gs32", name: "MiniMax M2.1 GS32", reasoning: false, input: ["text"],
                   cost: { input: 0, output: 0, cacheRead: 0, cacheWrite: 0 }, contextWindow: 196608, maxTokens: 8192 }],
      },
    },
  },
}
"""


def test_issue_example_loads_as_written(tmp_path):
    path = tmp_path / "palaver.json5"
    path.write_text(ISSUE_EXAMPLE)
    config = load_config(path, env={"ANTHROPIC_API_KEY": "sk-ant-x"})

    assert config.candidates(config.default_selection()) == [
        "lmstudio/minimax-m2.1-gs32", "anthropic/claude-sonnet-4-5"]
    local = config.model("minimax")
    assert (local.api, local.base_url, local.context_window, local.max_tokens) == (
        "openai-responses", "http://127.0.0.1:1234/v1", 196608, 8192)
    assert local.api_key.get_secret_value() == "lmstudio"
    assert local.name == "MiniMax M2.1 GS32" and local.alias == "Minimax"
    assert not local.reasoning and local.input == ("text",)
    sonnet = config.model("Sonnet")
    assert sonnet.api == "anthropic-messages" and sonnet.context_window == 200_000
    assert sonnet.api_key.get_secret_value() == "sk-ant-x"


def test_lmstudio_example_file_is_the_issue_example():
    text = (ROOT / "config" / "lmstudio-local.json5").read_text()
    assert ISSUE_EXAMPLE.strip() in text


def test_every_example_is_covered():
    names = {p.name for p in EXAMPLES}
    assert {"lmstudio-local.json5", "hosted-primary-local-fallback.json5",
            "local-first-hosted-safety-net.json5", "vllm-litellm-custom.json5",
            "vision-model.json5", "localai.json5", "openrouter.json5",
            "voice-localai.json5"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_loads_and_every_ref_resolves(path):
    config = load_config(path, env=ENV)
    assert isinstance(config, Config)
    selection = config.default_selection()
    refs = config.candidates(selection)
    assert refs and refs[0] == config.resolve_ref(selection.primary)
    for ref in refs:
        resolved = config.model(ref)
        assert resolved.base_url.startswith("http")
    # ${TELEGRAM_BOT_TOKEN} was interpolated wherever a Telegram block exists.
    if config.channels.telegram is not None and config.channels.telegram.botToken:
        assert config.channels.telegram.botToken.get_secret_value() == ENV["TELEGRAM_BOT_TOKEN"]


def test_example_specifics():
    load = lambda name: load_config(ROOT / "config" / name, env=ENV)  # noqa: E731
    custom = load("vllm-litellm-custom.json5")
    assert custom.model("vllm/Qwen/Qwen3-8B").api == "openai-completions"  # no api given
    assert custom.model("vllm/Qwen/Qwen3-8B").timeouts.totalSeconds == 180
    assert set(custom.models.providers) == {"vllm", "litellm"}  # replace mode
    assert custom.model("Proxy").api_key.get_secret_value() == "sk-litellm"

    vision = load("vision-model.json5")
    assert vision.model("Vision").vision

    localai = load("localai.json5")
    m = localai.model(localai.default_selection().primary)
    assert (m.provider, m.base_url) == ("localai", "http://127.0.0.1:8080/v1")

    openrouter = load("openrouter.json5")
    ids = [mm.id for mm in openrouter.models.providers["openrouter"].models]
    assert "minimax/minimax-m2.1" in ids and "z-ai/glm-4.6" in ids  # merged by id
    assert openrouter.model("M2").api == "openai-completions"
    assert openrouter.model("M2").api_key is None  # OPENROUTER_API_KEY unset: no creds

    local_first = load("local-first-hosted-safety-net.json5")
    sel = local_first.selection_for("telegram", chat_kind="group",
                                    chat_id="-1001234567890", thread_id="42")
    assert local_first.candidates(sel) == ["openai/gpt-5-mini"]
