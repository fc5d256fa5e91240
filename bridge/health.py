"""``/healthz`` and ``/metrics`` over HTTP (aiohttp, on the App's event loop).

The check is ``async def check() -> dict`` returning the shape App.health() builds::

    {"store": {"ok": bool, "detail": str},
     "channels": {"telegram": {"connected": bool, "detail": str}, ...}}

Healthy when the store is ok and every listed channel is connected (a channel entry with
``"enabled": False`` is ignored, and so is one with ``"standby": True``: in a cluster
another process holds that account's connection, and this one is as ready as it).  ``"budgets"`` (providers with a spending cap, and
whether it is reached) is shown as it is and never makes the check fail.  ``"cluster"``
(several processes on one PostgreSQL store: this process, its lease, its peers) is shown,
and in cluster mode a process that is not registered alive is not ready (its peers answer
its chats).  ``/healthz`` answers 200 ``{"status": "ok", ...}`` or
503 ``{"status": "unhealthy", "problems": [...], ...}``; ``/metrics`` answers the
Prometheus text exposition.  Binds 127.0.0.1 by default: neither endpoint is meant for the
internet.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from bridge.logs import redact
from bridge.metrics import Metrics

log = logging.getLogger(__name__)

__all__ = ["HealthServer", "evaluate_health", "HEALTH_PATH", "METRICS_PATH"]

HEALTH_PATH = "/healthz"
METRICS_PATH = "/metrics"

HealthCheck = Callable[[], Awaitable[Mapping[str, Any]]]


def evaluate_health(report: Mapping[str, Any]) -> list[str]:
    """The problems in a health report, one short sentence each; empty when healthy.

    A malformed report is itself a problem (never an exception).
    """
    problems: list[str] = []
    store = report.get("store") if isinstance(report, Mapping) else None
    if not isinstance(store, Mapping):
        problems.append("store: no status reported")
    elif not store.get("ok"):
        detail = str(store.get("detail") or "").strip()
        problems.append("store not writable" + (f" ({detail})" if detail else ""))
    cluster = report.get("cluster") if isinstance(report, Mapping) else None
    if (isinstance(cluster, Mapping) and cluster.get("mode") == "cluster"
            and not cluster.get("alive")):
        # Not sure of its lease (or reaped): its peers answer its chats meanwhile.
        problems.append("cluster: this process is not registered as alive")
    channels = report.get("channels", {}) if isinstance(report, Mapping) else {}
    if not isinstance(channels, Mapping):
        problems.append("channels: malformed status")
        channels = {}
    for name, status in channels.items():
        if not isinstance(status, Mapping):
            problems.append(f"{name}: malformed status")
            continue
        if status.get("enabled", True) is False or status.get("standby") is True:
            continue
        if not status.get("connected"):
            detail = str(status.get("detail") or "").strip()
            problems.append(f"{name}: not connected" + (f" ({detail})" if detail else ""))
    return [redact(p) for p in problems]


class HealthServer:
    """Serves /healthz and /metrics; ``start()`` binds, ``stop()`` closes and awaits."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        check: HealthCheck,
        metrics: Metrics,
        check_timeout_s: float = 5.0,
    ) -> None:
        self.host = host
        self._requested_port = port
        self._check = check
        self._metrics = metrics
        self._check_timeout_s = check_timeout_s
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    @property
    def port(self) -> int:
        """The bound port (the real one when constructed with port 0); only after start()."""
        if self._port is None:
            raise RuntimeError("HealthServer is not started")
        return self._port

    @property
    def url(self) -> str:
        """``http://host:port`` of the running server."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        """Bind and serve; raises OSError (address in use, ...) with the address in it."""
        if self._runner is not None:
            return
        app = web.Application()
        app.router.add_get(HEALTH_PATH, self._healthz)
        app.router.add_get(METRICS_PATH, self._metrics_handler)
        # No access log: a scraper polling every few seconds would drown the real logs.
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self._requested_port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise OSError(
                exc.errno, f"health server cannot listen on {self.host}:{self._requested_port}: "
                f"{exc.strerror or exc}"
            ) from exc
        self._runner = runner
        addresses = runner.addresses  # sockname of each bound socket
        self._port = int(addresses[0][1]) if addresses else self._requested_port
        log.info("health and metrics on %s%s and %s", self.url, HEALTH_PATH, METRICS_PATH)

    async def stop(self) -> None:
        """Stop serving and release the port (idempotent)."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        self._port = None

    async def __aenter__(self) -> HealthServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- handlers -----------------------------------------------------------------

    async def _run_check(self) -> tuple[dict[str, Any], list[str]]:
        try:
            async with asyncio.timeout(self._check_timeout_s):
                report = await self._check()
        except TimeoutError:
            return {}, [f"health check timed out after {self._check_timeout_s:g}s"]
        except Exception as exc:  # the endpoint must answer even when the check breaks
            log.warning("health check failed: %s", exc, exc_info=True)
            return {}, [redact(f"health check failed: {type(exc).__name__}: {exc}")]
        if not isinstance(report, Mapping):
            return {}, ["health check returned no report"]
        return dict(report), evaluate_health(report)

    async def _healthz(self, request: web.Request) -> web.Response:
        report, problems = await self._run_check()
        body: dict[str, Any] = {"status": "unhealthy" if problems else "ok"}
        if problems:
            body["problems"] = problems
        # Budgets are shown, never a problem: a provider past its cap is skipped by design.
        for key in ("store", "channels", "budgets", "cluster"):
            if key in report:
                body[key] = _redacted(report[key])
        return web.json_response(
            body, status=503 if problems else 200, headers={"Cache-Control": "no-store"},
        )

    async def _metrics_handler(self, request: web.Request) -> web.Response:
        payload = self._metrics.render()
        # CONTENT_TYPE_LATEST carries parameters (version, charset): set the header whole.
        return web.Response(
            body=payload,
            headers={"Content-Type": self._metrics.content_type, "Cache-Control": "no-store"},
        )


def _redacted(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {str(k): _redacted(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redacted(v) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    return redact(str(value))
