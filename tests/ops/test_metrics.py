"""Metrics: a private registry, the documented names, attempts and fallbacks from Attempt."""

from __future__ import annotations

import math

import prometheus_client
from prometheus_client.parser import text_string_to_metric_families

from bridge.metrics import Metrics
from bridge.models.base import AllModelsFailed, Attempt, ErrorClass, ModelReply, Usage

EXPECTED = {
    "palaver_messages_received_total": "counter",
    "palaver_messages_refused_total": "counter",
    "palaver_messages_answered_total": "counter",
    "palaver_turns_total": "counter",
    "palaver_model_attempts_total": "counter",
    "palaver_fallbacks_total": "counter",
    "palaver_turn_duration_seconds": "histogram",
    "palaver_model_latency_seconds": "histogram",
    "palaver_pending_messages": "gauge",
    "palaver_tokens_total": "counter",
    "palaver_cost_usd_total": "counter",
    "palaver_limit_refusals_total": "counter",
}


def samples(metrics: Metrics) -> dict[tuple[str, frozenset], float]:
    """Every sample of the exposition, keyed by (name, labels)."""
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(metrics: Metrics, name: str, **labels: str) -> float:
    return samples(metrics).get((name, frozenset(labels.items())), 0.0)


def test_exposition_names_and_types():
    m = Metrics()
    m.message_received("telegram")
    m.message_refused("telegram", "not_allowed")
    m.message_answered("telegram")
    m.turn_finished("answered", 0.5, attempts=[Attempt("a/b", None, 0.4)])
    m.record_attempts([Attempt("a/b", ErrorClass.TIMEOUT, 1), Attempt("c/d", None, 1)])
    families = {}
    for family in text_string_to_metric_families(m.render().decode()):
        name = family.name + ("_total" if family.type == "counter" else "")
        families[name] = family.type
    assert families == EXPECTED


def test_registry_is_private_per_instance():
    a, b = Metrics(), Metrics()
    a.message_received("telegram")
    a.message_received("telegram")
    b.message_received("whatsapp")
    assert value(a, "palaver_messages_received_total", channel="telegram") == 2
    assert value(b, "palaver_messages_received_total", channel="telegram") == 0
    assert value(b, "palaver_messages_received_total", channel="whatsapp") == 1
    assert b"palaver_" not in prometheus_client.generate_latest(prometheus_client.REGISTRY)


def test_message_counters_by_channel_and_reason():
    m = Metrics()
    m.message_received("whatsapp")
    m.message_refused("whatsapp", "not_allowed")
    m.message_refused("whatsapp", "not_allowed")
    m.message_refused("telegram", "no_mention")
    m.message_answered("whatsapp")
    assert value(m, "palaver_messages_refused_total", channel="whatsapp",
                 reason="not_allowed") == 2
    assert value(m, "palaver_messages_refused_total", channel="telegram",
                 reason="no_mention") == 1
    assert value(m, "palaver_messages_answered_total", channel="whatsapp") == 1
    assert value(m, "palaver_messages_answered_total", channel="telegram") == 0


def test_answered_turn_after_fallback_records_attempts_latency_and_fallback():
    m = Metrics()
    reply = ModelReply(
        text="hi", model_ref="anthropic/claude-sonnet-4-5", usage=Usage(),
        finish_reason="stop",
        attempts=(
            Attempt("localai/llama", ErrorClass.UNREACHABLE, 0.002, "connection refused"),
            Attempt("anthropic/claude-sonnet-4-5", None, 1.5),
        ),
    )
    m.turn_finished("answered", 1.6, reply)
    s = samples(m)
    get = lambda name, **lb: s.get((name, frozenset(lb.items())), 0.0)  # noqa: E731
    assert get("palaver_turns_total", outcome="answered") == 1
    assert get("palaver_model_attempts_total", model="localai/llama",
               error_class="unreachable") == 1
    assert get("palaver_model_attempts_total", model="anthropic/claude-sonnet-4-5",
               error_class="ok") == 1
    assert get("palaver_fallbacks_total", from_model="localai/llama",
               to_model="anthropic/claude-sonnet-4-5") == 1
    assert get("palaver_turn_duration_seconds_count") == 1
    assert math.isclose(get("palaver_turn_duration_seconds_sum"), 1.6)
    assert get("palaver_turn_duration_seconds_bucket", le="1.0") == 0
    assert get("palaver_turn_duration_seconds_bucket", le="2.0") == 1
    assert math.isclose(get("palaver_model_latency_seconds_sum",
                            model="anthropic/claude-sonnet-4-5"), 1.5)
    assert get("palaver_model_latency_seconds_count", model="localai/llama") == 1


def test_failed_turn_counts_skipped_without_latency_and_no_self_fallback():
    m = Metrics()
    failed = AllModelsFailed((
        Attempt("localai/llama", ErrorClass.OVERLOADED, 0.0, skipped=True),
        Attempt("anthropic/x", ErrorClass.RATE_LIMITED, 0.3),
        Attempt("anthropic/x", ErrorClass.RATE_LIMITED, 0.4),  # a retry, not a fallback
    ))
    m.turn_finished("failed", 0.8, attempts=failed.attempts)
    assert value(m, "palaver_turns_total", outcome="failed") == 1
    assert value(m, "palaver_model_attempts_total", model="localai/llama",
                 error_class="skipped") == 1
    assert value(m, "palaver_model_latency_seconds_count", model="localai/llama") == 0
    assert value(m, "palaver_model_attempts_total", model="anthropic/x",
                 error_class="rate_limited") == 2
    assert value(m, "palaver_fallbacks_total", from_model="localai/llama",
                 to_model="anthropic/x") == 1
    assert value(m, "palaver_fallbacks_total", from_model="anthropic/x",
                 to_model="anthropic/x") == 0


def test_command_turn_without_model_and_bad_duration_ignored():
    m = Metrics()
    m.turn_finished("command", 0.01)
    m.turn_finished("error", float("nan"))
    assert value(m, "palaver_turns_total", outcome="command") == 1
    assert value(m, "palaver_turns_total", outcome="error") == 1
    assert value(m, "palaver_turn_duration_seconds_count") == 1
    assert not any(name == "palaver_model_attempts_total" for name, _ in samples(m))


def test_pending_gauge_from_source_set_value_and_failing_source():
    m = Metrics()
    assert value(m, "palaver_pending_messages") == 0
    m.set_pending(3)
    assert value(m, "palaver_pending_messages") == 3
    queue = [1, 2, 3, 4, 5]
    m.set_pending_source(lambda: len(queue))
    assert value(m, "palaver_pending_messages") == 5
    queue.clear()
    assert value(m, "palaver_pending_messages") == 0

    def broken() -> int:
        raise RuntimeError("store closed")

    m.set_pending_source(broken)
    assert math.isnan(value(m, "palaver_pending_messages"))  # and render still works
    m.set_pending_source(None)
    assert value(m, "palaver_pending_messages") == 3


def test_content_type_is_prometheus_text():
    assert Metrics().content_type == prometheus_client.CONTENT_TYPE_LATEST
    assert Metrics().content_type.startswith("text/plain; version=")
