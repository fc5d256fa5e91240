"""How a running Palaver serves the console (called by the composition root)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from bridge.console_web.backend import AppBackend

if TYPE_CHECKING:
    from bridge.app import App
    from bridge.config.watch import LiveConfig
    from bridge.console_web.server import ConsoleServer

log = logging.getLogger(__name__)


async def start_console(app: App, live: LiveConfig | None) -> ConsoleServer | None:
    """Serve the console for a started ``app`` when ``console.enabled``; None when off or
    when it cannot bind (logged: Palaver runs on without it)."""
    from bridge.console_web.server import ConsoleServer

    config = app.config
    if not config.console.enabled:
        return None
    backend = AppBackend(app, live)
    backend.attach()
    server = ConsoleServer(backend, config.console, config.data_dir)
    try:
        await server.start()
    except OSError as exc:
        log.error("console not served: %s", exc)
        return None
    return server
