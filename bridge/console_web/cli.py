"""``palaver console``: print a one-time login link to the web console (and open it)."""

from __future__ import annotations

import os
import socket
import sys
import webbrowser
from typing import Any

from bridge.console_web.auth import LINK_TTL_S, login_link_secret, read_or_create_token


def has_display() -> bool:
    """Whether a browser could show a window here (not over plain SSH, not in a container)."""
    if sys.platform in ("darwin", "win32"):
        return not os.environ.get("SSH_CONNECTION")
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def console_base_url(host: str, port: int) -> str:
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}"


def _answers(host: str, port: int) -> bool:
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def cmd_console(args: Any) -> int:
    """Print a login link (valid once, for five minutes); open it when there is a display."""
    from bridge.cli import EXIT_OK, EXIT_UNUSABLE
    from bridge.config.load import load_for_cli

    config, _path = load_for_cli(args)
    settings = config.console
    if not settings.enabled:
        print("palaver: the console is off (console.enabled: false)", file=sys.stderr)
        return EXIT_UNUSABLE
    token = read_or_create_token(config.data_dir)
    url = f"{console_base_url(settings.host, settings.port)}/login?k={login_link_secret(token)}"
    print(f"Open this link to log in to the console (it works once, within "
          f"{int(LINK_TTL_S // 60)} minutes):\n\n  {url}\n")
    if not _answers(settings.host, settings.port):
        print(f"Nothing answers on {settings.host}:{settings.port} yet: start `palaver run` "
              "(it serves the console).", file=sys.stderr)
    print(f"From another machine: ssh -L {settings.port}:127.0.0.1:{settings.port} "
          f"<this host>, then open the link there.")
    if not getattr(args, "no_browser", False) and has_display():
        try:
            webbrowser.open(url, new=2)
        except Exception:
            pass
    return EXIT_OK
