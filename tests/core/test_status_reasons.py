"""/status names a failed attempt's error class and a short human reason, never the
provider's raw error body (internal URLs, org ids), through the real router against the
fake model server."""

from __future__ import annotations

import socket

from bridge.commands import failure_reason
from bridge.conversation import ConversationCore
from bridge.models.base import Attempt, ErrorClass
from bridge.models.router import ModelRouter
from bridge.store import Store
from tests.core.helpers import RecordingChannel, dm, make_config
from tests.fakes.model_server import FakeModelServer

INTERNAL_URL = "https://inference-gw.corp.internal:8443/v1/route/7f3a"
ORG_ID = "org-Zq81LmXw4Rt2"
LEAKY = (f"upstream {INTERNAL_URL} failed for organization {ORG_ID} "
         "(request req_9c1d2e3f4a5b6c7d)")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(tmp_path, server: FakeModelServer, *, fallbacks: list[str], **timeouts):
    providers = {
        "hosted": {"baseUrl": server.base_url, "api": "openai-completions", "apiKey": "k",
                   "models": [{"id": "a", "contextWindow": 32000, "maxTokens": 1000},
                              {"id": "b", "contextWindow": 32000, "maxTokens": 1000}]},
        "local": {"baseUrl": f"http://127.0.0.1:{_closed_port()}/v1",
                  "api": "openai-completions",
                  "models": [{"id": "qwen", "contextWindow": 32000, "maxTokens": 1000}]},
    }
    defaults = {"model": {"primary": "hosted/a", "fallbacks": fallbacks}}
    if timeouts:
        defaults["timeouts"] = timeouts
    return make_config(tmp_path, models={"mode": "replace", "providers": providers},
                       agents={"defaults": defaults})


async def _run(tmp_path, server, config, texts):
    store = await Store.open(tmp_path / "palaver.db")
    router = ModelRouter(lambda: config)
    channel = RecordingChannel()
    core = ConversationCore(store, lambda: config, router, channels=[channel])
    try:
        await channel.start(core)
        await core.start()
        for text in texts:
            await core.accept(dm(text))
            await core.wait_idle()
    finally:
        await core.stop(grace=1)
        await router.aclose()
        await store.close()
    return channel.texts()


def _no_leak(text: str) -> None:
    for secret in (INTERNAL_URL, "corp.internal", ORG_ID, "req_9c1d", "upstream"):
        assert secret not in text, text


async def test_status_after_a_failed_turn_names_classes_and_reasons_not_bodies(tmp_path):
    async with FakeModelServer() as server:
        for _ in range(4):  # however often the router tries the primary
            server.error(500, LEAKY)
        config = _config(tmp_path, server, fallbacks=["local/qwen"])
        sent = await _run(tmp_path, server, config, ["hello", "/status"])
    status = sent[-1]
    _no_leak(status)
    assert "Last turn failed" in status
    assert "hosted/a: server_error (the provider's server failed" in status
    assert "local/qwen: unreachable (the local server is not running" in status


async def test_status_after_a_fallback_names_the_class_and_reason(tmp_path):
    async with FakeModelServer() as server:
        server.error(429, LEAKY, code="rate_limit_exceeded")
        server.reply("fine")
        config = _config(tmp_path, server, fallbacks=["hosted/b"])
        sent = await _run(tmp_path, server, config, ["hello", "/status"])
    assert sent[0] == "fine"
    status = sent[-1]
    assert "Last answer: hosted/b" in status
    assert "fallback: hosted/a: rate_limited (rate limited by the provider" in status
    _no_leak(status)


async def test_status_names_a_first_token_timeout(tmp_path):
    async with FakeModelServer() as server:
        server.hang()
        server.reply("late but here")
        config = _config(tmp_path, server, fallbacks=["hosted/b"], firstTokenSeconds=0.3)
        sent = await _run(tmp_path, server, config, ["hello", "/status"])
    assert sent[0] == "late but here"
    assert "hosted/a: timeout (timed out waiting for the first token)" in sent[-1]


def test_every_error_class_has_a_short_reason_without_the_message(tmp_path):
    config = make_config(tmp_path)
    for cls in ErrorClass:
        attempt = Attempt("backup/m", cls, 0.1, message=LEAKY)
        reason = failure_reason(config, attempt)
        assert reason and len(reason) <= 90 and reason != cls.value
        _no_leak(reason)
    skipped = Attempt("backup/m", ErrorClass.RATE_LIMITED, 0.0, message=LEAKY, skipped=True)
    assert "cooling down" in failure_reason(config, skipped)
    assert "budget" in failure_reason(
        config, Attempt("backup/m", ErrorClass.BUDGET_EXHAUSTED, 0.0, skipped=True))
