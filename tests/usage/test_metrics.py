"""Prometheus: tokens by model and kind, cost by provider and model, refusals by limit;
label values bounded to configured models and the fixed kinds."""

from __future__ import annotations

import json

import pytest

from bridge.app import App
from bridge.config.load import load_config_text
from bridge.metrics import Metrics
from bridge.models.base import Attempt, ErrorClass
from bridge.store.usage import UsageRow
from tests.core.helpers import RecordingChannel, dm
from tests.fakes.model_server import FakeModelServer


def _row(model: str = "hosted/m", **kw) -> UsageRow:
    values = dict(at=0.0, session_key="telegram:default:direct:1", channel="telegram",
                  account="default", chat_id="1", chat_kind="direct", thread_id=None,
                  sender_id="1", turn_id=1, purpose="reply", model_ref=model,
                  provider=model.partition("/")[0], input_tokens=100, output_tokens=20,
                  reasoning_tokens=5, cached_tokens=60, cache_write_tokens=0,
                  cost_usd=0.25, estimated=False)
    values.update(kw)
    return UsageRow(**values)


def _sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_tokens_and_cost_are_counted_by_model_kind_and_provider():
    metrics = Metrics()
    metrics.usage_recorded([_row(), _row(input_tokens=50, cost_usd=0.5)])
    assert _sample(metrics, "palaver_tokens_total", model="hosted/m", kind="input") == 150
    assert _sample(metrics, "palaver_tokens_total", model="hosted/m", kind="output") == 40
    assert _sample(metrics, "palaver_tokens_total", model="hosted/m", kind="reasoning") == 10
    assert _sample(metrics, "palaver_tokens_total", model="hosted/m", kind="cached") == 120
    assert _sample(metrics, "palaver_cost_usd_total", provider="hosted",
                   model="hosted/m") == pytest.approx(0.75)
    # A kind with nothing in it makes no series.
    assert _sample(metrics, "palaver_tokens_total", model="hosted/m",
                   kind="cache_write") is None


def test_unconfigured_models_and_their_providers_are_labelled_other():
    metrics = Metrics()
    metrics.set_model_source(lambda: {"hosted/m"})
    metrics.usage_recorded([_row("typo/whatever", cost_usd=0.1)])
    assert _sample(metrics, "palaver_tokens_total", model="other", kind="input") == 100
    assert _sample(metrics, "palaver_cost_usd_total", provider="other",
                   model="other") == pytest.approx(0.1)
    assert "typo" not in metrics.render().decode()


def test_limit_refusals_are_counted_by_limit_kind_only():
    metrics = Metrics()
    metrics.limit_refused("messagesPerHour")
    metrics.limit_refused("messagesPerHour")
    metrics.limit_refused("something-else")
    assert _sample(metrics, "palaver_limit_refusals_total", limit="messagesPerHour") == 2
    assert _sample(metrics, "palaver_limit_refusals_total", limit="other") == 1


def test_budget_skips_are_their_own_error_class_in_model_attempts():
    metrics = Metrics()
    metrics.record_attempts([
        Attempt("hosted/m", ErrorClass.BUDGET_EXHAUSTED, 0.0, "budget", skipped=True),
        Attempt("local/m", ErrorClass.TIMEOUT, 0.0, "cooling", skipped=True),
    ])
    assert _sample(metrics, "palaver_model_attempts_total", model="hosted/m",
                   error_class="budget_exhausted") == 1
    assert _sample(metrics, "palaver_model_attempts_total", model="local/m",
                   error_class="skipped") == 1


async def test_the_app_counts_every_recorded_call(tmp_path):
    async with FakeModelServer() as server:
        text = json.dumps({
            "dataDir": str(tmp_path / "data"), "health": {"enabled": False},
            "models": {"mode": "replace", "providers": {"hosted": {
                "baseUrl": server.base_url, "api": "openai-completions",
                "models": [{"id": "m", "cost": {"input": 2.0, "output": 10.0}}]}}},
            "agents": {"defaults": {"model": "hosted/m"}},
            "channels": {"telegram": {"dmPolicy": "open", "allowFrom": ["*"]}},
        })
        app = App(load_config_text(text), channels=[RecordingChannel()])
        await app.start()
        try:
            server.reply("hi", usage=(1000, 100))
            await app.core.accept(dm("hello"))
            await app.core.wait_idle()
            metrics = app.metrics
            assert metrics is not None
            assert _sample(metrics, "palaver_tokens_total", model="hosted/m",
                           kind="input") == 1000
            assert _sample(metrics, "palaver_cost_usd_total", provider="hosted",
                           model="hosted/m") == pytest.approx((1000 * 2 + 100 * 10) / 1e6)
        finally:
            await app.stop()
