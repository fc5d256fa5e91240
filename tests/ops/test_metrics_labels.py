"""Metrics labels name only configured models; any other ref is ``other``."""

from __future__ import annotations

from bridge.config.resolve import configured_model_refs
from bridge.config.schema import Config
from bridge.metrics import Metrics
from bridge.models.base import Attempt, ErrorClass


def _series(m: Metrics, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    out = {}
    for family in m.registry.collect():
        for s in family.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_unconfigured_model_is_labelled_other():
    m = Metrics()
    m.set_model_source(lambda: {"localai/llama"})
    m.turn_finished("failed", 1.0, attempts=[
        Attempt("localai/llama", ErrorClass.TIMEOUT, 0.5),
        Attempt("openrouter/attacker-chosen-name-1", ErrorClass.NOT_FOUND, 0.1),
        Attempt("openrouter/attacker-chosen-name-2", ErrorClass.NOT_FOUND, 0.1),
    ])
    attempts = _series(m, "palaver_model_attempts_total")
    models = {dict(k)["model"] for k in attempts}
    assert models == {"localai/llama", "other"}
    assert attempts[(("error_class", "not_found"), ("model", "other"))] == 2
    fallbacks = _series(m, "palaver_fallbacks_total")
    assert {dict(k)["to_model"] for k in fallbacks} == {"other"}
    text = m.render().decode()
    assert "attacker-chosen" not in text


def test_configured_model_refs_from_config():
    config = Config.model_validate({
        "models": {"providers": {"localai": {"baseUrl": "http://127.0.0.1:1/v1",
                                              "api": "openai-completions",
                                              "models": [{"id": "llama"}]}}},
        "agents": {"defaults": {"model": {"primary": "localai/llama"}}},
    })
    refs = configured_model_refs(config)
    assert "localai/llama" in refs
    assert "openrouter/attacker-chosen-name-1" not in refs
