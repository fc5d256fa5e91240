"""No model configured: find a local model server on 127.0.0.1 and use what it lists.

Probes LM Studio (:1234), Ollama (:11434), vLLM (:8000) and LocalAI / llama.cpp (:8080)
in parallel with ``GET /v1/models`` and a short timeout; the first of them (in that
order) that lists a model becomes the primary, as an ``openai-completions`` provider
(the API every one of them implements), with any hosted provider whose key is in the
environment as fallback.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiohttp

from bridge.config.schema import (
    Config,
    ModelDef,
    ModelKind,
    ModelSelection,
    ProviderDef,
)
from bridge.models.catalog import BUILTIN_KEY_ENV

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 1.5
# Local servers rarely say their context size; stay conservative (configure to raise it).
DISCOVERED_CONTEXT_WINDOW = 16_384
DISCOVERED_MAX_TOKENS = 2_048
_PREFERRED_HOSTED = {
    "anthropic": "claude-sonnet-4-5",
    "openai": "gpt-5-mini",
    "openrouter": "anthropic/claude-sonnet-4.5",
}


@dataclass(frozen=True, slots=True)
class ProbeTarget:
    provider_id: str
    label: str
    port: int
    host: str = "127.0.0.1"

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"


DEFAULT_TARGETS: tuple[ProbeTarget, ...] = (
    ProbeTarget("lmstudio", "LM Studio", 1234),
    ProbeTarget("ollama", "Ollama", 11434),
    ProbeTarget("vllm", "vLLM", 8000),
    ProbeTarget("localai", "LocalAI / llama.cpp", 8080),
)


def model_kind(model_id: str) -> ModelKind:
    """What a listed local model is for, from its id: LocalAI's gallery names Whisper
    models ``whisper-*`` and Piper voices ``voice-*``; other servers say ``tts``."""
    folded = model_id.lower()
    if "whisper" in folded or "transcribe" in folded:
        return "transcription"
    if "tts" in folded or folded.startswith("voice-") or "piper" in folded:
        return "speech"
    return "chat"


@dataclass(frozen=True, slots=True)
class ProbeResult:
    target: ProbeTarget
    models: tuple[str, ...] = ()  # chat models, in the server's order
    error: str = ""
    # Listed models that are not for chat: (id, "transcription" | "speech").
    voice: tuple[tuple[str, ModelKind], ...] = ()

    @property
    def ok(self) -> bool:
        return bool(self.models)


@dataclass(frozen=True, slots=True)
class Discovery:
    """What was tried and the config to run with (``None``: nothing usable)."""

    config: Config | None
    results: tuple[ProbeResult, ...]
    local: ProbeResult | None = None
    hosted: tuple[str, ...] = field(default=())

    def explain(self) -> str:
        """Exactly what was tried, for the operator."""
        lines = ["No model is configured, so Palaver looked for a local model server:"]
        for r in self.results:
            state = f"lists {len(r.models)} model(s)" if r.ok else (r.error or "no models")
            lines.append(f"  {r.target.label:<20} GET {r.target.base_url}/models -> {state}")
        keys = ", ".join(f"${v}" for v in BUILTIN_KEY_ENV.values())
        if self.config is None:
            lines += [
                "and found none; no hosted provider key is set either (" + keys + ").",
                "To configure one: start LM Studio, Ollama, vLLM or LocalAI on this machine,",
                "or export one of those keys, or write a config (`palaver init`) with",
                "models.providers.<id>.baseUrl and agents.defaults.model.primary.",
            ]
        elif self.local is not None:
            lines.append(f"Using {self.local.target.label}: "
                         f"{self.local.target.provider_id}/{self.local.models[0]}"
                         + (f", fallback {', '.join(self.hosted)}" if self.hosted else ""))
        else:
            lines.append("No local server answered; using hosted: " + ", ".join(self.hosted))
        return "\n".join(lines)


async def _probe_one(session: aiohttp.ClientSession, target: ProbeTarget,
                     timeout_s: float) -> ProbeResult:
    url = f"{target.base_url}/models"
    try:
        async with asyncio.timeout(timeout_s):
            async with session.get(url) as resp:
                if resp.status != 200:
                    return ProbeResult(target, error=f"HTTP {resp.status}")
                data = await resp.json(content_type=None)
    except TimeoutError:
        return ProbeResult(target, error=f"no answer within {timeout_s:g} s")
    except aiohttp.ClientConnectorError:
        return ProbeResult(target, error="connection refused")
    except (aiohttp.ClientError, ValueError) as exc:
        return ProbeResult(target, error=f"{type(exc).__name__}")
    items = data.get("data") if isinstance(data, dict) else None
    if not isinstance(items, list):
        return ProbeResult(target, error="not an OpenAI-style model list")
    ids = [str(m.get("id")) for m in items if isinstance(m, dict) and m.get("id")]
    # Embedding models cannot chat; nor can speech-to-text and text-to-speech models.
    ids = [i for i in ids if "embed" not in i.lower()]
    voice = tuple((i, kind) for i in ids if (kind := model_kind(i)) != "chat")
    ids = [i for i in ids if model_kind(i) == "chat"]
    if not ids:
        return ProbeResult(target, error="answers but lists no chat model", voice=voice)
    return ProbeResult(target, models=tuple(ids), voice=voice)


async def probe(targets: Sequence[ProbeTarget] = DEFAULT_TARGETS, *,
                timeout_s: float = PROBE_TIMEOUT_S) -> list[ProbeResult]:
    """Probe every target in parallel; results in the targets' order."""
    async with aiohttp.ClientSession(trust_env=False) as session:
        return list(await asyncio.gather(*(_probe_one(session, t, timeout_s) for t in targets)))


def hosted_fallbacks(config: Config) -> list[str]:
    """One ref per built-in hosted provider whose key is set, in catalog order."""
    refs = []
    for provider_id in BUILTIN_KEY_ENV:
        provider = config.models.providers.get(provider_id)
        ids = [m.id for m in (provider.models if provider else ()) if m.kind == "chat"]
        if provider is None or provider.apiKey is None or not ids:
            continue
        preferred = _PREFERRED_HOSTED.get(provider_id)
        refs.append(f"{provider_id}/{preferred if preferred in ids else ids[0]}")
    return refs


def needs_discovery(config: Config) -> bool:
    """True when the config names no model to use."""
    return not config.default_selection().primary


def with_discovered(config: Config, found: ProbeResult | None, hosted: list[str]) -> Config:
    """``config`` plus the discovered local provider as primary and ``hosted`` fallbacks."""
    providers = dict(config.models.providers)
    refs = list(hosted)
    if found is not None:
        pid = found.target.provider_id
        providers[pid] = ProviderDef(
            baseUrl=found.target.base_url, api="openai-completions",
            models=tuple(ModelDef(id=m, contextWindow=DISCOVERED_CONTEXT_WINDOW,
                                  maxTokens=DISCOVERED_MAX_TOKENS) for m in found.models)
            + tuple(ModelDef(id=m, kind=kind) for m, kind in found.voice))
        refs.insert(0, f"{pid}/{found.models[0]}")
    selection = ModelSelection(primary=refs[0], fallbacks=tuple(refs[1:]))
    defaults = config.agents.defaults.model_copy(update={"model": selection})
    return config.model_copy(update={
        "models": config.models.model_copy(update={"providers": providers}),
        "agents": config.agents.model_copy(update={"defaults": defaults}),
    })


async def discover(config: Config, *, targets: Sequence[ProbeTarget] = DEFAULT_TARGETS,
                   timeout_s: float = PROBE_TIMEOUT_S) -> Discovery:
    """Probe the local servers and build the config to run with."""
    results = await probe(targets, timeout_s=timeout_s)
    found = next((r for r in results if r.ok), None)
    hosted = hosted_fallbacks(config)
    if found is None and not hosted:
        return Discovery(None, tuple(results))
    return Discovery(with_discovered(config, found, hosted), tuple(results), found,
                     tuple(hosted))
