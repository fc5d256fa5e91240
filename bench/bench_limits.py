"""Limits at the door: end-to-end latency with limits configured vs without, in one run.

The whole way, as ``bench_e2e.py latency``: ``FakeBotAPI`` -> the real Telegram adapter
-> ``App`` (access check, the limit gate, SQLite store, core, ``ModelRouter``) -> a
zero-latency ``FakeModelServer`` -> ``sendMessage`` back to the fake.  Two configs:

- ``off``: no ``limits`` anywhere (the gate returns before touching the store);
- ``on``: every kind set at the default level, per chat and per sender, high enough never
  to refuse: each message runs the whole check (admissions in the minute and hour, today's
  tokens and cost, this month's cost, for the chat and the sender) and records its
  admission, in one transaction.

The two run in alternating rounds (``off``, ``on``, ``off``, ...) in one process, each
round a fresh Palaver on its own data directory with warm-up messages first, so that drift
of the machine hits both alike.  Noise is the spread of the per-round p50s within each
config; the difference of the pooled p50s is reported against it.  Then the gate alone:
``LimitGate.admit`` in a chat with 50 and with 2000 model calls today (and as many
messages in the last hour): the check sums the chat's usage rows of the period, so it
grows with a chat's traffic.

Usage: ``python bench/bench_limits.py [--rounds 6] [--messages 60] [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (  # noqa: E402
    InProcess,
    config_dict,
    machine,
    percentiles,
    print_table,
    provider,
    send_times,
)

from tests.fakes.model_server import FakeModelServer  # noqa: E402
from tests.fakes.telegram_api import FakeBotAPI  # noqa: E402

HIGH = {"messagesPerMinute": 100_000, "messagesPerHour": 1_000_000,
        "tokensPerDay": 10**12, "costPerDayUsd": 10**6, "costPerMonthUsd": 10**7}
LIMITS = {**HIGH, "perSender": HIGH}


async def _sequential(fake: FakeBotAPI, chat: int, count: int) -> list[float]:
    """Send ``count`` messages one after another; push -> sendMessage seconds each."""
    pushed: list[float] = []
    first = len(send_times(fake))
    for i in range(count):
        n = len(fake.sent)
        fake.push_text(chat, chat, f"question number {i}: what is the answer?")
        pushed.append(time.monotonic())
        await fake.wait_until(lambda n=n: len(fake.sent) > n, timeout=30)
    times = [t for c, t in send_times(fake)[first:] if c == chat]
    if len(times) != count:
        raise AssertionError(f"expected {count} replies, got {len(times)}")
    return [t - p for p, t in zip(pushed, times, strict=True)]


async def _round(limits: bool, messages: int, warmup: int, chat: int) -> list[float]:
    async with FakeBotAPI() as fake, FakeModelServer() as models:
        with tempfile.TemporaryDirectory(prefix="palaver-bench-limits-") as tmp:
            config = config_dict(Path(tmp) / "data", fake,
                                 {"local": provider(models.base_url)}, primary="local/m")
            if limits:
                config["agents"]["defaults"]["limits"] = LIMITS
            palaver = InProcess(config)
            await palaver.start()
            try:
                await _sequential(fake, chat, warmup)
                return await _sequential(fake, chat, messages)
            finally:
                await palaver.stop()


async def _gate_alone(samples: int, history: int) -> dict[str, float]:
    """``LimitGate.admit`` p50/p99 (ms) in a chat that made ``history`` model calls today
    and had ``history`` messages admitted in the last hour."""
    from bridge.config.schema import Config
    from bridge.envelope import ChatAddress, ChatKind, Inbound
    from bridge.store import Store
    from bridge.store.usage import UsageQueries, UsageRow
    from bridge.usage.limits import LimitGate

    config = Config.model_validate({"agents": {"defaults": {"limits": LIMITS}}})
    with tempfile.TemporaryDirectory(prefix="palaver-bench-gate-") as tmp:
        store = await Store.open(Path(tmp) / "palaver.db")
        try:
            gate = LimitGate(store, lambda: config)
            address = ChatAddress("telegram", "default", "1", ChatKind.DIRECT)
            now = time.time()
            await UsageQueries(store).record_usage([UsageRow(
                at=now - i, session_key="telegram:default:direct:1", channel="telegram",
                account="default", chat_id="1", chat_kind="direct", thread_id=None,
                sender_id="1", turn_id=None, purpose="reply", model_ref="local/m",
                provider="local", input_tokens=100, output_tokens=10, reasoning_tokens=0,
                cached_tokens=0, cache_write_tokens=0, cost_usd=0.0, estimated=False)
                for i in range(history)])
            for i in range(history):  # an hour of admissions to count through
                await gate.admit(Inbound(address, "1", f"warm{i}", now, text="hi"))
            times = []
            for i in range(samples):
                inbound = Inbound(address, "1", f"m{i}", now, text="hi")
                start = time.perf_counter()
                await gate.admit(inbound)
                times.append(time.perf_counter() - start)
        finally:
            await store.close()
    pct = percentiles(times)
    return {"p50_ms": round(pct["p50"] * 1000, 3), "p99_ms": round(pct["p99"] * 1000, 3)}


async def main(args: argparse.Namespace) -> int:
    rounds = 2 if args.quick else args.rounds
    messages = 20 if args.quick else args.messages
    warmup = 5 if args.quick else 10
    per_round: dict[str, list[float]] = {"off": [], "on": []}
    pooled: dict[str, list[float]] = {"off": [], "on": []}
    for r in range(rounds):
        for name in ("off", "on") if r % 2 == 0 else ("on", "off"):
            samples = await _round(name == "on", messages, warmup, chat=3000 + r)
            pooled[name] += samples
            per_round[name].append(percentiles(samples)["p50"] * 1000)
    p50 = {n: percentiles(pooled[n])["p50"] * 1000 for n in pooled}
    spread = {n: max(per_round[n]) - min(per_round[n]) for n in per_round}
    stdev = {n: statistics.pstdev(per_round[n]) for n in per_round}
    noise = max(spread.values())
    diff = p50["on"] - p50["off"]
    gate = {n: await _gate_alone(200 if args.quick else 1000, n) for n in (50, 2000)}
    result: dict[str, Any] = {
        "bench": "limits-e2e-latency", "rounds": rounds, "messages_per_round": messages,
        "p50_off_ms": round(p50["off"], 3), "p50_on_ms": round(p50["on"], 3),
        "diff_ms": round(diff, 3),
        "round_p50s_off_ms": [round(x, 3) for x in per_round["off"]],
        "round_p50s_on_ms": [round(x, 3) for x in per_round["on"]],
        "noise_ms": round(noise, 3),
        "stdev_round_p50_ms": {n: round(v, 3) for n, v in stdev.items()},
        "within_noise": abs(diff) <= noise,
        "gate_alone": gate, **machine(),
    }
    print_table(f"limits: {rounds} alternating rounds x {messages} sequential messages "
                "(update available -> sendMessage received)", [
                    ("p50 without limits (ms)", result["p50_off_ms"]),
                    ("p50 with every limit set (ms)", result["p50_on_ms"]),
                    ("difference (ms)", result["diff_ms"]),
                    ("noise: spread of round p50s (ms)", result["noise_ms"]),
                    ("within noise", "yes" if result["within_noise"] else "NO"),
                    *[(f"LimitGate.admit alone, {n} calls today: p50 / p99 (ms)",
                       f"{g['p50_ms']} / {g['p99_ms']}") for n, g in gate.items()]])
    print(json.dumps(result))
    return 0 if result["within_noise"] else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--messages", type=int, default=60)
    parser.add_argument("--quick", action="store_true")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
