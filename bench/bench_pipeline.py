"""Pipeline benchmark: the conversation core alone, in process (not run by pytest).

50 chats x 20 messages through the real SQLite store and a fake model:

- throughput: every message injected at once (as a busy bridge would see them), time
  until every one is answered, zero-latency model; messages/s and turns;
- batching: the model takes ``--model-ms`` per call and the messages keep arriving
  while turns run (one round of all chats every ``--gap-ms``); messages that arrive
  mid-turn are answered together, so turns < messages.  Run with the default
  ``maxConcurrentTurns`` (4) and unlimited (0); the peak of calls in flight is reported;
- added latency: one message at a time, from ``accept()`` to the channel's ``send()``,
  p50/p95 (the pipeline's own cost: access check, store writes, prompt, delivery);
- long history: one chat, ``--history`` (300) messages one after the other, each turn's
  prompt holding the whole session so far (a 32k window, a real media store, a text-only
  model): accept→send p50 of the first and of the last 50 messages, and messages/s.
  The two p50s should be close: a turn's cost should not grow with the history.
  ``--profile FILE`` writes cProfile stats of this run and prints the top functions.

Usage: ``python bench/bench_pipeline.py [--chats 50] [--messages 20] [--model-ms 20]
[--synchronous FULL|NORMAL] [--history 300] [--only history] [--profile FILE]``.
Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import json
import pstats
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bridge.config.schema import Config  # noqa: E402
from bridge.conversation import ConversationCore  # noqa: E402
from bridge.envelope import ChatAddress, ChatKind, Inbound, MediaKind, Outbound  # noqa: E402
from bridge.media import MediaStore  # noqa: E402
from bridge.models.base import Attempt, ModelReply, Usage  # noqa: E402
from bridge.ports import (  # noqa: E402
    Capabilities,
    Channel,
    ChannelHealth,
    Markup,
    SendProgress,
)
from bridge.store import Store  # noqa: E402


class ZeroLatencyRouter:
    """Answers at once (or after ``latency_s``), building the real prompt for the model
    (as ModelRouter would); counts calls and the peak of calls in flight."""

    def __init__(self, config: Config, latency_s: float = 0.0) -> None:
        self.config = config
        self.latency_s = latency_s
        self.calls = 0
        self.in_flight = 0
        self.peak = 0

    async def complete(self, candidates, request):
        first = candidates[0]  # the core passes models it resolved once for the turn
        model = self.config.model(first) if isinstance(first, str) else first
        if callable(request):
            request = await request(model)
        self.calls += 1
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            if self.latency_s:
                await asyncio.sleep(self.latency_s)
        finally:
            self.in_flight -= 1
        return ModelReply("ok", model.ref, Usage(10, 2), "stop", (Attempt(model.ref, None, 0.0),))

    async def aclose(self) -> None:
        pass


class BenchChannel(Channel):
    name = "telegram"
    account = "default"
    capabilities = Capabilities(text_chunk_limit=4000, markup=Markup.PLAIN)

    def __init__(self) -> None:
        self.sent = 0
        self.sent_at: dict[str, float] = {}
        self.done = asyncio.Event()
        self.expect = 0

    async def start(self, sink) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def send(self, out: Outbound, progress: SendProgress | None = None) -> list[str]:
        if progress is not None and progress.start >= 1:
            return []  # one chunk per reply, already sent
        self.sent += 1
        self.sent_at[out.address.chat_id] = time.perf_counter()
        if progress is not None:
            await progress.report(0, str(self.sent))  # the per-chunk store write, measured
        return [str(self.sent)]

    @contextlib.asynccontextmanager
    async def typing(self, address):
        yield

    def health(self) -> ChannelHealth:
        return ChannelHealth(True)


def _config(data_dir: Path, max_concurrent: int | None = None, vision: bool = False) -> Config:
    defaults: dict = {"model": "local/m"}
    model: dict = {"id": "m", "contextWindow": 32000}
    if vision:
        model["input"] = ["text", "image"]
    if max_concurrent is not None:
        defaults["maxConcurrentTurns"] = max_concurrent
    return Config.model_validate({
        "dataDir": str(data_dir),
        "models": {"providers": {"local": {"baseUrl": "http://127.0.0.1:9/v1",
                                           "models": [model]}}},
        "agents": {"defaults": defaults},
        "channels": {"telegram": {"dmPolicy": "allowlist", "allowFrom": ["*"]}},
    })


def _inbound(chat: int, n: int, tag: str) -> Inbound:
    return Inbound(ChatAddress("telegram", "default", f"{tag}{chat}", ChatKind.DIRECT),
                   sender_id=f"{tag}{chat}", message_id=f"{tag}{chat}-{n}",
                   timestamp=time.time(), text=f"message {n} from chat {chat}: hello there")


async def _setup(data_dir: Path, *, latency_s: float = 0.0,
                 max_concurrent: int | None = None, media: bool = False,
                 vision: bool = False):
    config = _config(data_dir, max_concurrent, vision)
    store = await Store.open(data_dir / "palaver.db")
    router = ZeroLatencyRouter(config, latency_s)
    channel = BenchChannel()
    core = ConversationCore(store, config, router, channels=[channel],
                            media=MediaStore(data_dir / "media") if media else None)
    await core.start()
    return store, core, router, channel


async def throughput(data_dir: Path, chats: int, messages: int) -> dict:
    store, core, router, channel = await _setup(data_dir)
    total = chats * messages
    t0 = time.perf_counter()
    for n in range(messages):  # interleaved, as many chats talk at once
        for c in range(chats):
            await core.accept(_inbound(c, n, "t"))
    accepted = time.perf_counter()
    await core.wait_idle()
    elapsed = time.perf_counter() - t0
    counts = await store.count_by_status()
    await core.stop(1)
    await store.close()
    assert counts.get("in:answered", 0) == total, counts
    return {"messages": total, "turns": router.calls, "seconds": round(elapsed, 3),
            "accept_s": round(accepted - t0, 3), "messages_per_s": round(total / elapsed, 1)}


async def batching(data_dir: Path, chats: int, messages: int, *, model_ms: float,
                   gap_ms: float, max_concurrent: int | None) -> dict:
    """Messages keep arriving while turns run: how many turns answer them all."""
    store, core, router, channel = await _setup(
        data_dir, latency_s=model_ms / 1000, max_concurrent=max_concurrent)
    total = chats * messages
    t0 = time.perf_counter()
    for n in range(messages):
        for c in range(chats):
            await core.accept(_inbound(c, n, "b"))
        await asyncio.sleep(gap_ms / 1000)
    await core.wait_idle()
    elapsed = time.perf_counter() - t0
    counts = await store.count_by_status()
    await core.stop(1)
    await store.close()
    assert counts.get("in:answered", 0) == total, counts
    return {"messages": total, "turns": router.calls,
            "messages_per_turn": round(total / router.calls, 2),
            "peak_in_flight": router.peak, "seconds": round(elapsed, 3),
            "messages_per_s": round(total / elapsed, 1),
            "max_concurrent_turns": 4 if max_concurrent is None else max_concurrent}


async def latency(data_dir: Path, chats: int, messages: int) -> dict:
    store, core, router, channel = await _setup(data_dir)
    samples: list[float] = []
    for n in range(messages):
        for c in range(chats):
            inbound = _inbound(c, n, "l")
            t0 = time.perf_counter()
            await core.accept(inbound)
            await core.wait_idle()
            samples.append(channel.sent_at[inbound.address.chat_id] - t0)
    await core.stop(1)
    await store.close()
    samples.sort()
    q = statistics.quantiles(samples, n=100)
    return {"messages": len(samples), "p50_ms": round(q[49] * 1000, 2),
            "p95_ms": round(q[94] * 1000, 2), "max_ms": round(samples[-1] * 1000, 2)}


def _photo(n: int) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (320, 240), (n % 256, (n * 7) % 256, 90)).save(out, "JPEG", quality=80)
    return out.getvalue()


async def long_history(data_dir: Path, messages: int, profile: str | None = None, *,
                       photo_every: int = 0) -> dict:
    """One chat, ``messages`` messages one after the other: does a turn cost more as the
    session's history grows?  (The whole history fits the window, as in bench_e2e.py.)
    ``photo_every``: every so many messages carry a (distinct, small) photo, for a model
    with vision; 0: text only, text-only model."""
    store, core, router, channel = await _setup(data_dir, media=True,
                                                vision=photo_every > 0)
    samples: list[float] = []
    prompt_turns = 0
    profiler = cProfile.Profile() if profile else None
    if profiler is not None:
        profiler.enable()
    t0 = time.perf_counter()
    cpu0, loop_cpu0 = time.process_time(), time.thread_time()
    for n in range(messages):
        inbound = _inbound(0, n, "h")
        if photo_every and n % photo_every == 0:
            ref = await core.media.put(_photo(n), kind=MediaKind.IMAGE, mime="image/jpeg")
            inbound = replace(inbound, media=(ref,))
        t1 = time.perf_counter()
        await core.accept(inbound)
        await core.wait_idle()
        samples.append(channel.sent_at[inbound.address.chat_id] - t1)
    elapsed = time.perf_counter() - t0
    cpu, loop_cpu = time.process_time() - cpu0, time.thread_time() - loop_cpu0
    if profiler is not None:
        profiler.disable()
    session = await store.active_session(str(inbound.session_key))
    if session is not None:
        _s, window = await store.session_with_history(session.id)
        prompt_turns = len(window.turns)
    await core.stop(1)
    await store.close()
    assert router.calls == messages, router.calls
    top = ""
    if profiler is not None:
        profiler.dump_stats(profile)
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(25)
        top = out.getvalue()
    k = min(50, len(samples))
    return {"messages": messages, "photo_every": photo_every, "history_turns_at_end": prompt_turns,
            "p50_first_ms": round(statistics.median(samples[:k]) * 1000, 2),
            "p50_last_ms": round(statistics.median(samples[-k:]) * 1000, 2),
            "p50_ms": round(statistics.median(samples) * 1000, 2),
            "seconds": round(elapsed, 3), "messages_per_s": round(messages / elapsed, 1),
            # CPU per message: the event loop's thread, and the others (SQLite's, and
            # the media store's workers preparing images)
            "loop_cpu_ms": round(loop_cpu / messages * 1000, 3),
            "other_threads_cpu_ms": round((cpu - loop_cpu) / messages * 1000, 3),
            "profile_top": top}


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chats", type=int, default=50)
    parser.add_argument("--messages", type=int, default=20)
    parser.add_argument("--model-ms", type=float, default=100.0,
                        help="model latency for the batching run")
    parser.add_argument("--gap-ms", type=float, default=10.0,
                        help="pause between rounds of messages in the batching run")
    parser.add_argument("--synchronous", choices=["FULL", "NORMAL"], default=None,
                        help="override the store's PRAGMA synchronous (default: the store's)")
    parser.add_argument("--history", type=int, default=300,
                        help="messages in the one-chat long-history run")
    parser.add_argument("--only", choices=["history"], default=None,
                        help="run only the long-history scenario")
    parser.add_argument("--photo-every", type=int, default=0, metavar="K",
                        help="long-history run: every K-th message carries a photo "
                             "(vision model); 0: text only")
    parser.add_argument("--profile", default=None, metavar="FILE",
                        help="cProfile the long-history run; stats to FILE, top printed")
    args = parser.parse_args(argv)
    if args.synchronous:
        from bridge.store import db

        db.SYNCHRONOUS = args.synchronous
    from bridge.store.db import SYNCHRONOUS

    with tempfile.TemporaryDirectory() as tmp:
        if args.only != "history":
            tp = await throughput(Path(tmp) / "throughput", args.chats, args.messages)
            batch = await batching(Path(tmp) / "batching", args.chats, args.messages,
                                   model_ms=args.model_ms, gap_ms=args.gap_ms,
                                   max_concurrent=None)
            unlimited = await batching(Path(tmp) / "unlimited", args.chats, args.messages,
                                       model_ms=args.model_ms, gap_ms=args.gap_ms,
                                       max_concurrent=0)
            lat = await latency(Path(tmp) / "latency", args.chats, args.messages)
        hist = await long_history(Path(tmp) / "history", args.history, args.profile,
                                  photo_every=args.photo_every)
    if args.only == "history":
        _print_history(hist)
        print(json.dumps({"bench": "pipeline-history", "synchronous": SYNCHRONOUS,
                          "history": hist}))
        return 0

    print(f"pipeline benchmark: {args.chats} chats x {args.messages} messages, real store "
          f"(synchronous={SYNCHRONOUS})")
    print(f"{'metric':<44}{'value':>12}")
    _print_rows([
        ("throughput, zero-latency model (messages/s)", tp["messages_per_s"]),
        ("  all answered in (s)", tp["seconds"]),
        ("  turns", tp["turns"]),
        (f"batching, {args.model_ms:g} ms model, limit 4 (messages/s)",
         batch["messages_per_s"]),
        ("  turns", batch["turns"]),
        ("  messages per turn", batch["messages_per_turn"]),
        ("  peak model calls in flight", batch["peak_in_flight"]),
        ("batching, unlimited (messages/s)", unlimited["messages_per_s"]),
        ("  turns", unlimited["turns"]),
        ("  peak model calls in flight", unlimited["peak_in_flight"]),
        ("added latency p50 (ms)", lat["p50_ms"]),
        ("added latency p95 (ms)", lat["p95_ms"]),
        ("added latency max (ms)", lat["max_ms"]),
    ])
    _print_history(hist)
    print(json.dumps({"bench": "pipeline", "chats": args.chats, "messages": args.messages,
                      "synchronous": SYNCHRONOUS, "throughput": tp, "batching": batch,
                      "batching_unlimited": unlimited, "latency": lat, "history": hist}))
    return 0


def _print_rows(rows: list[tuple[str, object]]) -> None:
    for name, value in rows:
        print(f"{name:<44}{value:>12}")


def _print_history(hist: dict) -> None:
    """The long-history rows, then the profile's top functions (taken out of ``hist``)."""
    _print_rows([
        (f"one chat, {hist['messages']} messages (messages/s)", hist["messages_per_s"]),
        ("  a photo every ... messages (0: none)", hist["photo_every"]),
        ("  history turns at the end", hist["history_turns_at_end"]),
        ("  latency p50, first 50 (ms)", hist["p50_first_ms"]),
        ("  latency p50, last 50 (ms)", hist["p50_last_ms"]),
        ("  latency p50, all (ms)", hist["p50_ms"]),
        ("  CPU/message, event loop thread (ms)", hist["loop_cpu_ms"]),
        ("  CPU/message, other threads (ms)", hist["other_threads_cpu_ms"]),
    ])
    top = hist.pop("profile_top")
    if top:
        print(top)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
