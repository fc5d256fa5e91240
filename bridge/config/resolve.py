"""Model references, aliases and per-chat precedence over a loaded :class:`Config`.

Resolution turns what a config or a user names (``provider/model-id`` or an alias) into
a :class:`ResolvedModel`: everything a client needs to call one model.  This module reads
the config tree and never builds one: it needs ``bridge.config.schema`` for types only, so
the schema may import it (``Config.model()`` and friends delegate here) without a cycle.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from bridge.models.catalog import BUILTIN_PROVIDER_IDS

if TYPE_CHECKING:
    from bridge.config.schema import (
        Api,
        ChatConfig,
        Config,
        InputKind,
        ModelSelection,
        Timeouts,
    )


class UnknownModelError(KeyError):
    """A ref or alias that names no configured model (a KeyError with a readable str).

    Catch this, not ``KeyError``, where "unknown model" is meant.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown model"


@dataclass(frozen=True, slots=True)
class ResolvedModel:
    """Everything a client needs to call one model (secrets kept as SecretStr)."""

    ref: str  # "provider/model-id"
    provider: str
    model_id: str
    api: Api
    base_url: str
    api_key: SecretStr | None
    headers: dict[str, str]
    name: str
    alias: str | None
    context_window: int
    max_tokens: int
    input: tuple[InputKind, ...]
    reasoning: bool
    timeouts: Timeouts
    # "auto" | "paired": how the reasoning filter treats a lone closing tag (issue 17).
    think_tags: str = "auto"
    preview: bool = True  # False: this model's streamed text is never shown early

    @property
    def vision(self) -> bool:
        return "image" in self.input


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
    ref = resolve_ref(config, ref_or_alias)
    provider_id, model_id = split_ref(ref)
    provider = config.models.providers.get(provider_id)
    if provider is None:  # an alias naming a provider that does not exist
        raise UnknownModelError(f"unknown provider {provider_id!r} in {ref!r}")
    mdef = provider.model_def(model_id)
    timeouts = provider.effective_timeouts(config.agents.defaults.timeouts)
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
        think_tags=mdef.thinkTags or provider.thinkTags,
        preview=provider.preview if mdef.preview is None else mdef.preview,
    )


def chat_chain(config: Config, channel: str, chat_kind: str, chat_id: str,
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


@dataclass(frozen=True, slots=True)
class SelectionSource:
    """Where a chat's configured model comes from: the level and the config path."""

    level: str  # "topic", "group", "direct", "group *", "direct *", "channel", "default"
    path: str  # the dotted config path that holds it ("" for an implicit default)

    def __str__(self) -> str:
        label = {"topic": "its topic entry", "group": "its group entry",
                 "direct": "its direct entry", "group *": 'the groups "*" entry',
                 "direct *": 'the direct "*" entry', "channel": "the channel",
                 "default": "the default"}.get(self.level, self.level)
        return f"{label} ({self.path})" if self.path else label


def _key(part: str) -> str:
    """One dotted-path segment (bracketed when it holds odd characters)."""
    return f".{part}" if re.fullmatch(r"[^.\[\]\"']+", part) else f"[{json.dumps(part)}]"


def model_by_channel_key(chat_id: str, thread_id: str | None = None) -> str:
    """The ``channels.modelByChannel.<channel>`` key of a chat (OpenClaw's form):
    ``"-1001234567890"``, a topic ``"-1001234567890:topic:99"``."""
    return f"{chat_id}:topic:{thread_id}" if thread_id else chat_id


def selection_source(config: Config, channel: str, *, chat_kind: str, chat_id: str,
                     sender_id: str | None = None, thread_id: str | None = None
                     ) -> tuple[ModelSelection, SelectionSource]:
    """The configured selection for one chat and where it comes from.

    Most specific first: the topic entry (``groups.<id>.topics.<t>``, then
    ``modelByChannel.<channel>."<id>:topic:<t>"``), the group or direct entry (then
    ``modelByChannel.<channel>.<id>``), the ``"*"`` entry, the channel, the default.
    """
    chan = config.channel(channel)
    by_channel = config.channels.modelByChannel.get(channel, {})
    base = f"channels.{channel}"
    mbc = f"channels.modelByChannel{_key(channel)}"
    levels: list[tuple[object, str, str]] = []  # (block with .model or a selection, level, path)
    if chan is not None and chat_kind == "group":
        groups = getattr(chan, "groups", {}) or {}
        group = groups.get(chat_id)
        gpath = f"{base}.groups{_key(chat_id)}"
        if thread_id is not None:
            if group is not None and thread_id in group.topics:
                levels.append((group.topics[thread_id], "topic",
                               f"{gpath}.topics{_key(thread_id)}.model"))
            tkey = model_by_channel_key(chat_id, thread_id)
            if tkey in by_channel:
                levels.append((by_channel[tkey], "topic", f"{mbc}{_key(tkey)}"))
        if group is not None:
            levels.append((group, "group", f"{gpath}.model"))
        if chat_id in by_channel:
            levels.append((by_channel[chat_id], "group", f"{mbc}{_key(chat_id)}"))
        if "*" in groups and group is not groups["*"]:
            levels.append((groups["*"], "group *", f'{base}.groups["*"].model'))
    elif chan is not None:
        direct = getattr(chan, "direct", {}) or {}
        specific = next((k for k in (sender_id, chat_id) if k is not None and k in direct),
                        None)
        if specific is not None:
            levels.append((direct[specific], "direct",
                           f"{base}.direct{_key(specific)}.model"))
        for key in dict.fromkeys(k for k in (sender_id, chat_id) if k is not None):
            if key in by_channel:
                levels.append((by_channel[key], "direct", f"{mbc}{_key(key)}"))
        if specific is None and "*" in direct:
            levels.append((direct["*"], "direct *", f'{base}.direct["*"].model'))
    if chan is not None:
        levels.append((chan, "channel", f"{base}.model"))
    for block, level, path in levels:
        sel = getattr(block, "model", block)
        if sel is not None and getattr(sel, "primary", None):
            return sel, SelectionSource(level, path)  # type: ignore[return-value]
    chosen = config.agents.defaults.model
    default = config.default_selection()
    path = "agents.defaults.model" if chosen is not None and chosen.primary else ""
    if not path and default.primary:
        path = f"models.providers{_key(default.primary.split('/', 1)[0])}.models[0]"
    return default, SelectionSource("default", path)


def selection_for(config: Config, channel: str, *, chat_kind: str, chat_id: str,
                  sender_id: str | None = None, thread_id: str | None = None) -> ModelSelection:
    """The most specific configured selection: topic, group/direct, channel, defaults."""
    return selection_source(config, channel, chat_kind=chat_kind, chat_id=chat_id,
                            sender_id=sender_id, thread_id=thread_id)[0]


def chat_setting(config: Config, channel: str, name: str, *, chat_kind: str, chat_id: str,
                 sender_id: str | None = None, thread_id: str | None = None) -> Any:
    """The most specific value of ``name`` set on a topic, group/direct entry or the
    channel (None when none sets it, or the channel is not configured)."""
    for block in chat_chain(config, channel, chat_kind, chat_id, sender_id, thread_id):
        value = getattr(block, name, None)
        if value is not None:
            return value
    return None


def streaming_for(config: Config, channel: str, *, chat_kind: str, chat_id: str,
                  sender_id: str | None = None, thread_id: str | None = None) -> str:
    """``"off" | "draft" | "edit"`` for one chat: the most specific ``streaming``, else
    ``"draft"`` in direct chats and ``"off"`` in groups.  Only Telegram previews."""
    if channel != "telegram":
        return "off"
    value = chat_setting(config, channel, "streaming", chat_kind=chat_kind, chat_id=chat_id,
                         sender_id=sender_id, thread_id=thread_id)
    if value is None:
        return "draft" if chat_kind == "direct" else "off"
    return str(value)


def group_context_for(config: Config, channel: str, chat_id: str,
                      thread_id: str | None = None) -> int:
    """How many unaddressed group messages go to the model as context (0: off)."""
    value = chat_setting(config, channel, "groupContextMessages", chat_kind="group",
                         chat_id=chat_id, thread_id=thread_id)
    return 20 if value is None else int(value)


def system_prompt_for(config: Config, channel: str, *, chat_kind: str, chat_id: str,
                      sender_id: str | None = None, thread_id: str | None = None) -> str | None:
    """The most specific configured system prompt (same precedence as models)."""
    for block in chat_chain(config, channel, chat_kind, chat_id, sender_id, thread_id):
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


def resolve_candidates(config: Config, refs: Iterable[str]) -> list[ResolvedModel | str]:
    """Each ref resolved, in order; one that does not resolve stays a plain ref (the
    router then records it as ``not_found``).  A turn does this once."""
    out: list[ResolvedModel | str] = []
    for ref in refs:
        try:
            out.append(resolve_model(config, ref))
        except UnknownModelError:
            out.append(ref)
    return out


def is_owner(config: Config, channel: str, sender_id: str | None,
             aliases: Iterable[str] = ()) -> bool:
    """True when the sender's id (or an alias that is an id too, such as a WhatsApp phone
    number) is listed in ``channels.<channel>.owners``, compared case-insensitively.

    ``@username`` aliases never make an owner: a released username can be taken by
    someone else, and an owner is never limited.  The operator's own terminal
    (``palaver chat``) is always an owner."""
    if channel == "console":
        return True
    block = config.channel(channel)
    owners = getattr(block, "owners", ()) or ()
    if not owners or not sender_id:
        return False
    wanted = {o.casefold() for o in owners}
    names = {sender_id.casefold(), *(a.casefold() for a in aliases
                                     if a and not a.startswith("@"))}
    return bool(wanted & names)


def selection_paths(config: Config) -> list[tuple[str, ModelSelection]]:
    """Every model selection the config makes, labelled: the default, then each channel's,
    group's, topic's, direct chat's and ``modelByChannel`` pin's that names a primary."""
    paths: list[tuple[str, ModelSelection]] = [("default", config.default_selection())]

    def add(label: str, selection: ModelSelection | None) -> None:
        if selection is not None and selection.primary:
            paths.append((label, selection))

    for name in ("telegram", "whatsapp", "console"):
        chan = getattr(config.channels, name, None)
        if chan is None:
            continue
        add(name, chan.model)
        for gid, group in (getattr(chan, "groups", None) or {}).items():
            add(f"{name}.groups[{gid}]", group.model)
            for tid, topic in group.topics.items():
                add(f"{name}.groups[{gid}].topics[{tid}]", topic.model)
        for pid, chat in (getattr(chan, "direct", None) or {}).items():
            add(f"{name}.direct[{pid}]", chat.model)
    for name, pins in config.channels.modelByChannel.items():
        for key, selection in pins.items():
            add(f"modelByChannel.{name}[{key}]", selection)
    return paths


def configured_model_refs(config: Config) -> frozenset[str]:
    """The model refs the operator named: aliases, ``agents.defaults.models`` entries,
    models listed under a provider, and the default selection (metrics label only these)."""
    refs: set[str] = set(config.aliases().values())
    refs.update(config.agents.defaults.models)
    for provider_id, provider in config.models.providers.items():
        refs.update(f"{provider_id}/{m.id}" for m in provider.models)
    try:
        refs.update(candidates(config, config.default_selection()))
    except UnknownModelError:
        pass
    return frozenset(refs)


# --------------------------------------------------------------------------- voice

# Voice calls go to OpenAI's audio API (``/audio/transcriptions``, ``/audio/speech``),
# which Anthropic's Messages API does not have.
_NO_AUDIO_API = "anthropic-messages"
VOICE_SECTIONS = ("transcription", "speech")


def _voice_target(config: Config, text: str) -> tuple[str, str]:
    """(canonical ref, api) of a voice model ref; a built-in provider the file does not
    define counts with its catalog api (the catalog is merged after validation)."""
    from bridge.models.catalog import BUILTIN_CATALOG

    try:
        ref = resolve_ref(config, text)
    except UnknownModelError:
        ref = next((r for a, r in config.aliases().items()
                    if a.casefold() == text.strip().casefold()), text.strip())
        provider_id, _ = split_ref(ref)
        if (provider_id in config.models.providers or provider_id not in BUILTIN_CATALOG
                or config.models.mode != "merge"):
            raise
        return ref, str(BUILTIN_CATALOG[provider_id]["api"])
    provider_id, _ = split_ref(ref)
    return ref, config.models.providers[provider_id].effective_api


def voice_ref_problems(config: Config) -> list[tuple[tuple[str | int, ...], str, str]]:
    """(loc, ref, message) for each ``agents.defaults.transcription/speech`` model ref that
    names no model, or a model whose provider speaks ``anthropic-messages``."""
    out: list[tuple[tuple[str | int, ...], str, str]] = []
    defaults = config.agents.defaults
    for section in VOICE_SECTIONS:
        sel = getattr(defaults, section).model
        if sel is None:
            continue
        base: tuple[str | int, ...] = ("agents", "defaults", section, "model")
        named: list[tuple[tuple[str | int, ...], str | None]] = (
            [(("primary",), sel.primary)] if sel.primary else [])
        named += [(("fallbacks", i), t) for i, t in enumerate(sel.fallbacks)]
        for tail, text in named:
            assert text is not None
            loc = (*base, *tail)
            try:
                ref, api = _voice_target(config, text)
            except UnknownModelError as exc:
                out.append((loc, text, str(exc)))
                continue
            if api == _NO_AUDIO_API:
                out.append((loc, text, (
                    f"{ref!r} is on a provider with api {_NO_AUDIO_API!r}, which has no "
                    f"audio API; {section} needs an OpenAI-compatible provider (LocalAI, "
                    "speaches, OpenAI, Groq ...)")))
    return out


def voice_candidates(config: Config, section: str) -> list[ResolvedModel | str]:
    """``agents.defaults.<section>.model`` (transcription or speech) resolved, primary
    first; empty when it is not set."""
    sel = getattr(config.agents.defaults, section).model
    if sel is None:
        return []
    refs: list[str] = []
    for text in (sel.primary, *sel.fallbacks):
        if not text:
            continue
        try:
            ref = resolve_ref(config, text)
        except UnknownModelError:
            ref = text
        if ref not in refs:
            refs.append(ref)
    return resolve_candidates(config, refs)


def transcribe_for_mentions(config: Config, channel: str, chat_id: str,
                            thread_id: str | None = None) -> bool:
    """A group's ``transcribeForMentions`` (its topic's when set, else the group's entry,
    else the ``"*"`` entry's)."""
    chan = config.channel(channel)
    groups = getattr(chan, "groups", None) or {}
    group, star = groups.get(chat_id), groups.get("*")
    if group is not None and thread_id is not None and thread_id in group.topics:
        topic = group.topics[thread_id].transcribeForMentions
        if topic is not None:
            return bool(topic)
    for block in (group, star):
        if block is not None and ("transcribeForMentions" in block.model_fields_set
                                  or block is star):
            return bool(block.transcribeForMentions)
    return False
