"""The StreamListener seam against the fake model server: what a live preview hears.

Only text that passed the reasoning filter reaches ``text()``: never a reasoning field,
item or block, never inline ``<think>`` content, never text a late lone ``</think>`` would
turn into reasoning.  ``thinkTags: "paired"`` models stream at once; a plain model on
``"auto"`` is held until its stream ends, unless the server parsed reasoning out itself.
The router announces each real attempt (not skipped or cooling ones) and gives a
``preview: false`` model no listener.  Cancelling a call closes the connection, and the
fake server sees it and stops writing.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest

from bridge.models.base import AllModelsFailed, ModelRequest, Turn
from bridge.models.clients import make_client
from bridge.models.router import ModelRouter
from tests.fakes.model_server import FakeModelServer, words
from tests.models.conftest import APIS, FakeClock, make_config, provider

REQ = ModelRequest(None, (Turn.text("user", "hello"),))
ANSWER = "The capital of France is Paris, of course."
HANG_GUARD_S = 20


class Recorder:
    """A StreamListener that keeps every call, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.got_text = asyncio.Event()
        self.attempted = asyncio.Event()

    def attempt(self, model_ref: str) -> None:
        self.events.append(("attempt", model_ref))
        self.attempted.set()

    def thinking(self) -> None:
        self.events.append(("thinking", ""))

    def text(self, piece: str) -> None:
        assert piece, "text() is never called with an empty piece"
        self.events.append(("text", piece))
        self.got_text.set()

    @property
    def texts(self) -> list[str]:
        return [p for kind, p in self.events if kind == "text"]

    def since_last_attempt(self) -> list[str]:
        last = max((i for i, (k, _) in enumerate(self.events) if k == "attempt"), default=-1)
        return [p for k, p in self.events[last + 1:] if k == "text"]


def client(server: FakeModelServer, api: str, session, *, pid: str = "p", **extra: Any):
    cfg = make_config({pid: provider(server.url_for(api), api, "m", **extra)})
    return make_client(cfg.model(f"{pid}/m"), session)


# ----------------------------------------------------------------------- filtered text


@pytest.mark.parametrize("api", APIS)
async def test_reasoning_channel_never_reaches_the_listener_and_releases_text_early(
        server, session, api):
    """reasoning_content / reasoning items / thinking blocks: the server parsed the
    reasoning out, so an "auto" model's answer streams at once."""
    server.reply(words(ANSWER), reasoning="SECRET plan of SECRET length")
    heard = Recorder()
    done = await client(server, api, session).complete(REQ, listener=heard)
    assert done.text == ANSWER
    assert "".join(heard.texts) == ANSWER
    assert not any("SECRET" in t for t in heard.texts)
    assert len(heard.texts) >= len(words(ANSWER)) - 1  # piece by piece, not at the end
    assert heard.events[0] == ("thinking", "")  # the reasoning came first


@pytest.mark.parametrize(("profile", "api"), [
    ("vllm", "openai-completions"), ("ollama", "openai-completions"),
    ("vllm", "openai-responses"), ("ollama", "openai-responses"),
    ("llamacpp", "openai-responses")])
async def test_each_servers_reasoning_form_is_recognised(server, session, profile, api):
    server.use_profile(profile).reply(words(ANSWER), reasoning="SECRET")
    heard = Recorder()
    done = await client(server, api, session).complete(REQ, listener=heard)
    assert done.text == ANSWER == "".join(heard.texts)
    assert not any("SECRET" in t for t in heard.texts)
    assert len(heard.texts) > 1


async def test_anthropic_redacted_thinking_counts_as_reasoning(server, session):
    server.reply(words(ANSWER), redacted_thinking=True)
    heard = Recorder()
    done = await client(server, "anthropic-messages", session).complete(REQ, listener=heard)
    assert done.text == ANSWER == "".join(heard.texts)
    assert len(heard.texts) > 1 and "opaque" not in "".join(heard.texts)


@pytest.mark.parametrize("api", APIS)
async def test_inline_think_is_filtered_and_then_streams(server, session, api):
    server.reply(words(ANSWER), reasoning="SECRET inline plan", inline_think=True)
    heard = Recorder()
    done = await client(server, api, session).complete(REQ, listener=heard)
    assert done.text == ANSWER == "".join(heard.texts)
    assert not any("SECRET" in t or "<" in t for t in heard.texts)
    assert len(heard.texts) > 1  # the opening tag decided it: no lone close to wait for


@pytest.mark.parametrize("api", APIS)
async def test_lone_close_arriving_late_shows_nothing_before_it(server, session, api):
    chunks = ["Let me ", "think SECRET ", "it over.", "</think>", "Paris ", "it is."]
    server.reply(chunks)
    heard = Recorder()
    done = await client(server, api, session).complete(REQ, listener=heard)
    assert done.text == "Paris it is." == "".join(heard.texts)
    assert not any("SECRET" in t or "Let" in t for t in heard.texts)
    # Nothing but "thinking" until the close had arrived.
    first_text = next(i for i, (k, _) in enumerate(heard.events) if k == "text")
    assert heard.events[:first_text] == [("thinking", "")] * 4


@pytest.mark.parametrize("api", APIS)
async def test_split_tag_never_shows_a_fragment(server, session, api):
    server.reply(["Hello <thi", "nk>SECRET</think> world"])
    heard = Recorder()
    done = await client(server, api, session, thinkTags="paired").complete(
        REQ, listener=heard)
    assert done.text == "Hello world" == "".join(heard.texts)
    assert not any("<" in t or "SECRET" in t for t in heard.texts)


@pytest.mark.parametrize("api", APIS)
async def test_paired_streams_at_once_while_auto_holds_a_plain_answer(server, session, api):
    server.reply(words(ANSWER)).reply(words(ANSWER))
    paired, auto = Recorder(), Recorder()
    await client(server, api, session, thinkTags="paired").complete(REQ, listener=paired)
    await client(server, api, session).complete(REQ, listener=auto)
    assert "".join(paired.texts) == ANSWER and len(paired.texts) == len(words(ANSWER))
    # "auto": no tags, no reasoning channel: a lone </think> could still come, so the
    # whole answer is held back and told once, at the end of the stream.
    assert auto.texts == [ANSWER]
    assert auto.events[:-1] == [("thinking", "")] * len(words(ANSWER))


@pytest.mark.parametrize("api", APIS)
async def test_a_json_reply_streams_nothing(server, session, api):
    server.reply(ANSWER, stream=False)
    heard = Recorder()
    done = await client(server, api, session, thinkTags="paired").complete(
        REQ, listener=heard)
    assert done.text == ANSWER and heard.events == []


@pytest.mark.parametrize("api", APIS)
async def test_a_fenced_close_tag_in_a_code_example_is_answer_text(server, session, api):
    text = "Like this:\n```\n<think>plan</think>\n```\nDone."
    server.reply(words(text))
    heard = Recorder()
    done = await client(server, api, session, thinkTags="paired").complete(
        REQ, listener=heard)
    assert done.text == text == "".join(heard.texts)


def localai_stream(streamed: str, final: str) -> str:
    """LocalAI#9658: a thinking model's reasoning streamed as output_text deltas, then a
    final response that carries only the answer (the reasoning moved to an item)."""
    def ev(kind: str, data: dict[str, Any]) -> str:
        return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n"
    response = {"id": "resp_1", "object": "response", "status": "completed",
                "output": [{"type": "reasoning", "summary": [], "content": [
                    {"type": "reasoning_text", "text": streamed}]},
                    {"type": "message", "role": "assistant", "content": [
                        {"type": "output_text", "text": final, "annotations": []}]}],
                "usage": {"input_tokens": 3, "output_tokens": 9}}
    where = {"item_id": "msg_1", "output_index": 0, "content_index": 0}
    return "".join([
        ev("response.created", {"response": {**response, "status": "in_progress",
                                             "output": []}}),
        *(ev("response.output_text.delta", {**where, "delta": w}) for w in words(streamed)),
        ev("response.completed", {"response": response})])


async def test_relabelled_stream_logs_the_preview_hint_once_per_model(server, session,
                                                                      caplog):
    body = localai_stream("Thinking about SECRET things ", "Paris.")
    server.raw(200, body, "text/event-stream").raw(200, body, "text/event-stream")
    # The hint is remembered per model ref for the process: a ref no other test uses.
    c = client(server, "openai-responses", session, pid="relabelling", thinkTags="paired")
    with caplog.at_level(logging.WARNING, logger="bridge.models.responses"):
        for _ in range(2):
            heard = Recorder()
            done = await c.complete(REQ, listener=heard)
            assert done.text == "Paris."
    hints = [r for r in caplog.records if "preview" in r.getMessage()]
    assert len(hints) == 1 and "relabelling/m" in hints[0].getMessage()
    # Why the hint exists: with "paired" the relabelled deltas were heard as text.
    assert "SECRET" in "".join(heard.texts)


async def test_relabelled_stream_on_auto_shows_nothing(server, session, caplog):
    server.raw(200, localai_stream("Thinking about SECRET things ", "Paris."),
               "text/event-stream")
    heard = Recorder()
    done = await client(server, "openai-responses", session).complete(REQ, listener=heard)
    assert done.text == "Paris." and heard.texts == []


# ------------------------------------------------------------------------------ router


@pytest.fixture
async def routers():
    made: list[ModelRouter] = []

    def make(cfg, **kw) -> ModelRouter:
        r = ModelRouter(lambda: cfg, **kw)
        made.append(r)
        return r

    yield make
    for r in made:
        await r.aclose()


def two(server: FakeModelServer, server2: FakeModelServer, *, first: dict | None = None,
        second: dict | None = None):
    return make_config({
        "local": provider(server.base_url, "openai-completions", "qwen", thinkTags="paired",
                          **(first or {})),
        "hosted": provider(server2.root_url, "anthropic-messages", "claude",
                           thinkTags="paired", **(second or {}))},
        "local/qwen", ("hosted/claude",))


CANDS = ["local/qwen", "hosted/claude"]


async def test_fallback_after_a_broken_stream_restarts_the_answer(server, server2, routers):
    cfg = two(server, server2)
    server.drop("half an answer that breaks", after_chunks=2)
    server2.reply(words("Whole answer."))
    heard = Recorder()
    reply = await routers(cfg).complete(CANDS, REQ, listener=heard)
    assert reply.text == "Whole answer." and reply.model_ref == "hosted/claude"
    attempts = [(i, p) for i, (k, p) in enumerate(heard.events) if k == "attempt"]
    assert [p for _, p in attempts] == CANDS
    broken = [p for k, p in heard.events[attempts[0][0] + 1:attempts[1][0]] if k == "text"]
    assert broken and "".join(broken) in "half an answer that breaks"
    assert "".join(heard.since_last_attempt()) == "Whole answer."


async def test_skipped_and_cooling_candidates_are_not_announced(server, server2, routers):
    cfg = two(server, server2)
    clock = FakeClock()
    router = routers(cfg, clock=clock)
    server.error(503)
    server2.reply("first")
    first = Recorder()
    await router.complete(CANDS, REQ, listener=first)
    assert [p for k, p in first.events if k == "attempt"] == CANDS
    # local/qwen cools down now: only the fallback is called, and announced.
    server2.reply("second")
    heard = Recorder()
    reply = await router.complete(["nowhere/none", *CANDS], REQ, listener=heard)
    assert reply.text == "second"
    assert [a.skipped for a in reply.attempts] == [False, True, False]
    assert [p for k, p in heard.events if k == "attempt"] == ["hosted/claude"]
    assert len(server.requests) == 1


async def test_a_forced_cooling_candidate_is_announced(server, server2, routers):
    cfg = two(server, server2)
    router = routers(cfg, clock=FakeClock())
    server.error(503)
    server2.error(503)
    with pytest.raises(AllModelsFailed):
        await router.complete(CANDS, REQ)
    server.reply("forced")  # every candidate cools: the one ending first is tried anyway
    heard = Recorder()
    reply = await router.complete(CANDS, REQ, listener=heard)
    assert reply.text == "forced"
    assert [p for k, p in heard.events if k == "attempt"] == ["local/qwen"]


async def test_preview_false_model_is_announced_but_gives_no_text(server, server2, routers):
    cfg = two(server, server2, second={"models": [{"id": "claude", "preview": False}]})
    server.error(500)
    server2.reply(words("Relabelled maybe."), reasoning="SECRET")
    heard = Recorder()
    reply = await routers(cfg).complete(CANDS, REQ, listener=heard)
    assert reply.text == "Relabelled maybe."
    assert heard.events == [("attempt", "local/qwen"), ("attempt", "hosted/claude")]


async def test_preview_false_on_the_provider(server, server2, routers):
    cfg = two(server, server2, first={"preview": False})
    server.reply(words(ANSWER))
    heard = Recorder()
    reply = await routers(cfg).complete(CANDS, REQ, listener=heard)
    assert reply.text == ANSWER and heard.events == [("attempt", "local/qwen")]


async def test_no_listener_is_fine(server, server2, routers):
    cfg = two(server, server2)
    server.reply(words(ANSWER))
    assert (await routers(cfg).complete(CANDS, REQ)).text == ANSWER


# ------------------------------------------------------------------------ cancellation


@pytest.mark.parametrize("api", APIS)
async def test_cancelling_mid_stream_closes_the_connection(server, routers, api):
    cfg = make_config({"p": provider(server.url_for(api), api, "m", thinkTags="paired")})
    long = " ".join(f"w{i}" for i in range(400))
    server.reply(long, tokens_per_second=50)
    heard = Recorder()
    task = asyncio.create_task(routers(cfg).complete(["p/m"], REQ, listener=heard))
    async with asyncio.timeout(HANG_GUARD_S):
        await heard.got_text.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    rec = server.requests[-1]
    async with asyncio.timeout(HANG_GUARD_S):
        await rec.closed.wait()
    written = rec.chunks_written
    assert rec.closed_at is not None
    async with asyncio.timeout(HANG_GUARD_S):
        await rec.finished.wait()
    assert rec.chunks_written == written  # it stopped writing once the client left
    assert written < 400  # far from the end of the answer


async def test_cancelling_while_the_model_loads_closes_the_connection(server, routers):
    cfg = make_config({"p": provider(server.base_url, "openai-completions", "m")})
    server.reply("late", think=600)
    heard = Recorder()
    task = asyncio.create_task(routers(cfg).complete(["p/m"], REQ, listener=heard))
    async with asyncio.timeout(HANG_GUARD_S):
        rec = await server.wait_requests(1)
        await rec.streaming.wait()  # the preamble went out; the model is "loading"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with asyncio.timeout(HANG_GUARD_S):
        await rec.closed.wait()
        await rec.finished.wait()
    assert heard.events == [("attempt", "p/m")]


async def test_cancelling_a_hung_request_closes_it(server, routers):
    cfg = make_config({"p": provider(server.base_url, "openai-responses", "m")})
    server.hang()
    task = asyncio.create_task(routers(cfg).complete(["p/m"], REQ))
    async with asyncio.timeout(HANG_GUARD_S):
        await server.wait_requests(1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with asyncio.timeout(HANG_GUARD_S):
        await server.requests[-1].closed.wait()


async def test_a_finished_stream_is_not_marked_closed(server, routers):
    cfg = make_config({"p": provider(server.base_url, "openai-completions", "m")})
    server.reply(words(ANSWER), tokens_per_second=1000)
    await routers(cfg).complete(["p/m"], REQ)
    rec = server.requests[-1]
    async with asyncio.timeout(HANG_GUARD_S):
        await rec.finished.wait()
    assert not rec.closed.is_set() and rec.chunks_written > len(words(ANSWER))


def test_words_rejoin_to_the_text():
    assert words("Hello  big\nworld ") == ["Hello  ", "big\n", "world "]
    assert "".join(words(ANSWER)) == ANSWER


class Exploding(Recorder):
    def text(self, piece: str) -> None:
        super().text(piece)
        raise RuntimeError("the preview broke")


async def test_a_failing_listener_never_fails_the_answer(server, server2, routers, caplog):
    cfg = two(server, server2)
    server.reply(words(ANSWER))
    heard = Exploding()
    with caplog.at_level(logging.WARNING, logger="bridge.models.http"):
        reply = await routers(cfg).complete(CANDS, REQ, listener=heard)
    assert (reply.text, reply.model_ref) == (ANSWER, "local/qwen")  # no fallback
    assert [a.error_class for a in reply.attempts] == [None]
    assert heard.events == [("attempt", "local/qwen"), ("text", "The")]  # then silence
    assert len([r for r in caplog.records if "stream listener" in r.getMessage()]) == 1
