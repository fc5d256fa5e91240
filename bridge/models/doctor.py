"""``palaver doctor``: probe every provider in use and say what works.

For each provider that a model selection names: is it reachable (and if not, why), the
round-trip time of ``GET {baseUrl}/models`` (``/v1/models`` for Anthropic; a minimal
request where that endpoint is missing), whether each configured model is listed (and,
on LM Studio, whose ``/v1/models`` lists unloaded models too, whether it is loaded, from
``/api/v0/models``), whether credentials are present, and settings that look wrong.  Exit
status 0 only when every primary candidate path (the default selection and each
per-channel selection) has at least one working model.  With no model configured, the
local-server discovery of ``palaver run`` (:mod:`bridge.discovery`) runs first and its
result is checked.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from bridge.config.resolve import ResolvedModel, UnknownModelError
from bridge.config.schema import Config, ModelSelection, Timeouts
from bridge.models.anthropic import messages_path
from bridge.models.base import ErrorClass, ModelError, ModelRequest, Turn
from bridge.models.catalog import BUILTIN_KEY_ENV, BUILTIN_PROVIDER_IDS
from bridge.models.clients import client_class, make_client
from bridge.models.http import get_json, model_secrets, needs_api_key

_PROBE_TIMEOUTS = Timeouts(connectSeconds=5, firstTokenSeconds=10, idleSeconds=10,
                           totalSeconds=15)
# A cold local model may load on the minimal request: allow it a minute.
_MINIMAL_TOTAL_S = 60.0


@dataclass(frozen=True, slots=True)
class Row:
    """One model of one provider in use, as probed."""

    provider: str
    model_ref: str
    api: str
    reachable: bool
    ok: bool  # this model can answer
    detail: str  # "ok" or why not
    rtt_ms: float | None
    listed: bool | None  # None: the server gives no list
    credentials: str  # present | missing | not needed
    warnings: tuple[str, ...] = ()
    loaded: bool | None = None  # LM Studio only: in memory now (None: not known)


@dataclass(slots=True)
class _Probe:
    reachable: bool
    error: str | None  # None: the provider answered
    rtt_ms: float | None
    listed: set[str] | None
    minimal: bool  # no /models endpoint: judge each model by a minimal request
    loaded: dict[str, bool] | None = None  # LM Studio: model id -> loaded now


# --------------------------------------------------------------------------- what is in use


def selection_paths(config: Config) -> list[tuple[str, ModelSelection]]:
    """Every primary candidate path: the default selection, then each explicit one."""
    paths: list[tuple[str, ModelSelection]] = [("default", config.default_selection())]
    for name in ("telegram", "whatsapp", "console"):
        chan = getattr(config.channels, name, None)
        if chan is None:
            continue
        if chan.model is not None and chan.model.primary:
            paths.append((name, chan.model))
        for gid, group in (getattr(chan, "groups", None) or {}).items():
            if group.model is not None and group.model.primary:
                paths.append((f"{name}.groups[{gid}]", group.model))
            for tid, topic in group.topics.items():
                if topic.model is not None and topic.model.primary:
                    paths.append((f"{name}.groups[{gid}].topics[{tid}]", topic.model))
        for pid, chat in (getattr(chan, "direct", None) or {}).items():
            if chat.model is not None and chat.model.primary:
                paths.append((f"{name}.direct[{pid}]", chat.model))
    return paths


def _path_refs(config: Config, selection: ModelSelection) -> list[str]:
    out: list[str] = []
    for text in (selection.primary, *selection.fallbacks):
        if not text:
            continue
        try:
            ref = config.resolve_ref(text)
        except UnknownModelError:
            ref = text
        if ref not in out:
            out.append(ref)
    return out


def _refs_in_use(config: Config) -> list[str]:
    refs: list[str] = []
    for _, selection in selection_paths(config):
        refs += [r for r in _path_refs(config, selection) if r not in refs]
    compaction = config.agents.defaults.compaction.model
    if compaction:
        refs += [r for r in _path_refs(config, ModelSelection(primary=compaction))
                 if r not in refs]
    # Every model a provider in the file lists (built-in catalogs only when named).
    providers = {r.partition("/")[0] for r in refs}
    for pid, provider in config.models.providers.items():
        if pid in providers and pid not in BUILTIN_PROVIDER_IDS:
            refs += [f"{pid}/{m.id}" for m in provider.models if f"{pid}/{m.id}" not in refs]
    return refs


# --------------------------------------------------------------------------- probing


def _warnings(model: ResolvedModel) -> tuple[str, ...]:
    out = []
    if model.max_tokens >= model.context_window:
        out.append(f"maxTokens {model.max_tokens} >= contextWindow {model.context_window}")
    elif model.context_window < 4096:
        out.append(f"contextWindow {model.context_window} is very small")
    t = model.timeouts
    if t.firstTokenSeconds > t.totalSeconds:
        out.append(f"firstTokenSeconds {t.firstTokenSeconds:g} > totalSeconds "
                   f"{t.totalSeconds:g}")
    try:
        path = urlsplit(model.base_url).path
    except ValueError:
        path = "?"
    if not model.base_url:
        out.append("no baseUrl")
    elif model.api != "anthropic-messages" and path in ("", "/"):
        out.append("baseUrl has no path; OpenAI-style servers usually want …/v1")
    return tuple(out)


def _credentials(model: ResolvedModel) -> str:
    if model.api_key is not None and model.api_key.get_secret_value():
        return "present"
    return "missing" if needs_api_key(model) else "not needed"


def _auth_headers(model: ResolvedModel) -> dict[str, str]:
    key = model.api_key.get_secret_value() if model.api_key is not None else ""
    return {**model.headers, **client_class(model.api).key_headers(key)}


def _models_url(model: ResolvedModel) -> str:
    if model.api == "anthropic-messages":
        return model.base_url + messages_path(model.base_url).replace("messages", "models")
    return f"{model.base_url}/models"


async def _probe(session: aiohttp.ClientSession, model: ResolvedModel) -> _Probe:
    """GET the provider's model list (``model`` supplies baseUrl, api, key, headers)."""
    secrets = model_secrets(model)
    start = time.perf_counter()
    try:
        body = await get_json(session, _models_url(model), _auth_headers(model),
                              _PROBE_TIMEOUTS, secrets=secrets)
    except ModelError as exc:
        rtt = (time.perf_counter() - start) * 1000
        if exc.error_class in (ErrorClass.NOT_FOUND, ErrorClass.BAD_RESPONSE):
            return _Probe(True, None, rtt, None, minimal=True)
        reachable = exc.error_class not in (ErrorClass.UNREACHABLE, ErrorClass.TIMEOUT)
        return _Probe(reachable, str(exc), rtt if reachable else None, None, minimal=False)
    rtt = (time.perf_counter() - start) * 1000
    listed: set[str] | None = None
    data = body.get("data") if isinstance(body, dict) else None
    if isinstance(data, list):
        listed = {m["id"] for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)}
    loaded = await _lmstudio_states(session, model) if listed is not None else None
    return _Probe(True, None, rtt, listed, minimal=False, loaded=loaded)


async def _lmstudio_states(session: aiohttp.ClientSession,
                           model: ResolvedModel) -> dict[str, bool] | None:
    """LM Studio lists every downloaded model on ``/v1/models``, loaded or not; its own
    ``/api/v0/models`` says which are in memory (``state: "loaded"|"not-loaded"``).
    None when the server is not LM Studio (or a hosted API, which is never asked)."""
    if model.api == "anthropic-messages" or needs_api_key(model):
        return None
    base = model.base_url.rstrip("/")
    if not base.endswith("/v1"):
        return None
    try:
        body = await get_json(session, base[:-3] + "/api/v0/models", _auth_headers(model),
                              _PROBE_TIMEOUTS, secrets=model_secrets(model))
    except ModelError:
        return None
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list):
        return None
    states = {m["id"]: m["state"] == "loaded" for m in data
              if isinstance(m, dict) and isinstance(m.get("id"), str)
              and m.get("state") in ("loaded", "not-loaded")}
    return states or None


async def _minimal(session: aiohttp.ClientSession, model: ResolvedModel) -> tuple[bool, str, float]:
    """A one-line request; (ok, detail, ms).  An empty reply still proves the model."""
    t = model.timeouts
    limited = dataclasses.replace(model, timeouts=Timeouts(
        connectSeconds=t.connectSeconds,
        firstTokenSeconds=min(t.firstTokenSeconds, _MINIMAL_TOTAL_S),
        idleSeconds=min(t.idleSeconds, _MINIMAL_TOTAL_S),
        totalSeconds=min(t.totalSeconds, _MINIMAL_TOTAL_S)))
    request = ModelRequest(None, (Turn.text("user", "Reply with: ok"),), max_tokens=16)
    start = time.perf_counter()
    try:
        await make_client(limited, session).complete(request)
    except ModelError as exc:
        ms = (time.perf_counter() - start) * 1000
        if exc.error_class is ErrorClass.EMPTY_RESPONSE:
            return True, "ok (answered, empty)", ms
        return False, str(exc), ms
    return True, "ok (answered)", (time.perf_counter() - start) * 1000


def _is_listed(model_id: str, listed: set[str]) -> bool:
    return model_id in listed or f"{model_id}:latest" in listed


async def diagnose(config: Config, *, session: aiohttp.ClientSession | None = None) -> list[Row]:
    """Probe every provider in use; one row per model in use (in config order)."""
    own = session is None
    session = session or aiohttp.ClientSession()
    try:
        resolved: list[tuple[str, ResolvedModel | None, str]] = []
        for ref in _refs_in_use(config):
            try:
                resolved.append((ref, config.model(ref), ""))
            except UnknownModelError as exc:
                resolved.append((ref, None, str(exc)))
        by_provider: dict[str, ResolvedModel] = {}
        for _, model, _ in resolved:
            if model is not None and _credentials(model) != "missing":
                by_provider.setdefault(model.provider, model)
        probes = dict(zip(
            by_provider,
            await asyncio.gather(*(_probe(session, m) for m in by_provider.values())),
            strict=True,
        ))
        minimal_needed = [m for _, m, _ in resolved
                          if m is not None and m.provider in probes
                          and probes[m.provider].minimal]
        minimal = dict(zip(
            (m.ref for m in minimal_needed),
            await asyncio.gather(*(_minimal(session, m) for m in minimal_needed)),
            strict=True,
        ))
        return [_row(ref, model, why, probes, minimal) for ref, model, why in resolved]
    finally:
        if own:
            await session.close()


def _row(ref: str, model: ResolvedModel | None, why: str, probes: dict[str, _Probe],
         minimal: dict[str, tuple[bool, str, float]]) -> Row:
    provider = ref.partition("/")[0]
    if model is None:
        return Row(provider, ref, "?", False, False, f"not configured: {why}", None, None, "?")
    creds = _credentials(model)
    warnings = _warnings(model)
    if creds == "missing":
        hint = BUILTIN_KEY_ENV.get(model.provider)
        return Row(provider, ref, model.api, False, False,
                   "no API key" + (f" (set {hint})" if hint else ""), None, None, creds,
                   warnings)
    probe = probes[model.provider]
    if probe.error is not None:
        return Row(provider, ref, model.api, probe.reachable, False, probe.error,
                   probe.rtt_ms, None, creds, warnings)
    if probe.minimal:
        ok, detail, ms = minimal[ref]
        listed = True if ok else (False if detail.startswith("not_found") else None)
        return Row(provider, ref, model.api, True, ok, detail, ms, listed, creds, warnings)
    if probe.listed is None:
        return Row(provider, ref, model.api, True, True, "ok (no model list)", probe.rtt_ms,
                   None, creds, warnings)
    listed = _is_listed(model.model_id, probe.listed)
    loaded = probe.loaded.get(model.model_id) if probe.loaded is not None else None
    if not listed:
        detail = "model not listed by the server"
    elif loaded is False:
        detail = ("ok: listed but not loaded (LM Studio loads it on first use when JIT "
                  "loading is on; else `lms load " + model.model_id + "`)")
    else:
        detail = "ok"
    return Row(provider, ref, model.api, True, listed, detail, probe.rtt_ms, listed,
               creds, warnings, loaded)


def check_paths(config: Config, rows: list[Row]) -> list[tuple[str, list[str], str | None]]:
    """For each path: (name, its candidate refs, the first working one or None)."""
    working = {r.model_ref for r in rows if r.ok}
    out = []
    for name, selection in selection_paths(config):
        refs = _path_refs(config, selection)
        out.append((name, refs, next((r for r in refs if r in working), None)))
    return out


# --------------------------------------------------------------------------- printing


def render(config: Config, rows: list[Row]) -> tuple[str, bool]:
    """The report as text, and whether every path has a working model."""
    head = ("PROVIDER", "MODEL", "REACHABLE", "RTT", "LISTED", "KEY", "NOTES")
    table: list[tuple[str, ...]] = [head]
    for r in rows:
        notes = "" if r.detail in ("ok", "ok (answered)") and r.ok else r.detail
        notes = "; ".join(x for x in (notes, *r.warnings) if x)
        listed = {True: "yes", False: "no", None: "?"}[r.listed]
        if r.listed and r.loaded is not None:
            listed = "loaded" if r.loaded else "not loaded"
        table.append((
            r.provider, r.model_ref, "yes" if r.reachable else "no",
            f"{r.rtt_ms:.0f} ms" if r.rtt_ms is not None else "-",
            listed, r.credentials, notes or "ok",
        ))
    widths = [max(len(row[i]) for row in table) for i in range(len(head) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row[:-1], widths, strict=True))
             + "  " + row[-1] for row in table]
    all_ok = True
    lines.append("")
    paths = check_paths(config, rows)
    for name, refs, answer in paths:
        if not refs:
            lines.append(f"{name}: FAIL no model configured")
            all_ok = False
        elif answer is None:
            lines.append(f"{name}: FAIL no working model among {', '.join(refs)}")
            all_ok = False
        else:
            lines.append(f"{name}: ok ({answer})")
    return "\n".join(lines), all_ok


def cmd_doctor(args: Any) -> int:
    """Probe the providers in use; exit 0 only if every path has a working model.

    With no model configured (no config file, say) it first runs the same local-server
    discovery as ``palaver run`` and checks what that would use.
    """
    from bridge.config.load import load_for_cli_or_report

    if (loaded := load_for_cli_or_report(args)) is None:
        return 1
    config, _path = loaded
    return asyncio.run(_doctor(config, getattr(args, "probe_targets", None)))


async def _doctor(config: Config, targets: Any = None) -> int:
    from bridge.discovery import DEFAULT_TARGETS, discover, needs_discovery

    if needs_discovery(config):
        found = await discover(config, targets=targets or DEFAULT_TARGETS)
        print(found.explain())
        print()
        if found.config is None:
            return 1
        config = found.config
    rows = await diagnose(config)
    text, ok = render(config, rows)
    print(text)
    return 0 if ok else 1
