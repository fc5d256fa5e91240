"""The reusable fake model server's own conveniences (other suites rely on them)."""

from __future__ import annotations

import aiohttp
import pytest

from bridge.models.base import ErrorClass, ModelError, ModelRequest, Turn
from bridge.models.clients import make_client
from tests.fakes.model_server import FakeModelServer
from tests.models.conftest import APIS, make_config, provider


@pytest.mark.parametrize("api", APIS)
async def test_default_echo_recording_and_queue(server, session, api):
    cfg = make_config({"p": provider(server.url_for(api), api, "m")})
    client = make_client(cfg.model("p/m"), session)
    req = ModelRequest("sys", (Turn.text("user", "ping one"),))
    assert (await client.complete(req)).text == "echo: ping one"
    server.default(lambda r: f"custom {r.last_user_text().upper()}")
    assert (await client.complete(req)).text == "custom PING ONE"
    server.reply("queued").drop()
    assert server.pending == 2
    assert (await client.complete(req)).text == "queued"
    with pytest.raises(ModelError) as err:
        await client.complete(req)
    assert err.value.error_class is ErrorClass.UNREACHABLE
    assert server.pending == 0
    rec = server.requests[-1]
    assert rec.method == "POST" and rec.json["model"] == "m"
    assert rec.api == {"openai-responses": "responses", "openai-completions": "completions",
                       "anthropic-messages": "anthropic"}[api]


async def test_models_endpoint_shapes_and_auth():
    async with FakeModelServer(api_key="k1", models=["a", "b"]) as server, \
            aiohttp.ClientSession() as http:
        async with http.get(f"{server.base_url}/models") as resp:
            assert resp.status == 401
            assert (await resp.json())["error"]["code"] == "invalid_api_key"
        async with http.get(f"{server.base_url}/models",
                            headers={"authorization": "Bearer k1"}) as resp:
            body = await resp.json()
            assert body["object"] == "list" and [m["id"] for m in body["data"]] == ["a", "b"]
        async with http.get(f"{server.base_url}/models", headers={
                "x-api-key": "k1", "anthropic-version": "2023-06-01"}) as resp:
            body = await resp.json()
            assert body["has_more"] is False and body["data"][0]["type"] == "model"
        async with http.post(f"{server.root_url}/v1/messages", json={"model": "a"},
                             headers={"x-api-key": "nope"}) as resp:
            assert resp.status == 401
            assert (await resp.json())["error"]["type"] == "authentication_error"


async def test_sse_framing_is_real(server, session):
    server.reply("hi", reasoning="r")
    async with session.post(f"{server.base_url}/responses",
                            json={"model": "m", "input": [], "stream": True}) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        raw = (await resp.read()).decode()
    assert raw.startswith("event: response.created\ndata: {")
    assert "event: response.reasoning_summary_text.delta" in raw
    assert raw.rstrip().endswith("}") and "event: response.completed" in raw
    server.reply("hi")
    async with session.post(f"{server.base_url}/chat/completions",
                            json={"model": "m", "messages": [], "stream": True}) as resp:
        raw = (await resp.read()).decode()
    assert "event:" not in raw and raw.endswith("data: [DONE]\n\n")
