"""HealthServer: /healthz 200/503 bodies, /metrics exposition, lifecycle."""

from __future__ import annotations

import asyncio
import json
import socket

import aiohttp
import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from bridge.config.schema import HealthConfig
from bridge.health import HealthServer, evaluate_health
from bridge.metrics import Metrics

BOT_TOKEN = "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsawQ"


def healthy_report() -> dict:
    return {
        "store": {"ok": True, "detail": "/data/palaver.db writable"},
        "channels": {"telegram": {"connected": True, "detail": "@palaver_bot"},
                     "whatsapp": {"connected": True, "detail": ""}},
    }


class Checker:
    """A check whose report (or failure) the test changes between requests."""

    def __init__(self, report: dict | None = None) -> None:
        self.report = report if report is not None else healthy_report()
        self.error: Exception | None = None
        self.delay = 0.0
        self.calls = 0

    async def __call__(self) -> dict:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.error is not None:
            raise self.error
        return self.report


@pytest.fixture
async def served():
    checker, metrics = Checker(), Metrics()
    server = HealthServer("127.0.0.1", 0, check=checker, metrics=metrics, check_timeout_s=0.3)
    await server.start()
    async with aiohttp.ClientSession() as http:
        yield server, checker, metrics, http
    await server.stop()


async def get(http: aiohttp.ClientSession, server: HealthServer, path: str):
    async with http.get(server.url + path) as resp:
        body = await resp.read()
        return resp.status, resp.headers, body


async def test_healthz_ok(served):
    server, checker, _, http = served
    assert server.port > 0
    status, headers, body = await get(http, server, "/healthz")
    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    data = json.loads(body)
    assert data["status"] == "ok"
    assert "problems" not in data
    assert data["channels"]["telegram"]["detail"] == "@palaver_bot"
    assert checker.calls == 1


async def test_healthz_503_names_every_problem(served):
    server, checker, _, http = served
    checker.report = {
        "store": {"ok": False, "detail": "attempt to write a readonly database"},
        "channels": {
            "telegram": {"connected": False, "detail": "401 token rejected"},
            "whatsapp": {"connected": True, "detail": ""},
            "console": {"connected": False, "detail": "", "enabled": False},
        },
    }
    status, _, body = await get(http, server, "/healthz")
    data = json.loads(body)
    assert status == 503
    assert data["status"] == "unhealthy"
    assert data["problems"] == [
        "store not writable (attempt to write a readonly database)",
        "telegram: not connected (401 token rejected)",
    ]
    assert data["store"]["ok"] is False

    checker.report = healthy_report()  # recovers without a restart
    status, _, _ = await get(http, server, "/healthz")
    assert status == 200


async def test_healthz_when_the_check_raises_or_hangs(served):
    server, checker, _, http = served
    checker.error = RuntimeError(f"store closed while GET /bot{BOT_TOKEN}/getMe")
    status, _, body = await get(http, server, "/healthz")
    assert status == 503
    text = body.decode()
    assert "health check failed: RuntimeError" in text
    assert BOT_TOKEN not in text

    checker.error = None
    checker.delay = 5  # longer than check_timeout_s=0.3
    status, _, body = await get(http, server, "/healthz")
    assert status == 503
    assert "timed out" in body.decode()


async def test_health_body_never_carries_a_secret(served):
    server, checker, _, http = served
    checker.report["channels"]["telegram"] = {
        "connected": False, "detail": f"https://api.telegram.org/bot{BOT_TOKEN}/getMe: 401"}
    status, _, body = await get(http, server, "/healthz")
    assert status == 503
    assert BOT_TOKEN not in body.decode()
    assert "[REDACTED]" in body.decode()


async def test_metrics_endpoint_content_type_and_counters_move(served):
    server, _, metrics, http = served

    def received(payload: bytes) -> float:
        for family in text_string_to_metric_families(payload.decode()):
            for s in family.samples:
                if s.name == "palaver_messages_received_total" and \
                        s.labels == {"channel": "telegram"}:
                    return s.value
        return 0.0

    status, headers, body = await get(http, server, "/metrics")
    assert status == 200
    assert headers["Content-Type"] == CONTENT_TYPE_LATEST
    assert received(body) == 0
    metrics.message_received("telegram")
    metrics.message_received("telegram")
    metrics.set_pending(4)
    _, _, body = await get(http, server, "/metrics")
    assert received(body) == 2
    assert b"palaver_pending_messages 4.0" in body


async def test_unknown_path_404(served):
    server, _, _, http = served
    status, _, _ = await get(http, server, "/")
    assert status == 404


async def test_stop_releases_the_port_and_is_idempotent():
    server = HealthServer("127.0.0.1", 0, check=Checker(), metrics=Metrics())
    await server.start()
    port = server.port
    await server.stop()
    await server.stop()
    with pytest.raises(RuntimeError, match="not started"):
        _ = server.port
    with socket.socket() as s:  # the port is free again
        s.bind(("127.0.0.1", port))


async def test_busy_port_is_a_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        server = HealthServer("127.0.0.1", port, check=Checker(), metrics=Metrics())
        with pytest.raises(OSError, match=f"health server cannot listen on 127.0.0.1:{port}"):
            await server.start()


async def test_default_config_binds_loopback_only():
    cfg = HealthConfig()
    assert cfg.host == "127.0.0.1"
    server = HealthServer(cfg.host, 0, check=Checker(), metrics=Metrics())
    async with server:
        assert server.url.startswith("http://127.0.0.1:")


def test_evaluate_health_on_malformed_reports():
    assert evaluate_health(healthy_report()) == []
    assert evaluate_health({}) == ["store: no status reported"]
    assert evaluate_health({"store": {"ok": True}, "channels": {"x": "up"}}) == [
        "x: malformed status"]
    assert evaluate_health({"store": {"ok": False}, "channels": {}}) == ["store not writable"]


def test_a_standby_channel_does_not_make_the_process_unready():
    # A WhatsApp standby of a cluster: another process holds the account's connection.
    report = healthy_report()
    report["channels"]["whatsapp"] = {"connected": False, "standby": True,
                                      "detail": "standby (leader: host:1:a)"}
    assert evaluate_health(report) == []
    # Not connected and not a standby (this process should be connected): a problem.
    report["channels"]["whatsapp"] = {"connected": False, "detail": "disconnected"}
    assert evaluate_health(report) == ["whatsapp: not connected (disconnected)"]
