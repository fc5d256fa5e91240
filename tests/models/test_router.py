"""ModelRouter: fallback order, stop classes, cooldown and probe, timeouts, reporting."""

from __future__ import annotations

import logging
import time

import aiohttp
import pytest

from bridge.models.base import AllModelsFailed, ErrorClass, ModelError, ModelRequest, Turn
from bridge.models.router import ModelRouter
from tests.models.conftest import FakeClock, closed_port, make_config, provider

REQ = ModelRequest(None, (Turn.text("user", "hello"),))


def two_providers(primary_url: str, fallback_url: str, *, timeouts=None, third_url=None):
    local = provider(primary_url, "openai-completions", "qwen")
    if timeouts:
        local["timeouts"] = timeouts
    providers = {"local": local,
                 "hosted": provider(fallback_url, "anthropic-messages", "claude")}
    fallbacks = ["hosted/claude"]
    if third_url:
        providers["spare"] = provider(third_url, "openai-responses", "gpt")
        fallbacks.append("spare/gpt")
    return make_config(providers, "local/qwen", tuple(fallbacks))


CANDS = ["local/qwen", "hosted/claude"]


@pytest.fixture
async def router_factory():
    routers = []

    def make(config, **kw):
        r = ModelRouter(lambda: config, **kw)
        routers.append(r)
        return r

    yield make
    for r in routers:
        await r.aclose()


async def test_primary_answers(server, server2, router_factory):
    cfg = two_providers(server.base_url, server2.root_url)
    server.reply("from local")
    reply = await router_factory(cfg).complete(cfg.candidates(cfg.default_selection()), REQ)
    assert (reply.text, reply.model_ref) == ("from local", "local/qwen")
    assert [(a.model_ref, a.error_class) for a in reply.attempts] == [("local/qwen", None)]
    assert not reply.fell_back
    assert server2.requests == []


@pytest.mark.parametrize("failure", ["500", "429", "404", "401", "empty", "drop", "bad_json"])
async def test_falls_through_in_order(server, server2, router_factory, failure):
    cfg = two_providers(server.base_url, server2.root_url)
    {"500": lambda: server.error(500), "429": lambda: server.error(429),
     "404": lambda: server.error(404), "401": lambda: server.error(401),
     "empty": lambda: server.reply("<think>only</think>"),
     "drop": lambda: server.reply("abcd", drop_after=1),
     "bad_json": lambda: server.raw(200, "{oops")}[failure]()
    server2.reply("from hosted")
    reply = await router_factory(cfg).complete(CANDS, REQ)
    assert (reply.text, reply.model_ref) == ("from hosted", "hosted/claude")
    assert [a.model_ref for a in reply.attempts] == CANDS
    assert reply.attempts[0].error_class is not None and reply.attempts[1].error_class is None
    assert reply.fell_back


async def test_third_candidate_when_two_fail(server, server2, router_factory):
    async with type(server)() as server3:
        cfg = two_providers(server.base_url, server2.root_url, third_url=server3.base_url)
        server.error(503)
        server2.error(529)
        server3.reply("third")
        reply = await router_factory(cfg).complete(cfg.candidates(cfg.default_selection()), REQ)
        assert reply.model_ref == "spare/gpt"
        assert [a.error_class for a in reply.attempts] == [
            ErrorClass.OVERLOADED, ErrorClass.OVERLOADED, None]


@pytest.mark.parametrize(("status", "message", "expected"), [
    (400, "temperature out of range", ErrorClass.BAD_REQUEST),
    (400, "This model's maximum context length is 4096 tokens", ErrorClass.CONTEXT_OVERFLOW),
])
async def test_no_fallback_on_request_errors(server, server2, router_factory, status, message,
                                             expected):
    cfg = two_providers(server.base_url, server2.root_url)
    server.error(status, message)
    router = router_factory(cfg)
    with pytest.raises(AllModelsFailed) as err:
        await router.complete(CANDS, REQ)
    assert [a.error_class for a in err.value.attempts] == [expected]
    assert err.value.context_overflow is (expected is ErrorClass.CONTEXT_OVERFLOW)
    assert server2.requests == []
    # Not the model's fault: no cooldown, the next turn tries it again.
    assert router.status().get("local/qwen", {}).get("state") in (None, "ok")


async def test_all_fail_lists_every_attempt(server, server2, router_factory):
    cfg = two_providers(server.base_url, server2.root_url)
    server.error(500)
    server2.error(401)
    with pytest.raises(AllModelsFailed) as err:
        await router_factory(cfg).complete(CANDS, REQ)
    assert [(a.model_ref, a.error_class) for a in err.value.attempts] == [
        ("local/qwen", ErrorClass.SERVER_ERROR), ("hosted/claude", ErrorClass.AUTH)]
    assert "local/qwen" in str(err.value) and "hosted/claude" in str(err.value)
    assert not err.value.context_overflow


async def test_cooldown_steps_and_probe(server, server2, router_factory):
    clock = FakeClock()
    cfg = two_providers(server.base_url, server2.root_url)
    router = router_factory(cfg, clock=clock)

    async def turn():
        return await router.complete(CANDS, REQ)

    server.error(500)
    assert (await turn()).model_ref == "hosted/claude"
    assert router.status()["local/qwen"]["state"] == "cooling"
    assert router.status()["local/qwen"]["cooldown_remaining_s"] == 30
    # While cooling the primary is skipped without a request.
    calls = len(server.requests)
    clock.advance(29)
    reply = await turn()
    assert reply.model_ref == "hosted/claude" and len(server.requests) == calls
    assert reply.attempts[0].skipped and reply.attempts[0].model_ref == "local/qwen"
    # Cooldown over: one probe; it fails again -> 60 s.
    clock.advance(2)
    server.error(500)
    await turn()
    assert len(server.requests) == calls + 1
    assert router.status()["local/qwen"]["cooldown_remaining_s"] == 60
    clock.advance(61)
    server.error(500)
    await turn()
    assert router.status()["local/qwen"]["cooldown_remaining_s"] == 300
    clock.advance(301)
    server.error(500)
    await turn()
    assert router.status()["local/qwen"]["cooldown_remaining_s"] == 300  # stays at 5 min
    # A successful probe lets it back in for good.
    clock.advance(301)
    server.reply("back")
    assert (await turn()).model_ref == "local/qwen"
    assert "local/qwen" not in router.status()
    server.error(500)
    await turn()
    assert router.status()["local/qwen"]["cooldown_remaining_s"] == 30  # reset


async def test_retry_after_extends_cooldown(server, server2, router_factory):
    clock = FakeClock()
    cfg = two_providers(server.base_url, server2.root_url)
    router = router_factory(cfg, clock=clock)
    server.error(429, "slow down", headers={"retry-after": "120"})
    await router.complete(CANDS, REQ)
    assert router.status()["local/qwen"] == {
        "state": "cooling", "failures": 1, "cooldown_remaining_s": 120.0,
        "last_error": "rate_limited", "last_message": router.status()["local/qwen"][
            "last_message"]}
    clock.advance(100)
    assert (await router.complete(CANDS, REQ)).attempts[0].skipped


async def test_when_all_cool_the_earliest_is_still_tried(server, server2, router_factory):
    clock = FakeClock()
    cfg = two_providers(server.base_url, server2.root_url)
    router = router_factory(cfg, clock=clock)
    server.error(500)
    await router.complete(CANDS, REQ)  # local cools until +30 s; hosted answers
    clock.advance(10)
    server2.error(429, headers={"retry-after": "100"})
    with pytest.raises(AllModelsFailed) as err:
        await router.complete(CANDS, REQ)  # local skipped; hosted cools until +110 s
    assert [a.skipped for a in err.value.attempts] == [True, False]
    clock.advance(10)
    # Both cooling: rather than fail untried, call the one whose cooldown ends first.
    server.reply("local while cooling")
    reply = await router.complete(CANDS, REQ)
    assert reply.model_ref == "local/qwen" and not reply.attempts[0].skipped
    # Local is healthy again; when it fails, hosted is still cooling and is skipped.
    hosted_calls = len(server2.requests)
    server.error(500)
    clock.advance(10)
    with pytest.raises(AllModelsFailed) as err:
        await router.complete(CANDS, REQ)
    assert [(a.model_ref, a.skipped) for a in err.value.attempts] == [
        ("local/qwen", False), ("hosted/claude", True)]
    assert len(server2.requests) == hosted_calls


async def test_closed_port_primary_answered_by_fallback(server2, router_factory):
    cfg = two_providers(f"http://127.0.0.1:{closed_port()}/v1", server2.root_url)
    server2.reply("fallback here")
    start = time.monotonic()
    reply = await router_factory(cfg).complete(CANDS, REQ)
    assert reply.model_ref == "hosted/claude"
    assert reply.attempts[0].error_class is ErrorClass.UNREACHABLE
    assert time.monotonic() - start < 1


async def test_hanging_primary_answered_after_first_token_timeout(server, server2,
                                                                  router_factory):
    timeouts = {"connectSeconds": 1, "firstTokenSeconds": 0.3, "idleSeconds": 5,
                "totalSeconds": 10}
    cfg = two_providers(server.base_url, server2.root_url, timeouts=timeouts)
    server.hang()
    server2.reply("fallback after timeout")
    start = time.monotonic()
    reply = await router_factory(cfg).complete(CANDS, REQ)
    elapsed = time.monotonic() - start
    assert reply.text == "fallback after timeout"
    assert reply.attempts[0].error_class is ErrorClass.TIMEOUT
    assert 0.25 < reply.attempts[0].duration_s < 1.0
    assert 0.25 < elapsed < 1.5


async def test_duplicates_removed_and_unknown_refs_fall_through(server, server2,
                                                                router_factory):
    cfg = two_providers(server.base_url, server2.root_url)
    server.error(500)
    reply = await router_factory(cfg).complete(
        ["local/qwen", "local/qwen", "nope/none", "hosted/claude"], REQ)
    assert [a.model_ref for a in reply.attempts] == ["local/qwen", "nope/none",
                                                     "hosted/claude"]
    assert reply.attempts[1].error_class is ErrorClass.NOT_FOUND
    assert len(server.requests) == 1


async def test_request_built_per_model(server, server2, router_factory):
    cfg = two_providers(server.base_url, server2.root_url)
    server.error(503)
    seen = []

    async def build(model):
        seen.append((model.ref, model.api))
        return ModelRequest(None, (Turn.text("user", f"for {model.provider}"),))

    reply = await router_factory(cfg).complete(CANDS, build)
    assert seen == [("local/qwen", "openai-completions"), ("hosted/claude", "anthropic-messages")]
    assert reply.text == "echo: for hosted"

    def cannot_fit(model):
        if model.provider == "local":
            raise ModelError(ErrorClass.CONTEXT_OVERFLOW, "too long even after trimming")
        return REQ

    with pytest.raises(AllModelsFailed) as err:
        await router_factory(cfg).complete(CANDS, cannot_fit)
    assert err.value.context_overflow


async def test_config_is_read_per_call(server, server2):
    configs = [two_providers(server.base_url, server2.root_url)]
    router = ModelRouter(lambda: configs[-1])
    try:
        server.reply("one")
        assert (await router.complete(["local/qwen"], REQ)).text == "one"
        # Hot reload: local now points at the second server.
        configs.append(two_providers(server2.base_url, server2.root_url))
        server2.reply("two")
        assert (await router.complete(["local/qwen"], REQ)).text == "two"
    finally:
        await router.aclose()


async def test_one_info_log_line_per_turn(server, server2, router_factory, caplog):
    cfg = two_providers(server.base_url, server2.root_url)
    server.error(500)
    with caplog.at_level(logging.INFO, logger="bridge.models.router"):
        await router_factory(cfg).complete(CANDS, REQ)
    lines = [r for r in caplog.records if r.name == "bridge.models.router"]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO
    msg = lines[0].getMessage()
    assert "answered=hosted/claude" in msg and "local/qwen=server_error" in msg
    assert "hosted/claude=ok" in msg


async def test_router_log_level_follows_the_outcome(server, server2, router_factory, caplog):
    """First candidate answers: DEBUG only (the core's turn line is the INFO one);
    every candidate fails: one WARNING."""
    cfg = two_providers(server.base_url, server2.root_url)
    router = router_factory(cfg)
    with caplog.at_level(logging.DEBUG, logger="bridge.models.router"):
        await router.complete(CANDS, REQ)
    lines = [r for r in caplog.records if r.name == "bridge.models.router"]
    assert [r.levelno for r in lines] == [logging.DEBUG]
    assert "answered=local/qwen" in lines[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="bridge.models.router"):
        await router.complete(CANDS, REQ)
    assert not [r for r in caplog.records if r.name == "bridge.models.router"]
    caplog.clear()
    server.error(400)
    server2.error(400)
    with caplog.at_level(logging.INFO, logger="bridge.models.router"), \
            pytest.raises(AllModelsFailed):
        await router.complete(CANDS, REQ)
    lines = [r for r in caplog.records if r.name == "bridge.models.router"]
    assert [r.levelno for r in lines] == [logging.WARNING]
    assert "answered=none" in lines[0].getMessage()


async def test_session_ownership(server):
    cfg = make_config({"local": provider(server.base_url, "openai-responses", "m")})
    own = ModelRouter(lambda: cfg)
    await own.complete(["local/m"], REQ)
    session = own._session
    await own.aclose()
    assert session is not None and session.closed
    async with aiohttp.ClientSession() as shared:
        borrowed = ModelRouter(lambda: cfg, session=shared)
        await borrowed.complete(["local/m"], REQ)
        await borrowed.aclose()
        assert not shared.closed


async def test_no_candidates_is_a_value_error(router_factory):
    with pytest.raises(ValueError):
        await router_factory(make_config({})).complete([], REQ)


async def test_only_one_probe_in_flight(server, server2, router_factory):
    import asyncio

    clock = FakeClock()
    cfg = two_providers(server.base_url, server2.root_url)
    router = router_factory(cfg, clock=clock)
    server.error(500)
    await router.complete(CANDS, REQ)
    clock.advance(31)
    server.reply("slow probe answer", chunks=2, delay=0.2)
    probe = asyncio.create_task(router.complete(CANDS, REQ))
    await asyncio.sleep(0.1)
    assert router.status()["local/qwen"]["state"] == "probing"
    other = await router.complete(CANDS, REQ)  # meanwhile another chat's turn
    assert other.model_ref == "hosted/claude"
    assert other.attempts[0].skipped and other.attempts[0].message == "being probed"
    assert (await probe).model_ref == "local/qwen"
    assert len([r for r in server.requests if r.api != "models"]) == 2


async def test_one_probe_with_async_request_builder_and_concurrent_turns(
        server, server2, router_factory):
    # The conversation core builds each request asynchronously (store, media): the probe
    # must be claimed before that await, or every concurrent turn probes the model.
    import asyncio

    clock = FakeClock()
    cfg = two_providers(server.base_url, server2.root_url)
    router = router_factory(cfg, clock=clock)
    server.error(500)
    await router.complete(CANDS, REQ)
    clock.advance(31)
    server.default("recovered", chunks=2, delay=0.1)

    async def build(model):
        await asyncio.sleep(0.05)
        return REQ

    before = len([r for r in server.requests if r.api != "models"])
    replies = await asyncio.gather(*(router.complete(CANDS, build) for _ in range(5)))
    probes = len([r for r in server.requests if r.api != "models"]) - before
    assert probes == 1
    assert sorted(r.model_ref for r in replies) == ["hosted/claude"] * 4 + ["local/qwen"]
    skipped = [r.attempts[0] for r in replies if r.model_ref == "hosted/claude"]
    assert all(a.skipped and a.message == "being probed" for a in skipped)


async def test_a_model_being_probed_is_never_forced(server, server2, router_factory):
    # Every candidate cooling: the earliest is forced -- but not while another turn probes it.
    import asyncio

    clock = FakeClock()
    cfg = make_config({"local": provider(server.base_url, "openai-completions", "qwen")},
                      "local/qwen")
    router = router_factory(cfg, clock=clock)
    server.error(500)
    with pytest.raises(AllModelsFailed):
        await router.complete(["local/qwen"], REQ)
    clock.advance(5)  # still cooling: forced anyway, as the only candidate

    async def build(model):
        await asyncio.sleep(0.05)
        return REQ

    server.default("ok", chunks=2, delay=0.1)
    results = await asyncio.gather(*(router.complete(["local/qwen"], build)
                                     for _ in range(3)), return_exceptions=True)
    answered = [r for r in results if not isinstance(r, BaseException)]
    failed = [r for r in results if isinstance(r, AllModelsFailed)]
    assert len(answered) == 1 and len(failed) == 2
    assert all(f.attempts[0].message == "being probed" for f in failed)
    assert len([r for r in server.requests if r.api != "models"]) == 2


@pytest.mark.parametrize("base_url", ["", "localhost:1234/v1", "http://[bad/v1"])
async def test_invalid_base_url_is_unreachable_and_falls_through(server2, router_factory,
                                                                 base_url):
    # A config built in code (the loader rejects these): the chain must not stop here.
    cfg = two_providers(base_url, server2.root_url)
    server2.reply("from hosted")
    reply = await router_factory(cfg).complete(CANDS, REQ)
    assert reply.model_ref == "hosted/claude"
    assert reply.attempts[0].error_class is ErrorClass.UNREACHABLE
    assert "invalid baseUrl" in reply.attempts[0].message


async def test_lm_studio_with_no_model_loaded_falls_through(server, server2, router_factory):
    cfg = two_providers(server.base_url, server2.root_url)
    server.error(400, body={"error": "No models loaded. Please load a model in the developer "
                                     "page or use the 'lms load' command."})
    server2.reply("from hosted")
    reply = await router_factory(cfg).complete(CANDS, REQ)
    assert reply.model_ref == "hosted/claude"
    assert reply.attempts[0].error_class is ErrorClass.OVERLOADED


@pytest.mark.parametrize("api", ["openai-responses", "openai-completions",
                                 "anthropic-messages"])
@pytest.mark.parametrize(("header", "value", "echoed"), [
    ("api-key", "azure0123456789abcdef", "azure0123456789abcdef"),  # Azure OpenAI style
    ("Authorization", "Bearer hdr-token-0123456789", "hdr-token-0123456789"),
    ("X-Api-Key", "custom-key-0123456789", "custom-key-0123456789"),
])
async def test_keys_sent_as_headers_never_reach_the_error_or_logs(
        server, router_factory, caplog, api, header, value, echoed):
    cfg = make_config({"az": provider(server.url_for(api), api, "gpt",
                                      headers={header: value})}, "az/gpt")
    server.error(401, f"Access denied due to invalid subscription key '{echoed}'.")
    with caplog.at_level(logging.DEBUG), pytest.raises(AllModelsFailed) as err:
        await router_factory(cfg).complete(["az/gpt"], REQ)
    assert server.requests[-1].headers[header.lower()] == value  # the header was sent
    assert err.value.attempts[0].error_class is ErrorClass.AUTH
    for text in (str(err.value), repr(err.value.attempts), caplog.text):
        assert echoed not in text
    assert "[REDACTED]" in str(err.value)
