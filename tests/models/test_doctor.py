"""``palaver doctor`` against fake servers."""

from __future__ import annotations

import argparse
import asyncio
import json
import threading

import pytest

from bridge.models.doctor import check_paths, cmd_doctor, diagnose, render
from tests.fakes.model_server import FakeModelServer
from tests.models.conftest import closed_port, make_config, provider


async def test_reachable_listed_and_warnings(server, session):
    server.models = ["qwen", "other"]
    local = provider(server.base_url, "openai-completions")
    local["models"] = [{"id": "qwen"}, {"id": "missing", "maxTokens": 9000,
                                         "contextWindow": 8192}]
    cfg = make_config({"local": local}, "local/qwen")
    rows = {r.model_ref: r for r in await diagnose(cfg, session=session)}
    assert rows["local/qwen"].reachable and rows["local/qwen"].ok
    assert rows["local/qwen"].listed is True and rows["local/qwen"].rtt_ms is not None
    assert rows["local/qwen"].credentials == "not needed"
    assert rows["local/missing"].listed is False and not rows["local/missing"].ok
    assert any("maxTokens 9000 >= contextWindow 8192" in w for w in rows["local/missing"].warnings)
    text, ok = render(cfg, list(rows.values()))
    assert ok and "default: ok (local/qwen)" in text
    assert "maxTokens 9000 >= contextWindow 8192" in text
    assert server.requests[0].path == "/v1/models"


async def test_unreachable_primary_with_working_fallback(server, session):
    async with FakeModelServer(models=["claude"]) as hosted:
        cfg = make_config({
            "local": provider(f"http://127.0.0.1:{closed_port()}/v1", "openai-responses"),
            "hosted": provider(hosted.root_url, "anthropic-messages", "claude",
                               apiKey="sk-ant-DOCTORSECRET"),
        }, "local/m", ("hosted/claude",))
        rows = await diagnose(cfg, session=session)
        text, ok = render(cfg, rows)
        by = {r.model_ref: r for r in rows}
        assert not by["local/m"].reachable and "unreachable" in by["local/m"].detail
        assert by["hosted/claude"].ok and by["hosted/claude"].credentials == "present"
        assert hosted.requests[0].headers["x-api-key"] == "sk-ant-DOCTORSECRET"
        assert hosted.requests[0].path == "/v1/models"
        assert ok and "DOCTORSECRET" not in text


async def test_models_endpoint_missing_falls_back_to_a_minimal_request(server, session):
    server.serve_models = False
    server.reply("ok")
    cfg = make_config({"local": provider(server.base_url, "openai-responses", "m")}, "local/m")
    rows = await diagnose(cfg, session=session)
    assert rows[0].ok and rows[0].listed is True
    assert [r.path for r in server.requests] == ["/v1/models", "/v1/responses"]
    assert server.requests[1].json["max_output_tokens"] == 16

    server.error(404, "model 'm' not found")
    rows = await diagnose(cfg, session=session)
    assert not rows[0].ok and rows[0].listed is False


async def test_missing_key_and_failing_channel_path(server, session):
    server.models = ["m"]
    cfg = make_config(
        {"local": provider(server.base_url, "openai-completions", "m"),
         "openai": provider("https://api.openai.com/v1", "openai-responses", "gpt-x")},
        "local/m",
        channels={"telegram": {"model": "openai/gpt-x"}},
    )
    rows = await diagnose(cfg, session=session)
    by = {r.model_ref: r for r in rows}
    assert by["openai/gpt-x"].credentials == "missing" and not by["openai/gpt-x"].ok
    assert "OPENAI_API_KEY" in by["openai/gpt-x"].detail
    paths = {name: answer for name, _, answer in check_paths(cfg, rows)}
    assert paths == {"default": "local/m", "telegram": None}
    text, ok = render(cfg, rows)
    assert not ok and "telegram: FAIL" in text
    # The hosted API was not called without a key.
    assert by["openai/gpt-x"].rtt_ms is None and not by["openai/gpt-x"].reachable


async def test_auth_rejected_is_reachable_but_not_working(session):
    async with FakeModelServer(api_key="right") as server:
        cfg = make_config({"local": provider(server.base_url, "openai-completions", "m",
                                             apiKey="wrong-key-value")}, "local/m")
        rows = await diagnose(cfg, session=session)
        assert rows[0].reachable and not rows[0].ok and rows[0].detail.startswith("auth")
        assert "wrong-key-value" not in rows[0].detail


def test_cmd_doctor_exit_codes(tmp_path, capsys):
    port = closed_port()
    path = tmp_path / "palaver.json5"
    path.write_text(json.dumps({
        "models": {"mode": "replace", "providers": {
            "local": {"baseUrl": f"http://127.0.0.1:{port}/v1", "api": "openai-completions",
                      "models": [{"id": "m"}]}}},
        "agents": {"defaults": {"model": "local/m"}},
    }))
    code = cmd_doctor(argparse.Namespace(config=str(path)))
    out = capsys.readouterr().out
    assert code == 1, out
    assert "local/m" in out and "FAIL" in out

    code = cmd_doctor(argparse.Namespace(config=str(tmp_path / "missing.json5")))
    assert code == 1


async def test_invalid_base_url_is_reported_unreachable(session):
    cfg = make_config({"local": provider("localhost:1234/v1", "openai-completions", "m")},
                      "local/m")
    rows = await diagnose(cfg, session=session)
    assert not rows[0].reachable and not rows[0].ok
    assert "invalid baseUrl" in rows[0].detail


def test_cmd_doctor_reports_a_provider_without_base_url(tmp_path, capsys):
    path = tmp_path / "palaver.json5"
    path.write_text('{ models: { providers: { foo: { models: [{ id: "m" }] } } } }')
    assert cmd_doctor(argparse.Namespace(config=str(path))) == 1
    err = capsys.readouterr().err
    assert "models.providers.foo.baseUrl: missing baseUrl" in err


async def test_lm_studio_loaded_state(server, session):
    server.models = ["qwen3-8b", "gemma-3-4b"]  # /v1/models lists both, loaded or not
    server.lmstudio_states = {"qwen3-8b": "loaded", "gemma-3-4b": "not-loaded"}
    cfg = make_config({"lmstudio": provider(server.base_url, "openai-completions",
                                            "qwen3-8b", "gemma-3-4b")}, "lmstudio/qwen3-8b")
    rows = {r.model_ref: r for r in await diagnose(cfg, session=session)}
    assert rows["lmstudio/qwen3-8b"].loaded is True
    assert rows["lmstudio/gemma-3-4b"].loaded is False
    assert "not loaded" in rows["lmstudio/gemma-3-4b"].detail
    text, ok = render(cfg, list(rows.values()))
    assert ok
    line = next(x for x in text.splitlines() if "lmstudio/gemma-3-4b" in x)
    assert "not loaded" in line
    assert "/api/v0/models" in [r.path for r in server.requests]


async def test_other_servers_keep_listed(server, session):
    server.models = ["m"]  # no /api/v0/models here (404): not LM Studio
    cfg = make_config({"vllm": provider(server.base_url, "openai-completions", "m")}, "vllm/m")
    rows = await diagnose(cfg, session=session)
    assert rows[0].ok and rows[0].listed is True and rows[0].loaded is None
    text, _ = render(cfg, rows)
    line = next(x for x in text.splitlines() if "vllm/m" in x)
    assert " yes " in line and "loaded" not in line


@pytest.fixture
def threaded_server():
    """A FakeModelServer on its own loop in a thread, for cmd_doctor's asyncio.run()."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = FakeModelServer(models=["qwen3-8b"])
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(5)
    yield server
    asyncio.run_coroutine_threadsafe(server.close(), loop).result(5)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def test_cmd_doctor_exit_0_when_every_path_works(tmp_path, capsys, threaded_server):
    path = tmp_path / "palaver.json5"
    path.write_text(json.dumps({
        "models": {"mode": "replace", "providers": {"local": {
            "baseUrl": threaded_server.base_url, "models": [{"id": "qwen3-8b"}]}}},
    }))
    code = cmd_doctor(argparse.Namespace(config=str(path)))
    out = capsys.readouterr().out
    assert code == 0, out
    assert "default: ok (local/qwen3-8b)" in out


def test_cmd_doctor_without_config_uses_discovery(capsys, threaded_server):
    from bridge.discovery import ProbeTarget

    threaded_server.lmstudio_states = {"qwen3-8b": "loaded"}
    targets = [ProbeTarget("lmstudio", "LM Studio", threaded_server.port),
               ProbeTarget("ollama", "Ollama", closed_port())]
    code = cmd_doctor(argparse.Namespace(config=None, probe_targets=targets))
    out = capsys.readouterr().out
    assert code == 0, out
    assert "LM Studio" in out and "lists 1 model(s)" in out
    assert "lmstudio/qwen3-8b" in out and "loaded" in out
    assert "default: ok (lmstudio/qwen3-8b)" in out


def test_cmd_doctor_without_config_and_nothing_found(capsys):
    from bridge.discovery import ProbeTarget

    targets = [ProbeTarget("lmstudio", "LM Studio", closed_port())]
    code = cmd_doctor(argparse.Namespace(config=None, probe_targets=targets))
    out = capsys.readouterr().out
    assert code == 1
    assert "looked for a local model server" in out and "connection refused" in out


@pytest.mark.parametrize("reply", [False, True])
def test_cmd_doctor_asks_a_model_to_generate_only_with_reply(tmp_path, capsys,
                                                             threaded_server, reply):
    threaded_server.models = ["m"]
    threaded_server.default("ok")
    path = tmp_path / "palaver.json5"
    path.write_text(json.dumps({
        "models": {"mode": "replace", "providers": {
            api.split("-")[1]: {"baseUrl": threaded_server.url_for(api), "api": api,
                                "models": [{"id": "m"}]}
            for api in ("openai-responses", "openai-completions", "anthropic-messages")}},
        "agents": {"defaults": {"model": {
            "primary": "responses/m", "fallbacks": ["completions/m", "messages/m"]}}},
    }))
    args = argparse.Namespace(config=str(path), **({"reply": True} if reply else {}))
    assert cmd_doctor(args) == 0, capsys.readouterr().out
    generated = sorted(r.path for r in threaded_server.requests
                       if r.path not in ("/v1/models", "/api/v0/models"))
    if reply:
        assert generated == ["/v1/chat/completions", "/v1/messages", "/v1/responses"]
    else:
        assert generated == []  # as cheap as ever: model lists only
        assert "/v1/models" in [r.path for r in threaded_server.requests]
