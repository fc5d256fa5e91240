"""Routing overhead: a fallback answer when the primary refuses, vs the fallback directly.

Run: ``/work/venv/bin/python bench/bench_routing.py [--iterations N]`` (not run by pytest).
Everything is on 127.0.0.1: the primary is a closed port, the fallback a FakeModelServer
speaking the Anthropic Messages API.  Modes:

- ``direct``: the router with only the fallback as candidate;
- ``refused``: primary first; the clock is moved past the cooldown before each call, so
  every call really tries the closed port first (the worst case);
- ``cooling``: primary first and cooling down (the steady state while the local box is
  down): it is skipped without a connection attempt.

Prints a table and one JSON line with the ratio and the added milliseconds per call.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp  # noqa: E402

from bridge.config.schema import Config  # noqa: E402
from bridge.models.base import ModelRequest, Turn  # noqa: E402
from bridge.models.router import ModelRouter  # noqa: E402
from tests.fakes.model_server import FakeModelServer  # noqa: E402

REQ = ModelRequest("Be brief.", (Turn.text("user", "hello"),))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def timed(router: ModelRouter, candidates: list[str], n: int,
                before=None) -> list[float]:
    out = []
    for _ in range(n):
        if before:
            before()
        start = time.perf_counter()
        reply = await router.complete(candidates, REQ)
        out.append((time.perf_counter() - start) * 1000)
        assert reply.model_ref == "hosted/claude", reply
    return out


async def main(n: int, warmup: int) -> dict[str, float]:
    async with FakeModelServer() as fallback, aiohttp.ClientSession() as session:
        fallback.default("fine, thanks", chunks=4)
        config = Config.model_validate({"models": {"mode": "replace", "providers": {
            "local": {"baseUrl": f"http://127.0.0.1:{closed_port()}/v1",
                      "api": "openai-completions", "models": [{"id": "qwen"}]},
            "hosted": {"baseUrl": fallback.root_url, "api": "anthropic-messages",
                       "models": [{"id": "claude"}]},
        }}})
        shift = [0.0]
        router = ModelRouter(lambda: config, session=session,
                             clock=lambda: time.monotonic() + shift[0])

        def expire() -> None:
            shift[0] += 1000.0  # past any cooldown: the next call probes the primary

        both = ["local/qwen", "hosted/claude"]
        results: dict[str, list[float]] = {}
        for name, cands, hook in (("direct", ["hosted/claude"], None),
                                  ("refused", both, expire),
                                  ("cooling", both, None)):
            await timed(router, cands, warmup, hook)
            results[name] = await timed(router, cands, n, hook)
        await router.aclose()

    print(f"{'mode':<10}{'median ms':>12}{'p95 ms':>10}{'mean ms':>10}")
    for name, xs in results.items():
        p95 = statistics.quantiles(xs, n=20)[18]
        print(f"{name:<10}{statistics.median(xs):>12.3f}{p95:>10.3f}"
              f"{statistics.fmean(xs):>10.3f}")
    med = {k: statistics.median(v) for k, v in results.items()}
    summary = {
        "iterations": n,
        "direct_ms": round(med["direct"], 3),
        "refused_fallback_ms": round(med["refused"], 3),
        "cooling_fallback_ms": round(med["cooling"], 3),
        "ratio_refused": round(med["refused"] / med["direct"], 3),
        "added_ms_refused": round(med["refused"] - med["direct"], 3),
        "added_ms_cooling": round(med["cooling"] - med["direct"], 3),
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", "-n", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    ns = parser.parse_args()
    asyncio.run(main(ns.iterations, ns.warmup))
