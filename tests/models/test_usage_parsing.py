"""Usage from each API's own fields, streamed and not, against the fake server; the
router's estimate for a server that reports none."""

from __future__ import annotations

import pytest

from bridge.models.base import ErrorClass, ModelError, ModelRequest, Turn, Usage
from bridge.models.router import ModelRouter
from bridge.usage.record import estimate_usage
from tests.models.conftest import APIS, make_config, provider
from tests.models.test_clients import REQ, client_for

STREAMS = [True, False]


def _stream(stream: bool) -> bool | None:
    return None if stream else False


@pytest.mark.parametrize("stream", STREAMS)
async def test_responses_usage_with_cached_and_reasoning_tokens(server, session, stream):
    server.reply("Hi.", stream=_stream(stream),
                 usage={"input": 120, "output": 30, "cached": 100, "reasoning": 12})
    done = await client_for(server, "openai-responses", session).complete(REQ)
    assert done.usage == Usage(input_tokens=120, output_tokens=30, reasoning_tokens=12,
                               cached_tokens=100)
    raw = server.requests[-1]
    assert raw.api == "responses"


@pytest.mark.parametrize("stream", STREAMS)
async def test_completions_usage_with_cached_and_reasoning_tokens(server, session, stream):
    server.reply("Hi.", stream=_stream(stream),
                 usage={"input": 80, "output": 20, "cached": 64, "reasoning": 5})
    done = await client_for(server, "openai-completions", session).complete(REQ)
    assert done.usage == Usage(input_tokens=80, output_tokens=20, reasoning_tokens=5,
                               cached_tokens=64)


async def test_completions_stream_asks_for_the_usage_chunk(server, session):
    """The usage of a streamed chat completion comes only in the final chunk the request
    asks for with ``stream_options.include_usage``."""
    server.reply("Hi.", usage=(9, 4))
    done = await client_for(server, "openai-completions", session).complete(REQ)
    assert server.requests[-1].json["stream_options"] == {"include_usage": True}
    assert (done.usage.input_tokens, done.usage.output_tokens) == (9, 4)


@pytest.mark.parametrize("stream", STREAMS)
async def test_anthropic_usage_adds_the_cache_to_the_prompt(server, session, stream):
    """Anthropic's ``input_tokens`` leaves out cache reads and writes: the prompt is the
    sum, and each part is kept for pricing."""
    server.reply("Hi.", stream=_stream(stream),
                 usage={"input": 10, "output": 25, "cached": 2000, "cache_write": 300})
    done = await client_for(server, "anthropic-messages", session).complete(REQ)
    assert done.usage == Usage(input_tokens=2310, output_tokens=25, cached_tokens=2000,
                               cache_write_tokens=300)


async def test_anthropic_stream_output_comes_from_message_delta(server, session):
    """``message_start`` says output_tokens 1; ``message_delta`` carries the total."""
    server.reply("A longer answer.", usage=(50, 42))
    done = await client_for(server, "anthropic-messages", session).complete(REQ)
    assert (done.usage.input_tokens, done.usage.output_tokens) == (50, 42)


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("stream", STREAMS)
async def test_no_usage_reported_is_zero_and_not_reported(server, session, api, stream):
    server.reply("Hello there.", stream=_stream(stream), usage=False)
    done = await client_for(server, api, session).complete(REQ)
    assert done.usage == Usage()
    assert not done.usage.reported


@pytest.mark.parametrize("api", APIS)
async def test_all_reasoning_answer_keeps_its_usage_on_the_error(server, session, api):
    """A call that used tokens and left no text fails, but says what it used (a hosted
    API bills it)."""
    server.reply("", reasoning="only thinking", usage=(40, 33))
    with pytest.raises(ModelError) as err:
        await client_for(server, api, session).complete(REQ)
    assert err.value.error_class is ErrorClass.EMPTY_RESPONSE
    assert err.value.usage is not None
    assert (err.value.usage.input_tokens, err.value.usage.output_tokens) == (40, 33)


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("stream", STREAMS)
async def test_router_estimates_when_the_server_reports_nothing(server, session, api, stream):
    server.reply("An answer of a few words.", stream=_stream(stream), usage=False)
    cfg = make_config({"p": provider(server.url_for(api), api, "m")})
    reply = await ModelRouter(lambda: cfg, session=session).complete(["p/m"], REQ)
    usage = reply.attempts[-1].usage
    assert usage is not None and usage.estimated
    assert usage == estimate_usage(REQ, "An answer of a few words.")
    assert usage.input_tokens > 0 and usage.output_tokens > 0


@pytest.mark.parametrize("api", APIS)
async def test_router_keeps_reported_usage_unmarked(server, session, api):
    server.reply("Fine.", usage=(70, 3))
    cfg = make_config({"p": provider(server.url_for(api), api, "m")})
    reply = await ModelRouter(lambda: cfg, session=session).complete(["p/m"], REQ)
    usage = reply.attempts[-1].usage
    assert usage is not None and not usage.estimated
    assert (usage.input_tokens, usage.output_tokens) == (70, 3)


async def test_router_puts_a_failed_attempts_reported_usage_on_it(server, session):
    server.reply("", reasoning="thinking only", usage=(40, 33))
    server.reply("Second model answers.", usage=(41, 4))
    cfg = make_config({"a": provider(server.base_url, "openai-completions", "m"),
                       "b": provider(server.base_url, "openai-completions", "m")})
    reply = await ModelRouter(lambda: cfg, session=session).complete(["a/m", "b/m"], REQ)
    failed, answered = reply.attempts
    assert failed.error_class is ErrorClass.EMPTY_RESPONSE
    assert failed.usage is not None and failed.usage.output_tokens == 33
    assert answered.usage is not None and answered.usage.output_tokens == 4


def test_estimate_counts_instructions_turns_and_answer():
    short = estimate_usage(ModelRequest(None, (Turn.text("user", "hi"),)), "ok")
    long = estimate_usage(ModelRequest("x" * 400, (Turn.text("user", "hi " * 200),)),
                          "y" * 400)
    assert long.input_tokens > short.input_tokens + 200
    assert long.output_tokens >= 100 > short.output_tokens
    assert long.estimated and short.estimated


async def test_a_failed_response_keeps_the_usage_it_reports(server, session):
    """``response.failed`` carries the whole response, usage included: a call that
    generated before failing still says what it used."""
    server.stream_error("backend went away", failed=True, after_text="partial")
    with pytest.raises(ModelError) as err:
        await client_for(server, "openai-responses", session).complete(REQ)
    assert err.value.usage is not None and err.value.usage.input_tokens > 0


async def test_an_anthropic_context_overflow_stop_keeps_its_usage(server, session):
    server.reply("cut", finish="model_context_window_exceeded", usage=(190_000, 3))
    with pytest.raises(ModelError) as err:
        await client_for(server, "anthropic-messages", session).complete(REQ)
    assert err.value.error_class is ErrorClass.CONTEXT_OVERFLOW
    assert err.value.usage is not None and err.value.usage.input_tokens == 190_000


@pytest.mark.parametrize("raw", [None, "12", -5, True, {"x": 1}])
def test_junk_token_counts_read_as_zero(raw):
    from bridge.models.http import token_count

    assert token_count(raw) == 0
