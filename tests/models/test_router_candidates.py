"""ModelRouter takes candidates resolved already (a turn resolves them once) or refs."""

from __future__ import annotations

import dataclasses

from bridge.config.resolve import resolve_candidates
from bridge.models.base import ErrorClass, ModelRequest, Router, Turn
from bridge.models.router import ModelRouter
from tests.models.conftest import make_config, provider

REQ = ModelRequest(None, (Turn.text("user", "hello"),))


async def test_resolved_candidates_are_called_as_given(server):
    cfg = make_config({"local": provider(server.base_url, "openai-completions", "qwen")},
                      "local/qwen")
    model = resolve_candidates(cfg, ["local/qwen"])[0]
    assert not isinstance(model, str)
    seen = []

    def build(m):
        seen.append(m)
        return REQ

    # The live config knows no model at all: nothing is resolved again.
    router = ModelRouter(lambda: make_config({}))
    try:
        server.reply("hi")
        reply = await router.complete([model, "nosuch/x"], build)
    finally:
        await router.aclose()
    assert (reply.text, reply.model_ref) == ("hi", "local/qwen")
    assert seen == [model]


async def test_an_unresolved_ref_is_not_found_and_duplicates_count_once(server):
    cfg = make_config({"local": provider(server.base_url, "openai-completions", "qwen")},
                      "local/qwen")
    model = resolve_candidates(cfg, ["local/qwen"])[0]
    assert not isinstance(model, str)
    router = ModelRouter(lambda: cfg)
    try:
        server.reply("late")
        reply = await router.complete(
            ["nosuch/x", model, dataclasses.replace(model), "local/qwen"], REQ)
    finally:
        await router.aclose()
    assert [(a.model_ref, a.error_class) for a in reply.attempts] == [
        ("nosuch/x", ErrorClass.NOT_FOUND), ("local/qwen", None)]
    assert "not configured: unknown provider 'nosuch'" in reply.attempts[0].message


def test_model_router_is_a_router():
    assert Router in ModelRouter.__mro__
