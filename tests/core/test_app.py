"""The composition root, `palaver chat` / `palaver run`, and no-config discovery, through the
real ModelRouter against FakeModelServer on 127.0.0.1."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import socket
import sys
from pathlib import Path

import pytest

from bridge import app as app_mod
from bridge.app import App, chat
from bridge.config.load import load_config, load_config_text
from bridge.discovery import ProbeTarget, discover
from tests.core.helpers import RecordingChannel, dm
from tests.fakes.model_server import FakeModelServer

REPO = Path(__file__).resolve().parents[2]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config_text(tmp_path, server: FakeModelServer, **extra) -> str:
    data = {
        "dataDir": str(tmp_path / "data"),
        "health": {"enabled": False},
        "models": {"mode": "replace", "providers": {
            "fake": {"baseUrl": server.base_url, "api": "openai-completions",
                     "models": [{"id": "fake-model"}]},
            "spare": {"baseUrl": server.base_url, "api": "openai-responses",
                      "models": [{"id": "spare-model"}]}}},
        "agents": {"defaults": {"model": {"primary": "fake/fake-model",
                                          "fallbacks": ["spare/spare-model"]},
                                "timeouts": {"firstTokenSeconds": 2, "totalSeconds": 5}}},
        "channels": {"telegram": {"dmPolicy": "open", "allowFrom": ["*"]}},
    }
    data.update(extra)
    return json.dumps(data)


@pytest.fixture
async def server():
    async with FakeModelServer() as s:
        yield s


async def test_app_round_trip_through_real_router(tmp_path, server):
    config = load_config_text(_config_text(tmp_path, server))
    channel = RecordingChannel()
    app = App(config, channels=[channel])
    await app.start()
    try:
        server.reply("Hi from the fake", reasoning="secret thoughts")
        assert await app.core.accept(dm("hello")) == "accepted"
        await app.core.wait_idle()
        assert channel.texts() == ["Hi from the fake"]
        body = server.requests[-1].json
        assert body["model"] == "fake-model"
        assert body["messages"][-1]["content"] in ("hello", [{"type": "text", "text": "hello"}])
        health = await app.health()
        assert health["store"]["ok"] and health["channels"]["telegram"]["connected"]
        assert app.media.root == config.data_dir / "media"
        # Fallback through the real router: the primary fails, the spare answers.
        server.error(500, "boom").reply("spare answer")
        await app.core.accept(dm("again"))
        await app.core.wait_idle()
        assert channel.texts()[-1] == "spare answer"
        assert server.requests[-1].path.endswith("/responses")
        text = app.metrics.render().decode()
        assert "telegram" in text
    finally:
        await app.stop()
    assert channel.stopped
    assert (await app.health())["store"]["ok"] is False


async def test_scripted_chat_prints_replies_and_exits_zero(tmp_path, server):
    config = load_config_text(_config_text(tmp_path, server))
    stdin = io.StringIO("hello\n\n/model spare/spare-model\nsecond line\n")
    stdout = io.StringIO()
    server.reply("first answer")
    code = await chat(config, stdin=stdin, stdout=stdout, interactive=False)
    assert code == 0
    lines = stdout.getvalue().splitlines()
    assert lines[0] == "first answer"
    assert "spare/spare-model" in lines[1]
    assert lines[2] == "echo: second line"
    assert server.requests[-1].path.endswith("/responses")  # the /model choice


async def test_scripted_chat_exits_nonzero_when_a_turn_fails(tmp_path, server):
    config = load_config_text(_config_text(tmp_path, server))
    server.error(500, "down").error(500, "down too")
    stdout = io.StringIO()
    code = await chat(config, stdin=io.StringIO("anyone?\n"), stdout=stdout,
                      interactive=False, model="spare/spare-model")
    assert code == 1
    assert "unavailable" in stdout.getvalue()
    assert await chat(config, stdin=io.StringIO(""), stdout=io.StringIO(),
                      interactive=False, model="nope/x") == 2


async def test_palaver_chat_subprocess(tmp_path, server):
    path = tmp_path / "palaver.json5"
    path.write_text(_config_text(tmp_path, server))
    server.reply("one").reply("two")
    env = {**os.environ, "PYTHONPATH": str(REPO), "NO_PROXY": "127.0.0.1"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", "chat", "-c", str(path), "--session", "script",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env, cwd=str(tmp_path))
    out, err = await asyncio.wait_for(proc.communicate(b"first\nsecond\n"), 60)
    assert proc.returncode == 0, err.decode()
    assert out.decode().splitlines() == ["one", "two"]


async def test_discovery_uses_first_local_server_with_hosted_fallback(server):
    server.models = ["nomic-embed-text", "qwen3:8b"]
    targets = (ProbeTarget("lmstudio", "LM Studio", _closed_port()),
               ProbeTarget("ollama", "Ollama", server.port))
    base = load_config(None, env={"ANTHROPIC_API_KEY": "sk-ant-test-123456789"})
    found = await discover(base, targets=targets, timeout_s=1)
    assert found.local is not None and found.local.target.provider_id == "ollama"
    sel = found.config.default_selection()
    assert sel.primary == "ollama/qwen3:8b"  # embedding models skipped
    assert sel.fallbacks == ("anthropic/claude-sonnet-4-5",)
    model = found.config.model("ollama/qwen3:8b")
    assert model.base_url == server.base_url and model.api == "openai-completions"
    text = found.explain()
    assert "connection refused" in text and "Using Ollama" in text


async def test_discovery_says_what_it_tried_when_nothing_answers():
    hang = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = hang.sockets[0].getsockname()[1]
    try:
        targets = (ProbeTarget("lmstudio", "LM Studio", _closed_port()),
                   ProbeTarget("vllm", "vLLM", port))
        found = await discover(load_config(None, env={}), targets=targets, timeout_s=0.3)
    finally:
        hang.close()
    assert found.config is None
    text = found.explain()
    assert "LM Studio" in text and "connection refused" in text
    assert f"127.0.0.1:{port}/v1/models" in text and "no answer within" in text
    assert "To configure one" in text and "$ANTHROPIC_API_KEY" in text


async def test_chat_without_config_discovers_local_server(tmp_path, server):
    targets = (ProbeTarget("localai", "LocalAI", server.port),)
    config = load_config(None, env={})
    config = config.model_copy(update={"dataDir": str(tmp_path / "d")})
    stdout = io.StringIO()
    code = await chat(config, stdin=io.StringIO("ping\n"), stdout=stdout,
                      interactive=False, probe_targets=targets)
    assert code == 0 and stdout.getvalue() == "echo: ping\n"
    assert server.requests[-1].json["model"] == "fake-model"


async def test_run_stops_gracefully_on_sigterm(tmp_path, server, monkeypatch):
    import threading

    from bridge.config.watch import LiveConfig

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers need the main thread")

    path = tmp_path / "palaver.json5"
    path.write_text(_config_text(tmp_path, server))
    channel = RecordingChannel()
    monkeypatch.setattr(app_mod, "build_channels", lambda *a, **k: [channel])
    server.reply("slow answer", delay=0.1)
    seen = {}

    def ready(app):
        async def drive():
            await app.core.accept(dm("during shutdown"))
            await asyncio.sleep(0.02)  # the turn is running
            os.kill(os.getpid(), signal.SIGTERM)
        seen["task"] = asyncio.get_running_loop().create_task(drive())

    live = LiveConfig(load_config(path), path)
    code = await app_mod._run(live, object(), ready=ready)
    await seen["task"]
    assert code == 0
    assert channel.texts() == ["slow answer"]  # the running turn finished first
    assert channel.stopped
