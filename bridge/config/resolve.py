"""Model references, aliases and per-chat precedence over a loaded :class:`Config`."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import TYPE_CHECKING

from bridge.models.catalog import BUILTIN_PROVIDER_IDS

if TYPE_CHECKING:
    from bridge.config.schema import ChatConfig, Config, ModelSelection, ResolvedModel


class UnknownModelError(KeyError):
    """A ref or alias that names no configured model (a KeyError with a readable str)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown model"


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest choice (case-insensitive), else ``""``."""
    by_fold = {c.casefold(): c for c in choices}
    close = difflib.get_close_matches(word.casefold(), list(by_fold), n=1, cutoff=0.6)
    return f" (did you mean {by_fold[close[0]]!r}?)" if close else ""


def split_ref(ref: str) -> tuple[str, str]:
    """``provider/model-id``, split at the first ``/``."""
    provider, sep, model_id = ref.partition("/")
    if not sep or not provider or not model_id:
        raise UnknownModelError(
            f"{ref!r} is not a model ref (expected provider/model-id or an alias)")
    return provider, model_id


def resolve_ref(config: Config, text: str) -> str:
    """An alias (case-insensitive) or ``provider/model`` -> canonical ref.

    Raises :class:`UnknownModelError` (a KeyError) naming what is wrong, with a suggestion.
    """
    text = text.strip()
    if not text:
        raise UnknownModelError("empty model ref (expected provider/model-id or an alias)")
    folded = text.casefold()
    aliases = config.aliases()
    for alias, ref in aliases.items():
        if alias.casefold() == folded:
            return ref
    if "/" not in text:
        known = ", ".join(sorted(aliases)) or "none defined"
        raise UnknownModelError(
            f"unknown alias {text!r}{did_you_mean(text, aliases)} "
            f"(expected provider/model-id or an alias; aliases: {known})")
    provider_id, model_id = split_ref(text)
    provider = config.models.providers.get(provider_id)
    if provider is None:
        known = ", ".join(sorted(config.models.providers)) or "none"
        raise UnknownModelError(
            f"unknown provider {provider_id!r} in {text!r}"
            f"{did_you_mean(provider_id, config.models.providers)} (known: {known})")
    listed = {m.id for m in provider.models}
    if listed and model_id not in listed and provider_id not in BUILTIN_PROVIDER_IDS:
        raise UnknownModelError(
            f"provider {provider_id!r} lists no model {model_id!r}"
            f"{did_you_mean(model_id, listed)} (it lists: {', '.join(sorted(listed))})"
        )
    return f"{provider_id}/{model_id}"


def resolve_model(config: Config, ref_or_alias: str) -> ResolvedModel:
    """Everything needed to call one model; :class:`UnknownModelError` if unknown."""
    from bridge.config.schema import ModelDef, ResolvedModel, Timeouts

    ref = resolve_ref(config, ref_or_alias)
    provider_id, model_id = split_ref(ref)
    provider = config.models.providers[provider_id]
    mdef = next((m for m in provider.models if m.id == model_id), None) or ModelDef(id=model_id)
    timeouts = provider.timeouts or config.agents.defaults.timeouts
    if provider.timeoutSeconds is not None:
        timeouts = Timeouts(**{**timeouts.model_dump(), "totalSeconds": provider.timeoutSeconds})
    entry = config.agents.defaults.models.get(ref)
    return ResolvedModel(
        ref=ref,
        provider=provider_id,
        model_id=model_id,
        api=provider.effective_api,
        base_url=(provider.baseUrl or "").rstrip("/"),
        api_key=provider.apiKey,
        headers={**provider.headers, **mdef.headers},
        name=mdef.name or model_id,
        alias=entry.alias if entry else None,
        context_window=mdef.contextWindow,
        max_tokens=mdef.maxTokens,
        input=mdef.input,
        reasoning=mdef.reasoning,
        timeouts=timeouts,
    )


def default_selection(config: Config) -> ModelSelection:
    """agents.defaults.model, else the first model of the first provider the FILE defines.

    Built-in catalog providers never become the implicit primary; with none in the file
    the primary stays None (the conversation core then discovers a local model).
    """
    from bridge.config.schema import ModelSelection

    chosen = config.agents.defaults.model
    if chosen is not None and chosen.primary:
        return chosen
    from_file = _file_providers(config)
    for provider_id, provider in config.models.providers.items():
        if provider_id not in from_file:
            continue
        if provider.models:
            fallbacks = chosen.fallbacks if chosen else ()
            return ModelSelection(primary=f"{provider_id}/{provider.models[0].id}",
                                  fallbacks=fallbacks)
    return chosen or ModelSelection()


def _file_providers(config: Config) -> frozenset[str]:
    ids = config._file_provider_ids
    return frozenset(config.models.providers) if ids is None else ids


def _chat_chain(config: Config, channel: str, chat_kind: str, chat_id: str,
                sender_id: str | None, thread_id: str | None) -> list[ChatConfig | object]:
    """Config blocks that apply to one chat, most specific first."""
    chan = config.channel(channel)
    if chan is None:
        return []
    chain: list[object] = []
    if chat_kind == "group":
        groups = getattr(chan, "groups", {}) or {}
        group = groups.get(chat_id)
        if group is not None and thread_id is not None and thread_id in group.topics:
            chain.append(group.topics[thread_id])
        if group is not None:
            chain.append(group)
        if "*" in groups and group is not groups["*"]:
            chain.append(groups["*"])
    else:
        direct = getattr(chan, "direct", {}) or {}
        for key in (sender_id, chat_id, "*"):
            if key is not None and key in direct:
                chain.append(direct[key])
                break
    chain.append(chan)
    return chain


def selection_for(config: Config, channel: str, *, chat_kind: str, chat_id: str,
                  sender_id: str | None = None, thread_id: str | None = None) -> ModelSelection:
    """The most specific configured selection: topic, group/direct, channel, defaults."""
    for block in _chat_chain(config, channel, chat_kind, chat_id, sender_id, thread_id):
        sel = getattr(block, "model", None)
        if sel is not None and sel.primary:
            return sel
    return default_selection(config)


def system_prompt_for(config: Config, channel: str, *, chat_kind: str, chat_id: str,
                      sender_id: str | None = None, thread_id: str | None = None) -> str | None:
    """The most specific configured system prompt (same precedence as models)."""
    for block in _chat_chain(config, channel, chat_kind, chat_id, sender_id, thread_id):
        prompt = getattr(block, "systemPrompt", None)
        if prompt:
            return prompt
    return config.agents.defaults.systemPrompt


def candidates(config: Config, selection: ModelSelection) -> list[str]:
    """Canonical refs: primary then fallbacks, in order, without duplicates."""
    out: list[str] = []
    for text in (selection.primary, *selection.fallbacks):
        if not text:
            continue
        ref = resolve_ref(config, text)
        if ref not in out:
            out.append(ref)
    return out
