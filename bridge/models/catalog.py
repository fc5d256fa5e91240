"""Built-in hosted providers merged into the config when ``models.mode`` is ``merge``.

Costs are USD per million tokens (OpenClaw's convention).  Anthropic's and OpenAI's own
APIs deliver reasoning apart from the answer, never as inline tags, so they are
``thinkTags: "paired"`` (the answer streams at once); OpenRouter serves any model, so it
keeps the default.  A hosted model that is not
listed here can still be referenced on a built-in provider; it gets default metadata.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# provider id -> environment variable holding its key
BUILTIN_KEY_ENV = {
    "anthropic": "ANTHROPIC_API_KEY",
    "openai": "OPENAI_API_KEY",
    "openrouter": "OPENROUTER_API_KEY",
}
BUILTIN_PROVIDER_IDS = frozenset(BUILTIN_KEY_ENV)

_TEXT_IMAGE = ["text", "image"]

# Plain data (the on-disk shape) so the catalog is validated by the same schema as a file.
BUILTIN_CATALOG: dict[str, dict[str, Any]] = {
    "anthropic": {
        "baseUrl": "https://api.anthropic.com",
        "api": "anthropic-messages",
        "thinkTags": "paired",  # the API never inlines reasoning: previews flow at once
        "models": [
            {"id": "claude-opus-4-5", "name": "Claude Opus 4.5", "reasoning": True,
             "input": _TEXT_IMAGE, "contextWindow": 200_000, "maxTokens": 64_000,
             "cost": {"input": 5, "output": 25, "cacheRead": 0.5, "cacheWrite": 6.25}},
            {"id": "claude-sonnet-4-5", "name": "Claude Sonnet 4.5", "reasoning": True,
             "input": _TEXT_IMAGE, "contextWindow": 200_000, "maxTokens": 64_000,
             "cost": {"input": 3, "output": 15, "cacheRead": 0.3, "cacheWrite": 3.75}},
            {"id": "claude-haiku-4-5", "name": "Claude Haiku 4.5", "reasoning": True,
             "input": _TEXT_IMAGE, "contextWindow": 200_000, "maxTokens": 64_000,
             "cost": {"input": 1, "output": 5, "cacheRead": 0.1, "cacheWrite": 1.25}},
        ],
    },
    "openai": {
        "baseUrl": "https://api.openai.com/v1",
        "api": "openai-responses",
        "thinkTags": "paired",  # the API never inlines reasoning: previews flow at once
        "models": [
            {"id": "gpt-5.1", "name": "GPT-5.1", "reasoning": True, "input": _TEXT_IMAGE,
             "contextWindow": 400_000, "maxTokens": 128_000,
             "cost": {"input": 1.25, "output": 10, "cacheRead": 0.125}},
            {"id": "gpt-5-mini", "name": "GPT-5 mini", "reasoning": True, "input": _TEXT_IMAGE,
             "contextWindow": 400_000, "maxTokens": 128_000,
             "cost": {"input": 0.25, "output": 2, "cacheRead": 0.025}},
            {"id": "gpt-4.1", "name": "GPT-4.1", "reasoning": False, "input": _TEXT_IMAGE,
             "contextWindow": 1_047_576, "maxTokens": 32_768,
             "cost": {"input": 2, "output": 8, "cacheRead": 0.5}},
            # Voice notes (POST /v1/audio/transcriptions and /v1/audio/speech); never
            # offered as chat models.  Billed per minute or character, not per token.
            {"id": "whisper-1", "name": "Whisper", "kind": "transcription"},
            {"id": "gpt-4o-transcribe", "name": "GPT-4o Transcribe", "kind": "transcription"},
            {"id": "gpt-4o-mini-transcribe", "name": "GPT-4o mini Transcribe",
             "kind": "transcription"},
            {"id": "tts-1", "name": "TTS-1", "kind": "speech"},
            {"id": "tts-1-hd", "name": "TTS-1 HD", "kind": "speech"},
            {"id": "gpt-4o-mini-tts", "name": "GPT-4o mini TTS", "kind": "speech"},
        ],
    },
    "openrouter": {
        "baseUrl": "https://openrouter.ai/api/v1",
        "api": "openai-completions",
        "models": [
            {"id": "anthropic/claude-sonnet-4.5", "name": "Claude Sonnet 4.5 (OpenRouter)",
             "reasoning": True, "input": _TEXT_IMAGE, "contextWindow": 200_000,
             "maxTokens": 64_000,
             "cost": {"input": 3, "output": 15, "cacheRead": 0.3, "cacheWrite": 3.75}},
            {"id": "minimax/minimax-m2.1", "name": "MiniMax M2.1 (OpenRouter)",
             "reasoning": True, "input": ["text"], "contextWindow": 196_608,
             "maxTokens": 32_768, "cost": {"input": 0.3, "output": 1.2}},
        ],
    },
}


def builtin_provider_data(env: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """The catalog as plain data, each provider's key taken from ``env`` when set."""
    out: dict[str, dict[str, Any]] = {}
    for provider_id, data in BUILTIN_CATALOG.items():
        entry = {**data, "models": [dict(m) for m in data["models"]]}
        key = env.get(BUILTIN_KEY_ENV[provider_id], "").strip()
        if key:
            entry["apiKey"] = key
        out[provider_id] = entry
    return out
