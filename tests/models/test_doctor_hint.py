"""``palaver doctor --reply`` suggests ``thinkTags: "paired"`` when a model's streamed
answer was held back to the end by the lone-close rule (no reasoning seen at all)."""

from __future__ import annotations

import pytest

from bridge.models.doctor import HELD_HINT, probe_replies, render_replies
from tests.models.conftest import APIS, make_config, provider


def _one(server, api: str, **extra):
    return make_config({"p": provider(server.url_for(api), api, "m", **extra)}, "p/m")


@pytest.mark.parametrize("api", APIS)
async def test_plain_model_on_auto_gets_the_paired_hint(server, session, api):
    server.default("all good here", chunks=3)
    cfg = _one(server, api)
    [row] = await probe_replies(cfg, session=session)
    assert row.ok and row.hint == HELD_HINT
    text, ok = render_replies(cfg, [row])
    assert ok and f'p/m: {HELD_HINT}' in text and '"thinkTags": "paired"' in text


@pytest.mark.parametrize(("script", "extra"), [
    ({}, {"thinkTags": "paired"}),                           # already paired
    ({"reasoning": "plan"}, {}),                              # reasoning field/item/block
    ({"reasoning": "plan", "inline_think": True}, {}),        # opens its own <think>
    ({"reasoning": "plan", "inline_think": "lone"}, {}),      # template-opened: a lone close
    ({"stream": False}, {}),                                  # a JSON reply streams nothing
    ({}, {"preview": False}),                                 # never previewed anyway
])
@pytest.mark.parametrize("api", APIS)
async def test_no_hint_when_text_could_flow_or_never_streams(server, session, api, script,
                                                             extra):
    server.default("all good here", chunks=3, **script)
    cfg = _one(server, api, **extra)
    [row] = await probe_replies(cfg, session=session)
    assert row.ok and row.text == "all good here" and row.hint == ""
    assert "thinkTags" not in render_replies(cfg, [row])[0]
