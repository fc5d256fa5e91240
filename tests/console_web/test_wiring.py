"""``start_console(app, live)``: what ``palaver run`` calls once the App has started."""

from __future__ import annotations

import logging
import socket

import aiohttp

from bridge.app import App
from bridge.config.watch import LiveConfig
from bridge.console_web.wiring import start_console
from tests.console_web.conftest import write_config
from tests.core.helpers import FakeRouter, RecordingChannel, group


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _app(tmp_path, console_block: str) -> tuple[App, LiveConfig]:
    path = write_config(tmp_path)
    text = path.read_text().replace("health: {enabled: false},",
                                    "health: {enabled: false}, " + console_block)
    path.write_text(text)
    live = LiveConfig.load(path)
    holder: dict = {}
    app = App(live, channels=[RecordingChannel()], router=FakeRouter(lambda: holder["a"].config))
    holder["a"] = app
    await app.start()
    return app, live


async def test_served_on_the_configured_port_and_sees_the_turns(tmp_path):
    port = _free_port()
    app, live = await _app(tmp_path, f"console: {{port: {port}}},")
    server = await start_console(app, live)
    try:
        assert server is not None and server.port == port
        assert server.url == f"http://127.0.0.1:{port}"
        await app.core.accept(group("hi", chat="-1001"))
        await app.core.wait_idle()
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            async with http.get(server.login_url()) as resp:
                body = await resp.text()
        assert resp.status == 200
        assert server.backend.activity.summary()["turns_hour"] == 1
        assert "Turns (1 h)" in body
    finally:
        if server is not None:
            await server.stop()
        await app.stop(grace=0)


async def test_not_served_when_disabled(tmp_path):
    app, live = await _app(tmp_path, "console: {enabled: false},")
    try:
        assert await start_console(app, live) is None
    finally:
        await app.stop(grace=0)


async def test_port_in_use_is_logged_and_palaver_runs_on(tmp_path, caplog):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        app, live = await _app(tmp_path, f"console: {{port: {port}}},")
        try:
            with caplog.at_level(logging.ERROR):
                assert await start_console(app, live) is None
            assert f"console cannot listen on 127.0.0.1:{port}" in caplog.text
            assert (await app.health())["store"]["ok"]
        finally:
            await app.stop(grace=0)


async def test_palaver_run_serves_it_and_stops_it(tmp_path):
    # App(serve_health=True) is what `palaver run` builds.
    port = _free_port()
    path = write_config(tmp_path)
    path.write_text(path.read_text().replace(
        "health: {enabled: false},", f"health: {{enabled: false}}, console: {{port: {port}}},"))
    live = LiveConfig.load(path)
    holder: dict = {}
    app = App(live, channels=[RecordingChannel()], serve_health=True,
              router=FakeRouter(lambda: holder["a"].config))
    holder["a"] = app
    await app.start()
    try:
        async with aiohttp.ClientSession() as http, \
                http.get(f"http://127.0.0.1:{port}/", allow_redirects=False) as resp:
            assert resp.status == 401  # the login page: served, and no session
    finally:
        await app.stop(grace=0)
    with socket.socket() as s:  # the port is free again
        s.bind(("127.0.0.1", port))
