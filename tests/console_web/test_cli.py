"""``palaver console``: a one-time login link the running console accepts."""

from __future__ import annotations

import re
import socket
import stat

import aiohttp

from bridge.cli import main
from bridge.config.schema import WebConsoleConfig
from bridge.console_web.auth import token_path
from bridge.console_web.server import ConsoleServer


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(tmp_path, port: int):
    path = tmp_path / "palaver.json5"
    path.write_text(f'{{dataDir: "{tmp_path / "data"}", console: {{port: {port}}}}}')
    return path


class _NoBackend:
    """The login page needs no App."""


async def test_printed_link_logs_in_once(tmp_path, capsys, monkeypatch):
    opened: list[str] = []
    monkeypatch.setattr("webbrowser.open", lambda url, new=0: opened.append(url))
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    port = _free_port()
    path = _config(tmp_path, port)
    server = ConsoleServer(_NoBackend(), WebConsoleConfig(port=port),  # type: ignore[arg-type]
                           tmp_path / "data")
    await server.start()
    try:
        assert main(["console", "-c", str(path)]) == 0
        out = capsys.readouterr().out
        (link,) = re.findall(r"http://127\.0\.0\.1:\d+/login\?k=\S+", out)
        assert f":{port}/" in link
        assert "ssh -L" in out
        assert opened == []  # no display: only printed
        token = token_path(tmp_path / "data").read_text().strip()
        assert token not in out
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            async with http.get(link, allow_redirects=False) as resp:
                assert resp.status == 303
            async with http.get(link, allow_redirects=False) as resp:
                assert resp.status == 403
    finally:
        await server.stop()


def test_token_created_by_the_command_when_missing(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("webbrowser.open", lambda url, new=0: None)
    path = _config(tmp_path, _free_port())
    assert main(["console", "-c", str(path), "--no-browser"]) == 0
    tp = token_path(tmp_path / "data")
    assert stat.S_IMODE(tp.stat().st_mode) == 0o600
    err = capsys.readouterr().err
    assert "start `palaver run`" in err  # nothing answers on the port


def test_browser_opened_when_there_is_a_display(tmp_path, capsys, monkeypatch):
    opened: list[str] = []
    monkeypatch.setattr("webbrowser.open", lambda url, new=0: opened.append(url))
    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.delenv("SSH_CONNECTION", raising=False)
    path = _config(tmp_path, _free_port())
    assert main(["console", "-c", str(path)]) == 0
    assert len(opened) == 1 and "/login?k=" in opened[0]
    assert opened[0] in capsys.readouterr().out
    opened.clear()
    assert main(["console", "-c", str(path), "--no-browser"]) == 0
    assert opened == []


def test_disabled_console(tmp_path, capsys):
    path = tmp_path / "palaver.json5"
    path.write_text(f'{{dataDir: "{tmp_path / "data"}", console: {{enabled: false}}}}')
    assert main(["console", "-c", str(path)]) == 2
    assert "console.enabled: false" in capsys.readouterr().err
