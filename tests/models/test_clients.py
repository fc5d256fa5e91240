"""Each wire client against the fake server: replies, reasoning forms, failures, payloads."""

from __future__ import annotations

import asyncio
import base64
import socket
import time

import aiohttp
import aiohttp.abc
import pytest

from bridge.models.base import ErrorClass, ImagePart, ModelError, ModelRequest, TextPart, Turn
from bridge.models.clients import make_client
from bridge.models.completions import CompletionsClient
from tests.fakes.model_server import FakeModelServer
from tests.models.conftest import APIS, closed_port, make_config, provider

REQ = ModelRequest("You are terse.", (
    Turn.text("user", "first question"),
    Turn.text("assistant", "first answer"),
    Turn.text("user", "second question"),
))


VISION = [{"id": "m", "input": ["text", "image"]}]


def client_for(server_or_url, api, session, *, timeouts=None, **provider_extra):
    base = server_or_url.url_for(api) if isinstance(server_or_url, FakeModelServer) \
        else server_or_url
    extra = dict(provider_extra)
    if timeouts:
        extra["timeouts"] = timeouts
    cfg = make_config({"p": provider(base, api, "m", **extra)})
    return make_client(cfg.model("p/m"), session)


async def expect_error(client, request=REQ) -> ModelError:
    with pytest.raises(ModelError) as err:
        await client.complete(request)
    return err.value


# ----------------------------------------------------------------------------- replies


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("stream", [True, False])
async def test_reply_streamed_and_not(server, session, api, stream):
    server.reply("The answer is 42.", chunks=5, stream=None if stream else False,
                 usage=(11, 7))
    c = client_for(server, api, session)
    done = await c.complete(REQ)
    assert done.text == "The answer is 42."
    assert done.finish_reason == "stop"
    assert (done.usage.input_tokens, done.usage.output_tokens) == (11, 7)
    assert server.requests[-1].json["stream"] is True  # streaming is the default


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("stream", [True, False])
async def test_native_reasoning_is_dropped(server, session, api, stream):
    server.reply("Final only.", reasoning="SECRET chain of thought",
                 redacted_thinking=True, stream=None if stream else False)
    done = await client_for(server, api, session).complete(REQ)
    assert done.text == "Final only."


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
@pytest.mark.parametrize("stream", [True, False])
async def test_completions_reasoning_fields_dropped(server, session, field, stream):
    server.reply("Visible.", reasoning="SECRET", reasoning_field=field,
                 stream=None if stream else False)
    done = await client_for(server, "openai-completions", session).complete(REQ)
    assert done.text == "Visible."


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("inline", [True, "lone"])
async def test_inline_reasoning_split_across_chunks(server, session, api, inline):
    # Every chunk boundary falls inside a tag.
    server.reply(["Hel", "lo ", "<fin", "al>world</fi", "nal>"], reasoning="SECRET plan",
                 inline_think=inline)
    done = await client_for(server, api, session).complete(REQ)
    assert done.text == "Hello world"


@pytest.mark.parametrize("api", APIS)
async def test_tags_in_code_survive_the_client(server, session, api):
    text = "Write `<think>` like:\n```xml\n<think>example</think>\n```"
    server.reply(text, chunks=9)
    assert (await client_for(server, api, session).complete(REQ)).text == text


@pytest.mark.parametrize("api", APIS)
async def test_unclosed_trailing_reasoning_dropped(server, session, api):
    server.reply(["Answer.", " <thinking>and then I wonder"])
    assert (await client_for(server, api, session).complete(REQ)).text == "Answer."


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("stream", [True, False])
async def test_only_reasoning_is_empty_response(server, session, api, stream):
    server.reply("", reasoning="all thought, no answer", stream=None if stream else False)
    err = await expect_error(client_for(server, api, session))
    assert err.error_class is ErrorClass.EMPTY_RESPONSE
    server.reply("<think>inline only</think>")
    err = await expect_error(client_for(server, api, session))
    assert err.error_class is ErrorClass.EMPTY_RESPONSE


@pytest.mark.parametrize("api", ["openai-responses", "openai-completions"])
@pytest.mark.parametrize("stream", [True, False])
async def test_refusal_is_kept_as_text(server, session, api, stream):
    server.reply("", refusal="I can't help with that.", stream=None if stream else False)
    done = await client_for(server, api, session).complete(REQ)
    assert done.text == "I can't help with that."


@pytest.mark.parametrize("api", APIS)
async def test_length_finish(server, session, api):
    server.reply("cut sho", finish="length")
    done = await client_for(server, api, session).complete(REQ)
    assert (done.text, done.finish_reason) == ("cut sho", "length")


@pytest.mark.parametrize("stream", [True, False])
async def test_anthropic_context_window_stop_reason(server, session, stream):
    server.reply("partial", finish="model_context_window_exceeded",
                 stream=None if stream else False)
    err = await expect_error(client_for(server, "anthropic-messages", session))
    assert err.error_class is ErrorClass.CONTEXT_OVERFLOW


# ----------------------------------------------------------------------------- payloads


async def test_responses_payload(server, session):
    img = ImagePart(b"\x89PNG fake", "image/png")
    req = ModelRequest("Be brief.", (
        Turn.text("user", "hi"), Turn.text("assistant", "hello"),
        Turn("user", (TextPart("what is this?"), img)),
    ), max_tokens=100, temperature=0.2)
    await client_for(server, "openai-responses", session, headers={"X-Team": "t1"},
                     apiKey="sk-local-KEY123", models=VISION).complete(req)
    sent = server.requests[-1]
    assert sent.path == "/v1/responses"
    assert sent.headers["authorization"] == "Bearer sk-local-KEY123"
    assert sent.headers["x-team"] == "t1"
    body = sent.json
    assert body["store"] is False and body["stream"] is True
    assert body["instructions"] == "Be brief." and body["max_output_tokens"] == 100
    assert body["temperature"] == 0.2 and body["model"] == "m"
    assert "previous_response_id" not in body
    # Text-only turns as plain strings (string-only chat templates fail on lists);
    # assistant items typed, as llama.cpp's converter requires.
    assert body["input"][0] == {"role": "user", "content": "hi"}
    assert body["input"][1] == {"type": "message", "role": "assistant", "content": "hello"}
    assert body["input"][2]["content"] == [
        {"type": "input_text", "text": "what is this?"},
        {"type": "input_image", "image_url": img.data_url(), "detail": "auto"},
    ]
    assert img.data_url().startswith("data:image/png;base64,")


@pytest.mark.parametrize("api", APIS)
async def test_text_only_turns_go_as_plain_strings_on_every_api(server, session, api):
    await client_for(server, api, session).complete(REQ)
    body = server.requests[-1].json
    turns = body["input"] if api == "openai-responses" else body["messages"]
    if api == "openai-completions":
        assert turns[0] == {"role": "system", "content": "You are terse."}
        turns = turns[1:]
    else:
        field = "instructions" if api == "openai-responses" else "system"
        assert body[field] == "You are terse."
    assert [t["content"] for t in turns] == ["first question", "first answer",
                                             "second question"]
    assistant = {"role": "assistant", "content": "first answer"}
    if api == "openai-responses":
        assistant = {"type": "message", **assistant}
    assert turns[1] == assistant


@pytest.mark.parametrize("api", APIS)
async def test_an_image_for_a_text_only_model_is_left_out(server, session, api):
    img = ImagePart(b"\x89PNG fake", "image/png")
    req = ModelRequest(None, (Turn("user", (TextPart("what is "), img, TextPart("this?"))),))
    await client_for(server, api, session).complete(req)  # "m" takes text only
    body = server.requests[-1].json
    turns = body["input"] if api == "openai-responses" else body["messages"]
    assert turns == [{"role": "user", "content": "what is this?"}]


async def test_completions_payload(server, session):
    img = ImagePart(b"\xff\xd8jpeg", "image/jpeg")
    req = ModelRequest("Sys.", (Turn("user", (TextPart("look"), img)),))
    await client_for(server, "openai-completions", session, models=VISION).complete(req)
    sent = server.requests[-1]
    assert sent.path == "/v1/chat/completions" and "authorization" not in sent.headers
    body = sent.json
    assert body["messages"][0] == {"role": "system", "content": "Sys."}
    assert body["messages"][1]["content"] == [
        {"type": "text", "text": "look"},
        {"type": "image_url", "image_url": {"url": img.data_url()}},
    ]
    assert body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 8192  # the model's configured maxTokens


async def test_completions_uses_max_completion_tokens_for_openai(session):
    cfg = make_config({"openai": provider("https://api.openai.com/v1", "openai-completions",
                                          "gpt-x", apiKey="sk-x")})
    client = make_client(cfg.model("openai/gpt-x"), session)
    assert isinstance(client, CompletionsClient)
    body = client.build_payload(REQ)
    assert "max_completion_tokens" in body and "max_tokens" not in body


async def test_anthropic_payload(server, session):
    img = ImagePart(b"GIF89a", "image/gif")
    req = ModelRequest("Sys.", (Turn("user", (TextPart("see"), img)),), max_tokens=50)
    await client_for(server, "anthropic-messages", session, apiKey="sk-ant-KEY999",
                     models=VISION).complete(req)
    sent = server.requests[-1]
    assert sent.path == "/v1/messages"
    assert sent.headers["x-api-key"] == "sk-ant-KEY999"
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in sent.headers
    body = sent.json
    assert body["system"] == "Sys." and body["max_tokens"] == 50
    assert body["messages"][0]["content"] == [
        {"type": "text", "text": "see"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/gif",
                                     "data": base64.b64encode(b"GIF89a").decode()}},
    ]


async def test_anthropic_base_url_ending_in_v1(server, session):
    c = client_for(server.base_url, "anthropic-messages", session)
    assert (await c.complete(REQ)).text == "echo: second question"
    assert server.requests[-1].path == "/v1/messages"


# ----------------------------------------------------------------------------- failures

STATUS_CASES = [
    (429, None, ErrorClass.RATE_LIMITED),
    (503, None, ErrorClass.OVERLOADED),
    (529, None, ErrorClass.OVERLOADED),
    (500, None, ErrorClass.SERVER_ERROR),
    (502, None, ErrorClass.SERVER_ERROR),
    (401, None, ErrorClass.AUTH),
    (403, None, ErrorClass.AUTH),
    (404, None, ErrorClass.NOT_FOUND),
    (400, None, ErrorClass.BAD_REQUEST),
    (422, None, ErrorClass.BAD_REQUEST),
    (400, "model is not loaded yet", ErrorClass.OVERLOADED),
    # Real bodies (dict: sent verbatim instead of the API's own error envelope).
    # LM Studio, server up with nothing in memory:
    (400, {"error": "No models loaded. Please load a model in the developer page or use "
                    "the 'lms load' command."}, ErrorClass.OVERLOADED),
    (400, {"error": "Model is unloaded."}, ErrorClass.OVERLOADED),
    (400, {"error": {"message": 'Model "qwen2.5-7b" is not loaded.',
                     "type": "invalid_request_error"}}, ErrorClass.OVERLOADED),
    (500, {"error": "Error while loading model"}, ErrorClass.OVERLOADED),
    # llama.cpp server while the weights load:
    (503, {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}},
     ErrorClass.OVERLOADED),
    # Ollama:
    (400, {"error": "input length exceeds the context length"}, ErrorClass.CONTEXT_OVERFLOW),
    (404, {"error": 'model "llama9" not found, try pulling it first'}, ErrorClass.NOT_FOUND),
    # OpenRouter out of credits; a proxy's request timeout:
    (402, {"error": {"message": "Insufficient credits. Add more using "
                                "https://openrouter.ai/credits", "code": 402}}, ErrorClass.AUTH),
    (408, "<html><body><h1>408 Request Time-out</h1></body></html>", ErrorClass.TIMEOUT),
    # A 5xx merely mentioning a context window is not an overflow (that would stop the chain).
    (500, {"error": {"message": "internal error while computing context window cache",
                     "type": "server_error"}}, ErrorClass.SERVER_ERROR),
]


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize(("status", "message", "expected"), STATUS_CASES)
async def test_http_errors_classified(server, session, api, status, message, expected):
    if message is None or (isinstance(message, str) and not message.startswith("<")):
        server.error(status, message, headers={"retry-after": "4"})
    else:
        server.error(status, body=message, headers={"retry-after": "4"})
    err = await expect_error(client_for(server, api, session))
    assert err.error_class is expected
    assert err.status == status
    if status in (429, 503, 529):
        assert err.retry_after == 4.0


@pytest.mark.parametrize(("api", "message", "code"), [
    ("openai-responses", "Your input exceeds the context window of this model",
     "context_length_exceeded"),
    ("openai-completions", "This model's maximum context length is 4096 tokens. However, "
     "your messages resulted in 5000 tokens.", "context_length_exceeded"),
    ("anthropic-messages", "prompt is too long: 201000 tokens > 200000 maximum", None),
])
async def test_context_overflow_per_api(server, session, api, message, code):
    server.error(400, message, code=code)
    err = await expect_error(client_for(server, api, session))
    assert err.error_class is ErrorClass.CONTEXT_OVERFLOW


@pytest.mark.parametrize(("api", "code", "expected"), [
    ("openai-responses", "rate_limit_exceeded", ErrorClass.RATE_LIMITED),
    ("openai-responses", "server_error", ErrorClass.SERVER_ERROR),
    ("openai-completions", "server_error", ErrorClass.SERVER_ERROR),
    ("anthropic-messages", "overloaded_error", ErrorClass.OVERLOADED),
    ("anthropic-messages", "api_error", ErrorClass.SERVER_ERROR),
])
async def test_mid_stream_error_events(server, session, api, code, expected):
    server.stream_error("went wrong", code=code, after_text="partial ")
    err = await expect_error(client_for(server, api, session))
    assert err.error_class is expected


async def test_responses_failed_event(server, session):
    server.stream_error("context too long", code="context_length_exceeded", failed=True)
    err = await expect_error(client_for(server, "openai-responses", session))
    assert err.error_class is ErrorClass.CONTEXT_OVERFLOW


@pytest.mark.parametrize("api", APIS)
async def test_stream_without_terminal_event_is_bad_response(server, session, api):
    server.reply("never finished", terminal=False)
    err = await expect_error(client_for(server, api, session))
    assert err.error_class is ErrorClass.BAD_RESPONSE


@pytest.mark.parametrize("api", APIS)
async def test_malformed_bodies_are_bad_response(server, session, api):
    server.raw(200, "{not json")
    assert (await expect_error(client_for(server, api, session))).error_class \
        is ErrorClass.BAD_RESPONSE
    server.raw(200, "data: {broken\n\n", content_type="text/event-stream")
    assert (await expect_error(client_for(server, api, session))).error_class \
        is ErrorClass.BAD_RESPONSE
    server.raw(200, '{"unexpected": true}')
    assert (await expect_error(client_for(server, api, session))).error_class \
        is ErrorClass.BAD_RESPONSE


@pytest.mark.parametrize("api", APIS)
async def test_connection_dropped_mid_stream(server, session, api):
    server.reply("abcdefgh", chunks=4, drop_after=1)
    err = await expect_error(client_for(server, api, session))
    assert err.error_class is ErrorClass.UNREACHABLE


class NoSuchHostResolver(aiohttp.abc.AbstractResolver):
    """A resolver that knows no name: DNS failure without asking real DNS."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def resolve(self, host, port=0, family=socket.AF_INET):
        self.asked.append(host)
        raise OSError(socket.EAI_NONAME, "Name or service not known")

    async def close(self) -> None:
        pass


@pytest.mark.parametrize("api", APIS)
async def test_refused_and_dns_are_unreachable(session, api):
    err = await expect_error(client_for(f"http://127.0.0.1:{closed_port()}/v1", api, session))
    assert err.error_class is ErrorClass.UNREACHABLE
    resolver = NoSuchHostResolver()
    async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(resolver=resolver)) as stub_dns:
        err = await expect_error(client_for("http://no-such-host.invalid/v1", api, stub_dns))
    assert err.error_class is ErrorClass.UNREACHABLE and "DNS" in err.message
    assert resolver.asked == ["no-such-host.invalid"]


FAST = {"connectSeconds": 1, "firstTokenSeconds": 0.3, "idleSeconds": 0.3, "totalSeconds": 5}


@pytest.mark.parametrize("api", APIS)
async def test_first_token_timeout(server, session, api):
    server.hang()
    start = time.monotonic()
    err = await expect_error(client_for(server, api, session, timeouts=FAST))
    assert err.error_class is ErrorClass.TIMEOUT and "first token" in err.message
    assert time.monotonic() - start < 2


@pytest.mark.parametrize("api", APIS)
async def test_idle_timeout(server, session, api):
    server.reply("abcdef", chunks=3, stall_after=1)
    err = await expect_error(client_for(server, api, session, timeouts=FAST))
    assert err.error_class is ErrorClass.TIMEOUT and "idle" in err.message


KEEPALIVE_LIMITS = {**FAST, "firstTokenSeconds": 0.2, "idleSeconds": 0.2}


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("kind", ["comment", "event"])
async def test_keepalives_do_not_defeat_the_first_token_timeout(server, session, api, kind):
    # A hosted proxy sends its preamble, then keepalives every 50 ms while the model
    # produces nothing: the first-token deadline must still fire, not the total one.
    server.reply("late", keepalive=0.03, keepalive_kind=kind, think=10)
    start = time.monotonic()
    err = await expect_error(client_for(server, api, session, timeouts=KEEPALIVE_LIMITS))
    assert err.error_class is ErrorClass.TIMEOUT and "first token" in err.message
    assert time.monotonic() - start < 2


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("kind", ["comment", "event"])
async def test_keepalives_do_not_reset_the_idle_timeout(server, session, api, kind):
    server.reply("abcdef", chunks=3, stall_after=1, keepalive=0.03, keepalive_kind=kind)
    start = time.monotonic()
    err = await expect_error(client_for(server, api, session, timeouts=KEEPALIVE_LIMITS))
    assert err.error_class is ErrorClass.TIMEOUT and "idle" in err.message
    assert time.monotonic() - start < 2


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("kind", ["comment", "event"])
async def test_keepalives_within_the_limits_are_harmless(server, session, api, kind):
    server.reply("fine answer", chunks=2, keepalive=0.03, keepalive_kind=kind, think=0.06,
                 delay=0.05)
    done = await client_for(server, api, session, timeouts=KEEPALIVE_LIMITS).complete(REQ)
    assert done.text == "fine answer"


@pytest.mark.parametrize("api", APIS)
async def test_streamed_reasoning_counts_as_the_first_token(server, session, api):
    # Decision (documented in bridge/models/http.py): reasoning is the model working, so it
    # ends the first-token wait; the answer text then only has to keep within idleSeconds.
    server.reply("answer text", reasoning="working on it", chunks=2, delay=0.15,
                 keepalive=0.03)
    timeouts = {**FAST, "firstTokenSeconds": 0.08, "idleSeconds": 0.3}
    done = await client_for(server, api, session, timeouts=timeouts).complete(REQ)
    assert done.text == "answer text"


async def test_whitespace_before_a_json_body_is_not_the_first_token(session):
    # Non-streamed replies: some proxies send whitespace while the model works.
    from aiohttp import web

    async def handler(request):
        resp = web.StreamResponse(headers={"content-type": "application/json"})
        await resp.prepare(request)
        for _ in range(40):
            await resp.write(b"\n")
            await asyncio.sleep(0.05)
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        start = time.monotonic()
        err = await expect_error(client_for(f"http://127.0.0.1:{port}/v1",
                                            "openai-completions", session, timeouts=FAST))
        assert err.error_class is ErrorClass.TIMEOUT and "first token" in err.message
        assert time.monotonic() - start < 1.5
    finally:
        await runner.cleanup()


async def test_total_timeout(server, session):
    server.reply("abcdefghij", chunks=10, delay=0.1)
    timeouts = {**FAST, "totalSeconds": 0.35}
    err = await expect_error(client_for(server, "openai-completions", session,
                                        timeouts=timeouts))
    assert err.error_class is ErrorClass.TIMEOUT and "total" in err.message


async def test_connect_timeout(session, monkeypatch):
    # An address that swallows SYNs is not available offline; simulate the connector stall.
    import aiohttp

    async def slow_connect(*args, **kwargs):
        raise aiohttp.ConnectionTimeoutError("Connection timeout to host")

    monkeypatch.setattr(aiohttp.TCPConnector, "connect", slow_connect)
    err = await expect_error(client_for("http://127.0.0.1:9/v1", "openai-completions", session))
    assert err.error_class is ErrorClass.TIMEOUT and "connect" in err.message


@pytest.mark.parametrize("api", APIS)
async def test_missing_key_for_hosted_provider_is_auth_without_a_call(session, api):
    cfg = make_config({"anthropic": provider("http://127.0.0.1:9/v1", api, "m")})
    err = await expect_error(make_client(cfg.model("anthropic/m"), session))
    assert err.error_class is ErrorClass.AUTH and "ANTHROPIC_API_KEY" in err.message


@pytest.mark.parametrize("api", APIS)
async def test_secrets_never_in_errors(session, api):
    wrong = "sk-test-VERYSECRET-0123456789"
    right = "right-key-TOPSECRET-42"

    def check(err: ModelError, expected: ErrorClass, *secrets: str) -> None:
        assert err.error_class is expected, err
        for text in (str(err), repr(err), err.message):
            for secret in secrets:
                assert secret not in text, text
        assert "[REDACTED]" in err.message, err.message

    async with FakeModelServer(api_key=right, echo_key=True) as server:
        # 1. The server rejects the key and repeats it in its 401.
        err = await expect_error(client_for(server, api, session, apiKey=wrong))
        check(err, ErrorClass.AUTH, wrong, "VERYSECRET")
        assert server.requests[-1].headers.get("x-api-key", "").endswith(wrong) or \
            server.requests[-1].headers.get("authorization") == f"Bearer {wrong}"
        authorized = client_for(server, api, session, apiKey=right)
        # 2. An accepted key echoed in a later 401 (revoked upstream, say).
        server.error(401, f"key {right} was revoked")
        check(await expect_error(authorized), ErrorClass.AUTH, right, "TOPSECRET")
        assert server.pending == 0
        # 3. Echoed in another error status, with and without a Bearer prefix.
        server.error(400, f"bad request from Authorization: Bearer {right} ({right})")
        check(await expect_error(authorized), ErrorClass.BAD_REQUEST, right, "TOPSECRET")
        server.error(500, f"upstream said no to {right}")
        check(await expect_error(authorized), ErrorClass.SERVER_ERROR, right, "TOPSECRET")
        # 4. Echoed in an error event inside a 200 stream.
        server.stream_error(f"failed for key {right}", code="server_error")
        check(await expect_error(authorized), ErrorClass.SERVER_ERROR, right, "TOPSECRET")
        assert server.pending == 0


async def test_cancellation_propagates(server, session):
    server.hang()
    task = asyncio.create_task(client_for(server, "openai-responses", session).complete(REQ))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
