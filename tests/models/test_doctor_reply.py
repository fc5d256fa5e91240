"""``palaver doctor --reply`` against fake servers, through the real wire clients."""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time

import pytest

from bridge.cli import EXIT_FAILURE, EXIT_OK, build_parser
from bridge.models.base import ErrorClass
from bridge.models.doctor import (
    REPLY_MAX_TOKENS,
    REPLY_MAX_TOKENS_REASONING,
    REPLY_PROMPT,
    cmd_doctor,
    probe_replies,
    render_replies,
    routed_refs,
)
from tests.fakes.model_server import FakeModelServer
from tests.models.conftest import APIS, closed_port, make_config, provider

# The request field each api kind carries the output-token limit in.
_LIMIT_FIELD = {"responses": "max_output_tokens", "completions": "max_tokens",
                "anthropic": "max_tokens"}


def _three_apis(server: FakeModelServer, **extra):
    """One provider per api kind on ``server``: primary, then two fallbacks."""
    providers = {api.split("-")[1]: provider(server.url_for(api), api, "m") for api in APIS}
    return make_config(providers, "responses/m", ("completions/m", "messages/m"), **extra)


async def test_healthy_models_answer_with_text_and_timings_on_every_api(server, session):
    # Reasoning in the API's own form, and inline: only the final text counts.
    server.default("ok", reasoning="the user wants one word", chunks=2)
    cfg = _three_apis(server)
    rows = await probe_replies(cfg, session=session)
    assert [(r.model_ref, r.api) for r in rows] == [
        ("responses/m", "openai-responses"), ("completions/m", "openai-completions"),
        ("messages/m", "anthropic-messages")]
    for r in rows:
        assert r.ok and r.error_class is None and r.message == ""
        assert r.text == "ok"
        assert r.ttft_ms is not None and r.total_ms is not None
        assert 0 <= r.ttft_ms <= r.total_ms
        assert r.max_tokens == REPLY_MAX_TOKENS
    sent = [r for r in server.requests if r.api != "models"]
    assert sorted(r.api for r in sent) == ["anthropic", "completions", "responses"]
    for request in sent:
        assert request.last_user_text() == REPLY_PROMPT
        assert request.json[_LIMIT_FIELD[request.api]] == REPLY_MAX_TOKENS
        assert request.json["stream"] is True
    text, ok = render_replies(cfg, rows)
    assert ok
    assert "reply: ok (3 of 3 models answered)" in text
    assert "the user wants" not in text
    line = next(x for x in text.splitlines() if x.startswith("completions/m"))
    assert "openai-completions" in line and line.rstrip().endswith('"ok"')
    assert line.count(" ms") == 2


async def test_inline_think_is_stripped(server, session):
    server.default("fine", reasoning="hidden thoughts", inline_think=True)
    cfg = make_config({"local": provider(server.base_url, "openai-completions", "m")},
                      "local/m")
    (row,) = await probe_replies(cfg, session=session)
    assert row.ok and row.text == "fine"


@pytest.mark.parametrize("api", APIS)
async def test_reasoning_only_is_empty_response(server, session, api):
    server.default("", reasoning="thinking and thinking, never answering")
    cfg = make_config({"think": provider(server.url_for(api), api, "m")}, "think/m")
    (row,) = await probe_replies(cfg, session=session)
    assert not row.ok and row.error_class is ErrorClass.EMPTY_RESPONSE
    assert row.text == ""
    # The reasoning was generated content: it counts for the time to first token.
    assert row.ttft_ms is not None
    assert "reasoning but no answer" in row.message and "reasoning: true" in row.message
    text, ok = render_replies(cfg, [row])
    assert not ok
    assert "reply: FAIL 1 of 1 model gave no final text (think/m)" in text
    assert "default: FAIL no model answered among think/m" in text
    line = next(x for x in text.splitlines() if x.startswith("think/m"))
    assert " empty_response " in line


async def test_a_model_marked_reasoning_gets_a_larger_budget(server, session):
    server.default("ok")
    local = provider(server.base_url, "openai-responses")
    local["models"] = [{"id": "qwen3", "reasoning": True}]
    cfg = make_config({"local": local}, "local/qwen3")
    (row,) = await probe_replies(cfg, session=session)
    assert row.ok and row.max_tokens == REPLY_MAX_TOKENS_REASONING
    assert server.requests[-1].json["max_output_tokens"] == REPLY_MAX_TOKENS_REASONING


async def test_unreachable_provider(server, session):
    server.default("ok")
    cfg = make_config({
        "gone": provider(f"http://127.0.0.1:{closed_port()}/v1", "openai-responses"),
        "local": provider(server.base_url, "openai-completions"),
    }, "gone/m", ("local/m",))
    rows = {r.model_ref: r for r in await probe_replies(cfg, session=session)}
    gone = rows["gone/m"]
    assert gone.error_class is ErrorClass.UNREACHABLE and gone.ttft_ms is None
    assert gone.total_ms is not None
    assert rows["local/m"].ok
    text, ok = render_replies(cfg, list(rows.values()))
    assert not ok and "reply: FAIL 1 of 2 models gave no final text (gone/m)" in text
    assert "default: ok (local/m answered)" in text  # the fallback would answer
    line = next(x for x in text.splitlines() if x.startswith("gone/m"))
    assert " unreachable " in line and " - " in line


async def test_timeout_is_the_models_own(server, session):
    server.hang()
    cfg = make_config({"slow": provider(server.base_url, "openai-completions",
                                        timeouts={"firstTokenSeconds": 0.3})}, "slow/m")
    start = time.monotonic()
    (row,) = await probe_replies(cfg, session=session)
    assert time.monotonic() - start < 5
    assert row.error_class is ErrorClass.TIMEOUT and "first token" in row.message


async def test_secrets_are_never_shown(session):
    key = "sk-live-REPLYPROBESECRET"
    async with FakeModelServer(api_key=key) as good, \
            FakeModelServer(api_key="right", echo_key=True) as strict:
        good.default(f"my key is {key}")  # a model repeating the key it was sent
        cfg = make_config({
            "good": provider(good.base_url, "openai-responses", apiKey=key),
            "strict": provider(strict.base_url, "openai-completions", apiKey=key),
        }, "good/m", ("strict/m",))
        rows = {r.model_ref: r for r in await probe_replies(cfg, session=session)}
        text, _ = render_replies(cfg, list(rows.values()))
    assert rows["good/m"].ok and rows["strict/m"].error_class is ErrorClass.AUTH
    assert "REPLYPROBESECRET" not in text
    assert good.requests[-1].headers["authorization"] == f"Bearer {key}"


async def test_routed_models_only_and_unknown_refs(server, session):
    server.default("ok")
    local = provider(server.base_url, "openai-completions", "a", "b", "unused")
    cfg = make_config({"local": local}, "local/a", ("local/nope",),
                      channels={"telegram": {"model": "local/b"}})
    assert routed_refs(cfg) == ["local/a", "local/nope", "local/b"]
    rows = {r.model_ref: r for r in await probe_replies(cfg, session=session)}
    assert list(rows) == ["local/a", "local/nope", "local/b"]
    assert rows["local/nope"].error_class is ErrorClass.NOT_FOUND
    assert rows["local/nope"].total_ms is None
    assert sorted(r.json["model"] for r in server.requests) == ["a", "b"]


async def test_concurrent_across_servers_one_at_a_time_per_server(session):
    async with FakeModelServer() as one, FakeModelServer() as two:
        for s in (one, two):
            s.default("ok", think=0.3)
        across = make_config({"one": provider(one.base_url, "openai-completions"),
                              "two": provider(two.base_url, "openai-completions")},
                             "one/m", ("two/m",))
        start = time.monotonic()
        assert all(r.ok for r in await probe_replies(across, session=session))
        assert time.monotonic() - start < 0.55  # both at once

        start = time.monotonic()
        assert all(r.ok for r in await probe_replies(across, session=session,
                                                     concurrency=1))
        assert time.monotonic() - start >= 0.6  # the bound holds

        same = make_config({"one": provider(one.base_url, "openai-completions", "a", "b")},
                           "one/a", ("one/b",))
        start = time.monotonic()
        rows = await probe_replies(same, session=session)
        assert all(r.ok for r in rows) and time.monotonic() - start >= 0.6
        # Serial: neither waited behind the other's generation.
        assert all(r.ttft_ms is not None and r.ttft_ms < 550 for r in rows)


def test_cli_flag():
    parser = build_parser()
    assert parser.parse_args(["doctor", "--reply"]).reply is True
    assert parser.parse_args(["doctor"]).reply is False


# --------------------------------------------------------------------------- cmd_doctor


@pytest.fixture
def threaded_server():
    """A FakeModelServer on its own loop in a thread, for cmd_doctor's asyncio.run()."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = FakeModelServer(models=["m"])
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(5)
    yield server
    asyncio.run_coroutine_threadsafe(server.close(), loop).result(5)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def _write_three_apis(tmp_path, server: FakeModelServer) -> str:
    path = tmp_path / "palaver.json5"
    path.write_text(json.dumps({
        "models": {"mode": "replace", "providers": {
            api.split("-")[1]: {"baseUrl": server.url_for(api), "api": api,
                                "models": [{"id": "m"}]} for api in APIS}},
        "agents": {"defaults": {"model": {
            "primary": "responses/m", "fallbacks": ["completions/m", "messages/m"]}}},
    }))
    return str(path)


def test_cmd_doctor_reply_exit_codes(tmp_path, capsys, threaded_server):
    path = _write_three_apis(tmp_path, threaded_server)
    threaded_server.default("ok")
    code = cmd_doctor(argparse.Namespace(config=path, reply=True))
    out = capsys.readouterr().out
    assert code == EXIT_OK, out
    assert "default: ok (responses/m)" in out
    assert "default: ok (responses/m answered)" in out
    assert "reply: ok (3 of 3 models answered)" in out

    # The model list still says every model works; only the reply probe finds out.
    threaded_server.default("", reasoning="hmm")
    code = cmd_doctor(argparse.Namespace(config=path, reply=True))
    out = capsys.readouterr().out
    assert code == EXIT_FAILURE, out
    assert "default: ok (responses/m)" in out
    assert "default: FAIL no model answered among responses/m, completions/m, messages/m" in out
    assert "reply: FAIL 3 of 3 models gave no final text" in out
    assert cmd_doctor(argparse.Namespace(config=path)) == EXIT_OK


def test_a_model_by_channel_pin_is_routed_too():
    local = provider("http://127.0.0.1:9/v1", "openai-completions", "a", "b", "c")
    cfg = make_config({"local": local}, "local/a", (),
                      channels={"telegram": {}, "modelByChannel": {"telegram": {"-100": "local/c"}}})
    assert routed_refs(cfg) == ["local/a", "local/c"]
