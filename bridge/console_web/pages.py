"""The console's pages and actions (aiohttp handlers rendering jinja2 templates).

Pages: Overview (live), Chats (+ one chat's model form), Turns, Models (+ probe now),
Pairing (+ approve, deny), Usage, Config.  Actions are POST forms that work without
JavaScript and answer with a redirect (the result is shown once, from the session).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp_jinja2
from aiohttp import web

from bridge.chats import ChatError, ChatInfo, ChatRef, list_chats, next_model, pin_changes
from bridge.config.schema import Config, ModelSelection
from bridge.console_web.auth import COOKIE as COOKIE_NAME
from bridge.console_web.auth import Session
from bridge.durations import compact
from bridge.secrets import REDACTED, redact

if TYPE_CHECKING:
    from bridge.console_web.server import ConsoleServer

log = logging.getLogger(__name__)

MASK = "***"
CONSOLE: web.AppKey[Any] = web.AppKey("console_server", object)
# A typed request key where aiohttp has them (3.12+), else the plain string.
SESSION: Any = (web.RequestKey("console_session", Session)  # type: ignore[attr-defined,unused-ignore]
                if hasattr(web, "RequestKey") else "console_session")
NAV = (("overview", "/", "Overview"), ("chats", "/chats", "Chats"), ("turns", "/turns", "Turns"),
       ("models", "/models", "Models"), ("pairing", "/pairing", "Pairing"),
       ("usage", "/usage", "Usage"), ("config", "/config", "Config"))


# --------------------------------------------------------------------------- helpers


def ago(ts: float | None) -> str:
    if not ts:
        return "-"
    return f"{compact(time.time() - ts)} ago"


def when(ts: float | None) -> str:
    if not ts:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def _server(request: web.Request) -> ConsoleServer:
    server: ConsoleServer = request.app[CONSOLE]
    return server


def _flash(request: web.Request, text: str, kind: str = "ok") -> None:
    session = request.get(SESSION)
    if session is not None:
        session.flash.append((kind, redact(text)))


def _take_flash(request: web.Request) -> list[tuple[str, str]]:
    session = request.get(SESSION)
    if session is None:
        return []
    flashes, session.flash = list(session.flash), []
    return flashes


def render(request: web.Request, template: str, page: str, status: int = 200,
           **context: Any) -> web.Response:
    session = request.get(SESSION)
    context.setdefault("flashes", _take_flash(request))
    return aiohttp_jinja2.render_template(
        template, request,
        {"nav": NAV, "page": page, "csrf": session.csrf if session else "", **context},
        status=status)


def login_page(request: web.Request, *, status: int = 200, problem: str = "") -> web.Response:
    return aiohttp_jinja2.render_template(
        "login.html", request, {"nav": (), "page": "login", "csrf": "", "flashes": [],
                                "problem": problem}, status=status)


def _form_str(form: Any, name: str) -> str:
    value = form.get(name, "")
    return value.strip() if isinstance(value, str) else ""


def _masked(value: Any) -> Any:
    """``redacted(config)`` with each ``[REDACTED]`` shown as ``***``."""
    if isinstance(value, str):
        return value.replace(REDACTED, MASK)
    if isinstance(value, dict):
        return {k: _masked(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(v) for v in value]
    return value


def _scrub(request: web.Request, text: str) -> str:
    """Free text on its way to the page: no registered or well-known secret in it."""
    return redact(text)


# --------------------------------------------------------------------------- overview


def _in_cluster(cluster: Any) -> bool:
    return isinstance(cluster, Mapping) and cluster.get("mode") == "cluster"


async def _owners(server: ConsoleServer, cluster: Any) -> dict[str, str] | None:
    """In a cluster: which process holds each chat (None alone, or when the store
    cannot say)."""
    if not _in_cluster(cluster):
        return None
    from bridge.store.coord import chat_owners

    try:
        return await server.backend.store.read_with(chat_owners())
    except Exception:
        log.debug("chat owners unavailable", exc_info=True)
        return None


async def cluster_view(server: ConsoleServer, cluster: Any) -> dict[str, Any] | None:
    """The overview's Cluster section: every process of the store (this one first)
    with its heartbeat, the leaderships it holds and how many chats it answers."""
    if not _in_cluster(cluster):
        return None
    owners = await _owners(server, cluster)
    counts = Counter(owners.values()) if owners is not None else None
    lease = float(cluster.get("lease_s") or 0.0)

    def row(pid: str, *, this: bool, ok: bool, heartbeat: Any, leads: list[str]) -> dict:
        return {"id": pid, "this": this, "ok": ok, "heartbeat": heartbeat, "leads": leads,
                "chats": counts[pid] if counts is not None else None}

    rows = [row(str(cluster.get("process")), this=True, ok=bool(cluster.get("alive")),
                heartbeat=cluster.get("heartbeat_age_s"),
                leads=[str(x.get("name")) for x in cluster.get("leaderships") or []])]
    for peer in cluster.get("peers") or []:
        age = peer.get("heartbeat_age_s")
        rows.append(row(str(peer.get("id")), this=False,
                        ok=age is not None and (not lease or float(age) <= lease),
                        heartbeat=age, leads=[str(n) for n in peer.get("leaderships") or []]))
    return {"lease_s": lease, "processes": rows, "idle": cluster.get("idle_chats", 0)}


async def overview_data(server: ConsoleServer) -> dict[str, Any]:
    from bridge.health import evaluate_health

    backend = server.backend
    try:
        report = dict(await backend.health())
    except Exception as exc:
        report = {"store": {"ok": False, "detail": f"health check failed: {exc}"},
                  "channels": {}}
    problems = evaluate_health(report)
    channels = []
    for name, status in (report.get("channels") or {}).items():
        connected = bool(status.get("connected"))
        detail = redact(str(status.get("detail") or ""))
        channels.append({"name": name, "connected": connected,
                         "state": "connected" if connected else (detail or "not connected")})
    config = backend.config
    from bridge.models.doctor import routed_refs

    status = backend.router_status()
    models = []
    try:
        refs = routed_refs(config)
    except Exception:
        refs = []
    for ref in [*refs, *[r for r in status if r not in refs]]:
        st = status.get(ref, {})
        models.append({"ref": ref, "state": str(st.get("state", "ok")),
                       "cooldown": st.get("cooldown_remaining_s", 0.0),
                       "failures": st.get("failures", 0),
                       "last_error": st.get("last_error") or "",
                       "last_message": redact(str(st.get("last_message") or ""))})
    store = report.get("store") or {}
    return {"channels": channels, "models": models, "problems": problems,
            "store_ok": bool(store.get("ok")), "store_detail": redact(str(store.get("detail") or "")),
            "pending": report.get("pending", 0), "busy": report.get("busy_sessions", 0),
            "activity": backend.activity.summary(),
            "budgets": report.get("budgets") or {},
            "cluster": await cluster_view(server, report.get("cluster"))}


async def overview_fragment(request: web.Request) -> str:
    data = await overview_data(_server(request))
    env = aiohttp_jinja2.get_env(request.app)
    return env.get_template("_overview_live.html").render(**data)


async def overview(request: web.Request) -> web.Response:
    return render(request, "overview.html", "overview", live=await overview_fragment(request))


async def events(request: web.Request) -> web.StreamResponse:
    server = _server(request)

    async def fragment() -> str:
        # Every open tab shares one rendering per interval (the health check writes to
        # the store to prove it can).
        now = time.monotonic()
        cached = server.live_cache
        if cached is not None and now - cached[0] < server.live_interval_s * 0.9:
            return cached[1]
        html = await overview_fragment(request)
        server.live_cache = (now, html)
        return html

    return await server.stream(request, fragment)


# --------------------------------------------------------------------------- chats


@dataclass(frozen=True, slots=True)
class Target:
    """What a model form edits: one chat, a whole channel, or the default."""

    key: str  # "default", "channel:telegram", or a chat ("telegram:-100123")
    scope: str  # chat | channel | default
    chat: ChatRef
    label: str


def parse_target(text: str, config: Config) -> Target:
    text = text.strip()
    if text == "default":
        return Target("default", "default", ChatRef("telegram", "0", "direct"), "the default")
    if text.startswith("channel:"):
        name = text.split(":", 1)[1]
        if name not in ("telegram", "whatsapp", "console"):
            raise ChatError(f"unknown channel {name!r}")
        return Target(text, "channel", ChatRef(name, "0", "direct"), f"every {name} chat")
    chat = ChatRef.parse(text)
    return Target(str(chat), "chat", chat, str(chat))


async def _chat_info(request: web.Request, chat: ChatRef) -> ChatInfo | None:
    backend = _server(request).backend
    for info in await list_chats(backend.config, backend.store):
        if info.chat == str(chat):
            return info
    return None


def _current(config: Config, target: Target, info: ChatInfo | None) -> dict[str, Any]:
    """The target's model, fallbacks, where they come from, and its system prompt."""
    if target.scope == "default":
        sel = config.default_selection()
        return {"model": sel.primary or "", "fallbacks": list(sel.fallbacks),
                "source": "agents.defaults.model" if config.agents.defaults.model
                else "the first configured model",
                "prompt": config.agents.defaults.systemPrompt or "", "pinned": ""}
    if target.scope == "channel":
        chan = config.channel(target.chat.channel)
        sel_c: ModelSelection | None = getattr(chan, "model", None) if chan else None
        return {"model": sel_c.primary if sel_c else "",
                "fallbacks": list(sel_c.fallbacks) if sel_c else [],
                "source": f"channels.{target.chat.channel}.model" if sel_c
                else "not set (the default answers)",
                "prompt": (getattr(chan, "systemPrompt", None) or "") if chan else "",
                "pinned": "", "missing": chan is None}
    chat = target.chat
    nxt = next_model(config, chat, stored_choice=info.model_choice if info else None)
    prompt = config.system_prompt_for(
        chat.channel, chat_kind=chat.kind, chat_id=chat.chat_id,
        sender_id=chat.chat_id if chat.kind == "direct" else None, thread_id=chat.thread_id)
    return {"model": nxt.ref or "", "fallbacks": list(nxt.fallbacks), "source": nxt.source,
            "prompt": prompt or "", "pinned": info.model_choice if info else ""}


def _known_refs(config: Config) -> list[str]:
    from bridge.config.commands import model_rows

    out: list[str] = []
    for row in model_rows(config):
        out.append(row["ref"])
        if row["alias"]:
            out.append(row["alias"])
    return out


async def chats(request: web.Request) -> web.Response:
    backend = _server(request).backend
    q = request.query.get("q", "").strip()
    rows = await list_chats(backend.config, backend.store)
    if q:
        needle = q.casefold()
        rows = [r for r in rows if needle in " ".join(
            (r.chat, r.name, r.kind, r.model or "", r.model_source)).casefold()]
    config = backend.config
    channel_names = [n for n in ("telegram", "whatsapp") if config.channel(n) is not None]
    cluster = backend.cluster()
    owners = await _owners(_server(request), cluster)
    me = cluster.get("process") if owners is not None and cluster is not None else None
    return render(request, "chats.html", "chats", rows=rows, q=q, channels=channel_names,
                  owners=owners, me=me)


async def chat_page(request: web.Request, *, target_text: str | None = None,
                    preview: dict[str, Any] | None = None, error: str = "",
                    status: int = 200, form: dict[str, str] | None = None) -> web.Response:
    backend = _server(request).backend
    config = backend.config
    text = target_text if target_text is not None else request.query.get("c", "default")
    try:
        target = parse_target(text, config)
    except ChatError as exc:
        return render(request, "message.html", "chats", status=404, title="No such chat",
                      text=str(exc))
    info = await _chat_info(request, target.chat) if target.scope == "chat" else None
    current = _current(config, target, info)
    turns = []
    if info is not None:
        from bridge.console_web.backend import recent_turns

        turns = await recent_turns(backend.store, limit=10, session_key=info.session_key)
    values = form or {"primary": current["model"], "fallbacks": ", ".join(current["fallbacks"])}
    return render(request, "chat.html", "chats", status=status, target=target, info=info,
                  current=current, refs=_known_refs(config), preview=preview, error=error,
                  form=values, turns=turns, chat_of=_chat_of,
                  editable=backend.config_path is not None)


async def chat_get(request: web.Request) -> web.Response:
    return await chat_page(request)


def _wanted(form: Any) -> tuple[Any, bool, dict[str, str]]:
    primary = _form_str(form, "primary")
    fallbacks = [f.strip() for f in _form_str(form, "fallbacks").split(",") if f.strip()]
    clear = _form_str(form, "action") == "clear" or _form_str(form, "clear") == "1"
    values = {"primary": primary, "fallbacks": ", ".join(fallbacks)}
    if clear:
        return None, True, values
    if not primary:
        raise ChatError("name a model (a ref such as provider/model, or an alias)")
    ref: Any = {"primary": primary, "fallbacks": fallbacks} if fallbacks else primary
    return ref, False, values


async def _plan(request: web.Request, form: Any, *, dry_run: bool,
                expect: str | None) -> tuple[Target, Any, str]:
    """Build and apply (or dry-run) the edit a model form asks for: (target, result, sha)."""
    from bridge.config.edit import apply_edit, file_sha256
    from bridge.config.load import load_config

    backend = _server(request).backend
    path = backend.config_path
    if path is None:
        raise ChatError("this Palaver runs without a config file: nothing to edit")
    target = parse_target(_form_str(form, "target"), backend.config)
    ref, clear, _values = _wanted(form)

    def work() -> tuple[Any, str]:
        sha = file_sha256(path)
        if expect is not None and sha != expect:
            from bridge.config.edit import ConcurrentEditError

            raise ConcurrentEditError(
                "the config file changed since the preview; nothing was written — look at "
                "the new diff and save again")
        try:
            base = load_config(path)
        except Exception:
            base = backend.config
        changes = pin_changes(base, target.chat, ref, target.scope, clear=clear)  # type: ignore[arg-type]
        return apply_edit(path, changes, dry_run=dry_run, expect_sha256=sha), sha

    result, sha = await asyncio.to_thread(work)
    return target, result, sha


async def chat_preview(request: web.Request) -> web.Response:
    from bridge.config.edit import EditError

    form = await request.post()
    target_text = _form_str(form, "target")
    try:
        _ref, _clear, values = _wanted(form)
        target, result, sha = await _plan(request, form, dry_run=True, expect=None)
    except (ChatError, EditError) as exc:
        return await chat_page(request, target_text=target_text, error=_scrub(request, str(exc)),
                               status=400, form=_values_of(form))
    nxt = next_model(result.config, target.chat)
    preview = {"diff": result.diff(), "changed": result.changed, "sha": sha,
               "clear": "1" if _clear else "", "next": nxt}
    return await chat_page(request, target_text=target_text, preview=preview, form=values)


def _values_of(form: Any) -> dict[str, str]:
    return {"primary": _form_str(form, "primary"), "fallbacks": _form_str(form, "fallbacks")}


async def chat_save(request: web.Request) -> web.StreamResponse:
    from bridge.config.edit import ConcurrentEditError, EditError

    form = await request.post()
    target_text = _form_str(form, "target")
    expect = _form_str(form, "sha") or None
    if expect is None:
        return await chat_page(request, target_text=target_text, status=400,
                               error="preview the change first", form=_values_of(form))
    try:
        target, result, _sha = await _plan(request, form, dry_run=False, expect=expect)
    except ConcurrentEditError as exc:
        return await chat_page(request, target_text=target_text, status=409,
                               error=_scrub(request, str(exc)), form=_values_of(form))
    except (ChatError, EditError) as exc:
        return await chat_page(request, target_text=target_text, status=400,
                               error=_scrub(request, str(exc)), form=_values_of(form))
    backend = _server(request).backend
    await backend.reload_config()
    nxt = next_model(result.config, target.chat)
    if result.changed:
        log.info("console: model of %s changed in %s", target.label, result.path)
        _flash(request, f"Saved. {target.label} now: {nxt.ref or 'none'} — {nxt.source}")
    else:
        _flash(request, "No change: the config already says that.")
    raise web.HTTPSeeOther("/chat?" + _query(c=target.key))


def _query(**params: str) -> str:
    import urllib.parse

    return urllib.parse.urlencode(params)


# --------------------------------------------------------------------------- turns


async def turns(request: web.Request) -> web.Response:
    from bridge.console_web.backend import recent_turns

    backend = _server(request).backend
    with_text = backend.config.logging.logMessageText
    chat = request.query.get("chat", "").strip()
    session_key = None
    if chat:
        try:
            info = await _chat_info(request, ChatRef.parse(chat))
        except ChatError:
            info = None
        session_key = info.session_key if info else "-"
    rows = await recent_turns(backend.store, limit=100, session_key=session_key,
                              with_text=with_text)
    return render(request, "turns.html", "turns", turns=rows, with_text=with_text, chat=chat,
                  chat_of=_chat_of)


def _chat_of(session_key: str) -> str:
    try:
        return str(ChatRef.from_session_key(session_key))
    except Exception:
        return session_key


# --------------------------------------------------------------------------- models


@dataclass
class ProbeResult:
    at: float
    rows: list[Any] = field(default_factory=list)
    error: str = ""


async def models(request: web.Request) -> web.Response:
    from bridge.config.commands import model_rows

    server = _server(request)
    config = server.backend.config
    status = server.backend.router_status()
    rows = []
    for row in model_rows(config):
        st = status.get(row["ref"], {})
        rows.append({**row, "state": str(st.get("state", "ok")),
                     "cooldown": st.get("cooldown_remaining_s", 0.0),
                     "last_error": st.get("last_error") or ""})
    providers = []
    for pid, p in config.models.providers.items():
        providers.append({"id": pid, "api": p.api, "base_url": redact(p.baseUrl or ""),
                          "key": MASK if p.apiKey is not None else "none",
                          "models": len(p.models)})
    return render(request, "models.html", "models", rows=rows, providers=providers,
                  probe=server.probe_result, probing=server._probing.locked())


async def models_probe(request: web.Request) -> web.StreamResponse:
    from bridge.models.doctor import diagnose

    server = _server(request)
    if server._probing.locked():
        _flash(request, "A probe is running already.", "warn")
        raise web.HTTPSeeOther("/models")
    async with server._probing:
        try:
            rows = await diagnose(server.backend.config)
            server.probe_result = ProbeResult(time.time(), [
                {"ref": r.model_ref, "provider": r.provider, "ok": r.ok,
                 "reachable": r.reachable, "detail": redact(r.detail),
                 "rtt": r.rtt_ms, "credentials": r.credentials,
                 "warnings": [redact(w) for w in r.warnings]} for r in rows])
        except Exception as exc:
            server.probe_result = ProbeResult(time.time(), [], redact(f"probe failed: {exc}"))
    ok = server.probe_result.rows and all(r["ok"] for r in server.probe_result.rows)
    _flash(request, "Probed: every model answers." if ok else "Probed: see the problems below.",
           "ok" if ok else "warn")
    raise web.HTTPSeeOther("/models")


# --------------------------------------------------------------------------- pairing


async def pairing(request: web.Request) -> web.Response:
    store = _server(request).backend.store
    pending = await store.pending_pairings()
    approved = await store.approvals()
    return render(request, "pairing.html", "pairing", pending=pending, approved=approved)


async def _pairing_action(request: web.Request, approve: bool) -> web.StreamResponse:
    form = await request.post()
    channel, code = _form_str(form, "channel"), _form_str(form, "code")
    backend = _server(request).backend
    if approve:
        outcome = await backend.approve_pairing(channel, code)
    else:
        outcome = await backend.deny_pairing(channel, code)
    if outcome is None:
        _flash(request, f"No pending, unexpired code {code!r} on {channel}.", "error")
    else:
        r = outcome.request
        who = r.sender_id + (f" ({r.sender_name})" if r.sender_name else "")
        verb = "Approved" if approve else "Declined"
        told = "they were told." if outcome.told else (outcome.detail or "they were not told.")
        _flash(request, f"{verb} {who} on {r.channel}; {told}",
               "ok" if outcome.told else "warn")
    raise web.HTTPSeeOther("/pairing")


async def pairing_approve(request: web.Request) -> web.StreamResponse:
    return await _pairing_action(request, True)


async def pairing_deny(request: web.Request) -> web.StreamResponse:
    return await _pairing_action(request, False)


# --------------------------------------------------------------------------- usage


def _bars(days: list[tuple[str, Any]]) -> dict[str, Any]:
    """An SVG bar chart's geometry (tokens per day); drawn by the template."""
    width, height, pad = 600, 160, 20
    peak = max((t.tokens for _, t in days), default=0) or 1
    n = max(len(days), 1)
    slot = (width - 2 * pad) / n
    bars = []
    for i, (day, t) in enumerate(days):
        h = (height - 2 * pad) * t.tokens / peak
        bars.append({"x": round(pad + i * slot + slot * 0.1, 1), "y": round(height - pad - h, 1),
                     "w": round(slot * 0.8, 1), "h": round(h, 1), "day": day,
                     "tokens": t.tokens, "cost": t.cost_usd})
    return {"width": width, "height": height, "bars": bars, "peak": peak}


async def usage(request: web.Request) -> web.Response:
    try:
        from bridge.store.usage import UsageQueries
        from bridge.usage.report import tokens_text, usd_text
    except ImportError:  # an install without the usage records
        return render(request, "message.html", "usage", title="Usage",
                      text="This Palaver records no usage.")
    store = _server(request).backend.store
    days_back = 30
    try:
        days_back = max(1, min(366, int(request.query.get("days", "30"))))
    except ValueError:
        pass
    since = time.time() - days_back * 86400
    q = UsageQueries(store)
    by_chat = await q.report(since=since, by="chat")
    by_model = await q.report(since=since, by="model")
    by_day = await q.report(since=since, by="day")
    total = await q.totals(since=since)
    return render(request, "usage.html", "usage", by_chat=by_chat, by_model=by_model,
                  by_day=by_day, total=total, chart=_bars(by_day), days=days_back,
                  tokens=tokens_text, usd=usd_text)


# --------------------------------------------------------------------------- config


async def config_page(request: web.Request) -> web.Response:
    from bridge.config.load import redacted

    backend = _server(request).backend
    text = json.dumps(_masked(redacted(backend.config)), indent=2, ensure_ascii=False)
    path = backend.config_path
    return render(request, "config.html", "config", text=redact(text),
                  path=str(path) if path else "(none: built-in defaults)")


# --------------------------------------------------------------------------- login


async def login(request: web.Request) -> web.StreamResponse:
    server = _server(request)
    auth = server.auth
    assert auth is not None
    secret = request.query.get("k")
    if secret is None:
        if server.session_of(request) is not None:
            raise web.HTTPSeeOther("/")
        return login_page(request)
    client = request.remote or "?"
    if auth.locked_out(client):
        log.warning("console: login refused (too many failed logins from %s)", client)
        return login_page(request, status=429,
                          problem="Too many failed logins: wait a few minutes, then run "
                                  "`palaver console` for a new link.")
    problem = auth.redeem(secret)
    if problem is not None:
        auth.failed(client)
        log.warning("console: login refused from %s: %s", client, problem)
        return login_page(request, status=403,
                          problem=f"Refused: {problem}. Run `palaver console` for a new link.")
    session = auth.new_session()
    log.info("console: logged in from %s", client)
    response = web.HTTPSeeOther("/")
    response.set_cookie(COOKIE_NAME, session.sid, httponly=True, samesite="Strict",
                        secure=request.secure, path="/")
    raise response


async def logout(request: web.Request) -> web.StreamResponse:
    server = _server(request)
    session = request.get(SESSION)
    if session is not None and server.auth is not None:
        server.auth.end(session.sid)
    response = web.HTTPSeeOther("/login")
    response.del_cookie(COOKIE_NAME, path="/")
    raise response


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/login", login)
    r.add_post("/logout", logout)
    r.add_get("/", overview)
    r.add_get("/events", events)
    r.add_get("/chats", chats)
    r.add_get("/chat", chat_get)
    r.add_post("/chat/preview", chat_preview)
    r.add_post("/chat/save", chat_save)
    r.add_get("/turns", turns)
    r.add_get("/models", models)
    r.add_post("/models/probe", models_probe)
    r.add_get("/pairing", pairing)
    r.add_post("/pairing/approve", pairing_approve)
    r.add_post("/pairing/deny", pairing_deny)
    r.add_get("/usage", usage)
    r.add_get("/config", config_page)
