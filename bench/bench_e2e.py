"""End-to-end benchmarks: the real Telegram adapter and App against the fakes (not pytest).

Every message travels the whole way: ``FakeBotAPI`` (getUpdates long poll) -> the real
python-telegram-bot ``Application`` in :class:`channels.telegram.TelegramChannel` ->
``App`` (access check, SQLite store, conversation core, ``ModelRouter``) -> a zero-latency
``FakeModelServer`` (Chat Completions, SSE) -> ``sendMessage`` back to the fake.

- ``latency``: 300 sequential messages in one chat (send one, wait for its reply);
  added latency = from the update being available in the fake to the fake receiving the
  ``sendMessage``; p50/p95/p99.
- ``throughput``: 50 chats x 20 messages pushed at once; messages answered/s and
  replies (sendMessage)/s; every message checked answered exactly once in the store and
  the fake (messages arriving mid-turn are answered together in one turn).
- ``failover``: the fallback's answer when the primary refuses connections (closed port)
  or accepts and never answers (``firstTokenSeconds`` 0.5), vs the fallback alone.
- ``memory``: resident memory (VmRSS) with Telegram and WhatsApp (recording client)
  loaded: idle and after a throughput run, in a fresh child process (Palaver alone) and
  in this process (Palaver plus the fakes).

Telegram's flood pacing (about one send a second per chat, see
``channels.telegram.pacing``) is off unless ``--paced``: it is the platform's limit, and
one chat's sequential latency would measure it instead of Palaver.

``--split`` runs Palaver in a child process (fakes and driver stay here) for latency,
throughput and failover; the default shares one event loop with the fakes, like the
tests.  Each benchmark prints a table and one JSON line.

Usage: ``python bench/bench_e2e.py [latency|throughput|failover|memory|all] [--quick]
[--split] [--paced] [--profile DIR]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (  # noqa: E402
    InProcess,
    Subprocess,
    closed_port,
    config_dict,
    machine,
    percentiles,
    print_table,
    provider,
    rss_kb,
    send_times,
    verify_store,
)

from tests.fakes.model_server import FakeModelServer  # noqa: E402
from tests.fakes.telegram_api import FakeBotAPI  # noqa: E402

TARGETS = {"latency_p50_ms": 5.0, "replies_per_s": 300.0, "failover_refused_added_ms": 20.0,
           "rss_mb": 150.0}


PACED = False  # --paced: keep Telegram's flood pacing (set by main)


def _palaver(split: bool, config: dict, **kwargs: Any) -> InProcess | Subprocess:
    return (Subprocess if split else InProcess)(config, paced=PACED, **kwargs)


@contextlib.asynccontextmanager
async def _profiled(args: argparse.Namespace, palaver: InProcess | Subprocess,
                    name: str) -> AsyncIterator[None]:
    """With ``--profile DIR``: cProfile Palaver's process around the block, into
    ``DIR/<name>-<mode>.prof`` and its summary ``.txt`` (nothing saved if the block fails)."""
    if not args.profile:
        yield
        return
    await palaver.profile(True)
    yield
    stem = Path(args.profile) / f"{name}-{run_mode(args)}"
    summary = await palaver.profile(False, str(stem.with_suffix(".prof")))
    stem.with_suffix(".txt").write_text(summary)


def _cpu_whose(args: argparse.Namespace) -> str:
    return "Palaver alone" if args.split else "Palaver+fakes"


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def _emit(result: dict) -> None:
    if result.get("problems"):
        print("  NOT VERIFIED:", "; ".join(result["problems"]))
    print(json.dumps(result, sort_keys=False))
    sys.stdout.flush()


async def _sequential(fake: FakeBotAPI, chat: int, count: int, *,
                      before_each=None) -> list[float]:
    """Send ``count`` messages one after the other; push->sendMessage seconds each."""
    pushed: list[float] = []
    first = len(send_times(fake))
    for i in range(count):
        if before_each is not None:
            await before_each()
        n = len(fake.sent)
        fake.push_text(chat, chat, f"question number {i}: what is the answer?")
        pushed.append(time.monotonic())
        try:
            await fake.wait_until(lambda n=n: len(fake.sent) > n, timeout=30)
        except TimeoutError:
            raise AssertionError(f"message {i} in chat {chat} got no reply within 30 s "
                                 f"({len(fake.sent)} sendMessage so far)") from None
    times = [t for c, t in send_times(fake)[first:] if c == chat]
    if len(times) != count:
        raise AssertionError(f"expected {count} replies in chat {chat}, got {len(times)}")
    return [t - p for p, t in zip(pushed, times, strict=True)]


# ----------------------------------------------------------------------------- latency


async def bench_latency(args: argparse.Namespace) -> dict:
    count = 30 if args.quick else 300
    warmup = 5 if args.quick else 20
    async with FakeBotAPI() as fake, FakeModelServer() as models:
        with tempfile.TemporaryDirectory(prefix="palaver-bench-") as tmp:
            config = config_dict(Path(tmp) / "data", fake,
                                 {"local": provider(models.base_url)}, primary="local/m")
            palaver = _palaver(args.split, config)
            await palaver.start()
            try:
                await _sequential(fake, 1001, warmup)
                cpu0 = (await palaver.stats())["cpu_s"]
                async with _profiled(args, palaver, "latency"):
                    samples = await _sequential(fake, 1001, count)
                cpu = (await palaver.stats())["cpu_s"] - cpu0
            finally:
                await palaver.stop()
            check = verify_store(palaver.db_path, fake, {1001: warmup + count})
    pct = percentiles(samples)
    result = {
        "bench": "e2e-latency", "mode": "split" if args.split else "inproc",
        "paced": args.paced, "messages": count, "warmup": warmup,
        "p50_ms": _ms(pct["p50"]), "p95_ms": _ms(pct["p95"]), "p99_ms": _ms(pct["p99"]),
        "min_ms": _ms(min(samples)), "max_ms": _ms(max(samples)),
        "cpu_ms_per_message": _ms(cpu / count),
        "p50_first50_ms": _ms(percentiles(samples[:50])["p50"]),
        "p50_last50_ms": _ms(percentiles(samples[-50:])["p50"]), "turns": check["turns"], "verified": check["ok"], "problems": check["problems"],
        "target_p50_ms": TARGETS["latency_p50_ms"],
        "met": pct["p50"] * 1000 <= TARGETS["latency_p50_ms"], **machine(),
    }
    print_table(f"latency: {count} sequential messages in one chat (+{warmup} warm-up), "
                f"update available -> sendMessage received [{result['mode']}]", [
                    ("p50 (ms)", result["p50_ms"]), ("p95 (ms)", result["p95_ms"]),
                    ("p99 (ms)", result["p99_ms"]), ("min (ms)", result["min_ms"]),
                    ("max (ms)", result["max_ms"]),
                    ("p50 of the first 50 (ms)", result["p50_first50_ms"]),
                    ("p50 of the last 50 (ms)", result["p50_last50_ms"]),
                    (f"CPU per message (ms, {_cpu_whose(args)})", result["cpu_ms_per_message"]),
                    ("answered once (store+fake)", check["ok"]),
                    (f"target p50 <= {TARGETS['latency_p50_ms']:g} ms",
                     "met" if result["met"] else "MISSED")])
    _emit(result)
    return result


# ----------------------------------------------------------------------------- throughput


async def _burst(fake: FakeBotAPI, palaver: InProcess | Subprocess, chats: int,
                 per_chat: int, *, base_chat: int = 2001) -> dict:
    """Push chats x per_chat messages at once (interleaved); wait for every answer."""
    total = chats * per_chat
    before = await palaver.stats()
    base = before["answered"] + before["failed"]
    first = len(send_times(fake))
    t0 = time.monotonic()
    for i in range(per_chat):
        for c in range(chats):
            chat = base_chat + c
            fake.push_text(chat, chat, f"message {i} from chat {chat}: hello there")
    pushed = time.monotonic()
    stats = await palaver.wait_answered(base + total, timeout=300)
    times = [t for _c, t in send_times(fake)[first:]]
    end = max(times)
    elapsed = end - t0
    return {"messages": total, "elapsed_s": round(elapsed, 3),
            "push_ms": _ms(pushed - t0), "first_reply_ms": _ms(min(times) - t0),
            "messages_per_s": round(total / elapsed, 1),
            "replies": len(times), "replies_per_s": round(len(times) / elapsed, 1),
            "cpu_ms_per_message": _ms((stats["cpu_s"] - before["cpu_s"]) / total),
            "answered": stats["answered"] - base, "failed": stats["failed"],
            "rss_kb": stats["rss_kb"]}


async def bench_throughput(args: argparse.Namespace) -> dict:
    chats, per_chat = (10, 5) if args.quick else (50, 20)
    async with FakeBotAPI() as fake, FakeModelServer() as models:
        with tempfile.TemporaryDirectory(prefix="palaver-bench-") as tmp:
            config = config_dict(Path(tmp) / "data", fake,
                                 {"local": provider(models.base_url)}, primary="local/m")
            palaver = _palaver(args.split, config)
            await palaver.start()
            try:
                # Warm the connections and code paths once (not counted).
                await _sequential(fake, 999, 3)
                await palaver.wait_answered(3)
                async with _profiled(args, palaver, "throughput"):
                    run = await _burst(fake, palaver, chats, per_chat)
            finally:
                await palaver.stop()
            expected = {2001 + c: per_chat for c in range(chats)} | {999: 3}
            check = verify_store(palaver.db_path, fake, expected)
    result = {
        "bench": "e2e-throughput", "mode": run_mode(args), "chats": chats,
        "per_chat": per_chat, **run, "turns": check["turns"] - 3,
        "batched_turns": check["batched_turns"], "max_batch": check["max_batch"],
        "verified": check["ok"], "problems": check["problems"],
        "target_replies_per_s": TARGETS["replies_per_s"],
        "met": run["messages_per_s"] >= TARGETS["replies_per_s"], **machine(),
    }
    print_table(f"throughput: {chats} chats x {per_chat} messages pushed at once, persistence "
                f"on [{result['mode']}]", [
                    ("all answered in (s)", run["elapsed_s"]),
                    ("messages answered/s", run["messages_per_s"]),
                    ("replies (sendMessage)/s", run["replies_per_s"]),
                    ("messages / turns / replies",
                     f"{run['messages']}/{result['turns']}/{run['replies']}"),
                    ("turns batching >1 message", result["batched_turns"]),
                    ("first reply after (ms)", run["first_reply_ms"]),
                    (f"CPU per message (ms, {_cpu_whose(args)})", run["cpu_ms_per_message"]),
                    ("answered exactly once", check["ok"]),
                    (f"target >= {TARGETS['replies_per_s']:g}/s (messages)",
                     "met" if result["met"] else "MISSED")])
    _emit(result)
    return result


def run_mode(args: argparse.Namespace) -> str:
    return "split" if args.split else "inproc"


# ----------------------------------------------------------------------------- failover


async def _failover_case(args: argparse.Namespace, name: str, count: int, *,
                         primary: str | None, hang: bool = False,
                         advance: bool = True) -> dict:
    async with FakeBotAPI() as fake, FakeModelServer() as fallback, \
            FakeModelServer() as hanging:
        providers = {"fb": provider(fallback.base_url)}
        if primary == "refused":
            providers["local"] = provider(f"http://127.0.0.1:{closed_port()}/v1",
                                          first_token_s=args.first_token)
        elif primary == "hanging":
            providers["local"] = provider(hanging.base_url, first_token_s=args.first_token)
        selection = ({"primary": "local/m", "fallbacks": ("fb/m",)} if primary
                     else {"primary": "fb/m"})
        with tempfile.TemporaryDirectory(prefix="palaver-bench-") as tmp:
            config = config_dict(Path(tmp) / "data", fake, providers, **selection)
            palaver = _palaver(args.split, config, offset_clock=True)
            await palaver.start()

            async def fresh() -> None:
                if hang:
                    hanging.hang()
                if advance:  # every sample meets the failing primary, not its cooldown
                    await palaver.advance_clock(1000.0)

            try:
                await _sequential(fake, 1001, 2, before_each=fresh)  # warm-up
                samples = await _sequential(fake, 1001, count, before_each=fresh)
                stats = await palaver.stats()
            finally:
                await palaver.stop()
    turns = stats["turns"][-count:]
    none = [None, "no attempt", 0.0, False]  # a turn that failed before calling a model
    first_attempt = [(t["attempts"] or [none])[0] for t in turns]
    answered_by = {(t["attempts"] or [none])[-1][0] or "-" for t in turns}
    pct = percentiles(samples, (50, 95))
    return {"case": name, "samples": count, "p50_ms": _ms(pct["p50"]),
            "p95_ms": _ms(pct["p95"]),
            "primary_attempt_p50_ms": _ms(percentiles([a[2] for a in first_attempt])["p50"])
            if primary else None,
            "primary_outcome": sorted({("skipped:" if a[3] else "") + str(a[1])
                                       for a in first_attempt}) if primary else None,
            "answered_by": sorted(answered_by),
            "all_answered": all(t["answered"] and t["delivered"] for t in turns)}


async def bench_failover(args: argparse.Namespace) -> dict:
    n = 10 if args.quick else 100
    n_hang = 2 if args.quick else 10
    alone = await _failover_case(args, "fallback alone", n, primary=None)
    refused = await _failover_case(args, "primary refused (closed port)", n,
                                   primary="refused")
    cooling = await _failover_case(args, "primary refused, cooling down", n,
                                   primary="refused", advance=False)
    hanging = await _failover_case(args, f"primary hanging (firstToken {args.first_token:g} s)",
                                   n_hang, primary="hanging", hang=True)
    cases = [alone, refused, cooling, hanging]
    for case in cases[1:]:
        case["added_p50_ms"] = round(case["p50_ms"] - alone["p50_ms"], 3)
    result = {"bench": "e2e-failover", "mode": run_mode(args),
              "first_token_seconds": args.first_token, "cases": cases,
              "refused_added_ms": refused["added_p50_ms"],
              "target_refused_added_ms": TARGETS["failover_refused_added_ms"],
              "met": refused["added_p50_ms"] <= TARGETS["failover_refused_added_ms"],
              "verified": all(c["all_answered"] for c in cases), **machine()}
    print(f"failover: push -> fallback's sendMessage, p50 over samples; the primary is met "
          f"afresh each sample except 'cooling down' [{result['mode']}]")
    print(f"  {'case':<44}{'n':>5}{'p50 ms':>10}{'p95 ms':>10}{'added':>10}"
          f"{'primary ms':>12}  primary outcome")
    for c in cases:
        added = c.get("added_p50_ms")
        prim = c["primary_attempt_p50_ms"]
        print(f"  {c['case']:<44}{c['samples']:>5}{c['p50_ms']:>10.2f}{c['p95_ms']:>10.2f}"
              f"{'' if added is None else f'{added:.2f}':>10}"
              f"{'' if prim is None else f'{prim:.2f}':>12}  "
              f"{','.join(c['primary_outcome'] or [])}")
    print(f"  target: refused primary adds <= {TARGETS['failover_refused_added_ms']:g} ms: "
          f"{'met' if result['met'] else 'MISSED'}")
    _emit(result)
    return result


# ----------------------------------------------------------------------------- memory


async def _memory_run(args: argparse.Namespace, split: bool) -> dict:
    chats, per_chat = (10, 5) if args.quick else (50, 20)
    async with FakeBotAPI() as fake, FakeModelServer() as models:
        with tempfile.TemporaryDirectory(prefix="palaver-bench-") as tmp:
            config = config_dict(Path(tmp) / "data", fake,
                                 {"local": provider(models.base_url)}, primary="local/m",
                                 whatsapp=True)
            palaver = _palaver(split, config, whatsapp=True)
            started = await palaver.start()
            try:
                await asyncio.sleep(1.0)
                idle = (await palaver.stats())["rss_kb"]
                run = await _burst(fake, palaver, chats, per_chat)
                await asyncio.sleep(0.5)
                after = (await palaver.stats())["rss_kb"]
            finally:
                await palaver.stop()
            check = verify_store(palaver.db_path, fake,
                                 {2001 + c: per_chat for c in range(chats)})
    return {"where": "child process (Palaver alone)" if split
            else "this process (Palaver + fakes + driver)",
            "before_palaver_mb": round(started["rss_before_palaver_kb"] / 1024, 1),
            "idle_mb": round(idle / 1024, 1), "after_throughput_mb": round(after / 1024, 1),
            "throughput_messages": run["messages"], "verified": check["ok"]}


async def bench_memory(args: argparse.Namespace) -> dict:
    clean = await _memory_run(args, split=True)
    shared = await _memory_run(args, split=False)
    worst = max(clean["idle_mb"], clean["after_throughput_mb"])
    result = {"bench": "e2e-memory", "channels": ["telegram", "whatsapp(recording client)"],
              "child": clean, "inproc": shared, "target_rss_mb": TARGETS["rss_mb"],
              "met": worst <= TARGETS["rss_mb"],
              "verified": clean["verified"] and shared["verified"], **machine()}
    print("memory: VmRSS with Telegram + WhatsApp (neonize loaded, recording client)")
    print(f"  {'where':<42}{'before':>9}{'idle':>9}{'after tp':>10}  (MB)")
    for r in (clean, shared):
        print(f"  {r['where']:<42}{r['before_palaver_mb']:>9.1f}{r['idle_mb']:>9.1f}"
              f"{r['after_throughput_mb']:>10.1f}")
    print(f"  target <= {TARGETS['rss_mb']:g} MB (child): {'met' if result['met'] else 'MISSED'}")
    _emit(result)
    return result


# ----------------------------------------------------------------------------- main

BENCHES = {"latency": bench_latency, "throughput": bench_throughput,
           "failover": bench_failover, "memory": bench_memory}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", nargs="?", default="all", choices=[*BENCHES, "all"])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--split", action="store_true",
                        help="run Palaver in a child process (fakes and driver here)")
    parser.add_argument("--paced", action="store_true",
                        help="keep Telegram's flood pacing (about 1 send/s per chat); off by "
                        "default so latency measures Palaver, not Telegram's limit")
    parser.add_argument("--first-token", type=float, default=0.5,
                        help="firstTokenSeconds of the failing primary (default 0.5)")
    parser.add_argument("--profile", metavar="DIR",
                        help="cProfile the measured phase of latency and throughput (Palaver's "
                        "process); .prof and .txt into DIR")
    args = parser.parse_args(argv)
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    return args


async def main(args: argparse.Namespace) -> int:
    """Run the chosen benchmarks; 1 when a run's answers did not verify."""
    # The fakes' servers log a traceback when Palaver drops a request it no longer
    # needs (a cancelled typing indicator, the long poll at stop): noise here.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    global PACED
    PACED = args.paced
    names = list(BENCHES) if args.which == "all" else [args.which]
    failed = False
    for name in names:
        try:
            result = await BENCHES[name](args)
        except Exception as exc:  # report, go on with the next benchmark
            print(f"{name}: FAILED: {type(exc).__name__}: {exc}")
            _emit({"bench": f"e2e-{name}", "mode": run_mode(args), "verified": False,
                   "error": f"{type(exc).__name__}: {exc}", **machine()})
            result = {"verified": False}
        failed |= result.get("verified") is False
        print()
    print(f"# process RSS at exit: {rss_kb() / 1024:.1f} MB", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
