"""Real servers' quirks (the fake's profiles, notes/quirks.md) through Palaver's real clients.

Each test shows that Palaver gets the final text from a server with that quirk, or a
classified error the router falls back on.  Those marked "bit us" failed before the wire
fix: list content to a string-only chat template, untyped assistant items to llama.cpp,
llama.cpp's typeless mid-stream error, LiteLLM's empty "completed" answer.
"""

from __future__ import annotations

import io

import pytest
from PIL import Image

from bridge.images import ImageLimits, prepare_image
from bridge.models.base import (
    ErrorClass,
    ImagePart,
    ModelError,
    ModelRequest,
    TextPart,
    Turn,
)
from bridge.models.clients import make_client
from bridge.models.router import ModelRouter
from tests.fakes.model_server import PROFILES, TEMPLATE_ERROR, FakeModelServer
from tests.models.conftest import APIS, make_config, provider

HISTORY = ModelRequest("Be terse.", (
    Turn.text("user", "first question"),
    Turn.text("assistant", "first answer"),
    Turn.text("user", "second question"),
))
STREAMS = [pytest.param(True, id="streamed"), pytest.param(False, id="json")]


def client(server, api, session, **model):
    cfg = make_config({"p": provider(server.url_for(api), api, **{"models": [
        {"id": "m", **model}]})})
    return make_client(cfg.model("p/m"), session)


async def failure(c, request=HISTORY) -> ModelError:
    with pytest.raises(ModelError) as err:
        await c.complete(request)
    return err.value


def turns_of(body):
    return body["input"] if "input" in body else body["messages"]


def gif_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buf, "GIF")
    return buf.getvalue()


def test_profiles_are_named_and_selectable():
    assert {"default", "llamacpp-template", "jinja-strict", "ollama", "llamacpp", "vllm",
            "litellm-bridge"} <= set(PROFILES)
    server = FakeModelServer(profile="ollama")
    assert server.profile == "ollama"
    assert server.use_profile("vllm") is server and server.profile == "vllm"
    with pytest.raises(ValueError, match="unknown profile"):
        server.profile = "lmstudi0"


# ----------------------------------------------------------------------------- templates


@pytest.mark.parametrize("profile", ["llamacpp-template", "jinja-strict"])
@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("stream", STREAMS)
async def test_string_only_template_answers_text_history(server, session, profile, api,
                                                         stream):
    """Bit us: Responses sent every user turn as a list -> the template's 500."""
    server.use_profile(profile).reply("Paris.", stream=None if stream else False)
    done = await client(server, api, session).complete(HISTORY)
    assert done.text == "Paris."
    assert all(isinstance(t["content"], str) for t in turns_of(server.requests[-1].json))


async def test_string_only_template_refuses_lists_as_llama_cpp_python_does(server, session):
    server.use_profile("llamacpp-template")
    async with session.post(f"{server.base_url}/chat/completions", json={
            "model": "m", "messages": [{"role": "user", "content": [
                {"type": "text", "text": "hi"}]}]}) as resp:
        assert resp.status == 500
        assert await resp.json() == {"error": {"message": TEMPLATE_ERROR,
                                               "type": "internal_server_error",
                                               "param": None, "code": None}}
    # An image needs a list: the template's 500 is a server error the router falls past.
    img = ImagePart(b"\x89PNG fake", "image/png")
    req = ModelRequest(None, (Turn("user", (TextPart("what is it?"), img)),))
    err = await failure(client(server, "openai-completions", session,
                               input=["text", "image"]), req)
    assert err.error_class is ErrorClass.SERVER_ERROR and err.status == 500
    assert "can only concatenate str" in err.message


async def test_router_falls_back_past_a_template_failure(server, server2, session):
    server.use_profile("llamacpp-template")
    server2.reply("a red square")
    cfg = make_config({
        "local": provider(server.base_url, "openai-completions",
                          models=[{"id": "smol", "input": ["text", "image"]}]),
        "spare": provider(server2.base_url, "openai-responses",
                          models=[{"id": "big", "input": ["text", "image"]}]),
    }, "local/smol", ("spare/big",))
    img = ImagePart(b"\x89PNG fake", "image/png")
    req = ModelRequest(None, (Turn("user", (TextPart("what is it?"), img)),))
    router = ModelRouter(lambda: cfg, session=session)
    reply = await router.complete(["local/smol", "spare/big"], req)
    assert (reply.text, reply.model_ref) == ("a red square", "spare/big")
    assert [a.error_class for a in reply.attempts] == [ErrorClass.SERVER_ERROR, None]


# ----------------------------------------------------------------------------- Ollama


@pytest.mark.parametrize("stream", STREAMS)
async def test_ollama_chat_reasoning_field_is_dropped(server, session, stream):
    server.use_profile("ollama").reply("Visible.", reasoning="SECRET thought",
                                       stream=None if stream else False)
    done = await client(server, "openai-completions", session).complete(HISTORY)
    assert done.text == "Visible."


async def test_ollama_reasoning_raw_wire_uses_reasoning(server, session):
    server.use_profile("ollama").reply("ok", reasoning="deep")
    async with session.post(f"{server.base_url}/chat/completions", json={
            "model": "m", "messages": [], "stream": True}) as resp:
        raw = await resp.text()
    assert '"reasoning": "' in raw and "reasoning_content" not in raw


@pytest.mark.parametrize("stream", STREAMS)
async def test_ollama_limit_is_max_tokens_not_max_completion_tokens(server, session, stream):
    server.use_profile("ollama").reply("one two three four five six",
                                       stream=None if stream else False)
    done = await client(server, "openai-completions", session, maxTokens=3).complete(HISTORY)
    body = server.requests[-1].json
    assert body["max_tokens"] == 3 and "max_completion_tokens" not in body
    assert (done.text, done.finish_reason) == ("one two three", "length")


async def test_ollama_ignores_max_completion_tokens(server, session):
    server.use_profile("ollama").reply("one two three four")
    async with session.post(f"{server.base_url}/chat/completions", json={
            "model": "m", "messages": [], "max_completion_tokens": 2}) as resp:
        body = await resp.json()
    assert body["choices"][0]["message"]["content"] == "one two three four"


@pytest.mark.parametrize("api", ["openai-responses", "openai-completions"])
async def test_ollama_refuses_gif_and_palaver_sends_png(server, session, api):
    server.use_profile("ollama")
    vision = client(server, api, session, input=["text", "image"])
    gif = gif_bytes()
    raw_gif = ImagePart(gif, "image/gif")
    err = await failure(vision, ModelRequest(None, (Turn("user", (TextPart("x"), raw_gif)),)))
    assert err.error_class is ErrorClass.BAD_REQUEST and "invalid image input" in err.message
    # What the pipeline sends: bridge.images re-encodes every image as PNG or JPEG.
    prepared = prepare_image(gif, ImageLimits())
    assert prepared.mime in ("image/png", "image/jpeg")
    server.reply("a red square")
    img = ImagePart(prepared.data, prepared.mime)
    done = await vision.complete(ModelRequest(None, (Turn("user", (TextPart("x"), img)),)))
    assert done.text == "a red square"


@pytest.mark.parametrize("api", ["openai-responses", "openai-completions"])
async def test_ollama_mid_stream_error_just_stops_and_is_bad_response(server, session, api):
    server.use_profile("ollama").stream_error("out of memory", after_text="Partial")
    err = await failure(client(server, api, session))
    assert err.error_class is ErrorClass.BAD_RESPONSE
    assert "stream ended without" in err.message


async def test_ollama_responses_never_incomplete(server, session):
    server.use_profile("ollama").reply("one two three four five")
    done = await client(server, "openai-responses", session, maxTokens=2).complete(HISTORY)
    # Truncated, but Ollama says "completed": the text is all Palaver can go by.
    assert (done.text, done.finish_reason) == ("one two", "stop")


@pytest.mark.parametrize("stream", STREAMS)
async def test_ollama_responses_summary_reasoning_dropped(server, session, stream):
    server.use_profile("ollama").reply("Visible.", reasoning="SECRET thought",
                                       stream=None if stream else False)
    done = await client(server, "openai-responses", session).complete(HISTORY)
    assert done.text == "Visible."


# ----------------------------------------------------------------------------- llama.cpp


@pytest.mark.parametrize("stream", STREAMS)
async def test_llamacpp_responses_takes_palaver_assistant_items(server, session, stream):
    """Bit us: an assistant item without "type": "message" -> 400 Cannot determine type."""
    server.use_profile("llamacpp").reply("Second answer.", stream=None if stream else False)
    done = await client(server, "openai-responses", session).complete(HISTORY)
    assert done.text == "Second answer."
    assistant = server.requests[-1].json["input"][1]
    assert assistant == {"type": "message", "role": "assistant", "content": "first answer"}


async def test_llamacpp_untyped_assistant_item_is_refused(server, session):
    server.use_profile("llamacpp")
    async with session.post(f"{server.base_url}/responses", json={
            "model": "m", "input": [{"role": "user", "content": "a"},
                                    {"role": "assistant", "content": "b"}]}) as resp:
        assert resp.status == 400
        assert await resp.json() == {"error": {
            "code": 400, "message": "Cannot determine type of 'item'",
            "type": "invalid_request_error"}}


async def test_llamacpp_thin_events_and_reasoning_text(server, session):
    server.use_profile("llamacpp").reply("Thin but fine.", reasoning="SECRET", chunks=4)
    done = await client(server, "openai-responses", session).complete(HISTORY)
    assert done.text == "Thin but fine."
    assert done.usage.output_tokens == 3 and done.usage.reasoning_tokens == 0
    async with session.post(f"{server.base_url}/responses", json={
            "model": "m", "input": "hi", "stream": True}) as resp:
        raw = await resp.text()
    assert '"sequence_number"' not in raw and '"output_index": 0, "content_index"' not in raw
    assert 'data: {"type": "response.output_text.delta", "item_id": "msg_1", "delta": ' in raw


@pytest.mark.parametrize("api", ["openai-responses", "openai-completions"])
async def test_llamacpp_typeless_mid_stream_error_is_classified(server, session, api):
    """Bit us on Responses: data: {"error": …} without type was ignored (stream "ended")."""
    server.use_profile("llamacpp").stream_error("context shift failed", after_text="Part")
    err = await failure(client(server, api, session))
    assert err.error_class is ErrorClass.SERVER_ERROR
    assert err.message == "error event (500): server_error: context shift failed"


@pytest.mark.parametrize("api", ["openai-responses", "openai-completions"])
@pytest.mark.parametrize(("status", "message", "expected"), [
    (503, "Loading model", ErrorClass.OVERLOADED),
    (400, "the request exceeds the available context size, try increasing it",
     ErrorClass.CONTEXT_OVERFLOW),
    (500, "boom", ErrorClass.SERVER_ERROR),
    (401, "Invalid API Key", ErrorClass.AUTH),
])
async def test_llamacpp_int_error_codes(server, session, api, status, message, expected):
    server.use_profile("llamacpp").error(status, message)
    err = await failure(client(server, api, session))
    assert err.error_class is expected and err.status == status


async def test_llamacpp_status_completed_at_the_limit(server, session):
    server.use_profile("llamacpp").reply("cut here", finish="length")
    done = await client(server, "openai-responses", session).complete(HISTORY)
    assert (done.text, done.finish_reason) == ("cut here", "stop")


@pytest.mark.parametrize("stream", STREAMS)
async def test_llamacpp_chat_null_content_and_timings(server, session, stream):
    server.use_profile("llamacpp").reply("Chat ok.", reasoning="SECRET",
                                         stream=None if stream else False)
    done = await client(server, "openai-completions", session).complete(HISTORY)
    assert done.text == "Chat ok."


# ----------------------------------------------------------------------------- vLLM


@pytest.mark.parametrize("api", ["openai-responses", "openai-completions"])
@pytest.mark.parametrize("stream", STREAMS)
async def test_vllm_reasoning_dropped(server, session, api, stream):
    server.use_profile("vllm").reply("Visible.", reasoning="SECRET thought",
                                     stream=None if stream else False)
    done = await client(server, api, session).complete(HISTORY)
    assert done.text == "Visible."


async def test_vllm_chat_sends_only_reasoning(server, session):
    server.use_profile("vllm").reply("ok", reasoning="deep", stream=False)
    async with session.post(f"{server.base_url}/chat/completions", json={
            "model": "m", "messages": []}) as resp:
        message = (await resp.json())["choices"][0]["message"]
    assert message["reasoning"] == "deep" and "reasoning_content" not in message


@pytest.mark.parametrize("stream", STREAMS)
async def test_vllm_all_reasoning_answer_is_empty_response(server, session, stream):
    server.use_profile("vllm").reply("", reasoning="thinking until the limit",
                                     finish="length", stream=None if stream else False)
    err = await failure(client(server, "openai-responses", session))
    assert err.error_class is ErrorClass.EMPTY_RESPONSE
    assert err.message.startswith("no text left after removing reasoning")


# ----------------------------------------------------------------------------- LiteLLM


@pytest.mark.parametrize("stream", STREAMS)
async def test_litellm_bridge_answers(server, session, stream):
    server.use_profile("litellm-bridge").reply("Bridged.", reasoning="SECRET",
                                               stream=None if stream else False)
    done = await client(server, "openai-responses", session).complete(HISTORY)
    assert done.text == "Bridged."


async def test_litellm_cut_backend_is_an_empty_completed_response(server, session):
    """Bit us: the user's symptom; now told apart from an answer that was all reasoning."""
    server.use_profile("litellm-bridge").cut()
    err = await failure(client(server, "openai-responses", session))
    assert err.error_class is ErrorClass.EMPTY_RESPONSE
    assert "produced no output at all" in err.message and "chat template" in err.message


async def test_litellm_cut_after_some_text_keeps_it(server, session):
    server.use_profile("litellm-bridge").cut("half an answer", after_chunks=1)
    done = await client(server, "openai-responses", session).complete(HISTORY)
    assert done.text and "half an answer".startswith(done.text)


async def test_router_falls_back_past_litellm_empty_completed(server, server2, session):
    server.use_profile("litellm-bridge").cut()
    server2.reply("from the spare")
    cfg = make_config({"proxy": provider(server.base_url, "openai-responses", "smol"),
                       "spare": provider(server2.base_url, "openai-completions", "big")},
                      "proxy/smol", ("spare/big",))
    reply = await ModelRouter(lambda: cfg, session=session).complete(
        ["proxy/smol", "spare/big"], HISTORY)
    assert (reply.text, reply.model_ref) == ("from the spare", "spare/big")
    assert reply.attempts[0].error_class is ErrorClass.EMPTY_RESPONSE


@pytest.mark.parametrize(("api", "expected"), [
    ("openai-responses", "error event: server_error: backend died"),
    ("openai-completions", "error event (500): backend died"),
])
async def test_litellm_mid_stream_errors(server, session, api, expected):
    server.use_profile("litellm-bridge").stream_error("backend died", after_text="Pa")
    err = await failure(client(server, api, session))
    assert err.error_class is ErrorClass.SERVER_ERROR
    assert err.message == expected


async def test_litellm_string_error_code(server, session):
    server.use_profile("litellm-bridge").error(500, "upstream 500")
    err = await failure(client(server, "openai-responses", session))
    assert err.error_class is ErrorClass.SERVER_ERROR and err.status == 500


# ----------------------------------------------------------------------------- any server


@pytest.mark.parametrize("api", APIS)
async def test_a_stream_cut_before_its_end_is_bad_response(server, session, api):
    server.cut("some text", after_chunks=1)
    err = await failure(client(server, api, session))
    assert err.error_class is ErrorClass.BAD_RESPONSE


async def test_localai_final_response_text_wins_over_streamed_thinking(server, session):
    """LocalAI#9658: thinking streams as output_text deltas and is moved into a reasoning
    item only in response.completed; the final response's text is the answer."""
    import json as _json

    def ev(kind, **data):
        return f"event: {kind}\ndata: {_json.dumps({'type': kind, **data})}\n\n"

    final = {"id": "resp_1", "object": "response", "status": "completed",
             "output": [{"type": "reasoning", "summary": [],
                         "content": [{"type": "reasoning_text", "text": "Let me think."}]},
                        {"type": "message", "role": "assistant",
                         "content": [{"type": "output_text", "text": "Paris.",
                                      "annotations": []}]}],
             "usage": {"input_tokens": 5, "output_tokens": 4, "total_tokens": 9}}
    body = (ev("response.created", response={**final, "status": "in_progress", "output": []})
            + ev("response.output_text.delta", item_id="m", output_index=0, content_index=0,
                 delta="Let me think. ")
            + ev("response.output_text.delta", item_id="m", output_index=0, content_index=0,
                 delta="Paris.")
            + ev("response.completed", response=final))
    server.raw(200, body, content_type="text/event-stream")
    reply = await client(server, "openai-responses", session).complete(HISTORY)
    assert reply.text == "Paris."
