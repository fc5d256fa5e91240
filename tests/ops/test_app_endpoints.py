"""/healthz and /metrics as a real App serves them (``serve_health=True``), after real turns
through the real ModelRouter against FakeModelServer on 127.0.0.1.

The metric assertions are exact: each test names every series of the counters it looks at,
so a double count, a missing label or a series under the wrong label fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bridge.app import App
from bridge.config.load import load_config_text
from bridge.config.schema import Config
from bridge.envelope import AcceptStatus
from bridge.health import HEALTH_PATH, METRICS_PATH
from tests.core.helpers import dm
from tests.fakes.model_server import FakeModelServer
from tests.ops.app_helpers import OpsChannel, answered, free_port

PRIMARY = "fake/fake-model"
SPARE = "spare/spare-model"
DEAD = "dead/dead-model"


def make_config(tmp_path, server: FakeModelServer, *, port: int, primary: str = PRIMARY,
                fallbacks: tuple[str, ...] = (SPARE,), telegram: dict | None = None) -> Config:
    """A config as a file would give it: health on ``port``, providers on the fake server
    (``dead`` on a port nothing listens on)."""
    data = {
        "dataDir": str(tmp_path / "data"),
        "health": {"enabled": True, "host": "127.0.0.1", "port": port},
        "models": {"mode": "replace", "providers": {
            "fake": {"baseUrl": server.base_url, "api": "openai-completions",
                     "models": [{"id": "fake-model"}]},
            "spare": {"baseUrl": server.base_url, "api": "openai-responses",
                      "models": [{"id": "spare-model"}]},
            "dead": {"baseUrl": f"http://127.0.0.1:{free_port()}/v1",
                     "api": "openai-completions", "models": [{"id": "dead-model"}],
                     "timeouts": {"connectSeconds": 2, "totalSeconds": 5}},
        }},
        "agents": {"defaults": {"model": {"primary": primary, "fallbacks": list(fallbacks)},
                                "timeouts": {"firstTokenSeconds": 3, "totalSeconds": 5}}},
        "channels": {"telegram": telegram or {"dmPolicy": "open", "allowFrom": ["*"]},
                     "whatsapp": {"dmPolicy": "open", "allowFrom": ["*"]}},
    }
    return load_config_text(json.dumps(data))


@pytest.fixture
async def server() -> AsyncIterator[FakeModelServer]:
    async with FakeModelServer() as s:
        yield s


@contextlib.asynccontextmanager
async def running_app(config: Config, *channels: OpsChannel) -> AsyncIterator[App]:
    app = App(config, channels=list(channels), serve_health=True)
    await app.start()
    try:
        yield app
    finally:
        await app.stop(grace=0)


async def get(config: Config, path: str) -> tuple[int, str, str]:
    """(status, content type, body) of GET ``path`` on the App's health address."""
    url = f"http://{config.health.host}:{config.health.port}{path}"
    async with aiohttp.ClientSession() as session, session.get(
            url, timeout=aiohttp.ClientTimeout(total=5)) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), await resp.text()


async def scrape(config: Config) -> dict[str, dict[frozenset, float]]:
    """/metrics parsed: sample name -> {frozenset(labels): value}."""
    status, ctype, body = await get(config, METRICS_PATH)
    assert status == 200
    # Prometheus' text exposition (prometheus_client's CONTENT_TYPE_LATEST).
    assert ctype.startswith("text/plain; version=")
    out: dict[str, dict[frozenset, float]] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            out.setdefault(sample.name, {})[frozenset(sample.labels.items())] = sample.value
    return out


def series(metrics: dict[str, dict[frozenset, float]], name: str) -> dict[tuple, float]:
    """Every series of ``name`` as {sorted label pairs: value} (empty when none yet)."""
    return {tuple(sorted(labels)): value for labels, value in metrics.get(name, {}).items()}


def labels(**kv: str) -> tuple:
    return tuple(sorted(kv.items()))


# --------------------------------------------------------------------------- happy path


async def test_answered_message_shows_in_healthz_and_exact_metrics(tmp_path, server):
    config = make_config(tmp_path, server, port=free_port())
    channel = OpsChannel()
    async with running_app(config, channel) as app:
        server.reply("Hello from the model")
        assert await app.core.accept(dm("hi there")) is AcceptStatus.ACCEPTED
        await answered(app, channel, 1)
        assert [o.text for o in channel.sent] == ["Hello from the model"]

        status, ctype, body = await get(config, HEALTH_PATH)
        assert status == 200 and ctype.startswith("application/json")
        report = json.loads(body)
        assert report["status"] == "ok" and "problems" not in report
        assert report["store"]["ok"] is True
        assert report["channels"] == {"telegram": {"connected": True, "detail": ""}}

        m = await scrape(config)
        assert series(m, "palaver_messages_received_total") == {labels(channel="telegram"): 1}
        assert series(m, "palaver_messages_answered_total") == {labels(channel="telegram"): 1}
        assert series(m, "palaver_messages_refused_total") == {}
        assert series(m, "palaver_turns_total") == {labels(outcome="answered"): 1}
        assert series(m, "palaver_model_attempts_total") == {
            labels(model=PRIMARY, error_class="ok"): 1}
        assert series(m, "palaver_fallbacks_total") == {}
        assert series(m, "palaver_turn_duration_seconds_count") == {(): 1}
        assert series(m, "palaver_model_latency_seconds_count") == {labels(model=PRIMARY): 1}
        assert series(m, "palaver_pending_messages") == {(): 0}

        # A second message: the counters move by exactly one each.
        await app.core.accept(dm("again"))
        await answered(app, channel, 2)
        m = await scrape(config)
        assert series(m, "palaver_messages_received_total") == {labels(channel="telegram"): 2}
        assert series(m, "palaver_messages_answered_total") == {labels(channel="telegram"): 2}
        assert series(m, "palaver_model_attempts_total") == {
            labels(model=PRIMARY, error_class="ok"): 2}
    assert len([r for r in server.requests if r.method == "POST"]) == 2


async def test_pending_gauge_counts_a_message_waiting_on_a_hanging_model(tmp_path, server):
    config = make_config(tmp_path, server, port=free_port(), fallbacks=())
    channel = OpsChannel()
    async with running_app(config, channel) as app:
        server.hang()
        await app.core.accept(dm("are you there?"))
        async with asyncio.timeout(5):
            await channel.typing_started.wait()  # the turn is running, waiting on the model
        m = await scrape(config)
        assert series(m, "palaver_pending_messages") == {(): 1}
        assert series(m, "palaver_messages_received_total") == {labels(channel="telegram"): 1}
        assert series(m, "palaver_messages_answered_total") == {}
        assert series(m, "palaver_turns_total") == {}


# --------------------------------------------------------------------------- fallback


async def test_unreachable_primary_counts_attempt_and_fallback(tmp_path, server):
    config = make_config(tmp_path, server, port=free_port(), primary=DEAD,
                         fallbacks=(PRIMARY,))
    channel = OpsChannel()
    async with running_app(config, channel) as app:
        server.reply("answer from the fallback")
        await app.core.accept(dm("hello?"))
        await answered(app, channel, 1)
        assert channel.sent[0].text == "answer from the fallback"
        m = await scrape(config)
        assert series(m, "palaver_model_attempts_total") == {
            labels(model=DEAD, error_class="unreachable"): 1,
            labels(model=PRIMARY, error_class="ok"): 1,
        }
        assert series(m, "palaver_fallbacks_total") == {
            labels(from_model=DEAD, to_model=PRIMARY): 1}
        assert series(m, "palaver_turns_total") == {labels(outcome="answered"): 1}
        assert series(m, "palaver_messages_answered_total") == {labels(channel="telegram"): 1}
        assert series(m, "palaver_model_latency_seconds_count") == {
            labels(model=DEAD): 1, labels(model=PRIMARY): 1}

        # Next turn: the dead primary is cooling down, skipped without a call.
        server.reply("second answer")
        await app.core.accept(dm("and now?"))
        await answered(app, channel, 2)
        m = await scrape(config)
        assert series(m, "palaver_model_attempts_total") == {
            labels(model=DEAD, error_class="unreachable"): 1,
            labels(model=DEAD, error_class="skipped"): 1,
            labels(model=PRIMARY, error_class="ok"): 2,
        }
        assert series(m, "palaver_fallbacks_total") == {
            labels(from_model=DEAD, to_model=PRIMARY): 2}
        # A skipped model was not called: no latency observed for it.
        assert series(m, "palaver_model_latency_seconds_count") == {
            labels(model=DEAD): 1, labels(model=PRIMARY): 2}


async def test_every_model_failing_counts_a_failed_turn(tmp_path, server):
    config = make_config(tmp_path, server, port=free_port())
    channel = OpsChannel()
    async with running_app(config, channel) as app:
        server.error(500, "primary broke").error(429, "spare is busy")
        await app.core.accept(dm("hello"))
        await answered(app, channel, 1)  # the chat is told it failed
        m = await scrape(config)
        assert series(m, "palaver_turns_total") == {labels(outcome="failed"): 1}
        assert series(m, "palaver_model_attempts_total") == {
            labels(model=PRIMARY, error_class="server_error"): 1,
            labels(model=SPARE, error_class="rate_limited"): 1,
        }
        assert series(m, "palaver_fallbacks_total") == {
            labels(from_model=PRIMARY, to_model=SPARE): 1}
        assert series(m, "palaver_pending_messages") == {(): 0}


# --------------------------------------------------------------------------- refused


async def test_refused_message_counts_its_reason_and_calls_no_model(tmp_path, server):
    config = make_config(tmp_path, server, port=free_port(),
                         telegram={"dmPolicy": "allowlist", "allowFrom": ["1"]})
    channel = OpsChannel()
    async with running_app(config, channel) as app:
        assert await app.core.accept(dm("let me in", sender="42")) is AcceptStatus.REFUSED
        await app.core.wait_idle()
        m = await scrape(config)
        assert series(m, "palaver_messages_received_total") == {labels(channel="telegram"): 1}
        assert series(m, "palaver_messages_refused_total") == {
            labels(channel="telegram", reason="not_allowed"): 1}
        assert series(m, "palaver_messages_answered_total") == {}
        assert series(m, "palaver_turns_total") == {}
        assert series(m, "palaver_model_attempts_total") == {}
        # An allowed sender in the same App is answered and counted apart.
        await app.core.accept(dm("I am allowed", sender="1"))
        await answered(app, channel, 1)
        m = await scrape(config)
        assert series(m, "palaver_messages_received_total") == {labels(channel="telegram"): 2}
        assert series(m, "palaver_messages_refused_total") == {
            labels(channel="telegram", reason="not_allowed"): 1}
        assert series(m, "palaver_messages_answered_total") == {labels(channel="telegram"): 1}
    assert [r.last_user_text() for r in server.requests] == ["I am allowed"]


async def test_duplicate_delivery_is_not_counted_twice(tmp_path, server):
    config = make_config(tmp_path, server, port=free_port())
    channel = OpsChannel()
    async with running_app(config, channel) as app:
        first = dm("once", msg_id="same-id")
        assert await app.core.accept(first) is AcceptStatus.ACCEPTED
        assert await app.core.accept(first) is AcceptStatus.DUPLICATE
        await answered(app, channel, 1)
        m = await scrape(config)
        assert series(m, "palaver_messages_received_total") == {labels(channel="telegram"): 1}
        assert series(m, "palaver_messages_answered_total") == {labels(channel="telegram"): 1}


# --------------------------------------------------------------------------- health


async def test_healthz_503_names_the_unconnected_channel(tmp_path, server):
    config = make_config(tmp_path, server, port=free_port())
    telegram = OpsChannel("telegram")
    whatsapp = OpsChannel("whatsapp", connected=False, detail="logged out: run whatsapp login")
    async with running_app(config, telegram, whatsapp):
        status, ctype, body = await get(config, HEALTH_PATH)
        assert status == 503 and ctype.startswith("application/json")
        report = json.loads(body)
        assert report["status"] == "unhealthy"
        assert report["problems"] == ["whatsapp: not connected (logged out: run whatsapp login)"]
        assert report["channels"]["telegram"] == {"connected": True, "detail": ""}
        assert report["channels"]["whatsapp"]["connected"] is False
        assert report["store"]["ok"] is True
        # It recovers as soon as the channel does.
        whatsapp.connected, whatsapp.detail = True, ""
        status, _, body = await get(config, HEALTH_PATH)
        assert status == 200 and json.loads(body)["status"] == "ok"


async def test_healthz_503_names_a_channel_that_failed_to_start(tmp_path, server):
    config = make_config(tmp_path, server, port=free_port())
    broken = OpsChannel("telegram", start_error=RuntimeError("401 Unauthorized: token rejected"))
    async with running_app(config, broken, OpsChannel("whatsapp")) as app:
        status, _, body = await get(config, HEALTH_PATH)
        report = json.loads(body)
        assert status == 503
        assert report["problems"] == [
            "telegram: not connected (failed to start: 401 Unauthorized: token rejected)"]
        # /metrics still answers while unhealthy.
        m = await scrape(config)
        assert series(m, "palaver_pending_messages") == {(): 0}
        assert [c.name for c in app.channels] == ["telegram", "whatsapp"]


async def test_health_port_is_released_by_stop(tmp_path, server):
    """stop() closes the health server with the rest: the port answers no more."""
    config = make_config(tmp_path, server, port=free_port())
    app = App(config, channels=[OpsChannel()], serve_health=True)
    await app.start()
    status, _, _ = await get(config, HEALTH_PATH)
    assert status == 200
    await app.stop(grace=0)
    with pytest.raises(aiohttp.ClientConnectionError):
        await get(config, HEALTH_PATH)


async def test_health_disabled_serves_nothing(tmp_path, server):
    config = make_config(tmp_path, server, port=free_port())
    config = config.model_copy(update={"health": config.health.model_copy(
        update={"enabled": False})})
    async with running_app(config, OpsChannel()) as app:
        assert (await app.health())["store"]["ok"] is True
        with pytest.raises(aiohttp.ClientConnectionError):
            await get(config, HEALTH_PATH)
