"""Which models ``/model`` may choose for senders who are not owners.

``agents.defaults.modelPolicy.allow`` absent: the models the config itself names — the
default selection and its fallbacks, every ``agents.defaults.models`` entry (the
aliases), and every model a channel, group, topic, direct or ``modelByChannel`` entry
names.  Set: exactly what it lists — refs, aliases, or glob patterns over refs
(``"lmstudio/*"``) — which may be wider or narrower than that.  Owners are not bound.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING

from bridge.config.resolve import UnknownModelError, selection_paths

if TYPE_CHECKING:
    from bridge.config.schema import Config

_GLOB = frozenset("*?[")


def _resolved(config: Config, texts: Iterable[str]) -> Iterator[str]:
    for text in texts:
        try:
            yield config.resolve_ref(text)
        except UnknownModelError:
            continue  # a broken entry names nothing choosable


def named_refs(config: Config) -> list[str]:
    """The models the config itself names (canonical refs, in the order found)."""
    texts: list[str] = []
    for _, selection in selection_paths(config):
        if selection.primary:
            texts.append(selection.primary)
        texts.extend(selection.fallbacks)
    texts.extend(config.agents.defaults.models)
    return list(dict.fromkeys(_resolved(config, texts)))


def _matches(config: Config, pattern: str, ref: str) -> bool:
    if _GLOB & set(pattern):
        return fnmatchcase(ref.casefold(), pattern.strip().casefold())
    try:
        return config.resolve_ref(pattern) == ref
    except UnknownModelError:
        return False


def is_chat_model(config: Config, ref: str) -> bool:
    """Whether ``ref`` (canonical) can answer a chat: not a transcription or speech model
    (``kind`` of its provider's listing; a model no provider lists counts as chat)."""
    provider_id, _, model_id = ref.partition("/")
    provider = config.models.providers.get(provider_id)
    return provider is None or provider.model_def(model_id).kind == "chat"


def may_choose(config: Config, ref: str, *, owner: bool = False) -> bool:
    """May a sender choose ``ref`` (canonical) with ``/model``?  Owners may choose any
    chat model; nobody a transcription or speech model."""
    if not is_chat_model(config, ref):
        return False
    if owner:
        return True
    allow = config.agents.defaults.modelPolicy.allow
    if allow is None:
        return ref in named_refs(config)
    return any(_matches(config, pattern, ref) for pattern in allow)


def known_refs(config: Config) -> list[str]:
    """Every model the config can name: aliased ones first, then each provider's listed
    models, then any other model the config names (an unlisted hosted model)."""
    refs = list(dict.fromkeys(config.aliases().values()))
    for provider_id, provider in config.models.providers.items():
        for m in provider.models:
            refs.append(f"{provider_id}/{m.id}")
    refs.extend(named_refs(config))
    return [r for r in dict.fromkeys(refs) if is_chat_model(config, r)]


def choosable_refs(config: Config, *, owner: bool = False) -> list[str]:
    """What ``/models`` shows the asker: what they may choose, in :func:`known_refs`
    order."""
    allow = config.agents.defaults.modelPolicy.allow
    if owner:
        return known_refs(config)
    if allow is None:
        named = set(named_refs(config))
        return [r for r in known_refs(config) if r in named]
    return [r for r in known_refs(config) if may_choose(config, r)]
