"""The console's aiohttp application: security middlewares, the pages, live updates.

Every response carries a strict Content-Security-Policy (scripts, styles and images from
this origin only: nothing inline, nothing from another host) and ``no-store``.  Before
any page: the ``Host`` header must name this console (DNS rebinding), then a session is
needed (else the login page), and every POST needs that session's CSRF token and a
same-origin ``Origin``.  There is no access log: a login link's query would be in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp_jinja2
import jinja2
from aiohttp import web

import bridge.console_web.pages as pages
from bridge.config.schema import WebConsoleConfig, is_loopback_host
from bridge.console_web.auth import COOKIE, ConsoleAuth, Session, read_or_create_token
from bridge.console_web.backend import ConsoleBackend

log = logging.getLogger(__name__)

__all__ = ["ConsoleServer", "CSP"]

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # Not "no-referrer": Chromium then sends "Origin: null" on the console's own forms.
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cache-Control": "no-store",
}
PUBLIC_PATHS = ("/login", "/static/")
HERE = Path(__file__).parent

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _secure_headers(response: web.StreamResponse, static: bool) -> None:
    for name, value in SECURITY_HEADERS.items():
        if name == "Cache-Control" and static:
            continue
        response.headers.setdefault(name, value)


def _host_port(netloc: str) -> tuple[str, int | None] | None:
    """``host[:port]`` (IPv6 in brackets) split; None if malformed."""
    try:
        parsed = urllib.parse.urlsplit("//" + netloc)
        host = parsed.hostname
        port = parsed.port
    except ValueError:
        return None
    if not host or parsed.username or parsed.password or parsed.path:
        return None
    return host.lower(), port


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class ConsoleServer:
    """Serves the console for ``backend`` on ``settings.host:settings.port``.

    ``start()`` creates ``<data_dir>/console.token`` when missing and binds; ``stop()``
    ends live streams and releases the port.  ``port=0`` binds a free port (tests).
    """

    def __init__(self, backend: ConsoleBackend, settings: WebConsoleConfig, data_dir: Path,
                 *, clock: Callable[[], float] = time.time, live_interval_s: float = 2.0,
                 ) -> None:
        self.backend = backend
        self.settings = settings
        self.data_dir = Path(data_dir)
        self._clock = clock
        self.live_interval_s = live_interval_s
        self.auth: ConsoleAuth | None = None
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._closing = asyncio.Event()
        self.probe_result: pages.ProbeResult | None = None
        self.live_cache: tuple[float, str] | None = None  # (monotonic, overview fragment)
        self._probing: asyncio.Lock = asyncio.Lock()

    # -- lifecycle -------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("ConsoleServer is not started")
        return self._port

    @property
    def url(self) -> str:
        host = self.settings.host
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1"
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    def login_url(self) -> str:
        """A fresh one-time login link (what ``palaver console`` prints)."""
        assert self.auth is not None
        return f"{self.url}/login?k={self.auth.make_link_secret()}"

    def build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._security, self._authenticate],
                              client_max_size=256 * 1024)
        app[pages.CONSOLE] = self
        aiohttp_jinja2.setup(
            app, loader=jinja2.FileSystemLoader(str(HERE / "templates")),
            autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
            undefined=jinja2.StrictUndefined)
        env = aiohttp_jinja2.get_env(app)
        env.filters["ago"] = pages.ago
        env.filters["when"] = pages.when
        env.filters["ms"] = pages.ms
        pages.add_routes(app)
        app.router.add_static("/static/", HERE / "static", name="static")
        return app

    async def start(self) -> None:
        """Bind and serve; OSError (address in use, ...) names the address."""
        if self._runner is not None:
            return
        token = await asyncio.to_thread(read_or_create_token, self.data_dir)
        from bridge.secrets import register_secret

        register_secret(token)
        self.auth = ConsoleAuth(token, clock=self._clock)
        self._closing.clear()
        runner = web.AppRunner(self.build_app(), access_log=None, handle_signals=False,
                               shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self.settings.host, self.settings.port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise OSError(exc.errno, f"console cannot listen on {self.settings.host}:"
                          f"{self.settings.port}: {exc.strerror or exc}") from exc
        self._runner = runner
        addresses = runner.addresses
        self._port = int(addresses[0][1]) if addresses else self.settings.port
        log.info("console on %s (run `palaver console` for a login link)", self.url)

    async def stop(self) -> None:
        self._closing.set()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        self._port = None

    @property
    def closing(self) -> asyncio.Event:
        return self._closing

    # -- who may ask ------------------------------------------------------------------

    def host_allowed(self, netloc: str | None) -> bool:
        """Whether a ``Host`` (or an ``Origin``'s host:port) names this console."""
        if not netloc:
            return False
        split = _host_port(netloc)
        if split is None:
            return False
        host, port = split
        if port is None or port != self._port:
            return False
        bind = self.settings.host.strip("[]").lower()
        if host in ("localhost", "127.0.0.1", "::1") or host == bind:
            return True
        if self.settings.allowRemote:
            # Names could be rebound by their DNS; an address cannot.
            return _is_ip(host)
        return is_loopback_host(host) and _is_ip(host)

    @web.middleware
    async def _security(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        static = request.path.startswith("/static/")
        try:
            if not self.host_allowed(request.headers.get("Host")):
                response: web.StreamResponse = web.Response(
                    status=421, text="This console does not serve that host name.\n")
            else:
                response = await handler(request)
        except web.HTTPException as exc:  # redirects and errors: the same headers
            _secure_headers(exc, static)
            raise
        _secure_headers(response, static)
        return response

    def session_of(self, request: web.Request) -> Session | None:
        assert self.auth is not None
        return self.auth.session(request.cookies.get(COOKIE))

    @web.middleware
    async def _authenticate(self, request: web.Request, handler: Handler
                            ) -> web.StreamResponse:
        if request.path == "/login" or request.path.startswith("/static/"):
            return await handler(request)
        session = self.session_of(request)
        if session is None:
            if request.method != "GET" or request.path == "/events":
                return web.Response(status=403, text="Not logged in.\n")
            return pages.login_page(request, status=401)
        if request.method not in ("GET", "HEAD"):
            origin = request.headers.get("Origin")
            split = urllib.parse.urlsplit(origin) if origin else None
            if (split is None or split.scheme not in ("http", "https")
                    or split.netloc.lower() != (request.headers.get("Host") or "").lower()
                    or not self.host_allowed(split.netloc)):
                log.warning("console: refused a %s to %s from another origin",
                            request.method, request.path)
                return web.Response(status=403, text="Refused: not from this console's page.\n")
            form = await request.post()
            given = request.headers.get("X-CSRF-Token") or form.get("csrf")
            assert self.auth is not None
            if not isinstance(given, str) or not self.auth.csrf_ok(session, given):
                log.warning("console: refused a %s to %s without its CSRF token",
                            request.method, request.path)
                return web.Response(status=403, text="Refused: the form is stale or forged; "
                                    "reload the page.\n")
        request[pages.SESSION] = session
        return await handler(request)

    # -- live updates -----------------------------------------------------------------

    async def stream(self, request: web.Request,
                     fragment: Callable[[], Awaitable[str]]) -> web.StreamResponse:
        """Server-sent events: ``event: overview`` with the page's live part, when it
        changes (checked every ``live_interval_s``), and a comment now and then."""
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-store",
            "X-Accel-Buffering": "no"})
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        await response.prepare(request)
        last = ""
        idle = 0.0
        try:
            while not self._closing.is_set():
                html = await fragment()
                if html != last:
                    last = html
                    data = "".join(f"data: {line}\n" for line in html.splitlines() or [""])
                    await response.write(f"event: overview\n{data}\n".encode())
                    idle = 0.0
                elif idle >= 15.0:
                    await response.write(b": keep-alive\n\n")
                    idle = 0.0
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.live_interval_s):
                        await self._closing.wait()
                idle += self.live_interval_s
        except ConnectionResetError:
            pass
        return response


def json_for_page(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False)
