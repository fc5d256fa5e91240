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

``--reply`` then sends every model Palaver routes to (:func:`routed_refs`) a one-line
prompt through its own wire client and reports whether final text came back (reasoning
stripped), the time to first token and the total time; the exit status is then also
nonzero when any of them gave no final text.  Without it no model is asked to generate
(except the minimal request where a server has no ``/models``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit

import aiohttp

from bridge.cli import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK
from bridge.config.resolve import ResolvedModel, UnknownModelError, selection_paths
from bridge.config.schema import Config, ModelSelection, Timeouts
from bridge.models.anthropic import messages_path
from bridge.models.base import ErrorClass, ModelError, ModelRequest, Turn
from bridge.models.catalog import BUILTIN_KEY_ENV, BUILTIN_PROVIDER_IDS
from bridge.models.clients import client_class, make_client
from bridge.models.errors import classify_exception
from bridge.models.http import ClientBase, HttpReply, get_json, model_secrets, needs_api_key
from bridge.secrets import redact

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


def routed_refs(config: Config) -> list[str]:
    """The models Palaver routes turns to, each once: every selection path's primary and
    fallbacks (default, channels, groups, topics, direct chats), then the compaction model."""
    refs: list[str] = []
    for _, selection in selection_paths(config):
        refs += [r for r in _path_refs(config, selection) if r not in refs]
    compaction = config.agents.defaults.compaction.model
    if compaction:
        refs += [r for r in _path_refs(config, ModelSelection(primary=compaction))
                 if r not in refs]
    return refs


def _refs_in_use(config: Config) -> list[str]:
    refs = routed_refs(config)
    # Every model a provider in the file lists (built-in catalogs only when named).
    providers = {r.partition("/")[0] for r in refs}
    for pid, provider in config.models.providers.items():
        if pid in providers and pid not in BUILTIN_PROVIDER_IDS:
            # (transcription and speech models take no chat probe)
            refs += [f"{pid}/{m.id}" for m in provider.models
                     if m.kind == "chat" and f"{pid}/{m.id}" not in refs]
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


def check_paths(config: Config, rows: Sequence[Row] | Sequence[ReplyRow],
                ) -> list[tuple[str, list[str], str | None]]:
    """For each path: (name, its candidate refs, the first working one or None)."""
    working = {r.model_ref for r in rows if r.ok}
    out = []
    for name, selection in selection_paths(config):
        refs = _path_refs(config, selection)
        out.append((name, refs, next((r for r in refs if r in working), None)))
    return out


# --------------------------------------------------------------------------- reply probe

REPLY_PROMPT = "Reply with the single word: ok"
REPLY_MAX_TOKENS = 16
# A thinking model spends its first tokens reasoning: 16 would end it before any answer.
REPLY_MAX_TOKENS_REASONING = 512
REPLY_CONCURRENCY = 4
_PREVIEW_CHARS = 40
# thinkTags "auto" and no reasoning seen: a lone </think> could have come until the end.
HELD_HINT = ("its streamed answer was held back until the end (no reasoning tags or "
             "reasoning field seen, so a late lone </think> was still possible); if it "
             'never writes <think> tags, set "thinkTags": "paired" so that live previews '
             "show the answer as it is written")


@dataclass(frozen=True, slots=True)
class ReplyRow:
    """One routed model's answer to the reply probe."""

    model_ref: str
    api: str
    error_class: ErrorClass | None  # None: non-empty final text came back
    message: str  # why not ("" when ok); secrets removed
    text: str  # the final text, reasoning stripped, secrets removed ("" on failure)
    ttft_ms: float | None  # request sent -> first generated content; None: none came
    total_ms: float | None  # None: nothing was sent (the ref names no configured model)
    max_tokens: int
    # A suggestion about the model's settings the answer gave reason for ("" when none).
    hint: str = ""

    @property
    def ok(self) -> bool:
        """Non-empty final text came back."""
        return self.error_class is None


class _WatchFirstContent(ClientBase):
    """Mixed in before a wire client (see :func:`_timed_class`): records when the reply
    first carries generated content.

    The clients offer no first-token callback, so this wraps the reply they read (from
    ``ClientBase._post``): :meth:`HttpReply.content` is what every client calls on
    generated output (reasoning included) and what ends the ``firstTokenSeconds`` wait,
    so the time to first token reported here means what that timeout means.
    """

    first_content_at: float | None = None

    def _post(self, *args: Any, **kwargs: Any) -> Any:
        return self._watched(super()._post(*args, **kwargs))

    @asynccontextmanager
    async def _watched(self, posting: AbstractAsyncContextManager[HttpReply],
                       ) -> AsyncIterator[HttpReply]:
        async with posting as reply:
            content = reply.content

            def first_content() -> None:
                if self.first_content_at is None:
                    self.first_content_at = time.perf_counter()
                content()

            # The one seam: an instance attribute shadowing the method for this reply.
            reply.content = first_content  # type: ignore[method-assign]
            yield reply


@functools.cache
def _timed_class(api: str) -> type[_WatchFirstContent]:
    """The client class speaking ``api`` (as a turn uses it), timing its first content."""
    base = client_class(api)
    return cast(type[_WatchFirstContent],
                type(f"Timed{base.__name__}", (_WatchFirstContent, base), {}))


def _preview(text: str, secrets: tuple[str, ...]) -> str:
    flat = redact(" ".join(text.split()), secrets)
    return flat if len(flat) <= _PREVIEW_CHARS else flat[:_PREVIEW_CHARS - 1] + "…"


async def _reply(session: aiohttp.ClientSession, model: ResolvedModel) -> ReplyRow:
    """Send the probe prompt to ``model`` through its own wire client and time it."""
    budget = min(REPLY_MAX_TOKENS_REASONING if model.reasoning else REPLY_MAX_TOKENS,
                 model.max_tokens)
    request = ModelRequest(None, (Turn.text("user", REPLY_PROMPT),), max_tokens=budget)
    client = _timed_class(model.api)(model, session)
    secrets = model_secrets(model)
    t = model.timeouts
    error: ModelError | None = None
    message = text = ""
    start = time.perf_counter()
    try:
        # The client enforces the model's own timeouts; this only bounds a stuck client.
        async with asyncio.timeout(t.totalSeconds + t.connectSeconds):
            completion = await client.complete(request)
    except Exception as exc:
        error = classify_exception(exc, phase="the reply probe")
        end = time.perf_counter()
        message = error.message
        if error.error_class is ErrorClass.EMPTY_RESPONSE and client.first_content_at:
            message += "; it generated reasoning but no answer"
            if not model.reasoning:
                message += (f" (a thinking model? mark it `reasoning: true` for a "
                            f"{REPLY_MAX_TOKENS_REASONING}-token probe)")
    else:
        end = time.perf_counter()
        text = completion.text
    first = client.first_content_at
    hint = ""
    if (error is None and model.think_tags == "auto" and model.preview and client.streamed
            and not client.text_before_end):
        hint = HELD_HINT
    return ReplyRow(
        model.ref, model.api, error.error_class if error is not None else None,
        redact(" ".join(message.split()), secrets), _preview(text, secrets),
        (first - start) * 1000 if first is not None else None, (end - start) * 1000,
        budget, hint)


def _server_of(model: ResolvedModel) -> str:
    try:
        return urlsplit(model.base_url).netloc.lower() or model.base_url
    except ValueError:
        return model.base_url


async def probe_replies(config: Config, *, session: aiohttp.ClientSession | None = None,
                        concurrency: int = REPLY_CONCURRENCY) -> list[ReplyRow]:
    """Send :data:`REPLY_PROMPT` to every model Palaver routes to (:func:`routed_refs`);
    one row per model, in that order.

    At most ``concurrency`` probes run at once, and one at a time per server (host and
    port, whatever the api kind and path): a local server answering one request at a
    time would otherwise add one probe's generation to the next one's time to first
    token.
    """
    own = session is None
    session = session or aiohttp.ClientSession()
    gate = asyncio.Semaphore(concurrency)
    per_server: dict[str, asyncio.Lock] = {}

    async def one(ref: str) -> ReplyRow:
        try:
            model = config.model(ref)
        except UnknownModelError as exc:  # the router records it the same way
            return ReplyRow(ref, "?", ErrorClass.NOT_FOUND, f"not configured: {exc}", "",
                            None, None, 0)
        async with per_server.setdefault(_server_of(model), asyncio.Lock()), gate:
            return await _reply(session, model)

    try:
        return list(await asyncio.gather(*(one(ref) for ref in routed_refs(config))))
    finally:
        if own:
            await session.close()


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


def render_replies(config: Config, rows: list[ReplyRow]) -> tuple[str, bool]:
    """The reply probe's report as text, and whether every probed model answered."""
    lines = [
        f"Reply probe: {_models(len(rows))} Palaver routes to (every selection's primary "
        "and fallbacks, and the compaction model)",
        f'prompt "{REPLY_PROMPT}", at most {REPLY_MAX_TOKENS} output tokens '
        f"({REPLY_MAX_TOKENS_REASONING} for a model marked reasoning)",
        "",
    ]
    head = ("MODEL", "API", "RESULT", "TTFT", "TOTAL", "REPLY")
    table: list[tuple[str, ...]] = [head]
    for r in rows:
        table.append((
            r.model_ref, r.api, "ok" if r.error_class is None else r.error_class.value,
            _ms(r.ttft_ms), _ms(r.total_ms),
            f'"{r.text}"' if r.ok else r.message,
        ))
    widths = [max(len(row[i]) for row in table) for i in range(len(head) - 1)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row[:-1], widths, strict=True))
              + "  " + row[-1] for row in table]
    lines.append("")
    hinted = [r for r in rows if r.hint]
    for r in hinted:
        lines.append(f"{r.model_ref}: {r.hint}")
    if hinted:
        lines.append("")
    # Which paths would get an answer: the model list alone cannot say.
    for name, refs, answer in check_paths(config, rows):
        if refs:
            lines.append(f"{name}: ok ({answer} answered)" if answer is not None
                         else f"{name}: FAIL no model answered among {', '.join(refs)}")
    failed = [r.model_ref for r in rows if not r.ok]
    if not rows:
        lines.append("reply: FAIL no model configured")
    elif failed:
        lines.append(f"reply: FAIL {len(failed)} of {_models(len(rows))} gave no final text "
                     f"({', '.join(failed)})")
    else:
        lines.append(f"reply: ok ({len(rows)} of {_models(len(rows))} answered)")
    return "\n".join(lines), bool(rows) and not failed


def _models(n: int) -> str:
    return f"{n} model" if n == 1 else f"{n} models"


def _ms(value: float | None) -> str:
    return f"{value:.0f} ms" if value is not None else "-"


async def _budget_lines(config: Config) -> list[str]:
    """The provider budgets (spend so far, exhausted or not); a store that cannot be
    read is said in one line, and never fails the check."""
    from bridge.store.db import StoreError
    from bridge.usage.budgets import budget_lines

    try:
        return await budget_lines(config)
    except (StoreError, OSError) as exc:
        return [f"budgets: spend unknown ({exc})"]


def cmd_doctor(args: Any) -> int:
    """Probe the providers in use; exit 0 only if every path has a working model.

    With no model configured (no config file, say) it first runs the same local-server
    discovery as ``palaver run`` and checks what that would use.  With ``--reply`` it
    then sends every routed model a one-line prompt (:func:`probe_replies`) and exits 0
    only if each one answered with final text, too.
    """
    from bridge.config.load import load_for_cli_or_report

    if (loaded := load_for_cli_or_report(args)) is None:
        return EXIT_CONFIG
    config, _path = loaded
    return asyncio.run(_doctor(config, getattr(args, "probe_targets", None),
                               reply=bool(getattr(args, "reply", False))))


async def _doctor(config: Config, targets: Any = None, *, reply: bool = False) -> int:
    from bridge.discovery import DEFAULT_TARGETS, discover, needs_discovery

    if needs_discovery(config):
        found = await discover(config, targets=targets or DEFAULT_TARGETS)
        print(found.explain())
        print()
        if found.config is None:
            return EXIT_FAILURE
        config = found.config
    async with aiohttp.ClientSession() as session:
        rows = await diagnose(config, session=session)
        text, ok = render(config, rows)
        print(text)
        budgets = await _budget_lines(config)
        if budgets:
            print()
            print("\n".join(budgets))
        if reply:
            print()
            replies = await probe_replies(config, session=session)
            text, answered = render_replies(config, replies)
            print(text)
            ok = ok and answered
    return EXIT_OK if ok else EXIT_FAILURE
