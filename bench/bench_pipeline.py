"""Pipeline benchmark: the conversation core alone, in process (not run by pytest).

50 chats x 20 messages through the real SQLite store and a zero-latency fake model:

- throughput: every message injected at once (as a busy bridge would see them), time
  until every one is answered; messages/s and turns (messages arriving mid-turn are
  batched, so turns <= messages);
- added latency: one message at a time, from ``accept()`` to the channel's ``send()``,
  p50/p95 (the pipeline's own cost: access check, store writes, prompt, delivery).

Usage: ``python bench/bench_pipeline.py [--chats 50] [--messages 20]``.  Prints a table
and one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bridge.config.schema import Config  # noqa: E402
from bridge.conversation import ConversationCore  # noqa: E402
from bridge.envelope import ChatAddress, ChatKind, Inbound, Outbound  # noqa: E402
from bridge.models.base import Attempt, ModelReply, Usage  # noqa: E402
from bridge.store import Store  # noqa: E402
from channels.base import Capabilities, ChannelHealth, Markup  # noqa: E402


class ZeroLatencyRouter:
    """Answers at once, building the real prompt for the model (as ModelRouter would)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.calls = 0

    async def complete(self, candidates, request):
        model = self.config.model(candidates[0])
        if callable(request):
            request = await request(model)
        self.calls += 1
        return ModelReply("ok", model.ref, Usage(10, 2), "stop", (Attempt(model.ref, None, 0.0),))

    async def aclose(self) -> None:
        pass


class BenchChannel:
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

    async def send(self, out: Outbound) -> list[str]:
        self.sent += 1
        self.sent_at[out.address.chat_id] = time.perf_counter()
        return [str(self.sent)]

    @contextlib.asynccontextmanager
    async def typing(self, address):
        yield

    def health(self) -> ChannelHealth:
        return ChannelHealth(True)


def _config(data_dir: Path) -> Config:
    return Config.model_validate({
        "dataDir": str(data_dir),
        "models": {"providers": {"local": {"baseUrl": "http://127.0.0.1:9/v1",
                                           "models": [{"id": "m"}]}}},
        "agents": {"defaults": {"model": "local/m"}},
        "channels": {"telegram": {"dmPolicy": "allowlist", "allowFrom": ["*"]}},
    })


def _inbound(chat: int, n: int, tag: str) -> Inbound:
    return Inbound(ChatAddress("telegram", "default", f"{tag}{chat}", ChatKind.DIRECT),
                   sender_id=f"{tag}{chat}", message_id=f"{tag}{chat}-{n}",
                   timestamp=time.time(), text=f"message {n} from chat {chat}: hello there")


async def _setup(data_dir: Path):
    config = _config(data_dir)
    store = await Store.open(data_dir / "palaver.db")
    router = ZeroLatencyRouter(config)
    channel = BenchChannel()
    core = ConversationCore(store, config, router, channels=[channel])
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


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chats", type=int, default=50)
    parser.add_argument("--messages", type=int, default=20)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tp = await throughput(Path(tmp) / "throughput", args.chats, args.messages)
        lat = await latency(Path(tmp) / "latency", args.chats, args.messages)
    print(f"pipeline benchmark: {args.chats} chats x {args.messages} messages, real store, "
          "zero-latency model")
    print(f"{'metric':<34}{'value':>12}")
    rows = [
        ("throughput (messages/s)", tp["messages_per_s"]),
        ("  all answered in (s)", tp["seconds"]),
        ("  turns (mid-turn batching)", tp["turns"]),
        ("added latency p50 (ms)", lat["p50_ms"]),
        ("added latency p95 (ms)", lat["p95_ms"]),
        ("added latency max (ms)", lat["max_ms"]),
    ]
    for name, value in rows:
        print(f"{name:<34}{value:>12}")
    print(json.dumps({"bench": "pipeline", "chats": args.chats, "messages": args.messages,
                      "throughput": tp, "latency": lat}))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
