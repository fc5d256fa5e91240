"""Model references, aliases and per-chat precedence over a loaded :class:`Config`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bridge.models.catalog import BUILTIN_PROVIDER_IDS

if TYPE_CHECKING:
    from bridge.config.schema import ChatConfig, Config, ModelSelection, ResolvedModel


def split_ref(ref: str) -> tuple[str, str]:
    """``provider/model-id``, split at the first ``/``."""
    provider, sep, model_id = ref.partition("/")
    if not sep or not provider or not model_id:
        raise KeyError(f"{ref!r} is not a model ref (expected provider/model-id or an alias)")
    return provider, model_id


def resolve_ref(config: Config, text: str) -> str:
    """An alias (case-insensitive) or ``provider/model`` -> canonical ref."""
    text = text.strip()
    folded = text.casefold()
    for alias, ref in config.aliases().items():
        if alias.casefold() == folded:
            return ref
    provider_id, model_id = split_ref(text)
    provider = config.models.providers.get(provider_id)
    if provider is None:
        known = ", ".join(sorted(config.models.providers)) or "none"
        raise KeyError(f"unknown provider {provider_id!r} in {text!r} (known: {known})")
    listed = {m.id for m in provider.models}
    if listed and model_id not in listed and provider_id not in BUILTIN_PROVIDER_IDS:
        raise KeyError(
            f"provider {provider_id!r} lists no model {model_id!r} "
            f"(it lists: {', '.join(sorted(listed))})"
        )
    return f"{provider_id}/{model_id}"


def resolve_model(config: Config, ref_or_alias: str) -> ResolvedModel:
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
    from bridge.config.schema import ModelSelection

    chosen = config.agents.defaults.model
    if chosen is not None and chosen.primary:
        return chosen
    # The first model of the first provider the file defines (built-ins come last).
    for provider_id, provider in config.models.providers.items():
        if provider_id in BUILTIN_PROVIDER_IDS and provider_id not in _file_providers(config):
            continue
        if provider.models:
            fallbacks = chosen.fallbacks if chosen else ()
            return ModelSelection(primary=f"{provider_id}/{provider.models[0].id}",
                                  fallbacks=fallbacks)
    return chosen or ModelSelection()


def _file_providers(config: Config) -> set[str]:
    return set(getattr(config, "_file_provider_ids", None) or config.models.providers)


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
    for block in _chat_chain(config, channel, chat_kind, chat_id, sender_id, thread_id):
        sel = getattr(block, "model", None)
        if sel is not None and sel.primary:
            return sel
    return default_selection(config)


def system_prompt_for(config: Config, channel: str, *, chat_kind: str, chat_id: str,
                      sender_id: str | None = None, thread_id: str | None = None) -> str | None:
    for block in _chat_chain(config, channel, chat_kind, chat_id, sender_id, thread_id):
        prompt = getattr(block, "systemPrompt", None)
        if prompt:
            return prompt
    return config.agents.defaults.systemPrompt


def candidates(config: Config, selection: ModelSelection) -> list[str]:
    out: list[str] = []
    for text in (selection.primary, *selection.fallbacks):
        if not text:
            continue
        ref = resolve_ref(config, text)
        if ref not in out:
            out.append(ref)
    return out
