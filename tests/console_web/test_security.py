"""The console's defences: login links, sessions, CSRF, Origin, Host, rate limit, secrets."""

from __future__ import annotations

import os
import stat

import aiohttp
import pytest

from bridge.config.load import ConfigError, load_config
from bridge.console_web.auth import (
    COOKIE,
    FAILED_LOGINS,
    ConsoleAuth,
    login_link_secret,
    read_or_create_token,
    token_path,
)
from bridge.console_web.server import CSP
from tests.console_web.conftest import API_KEY, BOT_TOKEN, WEBHOOK_SECRET

PAGES = ["/", "/chats", "/chat?c=default", "/chat?c=channel:telegram", "/turns", "/models",
         "/pairing", "/usage", "/config"]


async def test_token_file_created_owner_only(console):
    path = token_path(console.app.config.data_dir)
    assert path.exists()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    token = path.read_text().strip()
    assert len(token) >= 32
    # the same token on the next start
    assert read_or_create_token(console.app.config.data_dir) == token


def test_token_file_narrowed_when_readable_by_others(tmp_path):
    token = read_or_create_token(tmp_path)
    os.chmod(token_path(tmp_path), 0o644)
    assert read_or_create_token(tmp_path) == token
    assert stat.S_IMODE(token_path(tmp_path).stat().st_mode) == 0o600


@pytest.mark.parametrize("path", PAGES)
async def test_no_session_gets_the_login_page(console, path):
    async with console.http.get(console.url + path) as resp:
        body = await resp.text()
    assert resp.status == 401
    assert "palaver console" in body and "Log in" in body
    assert 'name="csrf"' not in body


async def test_no_session_live_stream_refused(console):
    async with console.http.get(console.url + "/events") as resp:
        assert resp.status == 403


async def test_login_link_sets_strict_httponly_cookie_and_is_single_use(console):
    link = console.server.login_url()
    async with console.http.get(link, allow_redirects=False) as resp:
        assert resp.status == 303
        assert resp.headers["Location"] == "/"
        cookie = resp.headers["Set-Cookie"]
    assert cookie.startswith(COOKIE + "=")
    lowered = cookie.lower()
    assert "httponly" in lowered and "samesite=strict" in lowered and "path=/" in lowered
    async with console.http.get(console.url + "/") as resp:
        assert resp.status == 200
        assert "Overview" in await resp.text()
    # The same link again, from a fresh browser: refused.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as other:
        async with other.get(link, allow_redirects=False) as resp:
            assert resp.status == 403
            assert "used already" in await resp.text()
            assert "Set-Cookie" not in resp.headers


@pytest.mark.parametrize("secret", ["", "garbage", "a.b.c", "abc.99999999999.def"])
async def test_bad_link_refused(console, secret):
    async with console.http.get(console.url + "/login", params={"k": secret},
                                allow_redirects=False) as resp:
        assert resp.status == 403
        assert "Set-Cookie" not in resp.headers
    async with console.http.get(console.url + "/") as resp:
        assert resp.status == 401


async def test_link_of_another_token_refused(console):
    forged = login_link_secret("x" * 43)
    async with console.http.get(console.url + "/login", params={"k": forged},
                                allow_redirects=False) as resp:
        assert resp.status == 403


def test_expired_link_refused():
    now = [1000.0]
    auth = ConsoleAuth("t" * 43, clock=lambda: now[0])
    secret = auth.make_link_secret()
    now[0] += auth.link_ttl_s + 1
    assert auth.redeem(secret) == "this login link has expired"


def test_failed_logins_lock_out_then_recover():
    now = [1000.0]
    auth = ConsoleAuth("t" * 43, clock=lambda: now[0])
    for _ in range(FAILED_LOGINS):
        assert not auth.locked_out("1.2.3.4")
        auth.failed("1.2.3.4")
    assert auth.locked_out("1.2.3.4")
    assert not auth.locked_out("5.6.7.8")
    now[0] += 301
    assert not auth.locked_out("1.2.3.4")


async def test_failed_logins_rate_limited_even_a_good_link(console):
    for _ in range(FAILED_LOGINS):
        async with console.http.get(console.url + "/login", params={"k": "bad.1.x"}) as resp:
            assert resp.status == 403
    async with console.http.get(console.server.login_url(), allow_redirects=False) as resp:
        assert resp.status == 429
        assert "Set-Cookie" not in resp.headers


async def test_post_without_csrf_forbidden(console):
    await console.login()
    resp = await console.post("/pairing/approve", {"channel": "telegram", "code": "X"},
                              csrf="")
    assert resp.status == 403
    resp = await console.post("/pairing/approve", {"channel": "telegram", "code": "X"},
                              csrf="not-the-token")
    assert resp.status == 403


@pytest.mark.parametrize("origin", ["http://evil.example", None, "null",
                                    "http://127.0.0.1:1"])
async def test_post_from_foreign_or_missing_origin_forbidden(console, origin):
    await console.login()
    before = console.config_path.read_text()
    resp = await console.post("/chat/save", {"target": "default", "primary": "local/big",
                                             "sha": "0" * 64}, origin=origin)
    assert resp.status == 403
    assert console.config_path.read_text() == before


async def test_post_without_session_forbidden(console):
    csrf = "whatever"
    resp = await console.post("/pairing/approve", {"channel": "telegram", "code": "X"},
                              csrf=csrf)
    assert resp.status == 403


@pytest.mark.parametrize("host", ["evil.example", "attacker.test:{port}", "127.0.0.1:1",
                                  "localhost.evil.example:{port}", "10.0.0.5:{port}"])
async def test_wrong_host_refused(console, host):
    await console.login()
    host = host.format(port=console.server.port)
    async with console.http.get(console.url + "/", headers={"Host": host}) as resp:
        assert resp.status == 421
        body = await resp.text()
    assert "Overview" not in body


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]"])
async def test_loopback_hosts_served(console, host):
    await console.login()
    async with console.http.get(console.url + "/login",
                                headers={"Host": f"{host}:{console.server.port}"},
                                allow_redirects=False) as resp:
        assert resp.status in (200, 303)


async def test_strict_csp_and_headers_on_every_page(console):
    await console.login()
    for path in [*PAGES, "/login", "/static/console.css"]:
        async with console.http.get(console.url + path) as resp:
            assert resp.headers["Content-Security-Policy"] == CSP, path
            assert resp.headers["X-Frame-Options"] == "DENY"
            assert resp.headers["Referrer-Policy"] == "same-origin"
            body = await resp.text()
        if path.startswith("/static"):
            continue
        assert "<script>" not in body and " style=" not in body and "<style" not in body, path
        assert "onclick" not in body and "javascript:" not in body
        assert 'src="http' not in body and 'href="http' not in body, path
    assert "'unsafe-inline'" not in CSP and "script-src 'self'" in CSP


async def test_no_secret_in_any_response_body(console):
    token = token_path(console.app.config.data_dir).read_text().strip()
    await console.login()
    # some activity so the pages have rows: a chat, a turn, a pairing request
    from tests.core.helpers import dm, group

    await console.app.core.accept(group(f"hello {API_KEY}", chat="-1001"))
    await console.app.core.accept(dm("hi", sender="555"))
    await console.app.core.wait_idle()
    bodies = []
    for path in [*PAGES, "/chat?c=telegram:-1001", "/events"]:
        if path == "/events":
            async with console.http.get(console.url + path) as resp:
                bodies.append((await resp.content.readuntil(b"\n\n")).decode())
            continue
        async with console.http.get(console.url + path) as resp:
            assert resp.status == 200, path
            bodies.append(await resp.text())
    resp = await console.post("/chat/preview", {"target": "default", "primary": "local/big"})
    bodies.append(await resp.text())
    resp = await console.post("/models/probe", {})
    bodies.append(await resp.text())
    for body in bodies:
        for secret in (API_KEY, BOT_TOKEN, WEBHOOK_SECRET, token):
            assert secret not in body
    import html

    config_body = html.unescape(bodies[PAGES.index("/config")])
    assert '"apiKey": "***"' in config_body and '"botToken": "***"' in config_body
    assert '"webhookSecret": "***"' in config_body


async def test_no_secret_in_log_lines(console, caplog):
    import logging

    caplog.set_level(logging.DEBUG)
    token = token_path(console.app.config.data_dir).read_text().strip()
    link = console.server.login_url()
    async with console.http.get(link) as resp:
        assert resp.status == 200
    async with console.http.get(link) as resp:  # reused: logged as refused
        assert resp.status == 403
    async with console.http.get(console.url + "/config") as resp:
        assert resp.status == 200
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "console: logged in" in text and "used already" in text
    secret_part = link.split("k=", 1)[1]
    for secret in (token, secret_part, secret_part.split(".")[0], API_KEY, BOT_TOKEN):
        assert secret not in text


def test_remote_bind_without_allow_remote_is_a_config_error(tmp_path):
    path = tmp_path / "c.json5"
    path.write_text('{console: {host: "0.0.0.0"}}')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "console.host" in err.value.render()
    assert "allowRemote" in err.value.render()
    path.write_text('{console: {host: "0.0.0.0", allowRemote: true}}')
    assert load_config(path).console.allowRemote
    for ok in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        path.write_text('{console: {host: "' + ok + '"}}')
        assert load_config(path).console.host == ok


def test_console_defaults(tmp_path):
    path = tmp_path / "c.json5"
    path.write_text("{}")
    c = load_config(path).console
    assert (c.enabled, c.host, c.port, c.allowRemote) == (True, "127.0.0.1", 8788, False)
