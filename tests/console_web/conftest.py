"""A real App (store, core, recording channel, fake router) behind a real ConsoleServer."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from bridge.app import App
from bridge.config.schema import WebConsoleConfig
from bridge.config.watch import LiveConfig
from bridge.console_web.backend import AppBackend
from bridge.console_web.server import ConsoleServer
from tests.core.helpers import FakeRouter, RecordingChannel

API_KEY = "sk-test-consolesecret-1234567890abcdef"
BOT_TOKEN = "123456789:AAHsecretConsoleBotTokenValue_0123456"
WEBHOOK_SECRET = "whsec-console-topsecret-98765"

CONFIG = """// the operator's config
{
  dataDir: "%(data)s",
  models: {
    mode: "replace",
    providers: {
      local: {baseUrl: "http://127.0.0.1:9/v1", api: "openai-completions",
              apiKey: "%(key)s",
              models: [{id: "small", contextWindow: 32000, maxTokens: 1000},
                       {id: "big", contextWindow: 64000, maxTokens: 1000}]},
      backup: {baseUrl: "http://127.0.0.1:9/v1", api: "openai-completions",
               models: [{id: "m", contextWindow: 32000, maxTokens: 1000}]},
    },
  },
  agents: {defaults: {model: {primary: "local/small", fallbacks: ["backup/m"]},
                      models: {"local/big": {alias: "Big"}}}},
  channels: {
    telegram: {botToken: "%(bot)s", webhookSecret: "%(hook)s",
               dmPolicy: "pairing", groupPolicy: "open",
               groups: {"*": {requireMention: false}}},
  },
  health: {enabled: false},
}
"""

CSRF_RE = re.compile(r'name="csrf" value="([^"]+)"')


def write_config(tmp_path: Path) -> Path:
    path = tmp_path / "palaver.json5"
    path.write_text(CONFIG % {"data": tmp_path / "data", "key": API_KEY, "bot": BOT_TOKEN,
                              "hook": WEBHOOK_SECRET}, "utf-8")
    return path


def console_settings(**kw) -> WebConsoleConfig:
    values = {"enabled": True, "host": "127.0.0.1", "port": 0, "allowRemote": False, **kw}
    return WebConsoleConfig.model_construct(**values)


@dataclass
class Console:
    app: App
    live: LiveConfig
    server: ConsoleServer
    channel: RecordingChannel
    router: FakeRouter
    http: aiohttp.ClientSession
    config_path: Path

    @property
    def url(self) -> str:
        return self.server.url

    async def login(self) -> str:
        """Log in through a fresh link; the overview's HTML."""
        async with self.http.get(self.server.login_url()) as resp:
            assert resp.status == 200, await resp.text()
            assert str(resp.url).rstrip("/") == self.url
            return await resp.text()

    async def csrf(self, path: str = "/") -> str:
        async with self.http.get(self.url + path) as resp:
            m = CSRF_RE.search(await resp.text())
            assert m, "no CSRF token on the page"
            return m.group(1)

    async def post(self, path: str, data: dict, *, csrf: str | None = None,
                   origin: str | None = "same", follow: bool = True) -> aiohttp.ClientResponse:
        token = csrf if csrf is not None else await self.csrf()
        headers = {}
        if origin == "same":
            headers["Origin"] = self.url
        elif origin is not None:
            headers["Origin"] = origin
        resp = await self.http.post(self.url + path, data={**data, "csrf": token},
                                    headers=headers, allow_redirects=follow)
        await resp.read()
        return resp


@contextlib.asynccontextmanager
async def serving(app: App, live: LiveConfig | None, channel: RecordingChannel,
                  router: FakeRouter, path: Path | None) -> AsyncIterator[Console]:
    """The console of a started ``app`` and a browser-like client of it; closed after."""
    backend = AppBackend(app, live)
    backend.attach()
    server = ConsoleServer(backend, console_settings(), app.config.data_dir,
                           live_interval_s=0.05)
    await server.start()
    http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    try:
        yield Console(app, live, server, channel, router, http, path)
    finally:
        await http.close()
        await server.stop()


@pytest.fixture
async def console(tmp_path):
    path = write_config(tmp_path)
    live = LiveConfig.load(path)
    channel = RecordingChannel("telegram")
    holder: dict = {}
    router = FakeRouter(lambda: holder["app"].config)
    app = App(live, channels=[channel], router=router)
    holder["app"] = app
    await app.start()
    try:
        async with serving(app, live, channel, router, path) as console:
            yield console
    finally:
        await app.stop(grace=0)
